"""SessionCache end to end: ClientContext against `openssl s_server -www`.

Real handshakes on loopback; nothing of OpenSSL or the network is faked.
"""

import pytest

import tlsresume
from tlsresume import ClientContext, SessionCache
from tlsresume.server import Server

NEW_THEN_REUSED = [False, True, True, True, True]


class RecordingCache(SessionCache):
    """A real SessionCache that also keeps what it handed out.

    ``offered`` holds each taken session's DER encoding (ticket
    included), so two offers of one ticket would show as equal bytes;
    ``handles`` the taken handles themselves.
    """

    def __init__(self, **options):
        super().__init__(**options)
        self.offered = []
        self.handles = []

    def take(self, key):
        session = super().take(key)
        if session is not None:
            self.offered.append(session.to_der())
            self.handles.append(session)
        return session


def fetch(ctx, srv, **options):
    """One exchange, read far enough that tickets arrive; closed.

    `s_server -www` answers an HTTP/1.0 request and closes; the
    project's Server sends a greeting and waits for the client to close.
    """
    conn = ctx.connect(srv.host, srv.port, **options)
    try:
        if isinstance(srv, Server):
            assert conn.read()
        else:
            conn.write(b"GET / HTTP/1.0\r\n\r\n")
            while conn.read():
                pass
    finally:
        conn.close()
    return conn


def test_tls13_new_then_reused_and_no_ticket_offered_twice(s_server):
    srv = s_server(tls="1.3")
    cache = RecordingCache(tickets_per_peer=4)
    ctx = ClientContext(cafile=srv.cafile, cache=cache)

    reused = []
    for _ in range(5):
        conn = fetch(ctx, srv)
        reused.append(conn.session_reused)
        assert conn.session.protocol == "TLSv1.3"
        assert 1 <= len(cache) <= 4

    assert reused == NEW_THEN_REUSED
    assert len(cache.offered) == 4
    assert len(set(cache.offered)) == 4, "a ticket was offered twice"
    assert all(h.closed for h in cache.handles)  # used once, then freed
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (4, 1)


@pytest.mark.parametrize("no_ticket", [False, True],
                         ids=["tickets", "session-ids"])
def test_tls12_new_then_reused(s_server, no_ticket):
    srv = s_server(tls="1.2", no_ticket=no_ticket)
    cache = RecordingCache()
    ctx = ClientContext(cafile=srv.cafile, cache=cache)

    reused, ids = [], set()
    for _ in range(5):
        conn = fetch(ctx, srv)
        reused.append(conn.session_reused)
        assert conn.session.protocol == "TLSv1.2"
        assert len(cache) == 1  # one session per peer, kept when taken
        ids.add(conn.session.id)
        assert conn.session.has_ticket is not no_ticket

    assert reused == NEW_THEN_REUSED
    assert len(ids) == 1  # the same session, resumed four times
    assert len(cache.offered) == 4


def test_tls12_a_declined_session_is_replaced(s_server, certs):
    first = s_server(tls="1.2", no_ticket=True)
    cache = SessionCache()
    ctx = ClientContext(cafile=first.cafile, cache=cache)
    old = fetch(ctx, first).session.id
    assert fetch(ctx, first).session_reused
    first.process.kill()
    first.process.wait()

    # A new server on the same port knows nothing of the old session.
    with Server(host=first.host, port=first.port, certfile=certs.certfile,
                keyfile=certs.keyfile, maximum_version="1.2",
                tickets=False) as second:
        declined = fetch(ctx, second)
        assert not declined.session_reused
        assert len(cache) == 1 and declined.session.id != old
        assert fetch(ctx, second).session_reused


def _variants(srv, certs, other_certs, tmp_path):
    both = tmp_path / "two-cas.pem"
    both.write_bytes(open(srv.cafile, "rb").read()
                     + open(other_certs.cafile, "rb").read())
    return {
        "server name": ({"cafile": srv.cafile},
                        {"server_hostname": "localhost"}),
        "verification off": ({"verify": False}, {}),
        "CA file": ({"cafile": str(both)}, {}),
        "client certificate": ({"cafile": srv.cafile,
                                "certfile": other_certs.certfile,
                                "keyfile": other_certs.keyfile}, {}),
    }


@pytest.mark.parametrize("what", ["server name", "verification off",
                                  "CA file", "client certificate"])
def test_isolation_by_configuration(s_server, certs, other_certs, tmp_path,
                                    what):
    srv = s_server(tls="1.3")
    cache = SessionCache()
    base = ClientContext(cafile=srv.cafile, cache=cache)
    assert not fetch(base, srv).session_reused
    held = len(cache)
    assert held > 0

    settings, options = _variants(srv, certs, other_certs, tmp_path)[what]
    other = ClientContext(cache=cache, **settings)
    hits = cache.stats()["hits"]
    conn = fetch(other, srv, **options)
    # Nothing was even offered: the base's tickets stay put.
    assert not conn.session_reused
    assert cache.stats()["hits"] == hits
    assert len(cache.keys()) == 2
    # Each side resumes its own sessions.
    assert fetch(other, srv, **options).session_reused
    assert fetch(base, srv).session_reused


@pytest.mark.parametrize("server", ["s_server", "Server"])
def test_a_server_that_cannot_resume_leaves_the_cache_empty(s_server,
                                                            server):
    cache = SessionCache()
    if server == "s_server":
        srv = s_server(tls="1.2", no_ticket=True, no_cache=True)
        ctx = ClientContext(cafile=srv.cafile, cache=cache)
        for _ in range(3):
            assert not fetch(ctx, srv).session_reused
    else:
        with Server(maximum_version="1.2", tickets=False,
                    cache=False) as srv:
            ctx = ClientContext(cafile=srv.cafile, cache=cache)
            for _ in range(3):
                assert not fetch(ctx, srv).session_reused
    assert len(cache) == 0
    assert cache.stats()["stores"] == 0


def test_own_server_without_tickets_or_cache_sends_no_tls13_tickets():
    cache = SessionCache()
    with Server(maximum_version="1.3", tickets=False, cache=False) as srv:
        ctx = ClientContext(cafile=srv.cafile, cache=cache)
        for _ in range(3):
            conn = fetch(ctx, srv)
            assert not conn.session_reused
    assert cache.stats()["stores"] == 0


def test_a_failed_handshake_caches_nothing(s_server, other_certs):
    srv = s_server(tls="1.3")
    cache = SessionCache()
    wrong = ClientContext(cafile=other_certs.cafile, cache=cache)
    with pytest.raises(tlsresume.CertificateVerifyError):
        fetch(wrong, srv)
    assert len(cache) == 0 and cache.keys() == []


def test_a_failed_handshake_drops_what_was_offered(s_server, other_certs):
    srv = s_server(tls="1.3")
    cache = RecordingCache()
    ctx = ClientContext(cafile=srv.cafile, cache=cache)
    fetch(ctx, srv)
    key = ctx.peer_key(srv.host, srv.port)
    held = len(cache)
    assert held >= 2 and cache.keys() == [key]
    srv.process.kill()
    srv.process.wait()

    # Same address, now with a certificate this context does not trust.
    with Server(host=srv.host, port=srv.port,
                certfile=other_certs.certfile,
                keyfile=other_certs.keyfile):
        with pytest.raises(tlsresume.CertificateVerifyError):
            fetch(ctx, srv)
    assert len(cache.handles) == 1 and cache.handles[0].closed
    assert len(cache) == 0 and cache.take(key) is None
    assert cache.stats()["discards"] == held - 1


def test_putting_conn_session_into_the_feeding_cache_holds_it_once():
    # conn.session is a handle on a ticket the context has already put:
    # filed again, that ticket would be offered twice.
    cache = RecordingCache()
    with Server(maximum_version="1.3") as srv:
        ctx = ClientContext(cafile=srv.cafile, cache=cache)
        with ctx.connect("127.0.0.1", srv.port) as conn:
            conn.read()
        held = len(cache)
        assert held >= 1 and conn.session is not None
        assert cache.put(conn.key, conn.session) is False
        assert len(cache) == held
        for _ in range(held):
            with ctx.connect("127.0.0.1", srv.port) as again:
                assert again.session_reused
                again.read()
        ctx.close()
    assert len(cache.offered) == held
    assert len(set(cache.offered)) == held, "a ticket was offered twice"
    for handle in cache.handles:
        handle.close()
    cache.clear()
