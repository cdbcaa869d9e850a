"""What a rate limiter adds to each request of a web app, guardian beside
the usual peers, in one run: the same minimal Starlette app bare, behind
guardian.asgi and behind SlowAPI; the same minimal Flask app bare, with
guardian.flask and with Flask-Limiter. Every limit is far above the load,
so every request is allowed (the path every unrefused request takes), and
every limiter keys by client address, in memory.

    pip install -e '.[bench]'
    python bench/middleware_bench.py [--requests 1000] [--repeat 25]

Apps are called in process (the ASGI callable with a fixed scope, the
WSGI callable with a fixed environ): no server and no sockets, so the
difference to the bare app is the limiter alone. Time is the process's
CPU time (all its threads), not wall time: on a shared machine another
process's load then shows as noise, not as our cost. Variants are interleaved
run by run, many short runs, so machine noise hits them alike. The table
gives, per request, the fastest run (the least disturbed by other
processes on a shared machine: the cost itself) and the median run, each
with the microseconds added to the bare app of the same framework. Peers
missing from the environment are reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import statistics
import time
import warnings
from typing import Any, Callable, Dict, List, Tuple

from guardian import CORE, AsyncRateLimiter, MemoryBackend, RateLimiter, TokenBucketConfig

BIG = 10**9  # tokens and tokens per second: never denies

SCOPE: Dict[str, Any] = {
    "type": "http", "method": "GET", "path": "/items/42", "raw_path": b"/items/42", "query_string": b"",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench")], "client": ("10.1.2.3", 4567),
    "server": ("127.0.0.1", 8000), "scheme": "http", "http_version": "1.1", "root_path": "",
    "asgi": {"version": "3.0"},
}
ENVIRON: Dict[str, Any] = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/items/42", "SCRIPT_NAME": "", "QUERY_STRING": "",
    "SERVER_NAME": "bench", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.1.2.3",
    "HTTP_HOST": "bench", "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": False,
    "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.errors": io.StringIO(),
}


def memory_limiter() -> RateLimiter:
    return RateLimiter(MemoryBackend(TokenBucketConfig(BIG, BIG)))


# -- Starlette -----------------------------------------------------------------------

def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", item), Route("/items/{id}", item), Route("/health", item)])


def guardian_asgi(**options: Any) -> Callable[[], Any]:
    def make() -> Any:
        from guardian.asgi import RateLimitMiddleware
        app = starlette_app()
        app.add_middleware(RateLimitMiddleware, **options)
        return app
    return make


def guardian_asgi_routes() -> Any:
    from guardian.asgi import RateLimitMiddleware
    from guardian.http import Route, client_ip, route
    app = starlette_app()
    app.add_middleware(RateLimitMiddleware, limiter=memory_limiter(), key_func=route(client_ip()),
                       routes=[Route("/login", memory_limiter()), Route("/health", None)])
    return app


def slowapi_app(headers: bool, pure_asgi: bool = False) -> Callable[[], Any]:
    def make() -> Any:
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
        from slowapi.util import get_remote_address
        app = starlette_app()
        app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[f"{BIG}/second"],
                                    headers_enabled=headers)
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.add_middleware(SlowAPIASGIMiddleware if pure_asgi else SlowAPIMiddleware)
        return app
    return make


ASGI: Dict[str, Callable[[], Any]] = {
    "Starlette, bare": starlette_app,
    "guardian.asgi, RateLimiter, draft fields": guardian_asgi(limiter=memory_limiter()),
    "guardian.asgi, RateLimiter, no fields": guardian_asgi(limiter=memory_limiter(), headers="none"),
    "guardian.asgi, AsyncRateLimiter, draft fields": guardian_asgi(
        limiter=AsyncRateLimiter(MemoryBackend(TokenBucketConfig(BIG, BIG)))),
    "guardian.asgi, route(client_ip()) + routes (router walk)": guardian_asgi_routes,
    "SlowAPI middleware, no headers (its default)": slowapi_app(headers=False),
    "SlowAPI middleware, X-RateLimit headers": slowapi_app(headers=True),
    "SlowAPI pure-ASGI middleware, no headers": slowapi_app(headers=False, pure_asgi=True),
}


async def _receive() -> Dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def run_asgi(app: Any, n: int) -> Tuple[float, int]:
    statuses: List[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.process_time_ns()
    for _ in range(n):
        await app(dict(SCOPE), _receive, send)
    elapsed = (time.process_time_ns() - start) / n
    return elapsed, sum(s == 200 for s in statuses)


# -- Flask ---------------------------------------------------------------------------

def flask_app() -> Any:
    from flask import Flask
    app = Flask("bench")

    @app.get("/items/<id>")
    def item(id: str) -> str:
        return "ok"

    return app


def guardian_flask(**options: Any) -> Callable[[], Any]:
    def make() -> Any:
        from guardian.flask import RateLimit
        app = flask_app()
        RateLimit(app, limiter=memory_limiter(), **options)
        return app
    return make


def flask_limiter_app(headers: bool) -> Callable[[], Any]:
    def make() -> Any:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address
        app = flask_app()
        Limiter(get_remote_address, app=app, default_limits=[f"{BIG} per second"], storage_uri="memory://",
                headers_enabled=headers)
        return app
    return make


WSGI: Dict[str, Callable[[], Any]] = {
    "Flask, bare": flask_app,
    "guardian.flask, draft fields": guardian_flask(),
    "guardian.flask, no fields": guardian_flask(headers="none"),
    "Flask-Limiter, no headers (its default)": flask_limiter_app(headers=False),
    "Flask-Limiter, X-RateLimit headers": flask_limiter_app(headers=True),
}


def run_wsgi(app: Any, n: int) -> Tuple[float, int]:
    ok = [0]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if status.startswith("200"):
            ok[0] += 1
        return lambda data: None

    start = time.process_time_ns()
    for _ in range(n):
        body = app(dict(ENVIRON), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.process_time_ns() - start) / n, ok[0]


# -- the run -------------------------------------------------------------------------

def build(variants: Dict[str, Callable[[], Any]]) -> Dict[str, Any]:
    apps = {}
    for name, make in variants.items():
        try:
            apps[name] = make()
        except ImportError as exc:
            print(f"skipped {name}: {exc}")
    return apps


def table(title: str, results: Dict[str, List[float]], bare_name: str) -> None:
    best, mid = min(results[bare_name]), statistics.median(results[bare_name])
    print(f"\n{title}\n| variant | CPU µs per request (fastest run) | added µs | x bare "
          f"| CPU µs (median run) | added µs |\n|---|---:|---:|---:|---:|---:|")
    for name, samples in results.items():
        low, med = min(samples), statistics.median(samples)
        added = ("", "") if name == bare_name else (f"{(low - best) / 1000:+.1f}", f"{(med - mid) / 1000:+.1f}")
        print(f"| {name} | {low / 1000:.1f} | {added[0]} | {low / best:.2f} | {med / 1000:.1f} | {added[1]} |")


async def main(n: int, repeat: int) -> None:
    warnings.simplefilter("ignore")  # peers' deprecation notices are not the subject
    asgi_apps, wsgi_apps = build(ASGI), build(WSGI)
    asgi_res: Dict[str, List[float]] = {k: [] for k in asgi_apps}
    wsgi_res: Dict[str, List[float]] = {k: [] for k in wsgi_apps}
    for name, app in asgi_apps.items():  # warm up, and prove every request is allowed
        _, ok = await run_asgi(app, 200)
        assert ok == 200, (name, ok)
    for name, app in wsgi_apps.items():
        _, ok = run_wsgi(app, 200)
        assert ok == 200, (name, ok)
    for _ in range(repeat):  # interleaved, so drift hits every variant alike
        for name, app in asgi_apps.items():
            asgi_res[name].append((await run_asgi(app, n))[0])
        for name, app in wsgi_apps.items():
            wsgi_res[name].append(run_wsgi(app, n)[0])
    print(f"guardian {CORE} core, Python {platform.python_version()}, {platform.machine()}, "
          f"{n:,} requests x {repeat} runs per variant, interleaved, every request allowed")
    table("Starlette (ASGI, called in process)", asgi_res, "Starlette, bare")
    table("Flask (WSGI, called in process)", wsgi_res, "Flask, bare")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=1_000)
    p.add_argument("--repeat", type=int, default=25)
    a = p.parse_args()
    asyncio.run(main(a.requests, a.repeat))
