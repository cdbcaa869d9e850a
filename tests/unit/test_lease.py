"""Lease tables (credit, spend, drain, held on both cores) and lease sizing."""

from __future__ import annotations

from types import ModuleType

import pytest
from conftest import ManualClock

from guardian import ConfigurationError, InvalidArgumentError, TokenBucketConfig
from guardian.backends._lease import _SPAN, LeaseBook, LeaseTable, lease_size
from guardian.backends._redis_scripts import Layout


def table(core: ModuleType, clock: ManualClock, capacity: int = 100, slots: int = 64) -> LeaseTable:
    return LeaseTable(capacity, None, slots, clock)


def test_an_absent_key_holds_nothing(core: ModuleType, clock: ManualClock) -> None:
    t = table(core, clock)
    assert t.spend("k") == -1 and t.drain("k") == 0 and t.held("k") == 0
    assert t.spend("k") == -1  # spend never inserts


def test_credit_spend_drain(core: ModuleType, clock: ManualClock) -> None:
    t = table(core, clock)
    assert t.credit("k", 10)
    assert t.credit("k", 5) and t.held("k") == 15
    assert t.spend("k", 4) == 11
    assert t.spend("k", 12) == -1 and t.held("k") == 11  # nothing taken
    assert t.spend("k", 11) == 0 and t.spend("k") == -1
    assert t.credit("k", 3) and t.drain("k") == 3 and t.drain("k") == 0
    assert t.spends == 2


def test_held_tokens_do_not_decay_while_a_lease_lives(core: ModuleType, clock: ManualClock) -> None:
    t = table(core, clock, capacity=1000)
    assert t.credit("k", 7)
    clock.advance(3600)  # an hour: far beyond any lease
    assert t.held("k") == 7
    assert t.spend("k") == 6
    clock.advance(ns=_SPAN // 1000)  # one T later one token is gone
    assert t.held("k") == 5


def test_credit_never_exceeds_capacity(core: ModuleType, clock: ManualClock) -> None:
    t = table(core, clock, capacity=10)
    assert t.credit("k", 8)
    assert not t.credit("k", 3) and t.held("k") == 8
    assert t.credit("k", 2) and t.held("k") == 10 and t.spend("k", 10) == 0


def test_empty_lease_slots_are_reclaimed(core: ModuleType, clock: ManualClock) -> None:
    """An emptied slot holds no tokens and goes back to the pool: many keys
    leased one after another never fill a small table."""
    t = table(core, clock, slots=8)
    for i in range(500):
        key = f"key-{i}"
        assert t.credit(key, 3), i
        assert t.spend(key, 3) == 0
    assert t.stats()["full"] == 0


def test_bad_arguments(core: ModuleType, clock: ManualClock) -> None:
    t = table(core, clock)
    with pytest.raises(InvalidArgumentError):
        t.spend("k", 0)
    with pytest.raises(InvalidArgumentError):
        t.spend("k", 101)
    with pytest.raises(InvalidArgumentError):
        t.drain("")


@pytest.mark.parametrize(
    "consumed, elapsed, prev, expected",
    [
        (0, 0.0, 0, 1),  # a cold key reserves 1
        (1, 30.0, 1, 1),  # one check in 30 s stays at 1
        (2, 0.001, 2, 4),  # a burst may at most double the lease
        (400, 0.1, 64, 40),  # ~1 refresh of demand (4000/s * 0.01 s)...
        (10**6, 0.1, 10**5, 50),  # ...bounded by the max share
        (0, 5.0, 30, 1),  # demand gone: back to 1
    ],
)
def test_lease_size(consumed: int, elapsed: float, prev: int, expected: int) -> None:
    assert lease_size(consumed, elapsed, 0.01, prev, 50, 1) == expected


def test_lease_size_covers_the_cost() -> None:
    assert lease_size(0, 0.0, 0.1, 0, 50, 7) == 7


@pytest.mark.parametrize("kw", [{"max_share": 0.6}, {"max_share": 0}, {"lease_lifetime": 0},
                                {"refresh_interval": -1}])
def test_book_arguments(kw: dict) -> None:
    args = dict(shared=None, slots=64, lease_lifetime=5.0, refresh_interval=0.1, max_share=0.2,
                lock=object, layout=Layout(TokenBucketConfig(100, 10)))
    with pytest.raises(ConfigurationError):
        LeaseBook(TokenBucketConfig(100, 10), **{**args, **kw})


def test_capacity_too_large_for_the_lease_lifetime() -> None:
    with pytest.raises(ConfigurationError, match="too large"):
        LeaseBook(TokenBucketConfig(10**9, 10**9), shared=None, slots=64, lease_lifetime=5.0,
                  refresh_interval=0.1, max_share=0.2, lock=object,
                  layout=Layout(TokenBucketConfig(10**9, 10**9)))
