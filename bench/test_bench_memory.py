"""ns per check of guardian's in-memory core, its floors and its peers.

Every subject is measured the same way: one round is one pass of a Python
``for`` loop that calls the subject's check once per key, written as users
write it (``obj.method(key)``). Two key shapes, one benchmark group each:

* ``1 key``: the same key ONE_KEY_BATCH times per round;
* ``100k keys``: a pass over N_KEYS distinct keys per round.

Every limit is generous (LIMIT per second with a burst of LIMIT), so checks
are allowed: the path that writes. The loop overhead is in every figure,
floors included; bench/report.py divides by the calls per round.
"""

from __future__ import annotations

import os
import uuid
from types import ModuleType
from typing import Callable, Dict, List, Tuple

import limits
import limits.storage
import limits.strategies
import pyrate_limiter
import pytest
import throttled
import token_bucket

from guardian import MemoryBackend, RateLimiter, TokenBucketConfig, _impl, _pycore

LIMIT = 10**9
CONFIG = TokenBucketConfig(capacity=LIMIT, refill_rate=LIMIT, refill_interval=1)
SLOTS = 2**18  # 4 MiB of slots, a load of 0.38 at 100,000 keys

Batch = Callable[[], None]
Factory = Callable[[List[str], ModuleType], Tuple[Batch, Callable[[], None]]]
SUBJECTS: Dict[str, Factory] = {}


def subject(name: str) -> Callable[[Factory], Factory]:
    def register(factory: Factory) -> Factory:
        SUBJECTS[name] = factory
        return factory

    return register


def _nothing() -> None:
    pass


# --- floors (bench/_floor.pyx) ------------------------------------------------


@subject("floor-noop")
def _floor_noop(keys, floor):
    obj = floor.Noop()

    def run():
        for k in keys:
            obj.try_acquire(k)

    return run, _nothing


@subject("floor-noop-cost-arg")
def _floor_noop_cost(keys, floor):
    obj = floor.Noop()

    def run():
        for k in keys:
            obj.try_acquire_cost(k)

    return run, _nothing


@subject("floor-hash-cas")
def _floor_hash_cas(keys, floor):
    obj = floor.HashCas(SLOTS)

    def run():
        for k in keys:
            obj.try_acquire(k)

    return run, _nothing


@subject("floor-hash-cas-cost-arg")
def _floor_hash_cas_cost(keys, floor):
    obj = floor.HashCas(SLOTS)

    def run():
        for k in keys:
            obj.try_acquire_cost(k)

    return run, _nothing


@subject("floor-hash-clock-cas")
def _floor_hash_clock_cas(keys, floor):
    obj = floor.HashCas(SLOTS)

    def run():
        for k in keys:
            obj.try_acquire_clock(k)

    return run, _nothing


# --- guardian -------------------------------------------------------------------


def _backend(kind: str) -> Tuple[MemoryBackend, Callable[[], None]]:
    if kind == "local":
        backend = MemoryBackend(CONFIG, slots=SLOTS)
        return backend, backend.close
    if kind == "shared":
        name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        backend = MemoryBackend(CONFIG, shared=name, slots=SLOTS)

        def close() -> None:
            backend.close()
            MemoryBackend.unlink(name)

        return backend, close
    assert kind == "pycore"
    saved = _impl.Table
    _impl.Table = _pycore.Table  # MemoryBackend looks the core up at construction
    try:
        backend = MemoryBackend(CONFIG, slots=SLOTS)
    finally:
        _impl.Table = saved
    return backend, backend.close


def _guardian_try(kind: str) -> Factory:
    def factory(keys, floor):
        backend, close = _backend(kind)
        limiter = RateLimiter(backend)

        def run():
            for k in keys:
                limiter.try_acquire(k)

        return run, close

    return factory


def _guardian_check(kind: str) -> Factory:
    def factory(keys, floor):
        backend, close = _backend(kind)
        limiter = RateLimiter(backend)

        def run():
            for k in keys:
                limiter.check_limit(k)

        return run, close

    return factory


for _kind in ("local", "shared", "pycore"):
    subject(f"guardian-try_acquire-{_kind}")(_guardian_try(_kind))
    subject(f"guardian-check_limit-{_kind}")(_guardian_check(_kind))


@subject("guardian-try_acquire-local-draining")
def _guardian_draining(keys, floor):
    """Buckets that drain (C = LIMIT, 1 token a second, far below the check
    rate of every key): every check is still allowed, but no slot ever
    expires, so no key is ever moved out of its slot. Its gap to
    guardian-try_acquire-local at 100k keys is the cost of keys evicting
    each other from expired slots and being re-inserted."""
    backend = MemoryBackend(TokenBucketConfig(LIMIT, 1, 1), slots=SLOTS)
    limiter = RateLimiter(backend)

    def run():
        for k in keys:
            limiter.try_acquire(k)

    return run, backend.close


# --- limits: MemoryStorage with each strategy's hit() ------------------------


def _limits(strategy_cls) -> Factory:
    def factory(keys, floor):
        storage = limits.storage.MemoryStorage()
        strategy = strategy_cls(storage)
        item = limits.RateLimitItemPerSecond(LIMIT)

        def run():
            for k in keys:
                strategy.hit(item, k)

        def close() -> None:
            storage.timer.cancel()  # its expiry thread first: it races reset()
            storage.timer.join()
            storage.reset()

        return run, close

    return factory


subject("limits-fixed-window")(_limits(limits.strategies.FixedWindowRateLimiter))
subject("limits-moving-window")(_limits(limits.strategies.MovingWindowRateLimiter))
subject("limits-sliding-window-counter")(
    _limits(limits.strategies.SlidingWindowCounterRateLimiter)
)


# --- pyrate-limiter v4: Limiter.try_acquire(name, blocking=False) -------------


class _PerName(pyrate_limiter.BucketFactory):
    """One bucket per name, created on demand: the README's PerNameFactory."""

    def __init__(self, make_bucket):
        self.clock = pyrate_limiter.MonotonicClock()
        self.make_bucket = make_bucket
        self.buckets = {}

    def wrap_item(self, name, weight=1):
        return pyrate_limiter.RateItem(name, self.clock.now(), weight=weight)

    def get(self, item):
        bucket = self.buckets.get(item.name)
        if bucket is None:
            bucket = self.buckets[item.name] = self.make_bucket(self)
        return bucket


def _pyrate(make_bucket) -> Factory:
    def factory(keys, floor):
        if len(set(keys)) == 1:
            # One key: the plain Limiter(bucket), a single bucket for all names.
            limiter = pyrate_limiter.Limiter(make_bucket(None))
        else:
            limiter = pyrate_limiter.Limiter(_PerName(make_bucket))

        def run():
            for k in keys:
                limiter.try_acquire(k, blocking=False)

        return run, limiter.close

    return factory


def _rates():
    return [pyrate_limiter.Rate(LIMIT, pyrate_limiter.Duration.SECOND)]


def _in_memory(factory):
    bucket = pyrate_limiter.InMemoryBucket(_rates())
    if factory is not None:
        factory.schedule_leak(bucket)  # what BucketFactory.create does
    return bucket


def _gcra_state(factory):
    return pyrate_limiter.StateBucket(_rates(), pyrate_limiter.GCRA())


subject("pyrate-in-memory-bucket")(_pyrate(_in_memory))
subject("pyrate-gcra-state-bucket")(_pyrate(_gcra_state))


# --- throttled-py: Throttled(...).limit(key) on a MemoryStore -----------------


def _throttled(using: str) -> Factory:
    def factory(keys, floor):
        store = throttled.MemoryStore(options={"MAX_SIZE": SLOTS})  # no LRU eviction
        limiter = throttled.Throttled(
            using=using, quota=throttled.per_sec(LIMIT, burst=LIMIT), store=store
        )

        def run():
            for k in keys:
                limiter.limit(k)

        return run, _nothing

    return factory


subject("throttled-token-bucket")(_throttled("token_bucket"))
subject("throttled-gcra")(_throttled("gcra"))


# --- token-bucket: Limiter(rate, capacity, MemoryStorage()).consume(key) ------


@subject("token-bucket")
def _token_bucket(keys, floor):
    limiter = token_bucket.Limiter(LIMIT, LIMIT, token_bucket.MemoryStorage())

    def run():
        for k in keys:
            limiter.consume(k)

    return run, _nothing


# --- the benchmarks -------------------------------------------------------------


# limits 5.8's MemoryStorage expiry thread can die of a KeyError when a hit
# pops a key it is scanning (a race of its own): report it, don't fail on it.
PEER_THREADS = pytest.mark.filterwarnings(
    "default::pytest.PytestUnhandledThreadExceptionWarning"
)


@PEER_THREADS
@pytest.mark.benchmark(group="1 key")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_one_key(measure, floor, one_key, name):
    measure(lambda keys: SUBJECTS[name](keys, floor), one_key)


@PEER_THREADS
@pytest.mark.benchmark(group="100k keys")
@pytest.mark.parametrize("name", list(SUBJECTS))
def test_100k_keys(measure, floor, many_keys, name):
    measure(lambda keys: SUBJECTS[name](keys, floor), many_keys)
