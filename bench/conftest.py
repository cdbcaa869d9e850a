"""Benchmark plumbing: builds the floor extension on first use, holds the key
sets, and measures a subject in steady state.

Run from the repository root:  python -m pytest bench/ --benchmark-only
(``pytest tests/`` never collects this folder.)
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Callable, List, Tuple

import pytest
from _build import build_floor
from _machine import Usage

#: Keys are all 11 ASCII bytes long, so hashing costs the same in both shapes.
N_KEYS = 100_000
ONE_KEY_BATCH = 1_000

Subject = Callable[[List[str]], Tuple[Callable[[], None], Callable[[], None]]]


def _key(i: int) -> str:
    return f"user:{i:06d}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-warmup",
        type=float,
        default=1.2,
        help="seconds each subject runs before it is measured (default 1.2: "
        "longer than the 1 s windows of the log-based peers, so their "
        "logs are full)",
    )


@pytest.fixture(scope="session")
def floor() -> ModuleType:
    return build_floor()


@pytest.fixture(scope="session")
def one_key() -> List[str]:
    """The same key object ONE_KEY_BATCH times."""
    return [_key(42)] * ONE_KEY_BATCH


@pytest.fixture(scope="session")
def many_keys() -> List[str]:
    """N_KEYS distinct keys, visited in an order unrelated to their
    allocation (as real traffic would), one pass per round."""
    keys = [_key(i) for i in range(N_KEYS)]
    step = 7919  # prime to N_KEYS, so this is a permutation
    return [keys[(i * step) % N_KEYS] for i in range(N_KEYS)]


@pytest.fixture
def measure(benchmark, request: pytest.FixtureRequest):
    """measure(subject, keys): build the subject, run it for --bench-warmup
    seconds (every key inserted, every window filled), then benchmark one
    pass over ``keys``. The report divides each round by ``calls``; the
    CPU share other processes used meanwhile is kept beside it."""
    warmup = request.config.getoption("--bench-warmup")
    closers: List[Callable[[], None]] = []

    def run(subject: Subject, keys: List[str]) -> None:
        batch, close = subject(keys)
        closers.append(close)
        deadline = time.perf_counter() + warmup
        batch()
        while time.perf_counter() < deadline:
            batch()
        benchmark.extra_info["calls"] = len(keys)
        usage = Usage()
        usage.start()
        benchmark(batch)
        other, stolen = usage.stop()
        benchmark.extra_info["other_load"] = round(other, 3)
        benchmark.extra_info["stolen"] = round(stolen, 3)

    yield run
    for close in closers:
        close()
