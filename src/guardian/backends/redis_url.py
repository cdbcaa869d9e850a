"""A redis-py client for a Redis URL, with guardian's short timeouts: the
one way the backends (and the sidecar) turn a URL into a client.

URLs: ``redis://``, ``rediss://`` and ``unix://`` for one server;
``redis+cluster://host:port`` (or ``rediss+cluster://``) for Redis Cluster;
``redis+sentinel://host:port[,host:port...]/service[/db]`` for Sentinel.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any, Dict, List, Tuple
from urllib.parse import unquote, urlsplit

from redis.backoff import NoBackoff

from .._errors import ConfigurationError, MisuseError

__all__ = ["client_for_url", "check_timeouts"]


def check_timeouts(connect_timeout: Any, timeout: Any) -> Dict[str, Any]:
    """redis-py's socket options for the two timeouts (positive seconds)."""
    for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
        # inf (or None) would let a hung Redis hold a check for ever.
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise ConfigurationError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout}


def _hosts(netloc: str, default_port: int) -> List[Tuple[str, int]]:
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        hosts.append((host or "localhost", int(port) if port else default_port))
    return hosts


def client_for_url(
    lib: ModuleType, url: str, connect_timeout: float = 0.25, timeout: float = 0.25, **options: Any
) -> Any:
    """A client of ``lib`` (the ``redis`` or the ``redis.asyncio`` module)
    for ``url`` with short timeouts; ``options`` go to the client. Nothing
    is connected yet (except by redis-py's sync cluster client, which
    reads the slot map at once). No client retries: a failed call is
    reported at once and the limiter's breaker decides; the same timeouts
    and no retries hold for the connections to Sentinels, and for the
    cluster client (which still follows MOVED and ASK redirections: they
    are answers, not failures)."""
    for raw, ours in (("socket_timeout", "timeout"), ("socket_connect_timeout", "connect_timeout")):
        if raw in options:  # it would replace the checked one, None meaning no timeout at all
            raise MisuseError(f"pass {ours}= (positive finite seconds), not {raw}=")
    max_connections = options.get("max_connections")
    if max_connections is not None and (isinstance(max_connections, bool) or not isinstance(max_connections, int)
                                        or max_connections < 1):
        # 0 builds a client whose every call fails with "Too many connections".
        raise ConfigurationError(f"max_connections must be an int >= 1 (or None), got {max_connections!r}")
    options = {**check_timeouts(connect_timeout, timeout), **options}
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"not a Redis URL: {url!r}")
    retry = import_module(lib.__name__ + ".retry").Retry  # redis.asyncio has its own
    options.setdefault("retry", retry(NoBackoff(), 0))
    if scheme in ("redis+cluster", "rediss+cluster"):
        return lib.RedisCluster.from_url(scheme.split("+")[0] + "://" + rest, **options)
    if scheme == "redis+sentinel":
        parts = urlsplit(url)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigurationError(f"a Sentinel URL names its service: {url!r}")
        if parts.password:
            options.setdefault("password", unquote(parts.password))
        if len(path) > 1:
            options.setdefault("db", int(path[1]))
        sentinel = lib.Sentinel(
            _hosts(parts.netloc, 26379),
            sentinel_kwargs={**check_timeouts(connect_timeout, timeout), "retry": retry(NoBackoff(), 0)},
            **check_timeouts(connect_timeout, timeout), retry=retry(NoBackoff(), 0),
        )
        return sentinel.master_for(path[0], **options)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"unsupported Redis URL scheme {scheme!r} in {url!r}")
    return lib.Redis.from_url(url, **options)
