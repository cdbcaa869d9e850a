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
from guardian.grpc import AsyncRateLimitInterceptor, RateLimitInterceptor, metadata_key

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


async def test_aio_interceptor_resource_exhausted_with_retry_info(core: Any, clock: ManualClock) -> None:
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


def test_sync_interceptor_by_peer(core: Any, clock: ManualClock) -> None:
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
