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


def limiter(clock: ManualClock, capacity: int = 2, rate: float = 1) -> RateLimiter:
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


async def test_asgi_denies_with_429_and_draft_fields(clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock))
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


async def test_asgi_keys_by_peer_by_default(clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=1))
    assert (await get(app, client=("10.0.0.1", 1))).status_code == 200
    assert (await get(app, client=("10.0.0.1", 2))).status_code == 429
    assert (await get(app, client=("10.0.0.2", 1))).status_code == 200


async def test_asgi_legacy_headers_and_none_on_allowed(clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=1),
                                   headers="legacy", headers_on_allowed=False)
    ok = await get(app)
    assert "x-ratelimit-limit" not in ok.headers and "ratelimit" not in ok.headers
    denied = await get(app)
    assert denied.status_code == 429
    assert (denied.headers["x-ratelimit-limit"], denied.headers["x-ratelimit-remaining"],
            denied.headers["x-ratelimit-reset"]) == ("1", "0", "1")
    assert "ratelimit-policy" not in denied.headers


async def test_asgi_with_async_limiter_on_fastapi(clock: ManualClock) -> None:
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


async def test_asgi_per_route_limits_and_exemptions(clock: ManualClock) -> None:
    login = limiter(clock, capacity=1)
    app = asgi.RateLimitMiddleware(
        starlette_app(), limiter=limiter(clock, capacity=3),
        routes=[Route("/login", login, methods=["POST"]), Route("/health", None)])
    assert [(await get(app, "/login", "POST")).status_code for _ in range(2)] == [200, 429]
    denied = await get(app, "/login", "POST")
    assert denied.headers["ratelimit-policy"] == '"/login";q=1;w=1'
    assert [(await get(app, "/health")).status_code for _ in range(5)] == [200] * 5
    assert [(await get(app)).status_code for _ in range(4)] == [200, 200, 200, 429]


async def test_asgi_route_key_uses_the_pattern(clock: ManualClock) -> None:
    shared = limiter(clock, capacity=2)
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


async def test_asgi_passes_lifespan_and_websocket_through(clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=1))
    sent = await drive(app, {"type": "lifespan", "asgi": {"version": "3.0"}},
                       [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    for _ in range(3):
        sent = await drive(app, ws_scope(), [{"type": "websocket.connect"}])
        assert sent[0]["type"] == "websocket.accept"


async def test_asgi_websocket_limited_when_asked(clock: ManualClock) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=1), websocket=True)
    assert (await drive(app, ws_scope(), [{"type": "websocket.connect"}]))[0]["type"] == "websocket.accept"
    denied = await drive(app, ws_scope(), [{"type": "websocket.connect"}])
    assert denied == [{"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"}]


async def test_asgi_offloads_a_network_limiter_to_a_thread(clock: ManualClock) -> None:
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
    direct = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock))
    assert direct._caller(direct.plan.limiter).__name__ == "direct"


def test_wsgi_flask(clock: ManualClock) -> None:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "hello"

    app.wsgi_app = wsgi.RateLimitMiddleware(app.wsgi_app, limiter=limiter(clock), headers="both")  # type: ignore[method-assign]
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
    assert key(_req("2001:db8::1", forwarded='for="[2001:db9::5]", for="[2001:db8::2]"')) == "2001:db9::/64"


def test_response_headers_escape_the_policy_name() -> None:
    class R:
        allowed, remaining, retry_after, reset_after, limit = True, 3, 0.0, 1.5, 5

    fields = dict(response_headers(R(), 'a"b', 10, "draft"))
    assert fields["RateLimit-Policy"] == '"a\\"b";q=5;w=10'
    assert fields["RateLimit"] == '"a\\"b";r=3;t=2'


def test_bad_header_style_is_refused(clock: ManualClock) -> None:
    with pytest.raises(ValueError):
        asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock), headers="x")


async def test_asgi_does_not_block_concurrent_requests(clock: ManualClock) -> None:
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


def test_policy_names_must_be_sf_strings(clock: ManualClock) -> None:
    """An sf-string holds printable ASCII only; refused when the middleware is built."""
    with pytest.raises(ValueError, match="printable ASCII"):
        asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock), policy="café")
    with pytest.raises(ValueError, match="printable ASCII"):
        wsgi.RateLimitMiddleware(Flask(__name__).wsgi_app, limiter=limiter(clock), policy="a\tb")
    other = limiter(clock)
    with pytest.raises(ValueError, match="printable ASCII"):  # a route's pattern names its policy
        asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock), routes={"/café": other})
    # the same pattern is fine when the route keeps the default policy or names its own
    asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock), routes={"/café": None})
    asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock),
                             routes=[Route("/café", other, policy="cafe")])


# -- issue 12: keys an attacker cannot multiply or turn into errors ------------------

class Recording:
    """A real limiter that also records every key it was asked about."""

    def __init__(self, inner: RateLimiter) -> None:
        self.inner, self.keys = inner, []
        self.config, self.can_fail = inner.config, inner.can_fail

    def check_limit(self, key: str, cost: int = 1) -> Any:
        self.keys.append(key)
        return self.inner.check_limit(key, cost)


async def test_ipv6_clients_of_one_64_share_one_bucket(clock: ManualClock) -> None:
    """1,000 addresses of one /64 against capacity 5: 5 allowed, one key."""
    rec = Recording(limiter(clock, capacity=5))
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=rec)
    codes = [(await get(app, client=(f"2001:db8:1:2:{i:x}:{i * 7:x}::{i * 13 + 1:x}", 1))).status_code
             for i in range(1000)]
    assert codes.count(200) == 5 and codes.count(429) == 995
    assert set(rec.keys) == {"2001:db8:1:2::/64"}
    assert rec.inner.get_usage("2001:db8:1:2::/64") == 5  # the one bucket holds all five tokens
    # The next /64 is another subscriber.
    assert (await get(app, client=("2001:db8:1:3::1", 1))).status_code == 200


def test_ipv6_prefix_is_configurable() -> None:
    assert client_ip(ipv6_prefix=56)(_req("2001:db8:1:2ff::1")) == "2001:db8:1:200::/56"
    assert client_ip(ipv6_prefix=128)(_req("2001:db8::1")) == "2001:db8::1"
    assert client_ip()(_req("fe80::1%eth0")) == "fe80::/64"  # a zone id is not a new client
    with pytest.raises(ValueError):
        client_ip(ipv6_prefix=129)


def test_ipv4_mapped_ipv6_is_the_ipv4_client() -> None:
    key = client_ip()
    assert key(_req("::ffff:10.0.0.1")) == key(_req("10.0.0.1")) == "10.0.0.1"
    # trusted_proxies match a mapped peer, and a mapped network matches a plain IPv4 peer.
    for proxies, peer in ((["10.0.0.0/8"], "::ffff:10.0.0.2"), (["::ffff:10.0.0.0/104"], "10.0.0.2")):
        walk = client_ip(trusted_proxies=proxies)
        assert walk(_req(peer, x_forwarded_for="198.51.100.7, ::ffff:10.1.1.1")) == "198.51.100.7"
    # A forwarded mapped address is the IPv4 client too.
    assert client_ip(trusted_proxies=["10.0.0.0/8"])(_req("10.0.0.2", x_forwarded_for="::ffff:1.2.3.4")) == "1.2.3.4"


async def test_no_peer_is_one_shared_bucket_and_one_warning(clock: ManualClock,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording(limiter(clock, capacity=2))
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=rec)
    transport = httpx.ASGITransport(app=app, client=None)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        codes = [(await c.get("/", headers={"x-forwarded-for": f"1.1.1.{i}"})).status_code for i in range(10)]
    assert codes == [200, 200] + [429] * 8
    assert set(rec.keys) == {"unix:"}
    assert sum("no peer address" in r.message for r in caplog.records) == 1
    # Trusted: the forwarded client is the key; without the header, the shared bucket.
    trusting = client_ip(trusted_proxies=["unix"])
    assert trusting(_req(None, x_forwarded_for="6.6.6.6, 203.0.113.5")) == "203.0.113.5"  # type: ignore[arg-type]
    assert trusting(_req(None)) == "unix:"  # type: ignore[arg-type]


def test_client_keys_are_bounded_and_never_an_error() -> None:
    from guardian.http import MAX_CLIENT_KEY_BYTES, bounded_key
    assert bounded_key("user:42") == "user:42"
    long = bounded_key("k" * 10_000)
    assert long.startswith("~h:") and len(long) == 35 and long == bounded_key("k" * 10_000)
    assert bounded_key("k" * 9_999 + "j") != long
    assert bounded_key("é" * 100) == "é" * 100  # 200 bytes: kept
    assert bounded_key("é" * 200).startswith("~h:")  # 400 bytes: digested
    assert bounded_key("").startswith("~h:") and bounded_key("\ud800").startswith("~h:")
    assert bounded_key(long) != long  # a plain key cannot pose as a digest
    assert len(bounded_key("x" * MAX_CLIENT_KEY_BYTES)) == MAX_CLIENT_KEY_BYTES


async def test_long_key_header_and_long_path_are_limited_not_500(clock: ManualClock,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=2), key_func=header("x-api-key"))
    big = {"x-api-key": "k" * 10_000}
    assert [(await get(app, headers=big)).status_code for _ in range(3)] == [200, 200, 429]
    by_path = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=2), key_func=route())
    assert [(await get(by_path, "/x" * 5000)).status_code for _ in range(3)] == [404, 404, 429]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


# -- issue 12: routes as the framework routes them ------------------------------------

async def test_limited_route_matches_every_spelling_exemption_stays_exact(clock: ManualClock) -> None:
    login = limiter(clock, capacity=1)
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=limiter(clock, capacity=100),
                                   routes=[Route("/login", login, methods=["POST"]), Route("/health", None)])
    assert (await get(app, "/login", "POST")).status_code == 200
    # (//login is a network-path reference to httpx; the server matrix sends it raw)
    for spelling in ("/login%0A", "/login%0D", "/./login", "/LOGIN", "/login/", "/login;x", "/%6Cogin"):
        denied = await get(app, spelling, "POST")
        assert denied.status_code == 429 and denied.headers["ratelimit-policy"].startswith('"/login"'), spelling
    # The exemption covers /health exactly; another spelling is under the default limit.
    assert (await get(app, "/HEALTH")).headers["ratelimit-policy"].startswith('"default"')
    assert "ratelimit-policy" not in (await get(app, "/health")).headers


async def test_route_key_is_the_starlette_template_inside_mounts(clock: ManualClock) -> None:
    from starlette.routing import Mount

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    inner = Starlette(routes=[StarletteRoute("/items/{id}", hello), StarletteRoute("/only-get", hello)])
    outer = Starlette(routes=[Mount("/api", app=inner), StarletteRoute("/items/{id}", hello)])
    rec = Recording(limiter(clock, capacity=3))
    app = asgi.RateLimitMiddleware(outer, limiter=rec, key_func=route())
    assert [(await get(app, f"/api/items/{i}")).status_code for i in range(4)] == [200, 200, 200, 429]
    assert [(await get(app, f"/items/{i}")).status_code for i in range(4)] == [200, 200, 200, 429]
    await get(app, "/api/only-get", "POST")  # 405: the partial match's template
    await get(app, "/api/nowhere")  # 404 inside the mount: no template, the path
    assert set(rec.keys) == {"GET /api/items/{id}", "GET /items/{id}", "POST /api/only-get", "GET /api/nowhere"}
    # HEAD shares GET's bucket (the framework runs GET's handler for it).
    assert (await get(app, "/items/9", "HEAD")).status_code == 429


async def test_fastapi_added_middleware_keys_by_template(clock: ManualClock) -> None:
    api = FastAPI()

    @api.get("/users/{uid}/posts/{pid}")
    async def post(uid: int, pid: int) -> dict:
        return {"uid": uid}

    rec = Recording(limiter(clock, capacity=2))
    api.add_middleware(asgi.RateLimitMiddleware, limiter=rec, key_func=route(client_ip()))
    codes = [(await get(api, f"/users/{i}/posts/{i * 3}")).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]
    assert set(rec.keys) == {"GET /users/{uid}/posts/{pid}|1.2.3.4"}


async def test_router_found_through_wrapping_middleware(clock: ManualClock) -> None:
    """Wrapped from outside (scope["app"] not set yet), with another middleware
    in between: the router is found along the ``.app`` chain."""
    from starlette.middleware.cors import CORSMiddleware
    api = FastAPI()

    @api.get("/items/{id}")
    async def item(id: int) -> dict:
        return {}

    rec = Recording(limiter(clock, capacity=2))
    app = asgi.RateLimitMiddleware(CORSMiddleware(api, allow_origins=["*"]), limiter=rec, key_func=route())
    assert [(await get(app, f"/items/{i}")).status_code for i in range(3)] == [200, 200, 429]
    assert set(rec.keys) == {"GET /items/{id}"}


def test_flask_wsgi_app_is_recognised(clock: ManualClock) -> None:
    app = Flask(__name__)

    @app.get("/items/<int:id>")
    def item(id: int) -> str:
        return "item"

    rec = Recording(limiter(clock, capacity=2))
    app.wsgi_app = wsgi.RateLimitMiddleware(app.wsgi_app, limiter=rec, key_func=route())  # type: ignore[method-assign]
    client = app.test_client()
    assert [client.get(f"/items/{i}").status_code for i in range(3)] == [200, 200, 429]
    assert set(rec.keys) == {"GET /items/<int:id>"}


async def test_a_failing_resolver_falls_back_to_the_path(clock: ManualClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request) -> Any:
        raise RuntimeError("router exploded")

    rec = Recording(limiter(clock, capacity=5))
    app = asgi.RateLimitMiddleware(starlette_app(), limiter=rec, key_func=route(), resolver=broken)
    assert (await get(app, "/items/1")).status_code == 200
    assert (await get(app, "/items/2")).status_code == 200
    assert rec.keys == ["GET /items/1", "GET /items/2"]
    assert len([r for r in caplog.records if "resolver" in r.getMessage()]) == 1  # once, not per request
    assert "router exploded" in caplog.text


def test_flask_resolver_keys_by_rule(clock: ManualClock) -> None:
    from guardian.flask import RateLimit as FlaskRateLimit
    app = Flask(__name__)

    @app.get("/items/<int:id>")
    def item(id: int) -> str:
        return "item"

    rec = Recording(limiter(clock, capacity=2))
    FlaskRateLimit(app, limiter=rec, key_func=route(client_ip()))
    client = app.test_client()
    codes = [client.get(f"/items/{i}", environ_base={"REMOTE_ADDR": "1.2.3.4"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    assert set(rec.keys) == {"GET /items/<int:id>|1.2.3.4"}


# -- issue 12: 429 from inside the application ---------------------------------------

async def test_fastapi_dependency_per_user(clock: ManualClock) -> None:
    from fastapi import Depends, Header

    from guardian.fastapi import RateLimit as Dep

    api = FastAPI()
    per_user = Dep(AsyncRateLimiter(MemoryBackend(TokenBucketConfig(2, 1), clock=clock)), policy="per-user")
    by_key = Dep(limiter(clock, capacity=1), key=lambda request: request.headers.get("x-api-key"))

    def current_user(x_user: str = Header()) -> str:
        return x_user

    @api.get("/me")
    async def me(user: str = Depends(per_user.by(current_user, key=lambda u: f"user:{u}"))) -> dict:
        return {"user": user}

    @api.get("/report", dependencies=[Depends(by_key)])
    async def report() -> dict:
        return {}

    replies = [await get(api, "/me", headers={"x-user": u}) for u in ("a", "a", "a", "b")]
    assert [r.status_code for r in replies] == [200, 200, 429, 200]
    assert replies[0].json() == {"user": "a"}
    assert replies[0].headers["ratelimit"] == '"per-user";r=1;t=1'
    assert replies[2].headers["retry-after"] == "1"
    assert replies[2].headers["ratelimit-policy"] == '"per-user";q=2;w=2'
    assert [(await get(api, "/report", headers={"x-api-key": "k"})).status_code for _ in range(2)] == [200, 429]
    assert (await get(api, "/report")).status_code == 200  # no key: not limited by this dependency


async def test_bare_decorator_answers_429_with_the_handler(clock: ManualClock) -> None:
    from guardian import RateLimitExceeded
    from guardian.fastapi import rate_limit_exceeded_handler

    lim = limiter(clock, capacity=1)
    api = FastAPI()
    api.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)

    @api.get("/x")
    @lim.limit(key="x")
    async def x() -> dict:
        return {}

    assert (await get(api, "/x")).status_code == 200
    denied = await get(api, "/x")
    assert denied.status_code == 429 and denied.headers["retry-after"] == "1"
    assert denied.headers["ratelimit"] == '"default";r=0;t=1'


def test_flask_decorator_and_bare_limit(clock: ManualClock) -> None:
    from flask import request as flask_request

    from guardian.flask import RateLimit as FlaskRateLimit

    app = Flask(__name__)
    guard = FlaskRateLimit(app)
    per_user = limiter(clock, capacity=2)
    bare = limiter(clock, capacity=1)

    @app.get("/me")
    @guard.limit(per_user, key=lambda: flask_request.headers.get("x-user"), policy="per-user")
    def me() -> str:
        return "me"

    @app.get("/bare")
    @bare.limit(key="k")
    def bare_view() -> str:
        return "bare"

    client = app.test_client()
    replies = [client.get("/me", headers={"x-user": u}) for u in ("a", "a", "a", "b")]
    assert [r.status_code for r in replies] == [200, 200, 429, 200]
    assert replies[0].headers["RateLimit"] == '"per-user";r=1;t=1'
    assert replies[2].headers["Retry-After"] == "1" and replies[2].headers["RateLimit-Policy"] == '"per-user";q=2;w=2'
    assert client.get("/me").status_code == 200  # no user: not limited here
    assert [client.get("/bare").status_code for _ in range(2)] == [200, 429]
    assert client.get("/bare").headers["Retry-After"] == "1"


# -- docs/middleware.md: every snippet runs ------------------------------------------

def _doc_snippets() -> List[str]:
    import re
    from pathlib import Path
    doc = Path(__file__).resolve().parents[2] / "docs" / "middleware.md"
    if not doc.exists():  # the wheel's own test run copies tests/ without docs/
        return []
    return re.findall(r"```python\n(.+?)\n```", doc.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(_doc_snippets())))
def test_docs_middleware_snippet_runs(index: int, tmp_path: Any) -> None:
    """Each snippet in its own interpreter (Django configures settings once per process)."""
    import subprocess
    import sys
    script = tmp_path / "snippet.py"
    script.write_text(_doc_snippets()[index])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PATH_CHARS = st.sampled_from(list("/;.aAzZ%é\n\r\t 0-_~") + ["\x00", "\x7f", "É"])


@settings(max_examples=500, deadline=None)
@given(st.lists(PATH_CHARS, max_size=16).map("".join))
def test_normalize_path_fast_path_agrees_and_is_idempotent(path: str) -> None:
    from guardian.http import _rewrite, normalize_path
    once = normalize_path(path)
    assert once == _rewrite(path)  # the no-rewrite fast path changes nothing
    assert normalize_path(once) == once
    assert once.startswith("/") and "//" not in once and not any(c in once for c in "\n\r\t \x00\x7f;")


def test_async_limiter_where_checks_are_sync_fails_at_construction(clock: ManualClock) -> None:
    """Misuse fails loudly when the app is built, not as a 500 per request."""
    from guardian.flask import limit as flask_limit
    alimiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(2, 1), clock=clock))
    with pytest.raises(TypeError, match="RateLimiter"):
        wsgi.RateLimitMiddleware(Flask(__name__).wsgi_app, limiter=alimiter)
    with pytest.raises(TypeError, match="RateLimiter"):
        wsgi.RateLimitMiddleware(Flask(__name__).wsgi_app, routes={"/x": alimiter})
    with pytest.raises(TypeError, match="AsyncRateLimiter"):
        flask_limit(alimiter, key=lambda: "k")


def test_app_limit_styles_and_flask_init_app(clock: ManualClock) -> None:
    from flask import request as flask_request

    from guardian.flask import RateLimit as FlaskRateLimit
    from guardian.http import AppLimit

    lim = limiter(clock, capacity=1)
    assert AppLimit(lim, headers="none").fields(lim.check_limit("a")) == []
    denied = lim.check_limit("a")
    assert AppLimit(lim, headers="none").fields(denied) == [("Retry-After", "1")]
    assert dict(AppLimit(lim, headers="legacy").fields(denied))["X-RateLimit-Remaining"] == "0"
    with pytest.raises(ValueError):
        AppLimit(lim, headers="x")
    with pytest.raises(ValueError, match="printable ASCII"):
        AppLimit(lim, policy="per-üser")

    guard = FlaskRateLimit(headers="legacy")  # the app-factory pattern
    app = Flask(__name__)
    guard.init_app(app)
    assert app.extensions["guardian"] is guard

    @app.get("/k")
    @guard.limit(limiter(clock, capacity=1), key=lambda: flask_request.args.get("k"))
    def k() -> str:
        return "k"

    client = app.test_client()
    assert client.get("/k?k=1").headers["X-RateLimit-Remaining"] == "0"
    denied_reply = client.get("/k?k=1")
    assert denied_reply.status_code == 429 and "RateLimit" not in denied_reply.headers
    assert denied_reply.headers["Retry-After"] == "1"
