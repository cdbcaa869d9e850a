"""The failure policy with a real Redis that dies, stalls and comes back."""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import time
from typing import Any, Callable, Iterator

import pytest
import redis
from redis_servers import Server, wait_until

from guardian import InvalidArgumentError, RateLimiter, TokenBucketConfig
from guardian.backends.redis import RedisBackend
from guardian.backends.redis_async import AsyncRedisBackend
from guardian.limiter import AsyncRateLimiter

pytestmark = pytest.mark.redis

TIMEOUT = 0.25
CONFIG = TokenBucketConfig(5, 1, 3600)


def timed(call: Callable[[], Any]) -> "tuple[Any, float]":
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def limiter_on(url: str, prefix: str, fail_open: Any, **kw: Any) -> RateLimiter:
    backend = RedisBackend(CONFIG, url=url, prefix=prefix, connect_timeout=TIMEOUT, timeout=TIMEOUT)
    return RateLimiter(backend, fail_open=fail_open, log_interval=60, **kw)


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_killed_then_back(own_server: Server, prefix: str, fail_open: bool,
                                caplog: pytest.LogCaptureFixture) -> None:
    limiter = limiter_on(own_server.url, prefix, fail_open)
    assert limiter.check_limit("k").allowed and limiter.breaker.failures == 0
    own_server.kill()
    with caplog.at_level(logging.INFO, logger="guardian"):
        # Until the breaker opens each check tries Redis, within the timeout.
        for _ in range(limiter.breaker.threshold):
            result, took = timed(lambda: limiter.check_limit("k"))
            assert result.allowed is fail_open and took < TIMEOUT + 0.1
        assert limiter.breaker.is_open
        # Open: decided locally, with no network call.
        costs = []
        for _ in range(2000):
            allowed, took = timed(lambda: limiter.try_acquire("k"))
            assert allowed is fail_open
            costs.append(took)
        assert statistics.median(costs) < 1e-3 and max(costs) < TIMEOUT + 0.1
        assert [r.allowed for r in limiter.check_many(["a", "b"])] == [fail_open] * 2
        with pytest.raises(InvalidArgumentError):  # bad input still raises
            limiter.check_limit("", 1)
        # Redis returns on the same port: service resumes by itself.
        own_server.start()
        back = time.monotonic()
        wait_until(lambda: limiter.check_limit("probe") is not None and not limiter.breaker.is_open,
                   3.0, "recovery", step=0.01)
        assert time.monotonic() - back < 2.0
    assert limiter.check_limit("k").remaining == 4  # a fresh server: a full bucket
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per interval, not once per request
    assert "failed" in warnings[0] and "circuit breaker open" in warnings[1]
    assert any("is back" in r.getMessage() for r in caplog.records)
    assert limiter.errors >= limiter.breaker.threshold and limiter.failures > 2000
    limiter.close()


def test_local_fallback_limits_in_process(own_server: Server, prefix: str) -> None:
    limiter = limiter_on(own_server.url, prefix, "local")
    assert limiter.try_acquire("k")
    own_server.kill()
    allowed = [limiter.try_acquire("k") for _ in range(10)]
    assert allowed == [True] * 5 + [False] * 5  # the local bucket of capacity 5
    assert [r.allowed for r in limiter.check_many(["j"] * 6)] == [True] * 5 + [False]
    own_server.start()
    wait_until(lambda: limiter.try_acquire("k") and not limiter.breaker.is_open, 3.0, "recovery")
    limiter.close()


@pytest.fixture
def stalled() -> Iterator[str]:
    """A port that accepts TCP connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


def test_a_stalled_redis_costs_one_timeout_per_probe(stalled: str, prefix: str) -> None:
    limiter = limiter_on(stalled, prefix, False, breaker_cooldown=0.5)
    for attempt in range(3):
        allowed, took = timed(lambda: limiter.try_acquire("k"))
        # The first call also makes the connection: allow a loaded CI box more.
        slack = 0.5 if attempt == 0 else 0.15
        assert allowed is False and TIMEOUT - 0.05 < took < TIMEOUT + slack
    _, took = timed(lambda: [limiter.try_acquire("k") for _ in range(1000)])
    assert took < 0.1
    result = limiter.check_limit("k")
    assert not result.allowed and 0 < result.retry_after <= 0.5
    limiter.close()


def test_a_foreign_value_is_decided_by_policy_and_logged(redis_server: Server, prefix: str,
                                                         raw: redis.Redis,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    limiter = limiter_on(redis_server.url, prefix, False)
    raw.hset(limiter.backend.packer.key("h"), "a", 1)
    with caplog.at_level(logging.WARNING, logger="guardian"):
        assert limiter.try_acquire("h") is False
        assert limiter.check_limit("k").allowed  # other keys are unaffected
    assert "guardian did not write" in caplog.records[0].getMessage()
    limiter.close()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_async_redis_killed_then_back(own_server: Server, prefix: str, fail_open: bool) -> None:
    backend = AsyncRedisBackend(CONFIG, url=own_server.url, prefix=prefix,
                                connect_timeout=TIMEOUT, timeout=TIMEOUT)
    limiter = AsyncRateLimiter(backend, fail_open=fail_open, log_interval=60)
    assert (await limiter.check_limit("k")).allowed
    own_server.kill()
    for _ in range(limiter.breaker.threshold):  # type: ignore[union-attr]
        start = time.perf_counter()
        assert await limiter.try_acquire("k") is fail_open
        assert time.perf_counter() - start < TIMEOUT + 0.1
    start = time.perf_counter()
    for _ in range(1000):
        assert (await limiter.check_limit("k")).allowed is fail_open
    assert time.perf_counter() - start < 1.0
    own_server.start()
    back = time.monotonic()
    while True:
        await limiter.check_limit("probe")
        if not limiter.breaker.is_open:  # type: ignore[union-attr]
            break
        assert time.monotonic() - back < 2.0
        await asyncio.sleep(0.01)
    assert (await limiter.check_limit("k")).remaining == 4
    await limiter.aclose()


@pytest.mark.parametrize("case", ["no password", "wrong password", "ACL without EVALSHA"])
def test_credentials_refused_are_a_configuration_error(tmp_path: Any, prefix: str, case: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Redis is up but refuses guardian: logged at error level as a
    configuration error and counted apart from outages; checks are still
    decided by the policy."""
    server = Server(tmp_path).start()
    try:
        server.cli("ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all", "-evalsha", "-eval")
        server.cli("CONFIG", "SET", "requirepass", "secret")
        url = {"no password": server.url,
               "wrong password": f"redis://:nope@127.0.0.1:{server.port}/0",
               "ACL without EVALSHA": f"redis://limited:pw@127.0.0.1:{server.port}/0"}[case]
        limiter = RateLimiter(RedisBackend(CONFIG, url=url, prefix=prefix), fail_open=False, log_interval=60)
        with caplog.at_level(logging.WARNING, logger="guardian"):
            assert limiter.try_acquire("k") is False
        assert limiter.config_errors == 1 and limiter.errors == 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and "misconfigured" in errors[0].getMessage()
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # not an outage
        limiter.close()
    finally:
        server.stop()
