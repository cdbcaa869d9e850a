"""The backend contract the limiters build on."""

from __future__ import annotations

from typing import List, Protocol, Sequence, runtime_checkable

from .._config import TokenBucketConfig
from .._result import LimitResult


@runtime_checkable
class Backend(Protocol):
    """A synchronous backend. ``take`` and friends may raise
    :class:`~guardian.BackendError` when storage fails; the limiter turns
    that into a decision by its failure policy. Argument errors are raised
    before any state changes."""

    config: TokenBucketConfig
    #: False when no call can fail (in-process storage): the limiter then
    #: binds ``try_take`` directly, with no policy wrapper in between.
    can_fail: bool

    def take(self, key: str, cost: int = 1) -> LimitResult: ...

    def try_take(self, key: str, cost: int = 1) -> bool: ...

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]: ...

    def usage(self, key: str) -> int: ...

    def reset(self, key: str) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    """An asyncio backend: ``Backend``'s operations as coroutines, and
    ``aclose``. For AsyncRateLimiter."""

    config: TokenBucketConfig
    can_fail: bool

    async def take(self, key: str, cost: int = 1) -> LimitResult: ...

    async def try_take(self, key: str, cost: int = 1) -> bool: ...

    async def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]: ...

    async def usage(self, key: str) -> int: ...

    async def reset(self, key: str) -> None: ...

    async def aclose(self) -> None: ...
