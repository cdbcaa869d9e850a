"""Metrics: counters in the core or plain counters, Prometheus at scrape time.

A guardian.v1 check on the memory path is counted by the core itself (the
Table's relaxed atomic allowed/denied counters, one table per limit name),
read when a snapshot is taken; other checks cost one dict increment in the
worker's own ``Stats``. Every RPC adds one histogram bucket increment.
prometheus-client is only used when /metrics is scraped, by a custom
collector. With ``--workers N`` every worker writes a
snapshot of its Stats to ``<run dir>/worker-<i>.json`` once a second (and on
exit); the worker that serves a scrape sums its live Stats with the others'
snapshots, so one scrape shows the whole sidecar, at most a second behind
for the other workers. A restarted worker starts from its last snapshot, so
counters never go backwards.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_left
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["Stats", "SnapshotStore", "GuardianCollector", "LATENCY_BUCKETS", "LEASE_METRICS", "MAX_SERIES",
           "OVERFLOW_LIMIT"]

#: (limit, result) series one worker keeps, at most; the rest count under OVERFLOW_LIMIT.
MAX_SERIES = 10_000
OVERFLOW_LIMIT = "_other"

#: Upper bounds (seconds) of guardian_latency_seconds; +Inf is implied.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_NB = len(LATENCY_BUCKETS)


class Stats:
    """One worker's counters. Not thread-safe: only the event loop touches it."""

    def __init__(self) -> None:
        #: (limit, result) -> checks
        self.requests: Dict[Tuple[str, str], int] = {}
        #: operation -> [count per bucket ..., count above the last, sum of seconds]
        self.latency: Dict[str, List[float]] = {}
        #: Checks answered without a network round trip (memory backend) / with one (Redis).
        self.local = 0
        self.remote = 0
        #: Filled in at snapshot time by the server (limiters' own counters).
        self.gauges: Callable[[], Dict[str, float]] = dict
        #: (limit, allowed, denied) counted by the core, read at snapshot time.
        self.core: Callable[[], Iterable[Tuple[str, int, int]]] = tuple

    def count(self, limit: str, result: str, n: int = 1) -> None:
        key = (limit, result)
        requests = self.requests
        if key not in requests and len(requests) >= MAX_SERIES:
            # detailed_metric / value_to_metric name a series per request value:
            # past the cap, new names share one, so a client cannot grow memory.
            key = (OVERFLOW_LIMIT, result)
        requests[key] = requests.get(key, 0) + n

    def observe(self, operation: str, seconds: float) -> None:
        h = self.latency.get(operation)
        if h is None:
            h = self.latency[operation] = [0.0] * (_NB + 2)
        h[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h[-1] += seconds

    def snapshot(self) -> Dict[str, Any]:
        requests = dict(self.requests)
        local = self.local
        for limit, allowed, denied in self.core():
            for result, n in (("allowed", allowed), ("denied", denied)):
                if n:
                    requests[(limit, result)] = requests.get((limit, result), 0) + n
            local += allowed + denied
        return {
            "requests": [[k[0], k[1], v] for k, v in requests.items()],
            "latency": self.latency,
            "local": local,
            "remote": self.remote,
            "gauges": self.gauges(),
        }

    def restore(self, snap: Dict[str, Any]) -> None:
        """Continues from a previous incarnation's snapshot (counters only;
        the core's counts of that process are in it, the new core's start at 0)."""
        for limit, result, n in snap.get("requests", []):
            self.count(limit, result, int(n))
        for op, h in snap.get("latency", {}).items():
            if len(h) == _NB + 2:
                self.latency[op] = [float(x) for x in h]
        self.local += int(snap.get("local", 0))
        self.remote += int(snap.get("remote", 0))


class SnapshotStore:
    """The run directory where workers leave their snapshots."""

    def __init__(self, directory: Optional[str], index: int) -> None:
        self.dir = Path(directory) if directory else None
        self.index = index

    def _path(self, index: int) -> Path:
        assert self.dir is not None
        return self.dir / f"worker-{index}.json"

    def load_own(self) -> Optional[Dict[str, Any]]:
        if self.dir is None:
            return None
        try:
            data: Dict[str, Any] = json.loads(self._path(self.index).read_text())
            return data
        except (OSError, ValueError):
            return None

    def write(self, snap: Dict[str, Any]) -> None:
        if self.dir is None:
            return
        path = self._path(self.index)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, path)

    def others(self) -> Iterator[Dict[str, Any]]:
        if self.dir is None:
            return
        for path in sorted(self.dir.glob("worker-*.json")):
            if path != self._path(self.index):
                try:
                    yield json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # a worker that never wrote, or a torn read of a dead one


#: The batched backend's stats() key -> (counter, help), read at snapshot time.
LEASE_METRICS = {
    "local_hits": ("guardian_lease_local_hits", "Checks served from a local lease (--batched)."),
    "reservations": ("guardian_lease_reservations", "Reserve calls to Redis, refills included (--batched)."),
    "reserved_tokens": ("guardian_lease_reserved_tokens", "Tokens Redis granted to leases (--batched)."),
    "returned_tokens": ("guardian_lease_tokens_returned",
                        "Unused leased tokens given back to Redis (--batched)."),
    "denial_cache_hits": ("guardian_lease_denial_cache_hits",
                          "Checks denied from the local denial cache, without Redis (--batched)."),
}

#: How gauges of several workers combine.
_GAUGE_FOLD = {"backend_up": min, "breaker_open": max, "backend_config_error": max}


def merge(snaps: List[Dict[str, Any]]) -> Dict[str, Any]:
    requests: Dict[Tuple[str, str], float] = {}
    latency: Dict[str, List[float]] = {}
    gauges: Dict[str, float] = {}
    local = remote = 0.0
    for s in snaps:
        for limit, result, n in s.get("requests", []):
            requests[(limit, result)] = requests.get((limit, result), 0) + n
        for op, h in s.get("latency", {}).items():
            acc = latency.setdefault(op, [0.0] * len(h))
            for i, x in enumerate(h):
                acc[i] += x
        local += s.get("local", 0)
        remote += s.get("remote", 0)
        for name, value in s.get("gauges", {}).items():
            fold = _GAUGE_FOLD.get(name)
            gauges[name] = value if name not in gauges else (fold or (lambda a, b: a + b))(gauges[name], value)
    return {"requests": requests, "latency": latency, "local": local, "remote": remote, "gauges": gauges}


class GuardianCollector(Collector):
    """Builds the metric families at scrape time from all workers' counters."""

    def __init__(self, stats: Stats, store: SnapshotStore) -> None:
        self.stats = stats
        self.store = store

    def collect(self) -> Iterator[Metric]:
        m = merge([self.stats.snapshot(), *self.store.others()])
        req = CounterMetricFamily("guardian_requests", "Checks by limit and result.",
                                  labels=["limit", "result"])
        for (limit, result), n in sorted(m["requests"].items()):
            req.add_metric([limit, result], n)
        yield req
        lat = HistogramMetricFamily("guardian_latency_seconds",
                                    "Time to answer one RPC, by operation.", labels=["operation"])
        for op, h in sorted(m["latency"].items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip(LATENCY_BUCKETS, h):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative + h[_NB]))
            lat.add_metric([op], buckets, h[-1])
        yield lat
        g = m["gauges"]
        total = m["local"] + m["remote"]
        # With leases, a check served from a lease or from the denial cache made no round trip.
        local = m["local"] + g.get("lease_local_hits", 0.0) + g.get("lease_denial_cache_hits", 0.0)
        yield GaugeMetricFamily("guardian_cache_hit_rate",
                                "Fraction of checks decided without a network round trip "
                                "(in-memory tables; leases and cached denials of --batched).",
                                value=min(local / total, 1.0) if total else 0.0)
        yield CounterMetricFamily("guardian_redis_errors", "Backend calls that failed.",
                                  value=g.get("errors", 0.0))
        yield CounterMetricFamily("guardian_policy_decisions",
                                  "Checks decided by the failure policy because the backend failed.",
                                  value=g.get("policy_decisions", 0.0))
        yield GaugeMetricFamily("guardian_backend_up", "1 while the backend answers (always 1 in memory).",
                                value=g.get("backend_up", 1.0))
        yield GaugeMetricFamily("guardian_backend_config_error",
                                "1 while the backend refuses our credentials or ACL (a configuration error).",
                                value=g.get("backend_config_error", 0.0))
        yield GaugeMetricFamily("guardian_breaker_open",
                                "1 while a circuit breaker keeps checks off the backend.",
                                value=g.get("breaker_open", 0.0))
        yield GaugeMetricFamily("guardian_workers", "Worker processes whose counters this scrape sums.",
                                value=g.get("workers", 1.0))
        for key, (name, doc) in LEASE_METRICS.items():
            if f"lease_{key}" in g:  # only with --batched
                yield CounterMetricFamily(name, doc, value=g[f"lease_{key}"])
        native = sorted((k[len("native_calls:"):].rsplit(":", 1), v)
                        for k, v in g.items() if k.startswith("native_calls:"))
        if native:  # only with --engine native
            calls = CounterMetricFamily("guardian_native_calls",
                                        "RPCs of --engine native by who answered them: the C data plane "
                                        "(native) or the Python services it handed them to (python).",
                                        labels=["operation", "answered_by"])
            for (op, by), n in native:
                calls.add_metric([op, by], n)
            yield calls
