"""The high-level client: ClientContext and Connection."""

import errno
import hashlib
import ipaddress
import logging
import numbers
import os
import time

from ._binding import SSL_EX_INDEX, ffi, lib
from ._io import io_error, numeric_family, open_by_name, tcp_error
from .errors import (
    OpenSSLError,
    SessionError,
    TLSError,
    ZeroReturnError,
    check,
    drain_errors,
    raise_openssl,
)
from .cache import SessionCache
from .peerkey import PeerKey
from .session import Session

log = logging.getLogger(__name__)

_VERSIONS = {
    None: 0,
    "1.2": lib.TLS1_2_VERSION,
    "1.3": lib.TLS1_3_VERSION,
    "TLSv1.2": lib.TLS1_2_VERSION,
    "TLSv1.3": lib.TLS1_3_VERSION,
    lib.TLS1_2_VERSION: lib.TLS1_2_VERSION,
    lib.TLS1_3_VERSION: lib.TLS1_3_VERSION,
}


def tls_version(value, what="version"):
    """Map '1.2', '1.3', 'TLSv1.3', TLS1_3_VERSION or None to a number."""
    try:
        return _VERSIONS[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported TLS {what} {value!r}: use '1.2' or '1.3'"
        ) from None


def _file_digest(path, what):
    """SHA-256 of a file's contents, or of a directory's files."""
    h = hashlib.sha256()
    try:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    h.update(name.encode("utf-8", "surrogateescape"))
                    with open(full, "rb") as f:
                        h.update(f.read())
        else:
            with open(path, "rb") as f:
                h.update(f.read())
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path!r}: "
                         f"{exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise ValueError(f"cannot read {what} {path!r}: {exc}") from None
    return h.hexdigest()


def _alpn_wire(protocols):
    wire = bytearray()
    for proto in protocols:
        try:
            raw = proto.encode("ascii") if isinstance(proto, str) else proto
        except UnicodeEncodeError:
            raise ValueError(f"invalid ALPN protocol {proto!r}: a str "
                             "must be ASCII (pass bytes otherwise)") from None
        if not isinstance(raw, bytes) or not 0 < len(raw) < 256:
            raise ValueError(f"invalid ALPN protocol {proto!r}: must be "
                             "1 to 255 bytes")
        wire.append(len(raw))
        wire += raw
    return bytes(wire)


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# The longest timeout: the kernel's and Python's socket timeouts overflow
# not far above it (a NaN or infinity reached them as an obscure error).
_MAX_TIMEOUT = 1e9

# The most Connection.read() asks OpenSSL for in one call.
_MAX_READ = 1 << 20
_RETRY_CODES = (lib.SSL_ERROR_WANT_READ, lib.SSL_ERROR_WANT_WRITE)
_SESSION_P = ffi.typeof("SSL_SESSION *")
_CHARS = ffi.typeof("char[]")
_INFO = ffi.typeof("int[5]")
_SESSION_FREE = lib.SSL_SESSION_free
_SSL_FREE = lib.SSL_free

# Server name -> the bytes sent as SNI and checked against the
# certificate, or None for an IP address.  Connecting again and again to
# the same names is the common case; the bound keeps odd callers from
# growing it without end.
_NAMES = {}
_NAMES_KEPT = 1024


def _check_name(value, what):
    """Refuse a host or server name that is not a usable str.

    OpenSSL takes names as C strings: a NUL would silently cut the name
    sent and verified short.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or "\x00" in value:
        raise ValueError(f"invalid {what} {value!r}: empty or contains a "
                         "NUL character")


def _check_timeout(timeout):
    """Refuse a timeout that is not None or a number of seconds in
    (0, _MAX_TIMEOUT]."""
    if timeout is None:
        return
    if not isinstance(timeout, numbers.Real):
        raise TypeError("timeout must be a number of seconds or None, not "
                        + type(timeout).__name__)
    if not 0 < timeout <= _MAX_TIMEOUT:  # NaN fails this too
        raise ValueError("timeout must be positive and at most "
                         f"{_MAX_TIMEOUT:g} s, not {timeout!r}")


def _check_peer(host, port, server_hostname):
    """Refuse a peer no connection could use; return the server name
    and its encoding (None for an IP address)."""
    if (isinstance(port, bool) or not isinstance(port, int)
            or not 0 < port < 65536):
        raise ValueError(f"invalid port {port!r}")
    _check_name(host, "host")
    if server_hostname is not None:
        _check_name(server_hostname, "server_hostname")
    name = server_hostname if server_hostname is not None else host
    try:
        return name, _encode_name(name)
    except UnicodeError as exc:
        raise ValueError(f"invalid server name {name!r}: {exc}") from None


def _encode_name(name):
    try:
        return _NAMES[name]
    except KeyError:
        pass
    except TypeError:  # unhashable: let encoding report what is wrong
        return name.encode("idna") if not _is_ip(name) else None
    encoded = name.encode("idna") if not _is_ip(name) else None
    if len(_NAMES) >= _NAMES_KEPT:
        _NAMES.clear()
    _NAMES[name] = encoded
    return encoded


class ClientContext:
    """Settings shared by many client connections, and their SSL_CTX.

    Verifies the server by default: against ``cafile`` (a file or a
    directory of hashed certificates) or the system's trust store, with
    the host name checked and sent as SNI.  ``verify=False`` turns all
    checking off and must be asked for.  ``certfile``/``keyfile`` give a
    client certificate; ``alpn`` a list of protocol names.  ``cache`` is a
    :class:`~tlsresume.SessionCache` that connections take sessions from
    and put new ones into.

    Thread-safe: one context may serve connections in many threads.  The
    context owns its SSL_CTX; :meth:`close` frees it (connections still
    open keep it alive through OpenSSL's own reference count).
    """

    def __init__(self, cafile=None, verify=True, minimum_version=None,
                 maximum_version=None, certfile=None, keyfile=None,
                 alpn=None, cache=None):
        self.verify = bool(verify)
        self.cafile = cafile
        self.minimum_version = tls_version(minimum_version, "minimum_version")
        self.maximum_version = tls_version(maximum_version, "maximum_version")
        if (self.minimum_version and self.maximum_version
                and self.minimum_version > self.maximum_version):
            raise ValueError("minimum_version is above maximum_version")
        if keyfile is not None and certfile is None:
            raise ValueError("keyfile given without certfile")
        if isinstance(alpn, (str, bytes, bytearray)):
            # list("h2") would be ["h", "2"]: two protocols, silently.
            raise TypeError("alpn must be a list of protocol names, not "
                            f"a single {type(alpn).__name__}")
        self.alpn = list(alpn) if alpn else []
        self.cache = cache
        # Read before OpenSSL opens them: it would cut a path at a NUL and
        # load another file than the one named.
        cert_digest = _file_digest(certfile, "certfile") if certfile else None
        key_digest = _file_digest(keyfile, "keyfile") if keyfile else None

        ctx = check(lib.SSL_CTX_new(lib.TLS_client_method()), "SSL_CTX_new")
        self._ctx = ffi.gc(ctx, lib.SSL_CTX_free)
        try:
            trust = self._configure(cafile, certfile, keyfile)
        except BaseException:
            self.close()
            raise
        # Everything but the peer that decides whether a session made
        # here may be offered again; see PeerKey.
        self._config = (
            self.verify, trust, cert_digest, key_digest,
            self.minimum_version, self.maximum_version, tuple(self.alpn),
        )
        # (host, port, server_hostname) -> PeerKey: a key is a digest of
        # the settings above, worth computing once per peer, not per
        # connection.
        self._keys = {}
        # The same -> (server name, its encoding, PeerKey), for peers
        # connect() has checked.
        self._peers = {}

    def _configure(self, cafile, certfile, keyfile):
        ctx = self._ctx
        if self.minimum_version:
            check(lib.SSL_CTX_set_min_proto_version(ctx,
                                                    self.minimum_version),
                  "SSL_CTX_set_min_proto_version")
        if self.maximum_version:
            check(lib.SSL_CTX_set_max_proto_version(ctx,
                                                    self.maximum_version),
                  "SSL_CTX_set_max_proto_version")

        trust = None
        if self.verify:
            lib.SSL_CTX_set_verify(ctx, lib.SSL_VERIFY_PEER, ffi.NULL)
            if cafile is not None:
                path = os.fspath(cafile)
                trust = _file_digest(path, "cafile")
                encoded = os.fsencode(path)
                if os.path.isdir(path):
                    ok = lib.SSL_CTX_load_verify_locations(ctx, ffi.NULL,
                                                           encoded)
                else:
                    ok = lib.SSL_CTX_load_verify_locations(ctx, encoded,
                                                           ffi.NULL)
                check(ok, f"loading CA certificates from {path!r}",
                      ValueError)
            else:
                trust = "system-default"
                check(lib.SSL_CTX_set_default_verify_paths(ctx),
                      "SSL_CTX_set_default_verify_paths")
        else:
            lib.SSL_CTX_set_verify(ctx, lib.SSL_VERIFY_NONE, ffi.NULL)

        if certfile is not None:
            check(lib.SSL_CTX_use_certificate_chain_file(
                ctx, os.fsencode(certfile)),
                f"loading client certificate {certfile!r}", ValueError)
            check(lib.SSL_CTX_use_PrivateKey_file(
                ctx, os.fsencode(keyfile or certfile),
                lib.SSL_FILETYPE_PEM),
                f"loading client key {keyfile or certfile!r}", ValueError)
            check(lib.SSL_CTX_check_private_key(ctx),
                  "client key does not match certificate", ValueError)

        if self.alpn:
            wire = _alpn_wire(self.alpn)
            # Unusually, 0 means success here.
            if lib.SSL_CTX_set_alpn_protos(ctx, wire, len(wire)) != 0:
                drain_errors()
                raise ValueError(f"invalid ALPN list {self.alpn!r}")

        # Sessions reach us through the new-session callback, which also
        # sees TLS 1.3 tickets that arrive after the handshake; OpenSSL's
        # own client store stays empty.
        lib.SSL_CTX_set_session_cache_mode(
            ctx, lib.SSL_SESS_CACHE_CLIENT
            | lib.SSL_SESS_CACHE_NO_INTERNAL_STORE)
        lib.SSL_CTX_sess_set_new_cb(ctx, lib._tlsresume_new_session_cb)
        # Read all the socket holds in one read(), not each record's
        # 5-byte header and then its body apart: a resumed handshake and
        # a short reply then take 2 read() calls instead of 8 (12 under
        # TLS 1.3).  Nobody polls our descriptors, so bytes left in
        # OpenSSL's buffer rather than the kernel's are never missed.
        lib.SSL_CTX_set_read_ahead(ctx, 1)
        return trust

    def close(self):
        """Free the SSL_CTX now.  Safe to call twice."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ffi.release(ctx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def peer_key(self, host, port, server_hostname=None):
        """The :class:`PeerKey` sessions for this peer are kept under."""
        memo = (host, port, server_hostname)
        try:
            return self._keys[memo]
        except (KeyError, TypeError):
            pass
        name = server_hostname if server_hostname is not None else host
        key = PeerKey.build(host, port, (name,) + self._config)
        if len(self._keys) >= _NAMES_KEPT:
            self._keys.clear()
        try:
            self._keys[memo] = key
        except TypeError:  # an unhashable argument: no memo
            pass
        return key

    def _peer(self, host, port, server_hostname):
        """Check a peer; return what connect() needs of it, remembered
        for the next connect(): its server name, the name's encoding,
        its key, and the address family and encoding of a numeric
        ``host`` that C can connect to (else None, None)."""
        name, encoded = _check_peer(host, port, server_hostname)
        key = self.peer_key(host, port, server_hostname)
        family = numeric_family(host)
        address = host.encode("ascii") if family is not None else None
        peer = name, encoded, key, family, address
        if len(self._peers) >= _NAMES_KEPT:
            self._peers.clear()
        self._peers[host, port, server_hostname] = peer
        return peer

    def load_session(self, data, host, port, server_hostname=None):
        """Rebuild a session from :meth:`Session.to_der` bytes.

        Returns a handle the caller owns, scoped to this context and
        peer.  Raises :class:`SessionError` (a ValueError) when the bytes
        are not a session.

        The bytes do not say which peer they were made for (OpenSSL 3.0
        keeps no server name in a client session), so the scope given
        here is trusted: pass only bytes saved from a session of this
        same peer and configuration, stored with its :class:`PeerKey`.
        """
        # The peer as connect() would take it: anything else makes a key
        # no connection can ever match ('None:443', port '443').
        _check_peer(host, port, server_hostname)
        key = self.peer_key(host, port, server_hostname)
        return Session._from_der(data, key)

    def connect(self, host, port, *, server_hostname=None, session=None,
                timeout=10.0):
        """Open a TLS connection and complete the handshake.

        ``session`` is offered for resumption; it must come from a
        connection to the same peer under the same configuration, else
        :class:`SessionError`.  Without one, a session is taken from the
        context's cache, if it has one.  ``timeout`` bounds the TCP
        connect and every later wait for the peer.  Returns a
        :class:`Connection` the caller owns.
        """
        if self._ctx is None:
            raise TLSError("connect() on a closed ClientContext")
        try:
            peer = self._peers[host, port, server_hostname]
            if port.__class__ is not int:  # True == 1: check it afresh
                raise KeyError(port)
        except (KeyError, TypeError):
            peer = self._peer(host, port, server_hostname)
        key = peer[2]
        if timeout.__class__ is not float or not 0 < timeout <= _MAX_TIMEOUT:
            _check_timeout(timeout)

        offered = None
        from_cache = False
        cache = self.cache  # once: another thread may set it meanwhile
        if session is not None:
            if not isinstance(session, Session):
                raise TypeError("session must be a tlsresume.Session, not "
                                + type(session).__name__)
            if session.closed:
                raise SessionError("session handle is closed")
            if session.scope != key:
                raise SessionError(
                    f"session was made for {session.scope}, not {key}: a "
                    "session is only offered to the peer and "
                    "configuration that made it")
            offered = session
        elif cache is not None:
            # A TLS 1.3 ticket leaves the cache, as a handle now ours; a
            # TLS 1.2 session stays there for other connections, and we
            # get a reference of our own to it: from SessionCache itself
            # as an address (a new handle would cost more than the rest
            # of connect()), from a subclass through its take().
            if cache.__class__ is SessionCache:
                offered = cache._take_ref(key)
                if offered.__class__ is int:
                    # Freed exactly once, however this ends.
                    offered = ffi.gc(ffi.cast(_SESSION_P, offered),
                                     _SESSION_FREE)
            else:
                offered = cache.take(key)
            from_cache = offered is not None

        conn = None
        try:
            conn = Connection(self, key, host, port, timeout)
            conn._handshake(peer, offered, cache if from_cache else None)
        except BaseException:
            if conn is not None:
                conn._abort()
            if from_cache:
                _release(offered)
            if cache is not None:
                # Nothing learnt from a failed handshake may be offered.
                cache.discard(key)
            raise
        return conn


def _release(offered):
    """Give back what connect() took from the cache: a handle, or a
    reference (a cdata that frees it; releasing twice is harmless)."""
    if offered.__class__ is Session:
        offered.close()
    else:
        ffi.release(offered)


class Connection:
    """One client TLS connection; made by :meth:`ClientContext.connect`.

    Owns its SSL and socket; :meth:`close` (or ``with``) sends
    close_notify and frees both.  Not for use by several threads at once.
    """

    __slots__ = ("context", "key", "host", "port", "timeout",
                 "session_reused", "_ssl", "_sock", "_fd", "_handle",
                 "_session", "_kept", "_offered", "_callback_error",
                 "__weakref__")

    def __init__(self, context, key, host, port, timeout):
        self.context = context
        self.key = key
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ssl = None
        self._sock = None
        self._fd = -1
        self._handle = None
        self._session = None
        # A TLS 1.2 session resumed from the cache, as a reference:
        # made into a handle only when `session` is asked for.
        self._kept = None
        self._offered = None
        self._callback_error = None
        self.session_reused = False

    def _handshake(self, peer, offered, cache):
        # peer: as ClientContext._peer gives it; cache: the cache
        # ``offered`` came from, or None.
        name, encoded, _, family, address = peer
        if address is None:
            # By name: Python's resolver and a socket object of ours.
            # A numeric address on Linux is connected in the C call
            # below, and the descriptor is the SSL's (SSL_free closes
            # it).
            self._sock = open_by_name(self.host, self.port, self.timeout)
            self._fd = self._sock.fileno()
            family, address = 0, ffi.NULL
        host = ip = ffi.NULL
        if self.context.verify:
            if encoded is None:
                ip = name.encode()
            else:
                host = encoded
        session = ffi.NULL
        owned = 0
        # A TLS 1.2 session from SessionCache: our own reference, as a
        # cdata that frees it (see connect()).
        raw = offered is not None and offered.__class__ is not Session
        if offered is not None:
            self._offered = offered
            if raw:
                session = offered
            elif cache is not None:
                # Taken from the cache, the handle is ours alone: nobody
                # can close it during the call.
                session = offered._ptr
            else:
                # The caller's handle may be closed by another thread:
                # the call gets a reference of its own, and drops it.
                session, owned = offered._ref(), 1
        # The handle makes a reference cycle with self until close().
        self._handle = ffi.new_handle(self)
        info = ffi.new(_INFO)
        # The TCP connection, SSL_new, the descriptor, ex_data, SNI, the
        # name to verify, SSL_set_session and SSL_connect: one C call.
        ssl = lib.tlsresume_client_handshake(
            self.context._ctx, self._fd, family, address, self.port,
            self.timeout or 0.0, encoded if encoded is not None else ffi.NULL,
            host, ip, session, owned, SSL_EX_INDEX, self._handle, info)
        if ssl != ffi.NULL:
            self._ssl = ffi.gc(ssl, _SSL_FREE)
            self._fd = info[4]
        elif info[0] == lib.TLSRESUME_STEP_TCP:
            raise tcp_error(self.host, self.port, ffi.errno, self.timeout)
        if info[3] != 1:
            self._raise_handshake_error(ssl, info[3], info[0])
        if self._callback_error is not None:
            self._raise_callback_error()
        self.session_reused = bool(info[1])
        if (self.session_reused and self._session is None
                and info[2] < lib.TLS1_3_VERSION):
            # TLS 1.2 resumption keeps the same session, valid for the
            # next connection too.  (A TLS 1.3 ticket is used once.)
            if raw:
                # Ours from here on; a handle is made if it is asked for.
                self._kept = offered
                return
            if cache is not None:
                self._session = offered  # our own handle (see take)
                return
            self._session = offered._dup()
        if raw:
            # Declined, or a newer session arrived: our reference goes
            # back (the SSL holds one of its own).
            self._offered = None
            ffi.release(offered)
            if not self.session_reused and self._session is None:
                # Declined, and no new session took its place in the
                # cache: never offer it again.
                cache.discard(self.key)
            return
        if cache is not None:
            stale = (not self.session_reused and self._session is None
                     and offered.protocol_version < lib.TLS1_3_VERSION)
            # The SSL holds its own reference; drop ours.
            offered.close()
            if stale:
                # A TLS 1.2 session the server declined, and no new one
                # took its place in the cache: never offer it again.
                cache.discard(self.key)

    def _raise_handshake_error(self, ssl, ret, step):
        """Raise what a failed tlsresume_client_handshake calls for."""
        if step == lib.TLSRESUME_STEP_CONNECT:
            error = io_error(ssl, ret,
                             f"TLS handshake with {self.host}:{self.port}",
                             self.timeout)
            # An exception from the new-session callback stays visible,
            # as the context of the handshake error.
            error.__context__, self._callback_error = \
                self._callback_error, None
            try:
                raise error
            finally:
                # The local would tie the exception to this frame, and
                # through its traceback keep the caller's locals (open
                # connections, sessions) alive until a garbage collection.
                del error
        if step == lib.TLSRESUME_STEP_SESSION:
            entries = drain_errors()
            raise SessionError("SSL_set_session failed: "
                               + (entries[0][3] if entries else "unknown"))
        what, cls = {
            lib.TLSRESUME_STEP_SSL_NEW: ("SSL_new", OpenSSLError),
            lib.TLSRESUME_STEP_SET_FD: ("SSL_set_fd", OpenSSLError),
            lib.TLSRESUME_STEP_SNI: ("setting SNI", ValueError),
            lib.TLSRESUME_STEP_HOST: ("setting the host name to verify",
                                      ValueError),
            lib.TLSRESUME_STEP_IP: ("setting the IP address to verify",
                                    ValueError),
        }[step]
        raise_openssl(what, cls)

    # The new-session callback lands here (see _callbacks below).
    def _on_new_session(self, session):
        # The facts the cache needs, read now: a lifetime of 0 says the
        # session cannot be resumed, and the copy for the cache shares
        # them.
        facts = session._read_facts()
        if facts is None or not facts[1]:
            session.close()
            return
        self._session = session
        cache = self.context.cache
        if cache is not None:
            cache.put(self.key, session._dup())

    def _raise_callback_error(self):
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _retry(self, ret, fn, what, *args):
        """Finish an SSL_read or SSL_write that returned ``ret``: raise
        what the new-session callback raised, and go on waiting after a
        signal.  Call it right after that call, before any other.

        A signal during the blocking call makes it fail as "want read"
        or "want write" with errno EINTR (a timeout gives EAGAIN).
        Python has run the signal's handler by the time we look (and
        raised, if the handler did), so wait again, for what is left of
        the timeout.
        """
        deadline = None
        while True:
            interrupted = ret <= 0 and ffi.errno == errno.EINTR
            if self._callback_error is not None:
                self._raise_callback_error()
            if not interrupted or lib.SSL_get_error(
                    self._ssl, ret) not in _RETRY_CODES:
                break
            if self.timeout is not None:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.timeout
                if now >= deadline:
                    break
                lib.tlsresume_set_timeouts(self._fd, deadline - now)
            if self._ssl is None:
                raise TLSError(f"{what} on a closed connection")
            ret = fn(self._ssl, *args)
        if deadline is not None:
            saved = ffi.errno
            lib.tlsresume_set_timeouts(self._fd, self.timeout)
            # What io_error() will read: a spent deadline is a timeout.
            ffi.errno = errno.EAGAIN if saved == errno.EINTR else saved
        return ret

    def read(self, size=16384):
        """Read up to ``size`` bytes; b"" once the peer has closed."""
        if size.__class__ is not int and not isinstance(size, int):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size <= 0:
            raise ValueError("size must be positive")
        if size > _MAX_READ:
            # SSL_read returns at most one record (16 KiB) a call: a
            # huge size would only allocate, or overflow the C int.
            size = _MAX_READ
        ssl = self._ssl
        if ssl is None:
            raise TLSError("read on a closed connection")
        buf = ffi.new(_CHARS, size)
        ret = lib.SSL_read(ssl, buf, size)
        if ret <= 0 or self._callback_error is not None:
            ret = self._retry(ret, lib.SSL_read, "read", buf, size)
        if ret > 0:
            return ffi.unpack(buf, ret)
        err = io_error(self._ssl, ret, f"reading from {self.host}:"
                       f"{self.port}", self.timeout)
        if isinstance(err, ZeroReturnError):
            return b""
        raise err

    def write(self, data):
        """Write all of ``data``; returns its length."""
        if data.__class__ is not bytes:
            # bytes(5) would be five NUL bytes: only bytes-like objects.
            data = bytes(memoryview(data))
        if not data:
            return 0
        ssl = self._ssl
        if ssl is None:
            raise TLSError("write on a closed connection")
        ret = lib.SSL_write(ssl, data, len(data))
        if ret <= 0 or self._callback_error is not None:
            ret = self._retry(ret, lib.SSL_write, "write", data, len(data))
        if ret <= 0:
            raise io_error(self._ssl, ret, f"writing to {self.host}:"
                           f"{self.port}", self.timeout)
        return ret

    def pending(self):
        """Bytes already decrypted and waiting to be read."""
        return lib.SSL_pending(self._ssl) if self._ssl is not None else 0

    @property
    def session(self):
        """The newest resumable :class:`Session`, or None.

        The handle is shared with the connection and outlives it; under
        TLS 1.3 tickets arriving after the handshake are picked up by
        :meth:`read` and :meth:`close`, so ask again after those.
        """
        if self._session is None and self._kept is not None:
            lib.SSL_SESSION_up_ref(self._kept)
            self._session = Session._wrap(
                ffi.cast(_SESSION_P, self._kept), self.key)
        return self._session

    @property
    def version(self):
        """The negotiated protocol, e.g. 'TLSv1.3'."""
        if self._ssl is None:
            return None
        return ffi.string(lib.SSL_get_version(self._ssl)).decode()

    @property
    def cipher(self):
        """The negotiated cipher suite name."""
        if self._ssl is None:
            return None
        cipher = lib.SSL_get_current_cipher(self._ssl)
        if cipher == ffi.NULL:
            return None
        return ffi.string(lib.SSL_CIPHER_get_name(cipher)).decode()

    @property
    def alpn_protocol(self):
        """The protocol the server chose by ALPN, or None."""
        if self._ssl is None:
            return None
        data = ffi.new("const unsigned char **")
        size = ffi.new("unsigned int *")
        lib.SSL_get0_alpn_selected(self._ssl, data, size)
        if size[0] == 0:
            return None
        return ffi.buffer(data[0], size[0])[:].decode("ascii", "replace")

    @property
    def closed(self):
        """True once :meth:`close` has run."""
        return self._ssl is None and self._sock is None and self._fd < 0

    def close(self):
        """Send close_notify and free the connection.  Safe to repeat.

        Under TLS 1.3, if no ticket has arrived yet, first waits (usually
        one round trip; at most one second, or the timeout if shorter)
        for the server's tickets and close_notify, so the next
        connection can resume.
        """
        ssl, self._ssl = self._ssl, None
        if ssl is None:
            self._abort()
        else:
            # The C call below frees the SSL: garbage collection must
            # not free it again.
            ffi.gc(ssl, None)
            # close_notify; under TLS 1.3 with no ticket yet, read until
            # the peer's close_notify so tickets in flight reach the
            # new-session callback; the ex_data slot and the error queue
            # emptied; SSL_free, which closes a descriptor the SSL owns:
            # one C call.
            timeout = self.timeout
            lib.tlsresume_client_close(
                ssl, SSL_EX_INDEX, self._session is None,
                timeout if timeout is not None and timeout < 1.0 else 1.0)
            self._fd = -1
            self._handle = None
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()
        if self._callback_error is not None:
            self._raise_callback_error()

    def _abort(self):
        ssl, self._ssl = self._ssl, None
        if ssl is not None:
            lib.SSL_set_ex_data(ssl, SSL_EX_INDEX, ffi.NULL)
            # Closes the descriptor too, if the SSL owns it.
            ffi.release(ssl)
        self._handle = None
        self._fd = -1
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        drain_errors()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else self.version
        return (f"<tlsresume.Connection {self.host}:{self.port} {state} "
                f"reused={self.session_reused}>")


@ffi.def_extern()
def _tlsresume_new_session_cb(ssl, session):
    # Returning 1 tells OpenSSL we keep the reference; 0 that it keeps it.
    # Nothing raised here may escape into C: store it on the connection,
    # which raises it once the C call that led here has returned.
    handle = lib.SSL_get_ex_data(ssl, SSL_EX_INDEX)
    if handle == ffi.NULL:
        return 0
    conn = ffi.from_handle(handle)
    try:
        wrapped = Session._wrap(session, conn.key)
    except BaseException as exc:
        conn._callback_error = exc
        return 0
    try:
        conn._on_new_session(wrapped)
    except BaseException as exc:
        conn._callback_error = exc
    return 1


__all__ = ["ClientContext", "Connection", "OpenSSLError", "tls_version"]
