"""Rate limiting for WSGI applications (Flask, Django, any PEP 3333 app).

    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, key_func=client_ip())

The same options as guardian.asgi.RateLimitMiddleware, with a synchronous
``RateLimiter``. Under gunicorn with several workers, give the limiter a
shared MemoryBackend (``shared="name"``) or Redis so the workers enforce
one limit.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .http import CostFunc, KeyFunc, Plan, Request, Resolver, RoutesArg

__all__ = ["RateLimitMiddleware"]

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_BODY = b"Too Many Requests\n"


def _request(environ: Environ, resolver: Optional[Resolver] = None) -> Request:
    def lookup(name: str) -> Optional[str]:
        if name == "content-type":
            return environ.get("CONTENT_TYPE") or None
        if name == "content-length":
            return environ.get("CONTENT_LENGTH") or None
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        return value if value else None

    path = environ.get("PATH_INFO", "/") or "/"
    if isinstance(path, str):
        # PEP 3333 carries the raw bytes as latin-1; show the UTF-8 path.
        try:
            path = path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    return Request(environ.get("REQUEST_METHOD", "GET"), path, environ.get("REMOTE_ADDR") or None,
                   lookup, environ, None, resolver)


def _framework_resolver(app: Any) -> Optional[Resolver]:
    """The resolver for a framework recognised from ``app`` (Django's WSGI
    handler, a Flask app or its ``wsgi_app`` method), else None."""
    owner = getattr(app, "__self__", app)
    if type(owner).__module__.startswith("django.core.handlers"):
        from ._routers import django_resolve_route
        return django_resolve_route
    flask = sys.modules.get("flask")
    if flask is not None and isinstance(owner, flask.Flask):
        from ._routers import flask_resolver
        return flask_resolver(owner)
    return None


class RateLimitMiddleware:
    """WSGI middleware limiting requests with ``limiter`` (a RateLimiter);
    see guardian.asgi.RateLimitMiddleware for the options. ``resolver``
    asks the framework which route it will run; by default Flask's URL map
    when ``app`` is a Flask app or its ``wsgi_app``, Django's URL resolver
    when it is Django's WSGI handler."""

    def __init__(self, app: WSGIApp, limiter: Any = None, key_func: Optional[KeyFunc] = None,
                 cost_func: Optional[CostFunc] = None, *, routes: RoutesArg = None,
                 policy: str = "default", headers: str = "draft", headers_on_allowed: bool = True,
                 resolver: Optional[Resolver] = None) -> None:
        self.app = app
        self.plan = Plan(limiter, key_func, cost_func, routes, policy, headers, headers_on_allowed)
        for each in [limiter] + [r.limiter for r in self.plan.table.routes]:
            if each is not None and inspect.iscoroutinefunction(each.check_limit):
                raise TypeError("WSGI checks limits synchronously: give it a RateLimiter, not an AsyncRateLimiter")
        self.resolver = resolver or _framework_resolver(app)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        plan = self.plan
        decision = plan.resolve(_request(environ, self.resolver))
        if decision is None:
            return self.app(environ, start_response)
        limiter, key, cost, policy = decision
        result = limiter.check_limit(key, cost)
        if not result.allowed:
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(_BODY)))]
            start_response("429 Too Many Requests", headers + plan.fields(limiter, result, policy))
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [_BODY]
        if not plan.headers_on_allowed:
            return self.app(environ, start_response)
        extra = plan.fields(limiter, result, policy)

        def start_with_fields(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, list(headers) + extra, exc_info) if exc_info is not None \
                else start_response(status, list(headers) + extra)

        return self.app(environ, start_with_fields)
