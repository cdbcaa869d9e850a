"""Soak: steady load from several processes on one Redis, with faults on a
schedule, for ``--duration`` seconds (600 by default). Not run in CI.

    python bench/soak.py                       # 10 minutes, 4 processes
    python bench/soak.py --duration 120 --json soak.json

Each process checks the same 20 keys (capacity 50, 20 per second refill)
through a TCP proxy in front of a redis-server started here, fail-closed, so
an admission is always Redis' (directly or from a lease). Processes cycle
through the backends: RedisBackend, BatchedRedisBackend, AsyncRedisBackend,
AsyncBatchedRedisBackend. Faults, one every ``--period`` seconds, in turn:
Redis SIGKILLed and restarted empty, hung (SIGSTOP) for 2 s, 0.5 s of
added latency for 3 s (above the 0.25 s timeout), a 2 s blackhole,
every connection reset.

The report: per window, admitted against the allowance (capacity per key
for each life of Redis, since a restart without persistence refills every
bucket, plus the refill over the window), checks decided by policy, the
slowest decision; the recovery time after each fault (from its end to each
process' next check decided by Redis); exceptions that escaped the façade
(must be 0); RSS and open file descriptors of every process at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))

from faults import Proxy, hung, open_fds, rss_kib  # noqa: E402
from redis_servers import Server  # noqa: E402

KEYS = [f"soak-{i}" for i in range(20)]
CAPACITY, RATE = 50, 20  # per key: a burst of 50, 20 per second
TIMEOUT = 0.25
KINDS = ["sync", "batched", "async", "batched-async"]
#: Seconds between two checks of one process (about 1,000 checks a second).
PACE = 0.001


def _limiter(kind: str, url: str) -> Any:
    from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig
    from guardian.backends.batched import BatchedRedisBackend
    from guardian.backends.batched_async import AsyncBatchedRedisBackend
    from guardian.backends.redis import RedisBackend
    from guardian.backends.redis_async import AsyncRedisBackend

    cls = {"sync": RedisBackend, "batched": BatchedRedisBackend, "async": AsyncRedisBackend,
           "batched-async": AsyncBatchedRedisBackend}[kind]
    backend = cls(TokenBucketConfig(CAPACITY, RATE, 1), url=url, prefix="soak", connect_timeout=TIMEOUT,
                  timeout=TIMEOUT)
    facade = AsyncRateLimiter if kind.endswith("async") else RateLimiter
    return facade(backend, fail_open=False, breaker_cooldown=0.5, log_interval=3600)


class Sampler:
    """One process' counters, sent to the parent once a second."""

    def __init__(self, out: Any, limiter: Any) -> None:
        self.out, self.limiter = out, limiter
        self.allowed = self.denied = self.escapes = 0
        self.slowest = 0.0
        self.slowest_at = 0.0
        self.recovered: List[float] = []  # first check decided by Redis after checks decided by policy
        self.failing = False
        self.next = time.monotonic() + 1.0

    def record(self, allowed: Any, took: float, by_policy: bool) -> None:
        if allowed is None:
            self.escapes += 1
        elif allowed:
            self.allowed += 1
        else:
            self.denied += 1
        now = time.monotonic()
        if took > self.slowest:
            self.slowest, self.slowest_at = took, now
        if by_policy:
            self.failing = True
        elif self.failing:
            self.failing = False
            self.recovered.append(now)
        if now >= self.next:
            self.flush(now)

    def flush(self, now: float) -> None:
        self.out.put(("sample", os.getpid(), now, self.allowed, self.denied, self.limiter.failures,
                      self.escapes, self.slowest, self.recovered, rss_kib(), open_fds(), self.slowest_at))
        self.allowed = self.denied = self.escapes = 0
        self.slowest = 0.0
        self.recovered = []
        self.next = now + 1.0


def _worker(kind: str, url: str, stop: Any, out: Any) -> None:
    # One line per failure and process would bury the report; the counts are in it.
    logging.getLogger("guardian").setLevel(logging.ERROR)
    out.put(("start", os.getpid(), kind, rss_kib(), open_fds()))
    if kind.endswith("async"):
        asyncio.run(_async_worker(kind, url, stop, out))
    else:
        limiter = _limiter(kind, url)
        sampler = Sampler(out, limiter)
        i = 0
        while not stop.is_set():
            i += 1
            failures = limiter.failures
            start = time.perf_counter()
            try:
                allowed = limiter.try_acquire(KEYS[i % len(KEYS)])
            except Exception:
                allowed = None
            sampler.record(allowed, time.perf_counter() - start, limiter.failures > failures)
            time.sleep(PACE)
        sampler.flush(time.monotonic())
        limiter.close()
    out.put(("end", os.getpid(), kind, rss_kib(), open_fds()))


async def _async_worker(kind: str, url: str, stop: Any, out: Any) -> None:
    limiter = _limiter(kind, url)
    sampler = Sampler(out, limiter)
    i = 0
    while not stop.is_set():
        i += 1
        failures = limiter.failures
        start = time.perf_counter()
        try:
            allowed = await limiter.try_acquire(KEYS[i % len(KEYS)])
        except Exception:
            allowed = None
        sampler.record(allowed, time.perf_counter() - start, limiter.failures > failures)
        await asyncio.sleep(PACE)
    sampler.flush(time.monotonic())
    await limiter.aclose()


def _faults(server: Server, proxy: Proxy) -> List[Tuple[str, Any]]:
    def restart() -> None:
        server.kill()
        time.sleep(0.5)
        server.start()

    def stop() -> None:
        assert server.proc is not None
        with hung(server.proc.pid):
            time.sleep(2.0)

    def latency() -> None:
        proxy.latency = 0.5
        time.sleep(3.0)
        proxy.latency = 0.0

    def blackhole() -> None:
        proxy.blackhole = True
        time.sleep(2.0)
        proxy.blackhole = False
        proxy.drop()  # what a real partition's end looks like: the old connections are gone

    return [("restart-empty", restart), ("hung-2s", stop), ("latency-0.5s-3s", latency),
            ("blackhole-2s", blackhole), ("reset", proxy.drop)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--period", type=float, default=20.0, help="seconds between two faults (default 20)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per report row (default 60)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="guardian-soak-"))
    server = Server(tmp).start()
    proxy = Proxy(server.port).start()
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    kinds = [KINDS[i % len(KINDS)] for i in range(args.processes)]
    procs = [ctx.Process(target=_worker, args=(k, proxy.url, stop, out)) for k in kinds]
    for p in procs:
        p.start()
    starts: Dict[int, Tuple[str, int, int]] = {}
    while len(starts) < len(procs):
        msg = out.get(timeout=60)
        starts[msg[1]] = (msg[2], msg[3], msg[4])
    t0 = time.monotonic()
    schedule = _faults(server, proxy)
    events: List[Tuple[str, float, float]] = []  # (fault, start, end)
    samples: List[Tuple[Any, ...]] = []
    next_fault, n = t0 + args.period, 0
    while time.monotonic() - t0 < args.duration:
        now = time.monotonic()
        if now >= next_fault:
            name, inject = schedule[n % len(schedule)]
            n += 1
            begin = time.monotonic()
            inject()
            events.append((name, begin, time.monotonic()))
            next_fault = time.monotonic() + args.period
        while not out.empty():
            samples.append(out.get())
        time.sleep(0.05)
    stop.set()
    ends: Dict[int, Tuple[str, int, int]] = {}
    deadline = time.monotonic() + 60
    while len(ends) < len(procs) and time.monotonic() < deadline:
        msg = out.get(timeout=60)
        if msg[0] == "end":
            ends[msg[1]] = (msg[2], msg[3], msg[4])
        else:
            samples.append(msg)
    for p in procs:
        p.join(30)
    elapsed = time.monotonic() - t0
    proxy.stop()
    server.stop()
    report = _report(args, t0, elapsed, events, samples, starts, ends)
    print(report["text"])
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in report.items() if k != "text"}, indent=1))
    return 0 if report["escapes"] == 0 and report["over_admitted"] == 0 else 1


def _report(args: Any, t0: float, elapsed: float, events: List[Tuple[str, float, float]],
            samples: List[Tuple[Any, ...]], starts: Dict[int, Any], ends: Dict[int, Any]) -> Dict[str, Any]:
    restarts_before = lambda t: sum(1 for name, b, _ in events if name == "restart-empty" and b < t)  # noqa: E731
    rows, lines = [], []
    windows = max(1, int(-(-elapsed // args.window)))
    last_policy: Dict[int, int] = {}
    total_admitted = total_policy = escapes = 0
    for w in range(windows):
        lo, hi = t0 + w * args.window, t0 + min((w + 1) * args.window, elapsed + 1)
        win = [s for s in samples if s[0] == "sample" and lo <= s[2] < hi]
        admitted = sum(s[3] for s in win)
        denied = sum(s[4] for s in win)
        policy = 0
        for s in win:
            policy += s[5] - last_policy.get(s[1], 0)
            last_policy[s[1]] = s[5]
        # A window may start with full buckets, and each restart refills them.
        allowance = len(KEYS) * (CAPACITY * (1 + restarts_before(hi) - restarts_before(lo)) + RATE * (hi - lo))
        slowest = max((s[7] for s in win), default=0.0)
        esc = sum(s[6] for s in win)
        rows.append({"window_s": [round(lo - t0), round(hi - t0)], "admitted": admitted, "denied": denied,
                     "allowance": round(allowance), "policy": policy, "slowest_ms": round(slowest * 1000),
                     "escapes": esc})
        total_admitted += admitted
        total_policy += policy
        escapes += esc
    # The whole run: full buckets at the start, refilled by each restart, plus the refill.
    total_allowance = len(KEYS) * (CAPACITY * (1 + restarts_before(float("inf"))) + RATE * elapsed)
    # Recovery: from each fault's end to each process' next Redis answer after failing.
    recoveries = []
    recovered_at = sorted((t, s[1]) for s in samples if s[0] == "sample" for t in s[8])
    for i, (name, begin, end) in enumerate(events):
        nxt = events[i + 1][1] if i + 1 < len(events) else float("inf")
        per_proc = {}
        for t, pid in recovered_at:
            if end - 0.5 <= t < nxt and pid not in per_proc:
                per_proc[pid] = max(t - end, 0.0)
        recoveries.append({"fault": name, "at_s": round(begin - t0, 1), "lasted_s": round(end - begin, 2),
                           "recovery_max_s": round(max(per_proc.values()), 3) if per_proc else None,
                           "processes_recovered": len(per_proc)})
    lines.append(f"soak: {elapsed:.0f} s, {args.processes} processes ({', '.join(k for k, *_ in starts.values())}), "
                 f"{len(events)} faults, {len(KEYS)} keys of capacity {CAPACITY} + {RATE}/s, fail-closed")
    lines.append("")
    lines.append("| window (s) | admitted | allowance | denied | decided by policy | slowest (ms) | escapes |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(f"| {r['window_s'][0]}-{r['window_s'][1]} | {r['admitted']:,} | {r['allowance']:,} | "
                     f"{r['denied']:,} | {r['policy']:,} | {r['slowest_ms']} | {r['escapes']} |")
    lines.append(f"| total | {total_admitted:,} | {round(total_allowance):,} | | {total_policy:,} | | {escapes} |")
    lines.append("")
    lines.append("| fault | at (s) | lasted (s) | slowest process recovered after (s) | processes recovered |")
    lines.append("|---|---:|---:|---:|---:|")
    for r in recoveries:
        lines.append(f"| {r['fault']} | {r['at_s']} | {r['lasted_s']} | {r['recovery_max_s']} | "
                     f"{r['processes_recovered']}/{args.processes} |")
    lines.append("")
    lines.append("| process | backend | slowest decision (ms) | RSS start (KiB) | RSS end (KiB) | fds start | fds end |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    slowest_of = {pid: max((s[7] for s in samples if s[0] == "sample" and s[1] == pid), default=0.0)
                  for pid in starts}
    # Start: the first sample (a second into the load, everything imported and
    # connected); end: the last sample before close().
    first: Dict[int, Tuple[Any, ...]] = {}
    last: Dict[int, Tuple[Any, ...]] = {}
    for s in samples:
        if s[0] == "sample":
            first.setdefault(s[1], s)
            last[s[1]] = s
    resources = {}
    for pid, (kind, _, _) in starts.items():
        a, b = first.get(pid), last.get(pid)
        resources[pid] = (kind, a[9] if a else 0, b[9] if b else 0, a[10] if a else 0, b[10] if b else 0)
        lines.append(f"| {pid} | {kind} | {slowest_of[pid] * 1000:.0f} | {resources[pid][1]:,} | {resources[pid][2]:,} | "
                     f"{resources[pid][3]} | {resources[pid][4]} |")
    lines.append("")
    lines.append("| slowest decisions | process | backend | at (s) | during or after |")
    lines.append("|---:|---|---|---:|---|")
    top = sorted((s for s in samples if s[0] == "sample"), key=lambda s: -s[7])[:5]
    for s in top:
        before = [e for e in events if e[1] <= s[11]]
        near = f"{before[-1][0]} at {before[-1][1] - t0:.1f} s" if before else "-"
        lines.append(f"| {s[7] * 1000:.0f} ms | {s[1]} | {starts[s[1]][0]} | {s[11] - t0:.1f} | {near} |")
    over = max(0, total_admitted - round(total_allowance))
    lines.append("")
    lines.append(f"admitted {total_admitted:,} of an allowance of {round(total_allowance):,} "
                 f"(over-admitted: {over}); exceptions escaped: {escapes}")
    return {"text": "\n".join(lines), "windows": rows, "recoveries": recoveries, "escapes": escapes,
            "admitted": total_admitted, "allowance": round(total_allowance), "over_admitted": over,
            "processes": {str(pid): {"backend": r[0], "rss_kib": [r[1], r[2]], "fds": [r[3], r[4]]}
                          for pid, r in resources.items()}}


if __name__ == "__main__":
    sys.exit(main())
