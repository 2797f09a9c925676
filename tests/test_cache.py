"""SessionCache: a model-based test, threads, memory, and the API edges.

The sessions are real: a few handshakes with the local server, then many
handles on the same SSL_SESSION objects, each filed under its own peer.
Time is a fake clock; nothing here sleeps.
"""

import collections
import gc
import itertools
import random
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import tlsresume
from tlsresume import PeerKey, Session, SessionCache, SessionError, ffi, lib
from tlsresume.cache import TLS13_MAX_LIFETIME
from tlsresume.cachebench import _real_session, _rss
from tlsresume.testing import local_server


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def _handshake(**options):
    session = _real_session(**options)
    assert session.is_resumable
    return session


@pytest.fixture(scope="module")
def bases():
    """Real sessions by kind: TLS 1.3 ticket, TLS 1.2 ticket, TLS 1.2 id."""
    made = {
        "tls13": _handshake(maximum_version="1.3"),
        "tls12-ticket": _handshake(maximum_version="1.2"),
        "tls12-id": _handshake(maximum_version="1.2", tickets=False),
    }
    assert made["tls13"].protocol_version == lib.TLS1_3_VERSION
    assert made["tls12-ticket"].has_ticket
    assert made["tls12-ticket"].ticket_lifetime_hint > 0
    assert not made["tls12-id"].has_ticket
    assert made["tls12-id"].ticket_lifetime_hint == 0
    yield made
    for session in made.values():
        session.close()


@pytest.fixture(scope="module")
def copies(bases):
    """Per kind, three distinct SSL_SESSIONs decoded from the base's
    bytes: the cache holds one SSL_SESSION once per peer, so several
    sessions for one peer must be several SSL_SESSIONs."""
    made = {kind: [Session._from_der(base.to_der(), base.scope)
                   for _ in range(3)]
            for kind, base in bases.items()}
    yield made
    for sessions in made.values():
        for session in sessions:
            session.close()


def handle(base, key):
    """A new handle on ``base``'s SSL_SESSION, scoped to ``key``.

    Like Session._dup(), but filed under another peer, so that one real
    session can stand in for many peers' sessions.
    """
    with base._lock:
        lib.SSL_SESSION_up_ref(base._ptr)
        return Session._wrap(base._ptr, key)


def peer(i):
    return PeerKey("127.0.0.1", 1000 + i, f"{i:016x}")


def lifetime(session, ttl):
    """What the cache should allow, worked out from the properties."""
    limits = [session.timeout]
    if ttl is not None:
        limits.append(ttl)
    if session.ticket_lifetime_hint > 0:
        limits.append(session.ticket_lifetime_hint)
    if session.protocol_version == lib.TLS1_3_VERSION:
        limits.append(TLS13_MAX_LIFETIME)
    return min(limits)


def held(cache):
    """Count what the cache really holds (white box)."""
    return cache._count()


def consistent(stats):
    return stats["stores"] == (stats["sessions"] + stats["taken"]
                               + stats["evictions"] + stats["expirations"]
                               + stats["discards"])


# The model -----------------------------------------------------------

PEERS = 5
KINDS = ("tls13", "tls12-ticket", "tls12-id")


class CacheMachine(RuleBasedStateMachine):
    """SessionCache against a plain model: a list of peers, LRU first."""

    bases = None  # the real sessions, set by the test below
    copies = None  # distinct copies of them, likewise

    def __init__(self):
        super().__init__()
        self.cache = None

    @initialize(
        max_entries=st.integers(1, 4),
        tickets=st.integers(1, 3),
        ttl=st.sampled_from([None, 1, 5, 7.5, 10]),
    )
    def setup(self, max_entries, tickets, ttl):
        self.start_live = tlsresume.live_sessions()
        self.clock = FakeClock()
        self.cache = SessionCache(max_entries=max_entries, ttl=ttl,
                                  tickets_per_peer=tickets,
                                  clock=self.clock)
        self.ttl = ttl
        self.max_entries = max_entries
        self.tickets = tickets
        self.keys = [peer(i) for i in range(PEERS)]
        # [key, [(deadline, handle, tls13, base), ...newest first]],
        # least recently used first
        self.model = []
        self.counts = collections.Counter()
        self.dropped = []

    def _entry(self, key):
        for i, (k, items) in enumerate(self.model):
            if k == key:
                return i, items
        return None, None

    def _drop(self, items, why):
        self.counts[why] += len(items)
        self.dropped.extend(item[1] for item in items)

    @rule(p=st.integers(0, PEERS - 1), kind=st.sampled_from(KINDS),
          copy=st.integers(0, 2), age=st.sampled_from([0, 0, 1, 3, 6]))
    def put(self, p, kind, copy, age):
        key = self.keys[p]
        base = self.copies[kind][copy]
        session = handle(base, key)
        # A wall clock the age can be read from exactly.
        self.cache._wall = lambda: float(base.time + age)
        stored = self.cache.put(key, session)

        left = lifetime(base, self.ttl) - age
        i, items = self._entry(key)
        if left <= 0 or (items is not None
                         and any(item[3] is base for item in items)):
            # Expired already, or this SSL_SESSION is held for the peer.
            assert stored is False
            assert session.closed
            self.counts["refused"] += 1
            return
        assert stored is True
        tls13 = kind == "tls13"
        item = (self.clock.now + left, session, tls13, base)
        if items is None:
            self.model.append([key, [item]])
            if len(self.model) > self.max_entries:
                _, evicted = self.model.pop(0)
                self._drop(evicted, "evictions")
        else:
            self.model.append(self.model.pop(i))
            if not tls13 or not items[0][2]:
                self._drop(items, "evictions")
                items.clear()
            items.insert(0, item)
            if len(items) > self.tickets:
                self._drop([items.pop()], "evictions")
        self.counts["stores"] += 1

    @rule(p=st.integers(0, PEERS - 1))
    def put_closed(self, p):
        session = handle(self.bases["tls13"], self.keys[p])
        session.close()
        assert self.cache.put(self.keys[p], session) is False
        self.counts["refused"] += 1

    @rule(p=st.integers(0, PEERS - 1))
    def take(self, p):
        key = self.keys[p]
        got = self.cache.take(key)

        expected = None
        kept = False  # a TLS 1.2 session stays; the caller gets a copy
        i, items = self._entry(key)
        if items is not None:
            while items:
                item = items[0]
                if self.clock.now < item[0]:
                    expected = item[1]
                    kept = not item[2]
                    if not kept:
                        items.pop(0)
                        self.counts["taken"] += 1
                    break
                self._drop([items.pop(0)], "expirations")
            if items:
                self.model.append(self.model.pop(i))
            else:
                self.model.pop(i)
        self.counts["hits" if expected is not None else "misses"] += 1

        if kept:
            # Another handle on the same SSL_SESSION as the one held.
            assert got is not expected
            assert ffi.cast("void *", got._ptr) == \
                ffi.cast("void *", expected._ptr)
            assert not expected.closed
        else:
            assert got is expected
        if got is not None:
            assert not got.closed
            assert got.scope == key
            got.close()

    @rule(p=st.integers(0, PEERS - 1))
    def discard(self, p):
        key = self.keys[p]
        i, items = self._entry(key)
        count = 0
        if items is not None:
            count = len(items)
            self._drop(items, "discards")
            self.model.pop(i)
        assert self.cache.discard(key) == count

    @rule()
    def clear(self):
        count = sum(len(items) for _, items in self.model)
        for _, items in self.model:
            self._drop(items, "discards")
        self.model = []
        assert self.cache.clear() == count

    @rule()
    def expire(self):
        now = self.clock.now
        count = 0
        for entry in list(self.model):
            gone = [item for item in entry[1] if not now < item[0]]
            if gone:
                count += len(gone)
                self._drop(gone, "expirations")
                entry[1] = [item for item in entry[1] if now < item[0]]
                if not entry[1]:
                    self.model.remove(entry)
        assert self.cache.expire() == count

    @rule(dt=st.sampled_from([0.5, 1, 2.5, 4, 5]))
    def advance(self, dt):
        self.clock.now += dt

    @precondition(lambda self: self.cache is not None and self.model)
    @rule(data=st.data())
    def advance_to_a_deadline(self, data):
        # Land exactly on a deadline, or just short of it: the boundary.
        deadlines = sorted({item[0] for _, items in self.model
                            for item in items if item[0] > self.clock.now})
        if deadlines:
            target = data.draw(st.sampled_from(deadlines))
            nudge = data.draw(st.sampled_from([0.0, -1e-6]))
            self.clock.now = max(self.clock.now, target + nudge)

    @invariant()
    def matches_the_model(self):
        if self.cache is None:
            return
        assert self.cache.keys() == [key for key, _ in self.model]
        size = sum(len(items) for _, items in self.model)
        assert len(self.cache) == size == held(self.cache)
        stats = self.cache.stats()
        for name in ("hits", "misses", "taken", "stores", "evictions",
                     "expirations", "discards", "refused"):
            assert stats[name] == self.counts[name], name
        assert stats["sessions"] == size
        assert stats["peers"] == len(self.model)
        assert consistent(stats)

    @invariant()
    def dropped_means_closed(self):
        if self.cache is None:
            return
        assert all(session.closed for session in self.dropped)
        assert not any(item[1].closed for _, items in self.model
                       for item in items)

    def teardown(self):
        if self.cache is None:
            return
        self.cache.clear()
        assert tlsresume.live_sessions() == self.start_live


def test_against_the_model(bases, copies):
    CacheMachine.bases = bases
    CacheMachine.copies = copies
    gc.collect()  # so that no stray handle is freed during a run
    try:
        state = CacheMachine.TestCase
        state.settings = settings(max_examples=150, stateful_step_count=40,
                                  deadline=None)
        state().runTest()
    finally:
        CacheMachine.bases = None


# Expiry at the boundaries, with the real sessions' own limits ----------

@pytest.mark.parametrize("kind", KINDS)
def test_the_sessions_own_lifetime_ends_it(copies, kind):
    base, other = copies[kind][:2]
    clock = FakeClock()
    cache = SessionCache(clock=clock)
    cache._wall = lambda: float(base.time)
    key = peer(0)
    limit = lifetime(base, None)
    assert limit == min(base.timeout, base.ticket_lifetime_hint
                        or base.timeout)

    assert cache.put(key, handle(base, key))
    clock.now += limit - 0.001
    got = cache.take(key)
    assert got is not None
    got.close()

    # (Another SSL_SESSION: a TLS 1.2 session stays held when taken.)
    assert cache.put(key, handle(other, key))
    clock.now += limit
    assert cache.take(key) is None
    assert cache.stats()["expirations"] == 1


def test_age_at_put_counts(bases):
    base = bases["tls13"]
    clock = FakeClock()
    cache = SessionCache(ttl=10, clock=clock)
    key = peer(0)
    # Made 4 seconds before it is put: 6 seconds left, not 10.
    cache._wall = lambda: float(base.time + 4)
    assert cache.put(key, handle(base, key))
    clock.now += 6
    assert cache.take(key) is None
    # Made 10 seconds ago with a ttl of 10: already expired, refused.
    cache._wall = lambda: float(base.time + 10)
    session = handle(base, key)
    assert cache.put(key, session) is False
    assert session.closed


def test_real_clocks_by_default(bases):
    key = bases["tls13"].scope
    cache = SessionCache()
    assert cache.put(key, bases["tls13"]._dup())
    got = cache.take(key)
    assert got is not None and not got.closed
    got.close()


# The API's edges -------------------------------------------------------

def test_single_use_newest_first(bases, copies):
    cache = SessionCache(tickets_per_peer=3, clock=FakeClock())
    key = peer(0)
    handles = [handle(base, key)
               for base in [bases["tls13"]] + copies["tls13"]]
    for h in handles:
        assert cache.put(key, h)
    assert handles[0].closed  # the oldest made room
    for h in reversed(handles[1:]):
        assert cache.take(key) is h
        h.close()
    assert cache.take(key) is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (3, 1, 1)


def test_tls12_keeps_one_session_and_kinds_do_not_mix(bases, copies):
    cache = SessionCache(clock=FakeClock())
    key = peer(0)
    tickets = [handle(base, key) for base in copies["tls13"][:2]]
    for h in tickets:
        cache.put(key, h)
    old = handle(bases["tls12-id"], key)
    cache.put(key, old)
    assert all(h.closed for h in tickets) and len(cache) == 1
    new = handle(bases["tls12-ticket"], key)
    cache.put(key, new)
    assert old.closed and len(cache) == 1
    ticket = handle(bases["tls13"], key)
    cache.put(key, ticket)
    assert new.closed
    assert cache.take(key) is ticket
    ticket.close()


def test_lru_is_by_peer_and_take_counts_as_use(copies):
    cache = SessionCache(max_entries=2, clock=FakeClock())
    a, b, c = peer(0), peer(1), peer(2)
    for key, base in zip((a, a, b), copies["tls13"]):
        assert cache.put(key, handle(base, key))
    got = cache.take(a)  # a is now the most recently used
    got.close()
    cache.put(c, handle(copies["tls13"][0], c))
    assert cache.keys() == [a, c]
    assert cache.stats()["evictions"] == 1


def test_refuses_closed_and_unresumable_sessions(bases):
    cache = SessionCache()
    key = bases["tls13"].scope
    closed = bases["tls13"]._dup()
    closed.close()
    assert cache.put(key, closed) is False

    # No ticket and no session id: a TLS 1.2 server with both off.
    with local_server(maximum_version="1.2", tickets=False,
                      cache=False) as srv:
        ctx = tlsresume.ClientContext(cafile=srv.cafile)
        with ctx.connect("127.0.0.1", srv.port) as conn:
            raw = Session.from_ssl(conn._ssl)
        ctx.close()
    assert not raw.is_resumable
    unresumable = handle(raw, key)
    raw.close()
    assert cache.put(key, unresumable) is False
    assert unresumable.closed
    assert len(cache) == 0 and cache.stats()["refused"] == 2


def test_refuses_a_session_from_another_peer(bases):
    cache = SessionCache()
    session = handle(bases["tls13"], peer(1))
    with pytest.raises(SessionError, match="another peer"):
        cache.put(peer(2), session)
    assert session.closed  # put owns what it is given, stored or not
    low_level = bases["tls13"]._dup()
    low_level._scope = ("SSL_CTX", 1)
    with pytest.raises(SessionError):
        cache.put(peer(1), low_level)
    with pytest.raises(TypeError):
        cache.put(peer(1), object())
    assert len(cache) == 0


def test_keys_and_discard(bases):
    cache = SessionCache()
    keys = [peer(i) for i in range(3)]
    for key in keys:
        cache.put(key, handle(bases["tls13"], key))
    listed = cache.keys()
    assert listed == keys and all(isinstance(k, PeerKey) for k in listed)
    assert cache.discard(keys[1]) == 1
    assert cache.discard(keys[1]) == 0
    assert cache.keys() == [keys[0], keys[2]]
    assert "2 sessions" in repr(cache)


@pytest.mark.parametrize("bad", [
    {"max_entries": 0}, {"tickets_per_peer": 0}, {"ttl": 0},
    {"ttl": -1}, {"max_entries": 1.5}, {"clock": 5},
])
def test_rejects_bad_settings(bad):
    with pytest.raises((TypeError, ValueError)):
        SessionCache(**bad)


def test_no_public_lock():
    cache = SessionCache()
    assert not [name for name in dir(cache)
                if "lock" in name.lower() and not name.startswith("_")]


# Threads ---------------------------------------------------------------

def test_eight_threads_hundred_thousand_operations(bases):
    gc.collect()  # handles other tests dropped must not be freed midway
    start_live = tlsresume.live_sessions()
    ticks = itertools.count()
    # Every call moves time on by a millisecond: sessions expire as the
    # test runs, without a sleep.
    cache = SessionCache(max_entries=24, ttl=0.05, tickets_per_peer=4,
                         clock=lambda: next(ticks) * 0.001)
    # A wall clock from before the sessions were made: age 0.
    cache._wall = lambda: 1.0
    keys = [peer(i) for i in range(48)]
    kinds = list(bases.values())
    threads, per_thread = 8, 12_500
    counts = [collections.Counter() for _ in range(threads)]
    taken = [[] for _ in range(threads)]
    errors = []
    barrier = threading.Barrier(threads)

    def work(n):
        rng = random.Random(n)
        count = counts[n]
        try:
            barrier.wait()
            for _ in range(per_thread):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.45:
                    stored = cache.put(key, handle(rng.choice(kinds), key))
                    count["put"] += 1
                    count["stored"] += stored
                elif op < 0.9:
                    got = cache.take(key)
                    count["take"] += 1
                    if got is not None:
                        if got.closed:
                            errors.append("take returned a closed handle")
                        taken[n].append(got)
                        got.close()
                elif op < 0.96:
                    cache.discard(key)
                elif op < 0.98:
                    cache.expire()
                elif op < 0.99:
                    len(cache)
                    cache.keys()
                    if not consistent(cache.stats()):
                        errors.append("stats do not add up")
                else:
                    cache.clear()
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,))
               for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert errors == []
    total = sum(counts, collections.Counter())
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == total["take"]
    assert stats["stores"] == total["stored"]
    assert stats["stores"] + stats["refused"] == total["put"]
    assert stats["hits"] == sum(len(t) for t in taken)
    assert stats["hits"] > 1000 and stats["expirations"] > 0
    assert stats["evictions"] > 0 and stats["discards"] > 0
    assert consistent(stats)
    assert len(cache) == held(cache) == stats["sessions"]
    # No session was handed out twice.
    ids = [id(s) for t in taken for s in t]
    assert len(ids) == len(set(ids))

    cache.clear()
    taken.clear()
    assert tlsresume.live_sessions() == start_live


# Memory ----------------------------------------------------------------

@pytest.mark.slow
def test_a_million_puts_stay_bounded(bases):
    peers, tickets, puts = 10_000, 4, 1_000_000
    gc.collect()
    start_live = tlsresume.live_sessions()
    cache = SessionCache(max_entries=peers, tickets_per_peer=tickets)
    # More peers than the cache holds, so it evicts all along; each
    # peer comes back often enough to fill its tickets.
    keys = [peer(i) for i in range(12_000)]
    # Distinct SSL_SESSIONs, so a peer's tickets can fill up (one
    # SSL_SESSION is held once per peer).
    der = bases["tls13"].to_der()
    pool = [Session._from_der(der, None) for _ in range(64)]
    bound = peers * tickets
    baseline = None
    rng = random.Random(0)
    pick = rng.randrange
    size = len(keys)

    # With the cycle collector off a leak cannot hide behind it (and the
    # loop runs faster).
    gc.disable()
    try:
        for n in range(puts):
            key = keys[pick(size)]
            cache.put(key, handle(pool[n & 63], key))
            if n % 100_000 == 99_999:
                assert tlsresume.live_sessions() - start_live <= bound
                assert len(cache) <= bound
                if n == 199_999:
                    baseline = _rss()  # the cache is full by now
        grown = _rss() - baseline
    finally:
        gc.enable()
    stats = cache.stats()

    assert stats["stores"] + stats["refused"] == puts
    assert stats["stores"] > 0.9 * puts and consistent(stats)
    assert len(cache.keys()) == peers
    assert len(cache) > 2 * peers  # peers hold several tickets
    # Measured: under 1 MB.  Keeping one handle in ten puts grows it by
    # over 20 MB; one small object per put, by 50 MB or more.
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown} bytes"
    cache.clear()
    for session in pool:
        session.close()
    assert tlsresume.live_sessions() == start_live


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_handle_put_twice_is_held_once(bases, kind):
    # Putting one handle twice filed it twice: a TLS 1.3 ticket was then
    # handed out twice, and under TLS 1.2 the replaced copy (the same
    # handle) was closed while still filed, so take() returned a closed
    # handle.
    cache = SessionCache(clock=FakeClock())
    key = peer(0)
    session = handle(bases[kind], key)
    assert cache.put(key, session) is True
    assert cache.put(key, session) is False
    assert not session.closed
    assert len(cache) == 1 and consistent(cache.stats())
    got = cache.take(key)
    assert not got.closed
    if kind == "tls13":
        assert got is session
        assert cache.take(key) is None
    else:
        # A TLS 1.2 session stays held, once; take() gave a copy.
        assert got is not session and not session.closed
        assert len(cache) == 1
        cache.clear()
        assert session.closed
    got.close()


# The C core's edges ------------------------------------------------------

class SlowKey:
    """A key whose hash and comparison run Python code."""

    def __init__(self, n):
        self.n = n

    def __hash__(self):
        return self.n

    def __eq__(self, other):
        return isinstance(other, SlowKey) and other.n == self.n


class SubKey(PeerKey):
    __slots__ = ()


def test_keys_that_would_run_python_under_the_lock_are_refused(bases):
    # A key's __hash__ or __eq__ could call back into the cache while
    # its lock is held, and wait for it forever.
    cache = SessionCache()
    sub = SubKey("127.0.0.1", 1000, f"{0:016x}")
    for key in (SlowKey(1), sub, [1], ("ok", [1]), ("ok", SlowKey(2))):
        with pytest.raises(TypeError, match="PeerKey or a plain value"):
            cache.take(key)
        with pytest.raises(TypeError, match="PeerKey or a plain value"):
            cache.discard(key)
        session = handle(bases["tls13"], key)
        with pytest.raises(TypeError, match="PeerKey or a plain value"):
            cache.put(key, session)
        assert session.closed  # put owns what it is given
    for key in ("a", b"a", 1, 1.5, None, False, ("SSL_CTX", 1, (None,))):
        assert cache.put(key, handle(bases["tls13"], key))
    assert len(cache) == 7 and consistent(cache.stats())
    cache.clear()


def _no_hang(fn, seconds=20):
    """Run ``fn`` in a thread; fail, rather than hang, if it does not
    end in time."""
    result = []
    worker = threading.Thread(target=lambda: result.append(fn()),
                              daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the cache deadlocked"
    return result[0] if result else None


@pytest.mark.parametrize("kind", KINDS)
def test_a_finalizer_that_uses_the_cache_during_take_or_put(bases, kind):
    # A collection can run during any allocation, and with it a
    # finalizer that calls the cache: it must not find the lock held.
    cache = SessionCache()
    key = peer(0)
    calls = []

    class Pooled:
        def __del__(self):
            calls.append(cache.stats())

    def churn():
        old = gc.get_threshold()
        gc.set_threshold(1)
        try:
            for _ in range(50):
                cycle = Pooled()
                cycle.me = cycle
                del cycle
                cache.put(key, handle(bases[kind], key))
                got = cache.take(key)
                if got is not None:
                    got.close()
        finally:
            gc.set_threshold(*old)
        return True

    assert _no_hang(churn)
    gc.collect()
    assert calls and consistent(cache.stats())
    cache.clear()


def test_set_up_once(bases):
    cache = SessionCache(tickets_per_peer=1)
    with pytest.raises(RuntimeError, match="set up once"):
        cache.__init__(tickets_per_peer=100)
    assert cache.tickets_per_peer == 1
    raw = SessionCache.__new__(SessionCache)
    for call in (lambda: raw.take(peer(0)), raw.stats, raw.keys,
                 raw.clear, raw.expire, lambda: len(raw),
                 lambda: raw.put(peer(0), handle(bases["tls13"],
                                                 peer(0)))):
        with pytest.raises(RuntimeError, match="__init__"):
            call()
    with pytest.raises(ValueError, match="tickets_per_peer"):
        SessionCache(tickets_per_peer=257)


@pytest.mark.parametrize("value", [float("nan"), float("inf"),
                                   float("-inf")])
def test_a_clock_that_is_not_finite_is_refused(bases, value):
    cache = SessionCache(clock=lambda: value)
    session = handle(bases["tls13"], peer(0))
    with pytest.raises(ValueError, match="clock"):
        cache.put(peer(0), session)
    assert session.closed
    with pytest.raises(ValueError, match="clock"):
        cache.take(peer(0))


@pytest.mark.parametrize("kind", KINDS)
def test_a_held_handle_closed_by_its_old_owner_is_dropped(bases, kind):
    # put() takes the handle over; closing it afterwards is a misuse,
    # which costs a miss, not an error or a closed session handed out.
    cache = SessionCache(clock=FakeClock())
    key = peer(0)
    session = handle(bases[kind], key)
    assert cache.put(key, session)
    session.close()
    assert cache.take(key) is None
    assert cache._take_ref(key) is None
    stats = cache.stats()
    assert stats["discards"] == 1 and len(cache) == 0
    assert consistent(stats)


def test_a_failing_clock_raises_and_put_still_owns_the_handle(bases):
    def broken():
        raise RuntimeError("clock is broken")

    cache = SessionCache(clock=broken)
    key = peer(0)
    session = handle(bases["tls13"], key)
    with pytest.raises(RuntimeError, match="clock is broken"):
        cache.put(key, session)
    assert session.closed and len(cache) == 0
    with pytest.raises(RuntimeError, match="clock is broken"):
        cache.take(key)

    cache = SessionCache(clock=lambda: "noon")
    session = handle(bases["tls13"], key)
    with pytest.raises(TypeError):
        cache.put(key, session)
    assert session.closed


def test_bad_keys_and_arguments(bases):
    cache = SessionCache()
    with pytest.raises(TypeError, match="not list"):
        cache.take([1, 2])
    with pytest.raises(TypeError, match="not dict"):
        cache.discard({})
    session = handle(bases["tls13"], ("list", 1))
    session._scope = [1]
    with pytest.raises(TypeError, match="not list"):
        cache.put([1], session)
    assert session.closed
    with pytest.raises(TypeError, match="2 arguments"):
        cache.put(peer(0))
    with pytest.raises(TypeError, match="needs a tlsresume.Session"):
        cache.put(peer(0), "session")
    with pytest.raises(TypeError):
        cache._wall = 5
    assert consistent(cache.stats()) and len(cache) == 0


def test_a_dropped_cache_frees_what_it_held(bases):
    gc.collect()
    start_live = tlsresume.live_sessions()
    cache = SessionCache(clock=FakeClock())
    for i in range(10):
        key = peer(i)
        cache.put(key, handle(bases[KINDS[i % 3]], key))
    assert tlsresume.live_sessions() == start_live + 10
    # A cycle through the cache, so that only the collector frees it.
    holder = [cache]
    cache._wall = holder.__len__
    del cache, holder
    assert tlsresume.live_sessions() == start_live + 10
    gc.collect()
    assert tlsresume.live_sessions() == start_live


def test_facts_are_read_once_per_handle_and_shared_by_copies(bases):
    key = bases["tls12-ticket"].scope
    session = handle(bases["tls12-ticket"], key)
    assert session._facts is None
    cache = SessionCache(clock=FakeClock())
    assert cache.put(key, session)
    born, life, tls13, address = session._facts
    assert born == session.time and not tls13
    assert address == int(ffi.cast("uintptr_t", session._ptr))
    assert life == min(session.timeout, session.ticket_lifetime_hint)
    copy = cache.take(key)
    assert copy is not session and copy._facts == session._facts
    copy.close()
    cache.clear()


def test_cachebench_measures_and_frees_what_it_made():
    from tlsresume import cachebench

    gc.collect()
    start_live = tlsresume.live_sessions()
    rows = cachebench.measure(threads=(1, 2), ops=2000, batch=100,
                              peers=8, memory_sessions=400)
    assert [row["threads"] for row in rows] == [1, 2]
    for row in rows:
        assert row["ns_per_op"] > 0 and row["ops_per_sec"] > 0
        assert row["new_handle_ns"] > 0
        assert row["cache_bytes_per_session"] > 0
    gc.collect()
    assert tlsresume.live_sessions() == start_live


@pytest.mark.parametrize("kind", KINDS)
def test_one_ssl_session_is_held_once_per_peer_whatever_the_handle(bases,
                                                                   kind):
    # Two handles on one SSL_SESSION (a user putting conn.session into
    # the cache the context already fed): filing both would offer one
    # TLS 1.3 ticket twice.
    cache = SessionCache(clock=FakeClock())
    key, other = peer(0), peer(1)
    first, second = handle(bases[kind], key), handle(bases[kind], key)
    assert cache.put(key, first) is True
    assert cache.put(key, second) is False
    assert second.closed and not first.closed  # put owns what it gets
    assert len(cache) == 1 and cache.stats()["refused"] == 1
    # Another peer is another matter.
    assert cache.put(other, handle(bases[kind], other)) is True
    got = cache.take(key)
    assert got is first if kind == "tls13" else not got.closed
    got.close()
    cache.clear()


# Found by a second review of the C core ------------------------------------

def test_a_peer_key_whose_slot_was_tampered_with_is_refused(bases):
    cache = SessionCache()
    key = peer(0)

    class Loud:
        def __hash__(self):
            cache.keys()  # under the lock this would wait forever
            return 1

    for bad in (Loud(), [1], ("not", "a", "slot"),
                (PeerKey, "h", 1, Loud())):
        object.__setattr__(key, "_slot", bad)
        assert _no_hang(lambda: pytest.raises(
            TypeError, cache.take, key).match("bad _slot"))


def test_nothing_of_the_table_is_reachable_from_python(bases):
    cache = SessionCache()
    assert cache.put("k", handle(bases["tls13"], "k"))
    reachable = gc.get_referents(cache)
    assert all(obj is cache.__class__ or callable(obj) or obj is None
               for obj in reachable), reachable


def test_str_and_bytes_keys_stay_apart_even_under_python_b(bases,
                                                            tmp_path):
    # hash("abc") == hash(b"abc"): comparing them would warn under -b,
    # and warnings run Python code (under the lock, before).
    script = tmp_path / "b.py"
    script.write_text(
        "from tlsresume import SessionCache, Session\n"
        "from tlsresume.cachebench import _real_session\n"
        "base = _real_session(maximum_version='1.3')\n"
        "cache = SessionCache()\n"
        "s = Session._from_der(base.to_der(), 'abc')\n"
        "assert cache.put('abc', s)\n"
        "assert cache.take(b'abc') is None\n"
        "assert cache.take(('x', b'abc')) is None\n"
        "assert cache.take('abc') is s\n"
        "print('ok')\n")
    done = subprocess.run(
        [sys.executable, "-bb", "-W", "error::BytesWarning", str(script)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_a_freed_address_reused_by_a_new_session_is_not_a_duplicate(bases):
    # A held handle closed by its former owner frees its SSL_SESSION;
    # malloc then hands the same address to the next session, which
    # put() took for the held one and refused.
    cache = SessionCache(clock=FakeClock())
    key = ("k", 1)
    der = bases["tls12-ticket"].to_der()
    for _ in range(20):
        old = Session._from_der(der, key)
        assert cache.put(key, old)
        old.close()  # a misuse: the cache owned it
        assert cache.put(key, Session._from_der(der, key)) is True
        got = cache.take(key)
        assert got is not None and not got.closed
        got.close()
    cache.clear()


def test_take_racing_clear_with_sessions_that_pin_their_ssl_ctx(bases):
    # take() of a TLS 1.2 session makes the caller's handle after the
    # lock; meanwhile another thread may close the held one, and with it
    # the last reference to its SSL_CTX.
    der = bases["tls12-ticket"].to_der()
    cache = SessionCache()
    stop = time.monotonic() + 2
    errors = []
    gc.collect()
    start_live = tlsresume.live_sessions()

    def producer():
        try:
            while time.monotonic() < stop:
                ctx = lib.SSL_CTX_new(lib.TLS_client_method())
                scope = ("SSL_CTX", int(ffi.cast("uintptr_t", ctx)))
                raw = Session._from_der(der, scope)
                lib.SSL_SESSION_up_ref(raw._ptr)
                held = Session._wrap(ffi.cast("SSL_SESSION *", raw._ptr),
                                     scope, ctx)
                raw.close()
                lib.SSL_CTX_free(ctx)  # the handle keeps it alive
                cache.put(scope, held)
                for _ in range(3):
                    got = cache.take(scope)
                    if got is not None:
                        assert not got.closed
                        got.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def clearer():
        while time.monotonic() < stop:
            cache.clear()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        workers = [threading.Thread(target=producer),
                   threading.Thread(target=clearer)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    cache.clear()
    gc.collect()
    assert tlsresume.live_sessions() == start_live


def test_the_core_is_set_up_once():
    from tlsresume import _cachecore

    with pytest.raises(RuntimeError, match="set up once"):
        _cachecore._setup(object, PeerKey, print, time.monotonic, 1, 1)
    assert len(SessionCache()) == 0  # and the cache still works


# Found by a third review ----------------------------------------------------

def test_near_the_recursion_limit_a_key_is_still_found_once(bases):
    # Comparing two equal ints through PyObject_RichCompareBool could
    # fail with RecursionError under the lock: the key was then missed
    # and filed a second time.
    der = bases["tls13"].to_der()
    cache = SessionCache(max_entries=4)
    first = int("1" * 25)
    assert cache.put(first, Session._from_der(der, first))

    def deep(n, key, session):
        return deep(n - 1, key, session) if n else cache.put(key, session)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        for depth in range(80, 150):
            key = int("1" * 25)  # equal to first, another object
            session = Session._from_der(der, key)
            session._read_facts()
            try:
                deep(depth, key, session)
            except RecursionError:
                pass
            assert cache._count() != -1
            assert len(cache.keys()) == 1
    finally:
        sys.setrecursionlimit(old)
    cache.clear()


def test_one_handle_cannot_be_filed_under_keys_python_calls_equal(bases):
    # 1 == True == 1.0 in Python, but they are three keys to the cache:
    # a handle scoped to 1 filed under all three would be one ticket
    # handed out three times.
    cache = SessionCache(clock=FakeClock())
    session = handle(bases["tls13"], 1)
    assert cache.put(1, session)
    for other in (True, 1.0):
        twin = handle(bases["tls13"], 1)
        with pytest.raises(SessionError, match="another peer"):
            cache.put(other, twin)
        assert twin.closed
    assert cache.take(True) is None and cache.take(1.0) is None
    assert cache.take(1) is session
    session.close()
