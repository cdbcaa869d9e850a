"""The lease book stays bounded under hostile traffic (issue 10): keys
whose reservations are denied, or fail with Redis down, leave no entry
beyond a lease lifetime. Time moves with an injected clock; the expiry
scan the background refiller runs is called directly.

GUARDIAN_BOOK_KEYS=100000 runs the issue's size (the default keeps CI fast)."""

from __future__ import annotations

import gc
import os

import pytest
from conftest import ManualClock
from redis_servers import Server, free_port

from guardian import BackendError, RateLimiter, TokenBucketConfig
from guardian.backends.batched import BatchedRedisBackend
from guardian.backends.redis import RedisBackend

pytestmark = pytest.mark.redis

KEYS = int(os.environ.get("GUARDIAN_BOOK_KEYS", "5000"))
CONFIG = TokenBucketConfig(1, 1, 3600)  # one token an hour: a denial holds long
LIFETIME = 1.0


def rss_mb() -> float:
    """This process' resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_denied_keys_leave_the_book_within_a_lease_lifetime(redis_server: Server, prefix: str,
                                                            clock: ManualClock) -> None:
    keys = [f"d{i}" for i in range(KEYS)]
    # Long timeouts: a loaded machine must not turn this into a test of them.
    plain = RedisBackend(CONFIG, url=redis_server.url, prefix=prefix, timeout=5.0)
    assert all(r.allowed for r in plain.take_many(keys))  # every bucket empty now
    backend = BatchedRedisBackend(CONFIG, url=redis_server.url, prefix=prefix, clock=clock,
                                  lease_lifetime=LIFETIME, timeout=5.0)
    before = rss_mb()
    assert not any(backend.try_take(k) for k in keys)
    grown = backend.stats()
    peak = rss_mb()
    assert grown["leases"] == KEYS and grown["denials"] == KEYS and grown["redis_denials"] == KEYS
    clock.advance(LIFETIME / 2)
    assert not any(backend.try_take(k) for k in keys[:100])  # served by the denial cache
    assert backend.stats()["redis_denials"] == KEYS
    clock.advance(LIFETIME / 2)
    backend._expire()
    after = backend.stats()
    gc.collect()
    print(f"\n{KEYS} denied keys: book {grown['leases']} leases + {grown['denials']} denials -> "
          f"{after['leases']} + {after['denials']} after one lease lifetime; "
          f"RSS {before:.0f} MB before, {peak:.0f} MB full, {rss_mb():.0f} MB after")
    assert after["leases"] == 0 and after["denials"] == 0
    # A denial still holds in Redis: the next check asks again, and is denied.
    result = backend.take(keys[0])
    assert not result.allowed and 3500 < result.retry_after <= 3600
    # A second wave of as many new keys reuses the memory the first freed
    # (CPython keeps freed memory for reuse rather than give it back).
    wave = [f"e{i}" for i in range(KEYS)]
    assert all(r.allowed for r in plain.take_many(wave))
    assert not any(backend.try_take(k) for k in wave)
    second = rss_mb()
    clock.advance(LIFETIME)
    backend._expire()
    gc.collect()
    print(f"a second wave of {KEYS} keys: RSS {second:.0f} MB full, {rss_mb():.0f} MB after; "
          f"book {backend.stats()['leases']} leases + {backend.stats()['denials']} denials")
    assert backend.stats()["leases"] <= 1 and backend.stats()["denials"] <= 1
    assert second <= peak + 10 + KEYS / 10_000  # no growth beyond noise
    backend.close()
    plain.close()


def test_checks_with_redis_down_leave_the_book_within_a_lease_lifetime(clock: ManualClock) -> None:
    backend = BatchedRedisBackend(CONFIG, url=f"redis://127.0.0.1:{free_port()}/0", clock=clock,
                                  lease_lifetime=LIFETIME, connect_timeout=0.1, timeout=0.1)
    limiter = RateLimiter(backend, fail_open=False, breaker_threshold=None, log_interval=3600)
    n = min(KEYS, 2000)  # every one of these reaches the dead port (no breaker)
    assert not any(limiter.try_acquire(f"x{i}") for i in range(n))
    assert limiter.errors == n and backend.stats()["leases"] == n
    clock.advance(LIFETIME)
    backend._expire()
    assert backend.stats()["leases"] == 0
    # With the breaker (the default), a flood costs the book nothing more.
    guarded = RateLimiter(backend, fail_open=False, log_interval=3600)
    assert not any(guarded.try_acquire(f"y{i}") for i in range(KEYS))
    assert backend.stats()["leases"] <= guarded.breaker.threshold + 1  # type: ignore[union-attr]
    clock.advance(LIFETIME)
    backend._expire()
    assert backend.stats()["leases"] == 0
    with pytest.raises(BackendError):
        backend.take("z")
    backend.close()
