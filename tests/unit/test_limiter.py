"""The façade: RateLimiter / AsyncRateLimiter over any backend."""

from __future__ import annotations

import logging
from types import ModuleType
from typing import List, Sequence

import pytest
from conftest import ManualClock

from guardian import (
    AsyncRateLimiter,
    BackendUnavailableError,
    InvalidArgumentError,
    LimitResult,
    MemoryBackend,
    RateLimiter,
    TokenBucketConfig,
)

CONFIG = TokenBucketConfig(5, 1)


class BrokenBackend:
    """A backend whose storage is down: every call raises BackendError.
    (A stand-in for an unreachable store, not for Redis: the Redis backend
    is tested against real servers.)"""

    can_fail = True
    config = CONFIG

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        raise BackendUnavailableError("connection refused")

    def take(self, key: str, cost: int = 1) -> LimitResult:
        self._fail()
        raise AssertionError

    def try_take(self, key: str, cost: int = 1) -> bool:
        self._fail()
        raise AssertionError

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        self._fail()
        raise AssertionError

    def usage(self, key: str) -> int:
        self._fail()
        raise AssertionError

    def reset(self, key: str) -> None:
        self._fail()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fail_open", [True, False])
def test_failure_policy_decides_and_never_raises(fail_open: bool, caplog: pytest.LogCaptureFixture) -> None:
    backend = BrokenBackend()
    limiter = RateLimiter(backend, fail_open=fail_open, breaker_threshold=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="guardian"):
        for _ in range(100):
            assert limiter.try_acquire("k") is fail_open
            r = limiter.check_limit("k")
            assert r.allowed is fail_open and r.limit == 5
        many = limiter.check_many(["a", "b", "c"])
    assert [r.allowed for r in many] == [fail_open] * 3
    assert backend.calls == 201 and limiter.failures == 203
    warnings = [r for r in caplog.records if r.name == "guardian"]
    assert len(warnings) == 1  # logged once per interval, not once per request
    assert ("allowing" if fail_open else "denying") in warnings[0].getMessage()


def test_usage_and_reset_report_backend_failure() -> None:
    limiter = RateLimiter(BrokenBackend())  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailableError):
        limiter.get_usage("k")
    with pytest.raises(ConnectionError):  # BackendUnavailableError is one
        limiter.reset("k")


def test_fail_open_must_be_a_bool() -> None:
    with pytest.raises(TypeError):
        RateLimiter(MemoryBackend(CONFIG), fail_open="yes")  # type: ignore[arg-type]


def test_sync_limiter_on_memory(core: ModuleType, clock: ManualClock) -> None:
    with RateLimiter(MemoryBackend(CONFIG, clock=clock)) as limiter:
        assert limiter.check_limit("k", 3).remaining == 2
        assert limiter.try_acquire("k", 2)
        assert not limiter.try_acquire("k")
        assert limiter.get_usage("k") == 5
        limiter.reset("k")
        assert limiter.get_usage("k") == 0
        with pytest.raises(InvalidArgumentError):
            limiter.check_limit("k", 6)


async def test_async_limiter_on_memory(core: ModuleType, clock: ManualClock) -> None:
    async with AsyncRateLimiter(MemoryBackend(CONFIG, clock=clock)) as limiter:
        assert (await limiter.check_limit("k", 3)).remaining == 2
        assert await limiter.try_acquire("k", 2)
        assert not await limiter.try_acquire("k")
        assert await limiter.get_usage("k") == 5
        assert [r.allowed for r in await limiter.check_many(["k", "j"])] == [False, True]
        await limiter.reset("k")
        assert await limiter.get_usage("k") == 0


class AsyncBrokenBackend:
    """BrokenBackend for asyncio."""

    can_fail = True
    config = CONFIG

    def __init__(self) -> None:
        self.sync = BrokenBackend()

    async def take(self, key: str, cost: int = 1) -> LimitResult:
        return self.sync.take(key, cost)

    async def try_take(self, key: str, cost: int = 1) -> bool:
        return self.sync.try_take(key, cost)

    async def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        return self.sync.take_many(keys, cost)

    async def usage(self, key: str) -> int:
        return self.sync.usage(key)

    async def reset(self, key: str) -> None:
        self.sync.reset(key)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("fail_open", [True, False])
async def test_async_failure_policy(fail_open: bool) -> None:
    limiter = AsyncRateLimiter(AsyncBrokenBackend(), fail_open=fail_open)
    assert await limiter.try_acquire("k") is fail_open
    assert (await limiter.check_limit("k")).allowed is fail_open
    assert limiter.failures == 2
