"""The fleet simulator's own logic (bench/fleet.py, bench/fleet_model.py):
the traffic model, the allowance the fleet is judged against, the exact
central replay, the coroutine driver that tells local decisions from
Redis round trips, and the scaling model's cases. The simulator against
a real cluster: tests/integration/test_fleet_sim.py."""

from __future__ import annotations

import asyncio
import random
import sys
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fleet  # noqa: E402
import fleet_model  # noqa: E402

from guardian import TokenBucketConfig  # noqa: E402


def test_zipf_shares_sum_to_one_and_fall() -> None:
    shares = fleet.zipf_shares(1000, 1.1)
    assert sum(shares) == pytest.approx(1.0)
    assert all(a > b for a, b in zip(shares, shares[1:]))
    assert fleet.zipf_shares(10, 0.0) == pytest.approx([0.1] * 10)
    assert fleet.zipf_shares(1000, 1.1) == pytest.approx(fleet_model.zipf_shares(1000, 1.1))
    with pytest.raises(ValueError):
        fleet.zipf_cumulative(0, 1.0)


def test_draw_follows_the_shares() -> None:
    cum = fleet.zipf_cumulative(50, 1.2)
    shares = fleet.zipf_shares(50, 1.2)
    rng = random.Random(7)
    n = 40_000
    counts = [0] * 50
    for _ in range(n):
        counts[fleet.draw(cum, rng)] += 1
    for k in (0, 1, 10, 49):  # within 5 standard deviations of a binomial
        sd = (n * shares[k] * (1 - shares[k])) ** 0.5
        assert abs(counts[k] - n * shares[k]) < 5 * sd + 1


def test_allowance_is_capacity_plus_whole_tokens_of_the_window() -> None:
    config = TokenBucketConfig(50, 100)  # T = 10 ms
    assert fleet.allowance(config, 0) == 50
    assert fleet.allowance(config, 9_998) == 50
    assert fleet.allowance(config, 9_999) == 51  # rounded up by TIME's microsecond
    assert fleet.allowance(config, 1_000_000) == 150
    third = TokenBucketConfig(5, Fraction(10, 3))  # T = 0.3 s exactly
    assert fleet.allowance(third, 3_000_000) == 15
    assert fleet.allowance(third, 2_999_998) == 14


def test_ideal_replays_one_exact_limiter() -> None:
    config = TokenBucketConfig(50, 100)
    burst = {0: [1_000_000_000] * 80}  # 80 at one instant: the burst only
    assert fleet.ideal(config, burst) == {0: 50}
    paced = {1: [1_000_000_000 + i * 10_000_000 for i in range(300)]}  # one per T: all
    assert fleet.ideal(config, paced) == {1: 300}
    rng = random.Random(3)
    arrivals = {k: sorted(rng.randrange(0, 2 * 10**9) for _ in range(1000)) for k in range(3)}
    best = fleet.ideal(config, arrivals)
    for k, ts in arrivals.items():  # never above the allowance of the span
        assert best[k] <= fleet.allowance(config, (ts[-1] - ts[0]) // 1000 + 1)


async def test_finish_drives_a_suspended_check_to_its_end() -> None:
    async def check(hops: int) -> str:
        for _ in range(hops):
            await asyncio.sleep(0)
        return "done"

    coro = check(0)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)  # a local decision never suspends
    assert stop.value.value == "done"
    coro = check(3)
    pending = coro.send(None)
    assert await fleet._finish(coro, pending) == "done"


async def test_finish_passes_cancellation_into_the_check() -> None:
    seen = []
    release = asyncio.Event()

    async def check() -> None:
        try:
            await release.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def caller() -> None:
        coro = check()
        await fleet._finish(coro, coro.send(None))

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


def _traffic(**kw: object) -> fleet_model.Traffic:
    base = dict(nodes=10, node_rate=100.0, keys=1, zipf=1.0, capacity=100, rate=10_000.0)
    base.update(kw)
    return fleet_model.Traffic(**base)  # type: ignore[arg-type]


def test_model_plain_is_one_command_per_check() -> None:
    p = fleet_model.predict(_traffic(keys=100, zipf=1.1), "plain")
    assert p.commands_per_s == pytest.approx(1000.0)
    assert p.under_pct == 0


def test_model_batched_leases_follow_per_node_demand() -> None:
    params = fleet_model.Params(alpha=1.0, gamma=0.5)
    # 100/s per node, 0.1 s of it: leases of 1 + 10, an eleventh of a command per check.
    assert fleet_model.predict(_traffic(), "batched", params).commands_per_s == pytest.approx(1000 / 11)
    # 0.5/s per node: leases of about one, nearly a plain check each.
    rare = fleet_model.predict(_traffic(node_rate=0.5), "batched", params).commands_per_s
    assert rare == pytest.approx(5.0 / 1.05)
    # Leases stop at max_share * C = 20.
    big = fleet_model.predict(_traffic(node_rate=1000.0), "batched", params)
    assert big.commands_per_s == pytest.approx(10 * 1000 / 20)


def test_model_key_over_its_limit_costs_more_with_more_nodes() -> None:
    params = fleet_model.Params(alpha=1.0, gamma=0.5)
    costs = [fleet_model.predict(_traffic(nodes=n, node_rate=1500.0 / n, rate=200.0), "batched", params)
             for n in (1, 10, 100)]
    assert costs[0].commands_per_s < costs[1].commands_per_s < costs[2].commands_per_s <= 1500.0
    assert all(c.admitted_per_s <= 200.0 for c in costs)


def test_masters_needed() -> None:
    assert fleet_model.masters_needed(100_000, 1_000, usec_per_call=10.0) == (3, True)
    assert fleet_model.masters_needed(100_000, 60_000, usec_per_call=10.0) == (3, False)


def _result(offered: list, admitted: list, arrivals: dict) -> dict:
    return dict(offered=offered, admitted=admitted, arrivals=arrivals, latency_ns=[1000] * sum(offered),
                local=0, errors=0, lagged=0, stats={}, hot=[], nodes_started=1, nodes_killed=0)


def test_summary_counts_any_admission_above_the_allowance() -> None:
    sc = fleet.Scenario(backend="plain", nodes=2, node_rate=1.0, keys=2, capacity=5, rate=10.0)
    window_us = 1_000_000  # 1 s: at most 5 + 10 per key
    ts = {0: [10**9 + i for i in range(20)], 1: [10**9] * 3}
    deltas = [{"evalsha": 20}, {"evalsha": 3, "time": 2, "info": 1, "hello": 2}, {}]
    ok = fleet.summarize(sc, [_result([12, 2], [10, 2], ts), _result([8, 1], [5, 1], {})], deltas, window_us,
                         window_us)
    assert ok["over"] == 0 and ok["admitted"] == 18 and ok["checks"] == 23
    # HELLO (a new connection) is a command; TIME run by scripts and our INFO are not.
    assert ok["commands"] == 25 and ok["script_calls"] == 23
    assert ok["per_master"] == [20, 3, 0]
    over = fleet.summarize(sc, [_result([12, 2], [11, 2], ts), _result([8, 1], [5, 1], {})], deltas, window_us,
                           window_us)
    assert over["over"] == 1 and over["over_keys"] == 1  # 16 > 5 + 10 on key 0
