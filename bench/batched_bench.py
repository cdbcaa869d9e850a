"""BatchedRedisBackend against the issue's targets, one bounded run on a
redis-server this script starts on a free loopback port:

- admitted checks per Redis call on a hot key (target >= 100), calls
  counted by the server (INFO commandstats);
- a local hit against a MemoryBackend check, same run (target <= 2x);
- latency percentiles under a steady load (the local path, no Redis wait);
- checks/s of the batched and the plain Redis backend, 1 and 2 processes.

    python bench/batched_bench.py [--seconds 2] [--out docs/benchmarks-batched.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import redis  # noqa: E402
from redis_servers import Server  # noqa: E402

from guardian import MemoryBackend, TokenBucketConfig  # noqa: E402
from guardian.backends.batched import BatchedRedisBackend  # noqa: E402
from guardian.backends.redis import RedisBackend  # noqa: E402

#: Generous enough that a hot key is never over its limit: every check does
#: the allowed path, and lease sizes follow demand, not the bucket.
HOT = TokenBucketConfig(10_000_000, 10_000_000)


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def per_call(url: str, raw: redis.Redis, n: int) -> Tuple[int, int]:
    backend = BatchedRedisBackend(HOT, url=url, prefix="percall")
    before = script_calls(raw)
    admitted = sum(backend.try_take("hot") for _ in range(n))
    calls = script_calls(raw) - before
    backend.close()
    return admitted, calls


def ns(call: Any) -> float:
    return min(timeit.repeat(call, number=100_000, repeat=7)) / 100_000 * 1e9


def hit_cost(url: str) -> List[Tuple[str, float]]:
    batched = BatchedRedisBackend(HOT, url=url, prefix="hit")
    memory = MemoryBackend(HOT)
    for _ in range(300_000):  # lease grown to its steady size
        batched.try_take("hot")
    rows = [
        ("MemoryBackend.try_take", ns(lambda: memory.try_take("hot"))),
        ("BatchedRedisBackend.try_take (local hit)", ns(lambda: batched.try_take("hot"))),
        ("MemoryBackend.take", ns(lambda: memory.take("hot"))),
        ("BatchedRedisBackend.take (local hit)", ns(lambda: batched.take("hot"))),
    ]
    batched.close()
    return rows


def steady(url: str, raw: redis.Redis, rate: int, seconds: float) -> Tuple[List[float], int, int]:
    """``rate`` checks/s paced for ``seconds``: each check's latency."""
    backend = BatchedRedisBackend(HOT, url=url, prefix="steady")
    take = backend.try_take
    lat: List[float] = []
    clock = time.perf_counter_ns
    for _ in range(1000):  # connect and load the scripts first
        take("hot")
    before = script_calls(raw)
    start = clock()
    gap = 1e9 / rate
    for i in range(int(rate * seconds)):
        due = start + i * gap
        while clock() < due:
            pass
        t0 = clock()
        take("hot")
        lat.append(clock() - t0)
    calls = script_calls(raw) - before
    backend.close()
    return sorted(lat), len(lat), calls


def worker(kind: str, url: str, seconds: float) -> None:
    cls = BatchedRedisBackend if kind == "batched" else RedisBackend
    backend: Any = cls(HOT, url=url, prefix="tput")
    take = backend.try_take
    for _ in range(1000):
        take("hot")
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            take("hot")
        n += 100
    backend.close()
    print(n / seconds)


def throughput(url: str, kind: str, procs: int, seconds: float) -> float:
    ps = [subprocess.Popen([sys.executable, __file__, "--worker", kind, url, str(seconds)],
                           stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    return sum(float(p.communicate()[0]) for p in ps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], float(args.worker[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp)).start()
        raw = redis.Redis(port=server.port)
        try:
            lines = [f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
                     f"{platform.python_version()}, redis-server on loopback; "
                     f"`python bench/batched_bench.py --seconds {args.seconds}`", ""]
            admitted, calls = per_call(server.url, raw, 1_000_000)
            lines += ["## Admitted checks per Redis call (hot key, 1,000,000 checks)", "",
                      f"{admitted} admitted, {calls} script calls: **{admitted / calls:.0f} per call** "
                      "(target >= 100)", ""]
            rows = hit_cost(server.url)
            lines += ["## Local hit against MemoryBackend (ns per call, min of 7 x 100k)", "",
                      "| call | ns | vs MemoryBackend |", "|---|---|---|"]
            for i, (name, v) in enumerate(rows):
                base = rows[i - i % 2][1]
                lines.append(f"| {name} | {v:.0f} | {v / base:.2f}x |")
            lat, n, calls = steady(server.url, raw, 50_000, args.seconds)
            pct = {p: lat[min(int(p / 100 * n), n - 1)] / 1000 for p in (50, 99, 99.9)}
            lines += ["", f"## Steady load: 50,000 checks/s paced for {args.seconds:g} s", "",
                      f"{n} checks, {calls} Redis calls; latency us: p50 {pct[50]:.2f}, "
                      f"p99 {pct[99]:.2f}, p99.9 {pct[99.9]:.2f}, max {lat[-1] / 1000:.0f}; "
                      f"checks over 50 us: {sum(1 for v in lat if v > 50_000)}", ""]
            lines += ["## Checks/s on one hot key, flat out", "",
                      "| backend | 1 process | 2 processes |", "|---|---|---|"]
            for kind in ("redis", "batched"):
                one = throughput(server.url, kind, 1, args.seconds)
                two = throughput(server.url, kind, 2, args.seconds)
                lines.append(f"| {kind} | {one:,.0f} | {two:,.0f} |")
        finally:
            raw.close()
            server.stop()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
