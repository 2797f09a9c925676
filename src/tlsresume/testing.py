"""Helpers for tests and demos: a local server on a free loopback port."""

import contextlib

from .server import Server


@contextlib.contextmanager
def local_server(**options):
    """Run a :class:`~tlsresume.Server` on 127.0.0.1 for a ``with`` block.

    Yields the running server; ``host``, ``port`` and ``cafile`` say where
    it is and what to trust.  Options are passed to :class:`Server`.
    """
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    server = Server(**options)
    with server:
        yield server
