"""The project's Server: session cache and tickets, versions, robustness
against bad clients, and a clean, fast stop."""

import os
import socket
import threading
import time

import pytest

import tlsresume
from tlsresume import ClientContext, Server
from tlsresume.testing import local_server

import rawtls

GREETING = b"hello from tlsresume\n"


def loop(srv, count=5, version=None, host="localhost"):
    """Connect ``count`` times, each offering the previous session."""
    ctx = ClientContext(cafile=srv.cafile, maximum_version=version)
    reused, session = [], None
    for _ in range(count):
        with ctx.connect(host, srv.port, session=session) as conn:
            reused.append(conn.session_reused)
            assert conn.read() == GREETING
        session = conn.session
    return reused


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# Tickets and the session cache -----------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("tickets,cache,resumes", [
    (True, True, True),
    (False, True, True),    # stateful session ids
    (True, False, True),    # stateless tickets need no cache
    (False, False, False),  # nothing left to resume with
], ids=["tickets+cache", "cache-only", "tickets-only", "neither"])
def test_tickets_and_cache(version, tickets, cache, resumes):
    with local_server(minimum_version=version, maximum_version=version,
                      tickets=tickets, cache=cache) as srv:
        reused = loop(srv)
        cached = srv.sessions_cached
    assert reused == [False] + [resumes] * 4
    if not cache:
        assert cached == 0


def test_tls12_tickets_off_uses_session_ids():
    with local_server(maximum_version="1.2", tickets=False) as srv:
        ctx = ClientContext(cafile=srv.cafile)
        conn = ctx.connect("localhost", srv.port)
        # The greeting comes after the server has cached the session.
        assert conn.read() == GREETING
        conn.close()
        assert conn.session.has_ticket is False
        assert conn.session.id
        assert srv.sessions_cached == 1
        with ctx.connect("localhost", srv.port,
                         session=conn.session) as again:
            assert again.session_reused
            assert again.read() == GREETING
        assert srv.sessions_cached == 1


def test_tls12_tickets_on_issues_a_ticket():
    with local_server(maximum_version="1.2") as srv:
        conn = ClientContext(cafile=srv.cafile).connect("localhost",
                                                        srv.port)
        conn.close()
    assert conn.session.has_ticket is True
    assert conn.session.ticket_lifetime_hint > 0


def test_tls13_stateful_tickets_live_in_the_cache():
    with local_server(minimum_version="1.3", tickets=False) as srv:
        assert loop(srv, 3) == [False, True, True]
        assert srv.sessions_cached > 0


# TLS versions ----------------------------------------------------------------


@pytest.mark.parametrize("minimum,maximum,expected", [
    (None, None, "TLSv1.3"),
    (None, "1.2", "TLSv1.2"),
    ("1.2", "1.2", "TLSv1.2"),
    ("1.3", None, "TLSv1.3"),
])
def test_versions(minimum, maximum, expected):
    with local_server(minimum_version=minimum,
                      maximum_version=maximum) as srv:
        with ClientContext(cafile=srv.cafile).connect(
                "localhost", srv.port) as conn:
            assert conn.version == expected


def test_version_outside_the_servers_range_fails_cleanly():
    with local_server(minimum_version="1.3") as srv:
        ctx = ClientContext(cafile=srv.cafile, maximum_version="1.2")
        with pytest.raises(tlsresume.ProtocolError):
            ctx.connect("localhost", srv.port)
        assert wait_for(lambda: srv.failed_handshakes == 1)
        assert loop(srv, 2) == [False, True]


def test_bad_options():
    with pytest.raises(ValueError):
        Server(minimum_version="1.1")
    with pytest.raises(ValueError):
        Server(maximum_version="TLS 9")
    with pytest.raises(ValueError):
        Server(key_type="dsa")
    with pytest.raises(ValueError):
        Server(keyfile="key.pem")


def test_bad_certificate_files(tmp_path, certs, other_certs):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    with pytest.raises(tlsresume.TLSError, match="PEM"):
        Server(certfile=str(garbage), keyfile=certs.keyfile)
    with pytest.raises(tlsresume.TLSError, match="key values mismatch"):
        Server(certfile=certs.certfile, keyfile=other_certs.keyfile)
    assert tlsresume.lib.ERR_peek_error() == 0


# Certificates ----------------------------------------------------------------


def test_given_certificate(certs):
    srv = Server(certfile=certs.certfile, keyfile=certs.keyfile)
    assert srv.cafile is None
    with pytest.raises(ValueError):
        srv.write_ca("unused.pem")
    with srv:
        ctx = ClientContext(cafile=certs.cafile)
        with ctx.connect("localhost", srv.port) as conn:
            assert conn.read() == GREETING


def test_write_ca(tmp_path):
    target = tmp_path / "ca.pem"
    with local_server() as srv:
        srv.write_ca(str(target))
        assert target.read_bytes().startswith(b"-----BEGIN CERTIFICATE")
        ctx = ClientContext(cafile=str(target))
        with ctx.connect("localhost", srv.port) as conn:
            assert conn.read() == GREETING
        with ctx.connect("127.0.0.1", srv.port) as conn:
            assert conn.read() == GREETING
        generated = srv.cafile
    assert not os.path.exists(generated), "the temporary CA is removed"
    assert target.exists(), "the written copy stays"


def test_ecdsa_certificate():
    with local_server(key_type="ecdsa", maximum_version="1.2") as srv:
        with ClientContext(cafile=srv.cafile).connect(
                "localhost", srv.port) as conn:
            assert "ECDSA" in conn.cipher


def test_key_file_is_private():
    srv = Server()
    try:
        keyfile = os.path.join(os.path.dirname(srv.cafile), "key.pem")
        assert os.stat(keyfile).st_mode & 0o077 == 0
    finally:
        srv.stop()


# Bad clients never stop it ---------------------------------------------------


def _raw(port, payload=None, linger=False):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    if linger:
        # Reset instead of a clean FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def test_bad_clients_never_stop_it():
    with local_server() as srv:
        _raw(srv.port)                                  # connect, leave
        _raw(srv.port, linger=True)                     # connect, reset
        _raw(srv.port, os.urandom(3000))                # garbage
        _raw(srv.port, b"GET / HTTP/1.0\r\n\r\n")        # plain HTTP
        _raw(srv.port, b"\x16\x03\x01\x02\x00\x01\x00")  # cut ClientHello
        _raw(srv.port, b"\x16\x03\x01\x00\x05hello")    # bad handshake
        for _ in range(20):
            _raw(srv.port, os.urandom(64), linger=True)
        assert wait_for(lambda: srv.accepted == 26)
        assert wait_for(lambda: srv.failed_handshakes == 26)
        assert srv._thread.is_alive()
        assert loop(srv) == [False] + [True] * 4


def test_client_leaving_mid_handshake_never_stops_it():
    with local_server() as srv:
        ctx = ClientContext(cafile=srv.cafile)
        for _ in range(10):
            # A client that refuses the server's certificate aborts the
            # handshake half way.
            with pytest.raises(tlsresume.CertificateVerifyError):
                ClientContext().connect("localhost", srv.port)
        with ctx.connect("localhost", srv.port) as conn:
            assert conn.read() == GREETING


def test_tls_client_leaving_at_once_never_stops_it():
    with local_server() as srv:
        ctx = ClientContext(cafile=srv.cafile)
        for _ in range(10):
            ctx.connect("localhost", srv.port).close()  # no read
        with rawtls.client_ctx() as raw_ctx:
            for _ in range(10):
                rawtls.RawConnection(raw_ctx, srv.port).close(notify=False)
        assert loop(srv) == [False] + [True] * 4


def test_idle_client_does_not_block_others():
    with local_server() as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port))
        try:
            started = time.monotonic()
            assert loop(srv, 3) == [False, True, True]
            assert time.monotonic() - started < 2
        finally:
            idle.close()


def test_many_clients_at_once():
    with local_server() as srv:
        ctx = ClientContext(cafile=srv.cafile)
        results, problems = [], []

        def worker():
            try:
                session = None
                for _ in range(10):
                    with ctx.connect("localhost", srv.port,
                                     session=session) as conn:
                        assert conn.read() == GREETING
                        results.append(conn.session_reused)
                    session = conn.session
            except BaseException as exc:
                problems.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert problems == []
    assert len(results) == 80
    assert results.count(False) == 8


# The session survives a client leaving without close_notify ------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_server_keeps_session_without_close_notify(version):
    number = tlsresume.client.tls_version(version)
    # Tickets off: the session lives only in the server's cache.
    with local_server(tickets=False, minimum_version=version,
                      maximum_version=version) as srv:
        with rawtls.client_ctx() as ctx:
            threads = threading.active_count()
            first = rawtls.RawConnection(ctx, srv.port)
            assert first.read() == GREETING
            session = first.session()
            cached = srv.sessions_cached
            assert cached >= 1
            first.close(notify=False)
            # Let the server notice the EOF and finish with the SSL.
            assert wait_for(lambda: threading.active_count() == threads)
            assert srv.sessions_cached == cached
            second = rawtls.RawConnection(ctx, srv.port, session=session)
            assert second.reused
            assert tlsresume.lib.SSL_version(second.ssl) == number
            second.close()
            session.close()


# Stopping --------------------------------------------------------------------


def _server_threads():
    return [t for t in threading.enumerate()
            if t.name.startswith("tlsresume-server")]


def test_stop_is_clean_and_fast():
    before = threading.active_count()
    srv = Server().start()
    port = srv.port
    assert len(loop(srv, 2)) == 2
    assert wait_for(lambda: threading.active_count() == before + 1)
    # Idle clients: a raw TCP one and a TLS one that never closes.
    idle_tcp = socket.create_connection(("127.0.0.1", port))
    ctx = ClientContext(cafile=srv.cafile)
    idle_tls = ctx.connect("localhost", port)
    assert wait_for(lambda: threading.active_count() == before + 3)
    started = time.monotonic()
    srv.stop()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"stop() took {elapsed:.2f} s"
    assert threading.active_count() == before
    assert _server_threads() == []
    assert tlsresume.lib.ERR_peek_error() == 0
    with pytest.raises(tlsresume.ConnectError):
        ctx.connect("localhost", port, timeout=2)
    srv.stop()  # twice is harmless
    assert srv.sessions_cached == 0
    idle_tcp.close()
    idle_tls.close()


def test_stop_before_start_and_restart_refused():
    Server().stop()
    with local_server() as srv:
        with pytest.raises(RuntimeError):
            srv.start()


def test_port_in_use():
    with local_server() as srv:
        other = Server(port=srv.port)
        with pytest.raises(tlsresume.TLSError, match="cannot listen"):
            other.start()
        other.stop()
        assert loop(srv, 2) == [False, True]


@pytest.mark.parametrize("option", [
    {"port": 70000}, {"port": -1}, {"port": "4433"}, {"port": None},
    {"timeout": 0}, {"timeout": -1}, {"timeout": float("nan")},
    {"timeout": float("inf")}, {"timeout": "5"},
])
def test_bad_port_or_timeout(option):
    # Port 70000 or -1 was an OverflowError from bind() (a traceback from
    # 'tlsresume serve --port 70000'); timeout=0 meant no timeout at all,
    # so a client that sends nothing held a thread forever.
    with pytest.raises(ValueError, match="port|timeout"):
        Server(**option)
