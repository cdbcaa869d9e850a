"""guardian.v1 over gRPC: `guardian serve` in a subprocess, the package's clients."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sidecar import Sidecar, write

from guardian import ConfigurationError, InvalidArgumentError, LimitResult
from guardian.client import AdminTokenError, AsyncClient, Client

pytestmark = pytest.mark.grpc

POLICY = """
limits:
  default: {requests_per_unit: 1, unit: hour, burst: 5}
  login:   {capacity: 3, refill_rate: 1, refill_interval: 60}
"""
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("sidecar")
    uds = tmp / "guardian.sock"
    s = Sidecar(tmp, "--config", write(tmp / "policy.yaml", POLICY), "--admin-token", TOKEN,
                "--uds", str(uds)).start()
    s.uds = str(uds)  # type: ignore[attr-defined]
    yield s
    s.kill()


def test_check_limit_counts_down_then_denies(server: Sidecar) -> None:
    with Client(server.target) as client:
        results = [client.check_limit("alice") for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    assert all(r.limit == 5 for r in results)
    assert results[0].retry_after == 0
    assert 3599 < results[-1].retry_after <= 3600  # one token per hour
    assert isinstance(results[0], LimitResult)


def test_named_limit_cost_and_usage(server: Sidecar) -> None:
    with Client(server.target, limit="login") as client:
        r = client.check_limit("bob", cost=2)
        assert (r.allowed, r.remaining, r.limit) == (True, 1, 3)
        assert client.get_usage("bob") == 2
        assert not client.check_limit("bob", cost=2).allowed  # only one token left
        assert client.check_limit("bob", cost=1, limit="default").remaining == 4  # another limit, own bucket


def test_check_limits_many_in_one_call(server: Sidecar) -> None:
    with Client(server.target) as client:
        results = client.check_limits(["c1", ("c1", 2), ("c2", 3, "login"), ("c2", 1, "login")])
    assert [(r.allowed, r.remaining) for r in results] == [(True, 4), (True, 2), (True, 0), (False, 0)]


def test_invalid_requests_are_invalid_argument(server: Sidecar) -> None:
    with Client(server.target) as client:
        with pytest.raises(InvalidArgumentError, match="key must not be empty"):
            client.check_limit("")
        with pytest.raises(InvalidArgumentError, match="above the bucket's capacity"):
            client.check_limit("k", cost=6)
        with pytest.raises(InvalidArgumentError, match="maximum is 4096"):
            client.check_limit("x" * 5000)
        with pytest.raises(ConfigurationError, match="no limit named 'nope'"):
            client.check_limit("k", limit="nope")
        # a bad check anywhere in a batch fails the batch before any token is taken
        with pytest.raises(InvalidArgumentError, match=r"checks\[1\]"):
            client.check_limits([("batch", 1), ("", 1)])
        assert client.get_usage("batch") == 0
    # and the raw status code, as any gRPC client sees it
    from guardian.v1 import guardian_pb2, guardian_pb2_grpc

    with grpc.insecure_channel(server.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            guardian_pb2_grpc.RateLimiterStub(ch).CheckLimit(guardian_pb2.CheckLimitRequest(key=""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "key must not be empty" in info.value.details()


def test_reset_needs_the_admin_token(server: Sidecar) -> None:
    with Client(server.target) as anonymous, Client(server.target, admin_token="wrong") as wrong, \
            Client(server.target, admin_token=TOKEN) as admin:
        admin.check_limit("carol", cost=5)
        assert admin.get_usage("carol") == 5
        with pytest.raises(AdminTokenError, match="admin token"):
            anonymous.reset("carol")
        with pytest.raises(AdminTokenError, match="wrong admin token"):
            wrong.reset("carol")
        assert admin.get_usage("carol") == 5  # refused resets changed nothing
        admin.reset("carol")
        assert admin.get_usage("carol") == 0
        assert admin.check_limit("carol").remaining == 4


async def test_async_client(server: Sidecar) -> None:
    async with AsyncClient(server.target, admin_token=TOKEN) as client:
        r = await client.check_limit("dave", cost=3)
        assert (r.allowed, r.remaining) == (True, 2)
        assert await client.get_usage("dave") == 3
        assert [x.allowed for x in await client.check_limits([("dave", 2), ("dave", 1)])] == [True, False]
        await client.reset("dave")
        assert await client.get_usage("dave") == 0
        with pytest.raises(InvalidArgumentError):
            await client.check_limit("")


def test_unix_socket(server: Sidecar) -> None:
    with Client(f"unix:{server.uds}") as client:  # type: ignore[attr-defined]
        assert client.check_limit("over-uds").remaining == 4


def test_reflection_lists_the_services(server: Sidecar) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    names = {s.name for s in reply.list_services_response.service}
    assert {"guardian.v1.RateLimiter", "envoy.service.ratelimit.v3.RateLimitService",
            "grpc.health.v1.Health"} <= names


def test_flags_and_environment(tmp_path: Path) -> None:
    """Each flag is also read from the environment; flags win."""
    s = Sidecar(tmp_path, "--log-level", "debug")  # --grpc-port and --http-port as flags
    s.env.update(GUARDIAN_GRPC_PORT="1",  # loses to the flag
                 GUARDIAN_CONFIG=write(tmp_path / "p.yaml", "limits: {default: {capacity: 2, refill_rate: 1}}"))
    s.start()
    try:
        with Client(s.target) as client:
            assert client.check_limit("k").limit == 2
    finally:
        assert s.stop()[0] == 0
    assert ("1 named limit(s) [default: burst 2, 1 per 1s], 0 Envoy domain(s) with 0 descriptor rule(s), from "
            + str(tmp_path / "p.yaml")) in s.log()


def test_health_watch_streams_changes_and_ends_on_sigterm(tmp_path: Path) -> None:
    """grpc.health.v1 Watch (server-streaming): the status now, SERVICE_UNKNOWN
    for a name the server does not know, then NOT_SERVING as the worker
    drains, then the stream ends UNAVAILABLE (at once on the native engine;
    after --grace on grpcio, whose server cancels open calls then)."""
    import signal

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = Sidecar(tmp_path, "--grace", "1").start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no-such-service"), timeout=30)
            assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            server.signal(signal.SIGTERM)
            seen = []
            with pytest.raises(grpc.RpcError) as ended:
                for update in watch:
                    seen.append(update.status)
            assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
