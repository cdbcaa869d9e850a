"""A smoke run of the fleet simulator (bench/fleet.py) on the suite's
Redis Cluster: three nodes for about a second, with churn, so the
process plumbing, the kill path and the accounting stay working. The
figures themselves are measured on demand (docs/scaling.md), not here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fleet  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.redis]


@pytest.mark.parametrize("backend", ["plain", "batched"])
def test_three_nodes_for_a_second(redis_cluster, backend: str) -> None:
    sc = fleet.Scenario(backend=backend, nodes=3, node_rate=150.0, keys=20, zipf=1.2, capacity=20,
                        rate=50.0, seconds=1.2, churn=0.34, churn_every=0.4, procs=1)
    sim = fleet.Fleet(cluster=redis_cluster)
    try:
        r = fleet.run(sc, sim, verbose=False)
    finally:
        sim.close()
    assert r["checks"] > 100
    assert r["over"] == 0  # never above C + elapsed * r on any key
    assert 0 < r["admitted"] < r["checks"]  # the hot key is over its limit
    assert r["nodes_killed"] >= 1 and r["nodes_started"] == 3 + r["nodes_killed"]
    assert len(r["per_master"]) == 3 and sum(r["per_master"]) == r["script_calls"]
    assert r["commands"] >= r["script_calls"] > 0
    if backend == "plain":
        assert r["script_calls"] >= r["checks"]  # one script call per check
        assert r["local_pct"] == 0
    else:
        assert r["batched"]["reservations"] > 0
        p10, p50, p90, top = r["batched"]["node_lease_p10_p50_p90_max"]
        assert 1 <= p10 <= p50 <= p90 <= top <= sc.capacity * sc.max_share
        assert r["local_pct"] > 0  # some checks were served from a lease
