"""Several limits on one key: a two-limit check against a one-limit check
(issue 10 item 6 aims at <= 2x), on the memory backend, local and shared.

    python -m pytest bench/test_bench_limits.py --benchmark-only --benchmark-group-by=group

Both limits are far from running out (every check is admitted), so each
subject measures the take path: one table, or two tables plus the all-or-
nothing bookkeeping.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, List, Tuple

import pytest

from guardian import Limits, MemoryBackend, TokenBucketConfig

ONE = TokenBucketConfig(10**9, 10**9)
TWO = Limits(ONE, TokenBucketConfig(10**12, 10**9, 3600))
SLOTS = 1 << 18


def _backend(config: Any, shared: bool) -> Tuple[MemoryBackend, Callable[[], None]]:
    name = f"bench-limits-{os.getpid()}-{uuid.uuid4().hex[:8]}" if shared else None
    backend = MemoryBackend(config, shared=name, slots=SLOTS)

    def close() -> None:
        backend.close()
        if name is not None:
            for i in range(len(backend.tables)):
                MemoryBackend.unlink(f"{name}.{i}" if len(backend.tables) > 1 else name)

    return backend, close


def _subject(config: Any, shared: bool, method: str) -> Callable[[List[str]], Tuple[Callable[[], None], Callable[[], None]]]:
    def factory(keys: List[str]) -> Tuple[Callable[[], None], Callable[[], None]]:
        backend, close = _backend(config, shared)
        call = getattr(backend, method)

        def run() -> None:
            for k in keys:
                call(k)

        return run, close

    return factory


SUBJECTS = {
    f"{n}-limit-{where}-{method}": _subject(config, where == "shared", method)
    for n, config in (("one", ONE), ("two", TWO))
    for where in ("local", "shared")
    for method in ("try_take", "take")
}


@pytest.mark.benchmark(group="limits: 1 key")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_limits_one_key(measure: Any, one_key: List[str], name: str) -> None:
    measure(SUBJECTS[name], one_key)


@pytest.mark.benchmark(group="limits: 100k keys")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_limits_100k_keys(measure: Any, many_keys: List[str], name: str) -> None:
    measure(SUBJECTS[name], many_keys)
