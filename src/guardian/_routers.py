"""Framework route resolvers: which route (as its template) a framework will
run for a request, asked of the framework's own router.

Kept apart from the framework modules (guardian.flask, guardian.django) so
that the WSGI/ASGI middleware can recognise a framework and use its router
without importing those modules, which themselves build on the middleware.
Each framework is imported only when its resolver is used.
"""

from __future__ import annotations

from typing import Any, Optional

from .http import Request, Resolver

__all__ = ["flask_resolver", "django_resolve_route"]


def flask_resolver(app: Any) -> Resolver:
    """Asks Flask ``app``'s URL map which rule it will run (``/items/<int:id>``);
    None when it would answer 404, 405 or a redirect instead."""
    from werkzeug.exceptions import HTTPException

    def resolve(request: Request) -> Optional[str]:
        try:
            # Flask's own adapter (SERVER_NAME, subdomains, host matching, trusted hosts).
            adapter = app.create_url_adapter(app.request_class(request.raw))
            if adapter is None:
                return None
            rule, _ = adapter.match(return_rule=True)
        except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect, a bad Host: no view runs
            return None
        return str(rule.rule)
    return resolve


def django_resolve_route(request: Request) -> Optional[str]:
    """The URL pattern Django will run for ``request``, as ``/items/<int:id>``
    (a ``re_path`` pattern is its regex); None when Django answers 404."""
    from django.http import Http404
    from django.urls import resolve

    raw = request.raw
    path = request.path
    root = raw.get("root_path", "") if isinstance(raw, dict) and "type" in raw else ""
    if root and path.startswith(root):
        path = path[len(root):]
    try:
        match = resolve(path)
    except Http404:
        return None
    return "/" + str(match.route)
