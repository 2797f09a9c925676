"""SessionCache: client sessions kept by peer, bounded and expiring.

A table from :class:`~tlsresume.PeerKey` to the sessions saved for that
peer, in least-recently-used order, behind one private lock.  Under
TLS 1.3 a peer holds a few tickets, newest first, and each one is handed
out once (RFC 8446, appendix C.4).  Under TLS 1.2 a peer holds one
session.  Whatever the cache drops is closed exactly once, after the
lock is released, so freeing OpenSSL memory never blocks other threads.

The table itself is C (csrc/cachecore.c): in CPython a lock round trip
and a few dict operations already cost a microsecond, and a cffi call
drops and retakes the GIL.  This module checks the settings and says
what the methods do.
"""

import time

from . import _cachecore
from ._binding import ffi, lib
from .errors import SessionError
from .peerkey import PeerKey
from .session import Session

#: RFC 8446, section 4.6.1: no TLS 1.3 ticket is used beyond 7 days.
#: (Applied in csrc/openssl.glue.c, tlsresume_session_lifetime.)
TLS13_MAX_LIFETIME = 7 * 24 * 3600


def _on_mismatch(key, session):
    # Called by put() when the session's scope is not the key.
    scope = session._scope
    session.close()
    raise SessionError(
        f"session was made for {scope}, not {key}: refusing to cache it "
        "under another peer or configuration")


_cachecore._setup(
    Session, PeerKey, _on_mismatch, time.monotonic,
    *(int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
      for name in ("SSL_SESSION_up_ref", "SSL_SESSION_free")))


class SessionCache(_cachecore._Core):
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
    tests pass a fake one) measures time.  A handle's timeout, hint,
    protocol and resumability are read from OpenSSL the first time it
    is put, and kept.

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

    Keys are :class:`~tlsresume.PeerKey` objects or plain values: str,
    bytes, int, float, None and tuples of them (the low-level sessions'
    scopes are such tuples).  Others raise TypeError: their ``__hash__``
    and ``__eq__`` would run under the lock.  Handles must be
    :class:`~tlsresume.Session` itself.

    Limits: when a server declines a TLS 1.3 ticket, the peer's
    other tickets stay; each is tried once, and the fresh tickets from
    the full handshake are offered first.  Expired sessions are not
    looked for in the background; they are dropped when :meth:`take`
    meets them or by :meth:`expire`, and count in ``len()`` until then.
    """

    __slots__ = ()

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
        if not 1 <= tickets_per_peer <= 256:
            raise ValueError("tickets_per_peer must be 1 to 256")
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be positive seconds, or None")
        if not callable(clock):
            raise TypeError("clock must be callable")
        super().__init__(max_entries, tickets_per_peer,
                         0.0 if ttl is None else float(ttl), clock)

    # take(), put(), discard(), clear(), expire(), keys() and len() are
    # the C core's, documented there (help() shows them).

    def stats(self):
        """Counters since the cache was made, as a new dict.

        ``hits`` and ``misses`` count :meth:`take` calls; ``stores``
        sessions accepted by :meth:`put` and ``refused`` those it
        closed instead; every session stored is later taken (``taken``:
        TLS 1.3 tickets handed out), evicted (``evictions``: LRU peer,
        oldest ticket, replaced), expired (``expirations``), discarded
        (``discards``: by :meth:`discard` or :meth:`clear`) or still
        held.  ``sessions`` and ``peers`` are the current sizes.
        """
        return self._counters()

    def __repr__(self):
        counts = self._counters()
        return (f"<tlsresume.SessionCache {counts['sessions']} sessions, "
                f"{counts['peers']}/{self.max_entries} peers>")


__all__ = ["TLS13_MAX_LIFETIME", "SessionCache"]
