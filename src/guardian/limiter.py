"""The façade: RateLimiter and AsyncRateLimiter.

They add the failure policy to a backend: when storage fails, a check is
allowed (``fail_open=True``, the default) or denied (``fail_open=False``),
logged at most once per ``log_interval`` seconds and counted in
``failures``. No backend exception escapes a check. Argument errors are
the caller's and are raised as they are.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, List, Sequence

from ._errors import BackendError
from ._result import LimitResult
from .backends.base import Backend

__all__ = ["RateLimiter", "AsyncRateLimiter"]

log = logging.getLogger("guardian")


class _Policy:
    """What both limiters share: the decision and its bookkeeping."""

    def __init__(self, backend: Any, fail_open: bool, log_interval: float) -> None:
        if not isinstance(fail_open, bool):
            raise TypeError(f"fail_open must be a bool, got {fail_open!r}")
        self.backend = backend
        self.fail_open = fail_open
        self.log_interval = log_interval
        #: Checks decided by policy because the backend failed.
        self.failures = 0
        self._last_log = float("-inf")
        self._limit = backend.config.capacity

    def _failed(self, exc: BaseException) -> LimitResult:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            log.warning(
                "guardian: backend %s failed (%s: %s); %s checks until it recovers "
                "(%d failed checks so far)",
                type(self.backend).__name__, type(exc).__name__, exc,
                "allowing" if self.fail_open else "denying", self.failures,
            )
        return LimitResult(self.fail_open, 0, 0.0, 0.0, self._limit)

    def _failed_many(self, exc: BaseException, n: int) -> List[LimitResult]:
        first = self._failed(exc)
        self.failures += n - 1
        return [first] + [LimitResult(first.allowed, 0, 0.0, 0.0, self._limit) for _ in range(n - 1)]


class RateLimiter(_Policy):
    """Checks keys against one limit held by ``backend``.

    >>> limiter = RateLimiter(MemoryBackend(TokenBucketConfig(100, 10)))
    >>> limiter.try_acquire("client-42")
    True
    """

    def __init__(self, backend: Backend, fail_open: bool = True, log_interval: float = 10.0) -> None:
        super().__init__(backend, fail_open, log_interval)
        if not backend.can_fail:
            # Nothing to guard: callers reach the backend (for MemoryBackend,
            # the C core's own method) with no Python frame in between.
            self.try_acquire = backend.try_take  # type: ignore[method-assign]
            self.check_limit = backend.take  # type: ignore[method-assign]
            self.get_usage = backend.usage  # type: ignore[method-assign]
            self.reset = backend.reset  # type: ignore[method-assign]

    def check_limit(self, key: str, cost: int = 1) -> LimitResult:
        """Take ``cost`` tokens for ``key`` if it has them; the full decision."""
        try:
            result: LimitResult = self.backend.take(key, cost)
            return result
        except BackendError as exc:
            return self._failed(exc)

    def try_acquire(self, key: str, cost: int = 1) -> bool:
        """Take ``cost`` tokens for ``key`` if it has them; True when taken."""
        try:
            return bool(self.backend.try_take(key, cost))
        except BackendError as exc:
            return self._failed(exc).allowed

    def check_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        """One check per key in one backend call (one round trip for Redis)."""
        try:
            results: List[LimitResult] = self.backend.take_many(keys, cost)
            return results
        except BackendError as exc:
            return self._failed_many(exc, len(keys))

    def get_usage(self, key: str) -> int:
        """Tokens of ``key``'s bucket in use now (0 when full or unknown).
        Raises BackendError when the backend cannot tell."""
        return int(self.backend.usage(key))

    def reset(self, key: str) -> None:
        """Refill ``key``'s bucket. Raises BackendError when storage fails."""
        self.backend.reset(key)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "RateLimiter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRateLimiter(_Policy):
    """RateLimiter for asyncio code: the same four operations as coroutines.
    Works with asyncio backends, and with in-process backends (whose calls
    never block) directly."""

    def __init__(self, backend: Any, fail_open: bool = True, log_interval: float = 10.0) -> None:
        super().__init__(backend, fail_open, log_interval)
        self._native = inspect.iscoroutinefunction(backend.take)

    async def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self.backend, name)
        return await method(*args) if self._native else method(*args)

    async def check_limit(self, key: str, cost: int = 1) -> LimitResult:
        """Take ``cost`` tokens for ``key`` if it has them; the full decision."""
        try:
            result: LimitResult = await self._call("take", key, cost)
            return result
        except BackendError as exc:
            return self._failed(exc)

    async def try_acquire(self, key: str, cost: int = 1) -> bool:
        """Take ``cost`` tokens for ``key`` if it has them; True when taken."""
        try:
            return bool(await self._call("try_take", key, cost))
        except BackendError as exc:
            return self._failed(exc).allowed

    async def check_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        """One check per key in one backend call."""
        try:
            results: List[LimitResult] = await self._call("take_many", keys, cost)
            return results
        except BackendError as exc:
            return self._failed_many(exc, len(keys))

    async def get_usage(self, key: str) -> int:
        """Tokens of ``key``'s bucket in use now."""
        return int(await self._call("usage", key))

    async def reset(self, key: str) -> None:
        """Refill ``key``'s bucket."""
        await self._call("reset", key)

    async def aclose(self) -> None:
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()
        else:
            self.backend.close()

    async def __aenter__(self) -> "AsyncRateLimiter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
