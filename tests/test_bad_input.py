"""Bad peers and bad arguments: each a clear exception, quickly, with no
crash, no hang and no leaked session handles."""

import gc
import os
import socket
import time

import pytest

import tlsresume
from tlsresume import ClientContext, lib
from tlsresume.testing import local_server

from rawtls import FakeServer, hello, speak_http


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test here ends with the handle count and error queue as
    they were."""
    gc.collect()
    before = tlsresume.live_sessions()
    yield
    gc.collect()
    assert tlsresume.live_sessions() == before
    assert lib.ERR_peek_error() == 0


def close_after_hello(server, sock):
    hello(sock)


def reset_after_hello(server, sock):
    hello(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    b"\x01\x00\x00\x00\x00\x00\x00\x00")


def close_mid_server_hello(server, sock):
    hello(sock)
    # A handshake record header announcing 80 bytes, then 3 of them.
    sock.sendall(b"\x16\x03\x03\x00\x50\x02\x00\x00")


def stall(server, sock):
    server.stopping.wait(10)


def stall_after_hello(server, sock):
    hello(sock)
    sock.sendall(b"\x16\x03\x03\x00\x50\x02\x00\x00")
    server.stopping.wait(10)


def timed_connect(ctx, port, timeout=0.5, host="localhost"):
    started = time.monotonic()
    try:
        ctx.connect(host, port, timeout=timeout).close()
    finally:
        timed_connect.elapsed = time.monotonic() - started


@pytest.fixture(scope="module")
def ctx(certs):
    return ClientContext(cafile=certs.cafile)


# Bad peers -------------------------------------------------------------------


def test_nothing_listening(ctx, unused_port):
    with pytest.raises(tlsresume.ConnectError) as info:
        timed_connect(ctx, unused_port)
    assert "could not connect" in str(info.value)
    assert "refused" in str(info.value).lower()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert timed_connect.elapsed < 3


def test_server_speaking_no_tls(ctx):
    with FakeServer(speak_http) as fake:
        with pytest.raises(tlsresume.ProtocolError) as info:
            timed_connect(ctx, fake.port)
    assert not isinstance(info.value, tlsresume.CertificateVerifyError)
    assert "wrong version number" in str(info.value)
    assert info.value.errors
    assert timed_connect.elapsed < 3


@pytest.mark.parametrize("host,reason,code", [
    ("localhost", "hostname mismatch", 62),
    ("127.0.0.1", "IP address mismatch", 64),
])
def test_certificate_for_another_name(other_certs, host, reason, code):
    with local_server(certfile=other_certs.certfile,
                      keyfile=other_certs.keyfile) as srv:
        trusting = ClientContext(cafile=other_certs.cafile)
        with pytest.raises(tlsresume.CertificateVerifyError) as info:
            timed_connect(trusting, srv.port, host=host)
        # The certificate's own name is fine: the CA is trusted.
        with trusting.connect("127.0.0.1", srv.port,
                              server_hostname="not-localhost.example"):
            pass
    assert reason in str(info.value)
    assert info.value.verify_code == code
    assert info.value.verify_message == reason
    assert timed_connect.elapsed < 3


def test_untrusted_ca(ctx):
    with local_server() as srv:  # its own trustme CA, not certs'
        with pytest.raises(tlsresume.CertificateVerifyError) as info:
            timed_connect(ctx, srv.port)
        assert "certificate verification failed" in str(info.value)
        assert "unable to get local issuer certificate" in str(info.value)
        assert info.value.verify_code == 20
        # The server is not hurt by it.
        with ClientContext(cafile=srv.cafile).connect(
                "localhost", srv.port) as conn:
            assert conn.read()


@pytest.mark.parametrize("behaviour", [close_after_hello,
                                       close_mid_server_hello],
                         ids=["after-client-hello", "mid-server-hello"])
def test_server_closes_mid_handshake(ctx, behaviour):
    with FakeServer(behaviour) as fake:
        with pytest.raises(tlsresume.UnexpectedEOFError) as info:
            timed_connect(ctx, fake.port)
    assert "without close_notify" in str(info.value)
    assert timed_connect.elapsed < 3


def test_server_resets_mid_handshake(ctx):
    with FakeServer(reset_after_hello) as fake:
        with pytest.raises(tlsresume.SyscallError) as info:
            timed_connect(ctx, fake.port)
    assert ("reset" in str(info.value).lower()
            or isinstance(info.value, tlsresume.UnexpectedEOFError))
    assert timed_connect.elapsed < 3


@pytest.mark.parametrize("behaviour", [stall, stall_after_hello],
                         ids=["silent", "half-a-record"])
def test_server_stalls(ctx, behaviour):
    with FakeServer(behaviour) as fake:
        with pytest.raises(tlsresume.TLSTimeoutError) as info:
            timed_connect(ctx, fake.port, timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert "0.5 s" in str(info.value)
    assert 0.4 < timed_connect.elapsed < 3


def test_server_stalls_after_the_handshake(s_server):
    # s_server without -www sends nothing after a TLS 1.2 handshake.
    peer = s_server(tls="1.2", www=False)
    ctx = ClientContext(cafile=peer.cafile)
    with ctx.connect("localhost", peer.port, timeout=0.5) as conn:
        started = time.monotonic()
        with pytest.raises(tlsresume.TLSTimeoutError):
            conn.read()
        assert time.monotonic() - started < 3


def test_failures_do_not_break_the_context(ctx, certs):
    # After each kind of failure the same context still connects.
    with FakeServer(close_after_hello) as fake:
        with pytest.raises(tlsresume.TLSError):
            ctx.connect("localhost", fake.port, timeout=0.5)
    with FakeServer(stall) as fake:
        with pytest.raises(tlsresume.TLSError):
            ctx.connect("localhost", fake.port, timeout=0.5)
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile) as srv:
        session = None
        for expected in (False, True):
            with ctx.connect("localhost", srv.port,
                             session=session) as conn:
                assert conn.session_reused is expected
            session = conn.session
        session.close()


# Bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 70000, "4433", None, 4.5,
                                  True])
def test_bad_port(ctx, port):
    with pytest.raises(ValueError, match="port"):
        ctx.connect("localhost", port)


def test_a_remembered_peer_does_not_admit_a_bool_port(ctx):
    # connect() remembers peers it has checked, by (host, port, name);
    # True == 1 would find port 1's entry.
    with pytest.raises(tlsresume.ConnectError):
        ctx.connect("127.0.0.1", 1, timeout=2)
    assert ("127.0.0.1", 1, None) in ctx._peers
    with pytest.raises(ValueError, match="port"):
        ctx.connect("127.0.0.1", True)


@pytest.mark.parametrize("timeout", [0, -1])
def test_bad_timeout(ctx, timeout):
    with pytest.raises(ValueError, match="timeout"):
        ctx.connect("localhost", 4433, timeout=timeout)


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 1e20,
                                     -0.0])
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_timeout_out_of_range(ctx, unused_port, host, timeout):
    # NaN and infinity passed the "<= 0" check and failed later as
    # "Numerical argument out of domain" (a ConnectError) or an
    # OverflowError from the socket module.
    with pytest.raises(ValueError, match="timeout must be positive"):
        ctx.connect(host, unused_port, timeout=timeout)


@pytest.mark.parametrize("timeout", ["1", [1], b"1"])
def test_timeout_of_another_type(ctx, unused_port, timeout):
    with pytest.raises(TypeError, match="timeout must be a number"):
        ctx.connect("localhost", unused_port, timeout=timeout)


@pytest.mark.parametrize("option", ["minimum_version", "maximum_version"])
@pytest.mark.parametrize("value", ["1.1", "1.0", "tls1.3", "TLS 1.3", 3,
                                   0x0301, "", 1.3])
def test_bad_version(option, value):
    with pytest.raises(ValueError, match="unsupported TLS"):
        ClientContext(**{option: value})


def test_versions_out_of_order():
    with pytest.raises(ValueError):
        ClientContext(minimum_version="1.3", maximum_version="1.2")


def test_missing_files(tmp_path, certs):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="cafile"):
        ClientContext(cafile=missing)
    with pytest.raises(ValueError):
        ClientContext(certfile=missing, keyfile=certs.keyfile)
    with pytest.raises(ValueError):
        ClientContext(certfile=certs.certfile, keyfile=missing)
    with pytest.raises(ValueError, match="keyfile given without certfile"):
        ClientContext(keyfile=certs.keyfile)


@pytest.mark.parametrize("alpn", [[""], ["x" * 256], [None]])
def test_bad_alpn(alpn):
    with pytest.raises(ValueError):
        ClientContext(alpn=alpn)


@pytest.mark.parametrize("alpn", ["h2", b"h2", bytearray(b"h2")])
def test_alpn_must_be_a_list_not_one_name(alpn):
    # alpn="h2" was list("h2"): the protocols "h" and "2", silently.
    with pytest.raises(TypeError, match="alpn must be a list"):
        ClientContext(alpn=alpn)


def test_alpn_name_not_ascii():
    with pytest.raises(ValueError, match="invalid ALPN protocol"):
        ClientContext(alpn=["h\u00fcp"])


@pytest.mark.parametrize("option", ["cafile", "certfile"])
def test_nul_in_a_file_name(certs, option):
    # A bare "embedded null byte" ValueError, naming no file.
    with pytest.raises(ValueError, match=f"cannot read {option}"):
        ClientContext(**{option: certs.cafile + "\x00.pem"})


@pytest.mark.parametrize("session", [b"\x30\x03\x02\x01\x01", "session",
                                     object(), 1])
def test_not_a_session(ctx, certs, session):
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile) as srv:
        with pytest.raises(TypeError, match="tlsresume.Session"):
            ctx.connect("localhost", srv.port, session=session)
        assert srv.accepted == 0, "refused before any connection"


def test_corrupt_session_bytes(ctx, certs):
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile,
                      maximum_version="1.2") as srv:
        conn = ctx.connect("localhost", srv.port)
        conn.close()
        good = conn.session.to_der()
        conn.session.close()
    bad = [b"", b"garbage", b"\x30", good[:len(good) // 2], good[:-1],
           b"\x30\x82\xff\xff" + good[4:], os.urandom(len(good))]
    for data in bad:
        with pytest.raises(tlsresume.SessionError, match="corrupt"):
            ctx.load_session(data, "localhost", srv.port)
    with pytest.raises(TypeError):
        ctx.load_session("not bytes", "localhost", srv.port)
    with pytest.raises(TypeError):
        ctx.load_session(None, "localhost", srv.port)
    # The good bytes still load, from bytes, bytearray and memoryview.
    for data in (good, bytearray(good), memoryview(good)):
        ctx.load_session(data, "localhost", srv.port).close()


def test_closed_context(certs, unused_port):
    closed = ClientContext(cafile=certs.cafile)
    closed.close()
    closed.close()
    with pytest.raises(tlsresume.TLSError, match="closed"):
        closed.connect("localhost", unused_port)


@pytest.mark.parametrize("host", [b"localhost", None, 127])
def test_host_of_another_type(ctx, unused_port, host):
    # bytes and None reached name.encode(): AttributeError, after a TCP
    # connection had been made (None even connected to loopback).
    with pytest.raises(TypeError, match="host must be a str"):
        ctx.connect(host, unused_port)


@pytest.mark.parametrize("name", [b"localhost", 5])
def test_server_hostname_of_another_type(ctx, unused_port, name):
    with pytest.raises(TypeError, match="server_hostname must be a str"):
        ctx.connect("127.0.0.1", unused_port, server_hostname=name)


@pytest.mark.parametrize("name", ["", "\x00", "local\x00host",
                                  "localhost\x00.evil.example"])
def test_empty_or_nul_names_are_refused(certs, name):
    # "localhost\0.evil.example" was cut at the NUL by OpenSSL: the name
    # sent and verified was silently "localhost".
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile) as srv:
        for verify in (True, False):
            ctx = ClientContext(cafile=certs.cafile, verify=verify)
            with pytest.raises(ValueError, match="server_hostname"):
                ctx.connect("127.0.0.1", srv.port, server_hostname=name)
            with pytest.raises(ValueError, match="host"):
                ctx.connect(name, srv.port)
        assert srv.accepted == 0, "refused before any connection"


@pytest.mark.parametrize("name", ["a" * 64 + ".example", "a..b", "ü" * 70])
def test_names_idna_cannot_encode(certs, name):
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile) as srv:
        ctx = ClientContext(cafile=certs.cafile)
        with pytest.raises(ValueError, match="invalid server name"):
            ctx.connect("127.0.0.1", srv.port, server_hostname=name)
        assert srv.accepted == 0, "refused before any connection"


@pytest.mark.parametrize("host,port,error", [
    (None, 443, TypeError), (b"localhost", 443, TypeError),
    ("", 443, ValueError), ("localhost", "443", ValueError),
    ("localhost", "abc", ValueError), ("localhost", 0, ValueError),
    ("localhost", 70000, ValueError),
])
def test_load_session_for_a_bad_peer(ctx, host, port, error):
    # host=None loaded a session for the peer 'None:443'; port 'abc' was
    # int()'s "invalid literal" - a key no connection could ever match.
    with pytest.raises(error, match="host|port"):
        ctx.load_session(b"\x30\x03\x02\x01\x01", host, port)
