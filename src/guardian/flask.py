"""guardian for Flask: one extension for the limit at the edge (per client,
before routing, with Flask's own routing deciding which route a request
is) and the limits inside the app (per user, in a view decorator).

    guard = RateLimit(app, limiter, key_func=client_ip(), routes={"POST /login": login_limiter})

    @app.get("/me")
    @guard.limit(per_user_limiter, key=lambda: g.user, policy="per-user")
    def me(): ...

A denial is a 429 with Retry-After and the same RateLimit fields as the
middleware; allowed responses carry the fields too. The extension also
answers a ``RateLimitExceeded`` from a bare ``limiter.limit`` decorator with
a 429 instead of a 500.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, TypeVar

from flask import Flask, Response, after_this_request

from ._errors import RateLimitExceeded
from ._routers import flask_resolver
from .http import (
    DENIED_BODY, AppLimit, CostFunc, KeyFunc, Request, Resolver, RoutesArg, bounded_key, exceeded_fields,
)
from .wsgi import RateLimitMiddleware

__all__ = ["RateLimit", "limit", "route_resolver"]

F = TypeVar("F", bound=Callable[..., Any])


def route_resolver(app: Flask) -> Resolver:
    """Asks ``app``'s URL map which rule it will run (``/items/<int:id>``);
    None when it would answer 404, 405 or a redirect instead."""
    return flask_resolver(app)


def _denied(fields: Any) -> Response:
    return Response(DENIED_BODY, 429, headers=list(fields), mimetype="text/plain")


def limit(limiter: Any, key: Callable[[], Optional[str]], cost: int = 1, policy: str = "default",
          headers: str = "draft") -> Callable[[F], F]:
    """View decorator: takes ``cost`` tokens for ``key()`` (read ``flask.g``,
    ``flask.request``; None: not limited) before the view runs; a denial
    is a 429 with Retry-After and the RateLimit fields. ``limiter`` is a
    RateLimiter."""
    app_limit = AppLimit(limiter, cost, policy, headers)  # refuses what is not a limiter
    if inspect.iscoroutinefunction(limiter.check_limit):
        raise TypeError("guardian.flask.limit takes a RateLimiter (Flask checks limits synchronously), "
                        "not an AsyncRateLimiter")

    def check() -> Optional[Response]:
        name = key()
        if name is None:
            return None
        result = limiter.check_limit(bounded_key(str(name)), cost)
        fields = app_limit.fields(result)
        if not result.allowed:
            return _denied(fields)
        if fields:
            @after_this_request
            def add_fields(response: Response) -> Response:
                for field, value in fields:
                    response.headers[field] = value
                return response
        return None

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):  # Flask's async views (flask[async])
            @functools.wraps(view)
            async def limited_async(*args: Any, **kwargs: Any) -> Any:
                denied = check()
                return denied if denied is not None else await view(*args, **kwargs)
            return limited_async  # type: ignore[return-value]

        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            denied = check()
            return denied if denied is not None else view(*args, **kwargs)
        return limited  # type: ignore[return-value]
    return decorate


class RateLimit:
    """The Flask extension (``RateLimit(app, ...)`` or ``init_app``).

    With a ``limiter`` or ``routes``, every request passes guardian's WSGI
    middleware first (see guardian.wsgi / guardian.asgi for the options),
    with Flask's URL map as the route resolver: ``routes`` patterns and
    ``route()`` keys follow the rule Flask will run. ``limit(...)`` is the
    per-user view decorator. The app's handler for RateLimitExceeded
    answers 429."""

    def __init__(self, app: Optional[Flask] = None, limiter: Any = None, key_func: Optional[KeyFunc] = None,
                 cost_func: Optional[CostFunc] = None, *, routes: RoutesArg = None, policy: str = "default",
                 headers: str = "draft", headers_on_allowed: bool = True) -> None:
        self.options = dict(limiter=limiter, key_func=key_func, cost_func=cost_func, routes=routes,
                            policy=policy, headers=headers, headers_on_allowed=headers_on_allowed)
        self.headers = headers
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if self.options["limiter"] is not None or self.options["routes"]:
            app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
                app.wsgi_app, resolver=route_resolver(app), **self.options)
        app.register_error_handler(RateLimitExceeded, self._exceeded)
        app.extensions["guardian"] = self

    @staticmethod
    def _exceeded(exc: RateLimitExceeded) -> Response:
        return _denied(exceeded_fields(exc))

    def limit(self, limiter: Any, key: Callable[[], Optional[str]], cost: int = 1,
              policy: str = "default", headers: Optional[str] = None) -> Callable[[F], F]:
        """See guardian.flask.limit; ``headers`` defaults to the extension's."""
        return limit(limiter, key, cost, policy, headers or self.headers)
