"""The classic five-connection resumption example, ported to Python.

The C program connects five times to a server; before each handshake it
offers the session saved from the last connection (``SSL_set_session``),
prints ``NEW SESSION`` or ``REUSED SESSION`` from ``SSL_session_reused``,
then saves ``SSL_get1_session`` and shuts down.  This module follows it
call by call on ``tlsresume.lib``, with :class:`tlsresume.Session`
holding the saved session.

Why the literal sequence (``--as-written``) never resumes under TLS 1.3:
TLS 1.2 settles the session inside the handshake, but TLS 1.3 servers
send their session tickets *after* it.  The session that
``SSL_get1_session`` returns right after ``SSL_connect`` holds no ticket
yet and is not resumable, so every connection is new.  The fixed loop
(the default) takes sessions from a new-session callback instead, which
sees each ticket as it arrives, and lets the closing ``SSL_shutdown``
read until the server's close_notify when no ticket has come yet, so the
tickets in flight are processed before the socket closes.  That works on
TLS 1.2 too, where the callback fires during the handshake.

Usage: ``python -m tlsresume.example [HOST] [PORT] [--tls 1.2|1.3]
[--cafile FILE | --insecure] [--as-written] [-n COUNT]``.
"""

import argparse
import sys
import time

from . import _io
from ._binding import ffi, lib
from .client import _check_peer, tls_version
from .errors import TLSError, check
from .session import Session


def run(host="localhost", port=4433, *, tls=None, cafile=None, verify=True,
        as_written=False, count=5, timeout=10.0, emit=print):
    """Run the loop; ``emit`` gets one line per connection.

    Returns a list of ``(reused, seconds)`` pairs, one per connection,
    timing TCP connect plus handshake.  Raises :class:`TLSError` subclasses
    on failure.
    """
    # As ClientContext.connect() checks them (getaddrinfo would take port
    # 70000 as 4464; a NUL would cut the name verified short).
    _, encoded = _check_peer(host, port, None)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"invalid count {count!r}: must be at least 1")
    # The legacy initialisation calls are no-ops since OpenSSL 1.1.0; kept
    # so the port reads like the C program.
    lib.SSL_library_init()
    lib.SSL_load_error_strings()
    lib.OpenSSL_add_all_algorithms()

    ctx = check(lib.SSL_CTX_new(lib.SSLv23_client_method()), "SSL_CTX_new")
    ctx = ffi.gc(ctx, lib.SSL_CTX_free)
    saved = [None]  # the one saved session, as in the C program
    fresh = [False]  # did this connection's callback store a ticket?

    @ffi.callback("int(SSL *, SSL_SESSION *)")
    def new_session(ssl, session):
        handle = Session.adopt(ssl, session)  # we own it: return 1
        if handle.is_resumable:
            if saved[0] is not None:
                saved[0].close()
            saved[0] = handle
            fresh[0] = True
        else:
            handle.close()
        return 1

    try:
        _configure(ctx, tls, cafile, verify)
        if not as_written:
            lib.SSL_CTX_set_session_cache_mode(
                ctx, lib.SSL_SESS_CACHE_CLIENT
                | lib.SSL_SESS_CACHE_NO_INTERNAL_STORE)
            lib.SSL_CTX_sess_set_new_cb(ctx, new_session)

        results = []
        for _ in range(count):
            start = time.perf_counter()
            sock = _io.open_socket(host, port, timeout)
            ssl = check(lib.SSL_new(ctx), "SSL_new")
            try:
                lib.SSL_set_fd(ssl, sock.fileno())
                _set_peer_name(ssl, host, encoded, verify)
                if saved[0] is not None:
                    saved[0].set_on(ssl)

                ret = lib.SSL_connect(ssl)
                if ret <= 0:
                    raise _io.io_error(ssl, ret,
                                       f"TLS handshake with {host}:{port}",
                                       timeout)
                elapsed = time.perf_counter() - start
                reused = bool(lib.SSL_session_reused(ssl))
                emit("REUSED SESSION" if reused else "NEW SESSION")
                results.append((reused, elapsed))

                if as_written:
                    # SSL_SESSION_free(sess); sess = SSL_get1_session(ssl);
                    if saved[0] is not None:
                        saved[0].close()
                    saved[0] = Session.from_ssl(ssl)
                    lib.SSL_shutdown(ssl)
                else:
                    fresh[0] = False
                    if lib.SSL_shutdown(ssl) == 0 and not fresh[0]:
                        # Wait for the peer's close_notify; TLS 1.3
                        # tickets still in flight reach the callback.
                        lib.SSL_shutdown(ssl)
                lib.ERR_clear_error()
            finally:
                lib.SSL_free(ssl)
                sock.close()
        return results
    finally:
        if saved[0] is not None:
            saved[0].close()
        ffi.release(ctx)


def _configure(ctx, tls, cafile, verify):
    version = tls_version(tls, "version")
    if version:
        check(lib.SSL_CTX_set_min_proto_version(ctx, version),
              "SSL_CTX_set_min_proto_version")
        check(lib.SSL_CTX_set_max_proto_version(ctx, version),
              "SSL_CTX_set_max_proto_version")
    if not verify:
        return
    lib.SSL_CTX_set_verify(ctx, lib.SSL_VERIFY_PEER, ffi.NULL)
    if cafile:
        check(lib.SSL_CTX_load_verify_locations(ctx, cafile.encode(),
                                                ffi.NULL),
              f"loading CA certificates from {cafile!r}", ValueError)
    else:
        check(lib.SSL_CTX_set_default_verify_paths(ctx),
              "SSL_CTX_set_default_verify_paths")


def _set_peer_name(ssl, host, encoded, verify):
    # `encoded` is the IDNA form of a name, None for an IP address.
    if encoded is not None:
        lib.SSL_set_tlsext_host_name(ssl, encoded)
    if verify:
        if encoded is None:
            param = lib.SSL_get0_param(ssl)
            check(lib.X509_VERIFY_PARAM_set1_ip_asc(param, host.encode()),
                  "setting the IP address to verify")
        else:
            check(lib.SSL_set1_host(ssl, encoded),
                  "setting the host name to verify")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tlsresume.example",
        description="Five connections, resuming the saved TLS session.")
    parser.add_argument("host", nargs="?", default="localhost")
    parser.add_argument("port", nargs="?", type=int, default=4433)
    parser.add_argument("--tls", choices=["1.2", "1.3"],
                        help="use exactly this TLS version")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="CA certificates to verify with "
                       "(default: the system's)")
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the server (as the C program)")
    parser.add_argument("--as-written", action="store_true",
                        help="the literal C sequence: SSL_get1_session "
                        "right after SSL_connect (no resumption on TLS 1.3)")
    parser.add_argument("-n", "--count", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        run(args.host, args.port, tls=args.tls, cafile=args.cafile,
            verify=not args.insecure, as_written=args.as_written,
            count=args.count)
    except (TLSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
