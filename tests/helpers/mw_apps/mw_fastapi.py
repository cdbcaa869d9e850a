"""FastAPI behind guardian.asgi (edge) with a guardian.fastapi dependency (per user)."""

from __future__ import annotations

from typing import Optional

from fastapi import Depends, FastAPI, Header, Response
from mw_common import PER_USER, edge_options

from guardian.asgi import RateLimitMiddleware
from guardian.fastapi import RateLimit

app = FastAPI()
per_user = RateLimit(PER_USER, policy="per-user")


def current_user(x_user: Optional[str] = Header(default=None)) -> Optional[str]:
    return x_user


def named(response: Response, name: str) -> str:
    response.headers["X-Handler"] = name
    return name


@app.get("/")
def root(response: Response) -> str:
    return named(response, "root")


@app.api_route("/login", methods=["GET", "POST"])
def login(response: Response) -> str:
    return named(response, "login")


@app.api_route("/open", methods=["GET", "POST"])
def open_(response: Response) -> str:
    return named(response, "open")


@app.get("/items/{id}")
def items(id: str, response: Response) -> str:
    return named(response, "items")


@app.get("/health")
def health(response: Response) -> str:
    return named(response, "health")


@app.get("/api")
def api(response: Response) -> str:
    return named(response, "api")


@app.get("/me")
def me(response: Response, user: Optional[str] = Depends(per_user.by(current_user))) -> str:
    return named(response, "me")


app.add_middleware(RateLimitMiddleware, **edge_options())
