"""Storage backends: every backend offers take / take_many / usage / reset
for a (key, cost) against the one limit it was built with.

The Redis backends are imported on first use, so redis-py is needed only
by those who use them (``pip install guardian-ratelimit[redis]``).
"""

from typing import Any

from .base import AsyncBackend, Backend
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "AsyncBackend",
    "MemoryBackend",
    "RedisBackend",
    "AsyncRedisBackend",
    "BatchedRedisBackend",
    "AsyncBatchedRedisBackend",
]

_LAZY = {
    "RedisBackend": ".redis",
    "AsyncRedisBackend": ".redis_async",
    "BatchedRedisBackend": ".batched",
    "AsyncBatchedRedisBackend": ".batched_async",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
