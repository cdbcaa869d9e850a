"""The gRPC interceptors on real servers (grpc.aio and sync grpc on a
loopback port) called by real clients."""

from __future__ import annotations

from concurrent import futures
from typing import Any, AsyncIterator, Iterator

import grpc
import pytest
from conftest import ManualClock
from google.rpc import error_details_pb2, status_pb2

from guardian import AsyncRateLimiter, MemoryBackend, RateLimiter, TokenBucketConfig
from guardian.grpc import (
    AsyncRateLimitInterceptor, Call, RateLimitInterceptor, metadata_key, peer_key, peer_key_func,
)

pytestmark = pytest.mark.grpc


def handlers(aio: bool) -> Any:
    if aio:
        async def say(request: bytes, context: Any) -> bytes:
            return b"hi " + request

        async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
            for i in range(3):
                yield str(i).encode()
    else:
        def say(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            return b"hi " + request

        def count(request: bytes, context: Any) -> Iterator[bytes]:  # type: ignore[misc]
            for i in range(3):
                yield str(i).encode()
    return grpc.method_handlers_generic_handler("test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    })


def retry_info(err: grpc.RpcError) -> float:
    md = dict(err.trailing_metadata())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return float(info.retry_delay.ToNanoseconds() / 1e9)


async def test_aio_interceptor_resource_exhausted_with_retry_info(clock: ManualClock) -> None:
    limiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(2, 0.5), clock=clock))
    server = grpc.aio.server(interceptors=[AsyncRateLimitInterceptor(limiter, key_func=metadata_key("x-api-key"))])
    server.add_generic_rpc_handlers((handlers(aio=True),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            count = channel.unary_stream("/test.Echo/Count")
            md = (("x-api-key", "k1"),)
            assert await say(b"a", metadata=md) == b"hi a"
            assert [m async for m in count(b"", metadata=md)] == [b"0", b"1", b"2"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await say(b"a", metadata=md)
            err = info.value
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(err.trailing_metadata())
            assert trailers["retry-after"] == "2" and trailers["ratelimit-limit"] == "2"
            assert retry_info(err) == pytest.approx(2.0)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [m async for m in count(b"", metadata=md)]
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Another key has its own bucket; calls without the key are not limited.
            assert await say(b"b", metadata=(("x-api-key", "k2"),)) == b"hi b"
            for _ in range(4):
                assert await say(b"c") == b"hi c"
            clock.advance(2)
            assert await say(b"a", metadata=md) == b"hi a"
    finally:
        await server.stop(None)


def test_sync_interceptor_by_peer(clock: ManualClock) -> None:
    limiter = RateLimiter(MemoryBackend(TokenBucketConfig(2, 1), clock=clock))
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[RateLimitInterceptor(limiter)])
    server.add_generic_rpc_handlers((handlers(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            count = channel.unary_stream("/test.Echo/Count")
            assert say(b"x") == b"hi x"
            assert list(count(b"")) == [b"0", b"1", b"2"]
            with pytest.raises(grpc.RpcError) as info:
                say(b"x")
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert dict(info.value.trailing_metadata())["retry-after"] == "1"  # type: ignore[attr-defined]
            assert retry_info(info.value) == pytest.approx(1.0)
            assert limiter.get_usage("ipv4:127.0.0.1") == 2  # keyed by the peer without its port
    finally:
        server.stop(None)


async def test_aio_interceptor_long_metadata_key_is_limited_not_unknown(clock: ManualClock) -> None:
    """A 5,000-byte x-api-key is a key like any other (digested): OK, OK,
    RESOURCE_EXHAUSTED, never UNKNOWN."""
    limiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(2, 1), clock=clock))
    server = grpc.aio.server(interceptors=[AsyncRateLimitInterceptor(limiter, key_func=metadata_key("x-api-key"))])
    server.add_generic_rpc_handlers((handlers(aio=True),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            md = (("x-api-key", "k" * 5000),)
            assert await say(b"a", metadata=md) == b"hi a"
            assert await say(b"a", metadata=md) == b"hi a"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await say(b"a", metadata=md)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(None)


def test_sync_interceptor_long_metadata_key(clock: ManualClock) -> None:
    limiter = RateLimiter(MemoryBackend(TokenBucketConfig(1, 1), clock=clock))
    server = grpc.server(futures.ThreadPoolExecutor(2),
                         interceptors=[RateLimitInterceptor(limiter, key_func=metadata_key("x-api-key"))])
    server.add_generic_rpc_handlers((handlers(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            md = (("x-api-key", "k" * 6000),)
            assert say(b"x", metadata=md) == b"hi x"
            with pytest.raises(grpc.RpcError) as info:
                say(b"x", metadata=md)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    finally:
        server.stop(None)


class _Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_peer_key_ipv6_by_prefix_and_mapped_as_ipv4() -> None:
    def key(peer: str, prefix: int = 64) -> str:
        return peer_key_func(prefix)(Call("/m", (), _Context(peer)))  # type: ignore[return-value]

    assert key("ipv4:10.1.2.3:5555") == "ipv4:10.1.2.3"
    assert key("ipv6:[::ffff:10.1.2.3]:5555") == "ipv4:10.1.2.3"
    assert key("ipv6:%5B::ffff:10.1.2.3%5D:5555") == "ipv4:10.1.2.3"  # as newer gRPC spells it
    assert {key(f"ipv6:[2001:db8:1:2::{i:x}]:{i + 1}") for i in range(1000)} == {"ipv6:2001:db8:1:2::/64"}
    assert key("ipv6:[2001:db8:1:2::1]:9", 48) == "ipv6:2001:db8:1::/48"
    assert key("unix:/run/app.sock") == "unix:/run/app.sock"
    assert peer_key(Call("/m", (), _Context("ipv6:[::1]:80"))) == "ipv6:::/64"


def test_aio_interceptor_over_ipv6_loopback(clock: ManualClock) -> None:
    """A real IPv6 peer is keyed by its /64 (skipped where ::1 cannot be bound)."""
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    limiter = RateLimiter(MemoryBackend(TokenBucketConfig(1, 1), clock=clock))
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[RateLimitInterceptor(limiter)])
    server.add_generic_rpc_handlers((handlers(aio=False),))
    port = server.add_insecure_port("[::1]:0")
    server.start()
    try:
        with grpc.insecure_channel(f"[::1]:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            assert say(b"x") == b"hi x"
            with pytest.raises(grpc.RpcError):
                say(b"x")
            assert limiter.get_usage("ipv6:::/64") == 1
    finally:
        server.stop(None)
