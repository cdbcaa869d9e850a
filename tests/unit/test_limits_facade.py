"""The façade with several limits on one key (issue 10 items 2 and 6):
RateLimiter(MemoryBackend("10/second and 1000/day")) and fail_open="local"
with Limits."""

from __future__ import annotations

import pytest

from guardian import Limits, RateLimiter, TokenBucketConfig
from guardian.backends import MemoryBackend, RedisBackend
from guardian.limiter import local_config


class Clock:
    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now


def test_the_facade_with_limits_in_words() -> None:
    clock = Clock()
    limiter = RateLimiter(MemoryBackend("3/second and 5/minute", clock=clock))
    assert [limiter.try_acquire("a") for _ in range(4)] == [True, True, True, False]
    r = limiter.check_limit("a")
    assert not r.allowed and r.retry_after == pytest.approx(1 / 3, abs=1e-6) and r.limit == 3
    assert limiter.get_usage("a") == 3
    clock.now += 2 * 10**9  # the second refilled; the minute has 2 left
    assert [limiter.try_acquire("a") for _ in range(3)] == [True, True, False]
    r = limiter.check_limit("a")
    assert not r.allowed and r.limit == 5 and r.retry_after > 5  # now the minute denies
    assert [x.allowed for x in limiter.check_many(["b", "c", "b"])] == [True, True, True]
    limiter.reset("a")
    assert limiter.get_usage("a") == 0 and limiter.try_acquire("a")
    with pytest.raises(TypeError):
        limiter.check_many("abc")  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_fail_open_local_follows_every_limit(share: float) -> None:
    # Nothing listens on port 1: every check fails, the local fallback decides.
    backend = RedisBackend("4/hour and 6/day", url="redis://127.0.0.1:1/0")
    limiter = RateLimiter(backend, fail_open="local", local_share=share)
    admitted = sum(limiter.try_acquire("k") for _ in range(10))
    assert admitted == (4 if share == 1.0 else 2)
    assert limiter.check_limit("other").allowed
    backend.close()


def test_local_config_scales_each_limit() -> None:
    limits = Limits.parse("10/second and 1000/day")
    assert local_config(limits, 0.5) == Limits(TokenBucketConfig(5, 5, 1), TokenBucketConfig(500, 500, 86400))
    assert local_config(limits, 1.0) is limits
