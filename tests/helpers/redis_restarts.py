"""Restart a real redis-server many times under a backend and check that
it recovers every time (issue 11: wires dropped with disconnect() used to
leak pool slots until every call failed "Too many connections").
Used by tests/integration/test_redis_restarts.py (a few dozen restarts)
and bench/redis_restarts.py (hundreds, with the figures)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List

from redis_servers import Server

from guardian import BackendError, TokenBucketConfig
from guardian.backends.batched import BatchedRedisBackend
from guardian.backends.redis import RedisBackend
from guardian.backends.redis_async import AsyncRedisBackend

CONFIG = TokenBucketConfig(1_000_000, 1_000_000)
KINDS = ("sync", "async", "batched")


def pool_size(backend: Any) -> Dict[str, int]:
    """What the client's pool counts: connections made and not given back."""
    redis = getattr(backend, "redis", backend)
    wires = getattr(redis, "_wires", None)
    if wires is not None:  # asyncio: the backend's own wires, bounded by the pool's max
        return {"created": wires.open, "in_use": wires.open - len(wires.idle)}
    pool = redis.client.connection_pool
    return {"created": pool._created_connections, "in_use": len(pool._in_use_connections)}


def run(server: Server, prefix: str, kind: str, restarts: int, max_connections: int,
        failures_per_outage: int = 3, every: int = 0) -> List[Dict[str, Any]]:
    """Kills and restarts ``server`` ``restarts`` times; while it is down,
    ``failures_per_outage`` checks fail (each used to cost a pool slot);
    after each restart the first check must succeed. Returns the pool's
    counts every ``every`` restarts (and at the end)."""
    options = dict(url=server.url, prefix=prefix, timeout=0.5, connect_timeout=0.5,
                   max_connections=max_connections)
    loop = asyncio.new_event_loop() if kind == "async" else None
    if kind == "sync":
        backend: Any = RedisBackend(CONFIG, **options)
        call: Callable[[str], Any] = backend.take
    elif kind == "batched":
        backend = BatchedRedisBackend(CONFIG, **options)
        call = backend.take
    else:
        backend = AsyncRedisBackend(CONFIG, **options)
        assert loop is not None
        call = lambda key: loop.run_until_complete(backend.take(key))  # noqa: E731
    samples: List[Dict[str, Any]] = []
    start = time.monotonic()
    try:
        for i in range(restarts):
            server.kill()
            for j in range(failures_per_outage):
                try:
                    call(f"down-{i}-{j}")
                except BackendError:
                    pass
                else:
                    raise AssertionError("a check succeeded with Redis down")
            server.start()
            # A fresh key each time: the batched backend must go to Redis.
            result = call(f"up-{i}")
            if not result.allowed:
                raise AssertionError(f"restart {i}: denied by a healthy Redis")
            if every and (i + 1) % every == 0 or i + 1 == restarts:
                samples.append(dict(restart=i + 1, seconds=round(time.monotonic() - start, 1),
                                    **pool_size(backend)))
    finally:
        if loop is not None:
            loop.run_until_complete(backend.aclose())
            loop.close()
        else:
            backend.close()
    return samples
