"""Several limits on one key on Redis: a two-limit check ("10^6/second and
10^9/hour", one take_all.lua call) against a one-limit check (take.lua),
p50 and p99 latency of one client, measured in the same run, interleaved,
on a single redis-server and a 3-master cluster that this script starts on
free loopback ports (issue 10 item 6 aims at <= 2x).

    python bench/redis_limits_bench.py [--checks 20000] [--rounds 10]

Every check is admitted (both limits far from running out), so each one
does the full write path: one bucket, or two buckets in one hash slot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from redis_servers import Cluster, Server  # noqa: E402

from guardian import Limits, TokenBucketConfig  # noqa: E402
from guardian.backends.redis import RedisBackend  # noqa: E402

ONE = TokenBucketConfig(10**6, 10**6)
TWO = Limits(ONE, TokenBucketConfig(10**9, 10**9, 3600))
KEYS = [f"user:{i:04d}" for i in range(1000)]


def measure(subjects: Dict[str, Callable[[str], Any]], checks: int, rounds: int) -> Dict[str, List[int]]:
    """Latency samples (ns) per subject; the subjects take turns, ``rounds``
    times, so each sees the same mix of quiet and busy moments."""
    samples: Dict[str, List[int]] = {name: [] for name in subjects}
    per_turn = max(1, checks // rounds)
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, take in subjects.items():
            out = samples[name]
            for i in range(per_turn):
                key = KEYS[i % 1000]
                t0 = clock()
                take(key)
                out.append(clock() - t0)
    return samples


def pct(values: List[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


def run(url: str, where: str, checks: int, rounds: int) -> None:
    one = RedisBackend(ONE, url=url, prefix="bench-one")
    two = RedisBackend(TWO, url=url, prefix="bench-two")
    for b in (one, two):  # load the scripts, open the connections
        for k in KEYS[:50]:
            b.try_take(k)
    got = measure({"one limit": one.try_take, "two limits": two.try_take}, checks, rounds)
    p50 = {name: pct(v, 0.5) for name, v in got.items()}
    for name, v in got.items():
        print(f"{where:8} {name:11} p50 {p50[name]:7.1f} us  p99 {pct(v, 0.99):7.1f} us  ({len(v)} checks)")
    print(f"{where:8} two/one p50 ratio {p50['two limits'] / p50['one limit']:.2f}")
    one.close()
    two.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checks", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-cluster", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("single", "cluster"):
            (Path(tmp) / sub).mkdir()
        server = Server(Path(tmp) / "single").start()
        try:
            run(server.url, "single", args.checks, args.rounds)
        finally:
            server.stop()
        if not args.no_cluster:
            cluster = Cluster(Path(tmp) / "cluster").start()
            try:
                run(cluster.url, "cluster", args.checks, args.rounds)
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()
