"""Run as a subprocess: one node with its own BatchedRedisBackend.

``hammer``: from wall-clock time ``--start`` for ``--seconds``, check one
key as fast as possible; print the admitted count, the reservations, the
wall-clock time it began and the one its last check returned.
``hold``: admit ``--takes`` checks, print the tokens held, then wait to be
killed (SIGKILL: no close, no atexit)."""

from __future__ import annotations

import argparse
import sys
import time

from guardian import TokenBucketConfig
from guardian.backends.batched import BatchedRedisBackend


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hammer", "hold"])
    p.add_argument("url")
    p.add_argument("prefix")
    p.add_argument("--capacity", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--max-share", type=float, default=0.2)
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--takes", type=int, default=0)
    args = p.parse_args()
    backend = BatchedRedisBackend(TokenBucketConfig(args.capacity, args.rate), url=args.url,
                                  prefix=args.prefix, max_share=args.max_share, timeout=2)
    if args.mode == "hold":
        admitted = sum(backend.try_take("k") for _ in range(args.takes))
        time.sleep(0.2)  # let a prefetch land
        print(admitted, backend.book.table.held("k"), flush=True)
        time.sleep(60)
        return
    while time.time() < args.start:
        time.sleep(0.001)
    began = time.time()  # later than --start when the machine is loaded
    end = args.start + args.seconds
    n = 0
    take = backend.try_take
    while time.time() < end:
        for _ in range(100):
            n += take("k")
    # Every reservation of this node returned by now (the server's clock is
    # this host's): the window its admissions came from ends here.
    last = time.time()
    backend.close()
    print(n, backend.stats()["reservations"], began, repr(last), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
