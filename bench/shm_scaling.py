#!/usr/bin/env python
"""Shared-table scaling and exactness across processes.

    python bench/shm_scaling.py [--duration 3] [--repeat 3] [--trials 3] [--no-pin]

Requirement: "Shared table: two processes hammering one key together do at
least 1.6x the checks per second of one process".

Scaling: for each limit and key layout, one process, then two, call
``RateLimiter.try_acquire`` in a tight loop for ``--duration`` seconds on
one shared table (a fresh one per phase, unlinked after) and count calls
and admissions; ``--repeat`` such pairs, interleaved, and the medians are
compared. Next to each ratio: the share of all CPUs' time used by other
processes meanwhile, and the share the hypervisor stole. On a shared
machine they, not guardian, can decide the ratio. Limits:

* mostly-allowed: capacity 1e9, refill 1e9/s. Every check is admitted and
  so writes its slot (one CAS): the worst case for a shared cache line.
* mostly-denied: capacity 1, refill 1/hour. After the first check every
  check is denied and writes nothing: the slot's line stays shared.
* floor hash+CAS: not guardian but bench/_floor's HashCas on a MAP_SHARED
  mapping, every call a CAS: what this machine allows for one contended
  cache line.

Key layouts: both processes on one key (the requirement), and each process
on its own key (slots on different cache lines, no contention).

Exactness: capacity 100,000 refilled 1 per hour; two processes hammer one
key and must admit exactly 100,000 together (a refill of at most one token
may land meanwhile, hence +-1).

Processes are forked after the table exists and attach to it by name, like
workers of a pre-fork server; with --pin (default) process i runs on CPU i.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import uuid
from typing import List, Optional, Sequence, Tuple

from _build import build_floor  # bench/ is sys.path[0] when run as a script
from _machine import Usage

from guardian import CORE, MemoryBackend, RateLimiter, TokenBucketConfig

SLOTS = 2**12
CHUNK = 1024
CONFIGS = {
    "mostly-allowed": TokenBucketConfig(capacity=10**9, refill_rate=10**9, refill_interval=1),
    "mostly-denied": TokenBucketConfig(capacity=1, refill_rate=1, refill_interval=3600),
    # Not guardian: bench/_floor's hash + one CAS, every call a write. What
    # the hardware allows for a contended cache line.
    "floor hash+CAS": None,
}
EXACT = TokenBucketConfig(capacity=100_000, refill_rate=1, refill_interval=3600)
_FLOOR = None  # bench/_floor, built by main() before any fork


def _worker(name: Optional[str], config: Optional[TokenBucketConfig], buf, key: str,
            cpu: Optional[int], duration: float, barrier, results) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if config is None:
        target = _FLOOR.HashCas(SLOTS, buffer=buf)  # on the inherited MAP_SHARED table
        close = _nothing
    else:
        backend = MemoryBackend(config, shared=name)  # attach; slots from the segment
        target, close = RateLimiter(backend), backend.close
    chunk = [key] * CHUNK
    calls = allowed = 0
    barrier.wait()
    start = time.perf_counter()
    end = start + duration
    while True:
        for k in chunk:
            allowed += target.try_acquire(k)
        calls += CHUNK
        if time.perf_counter() >= end:
            break
    elapsed = time.perf_counter() - start
    close()
    results.put((key, calls, allowed, elapsed))


def _nothing() -> None:
    pass


def run_phase(config: Optional[TokenBucketConfig], keys: Sequence[str], duration: float,
              pin: bool) -> List[Tuple[str, int, int, float]]:
    """One process per key, all on one fresh shared table, started together.
    ``config=None`` runs the hash+CAS floor on a shared anonymous mapping."""
    ctx = mp.get_context("fork")
    name: Optional[str] = None
    buf = owner = None
    if config is None:
        buf = mmap.mmap(-1, SLOTS * 16, flags=mmap.MAP_SHARED)
    else:
        name = f"bench-shm-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        owner = MemoryBackend(config, shared=name, slots=SLOTS)
    try:
        barrier = ctx.Barrier(len(keys))
        results = ctx.Queue()
        ncpu = os.cpu_count() or 1
        procs = [
            ctx.Process(target=_worker, args=(name, config, buf, key, i % ncpu if pin else None,
                                              duration, barrier, results))
            for i, key in enumerate(keys)
        ]
        for p in procs:
            p.start()
        out = [results.get(timeout=duration + 60) for _ in procs]
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"worker exited with {p.exitcode}")
        return out
    finally:
        if owner is not None:
            owner.close()
            MemoryBackend.unlink(name)
        if buf is not None:
            buf.close()


def _rate(rows) -> float:
    return sum(calls / elapsed for _, calls, _, elapsed in rows)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def scaling(duration: float, repeat: int, pin: bool) -> List[str]:
    lines = [
        "| limit | keys | 1 process: checks/s | 2 processes: checks/s | ratio of medians "
        "| ratio per repeat | admitted / checks (last 2-process run) | other load, stolen |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for label, config in CONFIGS.items():
        for layout, two in (("one key", ["user:000042", "user:000042"]),
                            ("a key per process", ["user:000001", "user:000002"])):
            r1s, r2s = [], []
            usage = Usage()
            usage.start()
            for _ in range(repeat):  # interleaved, so drift hits both alike
                r1s.append(_rate(run_phase(config, two[:1], duration, pin)))
                both = run_phase(config, two, duration, pin)
                r2s.append(_rate(both))
            foreign, stolen = usage.stop()
            r1, r2 = _median(r1s), _median(r2s)
            admitted = sum(r[2] for r in both)
            calls = sum(r[1] for r in both)
            per = ", ".join(f"{b / a:.2f}" for a, b in zip(r1s, r2s))
            lines.append(
                f"| {label} | {layout} | {r1:,.0f} | {r2:,.0f} | **{r2 / r1:.2f}x** | {per} "
                f"| {admitted:,} / {calls:,} | {100 * foreign:.0f}%, {100 * stolen:.0f}% |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def exactness(trials: int, duration: float, pin: bool) -> Tuple[List[str], bool]:
    lines = [
        "| trial | keys | admitted per process | total admitted | expected | exact (+-1) |",
        "|---|---|---|---:|---:|:---:|",
    ]
    ok_all = True
    for t in range(1, trials + 1):
        for layout, keys in (("one key", ["user:000042"] * 2),
                             ("a key per process", ["user:000001", "user:000002"])):
            rows = run_phase(EXACT, keys, duration, pin)
            per = [r[2] for r in rows]
            expected = EXACT.capacity * len(set(keys))
            ok = abs(sum(per) - expected) <= 1 and (
                len(set(keys)) == 1 or all(abs(a - EXACT.capacity) <= 1 for a in per))
            ok_all &= ok
            lines.append(
                f"| {t} | {layout} | {' + '.join(f'{a:,}' for a in per)} | {sum(per):,} | "
                f"{expected:,} | {'yes' if ok else '**NO**'} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines, ok_all


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per scaling phase (default 3)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="scaling runs per configuration; medians are reported (default 3)")
    parser.add_argument("--exact-duration", type=float, default=1.0,
                        help="seconds per exactness trial (default 1)")
    parser.add_argument("--trials", type=int, default=3, help="exactness trials (default 3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin process i to CPU i")
    args = parser.parse_args(argv)
    global _FLOOR
    _FLOOR = build_floor()
    print(f"Python {platform.python_version()}, guardian core: {CORE}, "
          f"{os.cpu_count()} CPUs, pinned: {args.pin}, {args.duration:g} s per phase\n")
    print("### scaling: RateLimiter.try_acquire on one shared table\n")
    print("\n".join(scaling(args.duration, args.repeat, args.pin)))
    print("\n### exactness: capacity 100,000, refill 1/hour, two processes\n")
    lines, ok = exactness(args.trials, args.exact_duration, args.pin)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
