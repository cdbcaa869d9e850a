"""limiter.limit(...) decorator and limiter.acquire(...), on a manual clock:
acquire's sleeps advance the clock instead of sleeping."""

from __future__ import annotations

from typing import Any, List

import pytest
from conftest import ManualClock

from guardian import AsyncRateLimiter, MemoryBackend, RateLimiter, RateLimitExceeded, TokenBucketConfig


def sync_limiter(clock: ManualClock, capacity: int = 2, rate: float = 1) -> RateLimiter:
    limiter = RateLimiter(MemoryBackend(TokenBucketConfig(capacity, rate), clock=clock))
    sleeps: List[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
    limiter._sleep = sleep  # type: ignore[method-assign]
    limiter._now = lambda: clock.ns / 1e9  # type: ignore[method-assign]
    limiter.sleeps = sleeps  # type: ignore[attr-defined]
    return limiter


def async_limiter(clock: ManualClock, capacity: int = 2, rate: float = 1) -> AsyncRateLimiter:
    limiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(capacity, rate), clock=clock))

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
    limiter._sleep = sleep  # type: ignore[method-assign]
    limiter._now = lambda: clock.ns / 1e9  # type: ignore[method-assign]
    return limiter


def test_decorator_sync_with_fixed_and_callable_key(clock: ManualClock) -> None:
    limiter = sync_limiter(clock)

    @limiter.limit(key="api")
    def call(x: int) -> int:
        return x * 2

    assert call(1) == 2 and call(2) == 4
    with pytest.raises(RateLimitExceeded) as info:
        call(3)
    assert info.value.result.retry_after == pytest.approx(1.0)
    assert not info.value.result.allowed
    assert call.__name__ == "call"

    @limiter.limit(key=lambda user, **_: f"user:{user}", cost=lambda user, n=1: n)
    def per_user(user: str, n: int = 1) -> str:
        return user

    assert per_user("a", n=2) == "a"
    with pytest.raises(RateLimitExceeded):
        per_user("a")
    assert per_user("b") == "b"


async def test_decorator_sync_limiter_on_async_function(clock: ManualClock) -> None:
    limiter = sync_limiter(clock, capacity=1)

    @limiter.limit(key="k")
    async def fetch() -> str:
        return "ok"

    assert await fetch() == "ok"
    with pytest.raises(RateLimitExceeded):
        await fetch()


async def test_decorator_async_limiter(clock: ManualClock) -> None:
    limiter = async_limiter(clock, capacity=1)

    @limiter.limit(key=lambda n: f"n{n}")
    async def fetch(n: int) -> int:
        return n

    assert await fetch(1) == 1
    with pytest.raises(RateLimitExceeded):
        await fetch(1)
    assert await fetch(2) == 2
    with pytest.raises(TypeError):
        limiter.limit(key="k")(lambda: None)


def test_acquire_waits_retry_after(clock: ManualClock) -> None:
    limiter = sync_limiter(clock, capacity=2, rate=4)  # T = 0.25 s
    start = clock.ns
    for _ in range(6):
        assert limiter.acquire("k").allowed
    # 2 from the burst, then one every 0.25 s: 4 more need exactly 1 s.
    assert (clock.ns - start) / 1e9 == pytest.approx(1.0)
    assert limiter.sleeps == pytest.approx([0.25] * 4)  # type: ignore[attr-defined]


def test_acquire_timeout_raises_without_sleeping_past_it(clock: ManualClock) -> None:
    limiter = sync_limiter(clock, capacity=1, rate=1)
    limiter.acquire("k")
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire("k", timeout=0.5)
    assert info.value.result.retry_after == pytest.approx(1.0)
    assert limiter.sleeps == []  # type: ignore[attr-defined]
    assert limiter.acquire("k", timeout=1.0).allowed
    with pytest.raises(ValueError):
        limiter.acquire("k", timeout=-1)


async def test_async_acquire(clock: ManualClock) -> None:
    limiter = async_limiter(clock, capacity=1, rate=2)
    start = clock.ns
    for _ in range(3):
        assert (await limiter.acquire("k")).allowed
    assert (clock.ns - start) / 1e9 == pytest.approx(1.0)
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire("k", timeout=0.1)


def test_memory_fast_path_survives(clock: ManualClock) -> None:
    limiter = RateLimiter(MemoryBackend(TokenBucketConfig(1, 1), clock=clock))
    assert limiter.try_acquire == limiter.backend.try_take
    assert limiter.check_limit == limiter.backend.take


async def test_acquire_real_sleep_is_short() -> None:
    # No manual clock: the real sleep path, one emission interval of 20 ms.
    limiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(1, 50)))
    await limiter.acquire("k")
    assert (await limiter.acquire("k", timeout=1)).allowed
    sync = RateLimiter(MemoryBackend(TokenBucketConfig(1, 50)))
    sync.acquire("k")
    assert sync.acquire("k", timeout=1).allowed
