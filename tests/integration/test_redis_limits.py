"""Several limits on one key on Redis (issue 10 item 6): RedisBackend and
AsyncRedisBackend given Limits (or "10/second and 1000/day") take from
every limit's bucket in one take_all.lua call, all or nothing, on a single
server and on the cluster."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List, Tuple

import pytest
import redis

from guardian import Limits, RateLimiter, TokenBucketConfig
from guardian._errors import ConfigurationError, InvalidArgumentError, MisuseError
from guardian.backends.batched import BatchedRedisBackend
from guardian.backends.batched_async import AsyncBatchedRedisBackend
from guardian.backends.redis import RedisBackend
from guardian.backends.redis_async import AsyncRedisBackend

pytestmark = pytest.mark.redis

HOUR = TokenBucketConfig.parse("30/hour")
DAY = TokenBucketConfig.parse("50/day")


def _hammer(url: str, prefix: str, limits: Any, key: str, clients: int = 2, each: int = 60) -> int:
    """``clients`` backends (own connections) in threads, ``each`` checks
    apiece on one key, started together: how many were admitted."""
    backends = [RedisBackend(limits, url=url, prefix=prefix) for _ in range(clients)]
    admitted: List[int] = [0] * clients
    start = threading.Barrier(clients)

    def run(i: int) -> None:
        start.wait()
        admitted[i] = sum(backends[i].try_take(key) for _ in range(each))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b in backends:
        b.close()
    return sum(admitted)


def test_both_limits_exact_under_two_clients(deployment: Tuple[str, Any], prefix: str) -> None:
    url, _ = deployment
    hour = RedisBackend(HOUR, url=url, prefix=prefix)  # the same buckets, one limit each
    day = RedisBackend(DAY, url=url, prefix=prefix)
    # The hour binds first: exactly its 30, and the denied checks took
    # nothing from the day bucket.
    assert _hammer(url, prefix, "30/hour and 50/day", "k") == 30
    assert (hour.usage("k"), day.usage("k")) == (30, 30)
    # An emptied hour: now the day binds, at exactly its 20 left.
    hour.reset("k")
    assert _hammer(url, prefix, Limits(HOUR, DAY), "k") == 20
    assert (hour.usage("k"), day.usage("k")) == (20, 50)
    hour.close()
    day.close()


def test_a_denial_says_which_limit_and_when(deployment: Tuple[str, Any], prefix: str) -> None:
    url, _ = deployment
    b = RedisBackend("3/hour and 5/day", url=url, prefix=prefix)
    assert [b.try_take("a") for _ in range(3)] == [True] * 3
    why = b.take_detail("a")
    assert (why.denied_by, why.limit) == (0, TokenBucketConfig(3, 3, 3600))
    assert not why.result.allowed and why.result.limit == 3
    assert why.result.retry_after == pytest.approx(1200, abs=1)  # the hour's next token
    assert [r.allowed for r in why.results] == [False, True]  # the day alone would admit
    assert why.results[1].remaining == 1  # ...leaving 1 (nothing was taken)
    # The second limit denies: 5/hour and 3/day.
    b2 = RedisBackend(Limits.parse("5/hour and 3/day"), url=url, prefix=prefix)
    assert [b2.take("b").allowed for _ in range(3)] == [True] * 3
    why = b2.take_detail("b")
    assert (why.denied_by, why.limit) == (1, TokenBucketConfig(3, 3, 86400))
    assert why.result.retry_after == pytest.approx(28800, abs=1)
    assert why.results[0].allowed and why.results[0].remaining == 1
    # Both deny: the longest wait speaks.
    b3 = RedisBackend("2/hour and 2/day", url=url, prefix=prefix)
    assert b3.take("c", 2).allowed
    why = b3.take_detail("c")
    assert why.denied_by == 1 and why.result.retry_after == pytest.approx(43200, abs=1)
    # Admitted: the tightest limit speaks for the rest.
    fresh = b.take_detail("fresh")
    assert fresh.denied_by is None and fresh.result.remaining == 2 and fresh.result.limit == 3
    for backend in (b, b2, b3):
        backend.close()


def test_usage_reset_peek_and_the_facade(deployment: Tuple[str, Any], prefix: str) -> None:
    url, _ = deployment
    b = RedisBackend("3/hour and 5/day", url=url, prefix=prefix)
    limiter = RateLimiter(b)
    assert [limiter.try_acquire("u") for _ in range(4)] == [True, True, True, False]
    assert limiter.get_usage("u") == 3  # the hour: no token left
    assert b.peek("u").allowed is False and b.peek("u", 0).remaining == 0
    assert [r.allowed for r in limiter.check_many(["v", "w"])] == [True, True]
    assert not limiter.check_limit("u").allowed
    limiter.reset("u")
    assert limiter.get_usage("u") == 0 and limiter.check_limit("u").remaining == 2
    with pytest.raises(InvalidArgumentError):
        b.take("u", 4)  # more than the smallest capacity: refused, nothing sent
    with pytest.raises(MisuseError, match="no leases"):
        b.reserve_tokens("u", 2)
    b.close()


def test_async_takes_all_or_nothing(deployment: Tuple[str, Any], prefix: str) -> None:
    url, _ = deployment

    async def main() -> None:
        # connect_timeout: a cluster client's first calls connect to every
        # node; on a loaded 2-core machine 0.25 s was seen to expire
        b = AsyncRedisBackend("3/hour and 5/day", url=url, prefix=prefix, connect_timeout=2.0)
        # Two clients at once on one key: exactly the hour's 3.
        other = AsyncRedisBackend(Limits.parse("3/hour and 5/day"), url=url, prefix=prefix, connect_timeout=2.0)
        # One check first on each: concurrent first checks on a fresh
        # asyncio cluster client (no slot map yet, so redis-py's client
        # serves them) can fail with "Connection closed by server" inside
        # redis-py (also with one limit; reported, not this test's subject).
        assert await b.try_take("k") and await other.try_take("k")
        got = 2 + sum(await asyncio.gather(*[(b if i % 2 else other).try_take("k") for i in range(10)]))
        assert got == 3
        why = await b.take_detail("k")
        assert why.denied_by == 0 and why.result.retry_after == pytest.approx(1200, abs=1)
        assert await b.usage("k") == 3
        day = AsyncRedisBackend(DAY.__class__.parse("5/day"), url=url, prefix=prefix)
        assert await day.usage("k") == 3  # denied checks took nothing from the day
        await b.reset("k")
        assert (await b.take("k")).remaining == 2
        with pytest.raises(MisuseError):
            await b.reserve_tokens("k", 1)
        for backend in (b, other, day):
            await backend.aclose()

    asyncio.run(main())


def test_keys_of_one_check_share_a_slot(redis_server: Any, prefix: str) -> None:
    b = RedisBackend("3/hour and 5/day", url=redis_server.url, prefix=prefix)
    keys = [p.key("a}b") for p in b.packers]
    assert len({redis.crc.key_slot(k) for k in keys}) == 1 and len(set(keys)) == 2
    with pytest.raises(InvalidArgumentError, match="must not start with"):
        b.take("}x")  # no hash tag: the buckets would be in different slots
    b.close()


def test_misuse_is_refused_at_construction(redis_server: Any, prefix: str) -> None:
    url = redis_server.url
    with pytest.raises(MisuseError, match="limit_in_key"):
        RedisBackend("3/hour and 5/day", url=url, limit_in_key=False)
    with pytest.raises(ConfigurationError, match="100/minute"):
        RedisBackend("100 a minute", url=url)
    for cls in (BatchedRedisBackend, AsyncBatchedRedisBackend):
        with pytest.raises(MisuseError, match="RedisBackend"):
            cls("3/hour and 5/day", url=url, prefix=prefix)
        with pytest.raises(MisuseError, match="RedisBackend"):
            cls(Limits.parse("3/hour and 5/day"), url=url, prefix=prefix)
    single = BatchedRedisBackend("100/minute", url=url, prefix=prefix)
    assert single.config == TokenBucketConfig(100, 100, 60) and single.try_take("k")
    single.close()


def test_the_docs_snippet_runs(redis_server: Any) -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "redis.md").read_text()
    section = text.split("## Several limits on one key", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code.replace("redis://localhost:6379/0", redis_server.url), "docs/redis.md", "exec"), {})


def test_a_malformed_take_all_reply_is_a_backend_error(redis_server: Any) -> None:
    from guardian._errors import BackendError

    b = RedisBackend("3/hour and 5/day", url=redis_server.url)
    for reply in (None, [0], [3, 1, 0, 0, 1, 0, 0], [0, -1, 0, 0, 1, 0, 0], [0, b"1", 0, 0, 1, 0, 0],
                  [0, 1, 0, 0, 1, 0, 0, 7]):
        with pytest.raises(BackendError):
            b.decode_all(reply)
    b.close()


def test_the_hot_path_packs_what_the_plan_packs(redis_server: Any) -> None:
    b = RedisBackend("3/hour and 5/day and 10/minute", url=redis_server.url, prefix="p")
    for key in ("k", "a}b", "ünï{code}", "x" * 300):
        for cost in (1, 2, 3):
            assert b.pack_take_all(key, cost) == b.plan_take_all(key, cost)[1]
    for bad in ("", "}x", 5):
        with pytest.raises((InvalidArgumentError, TypeError)):
            b.pack_take_all(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        b.pack_take_all("k", 4)
    b.close()


def test_the_async_facade_with_limits(redis_server: Any, prefix: str) -> None:
    from guardian import AsyncRateLimiter

    with pytest.raises(MisuseError, match="AsyncRateLimiter"):
        RateLimiter(AsyncRedisBackend("3/hour and 5/day", url=redis_server.url))

    async def main() -> None:
        limiter = AsyncRateLimiter(AsyncRedisBackend("3/hour and 5/day", url=redis_server.url, prefix=prefix,
                                                    connect_timeout=2.0),
                                   fail_open="local")
        assert [await limiter.try_acquire("k") for _ in range(4)] == [True, True, True, False]
        assert await limiter.get_usage("k") == 3
        assert (await limiter.check_limit("k")).retry_after == pytest.approx(1200, abs=1)
        assert [r.allowed for r in await limiter.check_many(["a", "b"])] == [True, True]
        await limiter.reset("k")
        assert await limiter.get_usage("k") == 0
        await limiter.backend.aclose()

    asyncio.run(main())
