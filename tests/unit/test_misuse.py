"""Misuse is refused when the object is built, with a message naming the
fix (issue 10), and mypy --strict refuses the same mistakes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guardian import (
    ArgumentTypeError,
    AsyncRateLimiter,
    ConfigurationError,
    InvalidArgumentError,
    MemoryBackend,
    MisuseError,
    RateLimiter,
    TokenBucketConfig,
)
from guardian.backends import AsyncBatchedRedisBackend, AsyncRedisBackend, BatchedRedisBackend, RedisBackend

CONFIG = TokenBucketConfig(5, 1)
URL = "redis://127.0.0.1:1/0"  # never connected: construction does no I/O


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RateLimiter(AsyncRedisBackend(CONFIG, url=URL)), "use AsyncRateLimiter"),  # type: ignore[arg-type]
        (lambda: RateLimiter(AsyncBatchedRedisBackend(CONFIG, url=URL)), "use AsyncRateLimiter"),  # type: ignore[arg-type]
        (lambda: AsyncRateLimiter(RedisBackend(CONFIG, url=URL)), "AsyncRedisBackend"),  # type: ignore[arg-type]
        (lambda: AsyncRateLimiter(BatchedRedisBackend(CONFIG, url=URL)), "AsyncBatchedRedisBackend"),  # type: ignore[arg-type]
        (lambda: RateLimiter(CONFIG), r"did you mean RateLimiter\(MemoryBackend\(config\)\)"),  # type: ignore[arg-type]
        (lambda: AsyncRateLimiter(CONFIG), r"AsyncRateLimiter\(MemoryBackend\(config\)\)"),  # type: ignore[arg-type]
        (lambda: RateLimiter(object()), "takes a backend"),  # type: ignore[arg-type]
        (lambda: RateLimiter("redis://localhost"), "takes a backend"),  # type: ignore[arg-type]
        (lambda: RateLimiter(MemoryBackend(CONFIG), fail_open="yes"), 'True .allow., False .deny. or "local"'),  # type: ignore[arg-type]
    ],
)
def test_misuse_is_refused_at_construction(make: Any, match: str) -> None:
    with pytest.raises(MisuseError, match=match) as info:
        make()
    assert isinstance(info.value, TypeError)  # what Python raises for a wrong argument


@pytest.mark.parametrize("make", [
    lambda: RedisBackend(CONFIG, url=URL, timout=1.0),
    lambda: AsyncRedisBackend(CONFIG, url=URL, timout=1.0),
    lambda: BatchedRedisBackend(CONFIG, url=URL, lease_lifetme=5.0),
    lambda: AsyncBatchedRedisBackend(CONFIG, url=URL, lease_lifetme=5.0),
])
def test_unknown_keywords_are_refused_at_construction(make: Any) -> None:
    with pytest.raises(ConfigurationError, match="unknown Redis client option.*(timout|lease_lifetme)"):
        make()


def test_a_memory_backend_works_with_both_limiters() -> None:
    backend = MemoryBackend(CONFIG)
    assert RateLimiter(backend).try_acquire("k")
    AsyncRateLimiter(backend)  # in-process: never blocks the loop


def test_bad_arguments_to_checks() -> None:
    limiter = RateLimiter(MemoryBackend(CONFIG))
    with pytest.raises(ArgumentTypeError, match="sequence of str"):
        limiter.check_many("abc")
    for timeout in (math.nan, math.inf, -1.0):
        with pytest.raises(InvalidArgumentError):
            limiter.acquire("k", timeout=timeout)
    with pytest.raises(ArgumentTypeError):
        limiter.acquire("k", timeout="1")  # type: ignore[arg-type]
    assert limiter.get_usage("k") == 0  # nothing was taken by the refusals


def test_a_float_clock_is_refused_by_the_batched_backend() -> None:
    with pytest.raises(MisuseError, match="integer nanoseconds"):
        BatchedRedisBackend(CONFIG, url=URL, clock=lambda: 1.5)  # type: ignore[arg-type,return-value]


SNIPPETS = {
    "async backend in a sync limiter": "RateLimiter(AsyncRedisBackend(c, url='redis://h'))",
    "sync network backend in an async limiter": "AsyncRateLimiter(RedisBackend(c, url='redis://h'))",
    "a config where a backend belongs": "RateLimiter(c)",
    "a config in the async limiter": "AsyncRateLimiter(c)",
    "not a backend": "RateLimiter(object())",
}


def test_mypy_strict_refuses_each_misuse(tmp_path: Path) -> None:
    header = ("from guardian import RateLimiter, AsyncRateLimiter, TokenBucketConfig\n"
              "from guardian.backends.redis import RedisBackend\n"
              "from guardian.backends.redis_async import AsyncRedisBackend\n"
              "c = TokenBucketConfig(5, 1)\n")
    lines = list(SNIPPETS.values())
    source = tmp_path / "misuse.py"
    source.write_text(header + "\n".join(lines) + "\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "MYPYPATH": str(root / "src")})
    first = header.count("\n") + 1
    flagged = {int(line.split(":")[1]) for line in out.stdout.splitlines() if ": error:" in line}
    for i, (what, line) in enumerate(SNIPPETS.items()):
        assert first + i in flagged, (what, line, out.stdout)


def test_an_unknown_keyword_is_refused_for_a_cluster_url_too() -> None:
    with pytest.raises(MisuseError, match="unknown Redis client option.*timout"):
        RedisBackend(CONFIG, url="redis+cluster://127.0.0.1:1", timout=1.0)
