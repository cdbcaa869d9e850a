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


# --- the rate notation ---------------------------------------------------------

from guardian import Limits, MemoryBackend  # noqa: E402


@pytest.mark.parametrize("text, capacity, rate, interval", [
    ("100/minute", 100, 100, 60),
    ("10 per second", 10, 10, 1),
    ("5/30s", 5, 5, 30),
    ("1000/day", 1000, 1000, 86400),
    ("100/minute; burst 20", 20, 100, 60),
    ("  100 / Minute , burst=20 ", 20, 100, 60),
    ("3 per 7 seconds", 3, 3, 7),
    ("2/hours", 2, 2, 3600),
    ("5/0.5s", 5, 5, 0.5),
    ("1 per 1.5 h", 1, 1, 5400),
])
def test_parse_reads_the_notations_people_write(text: str, capacity: int, rate: int, interval: float) -> None:
    parsed = TokenBucketConfig.parse(text)
    assert parsed == TokenBucketConfig(capacity, rate, interval)
    assert (parsed.emission_ticks, parsed.ticks_per_ns) == (
        TokenBucketConfig(capacity, rate, interval).emission_ticks,
        TokenBucketConfig(capacity, rate, interval).ticks_per_ns)


def test_parse_takes_a_burst_keyword() -> None:
    assert TokenBucketConfig.parse("100/minute", burst=20) == TokenBucketConfig(20, 100, 60)
    with pytest.raises(ConfigurationError, match="gives a burst, and burst=5 gives another"):
        TokenBucketConfig.parse("100/minute; burst 20", burst=5)


@pytest.mark.parametrize("text, message", [
    ("", "cannot read '' as a rate limit: write it like '100/minute'"),
    ("100", "cannot read '100'"),
    ("abc/second", "cannot read"),
    ("1.5/second", "cannot read"),
    ("-1/second", "cannot read"),
    ("0/second", "admits nothing"),
    ("10/fortnight", "unknown time unit 'fortnight'"),
    ("10/0s", "zero period"),
    ("10/second; burst 0", "burst must be an int of at least 1"),
    ("10/second and 5/day", "holds several limits: use Limits.parse"),
    (42, "a rate limit must be a str"),
    ("10/second; burst 99999999999999999999999", "too long"),
])
def test_parse_says_what_is_wrong(text: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        TokenBucketConfig.parse(text)  # type: ignore[arg-type]


def test_limits_parse_and_refuse() -> None:
    limits = Limits.parse("10/second and 1000/day")
    assert list(limits) == [TokenBucketConfig(10, 10, 1), TokenBucketConfig(1000, 1000, 86400)]
    assert limits.capacity == 10 and len(limits) == 2 and limits == Limits("10/second", "1000/day")
    assert Limits.parse("10/second & 100/minute; burst 5")[1] == TokenBucketConfig(5, 100, 60)
    for bad, message in [("10/second and", "an empty limit"), ("and 10/second", "an empty limit"),
                         ("10/s and 10/second", "the same limit is given twice")]:
        with pytest.raises(ConfigurationError, match=message):
            Limits.parse(bad)
    with pytest.raises(ConfigurationError, match="at most 8 limits"):
        Limits(*[f"{i}/second" for i in range(1, 10)])
    with pytest.raises(ConfigurationError, match="at least one limit"):
        Limits()


def test_a_backend_takes_the_notation_wherever_it_takes_a_config() -> None:
    assert MemoryBackend("100/minute").config == TokenBucketConfig(100, 100, 60)
    assert MemoryBackend("10/second and 1000/day").config == Limits.parse("10/second and 1000/day")
    with pytest.raises(ConfigurationError, match="cannot read 'ten a second'"):
        MemoryBackend("ten a second")
    with pytest.raises(ConfigurationError, match="config must be a TokenBucketConfig, Limits or a str"):
        MemoryBackend(100)  # type: ignore[arg-type]


def test_the_docs_snippets_on_limits_run() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "core.md").read_text()
    section = text.split("## Limits in words", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```python\n")[1:]
    assert blocks
    for block in blocks:
        exec(compile(block.split("```", 1)[0], "docs/core.md", "exec"), {})
