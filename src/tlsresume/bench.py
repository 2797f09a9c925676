"""``tlsresume bench``: connections per second, full and resumed.

Six clients do the same work per connection: TCP connect (TCP_NODELAY),
the handshake (offering the saved session in resumed mode), one small
request, one read of the first bytes of the answer (so TLS 1.3 tickets
are processed), close_notify (``SSL_shutdown`` once) and close.

``tlsresume``
    :class:`~tlsresume.ClientContext` with a
    :class:`~tlsresume.SessionCache` (resumed mode) or without one (full).
``tlsresume-lowlevel``
    the loop of :mod:`tlsresume.example` on ``lib`` with a saved
    :class:`~tlsresume.Session` per thread.
``stdlib``
    the ``ssl`` module, ``wrap_socket(session=...)``.
``pyopenssl``
    pyOpenSSL, ``Connection.set_session``.  It runs on the OpenSSL that
    its ``cryptography`` wheel bundles, not on the system's.
``c-reference``
    ``csrc/c_reference_client.c``, the classic C example with the TLS 1.3
    fix, compiled here with the system compiler.
``c-reference-read-ahead``
    the same program with ``SSL_CTX_set_read_ahead`` on, as tlsresume's
    :class:`~tlsresume.ClientContext` sets it (the classic example does
    not): the C client doing exactly what tlsresume asks of libssl.

The servers: ``openssl s_server -www`` (single-threaded) and
tlsresume's own :class:`~tlsresume.Server` (in a child process), both on
a free loopback port with an RSA-2048 certificate from trustme.  Each
round runs every case once per client, the client order rotating from
round to round, so drift hits every client alike; the figures are
medians over rounds, with min and max.

Each measurement also counts the CPU time the client and the server
used, per connection: with one client thread the two mostly take
turns, so a connection lasts a little less than both together, and no
client can be faster than the server's share allows.
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import ssl as stdlib_ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ._binding import ffi, lib, openssl_version
from . import cachebench
from ._io import io_error, open_socket
from .cache import SessionCache
from .client import ClientContext
from .errors import check
from .example import _configure as example_configure
from .session import Session
from .testing import (
    ToolError,
    make_certificates,
    openssl_command,
    start_s_server,
    stop_s_server,
)

CLIENTS = ("tlsresume", "tlsresume-lowlevel", "stdlib", "pyopenssl",
           "c-reference", "c-reference-read-ahead")
SERVERS = ("s_server", "tlsresume-server")
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
READ_SIZE = 16
SERVER_NAME = "localhost"
HOST = "127.0.0.1"
C_SOURCE_NAME = "c_reference_client.c"

# (rounds, seconds per measurement)
FULL_SETTINGS = (5, 1.0)
QUICK_SETTINGS = (3, 0.15)


class BenchError(Exception):
    """The bench cannot run as asked; the message says why."""


# Servers -----------------------------------------------------------------

def _process_cpu(pid):
    """CPU seconds (user and system, all threads, those ended included)
    a process has used, from Linux's /proc; None elsewhere.  The kernel
    counts them in clock ticks, 10 ms on most systems."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    # Fields 14 and 15, utime and stime, counted after the command name
    # (which may hold spaces) and its closing parenthesis.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ServerProcess:
    """What the two servers share: a child process, and its pid."""

    _proc = None

    @property
    def pid(self):
        """The server process's id while it runs, else None."""
        proc = self._proc
        return None if proc is None else proc.pid


class OpenSSLServer(_ServerProcess):
    """``openssl s_server -www`` on a free loopback port.

    s_server serves one connection at a time, on one core.
    """

    name = "s_server"

    def __init__(self, certs, directory):
        self.certs = certs
        self.directory = directory
        self.host = HOST
        self.port = None
        self.version = None
        self._proc = None

    def start(self):
        self.version = subprocess.run(
            [openssl_command(), "version"], capture_output=True, text=True,
            check=False).stdout.strip()
        self._proc, self.port = start_s_server(
            ["-cert", self.certs.certfile, "-key", self.certs.keyfile,
             "-www"], os.path.join(self.directory, "s_server.log"))
        return self

    def stop(self):
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_s_server(proc)


class TlsresumeServer(_ServerProcess):
    """tlsresume's :class:`~tlsresume.Server`, in a child process.

    A child process keeps the server's threads off the bench's GIL, so
    the Python clients compete with it for cores, not for the GIL.
    """

    name = "tlsresume-server"

    def __init__(self, certs, directory):
        self.certs = certs
        self.directory = directory
        self.host = HOST
        self.port = None
        self.version = f"tlsresume on {openssl_version()}"
        self._proc = None

    def start(self):
        code = ("import sys; from tlsresume.bench import _serve_child; "
                "_serve_child(sys.argv[1:])")
        log_path = os.path.join(self.directory, "tlsresume-server.log")
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, self.certs.certfile,
                 self.certs.keyfile], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log)
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            with open(log_path, encoding="utf-8", errors="replace") as f:
                detail = f.read().strip()
            raise BenchError(f"tlsresume's server did not start: {detail}")
        self.port = int(line)
        return self

    def stop(self):
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.stdin.close()  # the child stops on end of input
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _serve_child(argv):
    """Run a Server until standard input closes; print its port first."""
    from .server import Server

    certfile, keyfile = argv
    with Server(HOST, 0, certfile=certfile, keyfile=keyfile) as server:
        print(server.port, flush=True)
        sys.stdin.read()


# Clients ----------------------------------------------------------------

@dataclass
class Sample:
    """One measurement: connections made in ``seconds``, how many of
    them resumed, and the CPU seconds the client and the server used
    meanwhile (None where they could not be read)."""

    connections: int
    seconds: float
    reused: int
    client_cpu: float = None
    server_cpu: float = None

    @property
    def rate(self):
        return self.connections / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    cafile: str
    server_name: str = SERVER_NAME
    server_pid: int = None  # to read the server's CPU time; None: don't

    def server_cpu(self):
        """CPU seconds the server has used so far, or None."""
        pid = self.server_pid
        return None if pid is None else _process_cpu(pid)


def _drive(make_worker, threads, duration, server_cpu):
    """Run ``threads`` workers for ``duration`` seconds; return a Sample.

    ``make_worker()`` is called in each thread and returns a function
    that makes one connection and returns whether it resumed.  Each
    thread makes one untimed connection first (it gives resumed mode its
    first session); then all start together, and each starts
    connections until its deadline has passed.  The Sample's client CPU
    is this process's, from that start to the end; its server CPU what
    ``server_cpu()`` (seconds so far, or None) grew by meanwhile.
    """
    began = {}  # CPU seconds so far when the threads start together

    def started():
        began["client"] = time.process_time()
        began["server"] = server_cpu()

    barrier = threading.Barrier(threads, action=started)
    results = [None] * threads
    errors = []

    def body(index):
        try:
            one = make_worker()
            one()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        count = reused = 0
        clock = time.perf_counter
        start = clock()
        deadline = start + duration
        try:
            while clock() < deadline:
                reused += one()
                count += 1
        except BaseException as exc:
            errors.append(exc)
        results[index] = (count, reused, start, clock())

    workers = [threading.Thread(target=body, args=(i,), daemon=True)
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu = server = None
    if began:
        cpu = time.process_time() - began["client"]
        server_ended = server_cpu()
        if began["server"] is not None and server_ended is not None:
            server = server_ended - began["server"]
    if errors:
        raise errors[0]
    return Sample(sum(r[0] for r in results),
                  max(r[3] for r in results) - min(r[2] for r in results),
                  sum(r[1] for r in results), cpu, server)


class PythonClient:
    """Base of the in-process clients."""

    name = None

    def unavailable(self):
        """Why this client cannot run here, or None."""
        return None

    def openssl_version(self):
        return openssl_version()

    def measure(self, target, tls, mode, threads, duration):
        setup = self.setup(target, tls, mode == "resumed")
        try:
            return _drive(setup.worker, threads, duration,
                          target.server_cpu)
        finally:
            setup.close()


class TlsresumeClient(PythonClient):
    """ClientContext with a SessionCache: the way the library is used."""

    name = "tlsresume"

    def setup(self, target, tls, resumed):
        cache = SessionCache(1024, None, 4) if resumed else None
        return _TlsresumeSetup(target, tls, cache)


class _TlsresumeSetup:
    def __init__(self, target, tls, cache):
        self.target = target
        self.context = ClientContext(cafile=target.cafile,
                                     minimum_version=tls,
                                     maximum_version=tls, cache=cache)

    def worker(self):
        connect = self.context.connect
        host, port = self.target.host, self.target.port
        name = self.target.server_name

        def one():
            with connect(host, port, server_hostname=name) as conn:
                reused = conn.session_reused
                conn.write(REQUEST)
                if not conn.read(READ_SIZE):
                    raise BenchError("the server sent nothing")
            return reused
        return one

    def close(self):
        cache = self.context.cache
        if cache is not None:
            cache.clear()
        self.context.close()


class LowLevelClient(PythonClient):
    """The example's loop on ``lib``: one SSL_CTX, a saved Session."""

    name = "tlsresume-lowlevel"

    def setup(self, target, tls, resumed):
        return _LowLevelSetup(target, tls, resumed)


class _LowLevelSetup:
    def __init__(self, target, tls, resumed):
        self.target = target
        self.resumed = resumed
        self._local = threading.local()
        self._states = []
        self._states_lock = threading.Lock()
        ctx = check(lib.SSL_CTX_new(lib.TLS_client_method()), "SSL_CTX_new")
        self._ctx = ffi.gc(ctx, lib.SSL_CTX_free)
        # Exactly this version, verifying against the CA: as the example.
        example_configure(ctx, tls, target.cafile, verify=True)
        # The TLS 1.3 fix, as in tlsresume.example: sessions come from the
        # new-session callback, which also sees tickets sent after the
        # handshake.
        lib.SSL_CTX_set_session_cache_mode(
            ctx, lib.SSL_SESS_CACHE_CLIENT
            | lib.SSL_SESS_CACHE_NO_INTERNAL_STORE)
        self._callback = ffi.callback("int(SSL *, SSL_SESSION *)",
                                      self._new_session)
        lib.SSL_CTX_sess_set_new_cb(ctx, self._callback)

    def _new_session(self, ssl, session):
        state = getattr(self._local, "state", None)
        if state is None or not self.resumed:
            return 0  # OpenSSL keeps its reference
        handle = Session.adopt(ssl, session)  # ours now: return 1
        if handle.is_resumable:
            if state["saved"] is not None:
                state["saved"].close()
            state["saved"] = handle
        else:
            handle.close()
        return 1

    def worker(self):
        state = {"saved": None}
        self._local.state = state
        with self._states_lock:
            self._states.append(state)
        ctx = self._ctx
        host, port = self.target.host, self.target.port
        name = self.target.server_name.encode("ascii")
        buf = ffi.new("char[]", READ_SIZE)
        timeout = 10.0

        def one():
            sock = open_socket(host, port, timeout)
            ssl = lib.SSL_new(ctx)
            try:
                check(ssl, "SSL_new")
                lib.SSL_set_fd(ssl, sock.fileno())
                lib.SSL_set_tlsext_host_name(ssl, name)
                lib.SSL_set1_host(ssl, name)
                if state["saved"] is not None:
                    state["saved"].set_on(ssl)
                ret = lib.SSL_connect(ssl)
                if ret != 1:
                    raise io_error(ssl, ret, "TLS handshake", timeout)
                reused = lib.SSL_session_reused(ssl)
                ret = lib.SSL_write(ssl, REQUEST, len(REQUEST))
                if ret <= 0:
                    raise io_error(ssl, ret, "writing", timeout)
                ret = lib.SSL_read(ssl, buf, READ_SIZE)
                if ret <= 0:
                    raise io_error(ssl, ret, "reading", timeout)
                lib.SSL_shutdown(ssl)
                lib.ERR_clear_error()
            finally:
                if ssl != ffi.NULL:
                    lib.SSL_free(ssl)
                sock.close()
            return reused
        return one

    def close(self):
        for state in self._states:
            if state["saved"] is not None:
                state["saved"].close()
        ffi.release(self._ctx)


class StdlibClient(PythonClient):
    """The ``ssl`` module: ``wrap_socket(session=...)``."""

    name = "stdlib"

    def openssl_version(self):
        return stdlib_ssl.OPENSSL_VERSION

    def setup(self, target, tls, resumed):
        return _StdlibSetup(target, tls, resumed)


_STDLIB_VERSIONS = {"1.2": stdlib_ssl.TLSVersion.TLSv1_2,
                    "1.3": stdlib_ssl.TLSVersion.TLSv1_3}


class _StdlibSetup:
    def __init__(self, target, tls, resumed):
        self.target = target
        self.resumed = resumed
        ctx = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ctx.maximum_version = _STDLIB_VERSIONS[tls]
        ctx.load_verify_locations(target.cafile)  # verifies host names too
        self.context = ctx

    def worker(self):
        wrap = self.context.wrap_socket
        address = (self.target.host, self.target.port)
        name = self.target.server_name
        resumed = self.resumed
        saved = None

        def one():
            nonlocal saved
            sock = socket.create_connection(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn = wrap(sock, server_hostname=name, session=saved)
            except BaseException:
                sock.close()
                raise
            with conn:
                reused = conn.session_reused
                conn.sendall(REQUEST)
                if not conn.recv(READ_SIZE):
                    raise BenchError("the server sent nothing")
                if resumed:
                    saved = conn.session
                # unwrap() sends close_notify, then reads for the peer's;
                # on a non-blocking socket that read is tried once, and
                # fails (want read, or the rest of the answer) once
                # close_notify is sent.
                conn.setblocking(False)
                try:
                    conn.unwrap()
                except stdlib_ssl.SSLError:
                    pass
            return reused
        return one

    def close(self):
        pass


class PyOpenSSLClient(PythonClient):
    """pyOpenSSL: ``Connection.set_session``."""

    name = "pyopenssl"

    def unavailable(self):
        try:
            import OpenSSL.SSL  # noqa: F401
        except ImportError:
            return ("pyOpenSSL is not installed (the bench extra: "
                    "pip install '.[bench]' in tlsresume's source tree)")
        return None

    def openssl_version(self):
        from OpenSSL import SSL

        text = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        return f"{text} (bundled with the cryptography wheel)"

    def setup(self, target, tls, resumed):
        return _PyOpenSSLSetup(target, tls, resumed)


class _PyOpenSSLSetup:
    def __init__(self, target, tls, resumed):
        from OpenSSL import SSL

        self.target = target
        self.resumed = resumed
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        version = (SSL.TLS1_2_VERSION if tls == "1.2"
                   else SSL.TLS1_3_VERSION)
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
        ctx.load_verify_locations(target.cafile)
        ctx.set_verify(SSL.VERIFY_PEER)
        self.context = ctx

    def worker(self):
        from OpenSSL import SSL
        # pyOpenSSL has no call for host name checking or for
        # SSL_session_reused; its own binding (cryptography's) has both.
        from OpenSSL._util import lib as plib

        ctx = self.context
        address = (self.target.host, self.target.port)
        name = self.target.server_name.encode("ascii")
        resumed = self.resumed
        saved = None

        def one():
            nonlocal saved
            sock = socket.create_connection(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn = SSL.Connection(ctx, sock)
                conn.set_tlsext_host_name(name)
                plib.X509_VERIFY_PARAM_set1_host(
                    plib.SSL_get0_param(conn._ssl), name, len(name))
                if saved is not None:
                    conn.set_session(saved)
                conn.set_connect_state()
                conn.do_handshake()
                reused = plib.SSL_session_reused(conn._ssl)
                conn.sendall(REQUEST)
                if not conn.recv(READ_SIZE):
                    raise BenchError("the server sent nothing")
                if resumed:
                    saved = conn.get_session()
                conn.shutdown()
            finally:
                sock.close()
            return reused
        return one

    def close(self):
        pass


def find_compiler():
    """The C compiler to use ($CC or cc), or None."""
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc.split()[0]) and cc


def default_c_source():
    """The C reference client's source: shipped in the package by an
    install (setup.py copies it), else csrc/ of the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    shipped = os.path.join(here, C_SOURCE_NAME)
    if os.path.exists(shipped):
        return shipped
    path = os.path.join(here, os.pardir, os.pardir, "csrc", C_SOURCE_NAME)
    return os.path.normpath(path)


def compile_c_client(source, directory):
    """Compile the C reference client; return the executable's path."""
    if not os.path.exists(source):
        raise BenchError(
            f"the C reference client's source {source} is missing (it "
            "is csrc/c_reference_client.c in the source tree); pass "
            "--c-source, or leave it out with --clients")
    cc = find_compiler()
    if not cc:
        raise BenchError(
            "no C compiler found for the c-reference client (looked for "
            f"{os.environ.get('CC', 'cc')!r}); install one (Debian: "
            "apt-get install gcc libssl-dev) or set CC, or leave it out "
            "with --clients")
    exe = os.path.join(directory, "c_reference_client")
    cmd = cc.split() + ["-O2", "-pthread", source, "-o", exe]
    prefix = os.environ.get("TLSRESUME_OPENSSL_DIR")
    if prefix:
        libdir = os.path.join(prefix, "lib")
        cmd += [f"-I{os.path.join(prefix, 'include')}", f"-L{libdir}",
                f"-Wl,-rpath,{libdir}"]
    cmd += ["-lssl", "-lcrypto"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError("compiling the C reference client failed:\n"
                         + " ".join(cmd) + "\n" + done.stderr.strip())
    return exe


class CReferenceClient:
    """csrc/c_reference_client.c, compiled on first use; with
    ``read_ahead``, run with libssl's read-ahead on."""

    def __init__(self, source=None, directory=None, read_ahead=False):
        self.source = source or default_c_source()
        self.directory = directory
        self.read_ahead = read_ahead
        self.name = "c-reference" + ("-read-ahead" if read_ahead else "")
        self.exe = None
        self._version = None

    def unavailable(self):
        try:
            self._build()
        except BenchError as exc:
            return str(exc)
        return None

    def _build(self):
        if self.exe is None:
            if self.directory is None:
                self.directory = tempfile.mkdtemp(prefix="tlsresume-bench-")
            key = (self.source, self.directory)
            if not os.path.exists(_COMPILED.get(key, "")):
                _COMPILED[key] = compile_c_client(*key)
            self.exe = _COMPILED[key]
        return self.exe

    def openssl_version(self):
        return self._version or "unknown (not run yet)"

    def command(self, target, tls, mode, threads, duration):
        return [self._build(), "--host", target.host,
                "--port", str(target.port),
                "--servername", target.server_name, "--tls", tls,
                "--cafile", target.cafile, "--mode", mode,
                "--duration", f"{duration:g}", "--threads", str(threads),
                "--read-ahead", "1" if self.read_ahead else "0"] + (
                    [] if target.server_pid is None
                    else ["--server-pid", str(target.server_pid)])

    def measure(self, target, tls, mode, threads, duration):
        cmd = self.command(target, tls, mode, threads, duration)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=duration + 60, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError("the C reference client hung") from None
        if done.returncode != 0:
            raise BenchError("the C reference client failed: "
                             + done.stderr.strip())
        result = json.loads(done.stdout)
        self._version = result["openssl"]
        return Sample(result["connections"], result["seconds"],
                      result["reused"], result["cpu_seconds"],
                      result["server_cpu_seconds"])


# (source, directory) -> executable: both C clients run one build.
_COMPILED = {}


def make_client(name, c_source=None, directory=None):
    if name.startswith("c-reference"):
        return CReferenceClient(c_source, directory,
                                read_ahead=name.endswith("-read-ahead"))
    return {"tlsresume": TlsresumeClient,
            "tlsresume-lowlevel": LowLevelClient,
            "stdlib": StdlibClient,
            "pyopenssl": PyOpenSSLClient}[name]()


# The plan, the rounds, the results ----------------------------------------

@dataclass(frozen=True)
class Case:
    server: str
    tls: str
    mode: str
    threads: int

    def label(self):
        return (f"{self.server} TLS {self.tls} {self.mode} "
                f"{self.threads} thread{'s' if self.threads > 1 else ''}")


def plan(servers, tls_versions, modes, threads):
    """The cases of one round: the matrix on one thread, then scaling.

    Thread scaling (more than one client thread) runs resumed, against
    s_server, as the targets ask.
    """
    cases = [Case(server, tls, mode, 1)
             for server in servers for tls in tls_versions
             for mode in modes]
    if "s_server" in servers and "resumed" in modes:
        cases += [Case("s_server", tls, "resumed", n)
                  for n in threads if n > 1 for tls in tls_versions]
    return cases


@dataclass
class Result:
    client: str
    case: Case
    samples: list = field(default_factory=list)
    error: str = None

    @property
    def rates(self):
        return [s.rate for s in self.samples]

    @property
    def median(self):
        return statistics.median(self.rates) if self.samples else None

    @property
    def reused_fraction(self):
        total = sum(s.connections for s in self.samples)
        if not total:
            return None
        return sum(s.reused for s in self.samples) / total

    def cpu_per_connection(self, side):
        """Microseconds of CPU per connection on ``side`` ('client' or
        'server'), over all samples; None if any lacks it."""
        used = [getattr(s, side + "_cpu") for s in self.samples]
        connections = sum(s.connections for s in self.samples)
        if not used or None in used or not connections:
            return None
        return sum(used) / connections * 1e6

    @property
    def resumed_as_asked(self):
        """Did every connection do what the mode asks (resume or not)?"""
        fraction = self.reused_fraction
        if fraction is None:
            return None
        return fraction == (1.0 if self.case.mode == "resumed" else 0.0)

    def row(self, openssl):
        rates = self.rates
        return {
            "client": self.client,
            "server": self.case.server,
            "tls": self.case.tls,
            "mode": self.case.mode,
            "threads": self.case.threads,
            "conn_per_s": ({"median": round(self.median, 1),
                            "min": round(min(rates), 1),
                            "max": round(max(rates), 1)}
                           if rates else None),
            "rounds": len(rates),
            "connections": sum(s.connections for s in self.samples),
            "reused_fraction": (None if self.reused_fraction is None
                                else round(self.reused_fraction, 4)),
            "resumed_as_asked": self.resumed_as_asked,
            "cpu_us_per_conn": {
                side: (None if value is None else round(value, 1))
                for side in ("client", "server")
                for value in [self.cpu_per_connection(side)]},
            "openssl": openssl,
            "error": self.error,
        }


def run_rounds(clients, servers, cases, rounds, duration, progress=None):
    """Measure every case with every client, ``rounds`` times.

    ``clients`` maps names to client objects, ``servers`` names to
    started servers.  Returns {(client, case): Result}.  A client that
    fails in a case is recorded with its error and skipped for that case
    in later rounds.
    """
    results = {(name, case): Result(name, case)
               for case in cases for name in clients}
    names = list(clients)
    for round_index in range(rounds):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        for case in cases:
            server = servers[case.server]
            target = Target(server.host, server.port, server.certs.cafile,
                            server_pid=server.pid)
            for name in order:
                result = results[(name, case)]
                if progress is not None:
                    progress(f"round {round_index + 1}/{rounds}: {name}, "
                             f"{case.label()}")
                if result.error is None:
                    try:
                        result.samples.append(clients[name].measure(
                            target, case.tls, case.mode, case.threads,
                            duration))
                    except Exception as exc:
                        result.error = (f"{type(exc).__name__}: {exc}"
                                        .strip())
                if progress is not None:
                    progress(None)
    return results


def _median(results, client, server, tls, mode, threads):
    result = results.get((client, Case(server, tls, mode, threads)))
    if result is None or result.error or not result.samples:
        return None
    fraction = result.reused_fraction
    if fraction is None:
        return None  # no connection was made at all
    if mode == "resumed" and fraction < 0.5:
        return None  # a client that did not resume has no resumed figure
    return result.median


def _partial(results, client, server, tls, mode, threads):
    """Text for a resumed row where some connections did not resume."""
    result = results.get((client, Case(server, tls, mode, threads)))
    if (result is None or mode != "resumed" or not result.samples
            or result.reused_fraction == 1.0):
        return None
    if result.reused_fraction is None:
        return f"{client} made no connection"
    return f"{client} {_percent(result.reused_fraction)} reused"


def ratios(results, cases):
    """Ratios of medians: tlsresume over the others; resumed over full."""
    rows = []
    groups = sorted({(c.server, c.tls, c.threads) for c in cases},
                    key=lambda g: (g[0], g[1], g[2]))
    for server, tls, threads in groups:
        mine = _median(results, "tlsresume", server, tls, "resumed", threads)
        for other in ("c-reference", "c-reference-read-ahead", "pyopenssl",
                      "stdlib"):
            theirs = _median(results, other, server, tls, "resumed", threads)
            rows.append({
                "what": f"tlsresume / {other}", "server": server,
                "tls": tls, "mode": "resumed", "threads": threads,
                "ratio": (round(mine / theirs, 3)
                          if mine and theirs else None)})
    clients = sorted({name for name, _ in results}, key=CLIENTS.index)
    for server, tls, threads in groups:
        if threads != 1:
            continue
        for name in clients:
            resumed = _median(results, name, server, tls, "resumed", 1)
            full = _median(results, name, server, tls, "full", 1)
            rows.append({
                "what": f"{name} resumed / full", "server": server,
                "tls": tls, "mode": None, "threads": 1,
                "ratio": (round(resumed / full, 3)
                          if resumed and full else None)})
    return rows


def targets(results, threads):
    """The issue's targets, each with its measured ratio and verdict."""
    checks = []

    def add(text, num, den, floor):
        # num and den: (client, tls, mode, threads), all against s_server
        a = _median(results, num[0], "s_server", *num[1:])
        b = _median(results, den[0], "s_server", *den[1:])
        value = a / b if a and b else None
        notes = [n for n in (_partial(results, num[0], "s_server", *num[1:]),
                             _partial(results, den[0], "s_server", *den[1:]))
                 if n]
        if den[0] not in ("c-reference", num[0]):
            # What the C client itself reaches against the same client:
            # the most a binding as cheap as C could show.
            c = _median(results, "c-reference", "s_server", *den[1:])
            if c and b:
                notes.append(f"c-reference: {c / b:.2f} x {den[0]}")
        checks.append({"target": text, "threshold": floor,
                       "ratio": None if value is None else round(value, 3),
                       "met": None if value is None else value >= floor,
                       "note": "; ".join(notes) or None})

    for tls in ("1.2", "1.3"):
        add(f"TLS {tls} resumed: tlsresume >= 0.9 x c-reference",
            ("tlsresume", tls, "resumed", 1),
            ("c-reference", tls, "resumed", 1), 0.9)
    mine = ("tlsresume", "1.2", "resumed", 1)
    add("TLS 1.2 resumed: tlsresume >= 1.3 x pyopenssl", mine,
        ("pyopenssl", "1.2", "resumed", 1), 1.3)
    add("TLS 1.2 resumed: tlsresume >= 2 x stdlib", mine,
        ("stdlib", "1.2", "resumed", 1), 2.0)
    add("TLS 1.2 tlsresume: resumed >= 4 x full (RSA-2048)", mine,
        ("tlsresume", "1.2", "full", 1), 4.0)
    for n in threads:
        if n == 1:
            continue
        for tls in ("1.2", "1.3"):
            add(f"TLS {tls} resumed, {n} threads: tlsresume >= 0.9 x "
                "c-reference", ("tlsresume", tls, "resumed", n),
                ("c-reference", tls, "resumed", n), 0.9)
    return checks


def cache_benchmark(threads=(1, 2, 8), quick=False):
    """Rows from tlsresume.cachebench.measure, or an error text."""
    options = {"ops": 10_000} if quick else {}
    try:
        return list(cachebench.measure(threads=tuple(threads),
                                       **options)), None
    except Exception as exc:
        return None, f"cache micro-benchmarks failed: {exc}"


def machine():
    """What the figures were measured on."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model or platform.processor(),
            "system": platform.platform(),
            "python": platform.python_version()}


# Output ------------------------------------------------------------------

def _fmt_rate(result):
    if result is None:
        return "-"
    if result.error:
        return "failed"
    if not result.samples:
        return "-"
    rates = result.rates
    text = f"{result.median:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
    fraction = result.reused_fraction
    if fraction is None:
        text += " (no connection made)"
    elif result.case.mode == "resumed" and fraction != 1.0:
        text += (" NOT RESUMED" if fraction < 0.5 else "") \
            + f" ({_percent(fraction)} reused)"
    elif result.case.mode == "full" and fraction != 0.0:
        text += f" ({_percent(fraction)} reused)"
    return text


def _percent(fraction):
    """A share that is not 0 or 1 never prints as 0% or 100%."""
    if 0 < fraction < 0.0001:
        return "<0.01%"
    if 0.9999 < fraction < 1:
        return ">99.99%"
    return f"{fraction:.2%}"


def _tables(report, results, cases, clients):
    """Yield (title, header, rows) for every table of the report."""
    header = ["server", "TLS", "mode", "thr"] + list(clients)
    rows = []
    for case in cases:
        rows.append([case.server, case.tls, case.mode, str(case.threads)]
                    + [_fmt_rate(results.get((name, case)))
                       for name in clients])
    yield ("Connections per second: median (min-max) over "
           f"{report['settings']['rounds']} rounds", header, rows)

    rows = []
    for case in cases:
        cells = []
        for name in clients:
            result = results.get((name, case))
            used = (None if result is None else
                    [result.cpu_per_connection(side)
                     for side in ("client", "server")])
            cells.append("-" if used is None or None in used
                         else f"{used[0]:,.0f} + {used[1]:,.0f}")
        rows.append([case.server, case.tls, case.mode, str(case.threads)]
                    + cells)
    yield ("CPU per connection, microseconds: client + server", header,
           rows)

    rows = [[r["what"], r["server"], r["tls"], str(r["threads"]),
             f"{r['ratio']:.2f}"]
            for r in report["ratios"] if r["ratio"] is not None]
    yield "Ratios of medians", ["ratio", "server", "TLS", "thr", "value"], \
        rows

    rows = [[t["target"], "-" if t["ratio"] is None else f"{t['ratio']:.3f}",
             {True: "met", False: "MISSED", None: "not measured"}[t["met"]],
             t["note"] or ""]
            for t in report["targets"]]
    yield ("Targets (s_server, RSA-2048)",
           ["target", "ratio", "verdict", "note"], rows)

    if report["cache"]:
        columns = [("threads", "threads"), ("ns_per_op", "ns per take+put"),
                   ("ops_per_sec", "take+put per s, all threads"),
                   ("bytes_per_session", "bytes per cached session"),
                   ("cache_bytes_per_session", "of which the cache's own"),
                   ("new_handle_ns", "ns per take+put, new handles")]
        columns = [(k, t) for k, t in columns
                   if any(k in r for r in report["cache"])]
        rows = [["-" if r.get(k) is None else f"{r[k]:,.0f}"
                 for k, _ in columns] for r in report["cache"]]
        yield ("SessionCache micro-benchmarks (tlsresume.cachebench)",
               [t for _, t in columns], rows)

    rows = [[name, version] for name, version in report["openssl"].items()]
    yield "OpenSSL per client", ["client", "OpenSSL"], rows


def print_report(report, results, cases, clients, console=None):
    tables = list(_tables(report, results, cases, clients))
    notes = report["notes"]
    if console is not None:
        from rich.table import Table

        for title, header, rows in tables:
            table = Table(title=title, title_justify="left")
            for i, name in enumerate(header):
                table.add_column(name, justify="left" if i == 0 or
                                 not rows or not _numeric(rows[0][i])
                                 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
        for note in notes:
            console.print(f"note: {note}")
        return
    for title, header, rows in tables:
        widths = [max(len(str(x)) for x in col)
                  for col in zip(header, *rows)]
        print(f"\n{title}")
        for row in [header] + rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    for note in notes:
        print(f"note: {note}")


def markdown(report, results, cases, clients):
    """The report's tables as Markdown text."""
    lines = []
    for title, header, rows in _tables(report, results, cases, clients):
        lines += [f"**{title}**", "",
                  "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" if i == 0 or not rows
                                 or not _numeric(rows[0][i]) else "---:"
                                 for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _numeric(text):
    return bool(re.match(r"^[\d,.]+( |$)", text))


def _matplotlib():
    """The matplotlib module; BenchError when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib (the plot extra: "
                         "pip install '.[plot]' in tlsresume's source "
                         "tree)") from None
    return matplotlib


def plot(report, path):
    """Bar charts of the medians, with min-max error bars."""
    _matplotlib().use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["conn_per_s"]]
    clients = [c for c in CLIENTS if any(r["client"] == c for r in rows)]
    panels = []
    for server in SERVERS:
        groups = [(tls, mode) for tls in ("1.2", "1.3")
                  for mode in ("full", "resumed")
                  if any(r["server"] == server and r["tls"] == tls
                         and r["mode"] == mode and r["threads"] == 1
                         for r in rows)]
        if groups:
            panels.append((f"{server}, 1 client thread",
                           [(f"TLS {t} {m}", server, t, m, 1)
                            for t, m in groups]))
    scaling = sorted({(r["tls"], r["threads"]) for r in rows
                      if r["server"] == "s_server" and r["mode"] == "resumed"
                      and any(x["threads"] > 1 for x in rows)})
    if scaling:
        panels.append(("s_server, resumed, by client threads",
                       [(f"TLS {t}, {n} thr", "s_server", t, "resumed", n)
                        for t, n in scaling]))
    if not panels:
        raise BenchError("nothing to plot")

    fig, axes = plt.subplots(len(panels), 1,
                             figsize=(11, 3.6 * len(panels)), squeeze=False)
    width = 0.8 / max(len(clients), 1)
    for ax, (title, groups) in zip(axes[:, 0], panels):
        for i, client in enumerate(clients):
            xs, heights, low, high = [], [], [], []
            for g, (_, server, tls, mode, n) in enumerate(groups):
                match = [r for r in rows if r["client"] == client
                         and r["server"] == server and r["tls"] == tls
                         and r["mode"] == mode and r["threads"] == n]
                if not match:
                    continue
                c = match[0]["conn_per_s"]
                xs.append(g + (i - (len(clients) - 1) / 2) * width)
                heights.append(c["median"])
                low.append(c["median"] - c["min"])
                high.append(c["max"] - c["median"])
            ax.bar(xs, heights, width, yerr=[low, high], capsize=2,
                   label=client)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g[0] for g in groups])
        ax.set_ylabel("connections / s")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=len(clients), fontsize="small",
               loc="upper center", bbox_to_anchor=(0.5, 0.965))
    fig.suptitle("tlsresume bench: median over rounds, bars min-max")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110, format="png")  # at `path`, suffix or not
    plt.close(fig)


# Command line ------------------------------------------------------------

# Limits on what one run may ask for: beyond them a run would only
# exhaust descriptors or never end.
MAX_THREADS = 64
MAX_ROUNDS = 1000
MAX_DURATION = 3600.0


def _number(convert, noun, accept, limits):
    """An argparse type: ``convert(text)``, kept if ``accept`` says so."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {noun}") from None
        # NaN fails every comparison, so ``accept`` refuses it too.
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {limits}")
        return value
    return parse


def _whole(low, high):
    return _number(int, "a whole number", lambda v: low <= v <= high,
                   f"between {low} and {high}")


_seconds = _number(float, "a number of seconds",
                   lambda v: 0 < v <= MAX_DURATION,
                   f"more than 0 and at most {MAX_DURATION:g} s")


def _output(text):
    """A file to write: refused at once, not after the run, if it
    cannot be."""
    if not text:
        raise argparse.ArgumentTypeError("an empty file name")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"no directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK) or (
            os.path.exists(text) and not os.access(text, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text}")
    return text


def _csv(choices=None, kind=str):
    """A comma-separated list, each value once, in the order given."""
    def parse(text):
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        if choices is not None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(map(str, bad))}; choose from "
                    f"{', '.join(map(str, choices))}")
        return list(dict.fromkeys(values))
    return parse


def add_arguments(parser):
    """Add the bench's options to an argparse parser."""
    parser.add_argument("--quick", action="store_true",
                        help="short rounds: the whole run in under a "
                        "minute")
    parser.add_argument("--rounds", type=_whole(1, MAX_ROUNDS),
                        help=f"rounds (default {FULL_SETTINGS[0]}, quick "
                        f"{QUICK_SETTINGS[0]})")
    parser.add_argument("--duration", type=_seconds,
                        help="seconds per measurement (default "
                        f"{FULL_SETTINGS[1]:g}, quick {QUICK_SETTINGS[1]:g})")
    parser.add_argument("--clients", type=_csv(CLIENTS),
                        default=list(CLIENTS),
                        help="comma-separated, from: " + ", ".join(CLIENTS))
    parser.add_argument("--servers", type=_csv(SERVERS),
                        default=list(SERVERS),
                        help="comma-separated, from: " + ", ".join(SERVERS))
    parser.add_argument("--tls", type=_csv(("1.2", "1.3")),
                        default=["1.2", "1.3"], help="TLS versions: 1.2,1.3")
    parser.add_argument("--modes", type=_csv(("full", "resumed")),
                        default=["full", "resumed"],
                        help="full,resumed")
    parser.add_argument("--threads", type=_csv(kind=_whole(1, MAX_THREADS)),
                        default=[1, 2, 4],
                        help="client thread counts, 1 to "
                        f"{MAX_THREADS} (default 1,2,4; more than 1 runs "
                        "resumed against s_server)")
    parser.add_argument("--no-cache-bench", action="store_true",
                        help="skip the SessionCache micro-benchmarks")
    parser.add_argument("--json", metavar="FILE", type=_output,
                        help="write every measurement as JSON rows")
    parser.add_argument("--markdown", metavar="FILE", type=_output,
                        help="write the tables as Markdown")
    parser.add_argument("--plot", metavar="FILE.png", type=_output,
                        help="draw a bar chart (needs matplotlib)")
    parser.add_argument("--c-source", metavar="FILE",
                        help="the C reference client's source (default: "
                        "the copy installed with the package, or "
                        "csrc/c_reference_client.c in a source tree)")
    parser.add_argument("--plain", action="store_true",
                        help="plain text output, no rich display")
    return parser


class _Display:
    """A rich progress bar on stderr, or nothing without rich."""

    def __init__(self, total, plain):
        self.console = None
        self._progress = None
        if plain:
            return
        try:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn,
                                       Progress, TextColumn,
                                       TimeElapsedColumn)
        except ImportError:
            return
        # Wide enough for the tables when the output is not a terminal.
        self.console = Console(width=None if sys.stdout.isatty() else 150)
        # Refreshed by hand between measurements: an auto-refresh thread
        # would take the GIL from the Python clients while they run.
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), auto_refresh=False,
            transient=True)
        self._task = self._progress.add_task("starting", total=total)

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def status(self, text):
        if self._progress is None:
            return
        if text is None:
            self._progress.advance(self._task)
        else:
            self._progress.update(self._task, description=text)
        self._progress.refresh()


def run(args):
    """Run the bench as ``args`` (from :func:`add_arguments`) ask.

    Returns the exit status: 0 when every measurement ran, 1 when some
    failed or the bench could not start.
    """
    rounds, duration = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    if args.rounds is not None:
        rounds = args.rounds
    if args.duration is not None:
        duration = args.duration
    try:
        return _run(args, rounds, duration)
    except (BenchError, ToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args, rounds, duration):
    if args.plot:
        _matplotlib()  # before the run, not after it
    workdir = tempfile.mkdtemp(prefix="tlsresume-bench-")
    try:
        return _run_in(args, rounds, duration, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(args, rounds, duration, workdir):
    notes = []
    clients = {}
    for name in args.clients:
        client = make_client(name, args.c_source, workdir)
        reason = client.unavailable()
        if reason:
            notes.append(f"{name} left out: {reason}")
            continue
        clients[name] = client
    if not clients:
        raise BenchError("no client can run: " + "; ".join(notes))

    certs = make_certificates(workdir)
    kinds = {"s_server": OpenSSLServer, "tlsresume-server": TlsresumeServer}
    servers = {}
    cases = plan(args.servers, args.tls, args.modes, args.threads)
    total = rounds * len(cases) * len(clients)
    display = _Display(total, args.plain)
    started = time.monotonic()
    try:
        for name in args.servers:
            servers[name] = kinds[name](certs, workdir).start()
        with display:
            results = run_rounds(clients, servers, cases, rounds, duration,
                                 display.status)
            cache_rows, cache_error = (None, None)
            if not args.no_cache_bench:
                display.status("SessionCache micro-benchmarks")
                cache_rows, cache_error = cache_benchmark(
                    quick=args.quick)
    finally:
        for server in servers.values():
            server.stop()
    if cache_error:
        notes.append(cache_error)
    if args.quick:
        notes.append("--quick measures for 0.15 s at a time: its figures "
                     "and verdicts move by a tenth or more from run to "
                     "run; judge targets on a full run")
    unmeasured = [n for n in args.threads
                  if n > 1 and not any(c.threads == n for c in cases)]
    if unmeasured:
        notes.append(f"threads {', '.join(map(str, unmeasured))} not "
                     "measured: more than one thread runs resumed against "
                     "s_server only")
    if "pyopenssl" in clients:
        notes.append("pyopenssl runs on the OpenSSL bundled with its "
                     "cryptography wheel, not on the system's libssl")
    if "stdlib" in clients:
        notes.append("stdlib: SSLSocket.unwrap() sends close_notify and "
                     "then tries once to read the peer's (non-blocking)")

    openssl = {name: client.openssl_version()
               for name, client in clients.items()}
    report = {
        "command": _command_line(),
        "machine": machine(),
        "servers": {name: s.version for name, s in servers.items()},
        "settings": {"rounds": rounds, "duration_s": duration,
                     "certificate": "RSA-2048 (trustme)",
                     "request": REQUEST.decode(), "read_size": READ_SIZE},
        "seconds": round(time.monotonic() - started, 1),
        "openssl": openssl,
        "rows": [results[(name, case)].row(openssl[name])
                 for case in cases for name in clients],
        "ratios": ratios(results, cases),
        "targets": targets(results, args.threads),
        "cache": cache_rows or [],
        "notes": notes,
    }
    print_report(report, results, cases, list(clients), display.console)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(report, results, cases, list(clients)))
    if args.plot:
        plot(report, args.plot)
    failed = [r for r in results.values() if r.error]
    for result in failed:
        print(f"error: {result.client}, {result.case.label()}: "
              f"{result.error}", file=sys.stderr)
    return 1 if failed else 0


def _command_line():
    program = os.path.basename(sys.argv[0])
    if program == "bench.py" or program == "__main__.py":
        program = "python -m tlsresume.bench"
    return " ".join([program] + sys.argv[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tlsresume.bench",
        description="Connections per second, full and resumed, for "
        "tlsresume, its low-level port, the stdlib, pyOpenSSL and a C "
        "client (with and without read-ahead).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
