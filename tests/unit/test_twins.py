"""The C core and its pure-Python twin agree step by step."""

from __future__ import annotations

import os
import subprocess
import sys

import hypothesis.strategies as st
import pytest
from conftest import ManualClock
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import guardian
from guardian import _impl, _pycore

_core = pytest.importorskip("guardian._core") if not _impl.NO_EXTENSIONS else None
pytestmark = pytest.mark.skipif(_core is None, reason="the C core is not built")

KEYS = st.sampled_from([f"key-{i}" for i in range(24)] + ["ключ", "🔑", "k" * 300])
SEED = bytes(range(16))


class TwinMachine(RuleBasedStateMachine):
    """Random takes, usages, resets and clock moves on a small table (so the
    window fills, slots get reclaimed and tables run full), applied to both
    cores; every answer must be identical."""

    @initialize(
        capacity=st.integers(1, 20),
        rate=st.integers(1, 50),
        interval=st.sampled_from([1.0, 7.0, 0.25]),
        slots=st.sampled_from([8, 16, 64]),
    )
    def setup(self, capacity: int, rate: int, interval: float, slots: int) -> None:
        cfg = guardian.TokenBucketConfig(capacity, rate, interval)
        self.capacity = capacity
        self.clock = ManualClock()
        args = (cfg.capacity, cfg.emission_ticks, cfg.ticks_per_ns)
        self.c = _core.Table(*args, slots=slots, clock=self.clock, seed=SEED)
        self.py = _pycore.Table(*args, slots=slots, clock=self.clock, seed=SEED)
        # A second limit on the same keys, for take_all: slower, a larger burst.
        other = guardian.TokenBucketConfig(capacity + 5, rate, interval * 10)
        args2 = (other.capacity, other.emission_ticks, other.ticks_per_ns)
        self.c2 = _core.Table(*args2, slots=slots, clock=self.clock, seed=SEED)
        self.py2 = _pycore.Table(*args2, slots=slots, clock=self.clock, seed=SEED)
        self.takes = self.allowed = 0  # the model's count of takes, and of admissions seen

    @rule(key=KEYS, cost=st.integers(1, 20))
    def take(self, key: str, cost: int) -> None:
        cost = min(cost, self.capacity)
        r = self.c.check(key, cost)
        assert r == self.py.check(key, cost)
        self._took(r[0])

    @rule(key=KEYS, cost=st.integers(1, 20))
    def check_result(self, key: str, cost: int) -> None:
        cost = min(cost, self.capacity)
        c, py = self.c.check_result(key, cost), self.py.check_result(key, cost)
        assert (c.allowed, c.remaining, c.retry_after, c.reset_after, c.limit) == (
            py.allowed, py.remaining, py.retry_after, py.reset_after, py.limit)
        self._took(c.allowed)

    @rule(key=KEYS)
    def try_acquire(self, key: str) -> None:
        r = self.c.try_acquire(key)
        assert r is self.py.try_acquire(key)
        self._took(r)

    @rule(keys=st.lists(KEYS, max_size=10))
    def check_many(self, keys: list) -> None:
        rs = self.c.check_many(keys)
        assert rs == self.py.check_many(keys)
        for r in rs:
            self._took(r[0])

    def _took(self, allowed: bool) -> None:
        self.takes += 1
        self.allowed += allowed

    @rule(key=KEYS, cost=st.integers(1, 20), order=st.booleans())
    def take_all(self, key: str, cost: int, order: bool) -> None:
        cost = min(cost, self.capacity)
        c, py = (self.c, self.c2), (self.py, self.py2)
        if order:
            c, py = c[::-1], py[::-1]
        got = _core.take_all(c, key, cost)
        assert got == _pycore.take_all(py, key, cost)
        assert self.c2.stats() == self.py2.stats()
        first = 0 if not order else 1  # self.c's place in the tuple
        if got[0] < 0 or got[0] == first:
            self._took(got[0] < 0)  # self.c counted this check

    @rule(key=KEYS, cost=st.integers(0, 20))
    def peek(self, key: str, cost: int) -> None:
        cost = min(cost, self.capacity)
        assert self.c.peek(key, cost) == self.py.peek(key, cost)

    @rule(key=KEYS)
    def usage(self, key: str) -> None:
        assert self.c.usage(key) == self.py.usage(key)

    @rule(key=KEYS)
    def reset(self, key: str) -> None:
        self.c.reset(key)
        self.py.reset(key)

    @rule(key=KEYS, cost=st.integers(1, 20))
    def spend(self, key: str, cost: int) -> None:
        cost = min(cost, self.capacity)
        assert self.c.spend(key, cost) == self.py.spend(key, cost)
        assert self.c.spends == self.py.spends

    @rule(key=KEYS)
    def drain(self, key: str) -> None:
        assert self.c.drain(key) == self.py.drain(key)

    @rule(ns=st.integers(0, 3_000_000_000) | st.sampled_from([1, 333_333_333, 10**12]))
    def advance(self, ns: int) -> None:
        self.clock.advance(ns=ns)

    @invariant()
    @precondition(lambda self: hasattr(self, "c"))
    def same_counters(self) -> None:
        stats = self.c.stats()
        assert stats == self.py.stats()
        # every take is counted once, by its outcome; spend, drain, usage and reset are not takes
        assert (stats["allowed"], stats["denied"]) == (self.allowed, self.takes - self.allowed)


TestTwins = TwinMachine.TestCase
TestTwins.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@pytest.mark.parametrize("data", [b"", b"a", b"abcdefg", b"abcdefgh", bytes(range(200)), "ключ".encode()])
def test_hash_twins_agree(data: bytes) -> None:
    for k0, k1 in [(0, 0), (0x0706050403020100, 0x0F0E0D0C0B0A0908), (2**64 - 1, 12345)]:
        assert _core.siphash13(k0, k1, data) == _pycore.siphash13(k0, k1, data)


def test_hash_is_cpython_siphash13() -> None:
    """With PYTHONHASHSEED=0 CPython hashes bytes with SipHash-1-3 under a
    zero key: an independent reference implementation."""
    code = "import sys; print(sys.hash_info.algorithm, hash(b'guardian rate limiter'))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "siphash13":
        pytest.skip(f"this CPython hashes with {out[0]}")
    ours = _core.siphash13(0, 0, b"guardian rate limiter")
    assert int(out[1]) == (ours - 2**64 if ours >= 2**63 else ours)
