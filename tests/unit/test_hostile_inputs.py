"""Hostile and mistaken inputs on the library surface (found in review):
each is refused with a guardian error that says what to do, when the
object is built or at the call, and takes no token."""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import pytest

from guardian import (
    ArgumentTypeError,
    AsyncRateLimiter,
    ConfigurationError,
    InvalidArgumentError,
    Limits,
    MemoryBackend,
    MisuseError,
    RateLimiter,
    RateLimitError,
    TokenBucketConfig,
)
from guardian.backends import AsyncBatchedRedisBackend, AsyncRedisBackend, BatchedRedisBackend, RedisBackend

CONFIG = TokenBucketConfig(5, 1)
URL = "redis://127.0.0.1:1/0"  # never connected: the refusals happen first


@pytest.mark.parametrize("text", [
    "9" * 5000 + "/second",                 # more digits than int() reads
    "10/second; burst " + "9" * 5000,
    "10/" + "9" * 5000 + "s",
])
def test_a_huge_number_in_a_rate_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="too large"):
        TokenBucketConfig.parse(text)


@pytest.mark.parametrize("text", ["١٠/second", "１０/second", "10/second; burst ２"])
def test_only_ascii_digits_are_read(text: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        TokenBucketConfig.parse(text)


def test_a_written_burst_and_a_keyword_burst_still_conflict() -> None:
    with pytest.raises(ConfigurationError, match="gives another"):
        TokenBucketConfig.parse("10/second; burst 5", burst=7)
    assert TokenBucketConfig.parse("10/second; burst 5").capacity == 5


@pytest.mark.parametrize("keys", ["abc", b"abc", bytearray(b"abc")])
def test_backend_take_many_refuses_a_string_of_keys(keys: Any) -> None:
    backend = MemoryBackend(CONFIG)
    with pytest.raises(ArgumentTypeError, match="sequence of str"):
        backend.take_many(keys)
    assert all(backend.usage(k) == 0 for k in "abc")  # no one-letter bucket was touched


def test_several_limit_take_many_refuses_a_string_too() -> None:
    backend = MemoryBackend("10/second and 100/minute")
    with pytest.raises(ArgumentTypeError, match="sequence of str"):
        backend.take_many("abc")


@pytest.mark.parametrize("make", [
    lambda: RedisBackend(CONFIG, url=URL),
    lambda: BatchedRedisBackend(CONFIG, url=URL),
])
def test_redis_take_many_refuses_a_string_before_any_io(make: Any) -> None:
    backend = make()
    try:
        with pytest.raises(ArgumentTypeError, match="sequence of str"):
            backend.take_many("abc")  # not BackendError: nothing was sent
    finally:
        backend.close()


@pytest.mark.parametrize("make", [
    lambda: AsyncRedisBackend(CONFIG, url=URL),
    lambda: AsyncBatchedRedisBackend(CONFIG, url=URL),
])
def test_async_redis_take_many_refuses_a_string_before_any_io(make: Any) -> None:
    async def run() -> None:
        backend = make()
        try:
            with pytest.raises(ArgumentTypeError, match="sequence of str"):
                await backend.take_many("abc")
        finally:
            await backend.aclose()
    asyncio.run(run())


def test_check_many_reads_an_iterator_once_so_the_fallback_decides_the_same_keys() -> None:
    limiter = RateLimiter(MemoryBackend(CONFIG))
    results = limiter.check_many(k for k in ["a", "b"])
    assert [r.remaining for r in results] == [4, 4]
    with pytest.raises(ArgumentTypeError, match="sequence of str"):
        limiter.check_many(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("clock, match", [
    (lambda: 1.5, "integer nanoseconds"),
    (lambda: "now", "integer nanoseconds"),
    (lambda: True, "integer nanoseconds"),
    (lambda: -5, "from 0 to 2"),
    (lambda: 10**30, "from 0 to 2"),
    (5, "callable"),
])
def test_a_memory_backend_refuses_a_bad_clock_when_built(clock: Any, match: str) -> None:
    # Before: a float clock built fine and every check raised struct.error.
    with pytest.raises(MisuseError, match=match):
        MemoryBackend(CONFIG, clock=clock)


def test_a_manual_clock_still_works() -> None:
    now = [0]
    backend = MemoryBackend(CONFIG, clock=lambda: now[0])
    assert backend.take("k", 5).allowed and not backend.take("k").allowed
    now[0] += 1_000_000_000
    assert backend.take("k").allowed


def test_local_share_without_the_local_fallback_is_refused() -> None:
    # It would silently change nothing: the user believes the fallback is scaled.
    for fail_open in (True, False):
        with pytest.raises(MisuseError, match='fail_open="local"'):
            RateLimiter(MemoryBackend(CONFIG), fail_open=fail_open, local_share=0.5)
    RateLimiter(MemoryBackend(CONFIG), fail_open="local", local_share=0.5)
    RateLimiter(MemoryBackend(CONFIG), local_share=1)  # the default, said out loud


@pytest.mark.parametrize("kwargs, match", [
    (dict(log_interval=math.nan), "log_interval"),
    (dict(log_interval="10"), "log_interval"),
    (dict(log_interval=-1), "log_interval"),
    (dict(breaker_threshold=0), "breaker_threshold"),
    (dict(breaker_threshold="3"), "breaker_threshold"),
    (dict(breaker_cooldown=math.nan), "breaker_cooldown"),
    (dict(breaker_cooldown=math.inf), "breaker_cooldown"),  # would never probe the backend again
    (dict(breaker_cooldown=0), "breaker_cooldown"),
])
def test_failure_policy_options_are_checked_when_built(kwargs: Any, match: str) -> None:
    for make in (RateLimiter, AsyncRateLimiter):
        with pytest.raises(ConfigurationError, match=match) as info:
            make(MemoryBackend(CONFIG), **kwargs)
        assert isinstance(info.value, RateLimitError)


@pytest.mark.parametrize("kwargs, error", [
    (dict(key="k", cost=0), InvalidArgumentError),
    (dict(key="k", cost=6), InvalidArgumentError),        # above the capacity: never allowed
    (dict(key="k", cost=1.0), ArgumentTypeError),
    (dict(key="", cost=1), InvalidArgumentError),
    (dict(key=b"k", cost=1), ArgumentTypeError),
    (dict(key=None, cost=1), ArgumentTypeError),
])
def test_a_decorator_with_a_fixed_bad_key_or_cost_is_refused_when_applied(kwargs: Any, error: type) -> None:
    for limiter in (RateLimiter(MemoryBackend(CONFIG)), AsyncRateLimiter(MemoryBackend(CONFIG))):
        with pytest.raises(error):
            limiter.limit(**kwargs)


def test_a_decorator_checks_against_the_tightest_of_several_limits() -> None:
    limiter = RateLimiter(MemoryBackend(Limits.parse("3/second and 100/minute")))
    with pytest.raises(InvalidArgumentError, match="capacity 3"):
        limiter.limit(key="k", cost=4)
    assert limiter.limit(key="k", cost=3)(lambda: "ran")() == "ran"


def test_async_decorator_on_a_plain_function_is_a_guardian_misuse_error() -> None:
    limiter = AsyncRateLimiter(MemoryBackend(CONFIG))
    with pytest.raises(MisuseError, match="RateLimiter.limit for plain functions"):
        limiter.limit(key="k")(lambda: None)


def test_unlink_removes_the_tables_of_several_limits(shm_name: str) -> None:
    backend = MemoryBackend("10/second and 100/minute", shared=shm_name)
    backend.take("k")
    segments = [f for f in os.listdir("/dev/shm") if f.startswith(f"guardian.{shm_name}")]
    assert len(segments) == 2, segments
    assert MemoryBackend.unlink(shm_name) is True
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"guardian.{shm_name}")]
    assert MemoryBackend.unlink(shm_name) is False
    # A fresh attach under the same name starts with full buckets.
    assert MemoryBackend("10/second and 100/minute", shared=shm_name).take("k").remaining == 9


# -- Redis backends: options that let a hung or absent Redis go unbounded ----------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(timeout=math.inf), ConfigurationError, "timeout must be a positive finite"),
    (dict(connect_timeout=math.inf), ConfigurationError, "connect_timeout must be a positive finite"),
    (dict(socket_timeout=None), MisuseError, "pass timeout="),        # None: no timeout at all
    (dict(socket_connect_timeout=30), MisuseError, "pass connect_timeout="),
    (dict(max_connections=0), ConfigurationError, "max_connections must be an int >= 1"),
    (dict(prefix="\udc80"), ConfigurationError, "prefix is not valid Unicode"),
])
def test_redis_options_refused_when_built(kwargs: Any, error: type, match: str) -> None:
    for make in (RedisBackend, AsyncRedisBackend, BatchedRedisBackend, AsyncBatchedRedisBackend):
        with pytest.raises(error, match=match):
            make(CONFIG, url=URL, **kwargs)


def test_a_client_of_the_wrong_kind_is_refused_when_built() -> None:
    import redis
    import redis.asyncio

    # Before: accepted; every call then failed, and fail_open=True admitted every check.
    for make in (RedisBackend, BatchedRedisBackend):
        with pytest.raises(MisuseError, match="needs a synchronous redis client.*use the Async backend"):
            make(CONFIG, client=redis.asyncio.Redis(port=1))
    for amake in (AsyncRedisBackend, AsyncBatchedRedisBackend):
        with pytest.raises(MisuseError, match="needs a redis.asyncio client"):
            amake(CONFIG, client=redis.Redis(port=1))
    with pytest.raises(MisuseError, match="must be a redis-py client"):
        RedisBackend(CONFIG, client=object())
    RedisBackend(CONFIG, client=redis.Redis(port=1)).close()  # the right kind still builds


# -- middleware, in-app limits and interceptors: the wrong object where a limiter belongs --

def _not_limiters() -> list:
    return [CONFIG, MemoryBackend(CONFIG), "10/second"]


def test_middleware_refuses_what_is_not_a_limiter_when_built() -> None:
    from guardian.asgi import RateLimitMiddleware as Asgi
    from guardian.wsgi import RateLimitMiddleware as Wsgi

    async def app(scope: Any, receive: Any, send: Any) -> None: ...
    limiter = RateLimiter(MemoryBackend(CONFIG))
    # Before: built fine, then every request raised AttributeError (a 500), none was limited.
    for wrong in _not_limiters():
        for make in (lambda **kw: Asgi(app, **kw), lambda **kw: Wsgi(lambda e, s: [], **kw)):
            with pytest.raises(MisuseError, match=r"RateLimiter\(MemoryBackend\(config\)\)"):
                make(limiter=wrong)
            with pytest.raises(MisuseError, match="the limiter of route '/login'"):
                make(limiter=limiter, routes={"POST /login": wrong})
    with pytest.raises(MisuseError, match="key_func must be a callable"):
        Asgi(app, limiter=limiter, key_func="ip")
    with pytest.raises(MisuseError, match="list of Route"):
        Asgi(app, limiter=limiter, routes=["/login"])
    Asgi(app, limiter=limiter, routes={"POST /login": limiter, "/health": None})  # still fine


def test_in_app_limits_and_interceptors_refuse_what_is_not_a_limiter() -> None:
    import flask

    import guardian.django
    import guardian.fastapi
    import guardian.flask
    import guardian.grpc

    for wrong in _not_limiters():
        for make in (lambda: guardian.fastapi.RateLimit(wrong),
                     lambda: guardian.flask.limit(wrong, key=lambda: "k"),
                     lambda: guardian.django.limit(wrong, key=lambda r: "k"),
                     lambda: guardian.grpc.RateLimitInterceptor(wrong),
                     lambda: guardian.grpc.AsyncRateLimitInterceptor(wrong)):
            with pytest.raises(MisuseError, match="must be a RateLimiter or AsyncRateLimiter"):
                make()
    with pytest.raises(MisuseError, match="RateLimitInterceptor a RateLimiter"):
        guardian.grpc.RateLimitInterceptor(AsyncRateLimiter(MemoryBackend(CONFIG)))
    guardian.grpc.RateLimitInterceptor(RateLimiter(MemoryBackend(CONFIG)))
    guardian.flask.RateLimit(flask.Flask("t"), limiter=RateLimiter(MemoryBackend(CONFIG)))


@pytest.mark.parametrize("seed", ["x" * 16, 5, bytearray(16)])
def test_a_seed_that_is_not_bytes_is_a_misuse_error(seed: Any) -> None:
    with pytest.raises(MisuseError, match="seed must be 16 bytes"):
        MemoryBackend(CONFIG, seed=seed)


def test_a_wrong_policy_file_is_not_echoed_into_the_log() -> None:
    pytest.importorskip("yaml")
    from guardian.server.policy import PolicyError, parse_policy

    text = "".join(f"user{i}:$6$secret-hash-{i:05d}-{'x' * 60}:19000:0:99999:7:::\n" for i in range(5000))
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "/etc/shadow")
    message = str(info.value)
    assert "unknown key(s)" in message and "and 4997 more" in message
    assert len(message) < 400 and "\n" not in message
    with pytest.raises(PolicyError, match="unknown key"):
        parse_policy("domian: edge\n", "typo.yaml")  # a short one is still shown whole


def test_local_shared_needs_fail_open_local_and_is_checked_when_built() -> None:
    from guardian import MemoryBackend, MisuseError, RateLimiter, TokenBucketConfig
    from guardian._errors import SharedTableError
    from guardian.backends.redis import RedisBackend

    backend = RedisBackend(TokenBucketConfig(10, 1), url="redis://127.0.0.1:1/0")
    with pytest.raises(MisuseError, match="local_shared"):
        RateLimiter(backend, fail_open=True, local_shared="x")
    with pytest.raises(SharedTableError, match="name"):
        RateLimiter(backend, fail_open="local", local_shared="bad/name")
    other = MemoryBackend(TokenBucketConfig(99, 1), shared="guardian-test-fb-mismatch")
    try:  # a table of that name made for another limit: refused now, not mid-outage
        with pytest.raises(SharedTableError, match="holds a different limit"):
            RateLimiter(backend, fail_open="local", local_shared="guardian-test-fb-mismatch")
    finally:
        other.close()
        MemoryBackend.unlink("guardian-test-fb-mismatch")
