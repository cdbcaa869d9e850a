"""The ``guardian`` command.

``guardian demo`` shows the limiter at work on the embedded memory backend;
``guardian serve`` runs the gRPC sidecar (guardian.server, the ``server`` extra);
``guardian tables`` lists (or unlinks) shared-memory tables.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from typing import List, Optional, Sequence, Tuple

from . import CORE, MemoryBackend, RateLimiter, TokenBucketConfig, __version__


def _worker(name: str, config: TokenBucketConfig, seconds: float, keys: List[str], out: "multiprocessing.Queue[Tuple[int, int, int]]") -> None:
    limiter = RateLimiter(MemoryBackend(config, shared=name))
    try_acquire = limiter.try_acquire
    checks = admitted = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key in keys:
            admitted += try_acquire(key)
        checks += len(keys)
    out.put((os.getpid(), checks, admitted))


def demo(args: argparse.Namespace) -> int:
    config = TokenBucketConfig(args.capacity, args.rate)
    keys = [f"client-{i}" for i in range(args.clients)]
    print(f"guardian {__version__} ({CORE} core): {args.clients} clients, each limited to a burst of "
          f"{args.capacity} and {args.rate:g}/s, hammered by {args.workers} process(es) for {args.seconds:g} s")
    name = f"demo-{uuid.uuid4().hex[:8]}"
    MemoryBackend(config, shared=name)  # create it before the workers attach
    try:
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        queue: "multiprocessing.Queue[Tuple[int, int, int]]" = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(name, config, args.seconds, keys, queue))  # type: ignore[attr-defined]
            for _ in range(args.workers)
        ]
        started = time.monotonic()
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.monotonic() - started
    finally:
        MemoryBackend.unlink(name)
    checks = sum(r[1] for r in results)
    admitted = sum(r[2] for r in results)
    bound = args.clients * (args.capacity + args.rate * elapsed)
    for pid, c, a in results:
        print(f"  worker {pid}: {c:>11,} checks, {a:>8,} admitted")
    print(f"  together:     {checks:>11,} checks ({checks / args.seconds:,.0f}/s), {admitted:,} admitted")
    print(f"  the limit allows at most {bound:,.0f} in {elapsed:.2f} s across all workers: "
          f"{'held' if admitted <= bound + args.clients else 'EXCEEDED'}")
    return 0 if admitted <= bound + args.clients else 1


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    return serve(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="guardian", description="guardian rate limiter")
    parser.add_argument("--version", action="version", version=f"guardian {__version__} ({CORE} core)")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="hammer a shared in-memory limit from several processes")
    d.add_argument("--clients", type=int, default=100, help="distinct keys (default 100)")
    d.add_argument("--capacity", type=int, default=50, help="burst per key (default 50)")
    d.add_argument("--rate", type=float, default=100.0, help="tokens per second per key (default 100)")
    d.add_argument("--workers", type=int, default=2, help="processes sharing the table (default 2)")
    d.add_argument("--seconds", type=float, default=2.0, help="how long to run (default 2)")
    d.set_defaults(run=demo)
    from ._tables_cli import add_parser as add_tables

    add_tables(sub)  # guardian tables [--unlink NAME]
    s = sub.add_parser("serve", help="run the gRPC sidecar (guardian.v1, Envoy RLS v3, health, /metrics)",
                       allow_abbrev=False)  # "--redis" must not silently mean --redis-url
    from .server.config import add_arguments

    add_arguments(s)
    s.set_defaults(run=_serve)
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
