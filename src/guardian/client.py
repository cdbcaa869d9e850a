"""Clients of the sidecar's guardian.v1 API (``guardian serve``).

>>> with Client("127.0.0.1:50051") as client:          # doctest: +SKIP
...     result = client.check_limit("client-42", cost=1, limit="api")
...     result.allowed, result.remaining, result.retry_after

``AsyncClient`` is the same on grpc.aio. Results are :class:`LimitResult`,
as from a local limiter. gRPC errors become guardian's exceptions:
INVALID_ARGUMENT -> InvalidArgumentError, NOT_FOUND -> ConfigurationError (no
such limit), UNAUTHENTICATED / PERMISSION_DENIED -> AdminTokenError,
DEADLINE_EXCEEDED -> BackendTimeoutError, anything else ->
BackendUnavailableError. Needs grpcio and protobuf, not the server.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import grpc

from ._errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidArgumentError,
    RateLimitError,
)
from ._args import check_key, check_keys
from ._result import LimitResult
from .v1 import guardian_pb2 as pb
from .v1 import guardian_pb2_grpc as pb_grpc

__all__ = ["Client", "AsyncClient", "AdminTokenError"]

#: A check for check_limits: a key, (key, cost) or (key, cost, limit).
Check = Union[str, Tuple[str, int], Tuple[str, int, str]]


class AdminTokenError(RateLimitError, PermissionError):
    """The server refused an admin operation: no token, or the wrong one."""


def _translate(exc: grpc.RpcError) -> RateLimitError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(detail)
    if code == grpc.StatusCode.NOT_FOUND:
        return ConfigurationError(detail)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AdminTokenError(detail)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeoutError(f"guardian server did not answer in time: {detail}")
    return BackendUnavailableError(f"guardian server failed ({code}): {detail}")


class _GrpcErrors:
    """``with grpc_errors:`` raises guardian's exception for a gRPC error
    (one translation for both clients, httpx's map_exceptions)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, exc: Optional[BaseException], tb: Any) -> None:
        if isinstance(exc, grpc.RpcError):
            raise _translate(exc) from exc


grpc_errors = _GrpcErrors()


class _Base:
    """What both clients share: requests, results, metadata; no I/O."""

    def __init__(self, target: str, limit: str, admin_token: Optional[str], timeout: Optional[float]) -> None:
        self.target = target
        self.limit = limit
        self.timeout = timeout
        self._admin = (("authorization", f"Bearer {admin_token}"),) if admin_token else None

    def _check(self, key: str, cost: int, limit: Optional[str]) -> Any:
        check_key(key)  # refused here as by the library (protobuf would raise its own error, or accept bytes)
        return pb.CheckLimitRequest(key=key, cost=cost, limit=self.limit if limit is None else limit)

    def _checks(self, checks: Iterable[Check]) -> Any:
        request = pb.CheckLimitsRequest()
        add = request.checks.add
        for i, c in enumerate(check_keys(checks)):  # a str is one key, not one check per character
            try:
                if isinstance(c, str):
                    check_key(c)
                    add(key=c, cost=1, limit=self.limit)
                else:
                    check_key(c[0])
                    add(key=c[0], cost=_cost(c[1]), limit=c[2] if len(c) > 2 else self.limit)  # type: ignore[misc,unused-ignore]
            except RateLimitError as exc:  # which check, as the server says it
                raise type(exc)(f"checks[{i}]: {exc}") from None
        return request

    def _key(self, key: str, limit: Optional[str]) -> Tuple[str, str]:
        check_key(key)
        return key, self.limit if limit is None else limit

    @staticmethod
    def _result(r: Any) -> LimitResult:
        return LimitResult(r.allowed, r.remaining, r.retry_after, r.reset_after, r.limit)


def _cost(cost: int) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise InvalidArgumentError(f"cost must be an int >= 1, got {cost!r}")
    if cost >= 2**63:  # no bucket holds it (and the wire's uint64 would refuse it with its own error)
        raise InvalidArgumentError(f"cost {cost} is above any bucket's capacity; it could never be allowed")
    return cost


class Client(_Base):
    """A blocking client. ``limit`` is the default limit name for calls that
    do not name one; ``admin_token`` is sent with ``reset``."""

    def __init__(self, target: str = "127.0.0.1:50051", *, limit: str = "default",
                 admin_token: Optional[str] = None, timeout: Optional[float] = 1.0,
                 channel: Any = None, options: Sequence[Tuple[str, Any]] = ()) -> None:
        super().__init__(target, limit, admin_token, timeout)
        self._own = channel is None
        self.channel = channel if channel is not None else grpc.insecure_channel(target, options=list(options))
        self._stub = pb_grpc.RateLimiterStub(self.channel)

    def check_limit(self, key: str, cost: int = 1, limit: Optional[str] = None) -> LimitResult:
        with grpc_errors:
            r = self._stub.CheckLimit(self._check(key, _cost(cost), limit), timeout=self.timeout)
        return self._result(r)

    def check_limits(self, checks: Iterable[Check]) -> List[LimitResult]:
        with grpc_errors:
            r = self._stub.CheckLimits(self._checks(checks), timeout=self.timeout)
        return [self._result(x) for x in r.results]

    def get_usage(self, key: str, limit: Optional[str] = None) -> int:
        key, name = self._key(key, limit)
        with grpc_errors:
            return int(self._stub.GetUsage(pb.GetUsageRequest(key=key, limit=name), timeout=self.timeout).used)

    def reset(self, key: str, limit: Optional[str] = None) -> None:
        key, name = self._key(key, limit)
        with grpc_errors:
            self._stub.ResetLimit(pb.ResetLimitRequest(key=key, limit=name), timeout=self.timeout,
                                  metadata=self._admin)

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Client for asyncio (grpc.aio); the same methods as coroutines."""

    def __init__(self, target: str = "127.0.0.1:50051", *, limit: str = "default",
                 admin_token: Optional[str] = None, timeout: Optional[float] = 1.0,
                 channel: Any = None, options: Sequence[Tuple[str, Any]] = ()) -> None:
        super().__init__(target, limit, admin_token, timeout)
        self._own = channel is None
        self.channel = channel if channel is not None else grpc.aio.insecure_channel(target, options=list(options))
        self._stub = pb_grpc.RateLimiterStub(self.channel)

    async def check_limit(self, key: str, cost: int = 1, limit: Optional[str] = None) -> LimitResult:
        with grpc_errors:
            r = await self._stub.CheckLimit(self._check(key, _cost(cost), limit), timeout=self.timeout)
        return self._result(r)

    async def check_limits(self, checks: Iterable[Check]) -> List[LimitResult]:
        with grpc_errors:
            r = await self._stub.CheckLimits(self._checks(checks), timeout=self.timeout)
        return [self._result(x) for x in r.results]

    async def get_usage(self, key: str, limit: Optional[str] = None) -> int:
        key, name = self._key(key, limit)
        with grpc_errors:
            r = await self._stub.GetUsage(pb.GetUsageRequest(key=key, limit=name), timeout=self.timeout)
        return int(r.used)

    async def reset(self, key: str, limit: Optional[str] = None) -> None:
        key, name = self._key(key, limit)
        with grpc_errors:
            await self._stub.ResetLimit(pb.ResetLimitRequest(key=key, limit=name), timeout=self.timeout,
                                        metadata=self._admin)

    async def aclose(self) -> None:
        if self._own:
            await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
