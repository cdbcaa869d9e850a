"""Flask with the guardian.flask extension: edge limits with Flask's routing,
a per-user view decorator inside."""

from __future__ import annotations

from flask import Flask, request
from mw_common import PER_USER, edge_options, user_of

from guardian.flask import RateLimit

app = Flask(__name__)
guard = RateLimit(app, **edge_options())


def named(name: str) -> tuple:
    return name, 200, {"X-Handler": name}


@app.route("/")
def root() -> tuple:
    return named("root")


@app.route("/login", methods=["GET", "POST"])
def login() -> tuple:
    return named("login")


@app.route("/open", methods=["GET", "POST"])
def open_() -> tuple:
    return named("open")


@app.route("/items/<id>")
def items(id: str) -> tuple:
    return named("items")


@app.route("/health")
def health() -> tuple:
    return named("health")


@app.route("/api")
def api() -> tuple:
    return named("api")


@app.route("/me")
@guard.limit(PER_USER, key=lambda: user_of(request.headers), policy="per-user")
def me() -> tuple:
    return named("me")
