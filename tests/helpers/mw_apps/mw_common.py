"""What the four framework apps of the middleware server tests share: the
limiters, the routes and the per-user key. Configured by environment:
MW_TRUST_UNIX=1 marks a Unix-socket peer as a trusted proxy,
MW_EDGE_CAPACITY sets the per-client limit at the edge (default 1000).

Routes every app has (each handler names itself in an X-Handler header):
  GET /login          edge route limit: 2 per hour per client ("/login" policy)
  GET /items/{id}     edge route limit: 3 per hour per client per route template
  GET /health         exempt at the edge
  GET /me             in the app: 3 per hour per user (X-User header), "per-user" policy
  GET /api            edge route limit: 2 per hour per X-Api-Key
  GET /               the edge's per-client limit only
  GET|POST /open      the edge's per-client limit only: which spellings reach a handler
"""

from __future__ import annotations

import os
from typing import Any, List

from guardian import MemoryBackend, RateLimiter, TokenBucketConfig
from guardian.http import Route, client_ip, header, route



def per_hour(capacity: int) -> RateLimiter:
    return RateLimiter(MemoryBackend(TokenBucketConfig(capacity, 1, refill_interval=3600)))


EDGE = per_hour(int(os.environ.get("MW_EDGE_CAPACITY", "1000")))
LOGIN = per_hour(2)
ITEMS = per_hour(3)
API = per_hour(2)
PER_USER = per_hour(3)

KEY = client_ip(trusted_proxies=["unix"] if os.environ.get("MW_TRUST_UNIX") == "1" else [])


def routes() -> List[Route]:
    return [
        Route("/login", LOGIN, methods=["GET", "POST"]),
        Route("/items/{id}", ITEMS, key_func=route(KEY)),
        Route("/api", API, key_func=header("x-api-key")),
        Route("/health", None),
    ]


def edge_options() -> dict:
    return dict(limiter=EDGE, key_func=KEY, routes=routes())


def user_of(headers: Any) -> Any:
    return headers.get("x-user") or None
