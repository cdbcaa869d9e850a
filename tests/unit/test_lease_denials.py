"""The batched backend's denial cache at fleet scale (docs/scaling.md): a
key over its limit is re-asked by every node; the cached window must grow
with consecutive denials (bounded so the bucket cannot overflow while all
nodes wait), and a node back from a window asks for what accrued."""

from __future__ import annotations

import threading
from typing import List

import pytest

from guardian import TokenBucketConfig
from guardian.backends._lease import Lease, LeaseBook
from guardian.backends._redis_scripts import Layout, Reserved

NOW = 10**12  # the book's clock, in ns; it does not move


def book(capacity: int = 100, rate: float = 200.0, lifetime: float = 5.0) -> LeaseBook:
    config = TokenBucketConfig(capacity, rate)
    return LeaseBook(config, shared=None, slots=64, lease_lifetime=lifetime, refresh_interval=0.1,
                     max_share=0.2, lock=threading.Lock, layout=Layout(config), clock=lambda: NOW)


def deny(b: LeaseBook, lease: Lease, retry_s: float) -> float:
    """A reserve reply with nothing granted; the seconds it is served from
    the cache for."""
    assert b.granted("k", lease, 1, 1, Reserved(0, 0, round(retry_s * b.tps), 0, 0), NOW) == 0
    return (b.denied["k"][0] - NOW) / 1e9


def test_consecutive_denials_back_off_up_to_a_bound() -> None:
    b = book()  # T = 5 ms; bound min(refresh 0.1 s, C*T/2 = 0.25 s)
    lease = b.lease("k")
    windows: List[float] = [deny(b, lease, 0.0025) for _ in range(8)]
    # Before: every window was Redis' 2.5 ms, so N nodes asked ~N/T times a second.
    assert windows == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1]
    # Back from a window, the node asks for the tokens that accrued in it,
    # no more than it was denied meanwhile (an idle node must not sit on them).
    assert b.size(lease, 0, 1) == 1
    for _ in range(7):
        assert b.cached_denial("k", 1) is not None
    assert b.size(lease, 0, 1) == 8
    for _ in range(100):
        b.cached_denial("k", 1)
    assert b.size(lease, 0, 1) == 20  # 0.1 s / 5 ms, capped at max_share * C
    b.granted("k", lease, 20, 1, Reserved(3, 0, 0, 15_000, 0), NOW)  # a partial grant resets the streak
    assert deny(b, lease, 0.0025) == 0.005
    assert b.size(lease, 0, 1) == 1


def test_window_bound_keeps_the_bucket_from_overflowing() -> None:
    b = book(capacity=10)  # C*T/2 = 25 ms < refresh
    lease = b.lease("k")
    assert [deny(b, lease, 0.0025) for _ in range(5)][-1] == 0.025


def test_window_never_undercuts_redis() -> None:
    b = book(capacity=5, rate=1 / 720, lifetime=1.0)  # one token per 12 minutes
    lease = b.lease("k")
    assert deny(b, lease, 0.5) == 0.5  # the cap (C*T/2 = 30 min, refresh 0.1 s) is below retry_after
    result = b.cached_denial("k", 1)
    assert result is not None and not result.allowed and result.retry_after == pytest.approx(0.5, abs=1e-3)
    assert deny(b, lease, 3600.0) == 1.0  # a cached entry still ends within a lease lifetime
