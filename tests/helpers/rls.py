"""Envoy RLS v3 requests for the sidecar tests: descriptors from (key,
value) pairs, a ShouldRateLimit caller over one channel, and one call of
whichever hot RPC a request message is for."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.wrappers_pb2 import UInt64Value

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
Entries = List[Tuple[str, str]]


def descriptor(entries: Entries, hits: Optional[int] = None, limit: Optional[Tuple[int, int]] = None) -> Any:
    d = rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        d.hits_addend.CopyFrom(UInt64Value(value=hits))
    if limit is not None:
        d.limit.requests_per_unit, d.limit.unit = limit
    return d


@contextmanager
def rls_caller(target: str) -> Iterator[Callable[..., Any]]:
    """``call(domain, *descriptors, hits=0)``: descriptors as entry lists or
    RateLimitDescriptor messages."""
    channel = grpc.insecure_channel(target)
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)

    def call(domain: str, *descriptors: Any, hits: int = 0) -> Any:
        ds = [d if isinstance(d, rl.RateLimitDescriptor) else descriptor(d) for d in descriptors]
        return stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain=domain, descriptors=ds, hits_addend=hits),
                                    timeout=5)

    try:
        yield call
    finally:
        channel.close()


def call_any(channel: grpc.Channel, request: Any) -> Any:
    """The answer to ``request``: a RateLimitRequest (ShouldRateLimit), a
    guardian.v1 CheckLimitRequest (CheckLimit) or CheckLimitsRequest."""
    from guardian.v1 import guardian_pb2 as pb
    from guardian.v1 import guardian_pb2_grpc as pb_grpc

    if isinstance(request, rls_pb2.RateLimitRequest):
        return rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=5)
    if isinstance(request, pb.CheckLimitRequest):
        return pb_grpc.RateLimiterStub(channel).CheckLimit(request, timeout=5)
    return pb_grpc.RateLimiterStub(channel).CheckLimits(request, timeout=5)


def codes(response: Any) -> List[int]:
    return [s.code for s in response.statuses]
