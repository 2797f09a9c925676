"""The high-level client: ClientContext and Connection against the
project's Server and against ``openssl s_server``."""

import gc
import os
import signal
import time
import warnings

import pytest

import tlsresume
from tlsresume import ClientContext
from tlsresume.testing import local_server

GET = b"GET / HTTP/1.0\r\n\r\n"


def read_all(conn):
    chunks = []
    while True:
        data = conn.read()
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def five_connections(ctx, host, port, request=None):
    """The C example's loop with the high-level client.

    Each connection offers the previous connection's session.  Returns
    the per-connection lines and the last reply.
    """
    lines, reply, session = [], None, None
    for _ in range(5):
        with ctx.connect(host, port, session=session) as conn:
            lines.append("REUSED SESSION" if conn.session_reused
                         else "NEW SESSION")
            if request is None:
                reply = conn.read()
            else:
                conn.write(request)
                reply = read_all(conn)
        session = conn.session
    return lines, reply


RESUMED = ["NEW SESSION"] + ["REUSED SESSION"] * 4


# The five-connection loop ----------------------------------------------------


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets",
                                                         "no-tickets"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_five_connections_resume_against_project_server(version, tickets):
    with local_server(minimum_version=version, maximum_version=version,
                      tickets=tickets) as srv:
        ctx = ClientContext(cafile=srv.cafile)
        lines, reply = five_connections(ctx, "localhost", srv.port)
    assert lines == RESUMED
    assert reply == b"hello from tlsresume\n"


@pytest.mark.parametrize("version,no_ticket", [
    ("1.2", False), ("1.2", True), ("1.3", False), ("1.3", True)],
    ids=["tls1.2-tickets", "tls1.2-no_ticket", "tls1.3-tickets",
         "tls1.3-no_ticket"])
def test_five_connections_resume_against_s_server(s_server, version,
                                                  no_ticket):
    peer = s_server(tls=version, no_ticket=no_ticket)
    ctx = ClientContext(cafile=peer.cafile)
    lines, reply = five_connections(ctx, "localhost", peer.port, GET)
    assert lines == RESUMED
    assert reply.startswith(b"HTTP/1.0 200 ok")
    assert f"Protocol  : TLSv{version}".encode() in reply


def test_nothing_resumes_against_s_server_without_tickets_or_cache(
        s_server):
    peer = s_server(tls="1.2", no_ticket=True, no_cache=True)
    ctx = ClientContext(cafile=peer.cafile)
    lines, reply = five_connections(ctx, "localhost", peer.port, GET)
    assert lines == ["NEW SESSION"] * 5
    assert reply.startswith(b"HTTP/1.0 200 ok")


def test_unresumable_session_is_never_offered(s_server):
    # A TLS 1.3 server that issues no tickets leaves nothing to resume.
    peer = s_server(tls="1.3", extra=["-num_tickets", "0"])
    ctx = ClientContext(cafile=peer.cafile)
    with ctx.connect("localhost", peer.port) as conn:
        conn.write(GET)
        assert read_all(conn).startswith(b"HTTP/1.0 200 ok")
    assert conn.session is None
    lines, _ = five_connections(ctx, "localhost", peer.port, GET)
    assert lines == ["NEW SESSION"] * 5


def test_tls13_session_arrives_with_data_or_close():
    with local_server(minimum_version="1.3") as srv:
        ctx = ClientContext(cafile=srv.cafile)
        conn = ctx.connect("localhost", srv.port)
        assert conn.session is None  # the tickets come after the handshake
        assert conn.read() == b"hello from tlsresume\n"
        first = conn.session
        assert first is not None and first.is_resumable
        conn.close()
        # Closing without reading still waits for the tickets.
        conn = ctx.connect("localhost", srv.port, session=first)
        assert conn.session_reused
        conn.close()
        assert conn.session is not None and conn.session.is_resumable
        assert conn.session is not first


# Properties, reading and writing ---------------------------------------------


@pytest.mark.parametrize("version,prefix", [("1.2", "ECDHE-"),
                                            ("1.3", "TLS_")])
def test_version_and_cipher(version, prefix):
    with local_server() as srv:
        ctx = ClientContext(cafile=srv.cafile, maximum_version=version)
        with ctx.connect("localhost", srv.port) as conn:
            assert conn.version == f"TLSv{version}"
            assert conn.cipher.startswith(prefix)
            assert conn.alpn_protocol is None
            assert not conn.closed
            assert f"TLSv{version}" in repr(conn)
        assert conn.closed
        assert conn.version is None and conn.cipher is None
        assert "closed" in repr(conn)
        conn.close()  # twice is harmless


def test_minimum_version_is_enforced():
    with local_server(maximum_version="1.2") as srv:
        ctx = ClientContext(cafile=srv.cafile, minimum_version="1.3")
        with pytest.raises(tlsresume.ProtocolError):
            ctx.connect("localhost", srv.port)


def test_alpn(s_server):
    peer = s_server(tls="1.3", extra=["-alpn", "h2,http/1.1"])
    ctx = ClientContext(cafile=peer.cafile, alpn=["http/1.1"])
    with ctx.connect("localhost", peer.port) as conn:
        assert conn.alpn_protocol == "http/1.1"
        conn.write(GET)
        assert read_all(conn).startswith(b"HTTP/1.0 200 ok")


def test_read_and_write(s_server):
    peer = s_server(tls="1.3", www=False, extra=["-rev"])
    ctx = ClientContext(cafile=peer.cafile)
    with ctx.connect("localhost", peer.port) as conn:
        assert conn.write(b"hello tlsresume\n") == 16
        reply = b""
        while b"\n" not in reply:
            reply += conn.read()
        assert reply.strip() == b"emuserslt olleh"
        assert conn.write(b"") == 0
        with pytest.raises(ValueError):
            conn.read(0)
    with pytest.raises(tlsresume.TLSError, match="closed"):
        conn.write(b"late")
    with pytest.raises(tlsresume.TLSError, match="closed"):
        conn.read()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_reading_ahead_loses_no_byte(s_server, version):
    # OpenSSL reads ahead for us: whole socket buffers, several records
    # at once.  Byte by byte, the reply is the same as in large reads,
    # and pending() counts what is decrypted but not yet read.
    peer = s_server(tls=version)
    ctx = ClientContext(cafile=peer.cafile)
    assert tlsresume.lib.SSL_CTX_get_read_ahead(ctx._ctx) == 1
    with ctx.connect("localhost", peer.port) as conn:
        conn.write(GET)
        whole = read_all(conn)
    with ctx.connect("localhost", peer.port) as conn:
        conn.write(GET)
        first = conn.read(1)
        assert conn.pending() > 0
        pieces = [first]
        while True:
            piece = conn.read(1)
            if not piece:
                break
            pieces.append(piece)
    # The page describes each session, whose ids and keys differ; its
    # shape does not.
    lines, expected = b"".join(pieces).splitlines(), whole.splitlines()
    assert expected[0].startswith(b"HTTP/1.0 200 ok")
    assert lines[0] == expected[0] and len(lines) == len(expected)
    assert lines[-1] == expected[-1]


def test_large_write_is_written_whole():
    with local_server() as srv:
        ctx = ClientContext(cafile=srv.cafile)
        with ctx.connect("localhost", srv.port) as conn:
            payload = bytes(range(256)) * 1024  # 256 KiB, many records
            assert conn.write(payload) == len(payload)
            assert conn.write(memoryview(payload)[:10]) == 10
            assert conn.read() == b"hello from tlsresume\n"


def test_read_returns_empty_after_close_notify(s_server):
    peer = s_server(tls="1.2")
    with ClientContext(cafile=peer.cafile).connect(
            "localhost", peer.port) as conn:
        conn.write(GET)
        assert read_all(conn)
        assert conn.read() == b""


# Verification ----------------------------------------------------------------


def test_verify_is_on_by_default():
    ctx = ClientContext()
    assert ctx.verify is True
    with local_server() as srv:
        # System CAs do not know trustme's CA.
        with pytest.raises(tlsresume.CertificateVerifyError) as info:
            ctx.connect("localhost", srv.port)
        assert srv.accepted == 1
    assert info.value.verify_code != 0
    assert "unable to get local issuer certificate" in str(info.value)
    assert tlsresume.lib.ERR_peek_error() == 0


def test_verify_false_only_when_asked():
    with local_server() as srv:
        ctx = ClientContext(verify=False)
        assert ctx.verify is False
        lines, _ = five_connections(ctx, "localhost", srv.port)
    assert lines == RESUMED


def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                    reason="needs /proc/self/fd")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_descriptors_are_given_back_by_every_path(s_server, other_certs,
                                                  host):
    # A connection to a numeric address gets a bare descriptor, which
    # the SSL owns; by name, a socket object.  Neither may leak: not
    # when close() runs, not when a handshake fails, and not when a
    # connection is dropped without close().
    peer = s_server(tls="1.2")
    ctx = ClientContext(cafile=peer.cafile)
    wrong = ClientContext(cafile=other_certs.cafile)
    ctx.connect(host, peer.port).close()  # imports and memos settle
    gc.collect()
    before = _open_descriptors()
    for _ in range(5):
        ctx.connect(host, peer.port).close()
        with pytest.raises(tlsresume.CertificateVerifyError):
            wrong.connect(host, peer.port)
    assert _open_descriptors() == before
    with warnings.catch_warnings():
        # An unclosed socket object says so as it goes.
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(5):
            # One at a time: s_server serves one connection at a time.
            conn = ctx.connect(host, peer.port)
            assert _open_descriptors() == before + 1
            del conn
            gc.collect()
            assert _open_descriptors() == before


def test_ip_address_hostname_verification():
    with local_server() as srv:
        ctx = ClientContext(cafile=srv.cafile)
        lines, reply = five_connections(ctx, "127.0.0.1", srv.port)
    assert lines == RESUMED
    assert reply == b"hello from tlsresume\n"


def test_server_hostname_overrides_host(certs):
    # Connect by IP, verify (and send SNI) as localhost.
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile) as srv:
        ctx = ClientContext(cafile=certs.cafile)
        with ctx.connect("127.0.0.1", srv.port,
                         server_hostname="localhost") as conn:
            assert conn.read() == b"hello from tlsresume\n"
        with pytest.raises(tlsresume.CertificateVerifyError,
                           match="hostname mismatch"):
            ctx.connect("127.0.0.1", srv.port,
                        server_hostname="elsewhere.example")


def test_sni_is_sent(s_server, certs):
    # s_server ends the handshake when the client names another server;
    # a client that sent no name at all would get through.
    peer = s_server(tls="1.3", extra=[
        "-servername", "elsewhere.example", "-servername_fatal",
        "-cert2", certs.certfile, "-key2", certs.keyfile])
    ctx = ClientContext(cafile=peer.cafile)
    with pytest.raises(tlsresume.ProtocolError,
                       match="unrecognized name"):
        ctx.connect("localhost", peer.port)
    # An IP address is never sent as SNI, so that connection passes.
    with ctx.connect("127.0.0.1", peer.port) as conn:
        conn.write(GET)
        assert read_all(conn).startswith(b"HTTP/1.0 200 ok")


def test_cafile_may_be_a_directory(tmp_path, certs):
    import shutil
    import subprocess

    shutil.copy(certs.cafile, tmp_path / "ca.pem")
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", certs.cafile],
        check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / f"{subject_hash}.0").symlink_to(tmp_path / "ca.pem")
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile) as srv:
        ctx = ClientContext(cafile=str(tmp_path))
        with ctx.connect("localhost", srv.port) as conn:
            assert conn.read() == b"hello from tlsresume\n"


# Mutual TLS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory, certs):
    cert = certs.ca.issue_cert("client.example")
    directory = tmp_path_factory.mktemp("client-cert")
    certfile = directory / "client.pem"
    keyfile = directory / "client.key"
    with open(certfile, "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_certificate(s_server, certs, client_cert, version):
    certfile, keyfile = client_cert
    peer = s_server(tls=version, extra=["-Verify", "1", "-CAfile",
                                        certs.cafile])
    ctx = ClientContext(cafile=peer.cafile, certfile=certfile,
                        keyfile=keyfile)
    lines, reply = five_connections(ctx, "localhost", peer.port, GET)
    assert lines == RESUMED
    assert b"client.example" in reply  # s_server shows the peer's cert


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_missing_client_certificate_is_refused(s_server, certs, version):
    peer = s_server(tls=version, extra=["-Verify", "1", "-CAfile",
                                        certs.cafile])
    ctx = ClientContext(cafile=peer.cafile)
    with pytest.raises(tlsresume.ProtocolError):
        # TLS 1.2 fails in the handshake, TLS 1.3 on the first read.
        with ctx.connect("localhost", peer.port) as conn:
            conn.write(GET)
            read_all(conn)
    assert tlsresume.lib.ERR_peek_error() == 0


def test_client_certificate_is_part_of_the_session_scope(certs,
                                                         client_cert):
    certfile, keyfile = client_cert
    with local_server() as srv:
        plain = ClientContext(cafile=srv.cafile)
        mutual = ClientContext(cafile=srv.cafile, certfile=certfile,
                               keyfile=keyfile)
        conn = plain.connect("localhost", srv.port)
        conn.close()
        with pytest.raises(tlsresume.SessionError):
            mutual.connect("localhost", srv.port, session=conn.session)


def test_write_and_read_refuse_arguments_of_other_types(s_server):
    # write(5) was bytes(5): five NUL bytes sent to the peer.
    peer = s_server(tls="1.3", www=False, extra=["-rev"])
    ctx = ClientContext(cafile=peer.cafile)
    with ctx.connect("localhost", peer.port) as conn:
        for bad in (5, True, "text", None, [104, 105]):
            with pytest.raises(TypeError):
                conn.write(bad)
        assert conn.write(bytearray(b"ok\n")) == 3
        for bad in ("16", 1.5, None):
            with pytest.raises(TypeError, match="size"):
                conn.read(bad)
        reply = b""
        while b"\n" not in reply:
            # A huge size is no MemoryError or OverflowError.
            reply += conn.read(2**40)
        assert reply.strip() == b"ko", "nothing else reached the peer"


def test_tls12_session_serves_connections_open_at_once(certs):
    # Two connections to one peer at the same moment (as from two
    # threads) both resume: the cache keeps the TLS 1.2 session while one
    # connection offers it.
    cache = tlsresume.SessionCache()
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile,
                      maximum_version="1.2") as srv:
        ctx = ClientContext(cafile=certs.cafile, cache=cache)
        with ctx.connect("127.0.0.1", srv.port,
                         server_hostname="localhost") as first:
            assert not first.session_reused
        with ctx.connect("127.0.0.1", srv.port,
                         server_hostname="localhost") as a:
            with ctx.connect("127.0.0.1", srv.port,
                             server_hostname="localhost") as b:
                assert a.session_reused and b.session_reused
        assert len(cache) == 1
        ctx.close()
    cache.clear()


def test_declined_tls12_session_leaves_the_cache(certs):
    # The server forgets (a new process on the same port, keeping
    # nothing): the stale session is offered once, declined, and not
    # kept for the next connection.
    cache = tlsresume.SessionCache()
    ctx = ClientContext(cafile=certs.cafile, cache=cache,
                        maximum_version="1.2")
    files = dict(certfile=certs.certfile, keyfile=certs.keyfile)
    with local_server(**files) as srv:
        port = srv.port
        with ctx.connect("127.0.0.1", port,
                         server_hostname="localhost") as conn:
            conn.read()
    assert len(cache) == 1
    with local_server(port=port, tickets=False, cache=False,
                      **files) as srv:
        with ctx.connect("127.0.0.1", port,
                         server_hostname="localhost") as conn:
            assert not conn.session_reused
    assert len(cache) == 0
    ctx.close()


@pytest.mark.parametrize("period", [0.05, 0.3])
def test_signals_during_read_neither_end_nor_extend_the_wait(period):
    """A signal is not a timeout, and signals cannot wait forever."""
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        with local_server(greeting=b"") as srv:  # it never speaks first
            ctx = ClientContext(cafile=srv.cafile)
            with ctx.connect("localhost", srv.port, timeout=1.0) as conn:
                signal.setitimer(signal.ITIMER_REAL, period, period)
                start = time.monotonic()
                with pytest.raises(tlsresume.TLSTimeoutError):
                    conn.read()
                elapsed = time.monotonic() - start
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired
    assert 0.9 < elapsed < 2.0


@pytest.fixture
def freed_sessions():
    """Addresses of the SSL_SESSIONs OpenSSL frees while the test runs.

    OpenSSL calls an ex_data free callback for every session it frees,
    whether or not data was set, so a reference kept too long shows as
    a session missing here.
    """
    freed = []

    @tlsresume.ffi.callback("CRYPTO_EX_free *")
    def on_free(parent, ptr, ad, idx, argl, argp):
        freed.append(int(tlsresume.ffi.cast("uintptr_t", parent)))

    index = tlsresume.lib.SSL_SESSION_get_ex_new_index(
        0, tlsresume.ffi.NULL, tlsresume.ffi.NULL, tlsresume.ffi.NULL,
        on_free)
    assert index >= 0
    yield freed
    tlsresume.lib.CRYPTO_free_ex_index(
        tlsresume.lib.CRYPTO_EX_INDEX_SSL_SESSION, index)


def _address(session):
    return int(tlsresume.ffi.cast("uintptr_t", session._ptr))


@pytest.mark.parametrize("ask", [False, True])
def test_tls12_resumption_from_the_cache_gives_back_every_reference(
        certs, freed_sessions, ask):
    # connect() takes a TLS 1.2 session from the cache as a bare
    # reference; the connection holds it, and makes a handle of it only
    # when `session` is asked for, before or after close.
    cache = tlsresume.SessionCache()
    with local_server(certfile=certs.certfile, keyfile=certs.keyfile,
                      maximum_version="1.2") as srv:
        ctx = ClientContext(cafile=certs.cafile, cache=cache)
        conns = []
        for _ in range(4):
            with ctx.connect("127.0.0.1", srv.port,
                             server_hostname="localhost") as conn:
                conn.read()
            conns.append(conn)
        assert [c.session_reused for c in conns] == [False, True, True,
                                                     True]
        key = conns[0].key
        probe = cache.take(key)
        cached = _address(probe)
        probe.close()
        if ask:
            handles = [c.session for c in conns[1:]]
            assert all(_address(h) == cached for h in handles)
            assert all(h.protocol == "TLSv1.2" and h.is_resumable
                       for h in handles)
            # A handle from a resumed connection resumes by itself.
            with ctx.connect("127.0.0.1", srv.port,
                             server_hostname="localhost",
                             session=handles[0]) as again:
                assert again.session_reused
            for h in handles:
                h.close()
            again.session.close()
        ctx.close()
    del conns, conn
    assert cached not in freed_sessions
    assert cache.clear() == 1
    assert cached in freed_sessions


def test_a_failed_handshake_gives_back_the_cached_reference(
        certs, other_certs, freed_sessions):
    # The session is offered to a server that then fails verification
    # (another certificate on the same port): the reference taken for
    # the offer is freed, and the cache forgets the peer.
    cache = tlsresume.SessionCache()
    ctx = ClientContext(cafile=certs.cafile, cache=cache,
                        maximum_version="1.2")
    with local_server(certfile=certs.certfile,
                      keyfile=certs.keyfile) as srv:
        port = srv.port
        with ctx.connect("127.0.0.1", port,
                         server_hostname="localhost") as conn:
            conn.read()
    probe = cache.take(conn.key)
    cached = _address(probe)
    probe.close()
    del conn
    with local_server(port=port, certfile=other_certs.certfile,
                      keyfile=other_certs.keyfile):
        with pytest.raises(tlsresume.CertificateVerifyError):
            ctx.connect("127.0.0.1", port, server_hostname="localhost")
    assert len(cache) == 0
    assert cached in freed_sessions
    ctx.close()
