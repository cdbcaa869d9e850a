"""Rate limiting for gRPC servers: a server interceptor for ``grpc.server``
and one for ``grpc.aio.server`` (needs the ``server`` extra's grpcio).

    server = grpc.server(pool, interceptors=[RateLimitInterceptor(limiter, key_func=peer_key)])
    server = grpc.aio.server(interceptors=[AsyncRateLimitInterceptor(alimiter)])

A denied call ends with RESOURCE_EXHAUSTED before the handler runs; its
trailing metadata carries ``retry-after`` (whole seconds, as HTTP's
Retry-After), ``ratelimit-limit`` / ``ratelimit-remaining``, and, when the google.rpc
protos are importable (the server extra's xds-protos ships them, as does
googleapis-common-protos), ``grpc-status-details-bin`` holding
a google.rpc.Status with a google.rpc.RetryInfo, which gRPC's richer error
model clients read.

``key_func(call) -> str | None`` names the bucket (None: not limited); the
:class:`Call` it gets has the full method name, the invocation metadata
and the peer. The default key is the peer's address without the port
(``ipv4:1.2.3.4``), an IPv6 peer by its /64 (``ipv6:2001:db8::/64``, see
``peer_key_func``), an IPv4-mapped IPv6 peer as IPv4, a Unix-socket peer
by its socket (all callers on it share one bucket). A key longer than
256 bytes (a client's metadata) is replaced by a fixed-size digest, never
an error. ``cost_func(call) -> int`` (default 1). ``methods`` limits only
the listed full method names.
"""

from __future__ import annotations

import inspect
import math
from urllib.parse import unquote
from typing import Any, Callable, Collection, List, Optional, Tuple

import grpc
from grpc import aio

from ._errors import MisuseError
from .http import _check_limiter, _parse_ip, address_key, bounded_key, retry_after_seconds

__all__ = ["Call", "RateLimitInterceptor", "AsyncRateLimitInterceptor", "peer_key", "peer_key_func",
           "metadata_key"]

try:
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
except ImportError:  # pragma: no cover - the server extra's xds-protos ships google.rpc
    status_pb2 = None

_MESSAGE = "rate limit exceeded"


class Call:
    """What a key function can read about one call."""

    __slots__ = ("method", "metadata", "context")

    def __init__(self, method: str, metadata: Tuple[Tuple[str, Any], ...], context: Any) -> None:
        self.method = method
        self.metadata = metadata
        self.context = context

    @property
    def peer(self) -> str:
        return str(self.context.peer())

    def header(self, name: str) -> Optional[str]:
        for k, v in self.metadata:
            if k == name:
                return v if isinstance(v, str) else None
        return None


def peer_key_func(ipv6_prefix: int = 64) -> Callable[[Call], Optional[str]]:
    """Key by peer: ``ipv4:1.2.3.4`` (no port), ``ipv6:2001:db8::/64`` (the
    ``/ipv6_prefix`` network: one subscriber holds a whole /64),
    ``::ffff:1.2.3.4`` as ``ipv4:1.2.3.4``; any other peer (``unix:...``)
    as gRPC names it."""
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be between 0 and 128, got {ipv6_prefix!r}")

    def key(call: Call) -> Optional[str]:
        peer = call.peer
        scheme, sep, rest = peer.partition(":")
        if not sep or scheme not in ("ipv4", "ipv6"):
            return peer
        # "1.2.3.4:5", "[2001:db8::1]:5" (newer gRPC writes "%5B2001:db8::1%5D:5")
        addr = _parse_ip(unquote(rest))  # unmaps ::ffff:a.b.c.d
        if addr is None:
            return peer
        return f"ipv{addr.version}:{address_key(addr, ipv6_prefix)}"

    return key


#: The default key: peer_key_func() with an IPv6 /64.
peer_key = peer_key_func()


def metadata_key(name: str) -> Callable[[Call], Optional[str]]:
    """Key by an (ASCII) metadata entry such as ``x-api-key``."""
    def key(call: Call) -> Optional[str]:
        return call.header(name)
    return key


def denial_metadata(result: Any) -> List[Tuple[str, Any]]:
    """The trailing metadata of a denied call."""
    seconds = retry_after_seconds(result)
    md: List[Tuple[str, Any]] = [("retry-after", str(seconds)),
                                 ("ratelimit-limit", str(result.limit)),
                                 ("ratelimit-remaining", str(result.remaining))]
    if status_pb2 is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, math.ceil(result.retry_after * 1e9)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=_MESSAGE, details=[detail])
        md.append(("grpc-status-details-bin", status.SerializeToString()))
    return md


_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class _Base:
    def __init__(self, limiter: Any, key_func: Optional[Callable[[Call], Optional[str]]] = None,
                 cost_func: Optional[Callable[[Call], int]] = None,
                 methods: Optional[Collection[str]] = None) -> None:
        # Refused now: a wrong object would fail every call instead of limiting it.
        if limiter is None:
            raise MisuseError(f"{type(self).__name__} needs a limiter")
        _check_limiter(limiter, "limiter")
        if isinstance(self, RateLimitInterceptor) and inspect.iscoroutinefunction(limiter.check_limit):
            raise MisuseError("grpc.server's interceptor checks synchronously: give RateLimitInterceptor a "
                              "RateLimiter, or use AsyncRateLimitInterceptor on grpc.aio.server")
        self.limiter = limiter
        self.key_func = key_func or peer_key
        self.cost_func = cost_func
        self.methods = None if methods is None else frozenset(methods)

    def _applies(self, handler: Any, details: Any) -> bool:
        return handler is not None and (self.methods is None or details.method in self.methods)

    def _plan(self, details: Any, context: Any) -> Optional[Tuple[str, int]]:
        call = Call(details.method, tuple(details.invocation_metadata or ()), context)
        key = self.key_func(call)
        if key is None:
            return None
        return bounded_key(key if type(key) is str else str(key)), 1 if self.cost_func is None else self.cost_func(call)

    @staticmethod
    def _rewrap(handler: Any, wrap: Callable[[Any], Any]) -> Any:
        for kind in _KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                factory = getattr(grpc, f"{kind}_rpc_method_handler")
                return factory(wrap(behaviour), request_deserializer=handler.request_deserializer,
                               response_serializer=handler.response_serializer)
        return handler


class RateLimitInterceptor(_Base, grpc.ServerInterceptor):  # type: ignore[misc]
    """For ``grpc.server``; ``limiter`` is a RateLimiter."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if not self._applies(handler, details):
            return handler

        def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def limited(request: Any, context: Any) -> Any:
                plan = self._plan(details, context)
                if plan is not None:
                    result = self.limiter.check_limit(*plan)
                    if not result.allowed:
                        context.set_trailing_metadata(denial_metadata(result))
                        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _MESSAGE)
                return behaviour(request, context)
            return limited

        return self._rewrap(handler, wrap)


class AsyncRateLimitInterceptor(_Base, aio.ServerInterceptor):  # type: ignore[misc]
    """For ``grpc.aio.server``; ``limiter`` is an AsyncRateLimiter (or a
    RateLimiter on an in-process backend, called directly)."""

    async def _check(self, details: Any, context: Any) -> None:
        plan = self._plan(details, context)
        if plan is None:
            return
        result = self.limiter.check_limit(*plan)
        if inspect.isawaitable(result):
            result = await result
        if not result.allowed:
            context.set_trailing_metadata(denial_metadata(result))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _MESSAGE)

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if not self._applies(handler, details):
            return handler
        streaming = bool(handler.response_streaming)

        def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            if not streaming:
                async def limited(request: Any, context: Any) -> Any:
                    await self._check(details, context)
                    return await behaviour(request, context)
                return limited

            async def limited_stream(request: Any, context: Any) -> Any:
                await self._check(details, context)
                out = behaviour(request, context)
                if inspect.isasyncgen(out):
                    async for item in out:
                        yield item
                else:  # a handler that writes with context.write()
                    await out
            return limited_stream

        return self._rewrap(handler, wrap)
