"""Sentinel and Cluster URLs under faults (issue 10 item 3): the same
connect/read timeouts as a single server, no redis-py exception out of a
constructor, and one short log line per failure."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from faults import SLACK, Tally, free_port, hung
from redis_servers import Sentinel

from guardian import BackendUnavailableError, RateLimiter, TokenBucketConfig
from guardian.backends.redis import RedisBackend

pytestmark = [pytest.mark.faults, pytest.mark.redis]

TIMEOUT = 0.25
CONFIG = TokenBucketConfig(10, 1, 3600)


def _check_costs(limiter: RateLimiter, n: int = 3) -> Tally:
    tally = Tally()
    for i in range(n):
        tally.check(lambda: limiter.check_limit(f"k{i}"))
    return tally


def test_a_dead_or_hung_sentinel_costs_one_timeout_per_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens: connection refused at once.
    dead = RedisBackend(CONFIG, url=f"redis+sentinel://127.0.0.1:{free_port()}/mymaster",
                        connect_timeout=TIMEOUT, timeout=TIMEOUT)
    with caplog.at_level(logging.WARNING, logger="guardian"):
        tally = _check_costs(RateLimiter(dead, fail_open=False, breaker_threshold=None, log_interval=0))
    assert tally.escapes == [] and tally.allowed == 0 and tally.slowest < TIMEOUT + SLACK
    lines = [r.getMessage() for r in caplog.records if r.name == "guardian"]
    assert lines and all(len(line) < 400 and "ConnectionPool" not in line and "\n" not in line for line in lines)
    # A Sentinel that accepts and never answers: one read timeout, not redis-py's retries.
    s = Sentinel(tmp_path).start()
    try:
        backend = RedisBackend(CONFIG, url=s.url, connect_timeout=TIMEOUT, timeout=TIMEOUT)
        limiter = RateLimiter(backend, fail_open=False, breaker_threshold=None, log_interval=3600)
        assert limiter.try_acquire("warm")
        assert s.proc is not None
        with hung(s.proc.pid):
            backend.close()  # the next checks must ask the Sentinel again
            tally = _check_costs(limiter)
        print(f"\nhung Sentinel: slowest check {tally.slowest * 1000:.0f} ms (timeout {TIMEOUT * 1000:.0f} ms)")
        assert tally.escapes == [] and tally.allowed == 0
        assert tally.slowest < 1.5 * TIMEOUT + SLACK
    finally:
        s.stop()


def test_constructors_raise_guardian_errors_only() -> None:
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:  # redis-py's sync cluster client connects at once
        RedisBackend(CONFIG, url=f"redis+cluster://127.0.0.1:{free_port()}", connect_timeout=TIMEOUT,
                     timeout=TIMEOUT)
    assert time.monotonic() - start < 2 * TIMEOUT + SLACK
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
    # Sentinel and a single server are lazy: they connect on first use.
    RedisBackend(CONFIG, url=f"redis+sentinel://127.0.0.1:{free_port()}/mymaster").close()
    RedisBackend(CONFIG, url=f"redis://127.0.0.1:{free_port()}/0").close()
