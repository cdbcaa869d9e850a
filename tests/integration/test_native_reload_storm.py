"""The native engine under SIGHUP storms: while clients hammer one bucket
(ShouldRateLimit answered in C, CheckLimit answered in C), the policy is
reloaded again and again, each time dropping and rebuilding other tables;
the limit admits exactly its capacity, and the counters say so exactly."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from native_engine import answered_by, native_module
from sidecar import Sidecar, counter, wait_until, write

from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

native_module()

pytestmark = pytest.mark.grpc

CAPACITY = 120


def _policy(flip: int, python_too: bool = False) -> str:
    # web.user and the limit "one" stay; "other" and "spare" change rate on
    # every flip (a table dropped, one built), "extra" comes and goes.
    # python_too: web.user is Python's every other flip (detailed_metric).
    extra = f"  extra: {{capacity: {3 + flip}, refill_rate: 1, refill_interval: 86400}}\n" if flip % 2 else ""
    detailed = "    detailed_metric: true\n" if python_too and flip % 2 else ""
    return (f"domain: web\ndescriptors:\n  - key: user\n{detailed}"
            f"    rate_limit: {{unit: day, requests_per_unit: {CAPACITY}}}\n"
            f"---\ndomain: other\ndescriptors:\n  - key: x\n    rate_limit: {{unit: day, requests_per_unit: {7 + flip % 3}}}\n"
            f"---\nlimits:\n  one: {{capacity: {CAPACITY}, refill_rate: 1, refill_interval: 86400}}\n"
            f"  spare: {{capacity: {5 + flip % 4}, refill_rate: 1, refill_interval: 86400}}\n{extra}")


def _storm(s: Sidecar, path: Path, threads: int = 8, per_thread: int = 100,
           python_too: bool = False) -> Dict[str, int]:
    allowed = {"rls": 0, "v1": 0, "other": 0}
    lock = threading.Lock()
    stop = threading.Event()
    reloads = [0]

    def reloader() -> None:
        flip = 0
        while not stop.is_set():
            flip += 1
            tmp = path.with_suffix(".tmp")  # atomically: a half-written file is another policy
            tmp.write_text(_policy(flip, python_too))
            os.replace(tmp, path)
            s.signal(signal.SIGHUP)
            reloads[0] += 1
            time.sleep(0.005)

    def hammer(tid: int) -> None:
        got = {"rls": 0, "v1": 0, "other": 0}
        with grpc.insecure_channel(s.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            rls = rls_pb2_grpc.RateLimitServiceStub(ch)
            v1 = pb_grpc.RateLimiterStub(ch)
            for i in range(per_thread):
                r = rls.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="web", descriptors=[
                    {"entries": [{"key": "user", "value": "u"}]},
                    {"entries": [{"key": "user", "value": "u"}], "hits_addend": {"value": 0}},
                ]), timeout=10)
                got["rls"] += r.statuses[0].code == rls_pb2.RateLimitResponse.OK
                got["v1"] += v1.CheckLimit(pb.CheckLimitRequest(key="shared", limit="one"), timeout=10).allowed
                r = rls.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="other", descriptors=[
                    {"entries": [{"key": "x", "value": f"{tid}-{i}"}]}]), timeout=10)
                got["other"] += r.overall_code == rls_pb2.RateLimitResponse.OK
        with lock:
            for k, v in got.items():
                allowed[k] += v

    r = threading.Thread(target=reloader)
    workers = [threading.Thread(target=hammer, args=(t,)) for t in range(threads)]
    r.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    r.join()
    assert reloads[0] >= 10
    return allowed


def test_a_reload_storm_keeps_the_limit_and_its_counts_exact(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, _policy(0))
    s = Sidecar(tmp_path, "--config", str(path), "--engine", "native").start()
    try:
        allowed = _storm(s, path)
        assert allowed["rls"] == CAPACITY and allowed["v1"] == CAPACITY, allowed
        assert allowed["other"] == 8 * 100  # each value its own bucket
        time.sleep(1.0)  # let the last reload settle and retire its policies
        m = s.metrics()
        calls = 8 * 100
        # the second descriptor of each call reads the bucket (hits_addend 0): counted allowed
        assert counter(m, "guardian_requests_total", limit="web.user", result="allowed") == CAPACITY + calls
        assert counter(m, "guardian_requests_total", limit="web.user", result="denied") == calls - CAPACITY
        assert counter(m, "guardian_requests_total", limit="one", result="allowed") == CAPACITY
        assert counter(m, "guardian_requests_total", limit="one", result="denied") == calls - CAPACITY
        by = answered_by(s)
        assert by.get(("should_rate_limit", "python"), 0) == 0 and by.get(("check_limit", "python"), 0) == 0, by
        assert "Traceback" not in s.log()
    finally:
        code, _ = s.stop()
    assert code == 0, s.log()


def test_a_rule_moving_between_c_and_python_keeps_the_limit(tmp_path: Path) -> None:
    """web.user flips between a rule C answers and one Python answers
    (detailed_metric) on every reload: one bucket throughout."""
    path = tmp_path / "p.yaml"
    write(path, _policy(0))
    s = Sidecar(tmp_path, "--config", str(path), "--engine", "native").start()
    try:
        allowed = _storm(s, path, python_too=True)
        assert allowed["rls"] == CAPACITY and allowed["v1"] == CAPACITY, allowed
        by = answered_by(s)
        assert by.get(("should_rate_limit", "python"), 0) > 0 and by.get(("should_rate_limit", "native"), 0) > 0, by
    finally:
        code, _ = s.stop()
    assert code == 0, s.log()


@pytest.mark.slow
def test_a_reload_storm_with_two_workers_keeps_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, _policy(0))
    s = Sidecar(tmp_path, "--config", str(path), "--engine", "native", "--workers", "2").start()
    wait_until(lambda: s.log().count("serving gRPC") == 2, 30, "both workers")
    try:
        allowed = _storm(s, path)
        assert allowed["rls"] == CAPACITY and allowed["v1"] == CAPACITY, allowed
        assert "Traceback" not in s.log()
    finally:
        code, _ = s.stop()
    assert code == 0, s.log()


@pytest.mark.parametrize("engine", ["native", "grpcio"])
def test_a_reload_that_replaces_a_v1_table_keeps_its_counter_exact(tmp_path: Path, engine: str) -> None:
    """A reload that changes a guardian.v1 limit's rate replaces its table.
    The old one's counts stay in guardian_requests_total at once: the
    counter never goes down (on the native engine it did, until the C
    thread let go of the old table: a Prometheus counter reset)."""
    path = tmp_path / "p.yaml"
    write(path, "limits:\n  one: {capacity: 50, refill_rate: 1, refill_interval: 86400}\n")
    s = Sidecar(tmp_path, "--config", str(path), "--engine", engine).start()
    seen: List[Tuple[int, float]] = []
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            calls = 0
            for flip in range(1, 11):
                for _ in range(3):
                    assert stub.CheckLimit(pb.CheckLimitRequest(key="k", limit="one"), timeout=10).allowed
                    calls += 1
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"limits:\n  one: {{capacity: {50 + flip}, refill_rate: 1, refill_interval: 86400}}\n")
                os.replace(tmp, path)
                reloaded = s.log().count("policy reloaded")
                s.signal(signal.SIGHUP)
                wait_until(lambda: s.log().count("policy reloaded") > reloaded, 10, "the reload")
                seen.append((calls, counter(s.metrics(), "guardian_requests_total", limit="one", result="allowed")))
    finally:
        s.stop()
    assert all(n == float(calls) for calls, n in seen), seen
