"""What happens when Redis stops: fail-open allows, fail-closed denies,
"local" limits in-process.  Run: python examples/fail_open_closed.py REDIS_URL
(stop Redis while it runs, or pass an address nothing listens on)."""

from __future__ import annotations

import os
import sys
import time

from guardian import RateLimiter, TokenBucketConfig
from guardian.backends import RedisBackend

url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
config = TokenBucketConfig(capacity=3, refill_rate=1)
limiters = {policy: RateLimiter(RedisBackend(config, url=url), fail_open=policy)  # type: ignore[arg-type]
            for policy in (True, False, "local")}

for round_ in range(rounds):
    for policy, limiter in limiters.items():
        # One key per policy: against a healthy Redis the three limiters must
        # not drain one shared bucket (each then shows its own 3 allowed).
        decisions = [limiter.try_acquire(f"demo-{policy}") for _ in range(5)]
        print(f"fail_open={policy!s:5}: {decisions}  (failures decided by policy: {limiter.failures})")
    if round_ + 1 < rounds:
        time.sleep(0.5)
