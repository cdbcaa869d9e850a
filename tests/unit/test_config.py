from datetime import timedelta

import pytest

from guardian import ConfigurationError, TokenBucketConfig


def test_integer_rate_per_second_is_whole_nanoseconds() -> None:
    c = TokenBucketConfig(100, 10)
    assert (c.emission_ticks, c.ticks_per_ns) == (100_000_000, 1)
    assert c.emission_interval == pytest.approx(0.1)
    assert c.burst_ticks == 100 * 100_000_000


def test_fractional_interval_is_exact_in_ticks() -> None:
    c = TokenBucketConfig(5, 3, refill_interval=7)
    # T = 7/3 s = 7e9 ticks of 1/3 ns: no rounding at all.
    assert (c.emission_ticks, c.ticks_per_ns) == (7_000_000_000, 3)


def test_float_and_timedelta_interval_agree() -> None:
    a = TokenBucketConfig(10, 1, refill_interval=0.1)
    b = TokenBucketConfig(10, 1, refill_interval=timedelta(milliseconds=100))
    assert (a.emission_ticks, a.ticks_per_ns) == (b.emission_ticks, b.ticks_per_ns) == (100_000_000, 1)


def test_fractional_rate() -> None:
    c = TokenBucketConfig(1, 0.5)  # one token every two seconds
    assert (c.emission_ticks, c.ticks_per_ns) == (2_000_000_000, 1)


def test_awkward_rate_is_approximated_within_bound() -> None:
    c = TokenBucketConfig(10, 999_983)
    exact = 1e9 / 999_983
    assert c.ticks_per_ns <= 16
    assert abs(c.emission_ticks / c.ticks_per_ns - exact) < 1 / 17


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 1), "capacity must be at least 1"),
        ((-5, 1), "capacity must be at least 1"),
        ((1.5, 1), "capacity must be an int"),
        ((True, 1), "capacity must be an int"),
        ((10, 0), "refill_rate must be positive"),
        ((10, -1), "refill_rate must be positive"),
        ((10, float("nan")), "refill_rate must be finite"),
        ((10, float("inf")), "refill_rate must be finite"),
        ((10, "5"), "refill_rate must be a number"),
        ((10, 1, -1.0), "refill_interval must be positive"),
        ((10, 1, 0), "refill_interval must be positive"),
        ((10, 1, timedelta(seconds=-1)), "refill_interval must be positive"),
        ((10, 1, float("nan")), "refill_interval must be finite"),
        ((10, 2e9), "faster than one token per nanosecond"),
        ((10**9, 1, 86400 * 365 * 100), "too long"),
    ],
)
def test_bad_config_is_refused(args: tuple, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        TokenBucketConfig(*args)
    assert isinstance(info.value, ValueError)


def test_config_is_frozen_and_comparable() -> None:
    a = TokenBucketConfig(10, 1)
    assert a == TokenBucketConfig(10, 1)
    with pytest.raises(AttributeError):
        a.capacity = 5  # type: ignore[misc]
