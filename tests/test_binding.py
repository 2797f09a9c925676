"""The drop-in binding: OpenSSL's names on ``tlsresume.lib``, real header
values, and OpenSSL failures turned into exceptions."""

import os
import re

import pytest

import tlsresume
from tlsresume import errors, ffi, lib

# Every name the Core issue lists, so C code ports line by line.
FUNCTIONS = """
    SSL_CTX_new TLS_client_method TLS_server_method SSLv23_client_method
    SSL_CTX_free SSL_CTX_set_options SSL_CTX_set_min_proto_version
    SSL_CTX_set_max_proto_version SSL_CTX_set_session_cache_mode
    SSL_CTX_sess_set_new_cb SSL_CTX_set_session_id_context
    SSL_CTX_set_timeout SSL_CTX_load_verify_locations
    SSL_CTX_set_default_verify_paths SSL_CTX_set_verify
    SSL_CTX_use_certificate_chain_file SSL_CTX_use_PrivateKey_file
    SSL_new SSL_free SSL_set_fd SSL_set_tlsext_host_name SSL_set1_host
    SSL_connect SSL_accept SSL_read SSL_write SSL_pending SSL_shutdown
    SSL_set_shutdown SSL_get_error SSL_set_session SSL_get_session
    SSL_get1_session SSL_session_reused SSL_get_version
    SSL_get_verify_result SSL_SESSION_free SSL_SESSION_up_ref
    SSL_SESSION_is_resumable SSL_SESSION_get_time SSL_SESSION_get_timeout
    SSL_SESSION_get_ticket_lifetime_hint SSL_SESSION_get_protocol_version
    SSL_SESSION_has_ticket SSL_SESSION_get_id i2d_SSL_SESSION
    d2i_SSL_SESSION ERR_get_error ERR_error_string_n ERR_clear_error
    OpenSSL_version
    SSL_library_init SSL_load_error_strings OpenSSL_add_all_algorithms
""".split()

# Values from the OpenSSL headers (ssl.h, tls1.h, x509_vfy.h, err.h).
# They are part of the ABI and identical in 1.1.1 and 3.x.
CONSTANTS = {
    "TLS1_VERSION": 0x0301,
    "TLS1_1_VERSION": 0x0302,
    "TLS1_2_VERSION": 0x0303,
    "TLS1_3_VERSION": 0x0304,
    "SSL_ERROR_NONE": 0,
    "SSL_ERROR_SSL": 1,
    "SSL_ERROR_WANT_READ": 2,
    "SSL_ERROR_WANT_WRITE": 3,
    "SSL_ERROR_WANT_X509_LOOKUP": 4,
    "SSL_ERROR_SYSCALL": 5,
    "SSL_ERROR_ZERO_RETURN": 6,
    "SSL_ERROR_WANT_CONNECT": 7,
    "SSL_ERROR_WANT_ACCEPT": 8,
    "SSL_SESS_CACHE_OFF": 0x0000,
    "SSL_SESS_CACHE_CLIENT": 0x0001,
    "SSL_SESS_CACHE_SERVER": 0x0002,
    "SSL_SESS_CACHE_BOTH": 0x0003,
    "SSL_SESS_CACHE_NO_AUTO_CLEAR": 0x0080,
    "SSL_SESS_CACHE_NO_INTERNAL_LOOKUP": 0x0100,
    "SSL_SESS_CACHE_NO_INTERNAL_STORE": 0x0200,
    "SSL_SESS_CACHE_NO_INTERNAL": 0x0300,
    "SSL_VERIFY_NONE": 0x00,
    "SSL_VERIFY_PEER": 0x01,
    "SSL_VERIFY_FAIL_IF_NO_PEER_CERT": 0x02,
    "SSL_VERIFY_CLIENT_ONCE": 0x04,
    "SSL_OP_NO_TICKET": 1 << 14,
    "SSL_OP_NO_COMPRESSION": 1 << 17,
    "SSL_OP_ENABLE_MIDDLEBOX_COMPAT": 1 << 20,
    "SSL_OP_NO_SSLv3": 1 << 25,
    "SSL_OP_NO_TLSv1": 1 << 26,
    "SSL_OP_NO_TLSv1_2": 1 << 27,
    "SSL_OP_NO_TLSv1_1": 1 << 28,
    "SSL_OP_NO_TLSv1_3": 1 << 29,
    "SSL_OP_NO_RENEGOTIATION": 1 << 30,
    "SSL_SENT_SHUTDOWN": 1,
    "SSL_RECEIVED_SHUTDOWN": 2,
    "SSL_FILETYPE_PEM": 1,
    "X509_V_OK": 0,
    "ERR_LIB_SSL": 20,
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_exists_and_is_callable(name):
    assert callable(getattr(lib, name))


def test_package_exports_the_binding():
    assert tlsresume.lib is lib
    assert tlsresume.ffi is ffi
    assert "ffi" in tlsresume.__all__ and "lib" in tlsresume.__all__


def test_legacy_init_calls_run():
    # No-ops since OpenSSL 1.1.0, but the C example calls them.
    assert lib.SSL_library_init() == 1
    lib.SSL_load_error_strings()
    lib.OpenSSL_add_all_algorithms()
    assert lib.ERR_peek_error() == 0


@pytest.mark.parametrize("name,value", sorted(CONSTANTS.items()))
def test_constant_has_header_value(name, value):
    assert getattr(lib, name) == value


def test_version_constants_match_headers_on_disk():
    # Cross-check against the header text where it can be found, so a
    # hand-typed value in the binding could not slip through.
    path = "/usr/include/openssl/prov_ssl.h"
    if not os.path.exists(path):
        path = "/usr/include/openssl/tls1.h"
    if not os.path.exists(path):
        pytest.skip("OpenSSL headers not at /usr/include")
    with open(path, encoding="latin-1") as f:
        text = f.read()
    for name in ("TLS1_2_VERSION", "TLS1_3_VERSION"):
        match = re.search(rf"#\s*define\s+{name}\s+(0x[0-9A-Fa-f]+)", text)
        assert match, name
        assert getattr(lib, name) == int(match.group(1), 16)


def test_unexpected_eof_option_matches_library():
    # OpenSSL 3 has the option (bit 7); the glue maps it to 0 on 1.1.1.
    if lib.OpenSSL_version_num() >= 0x30000000:
        assert lib.SSL_OP_IGNORE_UNEXPECTED_EOF == 1 << 7
    else:
        assert lib.SSL_OP_IGNORE_UNEXPECTED_EOF == 0


def test_version_check():
    number = lib.OpenSSL_version_num()
    assert number >= 0x10101000
    text = tlsresume.openssl_version()
    assert text.startswith("OpenSSL ")
    assert text == ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)
                              ).decode()
    major = (number >> 28) & 0xF
    minor = (number >> 20) & 0xFF
    assert text.split()[1].startswith(f"{major}.{minor}.")


def test_build_is_stamped_with_package_version():
    built = ffi.string(lib.TLSRESUME_BUILD_VERSION).decode()
    assert built == tlsresume.__version__


def test_c_example_calls_work_line_by_line():
    lib.SSL_library_init()
    ctx = lib.SSL_CTX_new(lib.SSLv23_client_method())
    assert ctx != ffi.NULL
    try:
        lib.SSL_CTX_set_session_cache_mode(
            ctx, lib.SSL_SESS_CACHE_CLIENT
            | lib.SSL_SESS_CACHE_NO_INTERNAL_STORE)
        assert lib.SSL_CTX_get_session_cache_mode(ctx) == (
            lib.SSL_SESS_CACHE_CLIENT | lib.SSL_SESS_CACHE_NO_INTERNAL_STORE)
        assert lib.SSL_CTX_set_min_proto_version(ctx, lib.TLS1_2_VERSION)
        options = lib.SSL_CTX_set_options(ctx, lib.SSL_OP_NO_TICKET)
        assert options & lib.SSL_OP_NO_TICKET
        ssl = lib.SSL_new(ctx)
        assert ssl != ffi.NULL
        assert lib.SSL_get_session(ssl) == ffi.NULL
        assert lib.SSL_get1_session(ssl) == ffi.NULL
        assert lib.SSL_session_reused(ssl) == 0
        lib.SSL_free(ssl)
    finally:
        lib.SSL_CTX_free(ctx)


# Errors ---------------------------------------------------------------


def test_failing_call_raises_with_library_and_reason(tmp_path):
    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"this is not a certificate\n")
    try:
        lib.ERR_clear_error()
        with pytest.raises(tlsresume.TLSError) as info:
            errors.check(lib.SSL_CTX_use_certificate_chain_file(
                ctx, str(garbage).encode()), "loading garbage")
    finally:
        lib.SSL_CTX_free(ctx)
    message = str(info.value)
    assert message.startswith("loading garbage failed: ")
    assert "PEM routines" in message          # the library
    assert "no start line" in message         # the reason
    assert info.value.errors, "the queue entries travel with the error"
    assert all(len(entry) == 4 for entry in info.value.errors)
    assert lib.ERR_peek_error() == 0


def test_public_api_failure_is_a_tlserror_and_clears_queue(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not PEM at all\n")
    lib.ERR_clear_error()
    with pytest.raises(tlsresume.TLSError) as info:
        tlsresume.ClientContext(cafile=str(garbage))
    # Still a ValueError for callers that treat it as a bad argument.
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "x509 certificate routines" in message
    assert "no certificate or crl found" in message
    assert "error:" not in message, "raw codes do not belong in the text"
    assert lib.ERR_peek_error() == 0


def test_bad_key_for_certificate(certs, other_certs):
    lib.ERR_clear_error()
    with pytest.raises(tlsresume.TLSError) as info:
        tlsresume.ClientContext(certfile=certs.certfile,
                                keyfile=other_certs.keyfile)
    assert "key values mismatch" in str(info.value)
    assert lib.ERR_peek_error() == 0


def test_drain_errors_empties_a_full_queue(tmp_path):
    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    try:
        for _ in range(3):
            lib.SSL_CTX_use_PrivateKey_file(
                ctx, str(tmp_path / "missing.pem").encode(),
                lib.SSL_FILETYPE_PEM)
    finally:
        lib.SSL_CTX_free(ctx)
    assert lib.ERR_peek_error() != 0
    entries = errors.drain_errors()
    assert len(entries) >= 3
    assert lib.ERR_peek_error() == 0
    assert errors.drain_errors() == []


def test_error_classes_form_the_documented_tree():
    assert issubclass(tlsresume.TLSError, OSError)
    for name in ("OpenSSLError", "WantReadError", "WantWriteError",
                 "ZeroReturnError", "SyscallError", "ProtocolError",
                 "TLSTimeoutError", "ConnectError", "SessionError"):
        assert issubclass(getattr(tlsresume, name), tlsresume.TLSError)
    assert issubclass(tlsresume.UnexpectedEOFError, tlsresume.SyscallError)
    assert issubclass(tlsresume.CertificateVerifyError,
                      tlsresume.ProtocolError)
    assert issubclass(tlsresume.TLSTimeoutError, TimeoutError)
    assert issubclass(tlsresume.SessionError, ValueError)
    # Distinct classes for the SSL_get_error cases.
    leaves = {tlsresume.WantReadError, tlsresume.WantWriteError,
              tlsresume.ZeroReturnError, tlsresume.UnexpectedEOFError,
              tlsresume.ProtocolError, tlsresume.CertificateVerifyError}
    assert len(leaves) == 6
