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
import re
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

from ._errors import ConfigurationError

__all__ = ["TokenBucketConfig", "Limits", "as_limits", "MAX_TICKS_PER_NS", "MAX_BURST_TICKS", "MAX_LIMITS"]

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


#: Units of the rate notation, in seconds (singular, plural and short forms).
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_RATE = re.compile(
    rf"(?P<count>\d+)\s*(?:/|\s+per\s+)\s*(?P<every>{_NUMBER})?\s*(?P<unit>[a-z]+)"
    rf"(?:\s*[;,]?\s*burst\s*[=:]?\s*(?P<burst>\d+))?",
    re.ASCII,  # 0-9 only: int() would read other scripts' digits too
)
_EXAMPLES = "'100/minute', '10 per second', '5/30s', '1000/day' or '100/minute; burst 20'"


def _parse_one(text: str, burst: Optional[int]) -> "TokenBucketConfig":
    if not isinstance(text, str):
        raise ConfigurationError(f"a rate limit must be a str like {_EXAMPLES}, got {text!r}")
    clean = text.strip().lower()
    m = _RATE.fullmatch(clean)
    if m is None:
        if " and " in f" {clean} ":
            raise ConfigurationError(
                f"{text!r} holds several limits: use Limits.parse({text!r}) (all must admit a check)")
        raise ConfigurationError(f"cannot read {text!r} as a rate limit: write it like {_EXAMPLES}")
    unit = _UNITS.get(m.group("unit"))
    if unit is None:
        raise ConfigurationError(
            f"unknown time unit {m.group('unit')!r} in {text!r}: use second, minute, hour or day "
            "(or s, m, h, d)")
    try:
        count = int(m.group("count"))
        every = Fraction(m.group("every")) if m.group("every") else Fraction(1)
        written_burst = None if m.group("burst") is None else int(m.group("burst"))
    except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits)
        raise ConfigurationError(f"a number in {text[:60]!r}... is too large to be a rate limit") from None
    if count < 1:
        raise ConfigurationError(f"{text!r} admits nothing: the count must be at least 1")
    if every <= 0:
        raise ConfigurationError(f"{text!r} has a zero period")
    if written_burst is not None:
        if burst is not None:
            raise ConfigurationError(f"{text!r} gives a burst, and burst={burst!r} gives another")
        burst = written_burst
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ConfigurationError(f"burst must be an int of at least 1, got {burst!r}")
    interval = every * unit
    return TokenBucketConfig(count if burst is None else burst, count,
                             int(interval) if interval.denominator == 1 else float(interval))


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

    @classmethod
    def parse(cls, text: str, *, burst: Optional[int] = None) -> "TokenBucketConfig":
        """A limit written the way people write rates: ``"100/minute"``,
        ``"10 per second"``, ``"5/30s"``, ``"1000/day"``. It refills that
        many tokens per period and holds as many (a burst of the count),
        unless a burst is given: ``"100/minute; burst 20"`` or ``burst=20``.
        Raises ConfigurationError, saying what is wrong, for anything else.
        """
        return _parse_one(text, burst)

    @property
    def emission_interval(self) -> float:
        """Seconds between two tokens (T)."""
        return self.emission_ticks / self.ticks_per_ns / 1e9

    @property
    def burst_ticks(self) -> int:
        """The burst tolerance C*T in ticks."""
        return self.capacity * self.emission_ticks


#: Most limits one key may carry at once (the core decides them on the stack).
MAX_LIMITS = 8


class Limits(Sequence[TokenBucketConfig]):
    """Several limits on one key, all or nothing: a check is admitted only
    when every limit admits it, and then takes from all of them.

    ``Limits.parse("10/second and 1000/day")`` or
    ``Limits(TokenBucketConfig(10, 10), TokenBucketConfig(1000, 1000, 86400))``.
    ``capacity`` is the smallest capacity: the largest cost a check may ask.
    """

    __slots__ = ("configs",)

    def __init__(self, *configs: Any) -> None:
        if not configs:
            raise ConfigurationError("Limits needs at least one limit")
        if len(configs) > MAX_LIMITS:
            raise ConfigurationError(f"at most {MAX_LIMITS} limits per key, got {len(configs)}")
        made = tuple(TokenBucketConfig.parse(c) if isinstance(c, str) else c for c in configs)
        for c in made:
            if not isinstance(c, TokenBucketConfig):
                raise ConfigurationError(f"each limit must be a TokenBucketConfig or a str, got {c!r}")
        if len(set(made)) != len(made):
            raise ConfigurationError(f"the same limit is given twice in {made}")
        self.configs: Tuple[TokenBucketConfig, ...] = made

    @classmethod
    def parse(cls, text: str) -> "Limits":
        """``"10/second and 1000/day"`` (each part as TokenBucketConfig.parse
        reads it, joined by "and" or "&")."""
        if not isinstance(text, str):
            raise ConfigurationError(f"limits must be a str like '10/second and 1000/day', got {text!r}")
        parts = [p.strip() for p in re.split(r"\band\b|&", text, flags=re.IGNORECASE)]
        if any(not p for p in parts):
            raise ConfigurationError(f"an empty limit in {text!r}: write it like '10/second and 1000/day'")
        return cls(*(TokenBucketConfig.parse(p) for p in parts))

    @property
    def capacity(self) -> int:
        return min(c.capacity for c in self.configs)

    def __len__(self) -> int:
        return len(self.configs)

    def __getitem__(self, i: Any) -> Any:
        return self.configs[i]

    def __iter__(self) -> Iterator[TokenBucketConfig]:
        return iter(self.configs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limits) and other.configs == self.configs

    def __hash__(self) -> int:
        return hash(self.configs)

    def __repr__(self) -> str:
        return f"Limits{self.configs!r}"


def as_limits(value: Any) -> "Union[TokenBucketConfig, Limits]":
    """What a backend accepts as its limit: a TokenBucketConfig, Limits, or
    the notation of either ("100/minute", "10/second and 1000/day")."""
    if isinstance(value, (TokenBucketConfig, Limits)):
        return value
    if isinstance(value, str):
        if re.search(r"\band\b|&", value, flags=re.IGNORECASE):
            return Limits.parse(value)
        return TokenBucketConfig.parse(value)
    raise ConfigurationError(
        f"config must be a TokenBucketConfig, Limits or a str like '100/minute', got {value!r}")
