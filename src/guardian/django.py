"""guardian for Django: the route resolver for the edge middleware and a
view decorator for limits inside the app.

At the edge (per client, before the view), wrap the ASGI or WSGI
application and let Django's URL resolver name the route::

    application = RateLimitMiddleware(get_asgi_application(), limiter=limiter,
                                      key_func=route(client_ip()), resolver=resolve_route)

Inside the app (per user, where ``request.user`` is known)::

    @limit(limiter, key=lambda request: f"user:{request.user.pk}", policy="per-user")
    def report(request): ...

A denial is a 429 with Retry-After and the same RateLimit fields as the
middleware; allowed responses carry the fields too. Sync and async views.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, TypeVar

from django.http import HttpRequest, HttpResponse

from ._routers import django_resolve_route
from .http import DENIED_BODY, AppLimit, Request, bounded_key

__all__ = ["limit", "resolve_route"]

F = TypeVar("F", bound=Callable[..., Any])


#: The URL pattern Django will run for a request, as ``/items/<int:id>``
#: (a ``re_path`` pattern is its regex); None when Django answers 404.
resolve_route = django_resolve_route


def _apply(response: HttpResponse, fields: Any) -> HttpResponse:
    for name, value in fields:
        response[name] = value
    return response


def _denied(fields: Any) -> HttpResponse:
    return _apply(HttpResponse(DENIED_BODY, status=429, content_type="text/plain; charset=utf-8"), fields)


def limit(limiter: Any, key: Callable[[HttpRequest], Optional[str]], cost: int = 1,
          policy: str = "default", headers: str = "draft") -> Callable[[F], F]:
    """View decorator: takes ``cost`` tokens for ``key(request)`` (None: not
    limited) before the view runs. Sync views need a RateLimiter; async
    views take an AsyncRateLimiter or a RateLimiter on the memory backend."""
    app_limit = AppLimit(limiter, cost, policy, headers)
    async_limiter = inspect.iscoroutinefunction(limiter.check_limit)

    def decorate(view: F) -> F:
        if async_limiter and not inspect.iscoroutinefunction(view):
            raise TypeError("an AsyncRateLimiter limits async views; give a sync view a RateLimiter")
        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def limited_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                name = key(request)
                if name is None:
                    return await view(request, *args, **kwargs)
                result = limiter.check_limit(bounded_key(str(name)), cost)
                if inspect.isawaitable(result):
                    result = await result
                fields = app_limit.fields(result)
                if not result.allowed:
                    return _denied(fields)
                return _apply(await view(request, *args, **kwargs), fields)
            return limited_async  # type: ignore[return-value]

        @functools.wraps(view)
        def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            name = key(request)
            if name is None:
                return view(request, *args, **kwargs)
            result = limiter.check_limit(bounded_key(str(name)), cost)
            fields = app_limit.fields(result)
            if not result.allowed:
                return _denied(fields)
            return _apply(view(request, *args, **kwargs), fields)
        return limited  # type: ignore[return-value]
    return decorate
