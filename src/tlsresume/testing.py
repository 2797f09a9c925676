"""Helpers for tests, demos and benchmarks, all on loopback.

:func:`local_server` runs tlsresume's own :class:`~tlsresume.Server`;
:func:`start_s_server` runs ``openssl s_server`` as an outside peer;
:func:`make_certificates` writes a throwaway CA and certificate.
"""

import contextlib
import re
import shutil
import subprocess
import time

from ._certs import Certificates, make_certificates
from .server import Server

HOST = "127.0.0.1"


class ToolError(RuntimeError):
    """An outside tool (the openssl command) is missing or did not start."""


@contextlib.contextmanager
def local_server(**options):
    """Run a :class:`~tlsresume.Server` on 127.0.0.1 for a ``with`` block.

    Yields the running server; ``host``, ``port`` and ``cafile`` say where
    it is and what to trust.  Options are passed to :class:`Server`.
    """
    options.setdefault("host", HOST)
    options.setdefault("port", 0)
    server = Server(**options)
    with server:
        yield server


def openssl_command():
    """The path of the ``openssl`` command; ToolError without one."""
    exe = shutil.which("openssl")
    if exe is None:
        raise ToolError("the openssl command is needed for s_server "
                        "(Debian: apt-get install openssl)")
    return exe


def start_s_server(options, log_path, host=HOST):
    """Start ``openssl s_server -accept HOST:0 OPTIONS``.

    Waits until it listens and returns ``(process, port)``; stop it with
    :func:`stop_s_server`.  Its output goes to ``log_path``, a file: a
    pipe nobody reads would fill up and stall the server.  Raises
    :class:`ToolError`, with the command and the log, when it does not
    start within 10 seconds.
    """
    args = [openssl_command(), "s_server", "-accept", f"{host}:0",
            *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        with open(log_path, "rb") as f:
            text = f.read().decode("latin-1")
        match = re.search(r"ACCEPT .*:(\d+)", text)
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    stop_s_server(proc)
    raise ToolError(f"openssl s_server did not start: {' '.join(args)}\n"
                    + text.strip())


def stop_s_server(proc):
    """Kill an s_server from :func:`start_s_server` and wait for it."""
    proc.kill()
    proc.wait()
    proc.stdin.close()


__all__ = ["Certificates", "ToolError", "local_server", "make_certificates",
           "openssl_command", "start_s_server", "stop_s_server"]
