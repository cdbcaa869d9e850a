"""A request or a policy cannot take a worker down (issue 13, items 4 and 5):
bounds that answer a clear error before any token is taken, against a real
`guardian serve`. Peak RSS and stalls: bench/sidecar_hostile.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from sidecar import Sidecar, write

from guardian.client import Client
from guardian.server.metrics import MAX_SERIES, OVERFLOW_LIMIT, Stats
from guardian.server.service_rls import MAX_ENTRIES, MAX_OVERRIDES
from guardian.server.service_v1 import MAX_CHECKS
from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

pytestmark = pytest.mark.grpc

POLICY = """
limits: {default: {capacity: 5, refill_rate: 1, refill_interval: 60}}
---
domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("bounds")
    s = Sidecar(tmp, "--config", write(tmp / "p.yaml", POLICY)).start()
    yield s
    s.kill()


def test_check_limits_capped_before_any_token_is_taken(server: Sidecar) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.RateLimiterStub(ch)
        too_many = pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key="cap")] * (MAX_CHECKS + 1))
        with pytest.raises(grpc.RpcError) as info:
            stub.CheckLimits(too_many, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_CHECKS} checks per CheckLimits call, got {MAX_CHECKS + 1}" in info.value.details()
        with Client(server.target) as client:
            assert client.get_usage("cap") == 0  # nothing was taken
        r = stub.CheckLimits(pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key="cap")] * MAX_CHECKS), timeout=10)
        assert [x.allowed for x in r.results].count(True) == 5 and len(r.results) == MAX_CHECKS


def _descriptor(value: str, rpu: int = 0) -> Any:
    d = rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key="k", value=value)])
    if rpu:
        d.limit.requests_per_unit, d.limit.unit = rpu, rls_pb2.RateLimitResponse.RateLimit.HOUR
    return d


def test_overrides_are_bounded_and_never_lift_a_limit(server: Sidecar) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        ask = lambda d: stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="d", descriptors=[d]), timeout=5)  # noqa: E731
        for rpu in range(1, MAX_OVERRIDES + 1):
            assert ask(_descriptor("o", 1000 + rpu)).overall_code == rls_pb2.RateLimitResponse.OK
        r = ask(_descriptor("o", 5000))  # one distinct rate too many: blocked and told why
        assert r.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
        assert r.statuses[0].current_limit.name == "guardian: too many distinct limit overrides"
        assert ask(_descriptor("o", 1001)).overall_code == rls_pb2.RateLimitResponse.OK  # known rates still work


def test_entries_per_request_capped(server: Sidecar) -> None:
    d = rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key="k", value="v")] * (MAX_ENTRIES + 1))
    with grpc.insecure_channel(server.target) as ch, pytest.raises(grpc.RpcError) as info:
        rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain="d", descriptors=[d]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_ENTRIES} descriptor entries per request" in info.value.details()


def test_table_memory_budget_refuses_a_policy_at_start(tmp_path: Path) -> None:
    three = "limits: {a: {capacity: 1, refill_rate: 1}, b: {capacity: 2, refill_rate: 1}, c: {capacity: 3, refill_rate: 1}}"
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", three), "--max-table-memory", "4")
    with pytest.raises(RuntimeError, match="exited with 2"):
        s.start()
    s.kill()
    assert "3 distinct limits need 3 tables of 2048 KiB (6 MiB), more than --max-table-memory 4 MiB" in s.log()


def test_metric_series_per_value_are_bounded() -> None:
    stats = Stats()
    for i in range(MAX_SERIES + 50):
        stats.count(f"d.route_{i}", "allowed")
    assert len(stats.requests) == MAX_SERIES + 1
    assert stats.requests[(OVERFLOW_LIMIT, "allowed")] == 50
    stats.count("d.route_1", "allowed")  # a known series still counts as itself
    assert stats.requests[("d.route_1", "allowed")] == 2


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_table_that_can_fail_runs_inline_under_the_fail_policy(fail_open: bool) -> None:
    # a shared table whose stripe lock a dead process holds raises after a wait: the
    # server still checks inline (no I/O), and the fail policy answers, not a traceback
    from guardian import MemoryBackend, TokenBucketConfig
    from guardian._errors import BackendTimeoutError
    from guardian.server.buckets import Bucket

    def stuck(key: str, cost: int = 1) -> Any:
        raise BackendTimeoutError("stripe lock held by a stopped process")

    backend = MemoryBackend(TokenBucketConfig(5, 1))
    backend.can_fail = True  # type: ignore[misc]
    backend.take = stuck  # type: ignore[method-assign]
    bucket = Bucket(backend, fail_open)
    assert bucket.local and bucket.limiter is None and bucket.fast is not None
    assert bucket.fast("k", 1).allowed is fail_open
    plain = Bucket(MemoryBackend(TokenBucketConfig(5, 1)), fail_open)
    assert plain.fast == plain.backend.take  # a private table: its take, bound directly
