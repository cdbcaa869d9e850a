"""``local_share``: the in-process fallback of ``fail_open="local"`` scaled to
a fraction of the limit (issue 11 item 5)."""

from __future__ import annotations

import pytest
from test_limiter import AsyncBrokenBackend, BrokenBackend

from guardian import AsyncRateLimiter, ConfigurationError, InvalidArgumentError, RateLimiter, TokenBucketConfig
from guardian.limiter import local_config


def test_local_config_scales_capacity_and_rate_exactly() -> None:
    config = TokenBucketConfig(100, 10, 1)
    assert local_config(config, 1.0) is config
    quarter = local_config(config, 0.25)
    assert quarter.capacity == 25 and quarter.emission_ticks == 4 * config.emission_ticks
    third = local_config(TokenBucketConfig(10, 3, 7), 1 / 3)
    # floor(10 / 3) tokens; 1 per 7 s, exactly (no float drift)
    assert third.capacity == 3 and third.emission_ticks == 7 * 10**9 and third.ticks_per_ns == 1
    assert local_config(TokenBucketConfig(3, 1), 0.1).capacity == 1  # at least one token


@pytest.mark.parametrize("share", [0, -0.5, 1.5, float("nan"), "half", True])
def test_a_bad_share_is_refused_at_construction(share: object) -> None:
    with pytest.raises(ConfigurationError, match="local_share"):
        RateLimiter(BrokenBackend(), fail_open="local", local_share=share)  # type: ignore[arg-type]


def test_the_fallback_admits_its_share() -> None:
    limiter = RateLimiter(BrokenBackend(), fail_open="local", local_share=0.4)  # type: ignore[arg-type]
    # CONFIG of test_limiter: capacity 5, so the local bucket holds 2
    assert [limiter.try_acquire("k") for _ in range(4)] == [True, True, False, False]
    assert [r.allowed for r in limiter.check_many(["j", "j", "j"])] == [True, True, False]
    # a cost the limit allows but the local share cannot: denied, not an error
    r = limiter.check_limit("big", 4)
    assert not r.allowed and r.limit == 2
    assert [r.allowed for r in limiter.check_many(["x", "y"], 4)] == [False, False]
    with pytest.raises(InvalidArgumentError):  # above the real limit: still the caller's error
        limiter.check_limit("big", 6)


async def test_the_async_fallback_admits_its_share() -> None:
    limiter = AsyncRateLimiter(AsyncBrokenBackend(), fail_open="local", local_share=0.4)
    assert [await limiter.try_acquire("k") for _ in range(3)] == [True, True, False]
