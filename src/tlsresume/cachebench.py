"""How fast and how big the SessionCache is.

``python -m tlsresume.cachebench`` times a
:meth:`~tlsresume.SessionCache.take` followed by a
:meth:`~tlsresume.SessionCache.put` of the same session (the steady
state of a client that resumes), on 1, 2 and 8 threads sharing one
cache, and the memory one cached session costs.  The sessions are real:
one handshake with a local :class:`~tlsresume.Server`, then copies made
by OpenSSL's own decoder, one per simulated peer.

The figures include CPython's own costs: the timing loop and two calls
into the C core (``csrc/cachecore.c``), which holds the GIL throughout,
so threads take turns rather than run at once; ``ops_per_sec`` shows
the total.  A handle's lifetime facts are read from OpenSSL the first
time it is put (two cffi calls), so the steady state timed here, the
same handles taken and put back, does not include that read.
"""

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc

from ._binding import openssl_version
from .cache import SessionCache
from .client import ClientContext
from .peerkey import PeerKey
from .session import Session

#: The issue's target for one take plus one put, on one thread.
TARGET_NS = 1000


def _real_session(**options):
    """One resumable session from a loopback handshake with a
    :func:`~tlsresume.testing.local_server` started with ``options``."""
    from .testing import local_server

    with local_server(**options) as srv:
        ctx = ClientContext(cafile=srv.cafile)
        try:
            conn = ctx.connect(srv.host, srv.port)
            conn.read()
            conn.close()
        finally:
            ctx.close()
    if conn.session is None:
        raise RuntimeError("the local server sent no session ticket")
    return conn.session


def _keys(first, count):
    return [PeerKey("bench.invalid", 1 + (first + i) % 65535,
                    f"{first + i:016x}")
            for i in range(count)]


def _rss():
    """Resident memory of this process in bytes (Linux), or None."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def bytes_per_session(der, count=20_000, tickets_per_peer=4):
    """Resident memory one cached session costs, all included.

    ``count`` distinct SSL_SESSIONs, decoded from ``der``, put into one
    cache, ``tickets_per_peer`` to a peer: the growth of RSS divided by
    ``count``.  That is the handle, OpenSSL's session and the cache's
    entry together.  None where RSS cannot be read.
    """
    peers = -(-count // tickets_per_peer)
    keys = _keys(100_000, peers)
    cache = SessionCache(max_entries=peers,
                         tickets_per_peer=tickets_per_peer)
    before = _rss()
    for i in range(count):
        key = keys[i // tickets_per_peer]
        cache.put(key, Session._from_der(der, key))
    after = _rss()
    stored = len(cache)
    cache.clear()
    if before is None or after is None or stored != count:
        return None
    return round((after - before) / count)


def cache_bytes_per_session(der, count=5_000, tickets_per_peer=4):
    """Python memory the cache itself adds per session (tracemalloc).

    Only the cache's entries: not the handle, not OpenSSL's session.
    """
    peers = -(-count // tickets_per_peer)
    keys = _keys(200_000, peers)
    handles = [Session._from_der(der, keys[i // tickets_per_peer])
               for i in range(count)]
    cache = SessionCache(max_entries=peers,
                         tickets_per_peer=tickets_per_peer)
    tracemalloc.start()
    try:
        for i, handle in enumerate(handles):
            cache.put(keys[i // tickets_per_peer], handle)
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        cache.clear()
    return round(used / count)


def new_handle_ns(der, count=20_000, batch=1000):
    """Median ns of a put of a handle never put before, plus its take.

    What a resuming TLS 1.3 client does per connection: the ticket it
    received is filed (its lifetime facts read from OpenSSL on the way)
    and taken out again for the next connection.  The handles are made
    before the clock starts; their making is not the cache's cost.
    """
    keys = _keys(300_000, batch)
    base = Session._from_der(der, keys[0])
    cache = SessionCache(max_entries=batch)
    samples = []
    try:
        for _ in range(max(1, count // batch)):
            handles = [base._dup() for _ in keys]
            for key, handle in zip(keys, handles):
                handle._scope = key
            take, put = cache.take, cache.put
            taken = []
            keep = taken.append
            start = time.perf_counter_ns()
            for key, handle in zip(keys, handles):
                put(key, handle)
                keep(take(key))
            samples.append((time.perf_counter_ns() - start) / batch)
            for handle in taken:
                handle.close()
    finally:
        base.close()
        cache.clear()
    return statistics.median(samples)


def _time_threads(cache, der, threads, ops, batch, peers):
    """Median ns of one take+put, over batches from every thread."""
    chunks = []
    for n in range(threads):
        keys = _keys(n * peers, peers)
        for key in keys:
            cache.put(key, Session._from_der(der, key))
        chunks.append((keys * (batch // peers + 1))[:batch])

    samples = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors = []

    def run(n):
        take, put = cache.take, cache.put
        chunk, out = chunks[n], samples[n]
        clock = time.perf_counter_ns
        try:
            barrier.wait()
            for key in chunk:  # warm up
                put(key, take(key))
            for _ in range(max(1, ops // batch)):
                start = clock()
                for key in chunk:
                    put(key, take(key))
                out.append((clock() - start) / batch)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,))
               for n in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    total = sum(len(s) for s in samples) * batch
    median = statistics.median(x for s in samples for x in s)
    return median, total / elapsed


def measure(threads=(1, 2, 8), ops=50_000, batch=1000, peers=256,
            memory_sessions=20_000):
    """Measure the cache; return one dict per thread count.

    Each dict holds ``threads``; ``ns_per_op``, the median time one
    thread spends on a take plus a put (timed in batches of ``batch``,
    ``ops`` per thread, each thread cycling over its own ``peers``
    peers in one shared cache); ``ops_per_sec``, take+put pairs per
    second by all threads together; and ``bytes_per_session``, the
    resident memory one cached session costs, OpenSSL's session and the
    handle included (see :func:`bytes_per_session`; None off Linux);
    ``cache_bytes_per_session``, what the cache's own entries add; and
    ``new_handle_ns``, one thread's take plus put when every put is of
    a handle never put before (see :func:`new_handle_ns`).  The caller
    owns the returned list; the sessions made along the way are all
    freed.
    """
    session = _real_session(maximum_version="1.3")
    try:
        der = session.to_der()
    finally:
        session.close()
    size = bytes_per_session(der, memory_sessions)
    overhead = cache_bytes_per_session(der)
    fresh = round(new_handle_ns(der), 1)

    results = []
    for count in threads:
        cache = SessionCache(max_entries=count * peers)
        try:
            ns, rate = _time_threads(cache, der, count, ops, batch, peers)
        finally:
            cache.clear()
        results.append({"threads": count, "ns_per_op": round(ns, 1),
                        "ops_per_sec": round(rate),
                        "bytes_per_session": size,
                        "cache_bytes_per_session": overhead,
                        "new_handle_ns": fresh})
    return results


def main(argv=None):
    """Print the figures as a small table; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tlsresume.cachebench",
        description="Time SessionCache take+put and size a cached "
                    "session.")
    parser.add_argument("--threads", default="1,2,8",
                        help="comma-separated thread counts (1,2,8)")
    parser.add_argument("--ops", type=int, default=50_000,
                        help="take+put pairs per thread (50000)")
    args = parser.parse_args(argv)
    try:
        counts = tuple(int(n) for n in args.threads.split(","))
    except ValueError:
        parser.error("--threads takes numbers, e.g. 1,2,8")
    if not counts or min(counts) < 1 or args.ops < 1:
        parser.error("thread counts and --ops must be positive")

    results = measure(threads=counts, ops=args.ops)
    print(f"SessionCache take+put, {platform.python_implementation()} "
          f"{platform.python_version()}, {openssl_version()}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'threads':>7}  {'ns/op (median)':>14}  {'ops/s (all)':>11}  "
          f"{'bytes/session':>13}")
    for row in results:
        size = row["bytes_per_session"]
        print(f"{row['threads']:>7}  {row['ns_per_op']:>14.0f}  "
              f"{row['ops_per_sec']:>11,}  "
              f"{size if size is not None else 'n/a':>13}")
    print(f"of which the cache's own entries: "
          f"{results[0]['cache_bytes_per_session']} bytes/session")
    print(f"take+put with a handle never put before (its facts read "
          f"from OpenSSL), one thread: {results[0]['new_handle_ns']:.0f} "
          "ns")
    one = [r for r in results if r["threads"] == 1]
    if one:
        verdict = "met" if one[0]["ns_per_op"] <= TARGET_NS else "missed"
        print(f"target: take+put <= {TARGET_NS} ns on one thread: "
              f"{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
