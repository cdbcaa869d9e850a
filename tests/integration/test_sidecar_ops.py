"""Running the sidecar: health, /metrics, signals, --workers, and Redis
failing under a running server."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator, List

import grpc
import pytest
from grpc_health.v1 import health_pb2
from redis_servers import Server
from sidecar import Sidecar, counter, wait_until, write

from guardian.client import Client

pytestmark = pytest.mark.grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def policy(tmp: Path, capacity: int, name: str = "policy.yaml") -> str:
    return write(tmp / name, f"limits:\n  default: {{capacity: {capacity}, refill_rate: 1, refill_interval: 3600}}\n")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Sidecar]:
    s = Sidecar(tmp_path, "--config", policy(tmp_path, 3)).start()
    yield s
    s.kill()


def test_health_ready_and_metrics(server: Sidecar) -> None:
    for service in ("", "guardian.v1.RateLimiter", "envoy.service.ratelimit.v3.RateLimitService"):
        assert server.health(service) == SERVING
    assert server.http("/health") == (200, "ok\n")
    assert server.http("/ready") == (200, "ready\n")
    assert server.http("/nope")[0] == 404
    with Client(server.target) as client:
        allowed = [client.check_limit("m").allowed for _ in range(5)]
    assert allowed == [True] * 3 + [False] * 2
    m = server.metrics()
    assert counter(m, "guardian_requests_total", limit="default", result="allowed") == 3
    assert counter(m, "guardian_requests_total", limit="default", result="denied") == 2
    assert counter(m, "guardian_latency_seconds_count", operation="check_limit") == 5
    assert counter(m, "guardian_latency_seconds_bucket", operation="check_limit", le="+Inf") == 5
    assert counter(m, "guardian_cache_hit_rate") == 1.0  # in memory: no round trip
    assert counter(m, "guardian_backend_up") == 1
    assert counter(m, "guardian_breaker_open") == 0
    assert counter(m, "guardian_redis_errors_total") == 0
    assert not any("client" in dict(labels) for _, labels in m)  # no per-client label


def test_sigterm_drains_and_exits_0_quickly(server: Sidecar) -> None:
    with Client(server.target) as client:
        assert client.check_limit("t").allowed
    code, seconds = server.stop()
    assert code == 0 and seconds < 5, server.log()
    log = server.log()
    assert "stopping: draining" in log and "stopped" in log


def test_core_counters_keep_their_limit_label_across_a_reload(tmp_path: Path, server: Sidecar) -> None:
    """Memory-path checks are counted by the core, one table per limit name:
    a reload that changes the limit's config gives it a new table, and the
    old table's counts stay under the same label."""
    import time

    with Client(server.target) as client:
        calls = [client.check_limit("c") for _ in range(4)]  # 3 allowed, 1 denied
        policy(tmp_path, 7)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while calls[-1].limit != 7:
            assert time.monotonic() < deadline, "the reloaded policy"
            calls.append(client.check_limit("c"))
            time.sleep(0.01)
        calls.append(client.check_limit("c"))
    m = server.metrics()
    allowed = sum(r.allowed for r in calls)
    assert counter(m, "guardian_requests_total", limit="default", result="allowed") == allowed
    assert counter(m, "guardian_requests_total", limit="default", result="denied") == len(calls) - allowed
    assert counter(m, "guardian_latency_seconds_count", operation="check_limit") == len(calls)


def test_sighup_reloads_good_file_and_keeps_old_on_bad(tmp_path: Path, server: Sidecar) -> None:
    with Client(server.target) as client:
        assert client.check_limit("h").limit == 3
        policy(tmp_path, 7)
        server.signal(signal.SIGHUP)
        wait_until(lambda: client.check_limit("h2").limit == 7, 10, "the reloaded policy")
        write(tmp_path / "policy.yaml", "limits: {default: {capacity: -1, refill_rate: 1}}\n")
        server.signal(signal.SIGHUP)
        wait_until(lambda: "policy reload rejected" in server.log(), 10, "the rejection in the log")
        assert "capacity must be at least 1" in server.log()
        assert client.check_limit("h3").limit == 7  # the old policy stays
        assert server.health() == SERVING
    assert server.stop()[0] == 0
    assert server.log().count("policy reloaded") == 1


def _channels(target: str, n: int) -> List[grpc.Channel]:
    # A local subchannel pool per channel: n channels really are n connections,
    # which SO_REUSEPORT spreads over the workers.
    return [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(n)]


@pytest.mark.shm
def test_two_workers_enforce_one_limit(tmp_path: Path) -> None:
    s = Sidecar(tmp_path, "--config", policy(tmp_path, 10), "--workers", "2").start()
    try:
        channels = _channels(s.target, 16)
        allowed = 0
        for _ in range(3):
            for ch in channels:
                with Client(s.target, channel=ch) as client:
                    allowed += client.check_limit("shared-key").allowed
        assert allowed == 10  # 48 checks over both workers, one bucket of 10
        # one scrape sums both workers (the other worker's counters are at most ~1 s old,
        # and a scrape may land on either worker)
        def summed() -> bool:
            m = s.metrics()
            return (counter(m, "guardian_workers") == 2
                    and counter(m, "guardian_requests_total", limit="default", result="allowed") == 10
                    and counter(m, "guardian_requests_total", limit="default", result="denied") == 38)

        wait_until(summed, 10, "the summed counters")
        for ch in channels:
            ch.close()
        code, seconds = s.stop()
        assert code == 0 and seconds < 5, s.log()
    finally:
        s.kill()
    log = s.log()
    assert log.count("serving gRPC") == 2 and log.count("stopped") == 3  # 2 workers and the supervisor
    run_id = log.split(" workers, run ", 1)[1].split()[0]
    assert not list(Path("/dev/shm").glob(f"guardian.gs{run_id}.*")), "the run's shared tables are left"


@pytest.mark.shm
def test_workers_sighup_reload(tmp_path: Path) -> None:
    s = Sidecar(tmp_path, "--config", policy(tmp_path, 4), "--workers", "2").start()
    try:
        wait_until(lambda: s.log().count("serving gRPC") == 2, 20, "both workers serving")
        policy(tmp_path, 9)
        s.signal(signal.SIGHUP)
        wait_until(lambda: s.log().count("policy reloaded") == 2, 10, "both workers reloading")
        with Client(s.target) as client:
            assert client.check_limit("w").limit == 9
    finally:
        assert s.stop()[0] == 0


@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_redis_stopped_under_a_running_server(tmp_path: Path, own_server: Server, fail_open: bool) -> None:
    s = Sidecar(tmp_path, "--config", policy(tmp_path, 3), "--redis-url", own_server.url,
                "--fail-open" if fail_open else "--fail-closed").start()
    try:
        with Client(s.target) as client:
            assert [client.check_limit("r").allowed for _ in range(4)] == [True, True, True, False]
            assert own_server.cli("DBSIZE") == "1"  # the bucket lives in Redis
            assert s.health() == SERVING
            own_server.kill()
            if fail_open:
                wait_until(lambda: counter(s.metrics(), "guardian_backend_up") == 0, 10, "backend down")
                assert s.health() == SERVING and s.http("/ready")[0] == 200
            else:
                wait_until(lambda: s.health() == NOT_SERVING, 10, "NOT_SERVING")
                assert s.http("/ready")[0] == 503
            r = client.check_limit("fresh")  # the policy decides
            assert r.allowed is fail_open
            m = s.metrics()
            assert counter(m, "guardian_redis_errors_total") >= 1
            assert counter(m, "guardian_policy_decisions_total") >= 1
            own_server.start()  # same port, empty
            wait_until(lambda: s.health() == SERVING and counter(s.metrics(), "guardian_backend_up") == 1,
                       10, "recovery")
            assert s.http("/ready")[0] == 200
            wait_until(lambda: client.check_limit("after").remaining == 2, 10, "checks in Redis again")
        assert s.stop()[0] == 0
    finally:
        s.kill()
    log = s.log()
    assert "is unreachable; checks are " + ("allowed" if fail_open else "denied") in log
    assert "is reachable again" in log


@pytest.mark.redis
@pytest.mark.parametrize("refusal", ["password", "acl"])
def test_redis_refusing_credentials_is_a_configuration_error(tmp_path: Path, own_server: Server,
                                                             refusal: str) -> None:
    if refusal == "password":
        own_server.cli("CONFIG", "SET", "requirepass", "s3cret")
        url = own_server.url  # no password given
        reason = "Authentication"
    else:  # a user who may run anything, on other keys only
        own_server.cli("ACL", "SETUSER", "narrow", "on", ">pw", "~other:*", "+@all")
        url = own_server.url.replace("redis://", "redis://narrow:pw@")
        reason = "NoPermissionError"
    s = Sidecar(tmp_path, "--config", policy(tmp_path, 3), "--redis-url", url, "--fail-open").start()
    try:
        wait_until(lambda: counter(s.metrics(), "guardian_backend_config_error") == 1, 10, "config error gauge")
        status, body = s.http("/ready")
        assert status == 503 and "configuration error: the backend refuses our credentials or ACL" in body
        assert reason in body
        assert counter(s.metrics(), "guardian_backend_up") == 0
        with Client(s.target) as client:
            assert client.check_limit("k").allowed  # fail-open still decides each check
        assert s.stop()[0] == 0
    finally:
        s.kill()
    log = s.log()
    assert "ERROR guardian server: configuration error: backend" in log
    assert "is unreachable; checks are" not in log  # not reported as an outage
    assert "pw@" not in log and "s3cret" not in log


@pytest.mark.redis
@pytest.mark.skipif(not hasattr(__import__("guardian.backends.redis_async", fromlist=["x"]).AsyncRedisBackend, "peek"),
                    reason="the Redis backends expose peek once the backends branch is merged")
def test_redis_zero_hit_check_counts_down(tmp_path: Path, own_server: Server) -> None:
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
    from google.protobuf.wrappers_pb2 import UInt64Value

    text = "domain: d\ndescriptors: [{key: h, rate_limit: {unit: hour, requests_per_unit: 60}}]\n"
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", text), "--redis-url", own_server.url).start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)

            def ask(hits: int) -> Any:
                d = rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key="h", value="z")])
                d.hits_addend.CopyFrom(UInt64Value(value=hits))
                return stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="d", descriptors=[d]), timeout=5).statuses[0]

            ask(3)
            st = ask(0)
            assert st.limit_remaining == 57 and 120.0 < st.duration_until_reset.ToNanoseconds() / 1e9 < 180.0
        assert s.stop()[0] == 0
    finally:
        s.kill()
