"""In-memory limiting: the hot path, the full decision, the decorator and
a waiting acquire.  Run: python examples/basic.py"""

from __future__ import annotations

import time

from guardian import CORE, MemoryBackend, RateLimiter, RateLimitExceeded, TokenBucketConfig

# Bursts of 5, refilled at 20 per second.
limiter = RateLimiter(MemoryBackend(TokenBucketConfig(capacity=5, refill_rate=20)))

print(f"guardian with the {CORE} core")
print("try_acquire x7:", [limiter.try_acquire("client-42") for _ in range(7)])
result = limiter.check_limit("client-42")
print(f"check_limit: allowed={result.allowed} remaining={result.remaining} retry_after={result.retry_after:.3f}s")


@limiter.limit(key=lambda user: f"user:{user}")
def handler(user: str) -> str:
    return f"served {user}"


for _ in range(6):
    try:
        print(handler("ada"))
    except RateLimitExceeded as exc:
        print(f"denied, retry after {exc.result.retry_after:.3f}s")

start = time.monotonic()
for _ in range(10):
    limiter.acquire("outbound-api")  # waits for tokens: client-side throttling
print(f"10 acquires took {time.monotonic() - start:.2f}s (5 from the burst, 5 at 20/s)")
