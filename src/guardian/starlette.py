"""Limits inside a Starlette or FastAPI application, where the user is known.

Per IP at the edge, per user inside the app: guardian.asgi's middleware
limits every request by client address before routing; a ``RateLimit``
dependency limits by whatever the app knows once it has authenticated the
caller::

    per_user = RateLimit(limiter, policy="per-user")

    @app.get("/me")
    async def me(user: str = Depends(per_user.by(current_user))) -> dict:
        ...                                  # current_user runs once; its value is the key

    @app.get("/report", dependencies=[Depends(RateLimit(limiter, key=lambda r: r.headers.get("x-api-key")))])

A denial is a 429 (``TooManyRequests``, an ``HTTPException`` that Starlette
and FastAPI answer without any handler) carrying Retry-After and the same
RateLimit fields as the middleware; an allowed response carries the fields
too (FastAPI copies them from the dependency's ``response``).

``rate_limit_exceeded_handler`` turns a ``RateLimitExceeded`` raised by a bare
``limiter.limit`` decorator into the same 429:
``app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)``.

No ``from __future__ import annotations`` here: FastAPI reads these
signatures at run time.
"""

import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ._errors import RateLimitExceeded
from .asgi import starlette_template
from .http import DENIED_BODY, AppLimit, bounded_key, exceeded_fields

__all__ = ["RateLimit", "TooManyRequests", "rate_limit_exceeded_handler", "starlette_template"]


class TooManyRequests(HTTPException):
    """A 429 with Retry-After and the RateLimit fields; ``result`` is the denial."""

    def __init__(self, result: Any, fields: List[Tuple[str, str]]) -> None:
        super().__init__(429, DENIED_BODY.decode().strip(), headers=dict(fields))
        self.result = result


def _client(request: Request) -> Optional[str]:
    client = request.client
    return client.host if client else None


class RateLimit(AppLimit):
    """A FastAPI dependency (``Depends(RateLimit(...))``) or, in plain
    Starlette, ``await limit.check(request, key)``.

    ``key(request) -> str | None`` names the bucket (None: not limited;
    default: the client address). ``limiter`` is an AsyncRateLimiter, or
    a RateLimiter (run in the thread pool when its backend does I/O)."""

    def __init__(self, limiter: Any, key: Optional[Callable[[Request], Optional[str]]] = None,
                 cost: int = 1, policy: str = "default", headers: str = "draft") -> None:
        super().__init__(limiter, cost, policy, headers)
        self.key = key or _client
        check = limiter.check_limit
        if inspect.iscoroutinefunction(check):
            self._check: Callable[..., Any] = check
        elif limiter.can_fail:
            async def in_thread(key: str, cost: int) -> Any:
                return await run_in_threadpool(check, key, cost)
            self._check = in_thread
        else:
            async def direct(key: str, cost: int) -> Any:
                return check(key, cost)
            self._check = direct

    async def check(self, key: Optional[str], response: Optional[Response] = None) -> Optional[Any]:
        """Takes ``cost`` tokens for ``key`` (None: does nothing); raises
        TooManyRequests when denied, else adds the fields to ``response``."""
        if key is None:
            return None
        result = await self._check(bounded_key(str(key)), self.cost)
        fields = self.fields(result)
        if not result.allowed:
            raise TooManyRequests(result, fields)
        if response is not None:
            for name, value in fields:
                response.headers[name] = value
        return result

    async def __call__(self, request: Request, response: Response) -> None:
        await self.check(self.key(request), response)

    def by(self, dependency: Callable[..., Any],
           key: Optional[Callable[[Any], Optional[str]]] = None) -> Callable[..., Any]:
        """A FastAPI dependency that runs ``dependency`` (e.g. the current
        user), limits by ``key(its value)`` (default ``str``) and returns the
        value, so the endpoint gets the user and the limit in one parameter."""
        from fastapi import Depends

        def name(value: Any) -> Optional[str]:
            return None if value is None else (key(value) if key is not None else str(value))

        async def limited(request: Request, response: Response, value: Any = Depends(dependency)) -> Any:
            await self.check(name(value), response)
            return value

        return limited


async def rate_limit_exceeded_handler(request: Request, exc: Exception) -> Response:
    """Exception handler: a RateLimitExceeded (from ``limiter.limit``) as a 429."""
    fields: Dict[str, str] = dict(exceeded_fields(exc)) if isinstance(exc, RateLimitExceeded) else {}
    return PlainTextResponse(DENIED_BODY.decode(), status_code=429, headers=fields)
