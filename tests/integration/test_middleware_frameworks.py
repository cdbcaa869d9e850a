"""The middleware under the other frameworks issue 6 names: Django (ASGI and
WSGI) and Quart, each a minimal app driven in process (httpx's
ASGITransport, werkzeug's WSGI Client). Starlette, FastAPI and Flask are in
tests/unit/test_middleware.py and tests/integration/test_middleware_servers.py.

Django is configured once per process (settings.configure); the URLconf is
this module, so ``urlpatterns`` below is the one route."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import httpx
import pytest
from conftest import ManualClock

from guardian import AsyncRateLimiter, MemoryBackend, RateLimiter, TokenBucketConfig
from guardian import asgi, wsgi
from guardian.http import header

django = pytest.importorskip("django")
quart = pytest.importorskip("quart")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="guardian-test",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def _hello(request: HttpRequest, **params: Any) -> HttpResponse:
    return HttpResponse("hello", content_type="text/plain")


from guardian.django import limit as django_limit, resolve_route  # noqa: E402

#: 2 per second per X-User, checked inside the views below (sync and async).
PER_USER = RateLimiter(MemoryBackend(TokenBucketConfig(2, 1, refill_interval=3600)))


def _user(request: HttpRequest) -> Any:
    return request.headers.get("x-user")


@django_limit(PER_USER, key=_user, policy="per-user")
def _me(request: HttpRequest) -> HttpResponse:
    return HttpResponse("me", content_type="text/plain")


@django_limit(PER_USER, key=lambda r: "async:" + (_user(r) or ""), policy="per-user")
async def _me_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("me", content_type="text/plain")


urlpatterns = [path("hello", _hello), path("items/<int:id>", _hello), path("me", _me),
               path("me-async", _me_async)]

POLICY = '"default";q=2;w=2'


def bucket(clock: ManualClock) -> MemoryBackend:
    return MemoryBackend(TokenBucketConfig(2, 1), clock=clock)


def django_asgi(limiter: Any, **kw: Any) -> Any:
    from django.core.asgi import get_asgi_application
    return asgi.RateLimitMiddleware(get_asgi_application(), limiter=limiter, **kw)


def django_wsgi(limiter: Any, **kw: Any) -> Any:
    from django.core.wsgi import get_wsgi_application
    return wsgi.RateLimitMiddleware(get_wsgi_application(), limiter=limiter, **kw)


def quart_app(limiter: Any, **kw: Any) -> Any:
    app = quart.Quart(__name__)

    @app.route("/hello")
    async def hello() -> str:
        return "hello"

    app.asgi_app = asgi.RateLimitMiddleware(app.asgi_app, limiter=limiter, **kw)  # type: ignore[method-assign]
    return app


async def asgi_get(app: Any, peer: str = "1.2.3.4", **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await c.get("/hello", **kw)


def wsgi_get(app: Any, peer: str = "1.2.3.4", headers: Dict[str, str] | None = None) -> Tuple[int, Dict[str, str], bytes]:
    from werkzeug.test import Client
    resp = Client(app).get("/hello", environ_base={"REMOTE_ADDR": peer}, headers=headers or {})
    return resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.get_data()


def check_sequence(responses: List[Tuple[int, Dict[str, str], bytes]]) -> None:
    """Two allowed (capacity 2), then a denial; all carry the draft fields."""
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = responses
    assert (s1, b1) == (200, b"hello") and (s2, b2) == (200, b"hello")
    assert h1["ratelimit-policy"] == POLICY and h1["ratelimit"] == '"default";r=1;t=1'
    assert h2["ratelimit-policy"] == POLICY and h2["ratelimit"] == '"default";r=0;t=2'
    assert "retry-after" not in h1 and "retry-after" not in h2
    assert s3 == 429 and b3 == b"Too Many Requests\n"
    assert h3["retry-after"] == "1"
    assert h3["ratelimit-policy"] == POLICY and h3["ratelimit"] == '"default";r=0;t=1'
    # exactly one of each field: a framework must not duplicate or drop them
    for h in (h1, h2, h3):
        assert "pk" not in h["ratelimit"] and "pk" not in h["ratelimit-policy"]


def _flat(r: httpx.Response) -> Tuple[int, Dict[str, str], bytes]:
    for name in ("ratelimit", "ratelimit-policy"):
        assert len(r.headers.get_list(name)) == 1, (name, r.headers.get_list(name))
    return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content


# -- Django ASGI and Quart ------------------------------------------------------------

ASGI_APPS = {"django": django_asgi, "quart": quart_app}


@pytest.mark.parametrize("framework", sorted(ASGI_APPS))
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_asgi_allows_then_denies(clock: ManualClock, framework: str, kind: str) -> None:
    backend = bucket(clock)
    app = ASGI_APPS[framework](RateLimiter(backend) if kind == "sync" else AsyncRateLimiter(backend))
    check_sequence([_flat(await asgi_get(app)) for _ in range(3)])


@pytest.mark.parametrize("framework", sorted(ASGI_APPS))
async def test_asgi_separate_buckets_per_client(clock: ManualClock, framework: str) -> None:
    app = ASGI_APPS[framework](RateLimiter(bucket(clock)))
    for _ in range(2):
        assert (await asgi_get(app, peer="10.0.0.1")).status_code == 200
    assert (await asgi_get(app, peer="10.0.0.1")).status_code == 429
    other = await asgi_get(app, peer="10.0.0.2")
    assert other.status_code == 200 and other.headers["ratelimit"] == '"default";r=1;t=1'


async def test_django_asgi_header_key(clock: ManualClock) -> None:
    app = django_asgi(RateLimiter(bucket(clock)), key_func=header("X-Api-Key"))
    for _ in range(2):
        assert (await asgi_get(app, headers={"X-Api-Key": "a"})).status_code == 200
    assert (await asgi_get(app, headers={"X-Api-Key": "a"})).status_code == 429
    assert (await asgi_get(app, headers={"X-Api-Key": "b"})).status_code == 200
    # no key: not limited by this key function, and no fields
    r = await asgi_get(app)
    assert r.status_code == 200 and "ratelimit" not in r.headers


# -- Django WSGI ------------------------------------------------------------

def test_django_wsgi_allows_then_denies(clock: ManualClock) -> None:
    app = django_wsgi(RateLimiter(bucket(clock)))
    check_sequence([wsgi_get(app) for _ in range(3)])


def test_django_wsgi_separate_buckets_per_client(clock: ManualClock) -> None:
    app = django_wsgi(RateLimiter(bucket(clock)))
    assert [wsgi_get(app, peer="10.0.0.1")[0] for _ in range(3)] == [200, 200, 429]
    status, headers, _ = wsgi_get(app, peer="10.0.0.2")
    assert status == 200 and headers["ratelimit"] == '"default";r=1;t=1'
    status, headers, _ = wsgi_get(app, peer="10.0.0.2", headers={"X-Forwarded-For": "10.0.0.1"})
    assert status == 200  # untrusted peer: the forwarded header is ignored


def test_django_wsgi_legacy_fields(clock: ManualClock) -> None:
    app = django_wsgi(RateLimiter(bucket(clock)), headers="both")
    wsgi_get(app)
    wsgi_get(app)
    status, headers, _ = wsgi_get(app)
    assert status == 429
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"], headers["x-ratelimit-reset"]) \
        == ("2", "0", "1")
    assert headers["ratelimit"] == '"default";r=0;t=1'


# -- Quart ------------------------------------------------------------------

async def test_quart_headers_off_on_allowed(clock: ManualClock) -> None:
    app = quart_app(RateLimiter(bucket(clock)), headers_on_allowed=False)
    r = await asgi_get(app)
    assert r.status_code == 200 and "ratelimit" not in r.headers
    await asgi_get(app)
    denied = await asgi_get(app)
    assert denied.status_code == 429 and denied.headers["ratelimit-policy"] == POLICY


# -- issue 12: Django's resolver names the route; the view decorator answers 429 ---------

class _Recording:
    def __init__(self, inner: RateLimiter) -> None:
        self.inner, self.keys = inner, []  # type: ignore[var-annotated]
        self.config, self.can_fail = inner.config, inner.can_fail

    def check_limit(self, key: str, cost: int = 1) -> Any:
        self.keys.append(key)
        return self.inner.check_limit(key, cost)


async def test_django_asgi_route_key_is_the_url_pattern(clock: ManualClock) -> None:
    from guardian.http import client_ip, route
    rec = _Recording(RateLimiter(bucket(clock)))
    app = django_asgi(rec, key_func=route(client_ip()))  # Django's handler is recognised: no resolver= needed
    transport = httpx.ASGITransport(app=app, client=("1.2.3.4", 5))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        codes = [(await c.get(f"/items/{i}")).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    assert set(rec.keys) == {"GET /items/<int:id>|1.2.3.4"}


def test_django_wsgi_route_key_is_the_url_pattern(clock: ManualClock) -> None:
    from werkzeug.test import Client

    from guardian.http import route
    rec = _Recording(RateLimiter(bucket(clock)))
    app = django_wsgi(rec, key_func=route(), resolver=resolve_route)
    assert [Client(app).get(f"/items/{i}").status_code for i in range(3)] == [200, 200, 429]
    assert set(rec.keys) == {"GET /items/<int:id>"}
    assert django_wsgi(rec, key_func=route()).resolver is resolve_route  # recognised by itself too


async def test_django_view_decorator_per_user() -> None:
    from werkzeug.test import Client

    from django.core.wsgi import get_wsgi_application
    client = Client(get_wsgi_application())
    replies = [client.get("/me", headers={"X-User": u}) for u in ("dj-a", "dj-a", "dj-a", "dj-b")]
    assert [r.status_code for r in replies] == [200, 200, 429, 200]
    assert replies[0].headers["RateLimit"].startswith('"per-user";r=1;t=')
    assert int(replies[2].headers["Retry-After"]) > 1000
    assert replies[2].headers["RateLimit-Policy"] == '"per-user";q=2;w=7200'
    assert client.get("/me").status_code == 200  # no user: not limited here
    from django.core.asgi import get_asgi_application
    transport = httpx.ASGITransport(app=get_asgi_application())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        codes = [(await c.get("/me-async", headers={"X-User": "dj-c"})).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_django_sync_view_refuses_an_async_limiter() -> None:
    alimiter = AsyncRateLimiter(MemoryBackend(TokenBucketConfig(2, 1)))
    with pytest.raises(TypeError, match="sync view"):
        django_limit(alimiter, key=_user)(_hello)
