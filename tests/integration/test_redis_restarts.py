"""Recovery after many Redis restarts with a small connection pool: the
backends give every connection back to the pool, whatever happened to it
(issue 11; the 300-restart figures come from bench/redis_restarts.py)."""

from __future__ import annotations

import pytest
import redis_restarts
from redis_servers import Server

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("kind", redis_restarts.KINDS)
def test_recovers_after_many_restarts_with_four_connections(own_server: Server, prefix: str, kind: str) -> None:
    # 25 outages x 3 failed checks: 75 failures; a leaked slot per failure
    # used to exhaust max_connections=4 after the second outage.
    samples = redis_restarts.run(own_server, prefix, kind, restarts=25, max_connections=4)
    assert samples[-1]["restart"] == 25
    assert samples[-1]["created"] <= 4 and samples[-1]["in_use"] <= 4


@pytest.mark.cluster
def test_cluster_connections_dropped_by_the_servers_go_back_to_the_pools(redis_cluster, prefix: str) -> None:
    """Every master drops every client connection (CLIENT KILL), 20 times:
    checks keep succeeding and each node's pool (max_connections=4) counts
    no more connections than are open."""
    from guardian import TokenBucketConfig
    from guardian.backends.redis import RedisBackend

    backend = RedisBackend(TokenBucketConfig(10**6, 10**6), url=redis_cluster.url, prefix=prefix,
                           max_connections=4, timeout=2.0)
    keys = [f"k{i}" for i in range(30)]  # on every master
    for round_ in range(20):
        assert all(r.allowed for r in backend.take_many(keys)), round_
        assert all(backend.try_take(k) for k in keys[:6]), round_
        for master in redis_cluster.masters():
            master.cli("CLIENT", "KILL", "TYPE", "normal")
    assert all(r.allowed for r in backend.take_many(keys))
    for node in backend.client.get_nodes():
        pool = node.redis_connection.connection_pool
        assert pool._created_connections <= 4, (node.name, pool._created_connections)
    backend.close()


async def test_async_wires_stay_within_max_connections(redis_server: Server, prefix: str) -> None:
    import asyncio

    from guardian import TokenBucketConfig
    from guardian.backends.redis_async import AsyncRedisBackend

    backend = AsyncRedisBackend(TokenBucketConfig(1000, 1, 3600), url=redis_server.url, prefix=prefix,
                                max_connections=3)
    results = await asyncio.gather(*(backend.try_take(f"k{i % 9}") for i in range(200)))
    assert all(results)
    assert backend._wires is not None and backend._wires.open <= 3
    await backend.aclose()


async def test_async_wires_the_server_closed_while_idle_are_replaced_not_failed(own_server: Server,
                                                                                 prefix: str) -> None:
    """The server drops every client connection (CLIENT KILL) between
    checks, 20 times: the event loop has seen each wire close, so the next
    check takes a fresh one instead of failing (and going to the policy)."""
    import asyncio

    import redis

    from guardian import TokenBucketConfig
    from guardian.backends.redis_async import AsyncRedisBackend

    backend = AsyncRedisBackend(TokenBucketConfig(10**6, 10**6), url=own_server.url, prefix=prefix,
                                max_connections=4, timeout=2.0)
    admin = redis.Redis.from_url(own_server.url)
    try:
        for round_ in range(20):
            results = await asyncio.gather(*(backend.take(f"k{i}") for i in range(4)))
            assert all(r.allowed for r in results), round_
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
            await asyncio.sleep(0.05)  # the loop sees the connections close
    finally:
        admin.close()
        await backend.aclose()
