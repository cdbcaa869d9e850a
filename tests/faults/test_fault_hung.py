"""Redis hung (SIGSTOP): every check is decided within about one timeout,
however many wait at once (issue 11 item 2); the breaker costs
``breaker_threshold`` timeouts, then one probe per cooldown; SIGCONT is
recovered from without a restart."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, List

import pytest
from faults import SLACK, Tally, hung
from redis_servers import Server

from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig
from guardian.backends.batched import BatchedRedisBackend
from guardian.backends.batched_async import AsyncBatchedRedisBackend
from guardian.backends.redis import RedisBackend
from guardian.backends.redis_async import AsyncRedisBackend

pytestmark = [pytest.mark.faults, pytest.mark.redis]

TIMEOUT = 0.25
CONFIG = TokenBucketConfig(100, 100, 1)
CONCURRENT = 20
#: The aim of issue 11: every concurrent check decided within 1.5 timeouts
#: (plus scheduling slack for 20 threads on a shared 2-core CI box).
BOUND = 1.5 * TIMEOUT + SLACK

def _limiter(cls: Any, server: Server, prefix: str, **kw: Any) -> Any:
    backend = cls(CONFIG, url=server.url, prefix=prefix, connect_timeout=TIMEOUT, timeout=TIMEOUT)
    facade = AsyncRateLimiter if cls in (AsyncRedisBackend, AsyncBatchedRedisBackend) else RateLimiter
    return facade(backend, fail_open=False, log_interval=3600, **kw)


@pytest.mark.parametrize("cls", [RedisBackend, BatchedRedisBackend], ids=["plain", "batched"])
def test_concurrent_cold_key_checks_while_hung_sync(own_server: Server, prefix: str, cls: Any) -> None:
    limiter = _limiter(cls, own_server, prefix)
    assert limiter.try_acquire("warm")  # connected, scripts loaded
    tally = Tally()
    go = threading.Barrier(CONCURRENT)

    def one() -> None:
        go.wait()
        tally.check(lambda: limiter.check_limit("cold"))

    threads = [threading.Thread(target=one) for _ in range(CONCURRENT)]
    with hung(own_server.proc.pid):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(f"\n{cls.__name__} sync: {CONCURRENT} concurrent cold-key checks while hung: "
          f"slowest {tally.slowest * 1000:.0f} ms (timeout {TIMEOUT * 1000:.0f} ms)")
    assert tally.escapes == [] and tally.decisions == CONCURRENT and tally.allowed == 0
    assert tally.slowest < BOUND
    limiter.close()


@pytest.mark.parametrize("cls", [AsyncRedisBackend, AsyncBatchedRedisBackend], ids=["plain", "batched"])
async def test_concurrent_cold_key_checks_while_hung_async(own_server: Server, prefix: str, cls: Any) -> None:
    limiter = _limiter(cls, own_server, prefix)
    assert await limiter.try_acquire("warm")
    tally = Tally()
    with hung(own_server.proc.pid):
        await asyncio.gather(*(tally.acheck(lambda: limiter.check_limit("cold")) for _ in range(CONCURRENT)))
    print(f"\n{cls.__name__}: {CONCURRENT} concurrent cold-key checks while hung: "
          f"slowest {tally.slowest * 1000:.0f} ms (timeout {TIMEOUT * 1000:.0f} ms)")
    assert tally.escapes == [] and tally.decisions == CONCURRENT and tally.allowed == 0
    assert tally.slowest < BOUND
    await limiter.aclose()


@pytest.mark.parametrize("cls", [RedisBackend, BatchedRedisBackend], ids=["plain", "batched"])
def test_hung_costs_threshold_timeouts_then_one_probe_per_cooldown(own_server: Server, prefix: str,
                                                                  cls: Any) -> None:
    cooldown, hang = 0.4, 2.0
    limiter = _limiter(cls, own_server, prefix, breaker_cooldown=cooldown)
    assert limiter.try_acquire("warm")
    tally = Tally()
    slow: List[float] = []
    with hung(own_server.proc.pid):
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < hang:
            i += 1
            before = time.perf_counter()
            tally.check(lambda: limiter.check_limit(f"k{i % 50}"))
            took = time.perf_counter() - before
            if took > TIMEOUT / 2:
                slow.append(took)
        opened_after = limiter.breaker.opened
    resumed = time.monotonic()
    while not limiter.try_acquire("after"):
        assert time.monotonic() - resumed < cooldown + TIMEOUT + 1.0, "no recovery after SIGCONT"
        time.sleep(0.005)
    recovery = time.monotonic() - resumed
    probes = len(slow) - limiter.breaker.threshold
    print(f"\n{cls.__name__}: hung {hang}s with cooldown {cooldown}s: {tally.decisions} checks, "
          f"{len(slow)} slow ones (threshold {limiter.breaker.threshold} + {probes} probes), slowest "
          f"{tally.slowest * 1000:.0f} ms; recovered {recovery * 1000:.0f} ms after SIGCONT")
    assert tally.escapes == [] and tally.allowed == 0 and opened_after == 1
    assert len(slow) >= limiter.breaker.threshold
    # One probe per cooldown once open (the first one a cooldown after opening).
    assert probes <= math.ceil((hang - limiter.breaker.threshold * TIMEOUT) / cooldown) + 1
    assert tally.slowest < TIMEOUT + SLACK
    assert recovery < cooldown + TIMEOUT + SLACK
    limiter.close()
