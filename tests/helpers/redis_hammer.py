"""Run as a subprocess: hammer one Redis bucket from several threads and
print how many takes were admitted. ``--skew HOURS`` shifts this process'
wall and monotonic clocks first, to show the backend never reads them."""

from __future__ import annotations

import argparse
import threading
import time


def skew_clocks(hours: float) -> None:
    shift = hours * 3600
    for name in ("time", "monotonic", "perf_counter"):
        real = getattr(time, name)
        setattr(time, name, lambda real=real: real() + shift)
    for name in ("time_ns", "monotonic_ns", "perf_counter_ns"):
        real = getattr(time, name)
        setattr(time, name, lambda real=real: real() + int(shift * 1e9))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--capacity", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--takes", type=int, default=0, help="takes per thread (else --seconds)")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--skew", type=float, default=0.0)
    args = parser.parse_args()
    if args.skew:
        skew_clocks(args.skew)

    from guardian import TokenBucketConfig
    from guardian.backends.redis import RedisBackend

    backend = RedisBackend(TokenBucketConfig(args.capacity, args.rate), url=args.url,
                           prefix=args.prefix, timeout=5)
    counts = [0] * args.threads
    start = threading.Barrier(args.threads)

    def hammer(i: int) -> None:
        start.wait()
        if args.takes:
            counts[i] = sum(backend.try_take("k") for _ in range(args.takes))
            return
        end = time.monotonic() + args.seconds
        n = 0
        while time.monotonic() < end:
            n += backend.try_take("k")
        counts[i] = n

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.close()
    print(sum(counts))


if __name__ == "__main__":
    main()
