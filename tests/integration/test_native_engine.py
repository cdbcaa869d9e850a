"""``guardian serve --engine native``: what the native data plane adds to
the sidecar's behaviour (the sidecar suites themselves run again on it in
test_native_sidecar*.py): gRPC semantics a client relies on, answers
identical to the grpcio engine's for the same requests, exact admission
across workers and connections, and real load generators."""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_engine import native_module
from sidecar import Sidecar, counter, wait_until, write

from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

native_module()

pytestmark = pytest.mark.grpc

POLICY = """
# Slow refills (a token per hours or days): the two engines see each request
# a millisecond apart, and a refill must not fall between them.
domain: web
descriptors:
  - key: path
    value: /login
    rate_limit: {unit: week, requests_per_unit: 5, name: login}
  - key: path
    value: /api*
    rate_limit: {unit: week, requests_per_unit: 4}
  - key: user
    rate_limit: {unit: week, requests_per_unit: 3, name: per_user}
    descriptors:
      - key: vip
        rate_limit: {unlimited: true, replaces: [{name: per_user}]}
      - key: tier
        value: free
        rate_limit: {unit: week, requests_per_unit: 2}
  - key: blocked
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: week, requests_per_unit: 1}
  - key: big
    rate_limit: {unit: year, requests_per_unit: 1000, burst: 2}
---
limits:
  default: {requests_per_unit: 10, unit: day, burst: 6}
  small: {capacity: 2, refill_rate: 1, refill_interval: 86400}
  big_v1: {capacity: 1000000, refill_rate: 1000000, refill_interval: 1}
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write(tmp_path_factory.mktemp("native") / "policy.yaml", POLICY)


@pytest.fixture
def pair(tmp_path: Path, policy: str) -> Iterator[Tuple[Sidecar, Sidecar]]:
    """The same policy on both engines, each with fresh buckets."""
    a = Sidecar(tmp_path, "--config", policy, "--response-headers", "--engine", "grpcio").start()
    b = Sidecar(tmp_path, "--config", policy, "--response-headers", "--engine", "native").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory, policy: str) -> Iterator[Sidecar]:
    s = Sidecar(tmp_path_factory.mktemp("native-one"), "--config", policy, "--engine", "native").start()
    yield s
    s.stop()


def test_the_native_engine_serves(native: Sidecar) -> None:
    assert "serving gRPC (native engine)" in native.log()


def test_the_default_engine_is_native_where_it_is_built(tmp_path: Path, policy: str) -> None:
    """--engine auto (the default, here through an empty GUARDIAN_ENGINE
    override of the suite's pin): the native engine, answering in C."""
    s = Sidecar(tmp_path, "--config", policy, env={"GUARDIAN_ENGINE": "auto"}).start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            assert stub.CheckLimit(pb.CheckLimitRequest(key="auto")).allowed
        assert "serving gRPC (native engine)" in s.log()
        m = s.metrics()
        assert counter(m, "guardian_native_calls_total", operation="check_limit", answered_by="native") == 1
        assert counter(m, "guardian_native_calls_total", operation="check_limit", answered_by="python") == 0
    finally:
        s.stop()


# --- answers identical to the grpcio engine's ----------------------------------

entries = st.sampled_from([
    [("path", "/login")], [("path", "/api/v1")], [("path", "/apis")], [("path", "/other")],
    [("user", "ann")], [("user", "bob")], [("user", "ann"), ("vip", "yes")],
    [("user", "bob"), ("tier", "free")], [("user", "bob"), ("tier", "paid")],
    [("blocked", "x")], [("shadow", "s")], [("big", "b")], [("nope", "n")], [("path", "/login"), ("x", "y")],
])
descriptor = st.fixed_dictionaries(
    {"entries": entries},
    optional={"hits_addend": st.sampled_from([0, 1, 2, 3, 2000])},
)
request = st.fixed_dictionaries({
    "domain": st.sampled_from(["web", "web", "web", "other"]),
    "descriptors": st.lists(descriptor, min_size=1, max_size=3),
}, optional={"hits_addend": st.sampled_from([0, 1, 2])})


def _ask(stub: Any, req: Dict[str, Any]) -> Dict[str, Any]:
    message = rls_pb2.RateLimitRequest(
        domain=req["domain"], hits_addend=req.get("hits_addend", 0),
        descriptors=[{"entries": [{"key": k, "value": v} for k, v in d["entries"]],
                      **({"hits_addend": {"value": d["hits_addend"]}} if "hits_addend" in d else {})}
                     for d in req["descriptors"]])
    out = json_format.MessageToDict(stub.ShouldRateLimit(message, timeout=5))
    # the one time-dependent figure: compared to the millisecond, not the nanosecond
    for status in out.get("statuses", []):
        if "durationUntilReset" in status:
            status["durationUntilReset"] = round(float(status["durationUntilReset"].rstrip("s")), 3)
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(request, min_size=1, max_size=12))
def test_should_rate_limit_answers_as_the_grpcio_engine(pair: Tuple[Sidecar, Sidecar], requests: List[Any]) -> None:
    a, b = pair
    with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
        sa, sb = rls_pb2_grpc.RateLimitServiceStub(ca), rls_pb2_grpc.RateLimitServiceStub(cb)
        for req in requests:
            # the buckets persist across examples, identically on both servers
            ra, rb = _ask(sa, req), _ask(sb, req)
            ta = [s.pop("durationUntilReset", None) for s in ra.get("statuses", [])]
            tb = [s.pop("durationUntilReset", None) for s in rb.get("statuses", [])]
            ha = {h["key"]: h["value"] for h in ra.pop("responseHeadersToAdd", [])}
            hb = {h["key"]: h["value"] for h in rb.pop("responseHeadersToAdd", [])}
            assert ra == rb, req
            for x, y in zip(ta, tb):
                assert (x is None) == (y is None) and (x is None or abs(x - y) < 0.5), (req, ta, tb)
            assert ha.keys() == hb.keys()
            for k in ha:
                if k == "RateLimit-Reset":
                    assert abs(int(ha[k]) - int(hb[k])) <= 1
                else:
                    assert ha[k] == hb[k], (req, k)


def test_check_limit_answers_as_the_grpcio_engine(pair: Tuple[Sidecar, Sidecar]) -> None:
    a, b = pair
    calls = [("default", "k", 1), ("default", "k", 4), ("default", "k", 2), ("small", "z", 1),
             ("small", "z", 2), ("", "k", 0), ("small", "z", 1)]
    with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
        sa, sb = pb_grpc.RateLimiterStub(ca), pb_grpc.RateLimiterStub(cb)
        for limit, key, cost in calls:
            req = pb.CheckLimitRequest(key=key, cost=cost, limit=limit)
            ra, rb = sa.CheckLimit(req), sb.CheckLimit(req)
            assert (ra.allowed, ra.remaining, ra.limit) == (rb.allowed, rb.remaining, rb.limit)
            assert abs(ra.reset_after - rb.reset_after) < 0.5 and abs(ra.retry_after - rb.retry_after) < 0.5
        many = pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key=f"m{i}", cost=2) for i in range(50)])
        ra, rb = sa.CheckLimits(many), sb.CheckLimits(many)
        assert [(r.allowed, r.remaining) for r in ra.results] == [(r.allowed, r.remaining) for r in rb.results]
        # errors are Python's on both engines: same code, same message
        for req in (pb.CheckLimitRequest(key="", limit="default"), pb.CheckLimitRequest(key="k", limit="none"),
                    pb.CheckLimitRequest(key="k", cost=7, limit="default")):
            with pytest.raises(grpc.RpcError) as ea:
                sa.CheckLimit(req)
            with pytest.raises(grpc.RpcError) as eb:
                sb.CheckLimit(req)
            assert (ea.value.code(), ea.value.details()) == (eb.value.code(), eb.value.details())


def test_native_checks_are_counted_in_metrics(tmp_path: Path, policy: str) -> None:
    s = Sidecar(tmp_path, "--config", policy, "--engine", "native").start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            for _ in range(7):
                stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
                    domain="web", descriptors=[{"entries": [{"key": "path", "value": "/login"}]},
                                               {"entries": [{"key": "shadow", "value": "s"}]}]))
        m = s.metrics()
        assert counter(m, "guardian_requests_total", limit="login", result="allowed") == 5
        assert counter(m, "guardian_requests_total", limit="login", result="denied") == 2
        assert counter(m, "guardian_requests_total", limit="web.shadow", result="shadow_denied") == 6
        assert counter(m, "guardian_latency_seconds_count", operation="should_rate_limit") == 7
    finally:
        s.stop()


def test_native_and_python_paths_share_one_bucket(native: Sidecar) -> None:
    """CheckLimit is answered in C, GetUsage and ResetLimit by Python: one table."""
    with grpc.insecure_channel(native.target) as ch:
        stub = pb_grpc.RateLimiterStub(ch)
        for _ in range(3):
            assert stub.CheckLimit(pb.CheckLimitRequest(key="shared-bucket", limit="default")).allowed
        assert stub.GetUsage(pb.GetUsageRequest(key="shared-bucket", limit="default")).used == 3
        stub.ResetLimit(pb.ResetLimitRequest(key="shared-bucket", limit="default"))
        assert stub.CheckLimit(pb.CheckLimitRequest(key="shared-bucket", limit="default")).remaining == 5


def test_a_large_policy_answers_as_the_grpcio_engine(tmp_path: Path) -> None:
    """Thousands of exact values, many domains and limits (hash-indexed in C)."""
    lines = []
    for d in range(12):
        lines += [f"domain: d{d}", "descriptors:"]
        for v in range(300 if d == 0 else 3):
            lines += [f"  - key: tenant", f"    value: t{v}",
                      f"    rate_limit: {{unit: week, requests_per_unit: {1 + v % 7}}}"]
        lines.append("---")
    lines.append("limits:")
    lines += [f"  l{i}: {{capacity: {1 + i % 5}, refill_rate: 1, refill_interval: 86400}}" for i in range(40)]
    policy = write(tmp_path / "big.yaml", "\n".join(lines) + "\n")
    a = Sidecar(tmp_path, "--config", policy, "--engine", "grpcio").start()
    b = Sidecar(tmp_path, "--config", policy, "--engine", "native").start()
    try:
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            ra, rb = rls_pb2_grpc.RateLimitServiceStub(ca), rls_pb2_grpc.RateLimitServiceStub(cb)
            va, vb = pb_grpc.RateLimiterStub(ca), pb_grpc.RateLimiterStub(cb)
            for i in range(0, 600, 7):
                req = {"domain": f"d{i % 13}", "descriptors": [{"entries": [("tenant", f"t{i % 310}")]}]}
                x, y = _ask(ra, req), _ask(rb, req)
                for s in x.get("statuses", []) + y.get("statuses", []):
                    s.pop("durationUntilReset", None)
                assert x == y, req
                c = pb.CheckLimitRequest(key=f"k{i % 3}", limit=f"l{i % 41}")
                try:
                    p, q = va.CheckLimit(c), vb.CheckLimit(c)
                    assert (p.allowed, p.remaining, p.limit) == (q.allowed, q.remaining, q.limit)
                except grpc.RpcError as e:  # l40 is not a limit: both engines say so
                    assert e.code() == grpc.StatusCode.NOT_FOUND
                    with pytest.raises(grpc.RpcError):
                        vb.CheckLimit(c)
    finally:
        a.stop()
        b.stop()


# --- gRPC semantics -------------------------------------------------------------


def test_unknown_method_is_unimplemented(native: Sidecar) -> None:
    with grpc.insecure_channel(native.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/no.such.Service/Method")(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_undecodable_message_is_internal_and_changes_nothing(native: Sidecar) -> None:
    with grpc.insecure_channel(native.target) as ch:
        call = ch.unary_unary("/guardian.v1.RateLimiter/CheckLimit")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\x0a\x05ab", timeout=5)  # a string longer than the message
        assert e.value.code() == grpc.StatusCode.INTERNAL
        stub = pb_grpc.RateLimiterStub(ch)
        assert stub.GetUsage(pb.GetUsageRequest(key="ab")).used == 0


def test_compressed_messages_are_refused(native: Sidecar) -> None:
    with grpc.insecure_channel(native.target, compression=grpc.Compression.Gzip) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.RateLimiterStub(ch).CheckLimit(pb.CheckLimitRequest(key="gz" * 200), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "compressed" in e.value.details()


def test_oversized_message_is_resource_exhausted(native: Sidecar) -> None:
    with grpc.insecure_channel(native.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.RateLimiterStub(ch).CheckLimit(pb.CheckLimitRequest(key="x" * (5 << 20)), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the connection still serves
        assert pb_grpc.RateLimiterStub(ch).CheckLimit(pb.CheckLimitRequest(key="after")).allowed


def test_request_bytes_are_returned_to_the_budget(native: Sidecar) -> None:
    """The server holds at most 64 MiB of request bytes at once: 100 MiB of
    answered calls in a row must all be served (each call's bytes go back)."""
    keys = [f"{i:04d}" + "k" * 3500 for i in range(1000)]  # ~3.5 MB a call, below the 4 MiB message cap
    request = pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key=k, limit="big_v1") for k in keys])
    with grpc.insecure_channel(native.target) as ch:
        stub = pb_grpc.RateLimiterStub(ch)
        for _ in range(30):
            assert len(stub.CheckLimits(request, timeout=30).results) == 1000


def test_hostile_connections_do_not_stop_the_others(native: Sidecar) -> None:
    """Garbage, a half preface, a flood of PINGs, streams never finished and a
    peer that never reads: the next client is still answered."""
    import os
    import socket

    host, port = native.target.rsplit(":", 1)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0\0\0\x04\0\0\0\0\0"  # + empty SETTINGS
    ping = b"\0\0\x08\x06\0\0\0\0\0" + b"12345678"
    # HEADERS (stream 1, END_HEADERS, no END_STREAM): literal :method POST, :path /x, :scheme http
    headers_block = b"\x83\x44\x02/x\x86"
    open_stream = len(headers_block).to_bytes(3, "big") + b"\x01\x04\0\0\0\x01" + headers_block
    payloads = [os.urandom(512), preface[:10], preface + ping * 2000, preface + open_stream]
    socks = []
    try:
        for p in payloads * 5:
            s = socket.create_connection((host, int(port)))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
            s.sendall(p)
            socks.append(s)
        with grpc.insecure_channel(native.target) as ch:
            r = pb_grpc.RateLimiterStub(ch).CheckLimit(pb.CheckLimitRequest(key="after-hostile", limit="big_v1"),
                                                       timeout=10)
        assert r.allowed
    finally:
        for s in socks:
            s.close()


def _frame(message: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(message)) + message


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (Debian nghttp2-client) is not installed")
def test_an_expired_grpc_timeout_is_deadline_exceeded(native: Sidecar, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(_frame(pb.CheckLimitRequest(key="late").SerializeToString()))
    out = subprocess.run(["nghttp", "-v", "-d", str(body), "-H", "content-type: application/grpc",
                          "-H", "grpc-timeout: 1n", f"http://{native.target}/guardian.v1.RateLimiter/CheckLimit"],
                         capture_output=True, text=True, timeout=20)
    assert "grpc-status: 4" in out.stdout, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_h2load_calls_all_succeed(native: Sidecar, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(_frame(pb.CheckLimitRequest(key="h2load", limit="big").SerializeToString()))
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "8", "-d", str(body),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://{native.target}/guardian.v1.RateLimiter/CheckLimit"],
                         capture_output=True, text=True, timeout=60)
    assert "2000 succeeded, 0 failed" in out.stdout, out.stdout + out.stderr
    # "big" is not a v1 limit: every call was answered (NOT_FOUND, by Python) in a grpc-status trailer
    body.write_bytes(_frame(pb.CheckLimitRequest(key="h2load").SerializeToString()))
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "8", "-d", str(body),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://{native.target}/guardian.v1.RateLimiter/CheckLimit"],
                         capture_output=True, text=True, timeout=60)
    assert "2000 succeeded, 0 failed" in out.stdout, out.stdout + out.stderr


async def test_asyncio_client(native: Sidecar) -> None:
    async with grpc.aio.insecure_channel(native.target) as ch:
        stub = pb_grpc.RateLimiterStub(ch)
        results = [await stub.CheckLimit(pb.CheckLimitRequest(key="aio", limit="small")) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]


# --- exactness across workers and connections --------------------------------------


@pytest.mark.slow
def test_two_workers_many_connections_admit_exactly_the_bucket(tmp_path: Path) -> None:
    policy = write(tmp_path / "p.yaml", "limits:\n  one: {capacity: 300, refill_rate: 1, refill_interval: 86400}\n")
    s = Sidecar(tmp_path, "--config", policy, "--engine", "native", "--workers", "2").start()
    # both workers serving (the kernel spreads the connections over them), and both
    # past their start, so that SIGTERM at the end finds their handlers installed
    wait_until(lambda: s.log().count("serving gRPC") == 2, 30, "both workers")
    allowed: List[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        n = 0
        # a channel per thread: its own connection, spread over the workers by the kernel
        with grpc.insecure_channel(s.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            for _ in range(60):
                n += stub.CheckLimit(pb.CheckLimitRequest(key="shared", limit="one")).allowed
        with lock:
            allowed.append(n)

    try:
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        code, _ = s.stop()
    assert sum(allowed) == 300
    assert code == 0, s.log()
