"""What the ASGI and WSGI middleware share: the request view that key
functions read, the ready key functions, per-route limits and the
response fields. No framework and no I/O here.

Response fields follow draft-ietf-httpapi-ratelimit-headers-11 as read
from the text rendering the working group's repository keeps at
github.com/ietf-wg-httpapi/ratelimit-headers, path
draft-ietf-httpapi-ratelimit-headers-11/draft-ietf-httpapi-ratelimit-headers.txt
(commit 1284b9c; its title line reads "-latest", dated 23 May 2026; see
README "Rate limit fields"). Both fields are Structured Field Lists
(RFC 9651) of one item whose value is the policy name, an sf-string as
section 3 requires ("The Item[SF] value MUST be a String[SF]")::

    RateLimit-Policy: "default";q=100;w=10   quota q per window w seconds (3.1)
    RateLimit: "default";r=42;t=3            r available, effective window t s (4.1)

A token bucket of capacity C refilling r per interval I is advertised as
q=C and w=ceil(C*I/r), the time an empty bucket takes to fill (w is
non-zero, 3.1.3). ``t`` is the seconds until the bucket is full again on an
allowed response, and until the request would be allowed on a denied one
(equal to Retry-After, so Retry-After never points before the end of the
effective window, section 6).

Not emitted: ``qu`` (absent means "requests"; with a ``cost_func`` q and r
count cost units, which no registered quota unit names) and ``pk``. The
draft's pk is a Byte Sequence naming the request's quota partition, here
the rate limit key: by default the client address, otherwise an API key
or tenant header. Section 6.1 asks servers to avoid partition keys that
carry sensitive information; the key itself would echo those, and an
unkeyed hash of an IPv4 address is reversed by trying all 2^32, so guardian
leaves pk off rather than publish it.

The legacy ``X-RateLimit-Limit/-Remaining/-Reset`` (delta seconds) are an
option for clients that expect them.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import (
    Any, Callable, Dict, Iterable, List, Mapping, Optional, Pattern, Sequence, Tuple, Union,
)

__all__ = [
    "Request", "KeyFunc", "CostFunc", "Route", "RouteTable",
    "client_ip", "header", "route", "response_headers", "retry_after_seconds",
    "HEADER_STYLES",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Request:
    """The parts of an HTTP request a key function may read.

    ``method`` and ``path`` are str; ``peer`` is the address of the TCP
    peer (None when unknown, e.g. a Unix socket); ``route`` is the matched
    route pattern (the middleware's own ``routes=`` pattern, or the
    framework's path template when it set one) or None; ``raw`` is the ASGI
    scope or the WSGI environ.
    """

    __slots__ = ("method", "path", "peer", "route", "raw", "_headers")

    def __init__(self, method: str, path: str, peer: Optional[str],
                 headers: Callable[[str], Optional[str]], raw: Any, route: Optional[str] = None) -> None:
        self.method = method
        self.path = path
        self.peer = peer
        self.route = route
        self.raw = raw
        self._headers = headers

    def header(self, name: str) -> Optional[str]:
        """The header's value (repeated fields joined with ", "), or None."""
        return self._headers(name.lower())


KeyFunc = Callable[[Request], Optional[str]]
CostFunc = Callable[[Request], int]


def _networks(items: Iterable[Union[str, Network]]) -> Tuple[Network, ...]:
    return tuple(ipaddress.ip_network(i, strict=False) if isinstance(i, str) else i for i in items)


def _parse_ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1:text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # an IPv4 address with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_for(value: str) -> List[str]:
    """The ``for=`` of each element of a Forwarded field (RFC 7239)."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, v = pair.strip().partition("=")
            if name.lower() == "for":
                hops.append(v)
    return hops


def client_ip(trusted_proxies: Iterable[Union[str, Network]] = (),
              forwarded_header: str = "x-forwarded-for") -> KeyFunc:
    """Key by client address.

    Without ``trusted_proxies`` the TCP peer is the client and forwarding
    headers are ignored (a client can write any header). With it (CIDR
    strings such as ``"10.0.0.0/8"``), a request whose peer is in one of
    those networks is keyed by the nearest hop of ``forwarded_header``
    (``"x-forwarded-for"`` or ``"forwarded"``) that is not itself a trusted
    proxy, read from the right; hops left of it were written by parties we
    do not trust and are never used. An unparsable hop stops the walk at
    the last trusted one.
    """
    networks = _networks(trusted_proxies)
    name = forwarded_header.lower()
    if name not in ("x-forwarded-for", "forwarded"):
        raise ValueError(f"forwarded_header must be 'x-forwarded-for' or 'forwarded', got {forwarded_header!r}")

    def trusted(addr: Any) -> bool:
        return any(addr in net for net in networks)

    def key(request: Request) -> Optional[str]:
        peer = request.peer
        if not networks or peer is None:
            return peer
        addr = _parse_ip(peer)
        if addr is None or not trusted(addr):
            return peer
        value = request.header(name)
        if not value:
            return str(addr)
        hops = _forwarded_for(value) if name == "forwarded" else value.split(",")
        for hop in reversed(hops):
            hop_addr = _parse_ip(hop)
            if hop_addr is None:
                break
            addr = hop_addr
            if not trusted(hop_addr):
                break
        return str(addr)

    return key


def header(name: str, default: Optional[str] = None) -> KeyFunc:
    """Key by a request header (an API key, a tenant id); requests without
    it get ``default`` (None: not limited by this key function)."""
    lname = name.lower()

    def key(request: Request) -> Optional[str]:
        value = request.header(lname)
        return value if value else default

    return key


def route(inner: Optional[KeyFunc] = None) -> KeyFunc:
    """Key by route pattern (or by path when no pattern matched), optionally
    combined with another key: ``route(client_ip())`` is one bucket per
    client per route."""

    def key(request: Request) -> Optional[str]:
        where = f"{request.method} {request.route or request.path}"
        if inner is None:
            return where
        sub = inner(request)
        return None if sub is None else f"{where}|{sub}"

    return key


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


def _compile(pattern: str) -> Pattern[str]:
    out, pos = [], 0
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(".+" if m.group(2) else "[^/]+")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


class Route:
    """One entry of a per-route table: requests whose path matches
    ``pattern`` (``{name}`` matches one segment, ``{name:path}`` the rest)
    and whose method is in ``methods`` (None: any) use ``limiter`` (None:
    not limited). ``key_func``/``cost_func``/``policy`` default to the
    middleware's."""

    __slots__ = ("pattern", "methods", "limiter", "key_func", "cost_func", "policy", "_regex")

    def __init__(self, pattern: str, limiter: Any, methods: Optional[Sequence[str]] = None,
                 key_func: Optional[KeyFunc] = None, cost_func: Optional[CostFunc] = None,
                 policy: Optional[str] = None) -> None:
        self.pattern = pattern
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)
        self.limiter = limiter
        self.key_func = key_func
        self.cost_func = cost_func
        self.policy = policy
        self._regex = _compile(pattern)

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and self._regex.match(path) is not None


RoutesArg = Union[None, Sequence[Route], Mapping[str, Any]]


class RouteTable:
    """The middleware's routes, first match wins. A mapping is accepted as
    shorthand: ``{"POST /login": limiter, "/health": None}``."""

    def __init__(self, routes: RoutesArg) -> None:
        if routes is None:
            self.routes: List[Route] = []
        elif isinstance(routes, Mapping):
            self.routes = []
            for spec, limiter in routes.items():
                method, _, pattern = spec.strip().rpartition(" ")
                self.routes.append(Route(pattern, limiter, [method] if method else None))
        else:
            self.routes = list(routes)

    def match(self, method: str, path: str) -> Optional[Route]:
        for r in self.routes:
            if r.matches(method, path):
                return r
        return None


#: "draft": RateLimit-Policy + RateLimit; "legacy": X-RateLimit-*; "both"; "none".
HEADER_STYLES = ("draft", "legacy", "both", "none")


def retry_after_seconds(result: Any) -> int:
    """Retry-After is whole seconds; round up and never say 0 to a denial."""
    return max(1, math.ceil(float(result.retry_after)))


def window_seconds(limiter: Any) -> int:
    """The time an empty bucket of ``limiter`` takes to fill, in whole seconds."""
    config = limiter.backend.config
    return max(1, math.ceil(float(config.capacity * config.emission_interval)))


def _sf_string(text: str) -> str:
    """``text`` as an RFC 9651 sf-string: printable ASCII only, with ``\\``
    and ``"`` escaped; anything else cannot be a policy name."""
    if not all(" " <= ch <= "~" for ch in text):
        raise ValueError(f"a policy name must be printable ASCII (an sf-string), got {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def response_headers(result: Any, policy: str, window: int, style: str,
                     _name: Optional[str] = None) -> List[Tuple[str, str]]:
    """The rate limit fields for one result, as (name, value) pairs."""
    allowed = result.allowed
    retry = 0 if allowed else retry_after_seconds(result)
    t = math.ceil(result.reset_after) if allowed else retry
    out: List[Tuple[str, str]] = []
    if style != "legacy":  # "draft" or "both"
        name = _name or _sf_string(policy)
        out.append(("RateLimit-Policy", f"{name};q={result.limit};w={window}"))
        out.append(("RateLimit", f"{name};r={result.remaining};t={t}"))
    if style != "draft":  # "legacy" or "both"
        out.append(("X-RateLimit-Limit", str(result.limit)))
        out.append(("X-RateLimit-Remaining", str(result.remaining)))
        out.append(("X-RateLimit-Reset", str(t)))
    if not allowed:
        out.append(("Retry-After", str(retry)))
    return out


class Plan:
    """Resolves the limiter, key, cost and header fields for one request;
    shared by the ASGI and WSGI middleware."""

    def __init__(self, limiter: Any, key_func: Optional[KeyFunc], cost_func: Optional[CostFunc],
                 routes: RoutesArg, policy: str, headers: str, headers_on_allowed: bool) -> None:
        if headers not in HEADER_STYLES:
            raise ValueError(f"headers must be one of {HEADER_STYLES}, got {headers!r}")
        self.limiter = limiter
        self.key_func: KeyFunc = key_func if key_func is not None else client_ip()
        self.cost_func = cost_func
        self.table = RouteTable(routes)
        self.policy = policy
        # Policy names go out as sf-strings: refuse an unusable one here, not per request.
        _sf_string(policy)
        for r in self.table.routes:
            if r.policy is not None or (r.limiter is not None and r.limiter is not limiter):
                _sf_string(r.policy or r.pattern)  # the name resolve() would use
        self.headers = headers
        self.headers_on_allowed = headers_on_allowed and headers != "none"
        #: (limiter id, policy) -> (window seconds, the policy as an sf-string)
        self._static: Dict[Tuple[int, str], Tuple[int, str]] = {}

    def resolve(self, request: Request) -> Optional[Tuple[Any, str, int, str]]:
        """(limiter, key, cost, policy name), or None when not limited."""
        limiter, key_func, cost_func, policy = self.limiter, self.key_func, self.cost_func, self.policy
        if self.table.routes:
            r = self.table.match(request.method, request.path)
            if r is not None:
                request.route = request.route or r.pattern
                limiter = r.limiter
                key_func = r.key_func or key_func
                cost_func = r.cost_func or cost_func
                policy = r.policy or (r.pattern if r.limiter is not self.limiter else policy)
        if limiter is None:
            return None
        key = key_func(request)
        if key is None:
            return None
        return limiter, key, 1 if cost_func is None else cost_func(request), policy

    def fields(self, limiter: Any, result: Any, policy: str) -> List[Tuple[str, str]]:
        if self.headers == "none":
            return [("Retry-After", str(retry_after_seconds(result)))] if not result.allowed else []
        static = self._static.get((id(limiter), policy))
        if static is None:
            static = self._static[(id(limiter), policy)] = (window_seconds(limiter), _sf_string(policy))
        return response_headers(result, policy, static[0], self.headers, static[1])
