"""Rate limiting for ASGI applications (Starlette, FastAPI, Django's ASGI,
Quart): a pure ASGI middleware, no framework imported.

    app = RateLimitMiddleware(app, limiter=AsyncRateLimiter(...), key_func=client_ip())

HTTP requests are checked before the application sees them; a denial is
answered with 429, ``Retry-After`` and the rate limit fields (see
guardian.http); an allowed response carries the fields too unless
``headers_on_allowed=False``. Lifespan and WebSocket scopes pass through
untouched (``websocket=True`` checks the WebSocket handshake too, denying
with close code 1008 before ``websocket.accept``).

Which limiters never block the event loop: an ``AsyncRateLimiter`` (awaited),
and a ``RateLimiter`` on an in-process backend (MemoryBackend, local or
shared: a check is a few hundred nanoseconds, cheaper than any hand-off),
called directly. A ``RateLimiter`` on a network backend (Redis, batched
Redis) may wait for the network, so its checks run in the loop's default
thread pool; prefer ``AsyncRateLimiter`` there. ``offload=`` overrides the
choice.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple

from .http import CostFunc, KeyFunc, Plan, Request, Resolver, RoutesArg

__all__ = ["RateLimitMiddleware", "find_router", "starlette_template"]

_UNSET: Any = object()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY = b"Too Many Requests\n"
_NAMES = {n: n.lower().encode() for n in ("RateLimit-Policy", "RateLimit", "X-RateLimit-Limit",
                                         "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")}


def _header_lookup(scope: Scope) -> Callable[[str], Optional[str]]:
    def lookup(name: str) -> Optional[str]:
        want = name.encode("latin-1")
        values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == want]
        return ", ".join(values) if values else None
    return lookup


def _walk(routes: Any, scope: Scope, prefix: str) -> Optional[str]:
    """The template of the route a Starlette router runs for ``scope``:
    the first full match, else the first partial one (a method mismatch,
    answered 405), descending into mounts. Each route's own ``matches``
    decides, so the answer is the router's, character for character."""
    partial: Optional[str] = None
    for r in routes:
        match, child = r.matches(scope)
        kind = getattr(match, "name", "NONE")
        if kind == "NONE":
            continue
        path = getattr(r, "path", None)
        if path is None:  # a Host route: no path template to name
            return None
        inner = getattr(r, "routes", None)
        if inner and not hasattr(r, "endpoint"):  # a Mount of routes
            # The router hands the request to the first full match: a route
            # the mount does not have is its 404, not a later route's.
            return _walk(inner, dict(scope, **child), prefix + path)
        if kind == "FULL":
            return f"{prefix}{path}"
        if partial is None:
            partial = f"{prefix}{path}"
    return partial


def find_router(app: Any) -> Any:
    """The Starlette router that ``app`` ends in: ``app.router``, or a Router
    reached through the ``.app`` of each wrapping middleware; None if none."""
    for _ in range(32):
        if app is None:
            return None
        router = getattr(app, "router", None)
        if router is not None and hasattr(router, "routes"):
            return router
        if hasattr(app, "routes") and hasattr(app, "redirect_slashes"):  # a Router itself
            return app
        app = getattr(app, "app", None)
    return None


def starlette_template(scope: Scope, app: Any = None) -> Optional[str]:
    """The route template Starlette/FastAPI will pick for ``scope``
    (``/items/{id}``), None when no router is found or no route matches.
    The router is ``app``'s (see find_router), else ``scope["app"]``'s."""
    router = find_router(app) or find_router(scope.get("app"))
    if router is None:
        return None
    return _walk(router.routes, scope, "")


def _framework_resolver(app: Any) -> Optional[Resolver]:
    """The resolver for a framework recognised by ``app``'s type, else None."""
    if type(app).__module__.startswith("django.core.handlers"):
        from ._routers import django_resolve_route
        return django_resolve_route
    return None


def _request(scope: Scope, resolver: Optional[Resolver]) -> Request:
    client = scope.get("client")
    return Request(
        scope.get("method", "GET"),
        scope.get("path", "/"),
        client[0] if client else None,
        _header_lookup(scope),
        scope,
        None,
        resolver,
    )


class RateLimitMiddleware:
    """ASGI middleware limiting requests with ``limiter``.

    ``key_func(request) -> str | None`` names the bucket (None: the request
    is not limited; default: the TCP peer, see guardian.http.client_ip);
    ``cost_func(request) -> int`` the tokens it takes (default 1);
    ``routes`` per-route limiters (a list of guardian.http.Route or a mapping
    ``{"POST /login": limiter, "/health": None}``; first match wins, the
    rest use ``limiter``, which may be None); ``policy`` the name in the
    RateLimit fields; ``headers`` "draft" (default), "legacy", "both" or
    "none".

    ``resolver(request) -> template | None`` asks the framework which route
    it will run, so that ``routes`` and ``route()`` keys follow the
    framework's own routing. By default: Django's URL resolver when ``app``
    is Django's ASGI handler, else the Starlette/FastAPI router that the
    wrapped app ends in (or ``scope["app"]``'s). None found: patterns match
    the path (see guardian.http.Route) and ``route()`` keys by path.
    """

    def __init__(self, app: ASGIApp, limiter: Any = None, key_func: Optional[KeyFunc] = None,
                 cost_func: Optional[CostFunc] = None, *, routes: RoutesArg = None,
                 policy: str = "default", headers: str = "draft", headers_on_allowed: bool = True,
                 websocket: bool = False, offload: Optional[bool] = None,
                 resolver: Optional[Resolver] = None) -> None:
        self.app = app
        self.plan = Plan(limiter, key_func, cost_func, routes, policy, headers, headers_on_allowed)
        self.resolver: Resolver = resolver or _framework_resolver(app) or self._starlette
        self._router: Any = _UNSET
        self.websocket = websocket
        self.offload = offload
        self._callers: Dict[int, Callable[[str, int], Awaitable[Any]]] = {}

    def _starlette(self, request: Request) -> Optional[str]:
        scope = request.raw
        if self._router is _UNSET:  # the wrapped stack is fixed once built: look once
            self._router = find_router(self.app)
        router = self._router or find_router(scope.get("app"))
        return None if router is None else _walk(router.routes, scope, "")

    def _caller(self, limiter: Any) -> Callable[[str, int], Awaitable[Any]]:
        """How to call ``limiter.check_limit`` from the event loop, decided once per limiter."""
        caller = self._callers.get(id(limiter))
        if caller is not None:
            return caller
        check = limiter.check_limit
        if inspect.iscoroutinefunction(check):
            caller = check
        else:
            offload = self.offload
            if offload is None:
                offload = limiter.can_fail

            async def in_thread(key: str, cost: int) -> Any:
                return await asyncio.get_running_loop().run_in_executor(None, check, key, cost)

            async def direct(key: str, cost: int) -> Any:
                return check(key, cost)

            caller = in_thread if offload else direct
        self._callers[id(limiter)] = caller
        return caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and not (kind == "websocket" and self.websocket):
            await self.app(scope, receive, send)
            return
        plan = self.plan
        request = _request(scope, self.resolver)
        if kind == "websocket":
            request.method = "WEBSOCKET"
        decision = plan.resolve(request)
        if decision is None:
            await self.app(scope, receive, send)
            return
        limiter, key, cost, policy = decision
        result = await self._caller(limiter)(key, cost)
        if not result.allowed:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"})
                return
            await self._deny(send, plan.fields(limiter, result, policy), scope.get("method") == "HEAD")
            return
        if not plan.headers_on_allowed:
            await self.app(scope, receive, send)
            return
        extra = [(_NAMES.get(k) or k.lower().encode("latin-1"), v.encode("latin-1"))
                 for k, v in plan.fields(limiter, result, policy)]

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", ())) + extra
            await send(message)

        await self.app(scope, receive, send_with_fields)

    @staticmethod
    async def _deny(send: Send, fields: List[Tuple[str, str]], head: bool = False) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", str(len(_BODY)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in fields]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else _BODY})
