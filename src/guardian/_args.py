"""Argument checks for a key and a cost, in Python.

The C core checks its arguments itself, with the same messages; everything
that validates in Python (the pure-Python core, the Redis packing, the
failure policy, the sidecar) uses these, so a bad argument is refused the
same way before any state or network is touched.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from . import _region
from ._errors import ArgumentTypeError, InvalidArgumentError, MisuseError

__all__ = ["check_key", "check_cost", "check_keys", "check_clock"]


def check_key(key: Any) -> bytes:
    if not isinstance(key, str):
        raise ArgumentTypeError(f"key must be a str, got {type(key).__name__}")
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"key is not valid Unicode text: {exc}") from exc
    if not data:
        raise InvalidArgumentError("key must not be empty")
    if len(data) > _region.MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"key is {len(data)} bytes in UTF-8, the maximum is {_region.MAX_KEY_BYTES}"
        )
    return data


def check_cost(cost: Any, capacity: int, lowest: int = 1) -> int:
    """``cost`` as an int in [lowest, capacity]; a peek passes lowest=0."""
    if type(cost) is not int:
        if isinstance(cost, bool) or not hasattr(cost, "__index__"):
            raise ArgumentTypeError(f"cost must be an int, got {type(cost).__name__}")
        cost = cost.__index__()
    if cost < lowest:
        raise InvalidArgumentError(f"cost must be at least {lowest}, got {cost}")
    if cost > capacity:
        raise InvalidArgumentError(
            f"cost {cost} is above the bucket's capacity {capacity}; it could never be allowed"
        )
    return int(cost)


def check_keys(keys: Any) -> Sequence[str]:
    """``keys`` as a list or tuple: a str is a key, not a sequence of
    one-character keys, and an iterator is read once here, so a fallback
    after a failed backend call decides the same keys."""
    if isinstance(keys, (list, tuple)):
        return keys
    if isinstance(keys, (str, bytes, bytearray)):
        raise ArgumentTypeError(
            f"keys must be a sequence of str, got a {type(keys).__name__} (for one key: [key])")
    try:
        return list(keys)
    except TypeError:
        raise ArgumentTypeError(f"keys must be a sequence of str, got {type(keys).__name__}") from None


def check_clock(clock: Any) -> Any:
    """An injected clock (``clock=``) must be a callable returning integer
    nanoseconds, like time.monotonic_ns: called once here, so a clock in
    seconds (time.monotonic, ``lambda: 1.5``) or of another type is
    refused by name when the object is built, not on its first check."""
    if not callable(clock):
        raise MisuseError(f"clock must be a callable returning integer nanoseconds "
                          f"(like time.monotonic_ns), got {clock!r}")
    now = clock()
    name = getattr(clock, "__qualname__", None) or repr(clock)
    if isinstance(now, bool) or not isinstance(now, int):
        hint = " (float seconds? pass time.monotonic_ns, not time.monotonic)" if isinstance(now, float) else ""
        raise MisuseError(
            f"clock {name!r} returned {now!r} ({type(now).__name__}): a clock must return integer "
            f"nanoseconds, like time.monotonic_ns{hint}")
    if not 0 <= now < 1 << 63:
        raise MisuseError(f"clock {name!r} returned {now!r}: integer nanoseconds from 0 to 2**63 - 1 "
                          f"(must fit in 64 bits, like time.monotonic_ns)")
    return clock
