"""Per IP at the edge, per user inside the app: FastAPI.

    uvicorn --app-dir examples fastapi_per_user:app --port 8000
    curl -i -H 'Authorization: Bearer alice-token' localhost:8000/me   # 200, RateLimit fields
    # ... the 4th request of alice within the hour: 429 with Retry-After; bob still has his 3

Two limits, each where its key is known:
- at the edge, guardian.asgi's middleware limits every request by client
  address before routing (a flood from one address never reaches the app);
- inside the app, a dependency limits by the authenticated user, which
  only the app knows: ``Depends(per_user.by(current_user))`` runs the
  authentication once and gives the endpoint the user.

Environment: GUARDIAN_USER_CAPACITY (default 3 per hour per user),
GUARDIAN_EDGE_CAPACITY (default 100 per second per address).
"""

from __future__ import annotations

import os
from typing import Optional

from fastapi import Depends, FastAPI, Header, HTTPException

from guardian import AsyncRateLimiter, MemoryBackend, RateLimitExceeded, TokenBucketConfig
from guardian.asgi import RateLimitMiddleware
from guardian.fastapi import RateLimit, rate_limit_exceeded_handler
from guardian.http import Route, client_ip

#: A stand-in for real authentication: bearer token -> user name.
TOKENS = {"alice-token": "alice", "bob-token": "bob"}

edge = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(int(os.environ.get("GUARDIAN_EDGE_CAPACITY", "100")), 100)))
per_user = RateLimit(
    AsyncRateLimiter(MemoryBackend(TokenBucketConfig(
        int(os.environ.get("GUARDIAN_USER_CAPACITY", "3")), refill_rate=3, refill_interval=3600))),
    policy="per-user",
)

app = FastAPI()


def current_user(authorization: Optional[str] = Header(default=None)) -> str:
    token = (authorization or "").removeprefix("Bearer ").strip()
    if token not in TOKENS:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return TOKENS[token]


@app.get("/me")
async def me(user: str = Depends(per_user.by(current_user, key=lambda name: f"user:{name}"))) -> dict:
    return {"user": user}


@app.get("/health")
async def health() -> dict:
    return {"ok": True}


app.add_middleware(RateLimitMiddleware, limiter=edge, key_func=client_ip(), routes=[Route("/health", None)])
# A bare @limiter.limit(...) somewhere in the app answers 429 too, not 500.
app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)
