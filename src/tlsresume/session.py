"""Refcount-safe handles on OpenSSL ``SSL_SESSION`` objects."""

import threading

from ._binding import ffi, lib
from .errors import SessionError, check, drain_errors

_live_lock = threading.Lock()
_live = 0

_VERSION_NAMES = {
    lib.TLS1_VERSION: "TLSv1",
    lib.TLS1_1_VERSION: "TLSv1.1",
    lib.TLS1_2_VERSION: "TLSv1.2",
    lib.TLS1_3_VERSION: "TLSv1.3",
}


def live_sessions():
    """Return how many Session handles currently own an SSL_SESSION."""
    return _live


def _free_session(ptr):
    # The destructor cffi runs exactly once: from close() through
    # ffi.release(), or from garbage collection if close() never came.
    global _live
    lib.SSL_SESSION_free(ptr)
    with _live_lock:
        _live -= 1


def _free_ctx(ptr):
    lib.SSL_CTX_free(ptr)


def _ctx_scope(ctx):
    """The scope of sessions made on ``SSL_CTX *ctx`` by the low level."""
    return ("SSL_CTX", int(ffi.cast("uintptr_t", ctx)))


_SSL_P = ffi.typeof("SSL *")
_SESSION_P = ffi.typeof("SSL_SESSION *")


def _pointer(value, ctype, what):
    """Check that ``value`` is a non-NULL cdata of ``ctype``.

    OpenSSL does not check its arguments: a NULL or mistyped pointer
    would crash the process instead of raising.
    """
    if not isinstance(value, ffi.CData):
        raise TypeError(f"{what} must be a cdata '{ctype.cname}', not "
                        + type(value).__name__)
    if value == ffi.NULL:
        raise ValueError(f"{what} is NULL")
    if ffi.typeof(value) is not ctype:
        raise TypeError(f"{what} must be a cdata '{ctype.cname}', not "
                        f"'{ffi.typeof(value).cname}'")
    return value


class Session:
    """One reference to an ``SSL_SESSION``, owned by this Python object.

    Only tlsresume makes these: from ``SSL_get1_session``
    (:meth:`from_ssl`), from a new-session callback (:meth:`adopt`), from
    a :class:`~tlsresume.ClientContext` connection, or by deserialising.
    The reference is released exactly once, by :meth:`close` (or leaving
    a ``with`` block) or, failing that, by garbage collection.  After
    close every use raises :class:`SessionError`; closing twice is
    harmless.  Handles are safe to share between threads.

    A session remembers the *scope* it was made under: the ``SSL_CTX``
    for the low-level calls, or the peer and configuration
    (:class:`~tlsresume.PeerKey`) for :class:`~tlsresume.ClientContext`.
    Offering it anywhere else raises :class:`SessionError` instead of
    resuming under other settings.
    """

    __slots__ = ("_ptr", "_ctx", "_scope", "_lock", "_facts",
                 "__weakref__")

    def __new__(cls, *args, **kwargs):
        raise TypeError(
            "Session objects are made by tlsresume (Session.from_ssl, "
            "Session.adopt, Connection.session), not built directly"
        )

    @classmethod
    def _wrap(cls, ptr, scope, ctx=None):
        """Take ownership of one reference ``ptr`` (never NULL)."""
        global _live
        self = object.__new__(cls)
        self._lock = threading.Lock()
        self._scope = scope
        self._facts = None
        with _live_lock:
            _live += 1
        self._ptr = ffi.gc(ptr, _free_session)
        self._ctx = None
        if ctx is not None:
            # Hold the SSL_CTX so its address, our scope, cannot be reused
            # by another context while this session lives.
            check(lib.SSL_CTX_up_ref(ctx), "SSL_CTX_up_ref")
            self._ctx = ffi.gc(ctx, _free_ctx)
        return self

    @classmethod
    def from_ssl(cls, ssl):
        """``SSL_get1_session(ssl)`` as a handle the caller owns, or None.

        None when the connection has no session yet.  Under TLS 1.3 the
        session taken right after the handshake usually cannot be resumed
        (the server's ticket comes later); see :meth:`adopt`.
        """
        _pointer(ssl, _SSL_P, "from_ssl(): ssl")
        ptr = lib.SSL_get1_session(ssl)
        if ptr == ffi.NULL:
            return None
        ctx = lib.SSL_get_SSL_CTX(ssl)
        return cls._wrap(ptr, _ctx_scope(ctx), ctx)

    @classmethod
    def adopt(cls, ssl, session):
        """Own the reference a new-session callback was handed.

        Call it inside a callback set with ``SSL_CTX_sess_set_new_cb`` and
        return 1 from the callback, which tells OpenSSL the reference now
        belongs to the application (to this handle).
        """
        _pointer(ssl, _SSL_P, "adopt(): ssl")
        if session == ffi.NULL:
            raise SessionError("adopt() was given a NULL SSL_SESSION")
        _pointer(session, _SESSION_P, "adopt(): session")
        ctx = lib.SSL_get_SSL_CTX(ssl)
        return cls._wrap(session, _ctx_scope(ctx), ctx)

    @classmethod
    def _from_der(cls, data, scope):
        """Deserialise ``i2d_SSL_SESSION`` bytes; raise ValueError if bad."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("serialised session must be bytes, not "
                            + type(data).__name__)
        data = bytes(data)
        buf = ffi.new("unsigned char[]", data)
        pp = ffi.new("const unsigned char **", buf)
        ptr = lib.d2i_SSL_SESSION(ffi.NULL, pp, len(data))
        if ptr == ffi.NULL:
            drain_errors()
            raise SessionError(
                f"corrupt serialised session ({len(data)} bytes): "
                "OpenSSL could not decode it"
            )
        used = pp[0] - ffi.cast("const unsigned char *", buf)
        if used != len(data):
            # d2i decodes the first DER object and ignores the rest.
            lib.SSL_SESSION_free(ptr)
            raise SessionError(
                f"corrupt serialised session ({len(data)} bytes): "
                f"{len(data) - used} bytes after the session")
        return cls._wrap(ptr, scope)

    # Ownership and use ------------------------------------------------

    def close(self):
        """Release the reference now.  Safe to call more than once."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
            ctx, self._ctx = self._ctx, None
        if ptr is not None:
            ffi.release(ptr)
        if ctx is not None:
            ffi.release(ctx)

    @property
    def closed(self):
        """True once the reference has been released."""
        return self._ptr is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce_ex__(self, protocol):
        # copy.copy would otherwise give a second handle on the same
        # reference: closing one leaves the other pointing at freed memory.
        raise TypeError(
            "a Session owns an OpenSSL reference and cannot be copied or "
            "pickled; serialise it with to_der()"
        )

    def _get(self, fn, *args):
        # Every read of the pointer happens under the handle's lock, so a
        # close() in another thread cannot free it in the middle.
        with self._lock:
            if self._ptr is None:
                raise SessionError("session handle is closed")
            return fn(self._ptr, *args)

    def set_on(self, ssl):
        """``SSL_set_session(ssl, ...)``, checking the SSL's context.

        The SSL must come from the same ``SSL_CTX`` as the session; the
        SSL takes its own reference, so this handle may be closed after.
        """
        _pointer(ssl, _SSL_P, "set_on(): ssl")
        if _ctx_scope(lib.SSL_get_SSL_CTX(ssl)) != self._scope:
            raise SessionError(
                "session was made under another context; refusing to "
                "offer it here"
            )
        self._set_on(ssl)

    def _set_on(self, ssl):
        if not self._get(lambda p: lib.SSL_set_session(ssl, p)):
            entries = drain_errors()
            raise SessionError("SSL_set_session failed: "
                               + (entries[0][3] if entries else "unknown"))

    def _dup_open(self):
        """:meth:`_dup`, or None once this handle is closed (the cache's
        take() calls it without its own lock held)."""
        with self._lock:
            if self._ptr is None:
                return None
            return self._dup_locked()

    def _dup(self):
        """A second, independent handle on the same SSL_SESSION."""
        with self._lock:
            return self._dup_locked()

    def _dup_locked(self):
        # Plain pointers, not our ffi.gc objects: wrapping those again
        # would keep this handle's reference alive as long as the dup
        # (a chain of unfreed sessions in a resumption loop).
        ptr = self._ref_locked()
        ctx = (ffi.cast("SSL_CTX *", self._ctx)
               if self._ctx is not None else None)
        dup = Session._wrap(ptr, self._scope, ctx)
        dup._facts = self._facts
        return dup

    def _read_facts(self):
        """``(born, lifetime, tls13, address)`` for the cache, read
        once; None once closed.

        ``born`` is the session's time (seconds since the epoch),
        ``lifetime`` the seconds it may be resumed for from then (0: not
        resumable; see ``tlsresume_session_lifetime`` in csrc), and
        ``address`` that of the SSL_SESSION, which this handle holds
        until it is closed.
        """
        with self._lock:
            if self._ptr is None:
                return None
            life = lib.tlsresume_session_lifetime(self._ptr)
            born = lib.SSL_SESSION_get_time(self._ptr)
            address = int(ffi.cast("uintptr_t", self._ptr))
        facts = (float(born), abs(life), life < 0, address)
        self._facts = facts
        return facts

    def _ref(self):
        """A new reference as a plain pointer, for a C call that takes it.

        The caller must hand it to a function that frees it, or free it.
        """
        with self._lock:
            return self._ref_locked()

    def _ref_locked(self):
        if self._ptr is None:
            raise SessionError("session handle is closed")
        lib.SSL_SESSION_up_ref(self._ptr)
        return ffi.cast("SSL_SESSION *", self._ptr)

    def to_der(self):
        """Serialise with ``i2d_SSL_SESSION``.

        The bytes hold the session's master secret: store them as a
        secret (files 0600), never log them.
        """
        def encode(ptr):
            size = lib.i2d_SSL_SESSION(ptr, ffi.NULL)
            if size <= 0:
                drain_errors()
                raise SessionError("i2d_SSL_SESSION could not encode")
            buf = ffi.new("unsigned char[]", size)
            pp = ffi.new("unsigned char **", buf)
            lib.i2d_SSL_SESSION(ptr, pp)
            return ffi.buffer(buf, size)[:]
        return self._get(encode)

    # Read-only facts --------------------------------------------------

    @property
    def scope(self):
        """What this session may be offered to (a PeerKey or SSL_CTX id)."""
        return self._scope

    @property
    def id(self):
        """The session id as hex ('' for a TLS 1.3 ticket without one)."""
        def get(ptr):
            n = ffi.new("unsigned int *")
            raw = lib.SSL_SESSION_get_id(ptr, n)
            return ffi.buffer(raw, n[0])[:].hex()
        return self._get(get)

    @property
    def protocol_version(self):
        """The protocol number, e.g. 0x0304 (``TLS1_3_VERSION``)."""
        return self._get(lib.SSL_SESSION_get_protocol_version)

    @property
    def protocol(self):
        """The protocol name, e.g. 'TLSv1.3'."""
        number = self.protocol_version
        return _VERSION_NAMES.get(number, f"0x{number:04x}")

    @property
    def cipher(self):
        """The cipher suite name, or None."""
        def get(ptr):
            cipher = lib.SSL_SESSION_get0_cipher(ptr)
            if cipher == ffi.NULL:
                return None
            return ffi.string(lib.SSL_CIPHER_get_name(cipher)).decode()
        return self._get(get)

    @property
    def time(self):
        """When the session was made, in seconds since the epoch."""
        return self._get(lib.SSL_SESSION_get_time)

    @property
    def timeout(self):
        """The session's lifetime in seconds, as OpenSSL holds it."""
        return self._get(lib.SSL_SESSION_get_timeout)

    @property
    def ticket_lifetime_hint(self):
        """The server's ticket lifetime hint in seconds (0 if none)."""
        return self._get(lib.SSL_SESSION_get_ticket_lifetime_hint)

    @property
    def has_ticket(self):
        """True if the server issued a ticket for this session."""
        return bool(self._get(lib.SSL_SESSION_has_ticket))

    @property
    def is_resumable(self):
        """True if OpenSSL would offer this session for resumption."""
        return bool(self._get(lib.SSL_SESSION_is_resumable))

    def __repr__(self):
        try:
            ident = self.id[:16] or "ticket"
            return f"<tlsresume.Session {ident}... {self.protocol}>"
        except SessionError:
            return "<tlsresume.Session closed>"
