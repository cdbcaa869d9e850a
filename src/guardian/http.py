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

import hashlib
import ipaddress
import logging
import math
import re
from typing import (
    Any, Callable, Dict, Iterable, List, Mapping, Optional, Pattern, Sequence, Tuple, Union,
)

from ._errors import MisuseError

__all__ = [
    "Request", "KeyFunc", "CostFunc", "Resolver", "Route", "RouteTable",
    "client_ip", "header", "route", "response_headers", "retry_after_seconds",
    "bounded_key", "normalize_path", "HEADER_STYLES", "UNIX_PEER", "MAX_CLIENT_KEY_BYTES",
]

log = logging.getLogger("guardian")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


_UNSET: Any = object()
_FAILED_RESOLVERS: "set[Any]" = set()


class Request:
    """The parts of an HTTP request a key function may read.

    ``method`` and ``path`` are str; ``peer`` is the address of the TCP
    peer (None when there is none, e.g. a Unix socket); ``route`` is the
    route template the framework picks for this request (``/items/{id}``,
    asked of the framework's own router by a resolver, see
    guardian.asgi.starlette_template, guardian.flask.route_resolver,
    guardian.django.resolve_route), else the middleware's matching
    ``routes=`` pattern, else None; ``raw`` is the ASGI scope or the WSGI
    environ.
    """

    __slots__ = ("method", "path", "peer", "raw", "_headers", "_route", "_template", "_resolver", "_normal")

    def __init__(self, method: str, path: str, peer: Optional[str],
                 headers: Callable[[str], Optional[str]], raw: Any, route: Optional[str] = None,
                 resolver: Optional["Resolver"] = None) -> None:
        self.method = method
        self.path = path
        self.peer = peer
        self.raw = raw
        self._headers = headers
        self._route = route
        # Asking the framework's router costs a walk over its routes: only
        # done when a route pattern or a route() key needs it.
        self._template: Any = _UNSET if resolver is not None else None
        self._resolver = resolver
        self._normal: Optional[str] = None

    @property
    def template(self) -> Optional[str]:
        """The framework's route template (None: no resolver, or no route matches)."""
        if self._template is _UNSET:
            try:
                self._template = self._resolver(self)  # type: ignore[misc]
            except Exception:  # a framework's router must not turn a check into a 500
                if self._resolver not in _FAILED_RESOLVERS:  # nor into a log line per request
                    _FAILED_RESOLVERS.add(self._resolver)
                    log.exception("guardian: the route resolver %r failed; limiting by path "
                                  "(logged once)", self._resolver)
                self._template = None
        return self._template  # type: ignore[no-any-return]

    @property
    def route(self) -> Optional[str]:
        return self._route if self._route is not None else self.template

    @route.setter
    def route(self, value: Optional[str]) -> None:
        self._route = value

    @property
    def normal_path(self) -> str:
        """``path`` as normalize_path() spells it (computed once)."""
        if self._normal is None:
            self._normal = normalize_path(self.path)
        return self._normal

    def header(self, name: str) -> Optional[str]:
        """The header's value (repeated fields joined with ", "), or None."""
        return self._headers(name.lower())


KeyFunc = Callable[[Request], Optional[str]]
CostFunc = Callable[[Request], int]
#: Asks the framework which route template it will run for a request (None: no route).
Resolver = Callable[[Request], Optional[str]]

#: Client-derived keys longer than this (UTF-8 bytes) are replaced by a digest.
MAX_CLIENT_KEY_BYTES = 256
#: The one bucket of every request that has no peer address and no trusted forwarded hop.
UNIX_PEER = "unix:"
_DIGEST_MARK = "~h:"


def bounded_key(key: str) -> str:
    """``key`` itself when it is valid and short; otherwise a fixed-size
    digest of it (BLAKE2b, 128 bits: a client cannot choose two keys that
    share a bucket). A key a client controls is never an error and never
    larger than MAX_CLIENT_KEY_BYTES; keys that look like a digest are
    digested too, so no plain key can pose as one."""
    if 0 < len(key) <= MAX_CLIENT_KEY_BYTES and key.isascii() and not key.startswith(_DIGEST_MARK):
        return key  # the common case: short ASCII, one byte per character
    data = key.encode("utf-8", "surrogatepass")
    if 0 < len(data) <= MAX_CLIENT_KEY_BYTES and not key.startswith(_DIGEST_MARK):
        try:
            key.encode("utf-8")
            return key
        except UnicodeEncodeError:
            pass
    return _DIGEST_MARK + hashlib.blake2b(data, digest_size=16).hexdigest()


_SEPARATORS = re.compile(r"[\x00-\x20\x7f]+")
# Already normal: non-empty segments of printable ASCII without upper case
# or ";", none "." or "..", no trailing slash. Most paths; no rewriting.
_NORMAL = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[\x21-\x2e\x30-\x3a\x3c-\x40\x5b-\x7e]+)+\Z")


def normalize_path(path: str) -> str:
    """One spelling for every variant of a path a framework might route to
    the same handler: control characters and spaces removed, lower case,
    ``;params`` dropped from each segment, empty and ``.`` segments dropped,
    ``..`` applied, no trailing slash. Used to match limited routes broadly
    (a variant the framework does not route is merely limited too)."""
    if _NORMAL.match(path) is not None:
        return path
    return _rewrite(path)


def _rewrite(path: str) -> str:
    path = _SEPARATORS.sub("", path).lower()
    out: List[str] = []
    for seg in path.split("/"):
        seg = seg.split(";", 1)[0]
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)


def _networks(items: Iterable[Union[str, Network]]) -> Tuple[Tuple[Network, ...], bool]:
    """The trusted networks (IPv4-mapped IPv6 networks as IPv4), and
    whether the Unix-socket peer (``"unix"``) is trusted."""
    nets: List[Network] = []
    unix = False
    for item in items:
        if isinstance(item, str) and item.strip().lower() in ("unix", "unix:"):
            unix = True
            continue
        net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else item
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
                and net.network_address.ipv4_mapped is not None:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        nets.append(net)
    return tuple(nets), unix


def _unmap(addr: Address) -> Address:
    """``::ffff:10.0.0.1`` is the IPv4 client 10.0.0.1 (a dual-stack socket's view)."""
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


def _parse_ip(text: str) -> Optional[Address]:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1:text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # an IPv4 address with a port
        text = text.split(":", 1)[0]
    try:
        return _unmap(ipaddress.ip_address(text.split("%", 1)[0]))  # no zone id: one host, one key
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


def address_key(addr: Address, ipv6_prefix: int = 64) -> str:
    """The bucket name of a client address: an IPv4 address as it is, an
    IPv6 address by its ``/ipv6_prefix`` network (one subscriber holds a
    whole /64, so keying by address would hand them 2^64 buckets)."""
    if addr.version == 4 or ipv6_prefix >= 128:
        return str(addr)
    shift = 128 - ipv6_prefix
    net = ipaddress.IPv6Address((int(addr) >> shift) << shift)
    return f"{net}/{ipv6_prefix}"


def client_ip(trusted_proxies: Iterable[Union[str, Network]] = (),
              forwarded_header: str = "x-forwarded-for", ipv6_prefix: int = 64) -> KeyFunc:
    """Key by client address; every request gets a key.

    Without ``trusted_proxies`` the TCP peer is the client and forwarding
    headers are ignored (a client can write any header). With it (CIDR
    strings such as ``"10.0.0.0/8"``), a request whose peer is in one of
    those networks is keyed by the nearest hop of ``forwarded_header``
    (``"x-forwarded-for"`` or ``"forwarded"``) that is not itself a trusted
    proxy, read from the right; hops left of it were written by parties we
    do not trust and are never used. An unparsable hop stops the walk at
    the last trusted one.

    A request with no peer address (the server listens on a Unix socket:
    uvicorn ``--uds``, gunicorn ``bind = unix:...``) is keyed by the
    forwarded header when ``"unix"`` is among ``trusted_proxies`` (the
    socket is the proxy's); otherwise, or when the header is missing, all
    such requests share one bucket (UNIX_PEER) and a warning is logged
    once: they are limited together, never unlimited.

    IPv6 clients are keyed by their ``/ipv6_prefix`` network (default
    64); an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is the IPv4
    address, for keys and for matching ``trusted_proxies``.
    """
    networks, trust_unix = _networks(trusted_proxies)
    name = forwarded_header.lower()
    if name not in ("x-forwarded-for", "forwarded"):
        raise ValueError(f"forwarded_header must be 'x-forwarded-for' or 'forwarded', got {forwarded_header!r}")
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be between 0 and 128, got {ipv6_prefix!r}")
    warned = [False]

    def trusted(addr: Address) -> bool:
        return any(addr in net for net in networks)

    def forwarded(request: Request, addr: Optional[Address]) -> Optional[Address]:
        """The client the trusted proxy at ``addr`` forwarded for (``addr`` if none)."""
        value = request.header(name)
        if not value:
            return addr
        hops = _forwarded_for(value) if name == "forwarded" else value.split(",")
        for hop in reversed(hops):
            hop_addr = _parse_ip(hop)
            if hop_addr is None:
                break
            addr = hop_addr
            if not trusted(hop_addr):
                break
        return addr

    def no_peer(request: Request) -> str:
        if trust_unix:
            addr = forwarded(request, None)
            if addr is not None:
                return address_key(addr, ipv6_prefix)
        if not warned[0]:
            warned[0] = True
            why = ("the trusted Unix-socket proxy sent no %s header" % name if trust_unix else
                   'behind a proxy on that socket, add "unix" to client_ip(trusted_proxies=...) '
                   "to key by its forwarded header")
            log.warning("guardian: a request has no peer address (a Unix-socket listener?): it and all "
                        "such requests share one bucket %r (%s); logged once", UNIX_PEER, why)
        return UNIX_PEER

    def key(request: Request) -> Optional[str]:
        peer = request.peer
        if not peer:
            return no_peer(request)
        if not networks and ":" not in peer:
            return peer  # an IPv4 peer and nothing to walk: the hot path, no parsing
        addr = _parse_ip(peer)
        if addr is None:
            return peer  # not an address (a test client's name): a key all the same
        if networks and trusted(addr):
            addr = forwarded(request, addr) or addr
        return address_key(addr, ipv6_prefix)

    return key


def header(name: str, default: Optional[str] = None) -> KeyFunc:
    """Key by a request header (an API key, a tenant id); requests without
    it get ``default`` (None: not limited by this key function)."""
    lname = name.lower()

    def key(request: Request) -> Optional[str]:
        value = request.header(lname)
        return value if value else default

    return key


def _method(method: str) -> str:
    """HEAD runs the GET handler in every framework we serve: one bucket for both."""
    method = method.upper()
    return "GET" if method == "HEAD" else method


def route(inner: Optional[KeyFunc] = None) -> KeyFunc:
    """Key by route, optionally combined with another key:
    ``route(client_ip())`` is one bucket per client per route.

    The route is the template the framework picks (``/items/{id}``: every
    item shares one bucket) when a resolver can ask the framework's router
    (found by itself for Starlette, FastAPI, Flask and Django), else the
    matching ``routes=`` pattern, else the normalized path.
    HEAD shares GET's bucket."""

    def key(request: Request) -> Optional[str]:
        where = f"{_method(request.method)} {request.route or request.normal_path}"
        if inner is None:
            return where
        sub = inner(request)
        return None if sub is None else f"{where}|{sub}"

    return key


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


def _compile(pattern: str, flags: int = 0) -> Pattern[str]:
    out, pos = [], 0
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(".+" if m.group(2) else "[^/]+")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z", flags)


class Route:
    """One entry of a per-route table: requests whose path matches
    ``pattern`` (``{name}`` matches one segment, ``{name:path}`` the rest)
    and whose method is in ``methods`` (None: any; GET includes HEAD) use
    ``limiter`` (None: not limited). ``key_func``/``cost_func``/``policy``
    default to the middleware's.

    A limited route matches the framework's route template when a resolver
    gives one, and also every spelling of its path that a framework might
    route to it (see normalize_path: ``/login%0A``, ``//login``,
    ``/LOGIN/``, ``/login;x`` all use the login limiter). An exemption
    (``limiter=None``) is narrow: the template or the exact path only."""

    __slots__ = ("pattern", "methods", "limiter", "key_func", "cost_func", "policy", "_exact", "_broad")

    def __init__(self, pattern: str, limiter: Any, methods: Optional[Sequence[str]] = None,
                 key_func: Optional[KeyFunc] = None, cost_func: Optional[CostFunc] = None,
                 policy: Optional[str] = None) -> None:
        self.pattern = pattern
        if methods is None:
            self.methods: Optional[frozenset[str]] = None
        else:
            wanted = {m.upper() for m in methods}
            self.methods = frozenset(wanted | {"HEAD"} if "GET" in wanted else wanted)
        self.limiter = limiter
        self.key_func = key_func
        self.cost_func = cost_func
        self.policy = policy
        self._exact = _compile(pattern)
        self._broad = _compile(normalize_path(pattern)) if limiter is not None else None

    def matches(self, method: str, path: str) -> bool:
        """Whether a request for ``path`` (no resolver) uses this route."""
        return self.applies(Request(method, path, None, lambda _: None, None))

    def applies(self, request: Request) -> bool:
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        # The path first: when it matches, the router need not be asked.
        if self._broad is None:
            if self._exact.match(request.path) is not None:
                return True
        elif self._broad.match(request.normal_path) is not None:
            return True
        template = request.template
        return template is not None and self._exact.match(template) is not None


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
            for r in self.routes:
                if not isinstance(r, Route):
                    raise MisuseError(f'routes must be a mapping {{"POST /login": limiter}} or a list of Route, '
                                      f"got an item {r!r}")

    def match(self, method: str, path: str) -> Optional[Route]:
        return self.find(Request(method, path, None, lambda _: None, None))

    def find(self, request: Request) -> Optional[Route]:
        for r in self.routes:
            if r.applies(request):
                return r
        return None


#: "draft": RateLimit-Policy + RateLimit; "legacy": X-RateLimit-*; "both"; "none".
HEADER_STYLES = ("draft", "legacy", "both", "none")


def retry_after_seconds(result: Any) -> int:
    """Retry-After is whole seconds; round up and never say 0 to a denial."""
    return max(1, math.ceil(float(result.retry_after)))


def window_seconds(limiter: Any) -> int:
    """The time an empty bucket of ``limiter`` takes to fill, in whole seconds."""
    config = limiter.config
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


def _check_limiter(limiter: Any, what: str) -> None:
    if limiter is not None and not callable(getattr(limiter, "check_limit", None)):
        raise MisuseError(
            f"{what} must be a RateLimiter or AsyncRateLimiter (or None: not limited), got "
            f"{type(limiter).__name__}; for a limit, write RateLimiter(MemoryBackend(config))")


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
        # Refused now: a wrong object here would raise on every request (a 500), not limit it.
        _check_limiter(limiter, "limiter")
        for what, func in (("key_func", key_func), ("cost_func", cost_func)):
            if func is not None and not callable(func):
                raise MisuseError(f"{what} must be a callable of the request, got {func!r}")
        for r in self.table.routes:
            _check_limiter(r.limiter, f"the limiter of route {r.pattern!r}")
            for what, func in (("key_func", r.key_func), ("cost_func", r.cost_func)):
                if func is not None and not callable(func):
                    raise MisuseError(f"{what} of route {r.pattern!r} must be a callable of the request, got {func!r}")
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
            r = self.table.find(request)
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
        key = bounded_key(key if type(key) is str else str(key))
        return limiter, key, 1 if cost_func is None else cost_func(request), policy

    def fields(self, limiter: Any, result: Any, policy: str) -> List[Tuple[str, str]]:
        if self.headers == "none":
            return [("Retry-After", str(retry_after_seconds(result)))] if not result.allowed else []
        static = self._static.get((id(limiter), policy))
        if static is None:
            static = self._static[(id(limiter), policy)] = (window_seconds(limiter), _sf_string(policy))
        return response_headers(result, policy, static[0], self.headers, static[1])


DENIED_BODY = b"Too Many Requests\n"


class AppLimit:
    """A limit checked from inside the application, where the user is known
    (a view decorator, a FastAPI dependency): the same 429, Retry-After and
    RateLimit fields as the middleware. Shared by guardian.starlette,
    guardian.flask and guardian.django; no framework here."""

    def __init__(self, limiter: Any, cost: int = 1, policy: str = "default",
                 headers: str = "draft") -> None:
        if headers not in HEADER_STYLES:
            raise ValueError(f"headers must be one of {HEADER_STYLES}, got {headers!r}")
        if limiter is None:
            raise MisuseError("an in-app limit needs a limiter")
        _check_limiter(limiter, "limiter")
        self.limiter = limiter
        self.cost = cost
        self.policy = policy
        self.headers = headers
        self._name = _sf_string(policy)
        self._window: Optional[int] = None

    def fields(self, result: Any) -> List[Tuple[str, str]]:
        """The response fields for ``result`` (Retry-After alone when headers="none")."""
        if self.headers == "none":
            return [] if result.allowed else [("Retry-After", str(retry_after_seconds(result)))]
        if self._window is None:
            self._window = window_seconds(self.limiter)
        return response_headers(result, self.policy, self._window, self.headers, self._name)


def exceeded_fields(exc: Any) -> List[Tuple[str, str]]:
    """The fields of a 429 for a RateLimitExceeded raised by a bare
    ``limiter.limit`` decorator, which knows its result but not its
    limiter's window: Retry-After and the RateLimit field (no policy)."""
    fields = getattr(exc, "fields", None)
    if fields is not None:
        return list(fields)
    result = exc.result
    retry = retry_after_seconds(result)
    return [("RateLimit", f'"default";r={result.remaining};t={retry}'), ("Retry-After", str(retry))]
