"""A TCP proxy between guardian and Redis that adds latency, resets
connections, refuses them or blackholes them: each check is decided within
its timeout, the limit holds, and recovery needs no restart."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Iterator

import pytest
from faults import SLACK, Proxy, Tally
from redis_servers import Server

from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig
from guardian.backends.batched import BatchedRedisBackend
from guardian.backends.redis import RedisBackend
from guardian.backends.redis_async import AsyncRedisBackend

pytestmark = [pytest.mark.faults, pytest.mark.redis]

TIMEOUT = 0.25
COOLDOWN = 0.2
HUGE = TokenBucketConfig(10**6, 10**6, 1)  # fail-closed: allowed only when Redis decided


@pytest.fixture
def proxy(own_server: Server) -> Iterator[Proxy]:
    p = Proxy(own_server.port).start()
    yield p
    p.stop()


def _limiter(kind: str, url: str, prefix: str, config: TokenBucketConfig = HUGE, timeout: float = TIMEOUT,
             **kw: Any) -> Any:
    cls = {"sync": RedisBackend, "async": AsyncRedisBackend, "batched": BatchedRedisBackend}[kind]
    backend = cls(config, url=url, prefix=prefix, connect_timeout=timeout, timeout=timeout)
    facade = AsyncRateLimiter if kind == "async" else RateLimiter
    return facade(backend, fail_open=False, breaker_cooldown=COOLDOWN, log_interval=3600, **kw)


async def _check(tally: Tally, limiter: Any, key: str) -> Any:
    if isinstance(limiter, AsyncRateLimiter):
        return await tally.acheck(lambda: limiter.check_limit(key))
    return tally.check(lambda: limiter.check_limit(key))


async def _close(limiter: Any) -> None:
    done = limiter.aclose() if isinstance(limiter, AsyncRateLimiter) else limiter.close()
    if inspect.isawaitable(done):
        await done


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_latency_below_the_timeout_is_paid_not_failed(proxy: Proxy, prefix: str, kind: str) -> None:
    latency = 0.1
    # A timeout well above latency + scheduling slack: the proxy shares this process.
    limiter = _limiter(kind, proxy.url, prefix, timeout=latency + 2 * SLACK)
    tally = Tally()
    await _check(tally, limiter, "warm")
    proxy.latency = latency
    for i in range(10):
        await _check(tally, limiter, f"k{i}")
    assert tally.escapes == [] and tally.allowed == tally.decisions == 11  # all decided by Redis
    assert limiter.errors == 0 and latency <= tally.slowest < latency + SLACK
    await _close(limiter)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_latency_above_the_timeout_opens_the_breaker_then_recovers(
        proxy: Proxy, prefix: str, kind: str) -> None:
    limiter = _limiter(kind, proxy.url, prefix)
    tally = Tally()
    await _check(tally, limiter, "warm")
    proxy.latency = TIMEOUT * 2
    start = time.monotonic()
    while not limiter.breaker.is_open:
        assert await _check(tally, limiter, "k") is False
    to_open = time.monotonic() - start
    for _ in range(200):
        assert await _check(tally, limiter, "k") is False
    proxy.latency = 0.0
    back = time.monotonic()
    while not await _check(tally, limiter, "k"):
        assert time.monotonic() - back < COOLDOWN + 3 * TIMEOUT + 1.0, "no recovery"
        await asyncio.sleep(0.005)
    recovery = time.monotonic() - back
    print(f"\n{kind}: latency {TIMEOUT * 2}s > timeout: breaker open after {to_open * 1000:.0f} ms, slowest "
          f"{tally.slowest * 1000:.0f} ms, recovered {recovery * 1000:.0f} ms after the latency went")
    assert tally.escapes == [] and tally.slowest < TIMEOUT + SLACK
    assert to_open < limiter.breaker.threshold * (TIMEOUT + SLACK)
    # a probe in flight when the latency went may still time out once
    assert recovery < COOLDOWN + TIMEOUT + SLACK
    await _close(limiter)


@pytest.mark.parametrize("kind", ["sync", "async", "batched"])
async def test_connection_resets_cost_one_check_each_and_the_limit_holds(
        proxy: Proxy, prefix: str, kind: str) -> None:
    limit = 60
    limiter = _limiter(kind, proxy.url, prefix, TokenBucketConfig(limit, 1, 3600))
    tally = Tally()
    for round_ in range(20):
        for i in range(5):
            await _check(tally, limiter, "k")
        proxy.drop()
    for i in range(40):
        await _check(tally, limiter, "k")
    print(f"\n{kind}: 20 connection resets: {limiter.failures} of {tally.decisions} checks decided by "
          f"policy, admitted {tally.allowed} of {limit}")
    assert tally.escapes == [] and not limiter.breaker.is_open
    assert limiter.failures <= 20  # at most the one check that met each reset
    assert tally.allowed <= limit
    await _close(limiter)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_blackhole_and_refusal_cost_at_most_a_timeout(proxy: Proxy, prefix: str, kind: str) -> None:
    limiter = _limiter(kind, proxy.url, prefix)
    tally = Tally()
    await _check(tally, limiter, "warm")
    proxy.blackhole = True
    for i in range(100):
        assert await _check(tally, limiter, f"b{i}") is False
    assert limiter.breaker.is_open and tally.slowest < TIMEOUT + SLACK
    proxy.blackhole = False
    proxy.refuse = True  # the port answers with a reset: no timeout to wait for
    proxy.drop()
    await asyncio.sleep(COOLDOWN)
    before = limiter.errors
    refused = Tally()
    for i in range(100):
        await _check(refused, limiter, f"r{i}")
        await asyncio.sleep(0.002)
    assert limiter.errors > before and refused.slowest < SLACK  # refused at once, no timeout
    proxy.refuse = False
    back = time.monotonic()
    while not await _check(tally, limiter, "k"):
        assert time.monotonic() - back < COOLDOWN + 1.0
        await asyncio.sleep(0.005)
    assert time.monotonic() - back < COOLDOWN + SLACK
    assert tally.escapes == [] and refused.escapes == []
    await _close(limiter)
