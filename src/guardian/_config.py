"""TokenBucketConfig: a bucket's capacity and refill rate, validated once.

The core works in integer *ticks* of 1/Q ns so that fractional emission
intervals do not drift: a rate of 3 per 7 s has T = 7/3 s, which is exact
as 7_000_000_000 ticks of 1/3 ns. Q is the denominator of T in ns, capped at
MAX_TICKS_PER_NS; above the cap T is the closest fraction with a denominator
<= the cap: T is then off by less than 1/17 ns per token (a relative
error below 0.06 / T_ns, i.e. 6e-5 at a million tokens per second), see
docs/core.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from typing import Union

from ._errors import ConfigurationError

__all__ = ["TokenBucketConfig", "MAX_TICKS_PER_NS", "MAX_BURST_TICKS"]

Seconds = Union[float, int, timedelta]

#: Largest Q (ticks per ns). 2**62 ticks then still cover 9 years of table
#: lifetime from its epoch.
MAX_TICKS_PER_NS = 16
#: The burst window C*T in ticks must stay far from int64 overflow.
MAX_BURST_TICKS = 2**62
#: The fastest supported rate is one token per nanosecond.
_MIN_EMISSION_NS = 1


def _exact(value: object, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise ConfigurationError(f"{what} must be a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what} must be finite, got {value!r}")
        # str() gives the shortest decimal that round-trips: 0.1 -> 1/10.
        return Fraction(str(value))
    return Fraction(value)


def _seconds(value: Seconds, what: str) -> Fraction:
    if isinstance(value, timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return Fraction(micros, 1_000_000)
    return _exact(value, what)


@dataclass(frozen=True)
class TokenBucketConfig:
    """A token bucket: ``capacity`` tokens, refilled by ``refill_rate`` tokens
    every ``refill_interval`` seconds (float, int or ``timedelta``).

    ``TokenBucketConfig(100, 10)`` allows bursts of 100 and 10 per second.
    """

    capacity: int
    refill_rate: float
    refill_interval: Seconds = 1.0
    #: Emission interval T = refill_interval / refill_rate as P/Q ns.
    emission_ticks: int = field(init=False, repr=False, compare=False)
    ticks_per_ns: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        capacity = self.capacity
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise ConfigurationError(f"capacity must be an int, got {capacity!r}")
        if capacity < 1:
            raise ConfigurationError(f"capacity must be at least 1, got {capacity}")
        rate = _exact(self.refill_rate, "refill_rate")
        if rate <= 0:
            raise ConfigurationError(f"refill_rate must be positive, got {self.refill_rate!r}")
        interval = _seconds(self.refill_interval, "refill_interval")
        if interval <= 0:
            raise ConfigurationError(
                f"refill_interval must be positive, got {self.refill_interval!r}"
            )
        emission_ns = interval * 1_000_000_000 / rate
        if emission_ns < _MIN_EMISSION_NS:
            raise ConfigurationError(
                "refill_rate / refill_interval is faster than one token per nanosecond"
            )
        if emission_ns.denominator > MAX_TICKS_PER_NS:
            emission_ns = emission_ns.limit_denominator(MAX_TICKS_PER_NS)
        ticks, per_ns = emission_ns.numerator, emission_ns.denominator
        if capacity * ticks >= MAX_BURST_TICKS:
            raise ConfigurationError(
                "capacity * refill_interval / refill_rate is too long "
                f"(the burst window must stay under {MAX_BURST_TICKS // 10**9 // 86400 // 365 // MAX_TICKS_PER_NS} years)"
            )
        object.__setattr__(self, "emission_ticks", ticks)
        object.__setattr__(self, "ticks_per_ns", per_ns)

    @property
    def emission_interval(self) -> float:
        """Seconds between two tokens (T)."""
        return self.emission_ticks / self.ticks_per_ns / 1e9

    @property
    def burst_ticks(self) -> int:
        """The burst tolerance C*T in ticks."""
        return self.capacity * self.emission_ticks
