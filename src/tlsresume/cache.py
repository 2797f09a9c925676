"""SessionCache: client sessions kept by peer, bounded and expiring.

A dict from :class:`~tlsresume.PeerKey` to the sessions saved for that
peer, in least-recently-used order, behind one private lock.  Under
TLS 1.3 a peer holds a few tickets, newest first, and each one is handed
out once (RFC 8446, appendix C.4).  Under TLS 1.2 a peer holds one
session.  Whatever the cache drops is closed exactly once, after the
lock is released, so freeing OpenSSL memory never blocks other threads.
"""

import collections
import logging
import threading
import time

from ._binding import lib
from .errors import SessionError
from .peerkey import PeerKey
from .session import Session

log = logging.getLogger(__name__)

#: RFC 8446, section 4.6.1: no TLS 1.3 ticket is used beyond 7 days.
#: (Applied in csrc/openssl.glue.c, tlsresume_session_remaining.)
TLS13_MAX_LIFETIME = 7 * 24 * 3600

_remaining = lib.tlsresume_session_remaining


def _slot(key):
    """The dict key a peer is filed under.

    PeerKey hashes and compares in Python; the tuple of its fields does
    both in C, which halves the cost of every lookup.  The class leads
    the tuple so that no other key can land on the same slot.
    """
    if key.__class__ is PeerKey:
        return (PeerKey, key.host, key.port, key.digest)
    return key


def _unslot(slot):
    """The key :meth:`SessionCache.keys` shows for a slot."""
    if slot.__class__ is tuple and slot and slot[0] is PeerKey:
        return PeerKey(slot[1], slot[2], slot[3])
    return slot


class SessionCache:
    """A bounded, expiring, thread-safe store of client sessions by peer.

    ``max_entries`` is how many peers are held; putting a session for
    one more peer evicts the peer least recently put or taken.
    ``tickets_per_peer`` is how many TLS 1.3 tickets a peer keeps; when
    full, the oldest is dropped.  A TLS 1.2 session replaces whatever
    the peer held (and a TLS 1.3 ticket replaces a TLS 1.2 session).

    A session is never returned at or after the earliest of: ``ttl``
    seconds (None: no limit of our own), the session's timeout, its
    ticket lifetime hint (when the server sent one) and, for TLS 1.3,
    7 days.  All are counted from when the session was made: its age
    (wall clock minus ``Session.time``, which OpenSSL keeps in whole
    seconds, so the age errs on the old side) is taken off when it is
    put, and from then on ``clock`` (a monotonic clock in seconds;
    tests pass a fake one) measures time.

    Ownership: :meth:`put` takes over the handle it is given, stored or
    not; :meth:`take` hands out a handle the caller then owns (offer it,
    then close it).  Every session the cache drops, for
    whatever reason, is closed exactly once, outside the lock.

    Thread-safe: every public method takes one private lock, briefly.
    One cache may serve many :class:`~tlsresume.ClientContext` objects
    and threads; their differing settings are kept apart by the key.

    A TLS 1.2 session stays in the cache when taken: any number of
    connections, at once or one after another, may resume it, until it
    expires or is replaced (the client puts the new session when a
    server declines the old one) or discarded.

    Limits: when a server declines a TLS 1.3 ticket, the peer's
    other tickets stay; each is tried once, and the fresh tickets from
    the full handshake are offered first.  Expired sessions are not
    looked for in the background; they are dropped when :meth:`take`
    meets them or by :meth:`expire`, and count in ``len()`` until then.
    """

    def __init__(self, max_entries=1024, ttl=None, tickets_per_peer=4,
                 clock=time.monotonic):
        if isinstance(max_entries, bool) or not isinstance(max_entries,
                                                           int):
            raise TypeError("max_entries must be an int")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if (isinstance(tickets_per_peer, bool)
                or not isinstance(tickets_per_peer, int)):
            raise TypeError("tickets_per_peer must be an int")
        if tickets_per_peer < 1:
            raise ValueError("tickets_per_peer must be at least 1")
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be positive seconds, or None")
        if not callable(clock):
            raise TypeError("clock must be callable")

        self._max_entries = max_entries
        self._tickets = tickets_per_peer
        self._ttl = ttl
        self._clock = clock
        # The wall clock measures a session's age when it is put.  None:
        # the C helper reads it itself (tests set a function here).
        self._wall = None
        lock = threading.Lock()
        # Bound once: acquire()/release() cost half of a ``with`` block.
        self._acquire = lock.acquire
        self._release = lock.release
        # _slot(key) -> list of (deadline, Session, is TLS 1.3), newest
        # first; never empty.  Least recently used peer first.  A list of
        # a few items is smaller and quicker than a deque.
        self._peers = collections.OrderedDict()
        # Sessions held = stores - taken - evictions - expirations -
        # discards, so no separate size is kept.
        self._hits = 0
        self._taken = 0
        self._misses = 0
        self._stores = 0
        self._evictions = 0
        self._expirations = 0
        self._discards = 0
        self._refused = 0

    @property
    def max_entries(self):
        """How many peers the cache holds at most."""
        return self._max_entries

    @property
    def tickets_per_peer(self):
        """How many TLS 1.3 tickets one peer keeps at most."""
        return self._tickets

    @property
    def ttl(self):
        """The cache's own lifetime limit in seconds, or None."""
        return self._ttl

    def put(self, key, session):
        """Store ``session`` for ``key``; True if it was stored.

        The cache owns the handle from now on, whatever happens.  A
        closed, non-resumable or already expired session is refused
        (closed, counted in ``stats()['refused']``) and False returned.
        A handle the cache already holds is not filed again: False, and
        it stays held, once (counted as refused).
        ``session.scope`` must equal ``key``, else the handle is closed
        and :class:`SessionError` raised: a session made under one peer
        or configuration is never filed under another.
        """
        if (session.__class__ is not Session
                and not isinstance(session, Session)):
            raise TypeError("put() needs a tlsresume.Session, not "
                            + type(session).__name__)
        scope = session._scope
        if scope is not key and scope != key:
            session.close()
            raise SessionError(
                f"session was made for {scope}, not {key}: refusing to "
                "cache it under another peer or configuration")

        # The handle's own lock keeps a close() in another thread from
        # freeing the pointer while OpenSSL reads it.
        wall = self._wall
        handle_lock = session._lock
        handle_lock.acquire()
        try:
            ptr = session._ptr
            left = 0.0 if ptr is None else _remaining(
                ptr, 0.0 if wall is None else wall(), self._ttl or 0.0)
        finally:
            handle_lock.release()
        if not left:
            session.close()
            self._acquire()
            self._refused += 1
            self._release()
            log.debug("refused a session for %s: closed, not resumable "
                      "or expired", key)
            return False
        tls13 = left < 0
        deadline = self._clock() + (-left if tls13 else left)

        # _slot(key), inlined: this is the hot path.
        slot = ((PeerKey, key.host, key.port, key.digest)
                if key.__class__ is PeerKey else key)
        dropped = None
        self._acquire()
        try:
            peers = self._peers
            entry = peers.get(slot)
            if entry is None:
                peers[slot] = [(deadline, session, tls13)]
                if len(peers) > self._max_entries:
                    dropped = peers.popitem(last=False)[1]
                    self._evictions += len(dropped)
            else:
                for item in entry:
                    if item[1] is session:
                        # Already held: filing it twice would hand one
                        # ticket out twice, or (TLS 1.2) close it while
                        # it stays filed.
                        self._refused += 1
                        return False
                peers.move_to_end(slot)
                if tls13 and entry[0][2]:
                    entry.insert(0, (deadline, session, tls13))
                    if len(entry) > self._tickets:
                        dropped = (entry.pop(),)
                        self._evictions += 1
                else:
                    # One TLS 1.2 session per peer, and no mixing kinds.
                    dropped = entry[:]
                    entry[:] = [(deadline, session, tls13)]
                    self._evictions += len(dropped)
            self._stores += 1
        finally:
            self._release()

        if dropped:
            for _, old, _ in dropped:
                old.close()
        return True

    def take(self, key):
        """Return the newest live session for ``key``, or None.

        The caller owns the returned handle.  A TLS 1.3 ticket is
        removed: it is never handed out again.  A TLS 1.2 session stays
        (it may resume any number of connections) and the caller gets a
        handle of its own on it.  Expired sessions met on the way are
        dropped.
        """
        slot = ((PeerKey, key.host, key.port, key.digest)
                if key.__class__ is PeerKey else key)
        now = self._clock()
        found = None
        expired = None
        self._acquire()
        try:
            peers = self._peers
            entry = peers.get(slot)
            if entry is not None:
                while entry:
                    item = entry[0]
                    if now < item[0]:
                        if item[2]:
                            found = entry.pop(0)[1]
                            self._taken += 1
                        else:
                            # Under the lock, so no eviction can close
                            # the session between check and up_ref.
                            found = item[1]._dup()
                        break
                    entry.pop(0)
                    if expired is None:
                        expired = []
                    expired.append(item[1])
                if entry:
                    peers.move_to_end(slot)
                else:
                    del peers[slot]
                if expired is not None:
                    self._expirations += len(expired)
            if found is None:
                self._misses += 1
            else:
                self._hits += 1
        finally:
            self._release()

        if expired is not None:
            for old in expired:
                old.close()
        return found

    def discard(self, key):
        """Drop and close every session held for ``key``; return how many.
        """
        slot = _slot(key)
        self._acquire()
        try:
            entry = self._peers.pop(slot, None)
            if entry is not None:
                self._discards += len(entry)
        finally:
            self._release()

        if entry is None:
            return 0
        for _, old, _ in entry:
            old.close()
        return len(entry)

    def clear(self):
        """Drop and close every session; return how many there were."""
        self._acquire()
        try:
            peers = self._peers
            self._peers = collections.OrderedDict()
            count = self._held()
            self._discards += count
        finally:
            self._release()

        for entry in peers.values():
            for _, old, _ in entry:
                old.close()
        return count

    def expire(self):
        """Drop and close every expired session; return how many.

        Takes time in proportion to the number of sessions held.
        """
        now = self._clock()
        expired = []
        self._acquire()
        try:
            peers = self._peers
            for slot, entry in list(peers.items()):
                if all(now < item[0] for item in entry):
                    continue
                live = [item for item in entry if now < item[0]]
                expired.extend(item[1] for item in entry
                               if not now < item[0])
                if live:
                    entry[:] = live
                else:
                    del peers[slot]
            self._expirations += len(expired)
        finally:
            self._release()

        for old in expired:
            old.close()
        return len(expired)

    def _held(self):
        # Every session stored leaves by exactly one of these doors.
        return (self._stores - self._taken - self._evictions
                - self._expirations - self._discards)

    def __len__(self):
        """How many sessions are held (expired ones until dropped)."""
        self._acquire()
        try:
            return self._held()
        finally:
            self._release()

    def keys(self):
        """The peers held, least recently used first, as a new list."""
        self._acquire()
        try:
            slots = list(self._peers)
        finally:
            self._release()
        return [_unslot(slot) for slot in slots]

    def stats(self):
        """Counters since the cache was made, as a new dict.

        ``hits`` and ``misses`` count :meth:`take` calls; ``stores``
        sessions accepted by :meth:`put` and ``refused`` those it
        closed instead; every session stored is later taken (``taken``:
        TLS 1.3 tickets handed out), evicted (``evictions``: LRU peer,
        oldest ticket, replaced),
        expired (``expirations``), discarded (``discards``: by
        :meth:`discard` or :meth:`clear`) or still held.  ``sessions``
        and ``peers`` are the current sizes.
        """
        self._acquire()
        try:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "taken": self._taken,
                "stores": self._stores,
                "evictions": self._evictions,
                "expirations": self._expirations,
                "discards": self._discards,
                "refused": self._refused,
                "sessions": self._held(),
                "peers": len(self._peers),
            }
        finally:
            self._release()

    def __repr__(self):
        return (f"<tlsresume.SessionCache {len(self)} sessions, "
                f"{len(self._peers)}/{self._max_entries} peers>")


__all__ = ["TLS13_MAX_LIFETIME", "SessionCache"]
