"""Django (WSGI ``wsgi_app`` and ASGI ``asgi_app``) behind guardian's
middleware with Django's URL resolver, and guardian.django.limit inside."""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(DEBUG=False, SECRET_KEY="guardian-test", ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
                   MIDDLEWARE=[], INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
django.setup()

from typing import Any  # noqa: E402

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from mw_common import PER_USER, edge_options, user_of  # noqa: E402

from guardian import asgi, wsgi  # noqa: E402
from guardian.django import limit, resolve_route  # noqa: E402


def handler(name: str) -> Any:
    def view(request: HttpRequest, **kw: Any) -> HttpResponse:
        response = HttpResponse(name, content_type="text/plain")
        response["X-Handler"] = name
        return response
    return view


urlpatterns = [
    path("", handler("root")), path("login", handler("login")), path("open", handler("open")), path("items/<str:id>", handler("items")),
    path("health", handler("health")), path("api", handler("api")),
    path("me", limit(PER_USER, key=lambda request: user_of(request.headers), policy="per-user")(handler("me"))),
]

wsgi_app = wsgi.RateLimitMiddleware(get_wsgi_application(), resolver=resolve_route, **edge_options())
asgi_app = asgi.RateLimitMiddleware(get_asgi_application(), resolver=resolve_route, **edge_options())
