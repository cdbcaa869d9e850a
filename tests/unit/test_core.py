"""The GCRA core, on both implementations (the ``core`` fixture)."""

from __future__ import annotations

import math
import pickle
import tracemalloc
from types import ModuleType

import pytest
from conftest import ManualClock
from gcra_cases import CASES, MULTI_CASES

from guardian import (
    ArgumentTypeError,
    Limits,
    InvalidArgumentError,
    MAX_KEY_BYTES,
    MemoryBackend,
    RateLimiter,
    TokenBucketConfig,
    _region,
)


def make(core: ModuleType, clock: ManualClock, capacity: int, rate: float,
         interval: float = 1.0, slots: int = 1024) -> MemoryBackend:
    return MemoryBackend(TokenBucketConfig(capacity, rate, interval), slots=slots, clock=clock)


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_gcra_cases(core: ModuleType, clock: ManualClock, case: str) -> None:
    (capacity, rate, interval), steps = CASES[case]
    backend = make(core, clock, capacity, rate, interval)
    start = clock.ns
    for at, op, key, cost, expected in steps:
        clock.ns = start + round(at * 1e9)
        if op == "usage":
            assert backend.usage(key) == expected, (at, op, key)
            continue
        r = backend.peek(key, cost) if op == "peek" else backend.take(key, cost)
        got = (r.allowed, r.remaining, r.retry_after, r.reset_after)
        assert got[:2] == expected[:2], (at, op, key, cost, got)
        assert got[2] == pytest.approx(expected[2], abs=1e-12), (at, key, cost, got)
        assert got[3] == pytest.approx(expected[3], abs=1e-12), (at, key, cost, got)
        assert r.limit == capacity


@pytest.mark.parametrize("case", sorted(MULTI_CASES))
def test_shared_multi_limit_cases(core: ModuleType, clock: ManualClock, case: str) -> None:
    configs, steps = MULTI_CASES[case]
    limits = Limits(*(TokenBucketConfig(*c) for c in configs))
    backend = MemoryBackend(limits, slots=1024, clock=clock)
    plain = MemoryBackend(limits, slots=1024, clock=clock)  # the same checks through take()
    start = clock.ns
    for at, key, cost, (denied_by, answers) in steps:
        clock.ns = start + round(at * 1e9)
        d = backend.take_detail(key, cost)
        assert plain.take(key, cost) == d.result
        got = [(r.allowed, r.remaining, r.retry_after, r.reset_after) for r in d.results]
        assert d.denied_by == denied_by, (at, key, cost, got)
        assert [g[:2] for g in got] == [a[:2] for a in answers], (at, key, cost, got)
        assert [g[2:] for g in got] == [pytest.approx(a[2:], abs=1e-9) for a in answers], (at, key, cost, got)
        one = d.result  # the answer take() gives, as one LimitResult
        assert one.allowed is (denied_by is None)
        assert one.remaining == min(a[1] for a in answers)
        if denied_by is not None:
            assert one.retry_after == pytest.approx(answers[denied_by][2], abs=1e-9)
            assert d.limit == limits[denied_by] and one.limit == limits[denied_by].capacity


def hammer(backend: MemoryBackend, clock: ManualClock, seconds: float, step_ms: int = 1) -> int:
    admitted = 0
    end = clock.ns + round(seconds * 1e9)
    while True:
        while backend.try_take("k"):
            admitted += 1
        if clock.ns + step_ms * 1_000_000 > end:
            return admitted
        clock.advance(ns=step_ms * 1_000_000)


def test_hammered_ten_seconds_admits_exactly_1100(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 100, 100)
    assert hammer(backend, clock, 10.0) == 1100


def jump_hammer(backend: MemoryBackend, clock: ManualClock, seconds: float) -> list:
    """Ask exactly when told to retry; return the admission times (ns)."""
    times = []
    start = clock.ns
    end = start + round(seconds * 1e9)
    while clock.ns <= end:
        r = backend.take("k")
        if r.allowed:
            times.append(clock.ns - start)
        else:
            clock.advance(ns=max(1, math.ceil(r.retry_after * 1e9 - 1e-3)))
    return times


def test_three_per_seven_seconds_does_not_drift_over_an_hour(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 3, 3, 7.0)
    times = jump_hammer(backend, clock, 3600.0)
    assert len(times) == 3 + 3600 * 3 // 7  # 1545
    # The k-th refill lands on ceil(k * 7/3 s), to the nanosecond.
    for k, at in enumerate(times[3:], start=1):
        assert at == -(-k * 7_000_000_000 // 3), k


def test_seven_per_second_exact_over_an_hour(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 5, 7)
    assert len(jump_hammer(backend, clock, 3600.0)) == 5 + 7 * 3600


def test_peek_is_the_take_it_predicts_and_writes_nothing(core: ModuleType, clock: ManualClock) -> None:
    """On a full table too: a peek for an absent key whose window has no
    slot answers the denial a take would get, and claims nothing."""
    backend = make(core, clock, 3, 1, 3600.0, slots=8)
    for i in range(8):
        assert backend.try_take(f"k{i}")
    before = backend.stats()
    predicted = backend.peek("newcomer", 1)
    assert not predicted.allowed and predicted.retry_after == pytest.approx(3600.0)
    assert backend.stats() == before  # not a take, not a FULL denial, no reclaim
    assert backend.take("newcomer", 1) == predicted
    for cost in (0, 1, 2, 3):
        p = backend.peek("k1", cost)
        assert backend.peek("k1", cost) == p  # nothing moved
        if cost:
            assert backend.take("k1", cost) == p
            backend.reset("k1")
            backend.take("k1", 1)
    clock.advance(3600.0 * 3)
    assert backend.peek("newcomer", 0) == core.LimitResult(True, 3, 0.0, 0.0, 3)  # an expired slot is room
    assert backend.usage("newcomer") == 0


@pytest.mark.parametrize("cost, error, message", [
    (-1, InvalidArgumentError, "at least 0"),
    (4, InvalidArgumentError, "above the bucket's capacity 3"),
    (1.0, ArgumentTypeError, "cost must be an int"),
    (True, ArgumentTypeError, "cost must be an int"),
])
def test_peek_refuses_bad_costs(core: ModuleType, clock: ManualClock, cost: object, error: type,
                                message: str) -> None:
    backend = make(core, clock, 3, 1)
    with pytest.raises(error, match=message):
        backend.peek("k", cost)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        backend.peek("", 1)


def test_usage_and_reset(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 10, 1)
    assert backend.usage("k") == 0
    assert backend.take("k", 4).remaining == 6
    assert backend.usage("k") == 4
    backend.reset("k")
    assert backend.usage("k") == 0
    assert backend.take("k", 10).allowed
    backend.reset("never-seen")  # resetting an unknown key is a no-op
    assert backend.usage("never-seen") == 0


def test_a_deciding_view_is_the_table_with_an_answer_for_a_stuck_lock(core: ModuleType, clock: ManualClock) -> None:
    """A view takes from the same buckets and counts where the table
    counts; it only answers where the table would raise (a stuck lock:
    tests/integration/test_shared_memory.py), and refuses a non-bool."""
    backend = make(core, clock, 3, 1)
    table = backend.table
    view = table.deciding(False, report=print)
    assert table.on_stuck is None and view.on_stuck is False and table.deciding(True).on_stuck is True
    assert view.try_acquire("k", 2) and backend.take("k").remaining == 0
    assert not view.try_acquire("k") and view.check_result("k") == backend.take("k")
    assert [r[0] for r in view.check_many(["k", "j"])] == [False, True]
    assert table.stats()["allowed"] == view.stats()["allowed"] == 3
    assert table.stats()["denied"] == view.stats()["denied"] == 4
    assert view.stats()["stuck"] == table.stats()["stuck"] == 0
    for bad in (1, None, "yes"):
        with pytest.raises(ArgumentTypeError, match="on_stuck must be True or False"):
            table.deciding(bad)
    view.close()  # a view's close leaves the table usable
    assert backend.usage("k") == 3


def test_result_object(core: ModuleType, clock: ManualClock) -> None:
    limiter = RateLimiter(make(core, clock, 1, 1))
    ok = limiter.check_limit("k")
    assert ok and ok.is_allowed() and ok.limit == 1 and ok.remaining == 0
    no = limiter.check_limit("k")
    assert not no and not no.is_allowed()
    assert no.retry_after == pytest.approx(1.0)
    assert "allowed=False" in repr(no)
    assert type(ok) is type(no) is core.LimitResult  # the deciding core's own type
    assert pickle.loads(pickle.dumps(no)) == no
    assert no != ok and no == core.LimitResult(False, 0, no.retry_after, no.reset_after, 1)
    with pytest.raises(TypeError):
        hash(no)


@pytest.mark.parametrize("key", ["ключ", "🔑🔑", "a\u0301", "e\u0300", "{braces}:colons", "x" * MAX_KEY_BYTES,
                                 "é" * (MAX_KEY_BYTES // 2)])
def test_unicode_and_long_keys_have_their_own_buckets(core: ModuleType, clock: ManualClock, key: str) -> None:
    backend = make(core, clock, 2, 1)
    assert backend.take(key, 2).allowed
    assert not backend.take(key).allowed
    assert backend.take(key[:-1] or "other").allowed  # a different key, a full bucket
    assert backend.usage(key) == 2


def test_normalisation_forms_are_different_keys(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 1, 1)
    assert backend.try_take("\u00e9")  # é, composed
    assert backend.try_take("e\u0301")  # é, decomposed: other bytes, other key


def test_check_many_decides_each_key(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 2, 1)
    results = backend.take_many(["a", "b", "a", "a"])
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [1, 1, 0, 0]
    assert backend.take_many([]) == []


def test_takes_are_counted_by_outcome(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 2, 1, slots=8)
    assert (backend.stats()["allowed"], backend.stats()["denied"]) == (0, 0)
    backend.try_take("a")
    backend.take("a")
    backend.take("a")  # denied
    backend.take_many(["a", "b"])  # denied, allowed
    backend.usage("a")
    backend.reset("a")
    assert (backend.stats()["allowed"], backend.stats()["denied"]) == (3, 2)
    for i in range(8):
        backend.try_take(f"fill{i}")
    assert not backend.try_take("newcomer") and backend.stats()["full"] >= 1  # a full window is a denial
    assert backend.stats()["allowed"] + backend.stats()["denied"] == 3 + 2 + 9


def test_table_full_denies_new_keys_and_never_over_admits(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 1, 1, 3600.0, slots=8)  # the window is the whole table
    for i in range(8):
        assert backend.try_take(f"k{i}")
    r = backend.take("newcomer")
    assert not r.allowed
    assert r.retry_after == pytest.approx(3600.0)  # when the first slot frees up
    assert backend.stats()["full"] == 1
    for i in range(8):  # live keys keep their (empty) buckets
        assert not backend.try_take(f"k{i}")
    clock.advance(3600.0)
    assert backend.try_take("newcomer")  # an expired slot is reclaimed...
    assert backend.stats()["reclaims"] == 1
    assert backend.try_take("k0")  # ...and its old key comes back full, as it was


def test_idle_keys_never_fill_the_table(core: ModuleType, clock: ManualClock) -> None:
    backend = make(core, clock, 5, 1000, slots=64)
    for i in range(10_000):
        assert backend.try_take(f"key-{i}"), i
        clock.advance(0.005)  # every bucket is full again by the next key
    assert backend.stats()["full"] == 0


class TestBadInput:
    """Bad arguments raise at once, with the right class, and change nothing."""

    @pytest.fixture
    def backend(self, core: ModuleType, clock: ManualClock) -> MemoryBackend:
        b = make(core, clock, 10, 1)
        b.take("k", 3)
        return b

    @pytest.mark.parametrize(
        "key, cost, error, message",
        [
            ("", 1, InvalidArgumentError, "must not be empty"),
            ("x" * (MAX_KEY_BYTES + 1), 1, InvalidArgumentError, "the maximum is 4096"),
            ("é" * (MAX_KEY_BYTES // 2 + 1), 1, InvalidArgumentError, "the maximum is 4096"),
            ("\ud800", 1, InvalidArgumentError, "not valid Unicode"),
            (b"k", 1, ArgumentTypeError, "key must be a str"),
            (None, 1, ArgumentTypeError, "key must be a str"),
            (42, 1, ArgumentTypeError, "key must be a str"),
            ("k", 0, InvalidArgumentError, "at least 1"),
            ("k", -1, InvalidArgumentError, "at least 1"),
            ("k", 11, InvalidArgumentError, "above the bucket's capacity 10"),
            ("k", 2**70, InvalidArgumentError, "above the bucket's capacity"),
            ("k", 1.0, ArgumentTypeError, "cost must be an int"),
            ("k", 1.5, ArgumentTypeError, "cost must be an int"),
            ("k", float("nan"), ArgumentTypeError, "cost must be an int"),
            ("k", True, ArgumentTypeError, "cost must be an int"),
            ("k", "1", ArgumentTypeError, "cost must be an int"),
        ],
    )
    def test_refused_without_change(self, backend: MemoryBackend, key: object, cost: object,
                                    error: type, message: str) -> None:
        for call in (backend.take, backend.try_take, lambda k, c: backend.take_many(["k", k], c)):
            with pytest.raises(error, match=message):
                call(key, cost)  # type: ignore[arg-type]
        assert backend.usage("k") == 3
        assert backend.stats()["full"] == 0
        assert issubclass(error, ValueError) or issubclass(error, TypeError)

    def test_bad_key_in_usage_and_reset(self, backend: MemoryBackend) -> None:
        for call in (backend.usage, backend.reset):
            with pytest.raises(InvalidArgumentError):
                call("")
            with pytest.raises(ArgumentTypeError):
                call(7)  # type: ignore[arg-type]
        assert backend.usage("k") == 3



def test_default_table_tracks_half_its_slots_at_32_bytes_per_key(core: ModuleType, clock: ManualClock) -> None:
    """The documented budget: at the default load factor of 1/2, every live
    key fits in its probe window and costs 32 bytes of table. Measured: the
    memory the table allocates, and that tracking the keys allocates none."""
    keys = [f"client-{i}" for i in range(_region.DEFAULT_SLOTS // 2)]
    last = 2048  # traced inserts (tracing them all is slow on the Python core)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        backend = MemoryBackend(TokenBucketConfig(1, 1, 3600), clock=clock)  # nobody refills
        made = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    admitted = sum(backend.try_take(key) for key in keys[:-last])
    tracemalloc.start()
    try:
        filled = tracemalloc.take_snapshot()
        admitted += sum(backend.try_take(key) for key in keys[-last:])
        tracked = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    table_bytes = sum(d.size_diff for d in made.compare_to(before, "filename"))
    per_key_bytes = sum(d.size_diff for d in tracked.compare_to(filled, "filename")) / last
    assert admitted == len(keys) and backend.stats()["full"] == 0 and backend.stats()["reclaims"] == 0
    assert backend.table.slots == _region.DEFAULT_SLOTS
    assert 16 * backend.table.slots <= table_bytes <= 16 * backend.table.slots + 64 * 1024
    assert per_key_bytes < 1  # a key moving in allocates nothing outside the table
    assert table_bytes / len(keys) + per_key_bytes <= 33


def test_absent_keys_take_free_slots_before_evicting_idle_ones(core: ModuleType, clock: ManualClock) -> None:
    """A key moving in takes a never-used slot of its window before an
    expired one: otherwise every insert evicts an idle key, whose next
    check evicts another, and a table with room to spare churns forever."""
    backend = make(core, clock, 10, 1000, slots=1024)
    keys = [f"client-{i}" for i in range(300)]
    for _ in range(3):
        for key in keys:
            assert backend.try_take(key)
            clock.advance(0.1)  # every bucket is full again before its key returns
    assert backend.stats()["reclaims"] == 0
