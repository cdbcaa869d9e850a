"""An injected clock must return integer nanoseconds (issue 10 item 1): a
clock in seconds, or of another type, is refused when the backend is
built, with a message naming the clock and the unit, never a struct.error
on the first check."""

from __future__ import annotations

import time

import pytest

from guardian import TokenBucketConfig
from guardian._errors import MisuseError
from guardian.backends import MemoryBackend

CFG = TokenBucketConfig(5, 1)


def seconds() -> float:
    return 1.5


@pytest.mark.parametrize("clock, shown", [
    (seconds, "returned 1.5 (float)"),
    (time.monotonic, "returned"),
    (lambda: True, "returned True (bool)"),
    (lambda: "1", "returned '1' (str)"),
    (lambda: None, "returned None (NoneType)"),
    (lambda: 1 << 64, "fit in 64 bits"),
])
@pytest.mark.parametrize("config", [CFG, "3/second and 5/minute"])
def test_a_clock_not_in_integer_nanoseconds_is_refused(clock, shown, config) -> None:
    with pytest.raises(MisuseError) as refused:
        MemoryBackend(config, clock=clock)
    text = str(refused.value)
    assert shown in text and "integer nanoseconds" in text
    name = getattr(clock, "__qualname__", "")
    assert name in text  # names the clock: 'seconds', 'monotonic', '<lambda>'


def test_float_seconds_get_the_fix_named() -> None:
    with pytest.raises(MisuseError, match="time.monotonic_ns, not time.monotonic"):
        MemoryBackend(CFG, clock=time.monotonic)
    with pytest.raises(MisuseError, match="callable"):
        MemoryBackend(CFG, clock=1.5)  # type: ignore[arg-type]


def test_shared_tables_refuse_it_too_and_create_nothing() -> None:
    name = f"guardian-clock-{time.monotonic_ns()}"
    with pytest.raises(MisuseError):
        MemoryBackend(CFG, shared=name, clock=seconds)
    assert not MemoryBackend.unlink(name)  # refused before any table was made


def test_an_integer_clock_works() -> None:
    now = [10**12]
    b = MemoryBackend(CFG, clock=lambda: now[0])
    assert [b.try_take("k") for _ in range(6)] == [True] * 5 + [False]
    now[0] += 10**9
    assert b.try_take("k")
    assert MemoryBackend(CFG, clock=time.monotonic_ns).try_take("k")
