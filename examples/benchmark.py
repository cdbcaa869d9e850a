"""A small benchmark: checks per second of try_acquire and check_limit on
the in-memory core.  Run: python examples/benchmark.py [seconds]"""

from __future__ import annotations

import sys
import time

from guardian import CORE, MemoryBackend, RateLimiter, TokenBucketConfig

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
limiter = RateLimiter(MemoryBackend(TokenBucketConfig(1_000_000, 1_000_000)))
keys = [f"client-{i}" for i in range(1000)]

for name, fn in (("try_acquire", limiter.try_acquire), ("check_limit", limiter.check_limit)):
    n = 0
    end = time.perf_counter() + seconds / 2
    start = time.perf_counter()
    while time.perf_counter() < end:
        for key in keys:
            fn(key)
        n += len(keys)
    elapsed = time.perf_counter() - start
    print(f"{name:12} ({CORE} core): {n / elapsed:12,.0f} checks/s, {elapsed / n * 1e9:6.0f} ns each")
