"""Starlette behind guardian.asgi (edge) with guardian.starlette inside (per user)."""

from __future__ import annotations

from typing import Any

from mw_common import PER_USER, edge_options, user_of
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from guardian.asgi import RateLimitMiddleware
from guardian.starlette import RateLimit

per_user = RateLimit(PER_USER, key=lambda request: user_of(request.headers), policy="per-user")


def handler(name: str) -> Any:
    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse(name, headers={"X-Handler": name})
    return endpoint


async def me(request: Any) -> PlainTextResponse:
    response = PlainTextResponse("me", headers={"X-Handler": "me"})
    await per_user.check(user_of(request.headers), response)
    return response


app = Starlette(routes=[
    Route("/", handler("root")), Route("/login", handler("login"), methods=["GET", "POST"]),
    Route("/items/{id}", handler("items")), Route("/health", handler("health")),
    Route("/api", handler("api")), Route("/me", me),
    Route("/open", handler("open"), methods=["GET", "POST"]),
])
app.add_middleware(RateLimitMiddleware, **edge_options())
