"""BatchedRedisBackend against real Redis: the global limit holds across
nodes, leases come back, denials stay local, Redis may die. Redis calls
are counted by the server (INFO commandstats), never by the backend."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ManualClock
from redis_servers import Server, wait_until

from guardian import RateLimiter, TokenBucketConfig
from guardian.backends import AsyncBatchedRedisBackend, BatchedRedisBackend
from guardian.backends.redis import RedisBackend

pytestmark = pytest.mark.redis

NODE = str(Path(__file__).parents[1] / "helpers" / "batched_node.py")


def settled(backend: Any) -> None:
    """Waits for the background refills in flight to land (a condition on
    the backend, not a guess at how long they take)."""
    wait_until(lambda: not any(lease.busy for lease in list(backend.book.leases.values())), 5.0,
               "the refills in flight to land", step=0.005)


async def asettled(backend: Any) -> None:
    for _ in range(1000):
        if not any(lease.busy for lease in list(backend.book.leases.values())):
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the refills in flight did not land")


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def node(*args: Any) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, NODE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@pytest.mark.slow
def test_three_nodes_share_one_limit(redis_server: Server, prefix: str) -> None:
    """Capacity 200, 1000/s, three processes flat out for 4 s: together
    at most 200 + 1000*t, and at least 85% of it."""
    seconds = 4.0
    start = time.time() + 1.5  # all three are up and connected by then
    procs = [node("hammer", redis_server.url, prefix, "--capacity", 200, "--rate", 1000,
                  "--start", start, "--seconds", seconds) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    admitted = sum(int(o[0].split()[0]) for o in outs)
    # A node finishes its last loop of 100 checks after the end, and a
    # loaded machine may pause it there: its reservations (all tokens
    # admitted were reserved on the server's clock, this host's) end when
    # its last check returned.
    last = max(float(o[0].split()[3]) for o in outs)
    assert admitted <= 200 + 1000 * (last - start + 0.001), (admitted, last - start)
    assert last - start < seconds + 1.0, last - start  # the bound stays a meaningful one
    # Tokens nobody asks for overflow the bucket: the lower bound counts
    # from when the first node really began (late on a loaded machine).
    first = max(min(float(o[0].split()[2]) for o in outs), start)
    bound = 200 + 1000 * (start + seconds - first)
    assert admitted >= 0.85 * bound, (admitted, bound)


def test_sigkill_loses_leased_tokens_until_the_key_expires(redis_server: Server, raw: redis.Redis,
                                                            prefix: str) -> None:
    config = TokenBucketConfig(100, 50)  # full again 2 s after the last take
    holder = node("hold", redis_server.url, prefix, "--capacity", 100, "--rate", 50,
                  "--max-share", 0.5, "--takes", 20)
    assert holder.stdout is not None
    admitted, held = map(int, holder.stdout.readline().split())
    assert admitted == 20 and held > 0
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    other = RedisBackend(config, url=redis_server.url, prefix=prefix)
    t0 = time.monotonic()
    burst = sum(other.try_take("k") for _ in range(200))
    elapsed = time.monotonic() - t0
    # Never above the limit: the dead node's admissions and leases count.
    assert admitted + burst <= 100 + 50 * (elapsed + 0.5)
    assert burst <= 100 - held - admitted + 50 * (elapsed + 0.5)
    # The lost tokens come back as the bucket refills: the key expires.
    wait_until(lambda: raw.exists(other.packer.key("k")) == 0, 5.0, "the bucket key to expire")
    t0 = time.monotonic()
    full = sum(other.try_take("k") for _ in range(150))
    assert 100 <= full <= 100 + 50 * (time.monotonic() - t0) + 1  # + what refilled meanwhile
    other.close()


def test_close_returns_unused_tokens(redis_server: Server, raw: redis.Redis, prefix: str) -> None:
    config = TokenBucketConfig(100, 1, 10)  # one token per 10 s: nothing refills meanwhile
    first = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix, max_share=0.5)
    assert all(first.try_take("k") for _ in range(30))
    settled(first)
    held = first.book.table.held("k")
    assert held > 0
    first.close()
    stats = first.stats()
    assert stats["returned_tokens"] == held and stats["dropped_tokens"] == 0
    second = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix, max_share=0.5)
    assert sum(second.try_take("k") for _ in range(200)) == 70
    second.close()


def test_denial_flood_stays_local(redis_server: Server, raw: redis.Redis, prefix: str) -> None:
    config = TokenBucketConfig(5, 1, 3600)
    plain = RedisBackend(config, url=redis_server.url, prefix=prefix)
    assert all(plain.try_take("k") for _ in range(5))
    batched = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix)
    before = script_calls(raw)
    assert not any(batched.try_take("k") for _ in range(50_000))
    calls = script_calls(raw) - before
    assert calls <= 3, calls
    result = batched.take("k")
    assert not result.allowed and 3500 < result.retry_after <= 3600
    assert batched.stats()["denial_cache_hits"] >= 49_999
    batched.close()
    plain.close()


def test_hot_key_makes_few_redis_calls(redis_server: Server, raw: redis.Redis, prefix: str) -> None:
    config = TokenBucketConfig(1_000_000, 1_000_000)
    batched = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix)
    before = script_calls(raw)
    admitted = sum(batched.try_take("hot") for _ in range(200_000))
    calls = script_calls(raw) - before
    assert admitted == 200_000
    assert admitted / calls >= 100, calls
    batched.close()


def test_redis_down_leases_serve_until_expiry(own_server: Server, prefix: str) -> None:
    config = TokenBucketConfig(1000, 1, 10)
    clock = ManualClock()  # lease time moves when told, not by sleeping
    backend = BatchedRedisBackend(config, url=own_server.url, prefix=prefix, max_share=0.5,
                                  lease_lifetime=1.0, clock=clock)
    limiter = RateLimiter(backend, fail_open=False, breaker_cooldown=0.1, log_interval=60)
    assert all(limiter.try_acquire("k") for _ in range(100))
    settled(backend)
    held = backend.book.table.held("k")
    assert held >= 10
    own_server.kill()
    # The lease keeps serving with Redis gone, for as long as it lives...
    clock.advance(0.9)
    assert all(limiter.try_acquire("k") for _ in range(held // 2))
    assert backend.stats()["expired_leases"] == 0
    # ...until it expires; then the failure policy (closed) decides.
    clock.advance(0.1)
    backend._expire()  # the background refiller's scan, run now
    assert backend.stats()["expired_leases"] >= 1 and backend.book.table.held("k") == 0
    assert not any(limiter.try_acquire("k") for _ in range(20))
    assert limiter.errors >= 1
    # Redis returns: recovery needs nothing but time.
    own_server.start()
    wait_until(lambda: limiter.try_acquire("k"), 5.0, "recovery", step=0.05)
    backend.close()


async def test_async_twin_serves_locally_and_returns_on_aclose(redis_server: Server, raw: redis.Redis,
                                                               prefix: str) -> None:
    config = TokenBucketConfig(100, 1, 10)
    backend = AsyncBatchedRedisBackend(config, url=redis_server.url, prefix=prefix, max_share=0.5)
    before = script_calls(raw)
    assert all([await backend.try_take("k") for _ in range(40)])
    await asettled(backend)
    assert script_calls(raw) - before <= 10
    held = backend.book.table.held("k")
    await backend.aclose()
    assert backend.stats()["returned_tokens"] == held
    plain = RedisBackend(config, url=redis_server.url, prefix=prefix)
    assert sum(plain.try_take("k") for _ in range(200)) == 60
    plain.close()


def test_async_twin_returns_leases_at_interpreter_exit(redis_server: Server, prefix: str) -> None:
    """No aclose(): the tokens still go back when the interpreter exits."""
    code = f"""
import asyncio
from guardian import TokenBucketConfig
from guardian.backends import AsyncBatchedRedisBackend

async def main():
    backend = AsyncBatchedRedisBackend(TokenBucketConfig(100, 1, 10), url={redis_server.url!r},
                                       prefix={prefix!r}, max_share=0.5)
    assert all([await backend.try_take("k") for _ in range(30)])
    while any(lease.busy for lease in backend.book.leases.values()):  # a prefetch landing
        await asyncio.sleep(0.005)
    print(backend.book.table.held("k"), flush=True)
    globals()["keep"] = backend  # alive at exit, never closed

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0  # leased tokens were held at exit
    plain = RedisBackend(TokenBucketConfig(100, 1, 10), url=redis_server.url, prefix=prefix)
    assert sum(plain.try_take("k") for _ in range(200)) == 70  # 30 were spent, the rest came back
    plain.close()


def test_shared_leases_serve_every_process_of_a_host(redis_server: Server, raw: redis.Redis,
                                                     prefix: str, shm_name: str, core: Any) -> None:
    """Two backends on one shared lease table (as two workers would be):
    the second serves the first's lease without calling Redis."""
    if core.__name__.endswith("_pycore"):
        pytest.skip("one core is enough here")
    config = TokenBucketConfig(1000, 1, 10)
    a = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix, shared=shm_name, max_share=0.5)
    b = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix, shared=shm_name, max_share=0.5)
    assert all(a.try_take("k") for _ in range(50))
    settled(a)
    held = b.book.table.held("k")
    before = script_calls(raw)
    assert all(b.try_take("k") for _ in range(held // 2))
    assert script_calls(raw) - before <= 1  # at most b's own prefetch
    a.close()
    b.close()


@pytest.mark.parametrize("rate, interval", [(1, 3600), (50, 1)], ids=["no-refill", "50-per-s"])
def test_results_report_the_bucket_like_the_plain_backend(redis_server: Server, prefix: str,
                                                          rate: float, interval: float) -> None:
    """The same checks (costs 1 and 2, through denials) on a plain and a
    batched backend, each on its own bucket: remaining and reset_after
    match within a token's rounding (the batched ones come from the bucket,
    not the lease)."""
    config = TokenBucketConfig(100, rate, interval)
    plain = RedisBackend(config, url=redis_server.url, prefix=prefix + "p")
    batched = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix + "b", max_share=0.5)
    worst_remaining, worst_reset = 0, 0.0
    for i in range(400):
        cost = 1 + (i % 3 == 0)
        start = time.monotonic()
        a, b = plain.take("k", cost), batched.take("k", cost)
        apart = time.monotonic() - start  # the two reads are at most this far apart
        if rate == 1:  # nothing refills: the same decision every time
            assert a.allowed == b.allowed, i
        worst_remaining = max(worst_remaining, abs(a.remaining - b.remaining))
        worst_reset = max(worst_reset, abs(a.reset_after - b.reset_after) - apart)
    print(f"\nrate {rate}/{interval}s: largest difference in remaining {worst_remaining}, "
          f"in reset_after {max(worst_reset, 0) * 1000:.1f} ms beyond the time between the two reads "
          f"(T = {config.emission_interval * 1000:g} ms)")
    if rate == 1:
        # reset_after is counted from when the last reservation was sent: it
        # errs by at most that round trip (a loaded machine makes it long).
        assert worst_remaining == 0 and worst_reset < 0.05
    else:  # the two are read a moment apart, while tokens refill every T
        assert worst_remaining <= 2 and worst_reset < 0.05
    batched.close()
    plain.close()


def test_a_denial_says_exactly_when_the_cost_fits(redis_server: Server, prefix: str) -> None:
    """Redis answers for the tokens a check needs (reserve.lua's needed):
    no extrapolation here. The denial cache answers only checks that need
    as many; any other cost asks Redis."""
    config = TokenBucketConfig(10, 1, 10)  # one token per 10 s
    plain = RedisBackend(config, url=redis_server.url, prefix=prefix)
    batched = BatchedRedisBackend(config, url=redis_server.url, prefix=prefix)
    assert all(plain.try_take("k") for _ in range(10))
    denied = batched.take("k", 3)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(plain.peek("k", 3).retry_after, abs=0.05)
    assert 29 < denied.retry_after <= 30
    again = batched.take("k", 3)  # the same need: from the cache
    assert batched.stats()["denial_cache_hits"] == 1 and 29 < again.retry_after <= denied.retry_after
    two = batched.take("k", 2)  # another need: Redis says when
    assert batched.stats()["redis_denials"] == 2 and 19 < two.retry_after <= 20
    assert batched.peek("k", 1).retry_after == pytest.approx(plain.peek("k", 1).retry_after, abs=0.05)
    batched.close()
    plain.close()
