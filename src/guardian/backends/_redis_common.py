"""What the sync and async Redis backends share and does no I/O: their
constructor, the error boundary (redis-py's exceptions become guardian's
in one place), the decisions taken on replies (NOSCRIPT reload, when the
cluster client must take over) and the plans of multi-key calls.
``lib`` is the ``redis`` or the ``redis.asyncio`` module.
"""

from __future__ import annotations

import inspect
import os
import time
import weakref
from types import ModuleType, TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import hiredis
import redis.exceptions as rex
from redis.crc import key_slot

from .._args import check_keys
from .._config import TokenBucketConfig
from .._errors import (
    BackendConfigError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    MisuseError,
    RateLimitError,
)
from ._redis_scripts import Layout, Packer, Reserved, malformed
from .redis_url import client_for_url

__all__ = ["is_cluster", "redirected", "boundary", "translate", "RedisCommon", "Call", "Reserved"]

#: One script call: (script name, bucket keys, ARGV after the layout's).
Call = Tuple[str, List[bytes], Tuple[bytes, ...]]


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


#: Replies that say guardian's credentials or permissions are wrong.
_REFUSED = ("NOAUTH", "WRONGPASS", "NOPERM", "-NOAUTH", "-WRONGPASS", "-NOPERM")


def _without_reprs(text: str) -> str:
    """``text`` with every ``<redis.… >`` repr (of a client, pool or
    connection, nested) replaced by its class name."""
    out, i = [], 0
    while True:
        j = text.find("<redis.", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        depth, k = 0, j
        while k < len(text):
            depth += {"<": 1, ">": -1}.get(text[k], 0)
            k += 1
            if depth == 0:
                break
        name = text[j + 1:k].split("(", 1)[0].rsplit(".", 1)[-1]
        out.append(name)
        i = k


def _short(exc: BaseException, limit: int = 200) -> str:
    """One short line for a log: redis-py's Sentinel and Cluster errors can
    carry the repr of every connection pool they tried."""
    text = " ".join(_without_reprs(str(exc)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def translate(exc: BaseException) -> BackendError:
    """guardian's exception for a redis-py (or socket) exception."""
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError)) or str(
        exc
    ).startswith(_REFUSED):
        return BackendConfigError(f"Redis refused guardian's credentials or permissions: {exc}")
    if isinstance(exc, (rex.TimeoutError, TimeoutError, BlockingIOError)):  # SO_RCVTIMEO: EAGAIN
        return BackendTimeoutError(f"Redis did not answer in time: {_short(exc)}")
    if isinstance(exc, (rex.ConnectionError, rex.ClusterError, rex.RedisClusterException, OSError)):
        return BackendUnavailableError(f"Redis is unreachable: {_short(exc)}")
    text = str(exc)
    if text.startswith(("WRONGTYPE", "GUARDIAN")):
        return BackendError(
            f"a bucket key holds data guardian did not write (another program uses "
            f"this key prefix?): {text}"
        )
    return BackendError(f"Redis failed: {type(exc).__name__}: {text}")


#: Replies of a cluster node that cannot serve now: the check fails at once
#: (the limiter's policy decides) instead of redis-py's sleep and retries.
_UNSERVED = (rex.ClusterDownError, rex.BusyLoadingError, rex.TryAgainError)

_CAUGHT = (rex.RedisError, rex.RedisClusterException, OSError)
#: What reading a reply of the wrong shape raises (a foreign server or
#: proxy, a protocol error): never past the backend.
_MALFORMED = (hiredis.ProtocolError, TypeError, IndexError, ValueError, AttributeError, KeyError)


class _Boundary:
    """``with boundary:`` turns redis-py's exceptions, and a reply guardian
    cannot read, into guardian's. guardian's own errors pass unchanged.
    A class, not @contextmanager: it sits on the hot path."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, tp: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None or isinstance(exc, RateLimitError):
            return
        if isinstance(exc, _CAUGHT):
            raise translate(exc) from exc
        if isinstance(exc, _MALFORMED):
            raise malformed(f"{type(exc).__name__}: {exc}") from exc


boundary = _Boundary()


_live: "weakref.WeakSet[RedisCommon]" = weakref.WeakSet()


def _forget_connections() -> None:
    # A forked child must not speak on its parent's sockets.
    for backend in list(_live):
        backend.forget()


os.register_at_fork(after_in_child=_forget_connections)


class RedisCommon:
    """Everything the sync and async backends share: validation, the
    client, the packer, the I/O plans and the decisions on replies.
    Subclasses only talk to Redis."""

    can_fail = True
    #: Every call talks to Redis (a synchronous one would block an event loop).
    does_io = True
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
        limit_in_key: bool = True,
        **client_options: Any,
    ) -> None:
        if not isinstance(config, TokenBucketConfig):
            raise ConfigurationError(f"config must be a TokenBucketConfig, got {config!r}")
        if (url is None) == (client is None):
            raise ConfigurationError("pass exactly one of url= and client=")
        if not isinstance(limit_in_key, bool):
            raise MisuseError(f"limit_in_key must be True or False, got {limit_in_key!r}")
        self.config = config
        self.layout = Layout(config)
        self.packer = Packer(prefix, self.layout, limit_in_key)
        self.prefix = prefix
        self._owns_client = client is None
        if client is None:
            if isinstance(url, str) and "+cluster://" in url:
                _check_cluster_options(self.lib, client_options)  # before it connects
            with boundary:  # redis-py's sync cluster client connects here: its errors become ours
                client = client_for_url(self.lib, url, connect_timeout, timeout, **client_options)  # type: ignore[arg-type]
            _check_options(client, client_options)
        elif client_options:
            raise ConfigurationError(
                f"client options ({', '.join(sorted(client_options))}) go to the client you pass, not here")
        else:
            _check_client(self.lib, client, type(self).__name__)
        self.client = client
        #: Standalone and Sentinel: our own wires, taken from the client's
        #: pool and spoken to with pre-packed commands (redis-py's generic
        #: command path costs more than the script). Cluster: each call
        #: goes straight to its slot's primary on a wire of ours, and
        #: redis-py's client serves what that path cannot (MOVED, ASK,
        #: NOSCRIPT, a node down).
        self.direct = not is_cluster(client)
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

    # --- plans --------------------------------------------------------------

    def plan_call(self, name: str, key: str, *extra: bytes) -> Tuple[List[Call], bytes]:
        """One script call on one key: the call, and its packed bytes."""
        keys = [self.packer.key(key)]
        return [(name, keys, extra)], self.packer.command(name, keys, *extra)

    def plan_reserve(self, key: str, tokens: int, needed: int = 1) -> Tuple[List[Call], bytes]:
        """reserve.lua: up to ``tokens``, nothing unless ``needed`` fit."""
        return self.plan_call("reserve", key, self.packer.wanted(tokens), self.packer.cost(needed))

    def plan_peek(self, key: str, cost: int) -> Tuple[List[Call], bytes]:
        return self.plan_call("peek", key, self.packer.peek_cost(cost))

    def plan_release(self, key: str, tokens: int, now_us: int, ahead_ticks: int) -> Tuple[List[Call], bytes]:
        return self.plan_call("release", key, b"%d" % tokens, b"%d" % now_us, b"%d" % ahead_ticks)

    def pack_many(self, keys: Sequence[str], cost: Any) -> Tuple[int, int, bytes]:
        """take_many on one server: (cost, script calls, their packed bytes),
        one call per ``chunk`` keys, in order."""
        keys = check_keys(keys)
        packer, size = self.packer, self.chunk
        c = packer.cost(cost)
        calls = [packer.take_keys(keys[i:i + size], c) for i in range(0, len(keys), size)]
        return int(c), len(calls), b"".join(calls)

    def plan_take_many(
        self, keys: Sequence[str], cost: Any
    ) -> Tuple[int, List[List[int]], List[Call], List[int]]:
        """take_many on a cluster: (cost, positions per call, calls, their
        slots), never two slots in one call."""
        keys = check_keys(keys)
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

    def take_call(self, key: str, cost: int) -> Call:
        """take for one key as a call for redis-py's cluster client."""
        return ("take", [self.packer.key(key)], (self.packer.cost(cost),))

    @staticmethod
    def call_slot(calls: Sequence[Call]) -> List[int]:
        return [key_slot(calls[0][1][0])]

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

    def primary(self, slot: int) -> Any:
        """The slot's primary node in the cluster client's map, or None."""
        nodes = self.client.nodes_manager.slots_cache.get(slot)
        return nodes[0] if nodes else None

    # --- decisions on replies ----------------------------------------------

    @staticmethod
    def usable(replies: Sequence[Any], reloaded: bool) -> bool:
        """After a batch of replies from our own wires: True when they can
        be used; False when a NOSCRIPT asks to load the scripts and send
        once more (only once: ``reloaded``). Any other error is raised."""
        error = first_error(replies)
        if error is None:
            return True
        if isinstance(error, rex.NoScriptError) and not reloaded:
            return False
        raise error

    @staticmethod
    def routed_reply(reply: Any) -> bool:
        """A reply on our path to a cluster node: True when it is the
        answer, False when redis-py's cluster client must take the call
        over (MOVED, ASK, NOSCRIPT). An error about our data, or a node
        that cannot serve now (CLUSTERDOWN, LOADING, TRYAGAIN), is raised:
        redis-py would sleep and retry, past the check's deadline."""
        if not redirected(reply):
            if isinstance(reply, Exception):
                raise reply
            return True
        if isinstance(reply, _UNSERVED):
            raise reply
        return False

    @staticmethod
    def noscript(replies: Sequence[Any]) -> List[int]:
        """The calls redis-py's cluster client must send again as EVAL."""
        return [i for i, r in enumerate(replies) if isinstance(r, rex.NoScriptError)]

    @staticmethod
    def checked(replies: List[Any]) -> List[Any]:
        """``replies``, or the first error among them raised."""
        error = first_error(replies)
        if error is not None:
            raise error
        return replies

    @staticmethod
    def retries(replies: Sequence[Any], again: List[int]) -> List[int]:
        """The calls (by position) for redis-py's cluster client: ``again``
        (no answer on our path) and those redirected. An error about our
        data is raised."""
        for i, reply in enumerate(replies):
            if isinstance(reply, _UNSERVED):
                raise reply
            if redirected(reply):
                again.append(i)
            elif isinstance(reply, Exception):
                raise reply
        return sorted(again)

    # --- Redis Cluster: the slot map after a failed primary ---------------

    #: Seconds between two background refreshes of the slot map.
    remap_interval = 0.5
    _remapping = False
    _remap_after = 0.0

    def remap_due(self) -> bool:
        """A primary failed on our path: refresh the slot map (a failover
        may have moved its slots) unless a refresh runs or ran just now.
        The check that failed is not retried: it has had its timeout."""
        now = time.monotonic()
        if self._remapping or now < self._remap_after:
            return False
        self._remapping = True
        self._remap_after = now + self.remap_interval
        return True

    # --- decoding -------------------------------------------------------------

    def seconds(self, reserved: Reserved) -> Tuple[int, int, float, float]:
        tps = self.layout.ticks_per_second
        return reserved[0], reserved[1], reserved[2] / tps, reserved[3] / tps

    def assemble(self, n: int, plan: List[List[int]], replies: List[Any], cost: int) -> List[Any]:
        """One LimitResult per key, in the caller's order."""
        out: List[Any] = [None] * n
        results = self.layout.results
        for positions, reply in zip(plan, replies):
            for pos, result in zip(positions, results([reply], cost, len(positions))):
                out[pos] = result
        return out


def _check_client(lib: ModuleType, client: Any, backend: str) -> None:
    """A client of the other kind (sync for async) would fail every call,
    and a fail-open limiter would then admit every check: refused now."""
    execute = getattr(client, "execute_command", None)
    if execute is None:
        raise MisuseError(f"client must be a redis-py client ({lib.__name__}.Redis, RedisCluster or a "
                          f"Sentinel master_for(...)), got {type(client).__name__}")
    wants_async = lib.__name__.endswith("asyncio")
    if inspect.iscoroutinefunction(execute) != wants_async:
        raise MisuseError(
            f"{backend} needs a {'redis.asyncio' if wants_async else 'synchronous redis'} client, got "
            f"{type(client).__module__}.{type(client).__name__}"
            + (" (use the Async backend for redis.asyncio clients)" if not wants_async else
               " (use the synchronous backend with RateLimiter for redis.Redis clients)"))


def _check_options(client: Any, options: Dict[str, Any]) -> None:
    """Options redis-py would only refuse on the first connection (a typo
    such as ``timout=``) are refused now: a connection object is built,
    not connected."""
    if not options or not hasattr(client, "connection_pool"):
        return
    pool = client.connection_pool
    try:
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        raise MisuseError(f"unknown Redis client option: {exc}") from exc


def _check_cluster_options(lib: ModuleType, options: Dict[str, Any]) -> None:
    """A cluster client connects when it is built: refuse unknown options
    (by the names its classes take) before that."""
    if not options:
        return
    known = set()
    for cls in (lib.RedisCluster, lib.Redis, lib.connection.AbstractConnection, lib.connection.Connection):
        known |= set(inspect.signature(cls.__init__).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise MisuseError(f"unknown Redis client option: {', '.join(unknown)}")
