"""What the native data plane copies of a batched backend to answer its
lease hits in C: the book tells an observer every reservation, every lease
it forgets and its low water (LeaseBook.observe); the breaker tells its
watch when failures start and end; guardian._native.LeaseMirror keeps the
copy, bounded by the book's live leases. BucketReading (the core's reading
of a Redis bucket, which C and Python both call) equals its twin."""

from __future__ import annotations

import random
import threading
from typing import Any, List, Tuple

import pytest

from guardian import TokenBucketConfig, _impl, _pycore
from guardian._breaker import CircuitBreaker
from guardian.backends._lease import LeaseBook
from guardian.backends._redis_scripts import Layout, Reserved

NOW = [10**12]


class Recorder:
    """A LeaseObserver that records every call."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def reserved(self, key: str, ahead: int, ahead_at: int, low: int) -> None:
        self.calls.append(("reserved", key, ahead, ahead_at, low))

    def forgot(self, key: str) -> None:
        self.calls.append(("forgot", key))

    def forgot_all(self) -> None:
        self.calls.append(("forgot_all",))

    def low_water(self, low_cap: int) -> None:
        self.calls.append(("low_water", low_cap))


def book(lifetime: float = 5.0) -> LeaseBook:
    config = TokenBucketConfig(100, 200.0)
    return LeaseBook(config, shared=None, slots=64, lease_lifetime=lifetime, refresh_interval=0.1,
                     max_share=0.2, lock=threading.Lock, layout=Layout(config), clock=lambda: NOW[0])


def test_the_book_tells_its_observer_every_change() -> None:
    b = book()
    first = b.lease("old")
    b.granted("old", first, 8, 1, Reserved(8, 92, 0, 40_000, 1), NOW[0] - 5)
    seen = Recorder()
    b.observe(seen)
    # what the book holds already, then its low water
    assert seen.calls == [("forgot_all",), ("reserved", "old", 40_000, NOW[0] - 5, 4), ("low_water", 4)]
    seen.calls.clear()
    lease = b.lease("k")
    assert seen.calls == []  # a lease without a reservation: nothing to copy
    b.granted("k", lease, 20, 1, Reserved(20, 72, 0, 140_000, 2), NOW[0])
    assert seen.calls == [("low_water", 10), ("reserved", "k", 140_000, NOW[0], 10)]
    seen.calls.clear()
    b.granted("k", lease, 20, 1, Reserved(0, 0, 5, 150_000, 3), NOW[0])  # a denial is a reservation too
    assert seen.calls == [("reserved", "k", 150_000, NOW[0], 10)]
    seen.calls.clear()
    b.forget("k")  # reset
    assert seen.calls == [("forgot", "k")]
    seen.calls.clear()
    NOW[0] += 6 * 10**9  # past the lifetime: "old" expires, low water falls
    b.expired()
    assert seen.calls == [("forgot", "old"), ("low_water", 0)]
    seen.calls.clear()
    b.granted("n", b.lease("n"), 2, 1, Reserved(2, 98, 0, 10_000, 4), NOW[0])
    seen.calls.clear()
    b.everything()
    assert seen.calls == [("forgot", "n")]
    b.after_fork()
    assert b.observer is None  # a forked child's leases are not the parent's data plane's


def test_the_breaker_tells_its_watch_when_failures_start_and_end() -> None:
    t = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=1.0, clock=lambda: t[0])
    told: List[bool] = []
    breaker.watch = told.append
    breaker.failure()
    breaker.failure()  # opens: no second call, failures already count
    breaker.failure()
    assert told == [True]
    breaker.success()
    breaker.success()  # already clear: not told again
    assert told == [True, False]


native = pytest.importorskip("guardian._native") if not _impl.NO_EXTENSIONS else None


@pytest.mark.skipif(native is None, reason="the native data plane is not built")
def test_mirror_copies_and_stays_bounded() -> None:
    assert native is not None
    m = native.LeaseMirror()
    m.reserved("a", 5, 7, 0)
    m.reserved("a", 6, 8, 0)  # replaced
    m.reserved("é\udcff", 1, 2, 0)  # any str a Python caller can hold
    assert m.get("a") == (6, 8) and m.get("é\udcff") == (1, 2) and m.get("b") is None
    m.reserved("a", -1, 9, 0)  # no reservation any more
    assert m.get("a") is None and len(m) == 1
    m.low_water(17)
    m.failing(True)
    assert m.state == (17, True)
    keys = [f"k{i}" for i in range(200_000)]
    for i, k in enumerate(keys):
        m.reserved(k, i, i, 0)
    assert len(m) == 200_001
    random.Random(1).shuffle(keys)
    for k in keys[:150_000]:
        m.forgot(k)
    assert len(m) == 50_001
    for i, k in enumerate(keys[150_000:]):  # the rest survived the deletions' shifts
        assert m.get(k) == (int(k[1:]), int(k[1:])), k
    for k in keys[150_000:]:
        m.forgot(k)
    assert len(m) == 1
    m.forgot_all()
    assert len(m) == 0 and m.get("é\udcff") is None


def fields(r: Any) -> Tuple[Any, ...]:
    return r.allowed, r.remaining, r.retry_after, r.reset_after, r.limit


@pytest.mark.skipif(_impl.NO_EXTENSIONS, reason="compares the C core with its twin")
def test_bucket_reading_equals_the_twin() -> None:
    from guardian import _core

    rnd = random.Random(7)
    for P, tau, tps, cap in ((7, 700, 1_000_000, 100), (1, 2**52, 16_000_000, 2**52), (3_600_000_000, 3_600_000_000 * 5,
                                                                                        1_000_000, 5)):
        c, p = _core.BucketReading(P, tau, tps, cap), _pycore.BucketReading(P, tau, tps, cap)
        for _ in range(20_000):
            args = (rnd.random() < 0.5, rnd.randint(-2**53 + 1, 2**53 - 1) if rnd.random() < 0.2 else
                    rnd.randint(-P, tau + P), rnd.choice([0, -5, rnd.randint(0, 10**13), 2**62]),
                    rnd.choice([0, -1, rnd.randint(0, cap)]), rnd.random())
            x, y = c.since(*args), p.since(*args)
            assert fields(x) == fields(y), args
    for bad in ((0, 1, 1, 1), (1, -1, 1, 1), (1, 1, 0, 1), (1, 1, 2**53, 1), (1, 1, 1, 0)):
        for cls in (_core.BucketReading, _pycore.BucketReading):
            with pytest.raises(ValueError):
                cls(*bad)
    for cls in (_core.BucketReading, _pycore.BucketReading):
        with pytest.raises(ValueError, match="2\\^53"):
            cls(7, 700, 10, 100).since(True, 2**53, 0, 0, 0.0)


def test_reserve_replies_beyond_what_lua_holds_are_malformed() -> None:
    from guardian._errors import BackendError

    layout = Layout(TokenBucketConfig(10, 1))
    assert layout.reserved([1, 2, 0, 2**53 - 1, 5]).ahead_ticks == 2**53 - 1
    with pytest.raises(BackendError):
        layout.reserved([1, 2, 0, 2**53, 5])


@pytest.mark.skipif(native is None, reason="the native data plane is not built")
def test_an_undone_spend_never_gives_a_drained_lease_tokens_back() -> None:
    """A request C began and then hands to Python gives back what it spent,
    but only to the slot as the spend left it: after a drain (a reset, an
    expiry), a refill or another spend the tokens are dropped (fewer
    admitted, never more: a reset bucket in Redis plus void tokens here
    would admit more than the limit)."""
    from guardian.backends._lease import LeaseTable

    assert native is not None
    t = LeaseTable(100, None, 64, None)
    table = t._table
    t.credit("k", 10)
    assert native._spend_then_unspend(table, "k", 3, lambda: None) == (7, 0)
    assert t.held("k") == 10  # given back exactly
    assert native._spend_then_unspend(table, "k", 3, lambda: t.drain("k")) == (7, 1)
    assert t.held("k") == 0  # a reset drained it: nothing comes back
    t.credit("k", 10)
    assert native._spend_then_unspend(table, "k", 3, lambda: t.drain("k") and t.credit("k", 5)) == (7, 1)
    assert t.held("k") == 5  # drained and refilled since: still nothing of the old lease
    assert native._spend_then_unspend(table, "k", 2, lambda: t.spend("k", 1)) == (3, 1)
    assert t.held("k") == 2  # another spend since: dropped, not double-given
    spends = t.spends
    native._spend_then_unspend(table, "k", 1, lambda: None)
    assert t.spends == spends  # an undone spend is not a check served from the lease


def test_a_reservation_claims_the_tokens_of_the_check_that_asked() -> None:
    """The miss that reserved tokens takes its own out of the grant: never
    credited, so no other thread (or the native data plane) can spend them
    before it does; the lease's demand still counts them."""
    b = book()
    lease = b.lease("k")
    assert b.granted("k", lease, 8, 1, Reserved(8, 92, 0, 80_000, 1), NOW[0], claim=3) == 0
    assert b.table.held("k") == 5 and lease.held_at == 8 and lease.reservations[-1][2] == 5
    assert b.claimed(Reserved(8, 92, 0, 80_000, 1), 3) and not b.claimed(Reserved(2, 92, 0, 80_000, 1), 3)
    other = b.lease("j")
    assert b.granted("j", other, 2, 2, Reserved(2, 92, 0, 80_000, 1), NOW[0], claim=3) == 0
    assert b.table.held("j") == 2  # fewer granted than the claim: all credited, the check spends as before


def test_a_lease_dropped_mid_reservation_is_not_copied() -> None:
    b = book()
    seen = Recorder()
    b.observe(seen)
    lease = b.lease("k")
    b.leases.pop("k")  # an expiry scan while the reservation was in flight
    b.granted("k", lease, 4, 1, Reserved(4, 96, 0, 40_000, 1), NOW[0])
    assert [c for c in seen.calls if c[0] == "reserved"] == []
