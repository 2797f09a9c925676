"""Session handles: ownership, scope, secrecy, threads and leaks."""

import gc
import threading
import time
import weakref

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tlsresume
from tlsresume import Connection, Session, SessionError, ffi, lib
from tlsresume.testing import local_server

import rawtls


@pytest.fixture(scope="module")
def server12():
    with local_server(maximum_version="1.2") as srv:
        yield srv


@pytest.fixture(scope="module")
def server13():
    with local_server(minimum_version="1.3") as srv:
        yield srv


@pytest.fixture(params=["1.2", "1.3"])
def server(request, server12, server13):
    return server12 if request.param == "1.2" else server13


def fresh_session(server, ctx=None, host="localhost"):
    """Connect, close, and return the connection's resumable session."""
    ctx = ctx or tlsresume.ClientContext(cafile=server.cafile)
    conn = ctx.connect(host, server.port)
    conn.close()
    session = conn.session
    assert session is not None and session.is_resumable
    return session


def settle():
    gc.collect()
    gc.collect()


# Construction and closing ----------------------------------------------------


def test_public_cannot_build_a_handle():
    with pytest.raises(TypeError):
        Session()
    with pytest.raises(TypeError):
        Session(ffi.NULL)


def test_handles_cannot_be_copied_or_pickled(server12):
    import copy
    import pickle

    session = fresh_session(server12)
    before = tlsresume.live_sessions()
    for make in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError):
            make(session)
    assert tlsresume.live_sessions() == before
    session.close()
    assert tlsresume.live_sessions() == before - 1


def test_close_twice_is_harmless(server):
    session = fresh_session(server)
    before = tlsresume.live_sessions()
    session.close()
    assert session.closed
    assert tlsresume.live_sessions() == before - 1
    session.close()
    assert tlsresume.live_sessions() == before - 1


def test_with_block_closes(server12):
    session = fresh_session(server12)
    before = tlsresume.live_sessions()
    with session as same:
        assert same is session
        assert same.protocol == "TLSv1.2"
    assert session.closed
    assert tlsresume.live_sessions() == before - 1


def test_use_after_close_raises(server12):
    session = fresh_session(server12)
    session.close()
    for name in ("id", "protocol", "protocol_version", "cipher", "time",
                 "timeout", "ticket_lifetime_hint", "has_ticket",
                 "is_resumable"):
        with pytest.raises(SessionError, match="closed"):
            getattr(session, name)
    with pytest.raises(SessionError):
        session.to_der()
    assert "closed" in repr(session)
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    accepted = server12.accepted
    with pytest.raises(SessionError, match="closed"):
        ctx.connect("localhost", server12.port, session=session)
    assert server12.accepted == accepted, "no connection was attempted"


def test_closed_low_level_session_cannot_be_set(server12):
    with rawtls.client_ctx() as ctx:
        conn = rawtls.RawConnection(ctx, server12.port)
        session = conn.session()
        conn.close()
        session.close()
        ssl = lib.SSL_new(ctx)
        try:
            with pytest.raises(SessionError, match="closed"):
                session.set_on(ssl)
            assert lib.SSL_get_session(ssl) == ffi.NULL
        finally:
            lib.SSL_free(ssl)


# Scope: a session only goes back where it came from --------------------------


def test_other_configuration_refused(server12):
    session = fresh_session(server12)
    others = [
        tlsresume.ClientContext(cafile=server12.cafile, alpn=["h2"]),
        tlsresume.ClientContext(cafile=server12.cafile,
                                maximum_version="1.2"),
        tlsresume.ClientContext(verify=False),
    ]
    accepted = server12.accepted
    for ctx in others:
        with pytest.raises(SessionError, match="only offered"):
            ctx.connect("localhost", server12.port, session=session)
    assert server12.accepted == accepted
    # The same settings in a new context are the same configuration.
    same = tlsresume.ClientContext(cafile=server12.cafile)
    with same.connect("localhost", server12.port, session=session) as conn:
        assert conn.session_reused
    session.close()


def test_other_peer_refused(server12, server13):
    session = fresh_session(server12)
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    with pytest.raises(SessionError):
        ctx.connect("localhost", server13.port, session=session)
    # Same port, another name: another peer as far as sessions go.
    with pytest.raises(SessionError):
        ctx.connect("127.0.0.1", server12.port, session=session)
    with pytest.raises(SessionError):
        ctx.connect("localhost", server12.port, session=session,
                    server_hostname="other.example")
    session.close()


def test_low_level_set_on_ssl_of_another_ctx_refused(server12):
    with rawtls.client_ctx() as ctx_a, rawtls.client_ctx() as ctx_b:
        conn = rawtls.RawConnection(ctx_a, server12.port)
        conn.read()
        session = conn.session()
        conn.close()
        ssl_b = lib.SSL_new(ctx_b)
        try:
            with pytest.raises(SessionError, match="another context"):
                session.set_on(ssl_b)
            assert lib.SSL_get_session(ssl_b) == ffi.NULL
        finally:
            lib.SSL_free(ssl_b)
        # Its own context takes it, and resumes.
        again = rawtls.RawConnection(ctx_a, server12.port, session=session)
        assert again.reused
        again.close()
        session.close()


def test_low_level_scope_survives_context_address_reuse(server12):
    # The session holds its SSL_CTX, so a new context can never get the
    # address the session's scope names.
    with rawtls.client_ctx() as ctx_a:
        conn = rawtls.RawConnection(ctx_a, server12.port)
        session = conn.session()
        conn.close()
    for _ in range(20):
        with rawtls.client_ctx() as ctx_b:
            ssl = lib.SSL_new(ctx_b)
            try:
                with pytest.raises(SessionError):
                    session.set_on(ssl)
            finally:
                lib.SSL_free(ssl)
    session.close()


def test_high_and_low_level_sessions_do_not_mix(server12):
    high = fresh_session(server12)
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    with rawtls.client_ctx() as raw_ctx:
        ssl = lib.SSL_new(raw_ctx)
        try:
            with pytest.raises(SessionError):
                high.set_on(ssl)
        finally:
            lib.SSL_free(ssl)
        conn = rawtls.RawConnection(raw_ctx, server12.port)
        low = conn.session()
        conn.close()
    with pytest.raises(SessionError):
        ctx.connect("localhost", server12.port, session=low)
    high.close()
    low.close()


def test_loaded_session_keeps_its_peer(server12, server13):
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    data = fresh_session(server12, ctx).to_der()
    loaded = ctx.load_session(data, "localhost", server12.port)
    assert loaded.scope == ctx.peer_key("localhost", server12.port)
    with pytest.raises(SessionError):
        ctx.connect("localhost", server13.port, session=loaded)
    with ctx.connect("localhost", server12.port, session=loaded) as conn:
        assert conn.session_reused
    loaded.close()


# Secrets ---------------------------------------------------------------------


def _der_fields(data):
    """Top-level fields of a DER SEQUENCE as (tag, bytes) pairs."""

    def length(at):
        first = data[at]
        if first < 0x80:
            return at + 1, first
        count = first & 0x7F
        return at + 1 + count, int.from_bytes(data[at + 1:at + 1 + count],
                                              "big")

    assert data[0] == 0x30
    at, size = length(1)
    end = at + size
    fields = []
    while at < end:
        tag = data[at]
        start, size = length(at + 1)
        fields.append((tag, data[start:start + size]))
        at = start + size
    return fields


def _windows(secret, width=8):
    return {secret[i:i + width].hex() for i in range(len(secret) - width + 1)}


def test_repr_never_shows_secrets(server):
    ctx = tlsresume.ClientContext(cafile=server.cafile)
    conn = ctx.connect("localhost", server.port)
    conn.close()
    session = conn.session
    der = session.to_der()
    # SSL_SESSION ::= SEQUENCE { version, sslVersion, cipher, sessionID,
    # masterKey, ... }: the fifth field is the master secret.
    tag, master = _der_fields(der)[4]
    assert tag == 0x04 and len(master) in (32, 48)
    shown = " ".join([repr(session), str(session), repr(conn),
                      repr(session.scope), str(session.scope)]).lower()
    assert der.hex() not in shown
    for window in _windows(master):
        assert window not in shown
    assert "tlsv1." in shown
    session.close()


# Properties ------------------------------------------------------------------


def test_properties_tls12_with_ticket(server12):
    session = fresh_session(server12)
    assert session.protocol == "TLSv1.2"
    assert session.protocol_version == lib.TLS1_2_VERSION == 0x0303
    assert len(session.id) == 64 and int(session.id, 16) >= 0
    assert session.cipher and "-" in session.cipher
    assert abs(session.time - time.time()) < 60
    assert session.timeout > 0
    assert session.has_ticket is True
    assert session.ticket_lifetime_hint > 0
    assert session.is_resumable is True
    assert repr(session).startswith(f"<tlsresume.Session {session.id[:16]}")
    for name in ("id", "protocol", "cipher", "time", "timeout",
                 "has_ticket", "is_resumable"):
        with pytest.raises(AttributeError):
            setattr(session, name, None)
    session.close()


def test_properties_tls13(server13):
    session = fresh_session(server13)
    assert session.protocol == "TLSv1.3"
    assert session.protocol_version == 0x0304
    assert session.cipher.startswith("TLS_")
    assert session.has_ticket is True
    assert session.ticket_lifetime_hint > 0
    assert session.is_resumable is True
    assert "TLSv1.3" in repr(session)
    session.close()


def test_properties_tls12_session_id_only():
    with local_server(maximum_version="1.2", tickets=False) as srv:
        session = fresh_session(srv)
    assert session.has_ticket is False
    assert session.ticket_lifetime_hint == 0
    assert len(session.id) == 64
    assert session.is_resumable
    session.close()


def test_to_der_round_trip(server):
    ctx = tlsresume.ClientContext(cafile=server.cafile)
    session = fresh_session(server, ctx)
    before = tlsresume.live_sessions()
    loaded = ctx.load_session(session.to_der(), "localhost", server.port)
    assert tlsresume.live_sessions() == before + 1
    assert loaded.to_der() == session.to_der()
    assert (loaded.id, loaded.protocol, loaded.cipher) == (
        session.id, session.protocol, session.cipher)
    loaded.close()
    session.close()
    assert tlsresume.live_sessions() == before - 1


def test_adopt_from_a_low_level_new_session_callback(server13):
    got = []

    @ffi.callback("int(SSL *, SSL_SESSION *)")
    def on_new(ssl, session):
        got.append(Session.adopt(ssl, session))
        return 1  # the reference is ours now

    before = tlsresume.live_sessions()
    with rawtls.client_ctx() as ctx:
        lib.SSL_CTX_set_session_cache_mode(
            ctx, lib.SSL_SESS_CACHE_CLIENT
            | lib.SSL_SESS_CACHE_NO_INTERNAL_STORE)
        lib.SSL_CTX_sess_set_new_cb(ctx, on_new)
        conn = rawtls.RawConnection(ctx, server13.port)
        conn.read()  # the TLS 1.3 tickets arrive here
        conn.close()
        assert len(got) == 2  # OpenSSL servers send two tickets
        assert all(s.is_resumable and s.protocol == "TLSv1.3" for s in got)
        again = rawtls.RawConnection(ctx, server13.port, session=got[-1])
        assert again.reused
        again.close()
    assert tlsresume.live_sessions() == before + 2
    with rawtls.client_ctx() as ctx:
        ssl = lib.SSL_new(ctx)
        with pytest.raises(SessionError):
            Session.adopt(ssl, ffi.NULL)
        lib.SSL_free(ssl)
    for s in got:
        s.close()
    assert tlsresume.live_sessions() == before


# Threads ---------------------------------------------------------------------


def _read_everything(session):
    return (session.id, session.protocol, session.cipher, session.time,
            session.timeout, session.ticket_lifetime_hint,
            session.has_ticket, session.is_resumable, session.to_der(),
            repr(session))


def _read_until_closed(session, ready, problems):
    ready.wait()
    try:
        while True:
            _read_everything(session)
    except SessionError:
        return
    except BaseException as exc:  # anything else is a bug
        problems.append(exc)


def test_threads_read_while_one_closes(server12):
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    base = tlsresume.live_sessions()
    for _ in range(10):
        session = fresh_session(server12, ctx)
        problems = []
        ready = threading.Barrier(9)
        threads = [threading.Thread(target=_read_until_closed,
                                    args=(session, ready, problems))
                   for _ in range(8)]
        for t in threads:
            t.start()
        ready.wait()
        time.sleep(0.005)
        session.close()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert problems == []
    settle()
    assert tlsresume.live_sessions() == base


def test_concurrent_close_frees_once(server12):
    session = fresh_session(server12)
    before = tlsresume.live_sessions()
    ready = threading.Barrier(8)

    def closer():
        ready.wait()
        session.close()

    threads = [threading.Thread(target=closer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert tlsresume.live_sessions() == before - 1


def test_one_session_offered_from_many_threads(server12):
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    session = fresh_session(server12, ctx)
    results, problems = [], []

    def worker():
        try:
            for _ in range(5):
                with ctx.connect("localhost", server12.port,
                                 session=session) as conn:
                    results.append(conn.session_reused)
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert problems == []
    assert results == [True] * 20
    session.close()


# Counting and garbage collection ---------------------------------------------


def test_live_sessions_counts_handles(server12):
    settle()
    base = tlsresume.live_sessions()
    with rawtls.client_ctx() as ctx:
        conn = rawtls.RawConnection(ctx, server12.port)
        a = conn.session()
        assert tlsresume.live_sessions() == base + 1
        b = conn.session()
        assert tlsresume.live_sessions() == base + 2
        conn.close()
    a.close()
    assert tlsresume.live_sessions() == base + 1
    b.close()
    assert tlsresume.live_sessions() == base


def test_gc_frees_forgotten_handles(server12):
    settle()
    base = tlsresume.live_sessions()
    session = fresh_session(server12)
    ref = weakref.ref(session)
    assert tlsresume.live_sessions() == base + 1
    del session
    settle()
    assert ref() is None
    assert tlsresume.live_sessions() == base


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_resumption_loop_keeps_only_the_newest(version, server12, server13):
    # The usual loop: each connection offers the previous one's session,
    # and nobody closes the old handles.  Only the newest may stay alive.
    server = server12 if version == "1.2" else server13
    settle()
    base = tlsresume.live_sessions()
    ctx = tlsresume.ClientContext(cafile=server.cafile)
    session = None
    for _ in range(30):
        with ctx.connect("localhost", server.port, session=session) as conn:
            pass
        session = conn.session
    del conn
    settle()
    assert tlsresume.live_sessions() == base + 1
    session.close()
    assert tlsresume.live_sessions() == base


def test_forgotten_connection_frees_its_sessions(server13):
    settle()
    base = tlsresume.live_sessions()
    ctx = tlsresume.ClientContext(cafile=server13.cafile)
    conn = ctx.connect("localhost", server13.port)
    assert conn.read() == b"hello from tlsresume\n"  # tickets arrive
    assert conn.session is not None
    ref = weakref.ref(conn)
    del conn  # never closed
    settle()
    assert ref() is None
    assert tlsresume.live_sessions() == base


def _rss():
    settle()
    return psutil.Process().memory_info().rss


def _cycles(ctx, port, count, session):
    for _ in range(count):
        with ctx.connect("127.0.0.1", port, session=session) as conn:
            pass
        session = conn.session
    return session


@pytest.mark.slow
def test_ten_thousand_cycles_leak_nothing(server12, server13):
    # 5,000 resumed connections on each version against the project's own
    # server (in this process, so its leaks would count too).  After a
    # warm-up, 10,000 leaked SSL_SESSIONs would add ~6 MB of RSS; noise
    # measured on this machine is ~0.1 MB.
    settle()
    base = tlsresume.live_sessions()
    ctx12 = tlsresume.ClientContext(cafile=server12.cafile)
    ctx13 = tlsresume.ClientContext(cafile=server13.cafile)
    s12 = _cycles(ctx12, server12.port, 300, None)
    s13 = _cycles(ctx13, server13.port, 300, None)
    before = _rss()
    started = time.monotonic()
    s12 = _cycles(ctx12, server12.port, 5000, s12)
    s13 = _cycles(ctx13, server13.port, 5000, s13)
    elapsed = time.monotonic() - started
    growth = _rss() - before
    assert tlsresume.live_sessions() == base + 2
    s12.close()
    s13.close()
    assert tlsresume.live_sessions() == base
    assert growth < 2 * 1024 * 1024, (
        f"RSS grew by {growth / 1024:.0f} KiB over 10,000 cycles")
    assert elapsed < 60, f"10,000 cycles took {elapsed:.1f} s"


# Exceptions raised inside the new-session callback ---------------------------


class Boom(Exception):
    pass


@pytest.fixture
def exploding_callback(monkeypatch):
    def explode(self, session):
        session.close()
        raise Boom("raised inside the new-session callback")

    monkeypatch.setattr(Connection, "_on_new_session", explode)


def test_callback_exception_surfaces_from_connect_tls12(server12,
                                                        exploding_callback):
    settle()
    base = tlsresume.live_sessions()
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    with pytest.raises(Boom):
        ctx.connect("localhost", server12.port)
    settle()
    assert tlsresume.live_sessions() == base
    assert lib.ERR_peek_error() == 0


def test_callback_exception_surfaces_from_read_tls13(server13,
                                                     exploding_callback):
    settle()
    base = tlsresume.live_sessions()
    ctx = tlsresume.ClientContext(cafile=server13.cafile)
    conn = ctx.connect("localhost", server13.port)  # no ticket yet
    with pytest.raises(Boom):
        conn.read()
    conn.close()  # raised once, not again
    assert conn.closed
    settle()
    assert tlsresume.live_sessions() == base


def test_callback_exception_surfaces_from_close_tls13(server13,
                                                      exploding_callback):
    settle()
    base = tlsresume.live_sessions()
    ctx = tlsresume.ClientContext(cafile=server13.cafile)
    conn = ctx.connect("localhost", server13.port)
    with pytest.raises(Boom):
        conn.close()
    assert conn.closed
    settle()
    assert tlsresume.live_sessions() == base


# Bad pointers through the safe layer -----------------------------------------


@pytest.mark.parametrize("bad", [ffi.NULL, ffi.cast("SSL *", 0)],
                         ids=["ffi.NULL", "NULL SSL"])
def test_null_ssl_is_refused_not_a_crash(server12, bad):
    # OpenSSL dereferences these without a check: a segfault, not an error.
    session = fresh_session(server12)
    before = tlsresume.live_sessions()
    with pytest.raises((TypeError, ValueError), match="NULL|cdata"):
        Session.from_ssl(bad)
    with pytest.raises((TypeError, ValueError), match="NULL|cdata"):
        session.set_on(bad)
    with pytest.raises((TypeError, ValueError), match="NULL|cdata"):
        Session.adopt(bad, ffi.cast("SSL_SESSION *", 1))
    assert tlsresume.live_sessions() == before
    session.close()


def test_mistyped_pointers_are_refused(server12):
    with rawtls.client_ctx() as ctx:
        ssl = lib.SSL_new(ctx)
        try:
            before = tlsresume.live_sessions()
            for bad in ("ssl", 1, None, ffi.new("int *")):
                with pytest.raises(TypeError):
                    Session.from_ssl(bad)
                with pytest.raises(TypeError, match="SSL_SESSION"):
                    Session.adopt(ssl, bad)
            assert tlsresume.live_sessions() == before
        finally:
            lib.SSL_free(ssl)


# Serialised sessions from outside ---


def test_trailing_bytes_after_a_session_are_corrupt(server12):
    # d2i_SSL_SESSION decodes the first DER object: "good + junk", or two
    # sessions glued together, loaded as if nothing were wrong.
    ctx = tlsresume.ClientContext(cafile=server12.cafile)
    session = fresh_session(server12, ctx)
    good = session.to_der()
    session.close()
    before = tlsresume.live_sessions()
    for data in (good + b"\x00", good + b"junk", good + good):
        with pytest.raises(SessionError, match="corrupt"):
            ctx.load_session(data, "localhost", server12.port)
    ctx.load_session(good, "localhost", server12.port).close()
    assert tlsresume.live_sessions() == before


@pytest.fixture(scope="module")
def good_der(server12):
    session = fresh_session(server12)
    try:
        yield session.to_der()
    finally:
        session.close()


@pytest.fixture(scope="module")
def fuzz_ctx(server12):
    with tlsresume.ClientContext(cafile=server12.cafile) as ctx:
        yield ctx


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzzed_session_bytes(server12, good_der, fuzz_ctx, data):
    # Random bytes, truncations and byte flips of a real session: a
    # SessionError or a session, never a crash, a leak or a queued error.
    kind = data.draw(st.sampled_from(["random", "cut", "flip", "splice"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=600))
    elif kind == "cut":
        blob = good_der[:data.draw(st.integers(0, len(good_der)))]
    elif kind == "flip":
        blob = bytearray(good_der)
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(blob) - 1))
            blob[at] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    else:
        at = data.draw(st.integers(0, len(good_der)))
        blob = good_der[:at] + data.draw(st.binary(max_size=64))
    before = tlsresume.live_sessions()
    try:
        loaded = fuzz_ctx.load_session(blob, "localhost", server12.port)
    except SessionError as exc:
        assert "corrupt" in str(exc)
    else:
        assert loaded.to_der()
        repr(loaded)
        loaded.close()
    assert tlsresume.live_sessions() == before
    assert lib.ERR_peek_error() == 0
