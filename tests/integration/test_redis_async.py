"""AsyncRedisBackend against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from redis_servers import Server, free_port

from guardian import (
    ArgumentTypeError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidArgumentError,
    TokenBucketConfig,
)
from guardian.backends.redis_async import AsyncRedisBackend

pytestmark = pytest.mark.redis


def backend(server: Server, prefix: str, capacity: int, rate: float, interval: float = 1.0,
            **kw: Any) -> AsyncRedisBackend:
    return AsyncRedisBackend(TokenBucketConfig(capacity, rate, interval), url=server.url,
                             prefix=prefix, **kw)


async def test_exact_with_a_real_clock(redis_server: Server, prefix: str) -> None:
    b = backend(redis_server, prefix, 50, 100)
    admitted = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        admitted += await b.try_take("k")
    await b.aclose()
    assert abs(admitted - (50 + 100)) <= 4


async def test_operations(redis_server: Server, prefix: str, raw: redis.Redis) -> None:
    b = backend(redis_server, prefix, 3, 1)
    first = await b.take("k", 2)
    assert (first.allowed, first.remaining, first.limit) == (True, 1, 3)
    assert not (await b.take("k", 2)).allowed
    assert await b.usage("k") == 2
    assert 0 < raw.pttl(f"{prefix}:{{k}}") <= 2000
    await b.reset("k")
    assert await b.usage("k") == 0
    many = await b.take_many(["a", "b", "a", "a", "a"], 1)
    assert [r.allowed for r in many] == [True, True, True, True, False]
    assert await b.take_many([]) == []
    granted, remaining, retry, _ = await b.reserve("r", 5)
    assert (granted, remaining, retry) == (3, 0, 0.0)
    await b.aclose()


async def test_concurrent_tasks_share_connections_and_never_over_admit(redis_server: Server,
                                                                       prefix: str) -> None:
    b = backend(redis_server, prefix, 100, 1, 3600)
    results = await asyncio.gather(*(b.try_take("k") for _ in range(300)))
    assert sum(results) == 100
    assert b._wires is not None and b._wires.open <= b.max_wires
    await b.aclose()


async def test_cancelled_mid_call_leaves_no_stale_reply(redis_server: Server, prefix: str) -> None:
    b = backend(redis_server, prefix, 1000, 1, 3600)
    for _ in range(20):
        task = asyncio.ensure_future(b.take("k"))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    used = await b.usage("k")
    r = await b.take("other", 3)  # would read a stale reply if a wire were reused
    assert r.allowed and r.remaining == 997
    assert 0 <= used <= 20
    await b.aclose()


async def test_script_flush_and_foreign_values(redis_server: Server, prefix: str, raw: redis.Redis) -> None:
    b = backend(redis_server, prefix, 10, 1)
    assert await b.try_take("k")
    raw.script_flush()
    assert await b.try_take("k")
    raw.script_flush()
    assert len(await b.take_many(["x", "y"])) == 2
    raw.hset(f"{prefix}:{{h}}", "a", 1)
    with pytest.raises(BackendError, match="guardian did not write"):
        await b.take("h")
    assert await b.try_take("k")
    await b.aclose()


async def test_bad_input_raises_before_any_network_call() -> None:
    b = AsyncRedisBackend(TokenBucketConfig(10, 1), url=f"redis://127.0.0.1:{free_port()}/0")
    for key, cost, error in [("", 1, InvalidArgumentError), (None, 1, ArgumentTypeError),
                             ("k", 0, InvalidArgumentError), ("k", 11, InvalidArgumentError),
                             ("k", 2.0, ArgumentTypeError)]:
        with pytest.raises(error):
            await b.take(key, cost)
        with pytest.raises(error):
            await b.take_many(["ok", key], cost)
    with pytest.raises(BackendUnavailableError):
        await b.take("k")
    await b.aclose()


async def test_an_existing_async_client(redis_server: Server, prefix: str) -> None:
    client = redis.asyncio.Redis(port=redis_server.port)
    b = AsyncRedisBackend(TokenBucketConfig(1, 1, 3600), client=client, prefix=prefix)
    assert await b.try_take("k") and not await b.try_take("k")
    await b.aclose()
    assert await client.exists(f"{prefix}:{{k}}") == 1
    await client.aclose()


async def test_a_server_that_stops_answering_times_out_and_the_wire_recovers(own_server: Server,
                                                                               prefix: str) -> None:
    """The deadline timer of a wire (no asyncio.timeout per read) fails a
    request within the timeout; the connections are replaced afterwards."""
    b = backend(own_server, prefix, 10, 1, 3600, timeout=0.25)
    assert await b.try_take("k")
    assert own_server.proc is not None
    os.kill(own_server.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            await b.take("k")
        assert 0.2 < time.monotonic() - start < 0.6
    finally:
        os.kill(own_server.proc.pid, signal.SIGCONT)
    # Redis may still run the request that timed out once it resumes: an
    # answer lost costs a token, never an extra admission.
    assert (await b.take("k")).remaining in (7, 8)
    await b.aclose()


async def test_a_burst_waits_for_the_few_connections_allowed(redis_server: Server, prefix: str) -> None:
    b = backend(redis_server, prefix, 1000, 1, 3600)
    b.max_wires = 2
    tasks = [asyncio.ensure_future(b.take(f"k{i % 7}")) for i in range(60)]
    tasks[5].cancel()  # a waiter that leaves must not strand the others
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(1 for r in done if isinstance(r, asyncio.CancelledError)) == 1
    assert all(r.allowed for r in done if not isinstance(r, BaseException))
    assert b._wires is not None and b._wires.open <= 2 and not b._wires.queue
    await b.aclose()
