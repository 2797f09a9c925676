"""A session-caching TLS server: the counterpart of the client.

It exists so that everything runs on loopback: the demo, the tests and
the benchmarks.  Each connection gets a short greeting (so TLS 1.3
tickets flow before the client reads anything), then the server reads
until the client closes.
"""

import logging
import os
import shutil
import socket
import tempfile
import threading

from ._binding import ffi, lib
from ._certs import make_certificates
from ._io import io_error, set_timeouts
from .client import tls_version
from .errors import TLSError, check, drain_errors

log = logging.getLogger(__name__)

GREETING = b"hello from tlsresume\n"
_SESSION_ID_CONTEXT = b"tlsresume-server"


class Server:
    """A threaded TLS server with a server-side session cache.

    ``tickets=False`` turns session tickets off (resumption then uses
    stateful session ids, TLS 1.3 included); ``cache=False`` turns the
    server's session cache off (with both off nothing resumes).  With no
    ``certfile`` a throwaway CA and a certificate for localhost,
    127.0.0.1 and ::1 are made with trustme; :attr:`cafile` then names
    the CA for clients.  ``key_type`` ('rsa' or 'ecdsa') picks the key of
    that generated certificate.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host="127.0.0.1", port=0, *, certfile=None,
                 keyfile=None, minimum_version=None, maximum_version=None,
                 tickets=True, cache=True, greeting=GREETING, timeout=5.0,
                 key_type="rsa"):
        if isinstance(port, bool) or not isinstance(port, int) \
                or not 0 <= port < 65536:
            raise ValueError(f"invalid port {port!r}: must be 0 (any free "
                             "port) to 65535")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= 1e9:
            # 0 would mean no timeout: an idle client holds a thread forever.
            raise ValueError(f"invalid timeout {timeout!r}: must be positive "
                             "seconds")
        self.host = host
        self.port = port
        self.tickets = tickets
        self.cache = cache
        self.greeting = bytes(greeting)
        self.timeout = timeout
        self.cafile = None
        self._tmpdir = None
        self._listener = None
        self._thread = None
        self._stop = threading.Event()
        self._workers = {}  # thread -> its client socket
        self._workers_lock = threading.Lock()
        self.accepted = 0
        self.failed_handshakes = 0

        if certfile is None:
            if keyfile is not None:
                raise ValueError("keyfile given without certfile")
            certfile, keyfile = self._make_certificate(key_type)
        ctx = check(lib.SSL_CTX_new(lib.TLS_server_method()), "SSL_CTX_new")
        self._ctx = ffi.gc(ctx, lib.SSL_CTX_free)
        try:
            self._configure(certfile, keyfile, tls_version(minimum_version),
                            tls_version(maximum_version))
        except BaseException:
            self._cleanup()
            raise

    def _make_certificate(self, key_type):
        self._tmpdir = tempfile.mkdtemp(prefix="tlsresume-server-")
        try:
            files = make_certificates(self._tmpdir, "localhost",
                                      "127.0.0.1", "::1", key_type=key_type)
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            raise
        self.cafile = files.cafile
        return files.certfile, files.keyfile

    def _configure(self, certfile, keyfile, minimum, maximum):
        ctx = self._ctx
        check(lib.SSL_CTX_use_certificate_chain_file(
            ctx, os.fsencode(certfile)),
            f"loading certificate {certfile!r}", ValueError)
        check(lib.SSL_CTX_use_PrivateKey_file(
            ctx, os.fsencode(keyfile or certfile), lib.SSL_FILETYPE_PEM),
            f"loading key {keyfile or certfile!r}", ValueError)
        check(lib.SSL_CTX_check_private_key(ctx),
              "key does not match certificate", ValueError)
        if minimum:
            check(lib.SSL_CTX_set_min_proto_version(ctx, minimum),
                  "SSL_CTX_set_min_proto_version")
        if maximum:
            check(lib.SSL_CTX_set_max_proto_version(ctx, maximum),
                  "SSL_CTX_set_max_proto_version")
        check(lib.SSL_CTX_set_session_id_context(
            ctx, _SESSION_ID_CONTEXT, len(_SESSION_ID_CONTEXT)),
            "SSL_CTX_set_session_id_context")
        lib.SSL_CTX_set_session_cache_mode(
            ctx, lib.SSL_SESS_CACHE_SERVER if self.cache
            else lib.SSL_SESS_CACHE_OFF)
        if not self.tickets:
            lib.SSL_CTX_set_options(ctx, lib.SSL_OP_NO_TICKET)
            if not self.cache:
                # Under TLS 1.3 OpenSSL would still send tickets naming
                # sessions it keeps nowhere; send none instead.
                check(lib.SSL_CTX_set_num_tickets(ctx, 0),
                      "SSL_CTX_set_num_tickets")
        # OpenSSL 3 treats a client that leaves without close_notify as a
        # fatal error and drops its session from the cache before
        # SSL_set_shutdown in _handle can save it; read such an EOF as
        # a plain close instead.  (0, a no-op, on OpenSSL 1.1.1.)
        lib.SSL_CTX_set_options(ctx, lib.SSL_OP_IGNORE_UNEXPECTED_EOF)

    # Life cycle ---------------------------------------------------------

    def start(self):
        """Bind, listen and serve in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.settimeout(0.2)
        except OSError as exc:
            listener.close()
            raise TLSError(f"cannot listen on {self.host}:{self.port}: "
                           f"{exc.strerror or exc}") from exc
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop,
                                        name=f"tlsresume-server-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        """Start if needed and block until :meth:`stop` or Ctrl-C."""
        if self._thread is None:
            self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def stop(self):
        """Stop accepting, wait for open connections, free everything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._workers_lock:
            workers = list(self._workers)
            # Wake workers blocked reading from an idle client, so stop()
            # does not wait out their timeouts.  Under the lock: a worker
            # leaves the map before it closes its socket.
            for sock in self._workers.values():
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for worker in workers:
            worker.join(self.timeout + 1)
        self._cleanup()

    def _cleanup(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ffi.release(ctx)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def write_ca(self, path):
        """Copy the generated CA certificate to ``path`` for clients."""
        if self.cafile is None:
            raise ValueError("the server was given its own certificate; "
                             "there is no generated CA to write")
        shutil.copyfile(self.cafile, path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def sessions_cached(self):
        """How many sessions the server's own cache holds now."""
        return lib.SSL_CTX_sess_number(self._ctx) if self._ctx else 0

    # Serving ------------------------------------------------------------

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("accept failed: %s", exc)
                continue
            self.accepted += 1
            worker = threading.Thread(target=self._serve_one, args=(sock,),
                                      daemon=True)
            with self._workers_lock:
                self._workers[worker] = sock
            worker.start()

    def _serve_one(self, sock):
        try:
            self._handle(sock)
        except Exception as exc:  # one bad client never stops the server
            log.debug("connection failed: %s", exc)
        finally:
            with self._workers_lock:
                self._workers.pop(threading.current_thread(), None)
            sock.close()
            drain_errors()

    def _handle(self, sock):
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_timeouts(sock, self.timeout)
        ssl = check(lib.SSL_new(self._ctx), "SSL_new")
        done = False
        try:
            check(lib.SSL_set_fd(ssl, sock.fileno()), "SSL_set_fd")
            ret = lib.SSL_accept(ssl)
            if ret != 1:
                error = io_error(ssl, ret, "TLS handshake", self.timeout)
                # Workers finish concurrently: += alone can lose counts.
                with self._workers_lock:
                    self.failed_handshakes += 1
                raise error
            done = True
            if self.greeting:
                ret = lib.SSL_write(ssl, self.greeting, len(self.greeting))
                if ret <= 0:
                    raise io_error(ssl, ret, "writing the greeting",
                                   self.timeout)
            buf = ffi.new("char[]", 4096)
            while lib.SSL_read(ssl, buf, 4096) > 0:
                pass
            if lib.SSL_get_shutdown(ssl) & lib.SSL_RECEIVED_SHUTDOWN:
                lib.SSL_shutdown(ssl)
        finally:
            if done:
                # OpenSSL drops a session from the cache when its
                # connection ends without a clean shutdown; a client that
                # leaves without close_notify must not cost the session.
                lib.SSL_set_shutdown(ssl, lib.SSL_SENT_SHUTDOWN
                                     | lib.SSL_RECEIVED_SHUTDOWN)
            lib.SSL_free(ssl)
