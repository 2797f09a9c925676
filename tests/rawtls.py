"""Raw peers: a client made of plain ``lib`` calls, as a C program would
write it, and a TCP server that speaks no TLS.

Tests use the client where the high-level client cannot go: sessions
scoped to an ``SSL_CTX``, and leaving a server without close_notify; the
server to play a peer that misbehaves.
"""

import contextlib
import socket
import threading

from tlsresume import Session, ffi, lib
from tlsresume._io import io_error, set_timeouts


@contextlib.contextmanager
def client_ctx(max_version=None):
    """A bare TLS client SSL_CTX (no verification), freed afterwards."""
    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    assert ctx != ffi.NULL
    try:
        if max_version is not None:
            assert lib.SSL_CTX_set_max_proto_version(ctx, max_version) == 1
        yield ctx
    finally:
        lib.SSL_CTX_free(ctx)


class RawConnection:
    """One SSL on a blocking socket; :meth:`close` frees both."""

    def __init__(self, ctx, port, session=None, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.settimeout(None)
        set_timeouts(self.sock, 5.0)
        self.ssl = lib.SSL_new(ctx)
        assert self.ssl != ffi.NULL
        assert lib.SSL_set_fd(self.ssl, self.sock.fileno()) == 1
        if session is not None:
            session.set_on(self.ssl)
        ret = lib.SSL_connect(self.ssl)
        if ret != 1:
            error = io_error(self.ssl, ret, "raw handshake", 5.0)
            self.close()
            raise error

    @property
    def reused(self):
        return bool(lib.SSL_session_reused(self.ssl))

    def read(self, size=4096):
        buf = ffi.new("char[]", size)
        ret = lib.SSL_read(self.ssl, buf, size)
        if ret <= 0:
            raise io_error(self.ssl, ret, "raw read", 5.0)
        return ffi.buffer(buf, ret)[:]

    def session(self):
        """``SSL_get1_session`` as a Session handle the caller owns."""
        return Session.from_ssl(self.ssl)

    def close(self, notify=True):
        """Free the connection; ``notify=False`` leaves without
        close_notify while keeping this side's session resumable."""
        if self.ssl is None:
            return
        if notify:
            lib.SSL_shutdown(self.ssl)
        else:
            self.sock.close()
            # Only flags: nothing is sent, but SSL_free then does not mark
            # the client's own copy of the session unresumable.
            lib.SSL_set_shutdown(self.ssl, lib.SSL_SENT_SHUTDOWN
                                 | lib.SSL_RECEIVED_SHUTDOWN)
        lib.SSL_free(self.ssl)
        self.ssl = None
        self.sock.close()
        lib.ERR_clear_error()


class FakeServer:
    """A TCP listener that answers each connection with ``behaviour``."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        # Closing a listener does not wake a blocked accept(): poll.
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)

    def _serve(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with sock:
                try:
                    self.behaviour(self, sock)
                except OSError:
                    pass


def hello(sock):
    """Read the client's first flight (its ClientHello)."""
    sock.settimeout(5)
    assert sock.recv(4096)


def speak_http(server, sock):
    hello(sock)
    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                 b"Connection: close\r\n\r\n")
    server.stopping.wait(2)
