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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import hiredis
import redis.exceptions as rex
from redis.crc import key_slot

from .._args import check_cost, check_key, check_keys
from .._config import Limits, TokenBucketConfig, as_limits
from .._errors import (
    BackendConfigError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidArgumentError,
    MisuseError,
    RateLimitError,
)
from .._result import LimitResult
from ._redis_scripts import Layout, Packer, Reserved, malformed, resp_bulk
from .memory import LimitsResult
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
    #: With Limits: one backend of the same class per limit (usage, reset, peek).
    each: Tuple[Any, ...] = ()

    def __init__(
        self,
        config: Union[TokenBucketConfig, Limits, str],
        url: Optional[str] = None,
        *,
        client: Any = None,
        prefix: str = "guardian",
        connect_timeout: float = 0.25,
        timeout: float = 0.25,
        limit_in_key: bool = True,
        **client_options: Any,
    ) -> None:
        given = as_limits(config)  # a config, Limits, or the notation of either
        if (url is None) == (client is None):
            raise ConfigurationError("pass exactly one of url= and client=")
        if not isinstance(limit_in_key, bool):
            raise MisuseError(f"limit_in_key must be True or False, got {limit_in_key!r}")
        limits = given if isinstance(given, Limits) else None
        if limits is not None and not limit_in_key:
            raise MisuseError(
                "limit_in_key=False puts every limit of a prefix in one bucket; several limits "
                "need a bucket each: keep limit_in_key=True (or use another prefix)")
        self.config: Any = given
        self.limits = limits
        self.layout = Layout(given[0] if isinstance(given, Limits) else given)
        self.packer = Packer(prefix, self.layout, limit_in_key)
        if limits is not None:
            #: Limit i's bucket of a key is ``prefix:<limit i>:{key}``: the
            #: same hash tag, so every limit of a key is in one slot (and is
            #: the bucket a one-limit backend of that limit uses).
            self.layouts = tuple(Layout(c) for c in limits)
            self.packers = tuple(Packer(prefix, lay) for lay in self.layouts)
            self._rest_argv = tuple(a for lay in self.layouts[1:] for a in lay.argv)
            # take_all's packed EVALSHA around the keys: every check formats
            # only its key into these (as Packer.take1 does for one limit).
            n = len(limits)
            sha = self.packer.scripts["take_all"].sha.encode()
            self._all_head = b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (3 + n + 1 + 3 * n, resp_bulk(sha), resp_bulk(b"%d" % n))
            self._all_prefixes = tuple(p.prefix for p in self.packers)
            self._all_argv0 = b"".join(resp_bulk(a) for a in self.layout.argv)
            self._all_rest = b"".join(resp_bulk(a) for a in self._rest_argv)
            self._all_tail1 = self._all_argv0 + resp_bulk(b"1") + self._all_rest
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
        if limits is not None:
            # One backend per limit on the same client, for what is not a
            # take (usage, reset, peek: a call per limit is exact there).
            self.each = tuple(type(self)(c, client=client, prefix=prefix) for c in limits)
            for name in ("take", "try_take", "take_many", "usage", "reset", "peek"):
                setattr(self, name, getattr(self, f"_{name}_all"))
            for name in ("reserve_tokens", "release_tokens", "reserve"):
                setattr(self, name, self._no_lease)

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

    def plan_take_all(self, key: str, cost: Any) -> Tuple[List[Call], bytes, List[int]]:
        """take_all.lua over the buckets of every limit of ``key`` (one
        hash slot): the call, its packed bytes and its slot."""
        c = b"%d" % check_cost(cost, self.limits.capacity)  # type: ignore[union-attr]
        keys = [p.key(key) for p in self.packers]
        slots = {key_slot(k) for k in keys}
        if len(slots) != 1:  # a key starting with "}": no hash tag, each bucket its own slot
            raise InvalidArgumentError(
                f"with several limits a key must not start with '}}' (its buckets would not share "
                f"a Redis Cluster hash slot), got {key!r}")
        extra = (c, *self._rest_argv)
        return [("take_all", keys, extra)], self.packer.command("take_all", keys, *extra), list(slots)

    def take_all_call(self, key: str, cost: int) -> Call:
        """take_all for one key as a call for redis-py's cluster client."""
        return self.plan_take_all(key, cost)[0][0]

    def pack_take_all(self, key: str, cost: Any) -> bytes:
        """plan_take_all's packed bytes, built for speed (the hot path of a
        single server), with the same checks."""
        data = check_key(key)
        if data[:1] == b"}":
            self.plan_take_all(key, cost)  # raises the error about the hash slot
        if cost == 1 and type(cost) is int:
            tail = self._all_tail1
        else:
            tail = self._all_argv0 + resp_bulk(b"%d" % check_cost(cost, self.limits.capacity)) + self._all_rest  # type: ignore[union-attr]
        extra = len(data) + 1
        keys = b"".join(b"$%d\r\n%b%b}\r\n" % (len(p) + extra, p, data) for p in self._all_prefixes)
        return self._all_head + keys + tail

    def admitted_all(self, reply: Any) -> bool:
        """take_all.lua's verdict alone (try_take), the reply checked."""
        if type(reply) is not list or len(reply) != 1 + 3 * len(self.layouts) or type(reply[0]) is not int \
                or not 0 <= reply[0] <= len(self.layouts):
            raise malformed(reply)
        return reply[0] == 0

    def decode_all(self, reply: Any) -> LimitsResult:
        """take_all.lua's reply as a LimitsResult (like MemoryBackend.take_detail)."""
        layouts = self.layouts
        n = len(layouts)
        if type(reply) is not list or len(reply) != 1 + 3 * n or any(type(v) is not int for v in reply) \
                or not 0 <= reply[0] <= n:
            raise malformed(reply)
        results = []
        for i, lay in enumerate(layouts):
            remaining, retry, reset = reply[1 + 3 * i: 4 + 3 * i]
            if remaining < 0 or retry < 0 or reset < 0:
                raise malformed(reply)
            tps = lay.ticks_per_second
            results.append(LimitResult(retry == 0, remaining, retry / tps, reset / tps, lay.capacity))
        return combine(results, reply[0] - 1 if reply[0] else None, self.limits)

    def no_lease(self) -> MisuseError:
        return MisuseError(
            f"{type(self).__name__} with several limits has no leases (reserve/release): "
            f"use a backend per limit for batched leases")

    def _no_lease(self, *args: Any, **kwargs: Any) -> Any:
        raise self.no_lease()

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


def combine(results: Sequence[LimitResult], denied_by: Optional[int], limits: Any) -> LimitsResult:
    """Each limit's answer as one LimitsResult, as MemoryBackend.take_detail
    makes it: admitted, the tightest limit speaks for the rest; denied, the
    limit with the longest wait gives retry_after."""
    reset = max(r.reset_after for r in results)
    if denied_by is None:
        tight = min(results, key=lambda r: r.remaining)
        return LimitsResult(LimitResult(True, tight.remaining, 0.0, reset, tight.limit), None, None, tuple(results))
    deny = results[denied_by]
    one = LimitResult(False, min(r.remaining for r in results), deny.retry_after, reset, deny.limit)
    return LimitsResult(one, denied_by, limits[denied_by], tuple(results))


def peek_all(results: Sequence[LimitResult], limits: Any) -> LimitResult:
    """Each limit's peek as one answer (the longest wait denies)."""
    if all(r.allowed for r in results):
        return combine(results, None, limits).result
    waits = [r.retry_after if not r.allowed else -1.0 for r in results]
    return combine(results, waits.index(max(waits)), limits).result


def usage_all(used: Sequence[int], limits: Any) -> int:
    """Tokens in use of the limit with the fewest tokens left (as MemoryBackend)."""
    return min(zip((c.capacity - u for c, u in zip(limits, used)), used))[1]


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
