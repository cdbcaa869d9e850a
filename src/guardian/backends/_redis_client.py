"""Choosing a redis-py client from a URL, and translating redis-py's
exceptions into guardian's at one boundary. Shared by the sync and async
backends: ``lib`` is the ``redis`` or the ``redis.asyncio`` module.

URLs: ``redis://``, ``rediss://`` and ``unix://`` for one server;
``redis+cluster://host:port`` (or ``rediss+cluster://``) for Redis Cluster;
``redis+sentinel://host:port[,host:port...]/service[/db]`` for Sentinel.
"""

from __future__ import annotations

import os
import weakref
from importlib import import_module
from types import ModuleType, TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type
from urllib.parse import unquote, urlsplit

import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.crc import key_slot

from .._config import TokenBucketConfig
from .._errors import BackendError, BackendTimeoutError, BackendUnavailableError, ConfigurationError
from ._redis_proto import Layout, Packer

__all__ = ["make_client", "is_cluster", "redirected", "boundary", "translate", "RedisCommon", "Call"]

#: One script call: (script name, bucket keys, ARGV after the layout's).
Call = Tuple[str, List[bytes], Tuple[bytes, ...]]


def _timeouts(connect_timeout: float, timeout: float) -> Dict[str, Any]:
    for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout}


def _hosts(netloc: str, default_port: int) -> List[Tuple[str, int]]:
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        hosts.append((host or "localhost", int(port) if port else default_port))
    return hosts


def make_client(
    lib: ModuleType, url: str, connect_timeout: float, timeout: float, kwargs: Dict[str, Any]
) -> Any:
    """A client for ``url`` with short timeouts. Standalone and Sentinel
    clients get no retries: a failed call is reported at once and the
    limiter's breaker decides. Cluster keeps redis-py's retries, which
    follow MOVED/ASK and failovers."""
    options = {**_timeouts(connect_timeout, timeout), **kwargs}
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"not a Redis URL: {url!r}")
    if scheme in ("redis+cluster", "rediss+cluster"):
        return lib.RedisCluster.from_url(scheme.split("+")[0] + "://" + rest, **options)
    retry = import_module(lib.__name__ + ".retry").Retry  # redis.asyncio has its own
    options.setdefault("retry", retry(NoBackoff(), 0))
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
            sentinel_kwargs=_timeouts(connect_timeout, timeout),
            **_timeouts(connect_timeout, timeout),
        )
        return sentinel.master_for(path[0], **options)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"unsupported Redis URL scheme {scheme!r} in {url!r}")
    return lib.Redis.from_url(url, **options)


def first_error(replies: Sequence[Any]) -> Optional[Exception]:
    """The first error reply; a NOSCRIPT first of all (it is retried)."""
    errors = [r for r in replies if isinstance(r, Exception)]
    for e in errors:
        if isinstance(e, rex.NoScriptError):
            return e
    return errors[0] if errors else None


def redirected(reply: Any) -> bool:
    """An error reply the cluster client must handle (MOVED, ASK, NOSCRIPT,
    TRYAGAIN, CLUSTERDOWN, LOADING...), not one about our data."""
    return isinstance(reply, Exception) and not str(reply).startswith(("GUARDIAN", "WRONGTYPE"))


def is_cluster(client: Any) -> bool:
    return hasattr(client, "nodes_manager")


def translate(exc: BaseException) -> BackendError:
    """guardian's exception for a redis-py (or socket) exception."""
    if isinstance(exc, (rex.TimeoutError, TimeoutError, BlockingIOError)):  # SO_RCVTIMEO: EAGAIN
        return BackendTimeoutError(f"Redis did not answer in time: {exc}")
    if isinstance(exc, (rex.ConnectionError, rex.ClusterError, OSError)):
        return BackendUnavailableError(f"Redis is unreachable: {exc}")
    text = str(exc)
    if text.startswith(("WRONGTYPE", "GUARDIAN")):
        return BackendError(
            f"a bucket key holds data guardian did not write (another program uses "
            f"this key prefix?): {text}"
        )
    return BackendError(f"Redis failed: {type(exc).__name__}: {text}")


_CAUGHT = (rex.RedisError, rex.RedisClusterException, OSError)


class _Boundary:
    """``with boundary:`` turns redis-py's exceptions into guardian's.
    A class, not @contextmanager: it sits on the hot path."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, tp: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is not None and isinstance(exc, _CAUGHT):
            raise translate(exc) from exc


boundary = _Boundary()


_live: "weakref.WeakSet[RedisCommon]" = weakref.WeakSet()


def _forget_connections() -> None:
    # A forked child must not speak on its parent's sockets.
    for backend in list(_live):
        backend.forget()


os.register_at_fork(after_in_child=_forget_connections)


class RedisCommon:
    """Everything the sync and async backends share: validation, the
    client, the packer and the I/O plan. Subclasses only talk to Redis."""

    can_fail = True
    #: Keys per script call in take_many (one call per chunk, pipelined).
    chunk = 256

    #: ``redis`` or ``redis.asyncio``: the one thing the subclasses set.
    lib: ModuleType

    def __init__(
        self,
        config: TokenBucketConfig,
        url: Optional[str] = None,
        *,
        client: Any = None,
        prefix: str = "guardian",
        connect_timeout: float = 0.25,
        timeout: float = 0.25,
        **client_kwargs: Any,
    ) -> None:
        if not isinstance(config, TokenBucketConfig):
            raise ConfigurationError(f"config must be a TokenBucketConfig, got {config!r}")
        if (url is None) == (client is None):
            raise ConfigurationError("pass exactly one of url= and client=")
        self.config = config
        self.layout = Layout(config)
        self.packer = Packer(prefix, self.layout)
        self.prefix = prefix
        self._owns_client = client is None
        if client is None:
            client = make_client(self.lib, url, connect_timeout, timeout, client_kwargs)  # type: ignore[arg-type]
        elif client_kwargs:
            raise ConfigurationError("client options go to the client you pass, not here")
        self.client = client
        #: Standalone and Sentinel: our own stack of the pool's connections,
        #: spoken to with pre-packed commands (redis-py's generic command path
        #: costs more than the script). Cluster: the client routes each call.
        self.direct = not is_cluster(client)
        #: Cluster: each call goes straight to its slot's primary on a
        #: connection of ours (see ``route``); redis-py's client serves
        #: what that path cannot (MOVED, ASK, NOSCRIPT, a node down).
        self.routed = not self.direct
        self._nodes: Dict[str, Any] = {}  # node name: idle wires (sync), a _Pool (asyncio)
        self._pool = client.connection_pool if self.direct else None
        self._idle: List[Any] = []
        _live.add(self)

    def forget(self) -> None:
        """Drops the connections without closing them (after a fork)."""
        self._idle = []
        self._nodes = {}

    def __repr__(self) -> str:
        where = "cluster" if not self.direct else type(self._pool).__name__
        return f"{type(self).__name__}({self.config!r}, prefix={self.prefix!r}, {where})"

    def sentinels(self) -> List[Any]:
        """The Sentinel clients of a client we built from a Sentinel URL
        (closing the master's client leaves them open)."""
        manager = getattr(self._pool, "sentinel_manager", None)
        return list(manager.sentinels) if manager is not None and self._owns_client else []

    def plan_call(self, name: str, key: str, *extra: bytes) -> Tuple[List[Call], bytes]:
        """One script call on one key: the call, and its packed bytes."""
        keys = [self.packer.key(key)]
        return [(name, keys, extra)], self.packer.command(name, keys, *extra)

    def pack_many(self, keys: Sequence[str], cost: Any) -> Tuple[int, int, bytes]:
        """take_many on one server: (cost, script calls, their packed bytes),
        one call per ``chunk`` keys, in order."""
        packer, size = self.packer, self.chunk
        c = packer.cost(cost)
        calls = [packer.take_keys(keys[i:i + size], c) for i in range(0, len(keys), size)]
        return int(c), len(calls), b"".join(calls)

    def plan_take_many(
        self, keys: Sequence[str], cost: Any
    ) -> Tuple[int, List[List[int]], List[Call], List[int]]:
        """take_many on a cluster: (cost, positions per call, calls, their
        slots), never two slots in one call."""
        packer, size = self.packer, self.chunk
        c = packer.cost(cost)
        bkeys = packer.keys(keys)
        by_slot: Dict[int, List[int]] = {}
        for i, k in enumerate(bkeys):
            by_slot.setdefault(key_slot(k), []).append(i)
        plan, slots = [], []
        for slot, group in by_slot.items():
            for i in range(0, len(group), size):
                plan.append(group[i:i + size])
                slots.append(slot)
        return int(c), plan, [("take", [bkeys[i] for i in group], (c,)) for group in plan], slots

    def route(self, slots: Sequence[int]) -> Tuple[Dict[str, Tuple[Any, List[int]]], List[int]]:
        """Calls (by position) per primary node, from the slot map redis-py's
        cluster client keeps (CLUSTER SLOTS, updated on MOVED and failover);
        and the calls whose slot has no node there."""
        cache = self.client.nodes_manager.slots_cache
        by_node: Dict[str, Tuple[Any, List[int]]] = {}
        unmapped = []
        for i, slot in enumerate(slots):
            nodes = cache.get(slot)
            if nodes:
                by_node.setdefault(nodes[0].name, (nodes[0], []))[1].append(i)
            else:
                unmapped.append(i)
        return by_node, unmapped

    @staticmethod
    def retries(replies: Sequence[Any], again: List[int]) -> List[int]:
        """The calls (by position) for redis-py's cluster client: ``again``
        (no answer on our path) and those redirected. An error about our
        data is raised."""
        for i, reply in enumerate(replies):
            if redirected(reply):
                again.append(i)
            elif isinstance(reply, Exception):
                raise reply
        return sorted(again)

    def reserved(self, reply: Sequence[int]) -> Tuple[int, int, float, float]:
        tps = self.layout.ticks_per_second
        return reply[0], reply[1], reply[2] / tps, reply[3] / tps

    def assemble(self, n: int, plan: List[List[int]], replies: List[Any], cost: int) -> List[Any]:
        """One LimitResult per key, in the caller's order."""
        out: List[Any] = [None] * n
        results = self.layout.results
        for positions, reply in zip(plan, replies):
            for pos, result in zip(positions, results(reply, cost)):
                out[pos] = result
        return out
