"""The circuit breaker and the limiter's use of it (no server: a stub
backend that fails on demand; Redis itself is tested against real servers)."""

from __future__ import annotations

from typing import List, Sequence

import pytest

from guardian import (
    BackendUnavailableError,
    InvalidArgumentError,
    LimitResult,
    MemoryBackend,
    RateLimiter,
    TokenBucketConfig,
)
from guardian._breaker import CircuitBreaker

CONFIG = TokenBucketConfig(5, 1, 3600)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_probes_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=2, cooldown=1.0, clock=clock)
    assert b.allow() and not b.failure() and b.allow()
    assert b.failure() and b.is_open and b.opened == 1
    assert not b.allow() and b.retry_after() == 1.0
    clock.t += 1.0
    assert b.allow()          # the probe
    assert not b.allow()      # only one per cooldown
    assert not b.failure()    # a failed probe keeps it open...
    clock.t += 1.0
    assert b.allow() and b.success() and not b.is_open  # ...a good one closes it
    assert b.retry_after() == 0.0


@pytest.mark.parametrize("threshold, cooldown", [(0, 1.0), (True, 1.0), (2, 0), (2, -1.0), (2, "1")])
def test_breaker_arguments(threshold: object, cooldown: object) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, cooldown)  # type: ignore[arg-type]


class Flaky:
    """A backend that fails while ``down`` is set."""

    can_fail = True
    config = CONFIG

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.memory = MemoryBackend(CONFIG)

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise BackendUnavailableError("down")

    def take(self, key: str, cost: int = 1) -> LimitResult:
        self._call()
        return self.memory.take(key, cost)

    def try_take(self, key: str, cost: int = 1) -> bool:
        self._call()
        return bool(self.memory.try_take(key, cost))

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        self._call()
        return self.memory.take_many(keys, cost)

    def usage(self, key: str) -> int:
        return 0

    def reset(self, key: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_open_breaker_keeps_checks_off_the_backend() -> None:
    backend = Flaky()
    limiter = RateLimiter(backend, fail_open=False)  # type: ignore[arg-type]
    clock = Clock()
    assert limiter.breaker is not None
    limiter.breaker._clock = clock
    backend.down = True
    results = [limiter.try_acquire("k") for _ in range(100)]
    assert results == [False] * 100 and backend.calls == 3
    assert limiter.errors == 3 and limiter.failures == 100
    denied = limiter.check_limit("k")
    assert not denied.allowed and denied.retry_after == 1.0
    with pytest.raises(InvalidArgumentError):
        limiter.check_limit("k", 6)  # arguments are checked with the backend away too
    backend.down = False
    clock.t += 1.0
    assert limiter.try_acquire("k") and backend.calls == 4 and not limiter.breaker.is_open


def test_no_breaker_calls_every_time() -> None:
    backend = Flaky()
    backend.down = True
    limiter = RateLimiter(backend, breaker_threshold=None)  # type: ignore[arg-type]
    assert all(limiter.try_acquire("k") for _ in range(10)) and backend.calls == 10


def test_local_fallback_has_the_same_config() -> None:
    backend = Flaky()
    backend.down = True
    limiter = RateLimiter(backend, fail_open="local")  # type: ignore[arg-type]
    assert [limiter.try_acquire("k") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.check_limit("j", 5).remaining == 0


@pytest.mark.parametrize("bad", ["yes", "LOCAL", None, 1])
def test_fail_open_values(bad: object) -> None:
    with pytest.raises(TypeError):
        RateLimiter(Flaky(), fail_open=bad)  # type: ignore[arg-type]


def test_memory_backend_keeps_its_direct_path() -> None:
    backend = MemoryBackend(CONFIG)
    limiter = RateLimiter(backend)
    assert limiter.try_acquire == backend.try_take and limiter.check_limit == backend.take
