"""Batched Redis: leases of tokens served from the local core, so most
checks never reach Redis.  Run: python examples/redis_batched.py [REDIS_URL] [seconds]"""

from __future__ import annotations

import os
import sys
import time
import uuid

from guardian import RateLimiter, TokenBucketConfig
from guardian.backends import BatchedRedisBackend

url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REDIS_URL", "redis://localhost:6379/0")
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
config = TokenBucketConfig(capacity=1000, refill_rate=1000)
key = f"example-{uuid.uuid4().hex[:8]}"

with RateLimiter(BatchedRedisBackend(config, url=url), fail_open=False) as limiter:
    checks = allowed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        allowed += limiter.try_acquire(key)
        checks += 1
bound = config.capacity + 1000 * seconds
print(f"{checks:,} checks in {seconds:g}s ({checks / seconds:,.0f}/s), {allowed:,} allowed; "
      f"the limit allows at most {bound:,.0f}: {'held' if allowed <= bound else 'EXCEEDED'}")
