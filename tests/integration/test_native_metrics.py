"""/metrics of the native engine when Python and C both answer an operation."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from native_engine import answered_by, native_module
from sidecar import Sidecar, counter, write

native_module()

pytestmark = pytest.mark.grpc

POLICY = "domain: web\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 100}\n"


def test_latency_of_calls_python_answered_first_then_c(tmp_path: Path) -> None:
    """The first ShouldRateLimit is Python's (a descriptor limit override),
    the next ones C's: one latency histogram counts them all. (Python's
    histogram list was one shorter than C's: /metrics answered 500 from then
    on, the fold task died, and so did the drain's last fold.)"""
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", POLICY), "--engine", "native").start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            override = rls_pb2.RateLimitRequest(domain="web", descriptors=[
                {"entries": [{"key": "user", "value": "o"}],
                 "limit": {"requests_per_unit": 7, "unit": rls_pb2.RateLimitResponse.RateLimit.DAY}}])
            stub.ShouldRateLimit(override, timeout=5)
            for _ in range(3):
                stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                    domain="web", descriptors=[{"entries": [{"key": "user", "value": "u"}]}]), timeout=5)
        status, text = s.http("/metrics")
        assert status == 200, (text, s.log())
        by = answered_by(s)
        assert by[("should_rate_limit", "python")] == 1 and by[("should_rate_limit", "native")] == 3
        m = s.metrics()
        assert counter(m, "guardian_latency_seconds_count", operation="should_rate_limit") == 4
        assert counter(m, "guardian_latency_seconds_bucket", operation="should_rate_limit", le="+Inf") == 4
    finally:
        code, _ = s.stop()
    assert code == 0, s.log()
    assert "Traceback" not in s.log(), s.log()
