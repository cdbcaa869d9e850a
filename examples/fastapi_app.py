"""A FastAPI app behind guardian's ASGI middleware.

    uvicorn --app-dir examples fastapi_app:app --port 8000
    curl -i localhost:8000/hello        # 200 with RateLimit-Policy / RateLimit
    # ... the 6th request within a second gets 429 with Retry-After

Environment: GUARDIAN_CAPACITY (default 5), GUARDIAN_RATE (per second,
default 1), GUARDIAN_SHARED (a shared-memory table name, so every
``uvicorn --workers N`` process enforces one limit), REDIS_URL (keep the
buckets in Redis instead, with the asyncio backend).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from guardian import AsyncRateLimiter, MemoryBackend, TokenBucketConfig
from guardian.asgi import RateLimitMiddleware
from guardian.http import Route, client_ip

config = TokenBucketConfig(int(os.environ.get("GUARDIAN_CAPACITY", "5")),
                           float(os.environ.get("GUARDIAN_RATE", "1")))
if os.environ.get("REDIS_URL"):
    from guardian.backends import AsyncRedisBackend

    limiter = AsyncRateLimiter(AsyncRedisBackend(config, url=os.environ["REDIS_URL"]))
else:
    limiter = AsyncRateLimiter(MemoryBackend(config, shared=os.environ.get("GUARDIAN_SHARED") or None))

app = FastAPI()


@app.get("/hello")
async def hello() -> dict:
    return {"hello": "world"}


@app.get("/health")
async def health() -> dict:
    return {"ok": True}


app.add_middleware(
    RateLimitMiddleware,
    limiter=limiter,
    # Behind a load balancer in 10.0.0.0/8, key by the client it forwarded for.
    key_func=client_ip(trusted_proxies=["10.0.0.0/8"]),
    routes=[Route("/health", None)],  # never limit health checks
)
