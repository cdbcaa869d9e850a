"""guardian.v1.RateLimiter: CheckLimit, CheckLimits, GetUsage, ResetLimit."""

from __future__ import annotations

import hmac
from time import perf_counter
from typing import Any, List, NoReturn, Tuple

import grpc

from .._errors import ArgumentTypeError, InvalidArgumentError
from .._args import check_cost, check_key
from ..v1 import guardian_pb2 as pb
from ..v1 import guardian_pb2_grpc as pb_grpc
from .buckets import Bucket
from .state import State

__all__ = ["RateLimiterService"]

_Response = pb.CheckLimitResponse
#: Checks in one CheckLimits call, at most: about 2 ms of a worker's loop, an
#: answer of at most ~40 KB (far inside any client's 4 MiB receive limit).
MAX_CHECKS = 1000


class RateLimiterService(pb_grpc.RateLimiterServicer):  # type: ignore[misc]
    def __init__(self, state: State) -> None:
        self.state = state
        self.stats = state.stats

    async def _bucket(self, name: str, context: Any) -> Tuple[str, Bucket]:
        name = name or "default"
        entry = self.state.limits.get(name)
        if entry is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no limit named {name!r} in the policy")
        return name, entry[1]

    async def CheckLimit(self, request: Any, context: Any) -> Any:
        t0 = perf_counter()
        name, bucket = await self._bucket(request.limit, context)
        try:
            if bucket.fast is not None:
                r = bucket.fast(request.key, request.cost or 1)  # counted by the core
            else:
                r = await bucket.take(request.key, request.cost or 1)
                self.stats.remote += 1
                self.stats.count(name, "allowed" if r.allowed else "denied")
        except (InvalidArgumentError, ArgumentTypeError) as exc:
            await _invalid(context, str(exc))
        response = _Response(allowed=r.allowed, remaining=r.remaining, retry_after=r.retry_after,
                             reset_after=r.reset_after, limit=r.limit)
        self.stats.observe("check_limit", perf_counter() - t0)
        return response

    async def CheckLimits(self, request: Any, context: Any) -> Any:
        t0 = perf_counter()
        if len(request.checks) > MAX_CHECKS:
            # refused before any token is taken; bounds the stall of other calls and the answer's size
            await _invalid(context, f"at most {MAX_CHECKS} checks per CheckLimits call, got {len(request.checks)}")
        plan: List[Tuple[str, Bucket, str, int]] = []
        limits = self.state.limits
        for i, check in enumerate(request.checks):
            name = check.limit or "default"
            entry = limits.get(name)
            if entry is None:
                await _abort(context, grpc.StatusCode.NOT_FOUND,
                             f"checks[{i}]: no limit named {name!r} in the policy")
            bucket = entry[1]
            try:  # every check is validated before any token is taken
                check_key(check.key)
                cost = check_cost(check.cost or 1, bucket.capacity)
            except (InvalidArgumentError, ArgumentTypeError) as exc:
                await _invalid(context, f"checks[{i}]: {exc}")
            plan.append((name, bucket, check.key, cost))
        response = pb.CheckLimitsResponse()
        add = response.results.add
        count = self.stats.count
        remote = 0
        for name, bucket, key, cost in plan:
            if bucket.fast is not None:
                r = bucket.fast(key, cost)  # counted by the core
            else:
                r = await bucket.take(key, cost)
                count(name, "allowed" if r.allowed else "denied")
                remote += 1
            add(allowed=r.allowed, remaining=r.remaining, retry_after=r.retry_after,
                reset_after=r.reset_after, limit=r.limit)
        self.stats.remote += remote
        self.stats.observe("check_limits", perf_counter() - t0)
        return response

    async def GetUsage(self, request: Any, context: Any) -> Any:
        t0 = perf_counter()
        _, bucket = await self._bucket(request.limit, context)
        try:
            used = await bucket.usage(request.key)
        except (InvalidArgumentError, ArgumentTypeError) as exc:
            await _invalid(context, str(exc))
        except Exception as exc:  # noqa: BLE001 - BackendError: no policy answer for a read
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"backend failed: {exc}")
        self.stats.observe("get_usage", perf_counter() - t0)
        return pb.GetUsageResponse(used=used, limit=bucket.capacity)

    async def ResetLimit(self, request: Any, context: Any) -> Any:
        t0 = perf_counter()
        await self._authorize(context)
        _, bucket = await self._bucket(request.limit, context)
        try:
            await bucket.reset(request.key)
        except (InvalidArgumentError, ArgumentTypeError) as exc:
            await _invalid(context, str(exc))
        except Exception as exc:  # noqa: BLE001 - BackendError
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"backend failed: {exc}")
        self.stats.observe("reset_limit", perf_counter() - t0)
        return pb.ResetLimitResponse()

    async def _authorize(self, context: Any) -> None:
        token = self.state.opts.admin_token
        if not token:
            return
        given = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value
        if not given:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "ResetLimit needs the admin token: 'authorization: Bearer <token>' metadata")
        scheme, _, secret = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(secret.strip().encode(), token.encode()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "wrong admin token")


async def _abort(context: Any, code: Any, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


async def _invalid(context: Any, message: str) -> NoReturn:
    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)
