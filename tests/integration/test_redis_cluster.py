"""RedisBackend on a Redis Cluster (3 masters, 3 replicas) and on Sentinel,
including failovers. The exactness, skew and over-admission tests run on
the cluster too (test_redis_backend.py, the ``deployment`` fixture)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import redis
from redis_servers import Cluster, Sentinel, wait_until

from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig
from guardian.backends.redis import RedisBackend
from guardian.backends.redis_async import AsyncRedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

CONFIG = TokenBucketConfig(5, 1, 3600)


def test_cluster_operations_across_slots(redis_cluster: Cluster, prefix: str) -> None:
    backend = RedisBackend(CONFIG, url=redis_cluster.url, prefix=prefix)
    assert not backend.direct
    keys = [f"user-{i}" for i in range(300)] + ["user-0"] * 5
    results = backend.take_many(keys, 1)
    assert [r.allowed for r in results] == [True] * 300 + [True] * 4 + [False]
    assert backend.take("user-1", 4).allowed and backend.usage("user-1") == 5
    backend.reset("user-1")
    assert backend.usage("user-1") == 0
    granted, *_ = backend.reserve("r", 10)
    assert granted == 5
    for server in redis_cluster.servers:
        server.cli("script", "flush")
    assert backend.take("user-2").remaining == 3
    for server in redis_cluster.servers:
        server.cli("script", "flush")
    assert len(backend.take_many(["a", "b", "c"])) == 3
    backend.close()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_calls_go_straight_to_the_primary_and_moved_goes_through_redis_py(
        redis_cluster: Cluster, prefix: str, monkeypatch: pytest.MonkeyPatch, asynchronous: bool) -> None:
    cls = AsyncRedisBackend if asynchronous else RedisBackend
    backend = cls(CONFIG, url=redis_cluster.url, prefix=prefix)

    async def run(result: Any) -> Any:
        return await result if asynchronous else result

    await run(backend.client.script_load(backend.packer.scripts["take"].source))  # every primary
    await run(backend.take("warm"))  # the async client maps the slots on its first command
    via: List[Any] = []
    original = backend._via_client

    def spy(calls: Any) -> Any:
        via.append(calls)
        return original(calls)

    monkeypatch.setattr(backend, "_via_client", spy)
    assert all([(await run(backend.take(f"k{i}"))).allowed for i in range(20)])
    assert [r.remaining for r in await run(backend.take_many([f"m{i}" for i in range(50)] + ["m0"]))] == (
        [4] * 50 + [3])
    assert via == []
    # A stale map (as after a resharding): the node answers MOVED, redis-py's
    # client serves the call and corrects the map both paths read.
    cache = backend.client.nodes_manager.slots_cache
    slot = backend.packer.slot("k0")
    right = cache[slot]
    cache[slot] = [next(n[0] for n in cache.values() if n[0].name != right[0].name)]
    assert (await run(backend.take("k0"))).remaining == 3
    assert len(via) == 1 and cache[slot][0].name == right[0].name
    await run(backend.aclose() if asynchronous else backend.close())


async def test_async_cluster(redis_cluster: Cluster, prefix: str) -> None:
    backend = AsyncRedisBackend(CONFIG, url=redis_cluster.url, prefix=prefix)
    results = await backend.take_many([f"k{i}" for i in range(50)] + ["k0"] * 5, 1)
    assert [r.allowed for r in results] == [True] * 54 + [False]
    assert (await backend.take("k1", 2)).remaining == 2
    assert await backend.usage("k1") == 3
    await backend.aclose()


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of this test alone: it loses a master."""
    cluster = Cluster(tmp_path).start()
    yield cluster
    cluster.stop()


def test_limit_survives_a_master_failover(failover_cluster: Cluster, prefix: str) -> None:
    cluster = failover_cluster
    limiter = RateLimiter(RedisBackend(CONFIG, url=cluster.url, prefix=prefix), fail_open=False)
    assert limiter.check_limit("k", 3).remaining == 2
    raw = redis.RedisCluster(host="127.0.0.1", port=cluster.servers[0].port)
    key = limiter.backend.packer.key("k")
    node = raw.get_node_from_key(key)
    assert raw.execute_command("WAIT", 1, 2000, target_nodes=node) == 1  # replicated
    raw.close()
    master = next(s for s in cluster.servers if s.port == node.port)
    master.kill()
    start = time.monotonic()
    # Checks keep getting answers (denials by policy while the slot has no
    # master), and the bucket's state comes back with the promoted replica.
    # "k}1" is another bucket in k's slot: its hash tag is "k" too.
    wait_until(lambda: limiter.check_limit("k}1").allowed, 15, "the failover", step=0.05)
    took = time.monotonic() - start
    assert limiter.get_usage("k") == 3
    assert limiter.check_limit("k", 2).allowed and not limiter.check_limit("k").allowed
    print(f"failover served again after {took:.1f}s")
    limiter.close()


def test_sentinel(sentinel: Sentinel, prefix: str) -> None:
    limiter = RateLimiter(RedisBackend(CONFIG, url=sentinel.url, prefix=prefix), fail_open=False)
    assert limiter.check_limit("k", 3).remaining == 2
    raw = redis.Redis(port=sentinel.master.port)
    assert raw.execute_command("WAIT", 1, 2000) == 1
    raw.close()
    sentinel.master.kill()
    wait_until(lambda: limiter.check_limit("other").allowed, 30, "the Sentinel failover", step=0.05)
    assert sentinel.replica.cli("role").startswith("master")
    assert limiter.get_usage("k") == 3
    limiter.close()


async def test_async_sentinel(sentinel: Sentinel, prefix: str) -> None:
    limiter = AsyncRateLimiter(AsyncRedisBackend(CONFIG, url=sentinel.url, prefix=prefix))
    assert (await limiter.check_limit("k", 3)).remaining == 2
    assert await limiter.get_usage("k") == 3
    await limiter.aclose()
