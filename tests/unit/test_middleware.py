"""The ASGI and WSGI middleware, in process: httpx's ASGI transport over
Starlette/FastAPI, Flask's test client over WSGI, and the key functions."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List

import httpx
import pytest
from conftest import ManualClock
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route as StarletteRoute
from starlette.routing import WebSocketRoute

from guardian import AsyncRateLimiter, MemoryBackend, RateLimiter, TokenBucketConfig
from guardian import asgi, wsgi
from guardian.http import Request, Route, client_ip, header, response_headers, route


def limiter(core: Any, clock: ManualClock, capacity: int = 2, rate: float = 1) -> RateLimiter:
    return RateLimiter(MemoryBackend(TokenBucketConfig(capacity, rate), clock=clock))


def starlette_app() -> Starlette:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def ws(websocket: Any) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    return Starlette(routes=[StarletteRoute("/", hello), StarletteRoute("/items/{id}", hello),
                             StarletteRoute("/login", hello, methods=["POST"]),
                             StarletteRoute("/health", hello), WebSocketRoute("/ws", ws)])


async def get(app: Any, path: str = "/", method: str = "GET", **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=kw.pop("client", ("1.2.3.4", 5000)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await c.request(method, path, **kw)


async def test_asgi_denies_with_429_and_draft_fields(core: Any, clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock))
    first = await get(app)
    assert first.status_code == 200 and first.text == "hello"
    assert first.headers["ratelimit-policy"] == '"default";q=2;w=2'
    assert first.headers["ratelimit"] == '"default";r=1;t=1'
    assert (await get(app)).status_code == 200
    denied = await get(app)
    assert denied.status_code == 429
    assert denied.headers["retry-after"] == "1"
    assert denied.headers["ratelimit"] == '"default";r=0;t=1'
    assert "x-ratelimit-limit" not in denied.headers
    clock.advance(1)
    assert (await get(app)).status_code == 200


async def test_asgi_keys_by_peer_by_default(core: Any, clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock, capacity=1))
    assert (await get(app, client=("10.0.0.1", 1))).status_code == 200
    assert (await get(app, client=("10.0.0.1", 2))).status_code == 429
    assert (await get(app, client=("10.0.0.2", 1))).status_code == 200


async def test_asgi_legacy_headers_and_none_on_allowed(core: Any, clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock, capacity=1),
                                   headers="legacy", headers_on_allowed=False)
    ok = await get(app)
    assert "x-ratelimit-limit" not in ok.headers and "ratelimit" not in ok.headers
    denied = await get(app)
    assert denied.status_code == 429
    assert (denied.headers["x-ratelimit-limit"], denied.headers["x-ratelimit-remaining"],
            denied.headers["x-ratelimit-reset"]) == ("1", "0", "1")
    assert "ratelimit-policy" not in denied.headers


async def test_asgi_with_async_limiter_on_fastapi(core: Any, clock: ManualClock) -> None:
    api = FastAPI()

    @api.get("/q")
    async def q() -> dict:
        return {"ok": True}

    alimiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(3, 1), clock=clock))
    api.add_middleware(asgi.RateLimitMiddleware, limiter=alimiter, key_func=header("x-api-key"))
    codes = [(await get(api, "/q", headers={"x-api-key": "k1"})).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    # No key: the header key function returns None, so the request is not limited.
    assert [(await get(api, "/q")).status_code for _ in range(5)] == [200] * 5


async def test_asgi_per_route_limits_and_exemptions(core: Any, clock: ManualClock) -> None:
    login = limiter(core, clock, capacity=1)
    app = asgi.RateLimitMiddleware(
        starlette_app(), limiter=limiter(core, clock, capacity=3),
        routes=[Route("/login", login, methods=["POST"]), Route("/health", None)])
    assert [(await get(app, "/login", "POST")).status_code for _ in range(2)] == [200, 429]
    denied = await get(app, "/login", "POST")
    assert denied.headers["ratelimit-policy"] == '"/login";q=1;w=1'
    assert [(await get(app, "/health")).status_code for _ in range(5)] == [200] * 5
    assert [(await get(app)).status_code for _ in range(4)] == [200, 200, 200, 429]


async def test_asgi_route_key_uses_the_pattern(core: Any, clock: ManualClock) -> None:
    shared = limiter(core, clock, capacity=2)
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=shared, key_func=route(),
                                   routes={"/items/{id}": shared})
    codes = [(await get(app, f"/items/{i}")).status_code for i in range(3)]
    assert codes == [200, 200, 429]  # one bucket for the route, not one per item


async def drive(app: Any, scope: dict, incoming: List[dict]) -> List[dict]:
    """Runs one ASGI call with scripted receive() messages; returns what was sent."""
    sent: List[dict] = []
    queue = list(incoming)

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


def ws_scope() -> dict:
    return {"type": "websocket", "path": "/ws", "headers": [], "client": ("1.2.3.4", 1),
            "scheme": "ws", "query_string": b"", "root_path": "", "subprotocols": [],
            "asgi": {"version": "3.0"}}


async def test_asgi_passes_lifespan_and_websocket_through(core: Any, clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock, capacity=1))
    sent = await drive(app, {"type": "lifespan", "asgi": {"version": "3.0"}},
                       [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    for _ in range(3):
        sent = await drive(app, ws_scope(), [{"type": "websocket.connect"}])
        assert sent[0]["type"] == "websocket.accept"


async def test_asgi_websocket_limited_when_asked(core: Any, clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock, capacity=1), websocket=True)
    assert (await drive(app, ws_scope(), [{"type": "websocket.connect"}]))[0]["type"] == "websocket.accept"
    denied = await drive(app, ws_scope(), [{"type": "websocket.connect"}])
    assert denied == [{"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"}]


async def test_asgi_offloads_a_network_limiter_to_a_thread(core: Any, clock: ManualClock) -> None:
    threads: List[str] = []

    class SlowBackend:
        can_fail = True
        config = TokenBucketConfig(5, 1)

        def __init__(self) -> None:
            self.inner = MemoryBackend(self.config, clock=clock)

        def take(self, key: str, cost: int = 1) -> Any:
            threads.append(threading.current_thread().name)
            return self.inner.take(key, cost)

        def __getattr__(self, name: str) -> Any:  # the other operations: a whole backend
            return getattr(self.inner, name)

    app = asgi.RateLimitMiddleware(starlette_app(), limiter=RateLimiter(SlowBackend()))  # type: ignore[arg-type]
    assert (await get(app)).status_code == 200
    assert threads and threads[0] != threading.main_thread().name
    # The memory backend is called on the loop's thread: no hand-off.
    direct = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock))
    assert direct._caller(direct.plan.limiter).__name__ == "direct"


def test_wsgi_flask(core: Any, clock: ManualClock) -> None:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "hello"

    app.wsgi_app = wsgi.RateLimitMiddleware(app.wsgi_app, limiter=limiter(core, clock), headers="both")  # type: ignore[method-assign]
    client = app.test_client()
    first = client.get("/", environ_base={"REMOTE_ADDR": "1.2.3.4"})
    assert first.status_code == 200
    assert first.headers["RateLimit"] == '"default";r=1;t=1'
    assert first.headers["X-RateLimit-Remaining"] == "1"
    client.get("/", environ_base={"REMOTE_ADDR": "1.2.3.4"})
    denied = client.get("/", environ_base={"REMOTE_ADDR": "1.2.3.4"})
    assert denied.status_code == 429 and denied.headers["Retry-After"] == "1"
    assert client.get("/", environ_base={"REMOTE_ADDR": "5.6.7.8"}).status_code == 200


def _req(peer: str, **headers: str) -> Request:
    h = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return Request("GET", "/", peer, h.get, None)


def test_client_ip_ignores_forwarding_headers_without_trusted_proxies() -> None:
    key = client_ip()
    assert key(_req("203.0.113.9", x_forwarded_for="1.1.1.1")) == "203.0.113.9"


def test_client_ip_walks_x_forwarded_for_through_trusted_hops_only() -> None:
    key = client_ip(trusted_proxies=["10.0.0.0/8"])
    # A spoofed leftmost entry is never used: the nearest untrusted hop is.
    assert key(_req("10.0.0.2", x_forwarded_for="6.6.6.6, 198.51.100.7, 10.1.1.1")) == "198.51.100.7"
    assert key(_req("10.0.0.2", x_forwarded_for="10.3.3.3, 10.1.1.1")) == "10.3.3.3"
    assert key(_req("10.0.0.2")) == "10.0.0.2"
    assert key(_req("10.0.0.2", x_forwarded_for="garbage, 10.1.1.1")) == "10.1.1.1"
    # An untrusted peer's header is ignored.
    assert key(_req("198.51.100.1", x_forwarded_for="1.1.1.1")) == "198.51.100.1"


def test_client_ip_reads_forwarded() -> None:
    key = client_ip(trusted_proxies=["10.0.0.0/8", "2001:db8::/32"], forwarded_header="forwarded")
    value = 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711", for=198.51.100.7:1234;proto=https, for=10.0.0.9'
    assert key(_req("10.0.0.2", forwarded=value)) == "198.51.100.7"
    assert key(_req("2001:db8::1", forwarded='for="[2001:db9::5]", for="[2001:db8::2]"')) == "2001:db9::5"


def test_response_headers_escape_the_policy_name() -> None:
    class R:
        allowed, remaining, retry_after, reset_after, limit = True, 3, 0.0, 1.5, 5

    fields = dict(response_headers(R(), 'a"b', 10, "draft"))
    assert fields["RateLimit-Policy"] == '"a\\"b";q=5;w=10'
    assert fields["RateLimit"] == '"a\\"b";r=3;t=2'


def test_bad_header_style_is_refused(core: Any, clock: ManualClock) -> None:
    with pytest.raises(ValueError):
        asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock), headers="x")


async def test_asgi_does_not_block_concurrent_requests(core: Any, clock: ManualClock) -> None:
    alimiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(50, 1), clock=clock))
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=alimiter)
    codes = await asyncio.gather(*(get(app) for _ in range(60)))
    assert sorted(r.status_code for r in codes) == [200] * 50 + [429] * 10


class _Result:
    def __init__(self, allowed: bool, remaining: int, reset_after: float, retry_after: float, limit: int) -> None:
        self.allowed, self.remaining, self.reset_after = allowed, remaining, reset_after
        self.retry_after, self.limit = retry_after, limit


def test_fields_match_the_draft_11_examples() -> None:
    """The exact strings of draft-ietf-httpapi-ratelimit-headers-11 sections
    3.2 and 4.2: the policy name an sf-string ("default", not the token
    default), q and w on RateLimit-Policy, r and t on RateLimit, no qu or pk."""
    fields = response_headers(_Result(True, 50, 30, 0.0, 100), "default", 10, "draft")
    assert fields == [("RateLimit-Policy", '"default";q=100;w=10'), ("RateLimit", '"default";r=50;t=30')]
    denied = response_headers(_Result(False, 0, 19.2, 19.2, 100), "default", 60, "draft")
    assert denied == [("RateLimit-Policy", '"default";q=100;w=60'), ("RateLimit", '"default";r=0;t=20'),
                      ("Retry-After", "20")]


def test_fields_both_styles_exact() -> None:
    fields = response_headers(_Result(False, 0, 0.4, 0.4, 5), "login", 3, "both")
    assert fields == [("RateLimit-Policy", '"login";q=5;w=3'), ("RateLimit", '"login";r=0;t=1'),
                      ("X-RateLimit-Limit", "5"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "1"),
                      ("Retry-After", "1")]


def test_policy_names_must_be_sf_strings(core: Any, clock: ManualClock) -> None:
    """An sf-string holds printable ASCII only; refused when the middleware is built."""
    with pytest.raises(ValueError, match="printable ASCII"):
        asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock), policy="café")
    with pytest.raises(ValueError, match="printable ASCII"):
        wsgi.RateLimitMiddleware(Flask(__name__).wsgi_app, limiter=limiter(core, clock), policy="a\tb")
    other = limiter(core, clock)
    with pytest.raises(ValueError, match="printable ASCII"):  # a route's pattern names its policy
        asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock), routes={"/café": other})
    # the same pattern is fine when the route keeps the default policy or names its own
    asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock), routes={"/café": None})
    asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(core, clock),
                             routes=[Route("/café", other, policy="cafe")])
