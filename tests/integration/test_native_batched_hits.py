"""``guardian serve --batched --engine native``: lease hits answered in C,
as the grpcio engine answers them.

A grpcio and a native sidecar, each on its own Redis database (so their
buckets are apart), get the same sequence of CheckLimit, CheckLimits and
ShouldRateLimit calls. Every answer must be the same (remaining exact; the
seconds until reset within the moment between the two calls), most calls
must be answered by the C thread (guardian_native_calls_total), and the
counters /metrics shows must agree: a check answered from a lease in C is
counted as Python counts a batched check (by limit or rule, remote, a
lease local hit). Then: two native workers on one key admit exactly the
bucket, and while the limiter's breaker counts Redis failures every check
is Python's, so a lease cannot answer what the failure policy decides.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format
from native_engine import answered_by, native_module
from redis_servers import Server
from rls import call_any
from sidecar import Sidecar, counter, write

from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

native_module()

pytestmark = [pytest.mark.grpc, pytest.mark.redis]

# A token a day or slower: no refill falls between the two engines' calls.
POLICY = """
limits:
  default: {capacity: 1000, refill_rate: 1, refill_interval: 86400}
  small: {capacity: 40, refill_rate: 1, refill_interval: 86400}
---
domain: web
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 1000}
  - key: tiny
    rate_limit: {unit: day, requests_per_unit: 30, name: tiny}
"""


def v1(limit: str, key: str, cost: int = 1) -> pb.CheckLimitRequest:
    return pb.CheckLimitRequest(limit=limit, key=key, cost=cost)


def rls(*descriptors: List[Tuple[str, str]]) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain="web", descriptors=[
        {"entries": [{"key": k, "value": v} for k, v in d]} for d in descriptors])


SEQUENCE: List[Any] = [
    *[v1("default", "a") for _ in range(150)],
    *[v1("default", "a", 3) for _ in range(20)],
    pb.CheckLimitsRequest(checks=[v1("default", f"m{i % 4}", 1 + i % 2) for i in range(40)]),
    *[pb.CheckLimitsRequest(checks=[v1("default", "a"), v1("small", "s")]) for _ in range(45)],  # small runs out
    *[v1("small", "s2") for _ in range(50)],  # 40 allowed, then denials (Python's: Redis or its cache)
    *[rls([("user", "u1")]) for _ in range(150)],
    *[rls([("user", "u2")], [("tiny", "t")]) for _ in range(40)],  # tiny runs out
    *[v1("default", "a") for _ in range(50)],
]


def _without_resets(response: Any) -> Tuple[Dict[str, Any], List[float]]:
    """(the response without its seconds until reset or retry, those seconds)."""
    d = json_format.MessageToDict(response, preserving_proto_field_name=True)
    resets: List[float] = []
    for item in d.get("statuses", []) + d.get("results", []) + ([d] if "limit" in d else []):
        for name in ("duration_until_reset", "reset_after", "retry_after"):
            if name in item:
                value = item.pop(name)
                resets.append(float(value.rstrip("s")) if isinstance(value, str) else float(value))
    return d, resets


def _same(x: Any, y: Any, where: str) -> None:
    dx, rx = _without_resets(x)
    dy, ry = _without_resets(y)
    assert dx == dy, where
    assert len(rx) == len(ry) and all(abs(p - q) < 0.5 for p, q in zip(rx, ry)), (where, rx, ry)


def _db(server: Server, n: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{n}"


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, redis_server: Server) -> Any:
    tmp = tmp_path_factory.mktemp("batched-hits")
    policy = write(tmp / "policy.yaml", POLICY)
    a = Sidecar(tmp, "--config", policy, "--redis-url", _db(redis_server, 1), "--batched", "--engine", "grpcio").start()
    b = Sidecar(tmp, "--config", policy, "--redis-url", _db(redis_server, 2), "--batched", "--engine", "native").start()
    steps = []
    try:
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            for request in SEQUENCE:
                steps.append((request, call_any(ca, request), call_any(cb, request)))
        yield a, b, steps
    finally:
        a.stop()
        b.stop()


def test_answers_as_the_grpcio_engine(both: Any) -> None:
    _, _, steps = both
    allowed = denied = 0
    for i, (request, x, y) in enumerate(steps):
        _same(x, y, f"step {i}: {type(request).__name__}")
        for r in getattr(x, "results", [x] if isinstance(x, pb.CheckLimitResponse) else []):
            allowed += r.allowed
            denied += not r.allowed
    assert (allowed, denied) == (385, 15)  # small: 40 of 45, then 40 of 50


def test_lease_hits_are_answered_in_c(both: Any) -> None:
    _, b, _ = both
    counts = answered_by(b)
    # Misses, hits at or below the low water (a refill may start) and
    # denials are Python's; hits above the low water are C's. CheckLimits
    # and the tiny rule lean on small buckets (capacity 40 and 30: leases of
    # at most 8 and 6 tokens, low water half of that).
    for op, calls, share in (("check_limit", 270, 0.8), ("check_limits", 46, 0.4), ("should_rate_limit", 190, 0.5)):
        in_c, handed = counts.get((op, "native"), 0), counts.get((op, "python"), 0)
        assert in_c + handed == calls, (op, counts)
        assert in_c >= calls * share, (op, counts)


def test_counters_agree(both: Any) -> None:
    a, b, _ = both
    ma, mb = a.metrics(), b.metrics()
    for limit in ("default", "small", "user", "tiny", "web.user", "web.tiny"):
        for result in ("allowed", "denied"):
            assert counter(ma, "guardian_requests_total", limit=limit, result=result) == \
                counter(mb, "guardian_requests_total", limit=limit, result=result), (limit, result)
    assert counter(mb, "guardian_requests_total", limit="default", result="allowed") > 300
    assert counter(ma, "guardian_cache_hit_rate") == pytest.approx(counter(mb, "guardian_cache_hit_rate"), abs=0.02)
    hits = sum(v for (op, by), v in answered_by(b).items() if by == "native")
    assert counter(mb, "guardian_lease_local_hits_total") >= hits  # a C hit is a lease hit


def test_hits_at_low_water_start_refills(tmp_path: Path, redis_server: Server) -> None:
    """A hit C answers that leaves the lease at or below its low water is
    told to Python, which refills in the background as after its own hits:
    the lease stays ahead of a steady caller, whose checks then almost never
    go to Python (only the first misses of a cold key do)."""
    policy = write(tmp_path / "p.yaml", "limits:\n  default: {capacity: 1000, refill_rate: 1, refill_interval: 86400}\n")
    s = Sidecar(tmp_path, "--config", policy, "--redis-url", _db(redis_server, 4), "--batched",
                "--engine", "native").start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            assert all(stub.CheckLimit(v1("default", "steady"), timeout=5).allowed for _ in range(300))
        m = s.metrics()
        handed = answered_by(s).get(("check_limit", "python"), 0)
        reservations = counter(m, "guardian_lease_reservations_total")
        # Without the low-water hits told, every reservation would be a miss
        # handed to Python (handed == reservations, 9 of each in a run here);
        # with them, 3 misses and 6 background refills. Loose on the first:
        # on a loaded machine a refill can land after its lease ran dry.
        assert handed <= 30 and reservations >= handed + 3, (handed, reservations)
    finally:
        s.stop()


def test_two_native_workers_admit_exactly_the_bucket(tmp_path: Path, redis_server: Server) -> None:
    policy = write(tmp_path / "p.yaml", "limits:\n  default: {capacity: 300, refill_rate: 1, refill_interval: 86400}\n")
    s = Sidecar(tmp_path, "--config", policy, "--redis-url", _db(redis_server, 3), "--batched",
                "--engine", "native", "--workers", "2").start()
    key = f"exact-{uuid.uuid4().hex}"
    admitted = [0] * 16

    def client(i: int) -> None:
        # a channel each: its own connection, spread over both workers by SO_REUSEPORT
        with grpc.insecure_channel(s.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            for _ in range(100):
                admitted[i] += stub.CheckLimit(pb.CheckLimitRequest(key=key), timeout=10).allowed

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(admitted) == 300, admitted
    finally:
        s.stop()


def test_while_the_breaker_counts_failures_python_decides(tmp_path: Path) -> None:
    """Fail closed: once the breaker opens, the grpcio engine denies a key
    although its lease holds tokens; so must the native one."""
    outcomes = {}
    for engine in ("grpcio", "native"):
        redis = Server(tmp_path / engine).start()
        s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", POLICY), "--redis-url", redis.url,
                    "--batched", "--fail-closed", "--engine", engine).start()
        try:
            with grpc.insecure_channel(s.target) as ch:
                stub = pb_grpc.RateLimiterStub(ch)
                lease = [stub.CheckLimit(v1("default", "held"), timeout=5).allowed for _ in range(60)]
                # the key's lease holds tokens now (else the denials below would prove nothing)
                assert counter(s.metrics(), "guardian_lease_reserved_tokens_total") > 60
                if engine == "native":
                    assert answered_by(s).get(("check_limit", "native"), 0) >= 40
                redis.kill()
                # other keys miss, each a failed Redis call: the breaker opens after 3
                misses = [stub.CheckLimit(v1("default", f"miss{i}"), timeout=5).allowed for i in range(4)]
                held = [stub.CheckLimit(v1("default", "held"), timeout=5).allowed for _ in range(3)]
            outcomes[engine] = (lease, misses, held)
        finally:
            s.stop()
            redis.stop()
    assert outcomes["grpcio"] == outcomes["native"]
    lease, misses, held = outcomes["native"]
    assert all(lease) and not any(misses) and not any(held)
