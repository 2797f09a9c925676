"""The ``tlsresume`` command: demo, connect, serve, bench."""

import argparse
import logging
import statistics
import sys
import time

from . import __version__, example
from ._binding import openssl_version
from .cache import SessionCache
from .client import ClientContext
from .errors import TLSError
from .server import Server
from .testing import local_server


def _version_text():
    return f"tlsresume {__version__} ({openssl_version()})"


def _ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def summarise(label, results):
    """One line comparing full and resumed handshake times."""
    full = [t for reused, t in results if not reused]
    resumed = [t for reused, t in results if reused]
    parts = [f"{label}: {len(resumed)} of {len(results)} resumed"]
    if full:
        parts.append(f"full handshake {_ms(statistics.median(full))}")
    if resumed:
        parts.append(f"resumed {_ms(statistics.median(resumed))} median")
    if full and resumed:
        ratio = statistics.median(full) / statistics.median(resumed)
        # One full handshake against a few resumed ones: a busy machine
        # can make resumption look slower, and the line says so.
        parts.append(f"{ratio:.1f}x faster" if ratio >= 1 else
                     f"{1 / ratio:.1f}x slower (is the machine busy?)")
    return ", ".join(parts)


def cmd_demo(args):
    print(_version_text())
    with local_server() as srv:
        print(f"embedded server on {srv.host}:{srv.port} "
              "(certificate from a throwaway trustme CA)")
        for tls in ("1.3", "1.2"):
            print(f"\nTLS {tls}: five connections, each offering the "
                  "session saved from the last")
            results = example.run("localhost", srv.port, tls=tls,
                                  cafile=srv.cafile, count=args.count)
            print(summarise(f"TLS {tls}", results))
        print("\nUnder TLS 1.3 the server's ticket arrives after the "
              "handshake; tlsresume\ncatches it with a new-session "
              "callback, so TLS 1.3 resumes as well as TLS 1.2.")
    return 0


def parse_hostport(text):
    """Split 'host:port' or '[v6]:port'; raise ValueError if malformed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    # isdigit() alone takes '²' (int() then fails) and '４４３' (443).
    if not sep or not host or not (rest.isascii() and rest.isdigit()):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(rest)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def cmd_connect(args):
    host, port = parse_hostport(args.target)
    if args.count < 1:
        raise ValueError(f"-n/--count must be at least 1, not {args.count}")
    cache = SessionCache()
    with ClientContext(cafile=args.cafile, verify=not args.insecure,
                       minimum_version=args.tls, maximum_version=args.tls,
                       cache=cache) as ctx:
        for _ in range(args.count):
            start = time.perf_counter()
            with ctx.connect(host, port, server_hostname=args.servername,
                             timeout=args.timeout) as conn:
                elapsed = time.perf_counter() - start
                word = "REUSED SESSION" if conn.session_reused \
                    else "NEW SESSION"
                print(f"{word:<15} {conn.version} {conn.cipher} "
                      f"{_ms(elapsed)}", flush=True)
    cache.clear()
    return 0


def cmd_serve(args):
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together")
    server = Server(args.host, args.port, certfile=args.cert,
                    keyfile=args.key, minimum_version=args.tls,
                    maximum_version=args.tls, tickets=not args.no_tickets,
                    cache=not args.no_cache)
    try:
        server.start()  # first: no CA file for a server that never ran
        if args.write_ca:
            server.write_ca(args.write_ca)
        print(f"serving TLS on {server.host}:{server.port} "
              f"(tickets {'off' if args.no_tickets else 'on'}, "
              f"cache {'off' if args.no_cache else 'on'}); Ctrl-C stops",
              flush=True)
        if args.write_ca:
            print(f"CA certificate written to {args.write_ca}",
                  flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # Also removes the generated CA's temporary directory.
        server.stop()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tlsresume",
        description="Client-side TLS session resumption on OpenSSL.")
    parser.add_argument("--version", action="version",
                        version=_version_text())
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what the library does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="resume sessions against an "
                          "embedded local server, TLS 1.3 and 1.2")
    demo.add_argument("-n", "--count", type=int, default=5,
                      help=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)

    connect = sub.add_parser("connect", help="connect repeatedly to a "
                             "server, resuming through the session cache")
    connect.add_argument("target", metavar="HOST:PORT")
    connect.add_argument("-n", "--count", type=int, default=5)
    connect.add_argument("--tls", choices=["1.2", "1.3"],
                         help="use exactly this TLS version")
    trust = connect.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="CA certificates to trust "
                       "(default: the system's)")
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the server's certificate")
    connect.add_argument("--servername", help="name to send (SNI) and "
                         "verify, if not HOST")
    connect.add_argument("--timeout", type=float, default=10.0)
    connect.set_defaults(func=cmd_connect)

    serve = sub.add_parser("serve", help="run the session-caching server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4433)
    serve.add_argument("--tls", choices=["1.2", "1.3"],
                       help="serve exactly this TLS version")
    serve.add_argument("--no-tickets", action="store_true",
                       help="no session tickets: stateful session ids")
    serve.add_argument("--no-cache", action="store_true",
                       help="no server-side session cache")
    serve.add_argument("--cert", help="certificate chain (PEM)")
    serve.add_argument("--key", help="private key (PEM)")
    serve.add_argument("--write-ca", metavar="FILE",
                       help="write the generated CA certificate here")
    serve.set_defaults(func=cmd_serve)

    try:
        from . import bench
    except ImportError:  # pragma: no cover - bench is optional
        bench = None
    if bench is not None:
        bench_parser = sub.add_parser(
            "bench", help="compare full and resumed handshakes across "
            "clients")
        bench.add_arguments(bench_parser)
        bench_parser.set_defaults(func=bench.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (TLSError, ValueError, OSError) as exc:
        print(f"tlsresume: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
