"""One limit shared by every host through Redis.
Run: python examples/redis_basic.py redis://localhost:6379/0  (or REDIS_URL)"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig
from guardian.backends import AsyncRedisBackend, RedisBackend

url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REDIS_URL", "redis://localhost:6379/0")
config = TokenBucketConfig(capacity=10, refill_rate=5)
key = f"example-{uuid.uuid4().hex[:8]}"

with RateLimiter(RedisBackend(config, url=url), fail_open=False) as limiter:
    allowed = sum(limiter.try_acquire(key) for _ in range(15))
    print(f"sync: {allowed} of 15 allowed (capacity 10); usage now {limiter.get_usage(key)}")
    limiter.reset(key)


async def main() -> None:
    async with AsyncRateLimiter(AsyncRedisBackend(config, url=url), fail_open=False) as alimiter:
        results = await asyncio.gather(*(alimiter.check_limit(key) for _ in range(15)))
        print(f"asyncio: {sum(r.allowed for r in results)} of 15 allowed")
        await alimiter.reset(key)

asyncio.run(main())
