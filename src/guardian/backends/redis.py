"""RedisBackend: buckets in Redis, decided by Lua scripts on the server's
clock. Only the I/O lives here; see _redis_common / _redis_scripts."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import hiredis
import redis
import redis.exceptions as rex
from redis._parsers import BaseParser

from .._result import LimitResult
from ._redis_common import Call, RedisCommon, Reserved, boundary, peek_all, usage_all
from ._redis_scripts import malformed
from .memory import LimitsResult

__all__ = ["RedisBackend"]

class ClosedByServer(rex.ConnectionError):
    """The server closed a connection we held (a restart, CLIENT KILL, an
    idle timeout): nothing about the server's health, so a check that met
    it on a reused connection tries once more on a fresh one."""


def _stale(exc: BaseException) -> bool:
    """A reused connection that the server had closed, as opposed to a
    timeout (a hung server: one deadline per check, no second try)."""
    return isinstance(exc, (ClosedByServer, ConnectionResetError, BrokenPipeError, ConnectionAbortedError))


class _Wire:
    """One connection of ours, taken from a redis-py pool with
    ``get_connection`` (which opens it: TCP, TLS or unix socket, AUTH,
    SELECT, Sentinel's master lookup) and always handed back with
    ``release``, so the pool's count of connections stays true however
    often a server goes away. We speak on its socket with our own hiredis
    reader: redis-py's command path costs more than the script. A plain
    socket gets its timeout from the kernel (SO_RCVTIMEO/SO_SNDTIMEO)
    instead of a poll() before every read."""

    __slots__ = ("pool", "conn", "sock", "reader")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn = conn = pool.get_connection()  # released by the pool itself if it fails
        try:
            self.sock = sock = conn._sock
            self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
            timeout = sock.gettimeout()
            if type(sock) is socket.socket and timeout is not None:
                whole = int(timeout)
                tv = struct.pack("ll", whole, int((timeout - whole) * 1e6))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
                sock.settimeout(None)
        except BaseException:
            self.close()
            raise

    def exchange(self, packed: bytes) -> Any:
        """Sends ``packed`` (may be empty) and reads one reply."""
        if packed:
            self.sock.sendall(packed)
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            data = self.sock.recv(65536)
            if not data:
                raise ClosedByServer("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    def close(self) -> None:
        """Closes the socket and gives the connection back to its pool
        (disconnected: the pool reconnects it when it is next used)."""
        try:
            self.conn.disconnect()
        finally:
            self.pool.release(self.conn)


class RedisBackend(RedisCommon):
    """Token buckets in Redis (single server, Sentinel or Cluster).

    ``RedisBackend(config, url="redis://localhost:6379/0")``, or
    ``client=`` an existing ``redis.Redis`` / ``RedisCluster`` (Sentinel:
    ``Sentinel(...).master_for(name)``). Keys are
    ``{prefix}:c<capacity>:t<T>:{<key>}``: the limit is part of the key, so
    two limits never share a bucket; ``limit_in_key=False`` makes the key
    ``{prefix}:{<key>}``, shared on purpose by every config on the prefix.
    ``connect_timeout`` and ``timeout`` (seconds, 0.25 by default) apply
    to clients built from a URL; further keyword arguments go to that
    client (see guardian.backends.redis_url for the URLs). Connections
    come from the client's pool (``max_connections`` bounds them).
    """

    lib = redis

    # --- I/O ------------------------------------------------------------------

    def _wire(self) -> _Wire:
        try:
            wire: _Wire = self._idle.pop()
            return wire
        except IndexError:
            return _Wire(self._pool)

    def _discard(self, wire: _Wire, exc: BaseException) -> None:
        """A wire that failed mid-exchange is out of step: close it. When
        the server went away, the idle ones are dead too: close them now
        rather than fail once on each after it returns."""
        wire.close()
        if isinstance(exc, (OSError, rex.ConnectionError, rex.TimeoutError)):
            idle, self._idle = self._idle, []
            for other in idle:
                other.close()

    def _one(self, packed: bytes) -> Any:
        """The hot path: one pre-packed command on an idle wire, one reply."""
        reused = bool(self._idle)
        wire = self._wire()
        try:
            reply = wire.exchange(packed)
        except BaseException as exc:
            self._discard(wire, exc)  # closes the idle ones too: the retry opens a fresh wire
            if reused and _stale(exc):
                return self._one(packed)
            raise
        self._idle.append(wire)
        if isinstance(reply, Exception):
            return self._exchange(packed, 1, [reply])[0]
        return reply

    def _send(self, packed: bytes, count: int) -> List[Any]:
        reused = bool(self._idle)
        wire = self._wire()
        try:
            replies = [wire.exchange(packed)] + [wire.exchange(b"") for _ in range(count - 1)]
        except BaseException as exc:
            self._discard(wire, exc)
            if reused and _stale(exc):
                return self._send(packed, count)
            raise
        self._idle.append(wire)
        return replies

    def _exchange(self, packed: bytes, count: int, replies: Optional[List[Any]] = None) -> List[Any]:
        """Sends ``count`` pre-packed commands at once and reads their
        replies (or takes ``replies`` already read); see ``usable``."""
        if replies is None:
            replies = self._send(packed, count)
        if not self.usable(replies, reloaded=False):
            self.checked(self._send(*self.packer.load_scripts()))
            replies = self._send(packed, count)
            self.usable(replies, reloaded=True)
        return replies

    def _via_client(self, calls: Sequence[Call]) -> List[Any]:
        """Cluster: the client routes each call to its slot's node (and
        follows MOVED/ASK); NOSCRIPT falls back to EVAL with the source."""
        packer, client = self.packer, self.client
        pipe = client.pipeline(transaction=False) if len(calls) > 1 else client
        replies = []
        for name, keys, extra in calls:
            try:
                replies.append(pipe.execute_command("EVALSHA", *packer.args(name, keys, *extra)))
            except rex.NoScriptError as exc:
                replies.append(exc)
        if pipe is not client:
            replies = pipe.execute(raise_on_error=False)
        for i in self.noscript(replies):
            name, keys, extra = calls[i]
            replies[i] = client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))
        return self.checked(list(replies))

    # --- Redis Cluster: straight to each slot's primary ------------------

    def _node_wire(self, node: Any) -> _Wire:
        idle = self._nodes.get(node.name)
        if idle:
            wire: _Wire = idle.pop()
            return wire
        return _Wire(node.redis_connection.connection_pool)

    def _drop_node(self, name: str, wire: Optional[_Wire]) -> None:
        """A node's connection failed: close it and the node's idle ones."""
        if wire is not None:
            wire.close()
        for other in self._nodes.pop(name, []):
            other.close()

    def _route_one(self, packed: bytes, slot: int, key: str, cost: int,
                   call_of: Optional[Callable[[str, int], Call]] = None) -> Any:
        """The cluster's hot path: one packed call on a wire of the slot's
        primary; anything unusual goes through redis-py's cluster client."""
        node = self.primary(slot)
        if node is not None:
            wire = None
            reused = bool(self._nodes.get(node.name))
            try:
                wire = self._node_wire(node)
                reply = wire.exchange(packed)
            except (OSError, rex.ConnectionError, rex.TimeoutError) as exc:
                # One deadline per check: no second try (it would find the
                # same dead or hung primary until a failover is mapped),
                # except on a fresh wire when the node had closed a reused one.
                self._drop_node(node.name, wire)
                if reused and _stale(exc):
                    return self._route_one(packed, slot, key, cost, call_of)
                self._remap()
                raise
            self._nodes.setdefault(node.name, []).append(wire)
            if self.routed_reply(reply):
                return reply
        return self._via_client([(call_of or self.take_call)(key, cost)])[0]

    def _remap(self) -> None:
        """Refreshes the cluster client's slot map in a thread, so the next
        check (the breaker's probe) finds a promoted replica."""
        if self.remap_due():
            threading.Thread(target=self._remap_now, name="guardian-cluster-map", daemon=True).start()

    def _remap_now(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except Exception:  # no node answers: the next failed check tries again
            pass
        finally:
            self._remapping = False

    def _routed(self, calls: Sequence[Call], slots: Sequence[int]) -> List[Any]:
        """Many calls: every node's calls are written before any reply is
        read, so the nodes work at once. The calls that fail on our path
        go through redis-py's cluster client (which follows MOVED/ASK and
        failovers and refreshes the slot map both paths read)."""
        by_node, again = self.route(slots)
        replies: List[Any] = [None] * len(calls)
        failed: Optional[BaseException] = None
        stale = []
        for name, node, positions, exc, reused in self._routed_round(calls, by_node, replies):
            if reused and _stale(exc):
                stale.append((name, (node, positions)))
            else:
                failed = exc
        # Once more, on fresh wires, for nodes that had closed a reused one.
        # A call whose reply was lost may run twice: that takes tokens twice
        # (under-admits), never admits more than the bucket.
        if stale and failed is None:
            for name, node, positions, exc, _ in self._routed_round(calls, dict(stale), replies):
                failed = exc
        if failed is not None:  # one deadline: the calls are not retried (see _route_one)
            self._remap()
            raise failed
        again = self.retries(replies, again)
        if again:
            for i, reply in zip(again, self._via_client([calls[i] for i in again])):
                replies[i] = reply
        return replies

    def _routed_round(self, calls: Sequence[Call], by_node: Dict[str, Any],
                      replies: List[Any]) -> List[Tuple[str, Any, List[int], BaseException, bool]]:
        """Writes every node's calls, then reads their replies into
        ``replies``; returns the nodes that failed, with the error and
        whether their wire was a reused one."""
        packer = self.packer
        sent = []
        failures: List[Tuple[str, Any, List[int], BaseException, bool]] = []
        for name, (node, positions) in by_node.items():
            wire = None
            reused = bool(self._nodes.get(name))
            try:
                wire = self._node_wire(node)
                wire.sock.sendall(b"".join(packer.command(calls[i][0], calls[i][1], *calls[i][2]) for i in positions))
            except (OSError, rex.ConnectionError, rex.TimeoutError) as exc:
                self._drop_node(name, wire)
                failures.append((name, node, positions, exc, reused))
            else:
                sent.append((name, node, wire, positions, reused))
        for name, node, wire, positions, reused in sent:
            try:
                for i in positions:
                    replies[i] = wire.exchange(b"")
            except (OSError, rex.ConnectionError, rex.TimeoutError) as exc:
                self._drop_node(name, wire)
                failures.append((name, node, positions, exc, reused))
            else:
                self._nodes.setdefault(name, []).append(wire)
        return failures

    def _run(self, calls: List[Call], packed: bytes, slots: Optional[Sequence[int]] = None) -> List[Any]:
        with boundary:
            if self.direct:
                return self._exchange(packed, len(calls))
            return self._routed(calls, slots or self.call_slot(calls))

    # --- the Backend protocol ---------------------------------------------

    def take(self, key: str, cost: int = 1) -> LimitResult:
        packed = self.packer.take(key, cost)
        with boundary:
            reply = self._one(packed) if self.direct else self._route_one(packed, self.packer.slot(key), key, cost)
            return self.layout.result(self.layout.one(reply), cost)

    def try_take(self, key: str, cost: int = 1) -> bool:
        packed = self.packer.take(key, cost)
        with boundary:
            reply = self._one(packed) if self.direct else self._route_one(packed, self.packer.slot(key), key, cost)
            v = reply[0] if type(reply) is list and len(reply) == 1 else None
            if type(v) is not int:
                raise malformed(reply)
            return v > 0

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        if self.direct:
            c, count, packed = self.pack_many(keys, cost)
            if not count:
                return []
            with boundary:
                replies = self._exchange(packed, count)
                return self.layout.results(replies, c, len(keys))
        c, plan, calls, slots = self.plan_take_many(keys, cost)
        if not calls:
            return []
        replies = self._run(calls, b"", slots)
        with boundary:
            return self.assemble(len(keys), plan, replies, c)

    def usage(self, key: str) -> int:
        reply = self._run(*self.plan_call("usage", key))[0]
        with boundary:
            return self.layout.count(reply)

    def reset(self, key: str) -> None:
        self._run(*self.plan_call("reset", key))

    def peek(self, key: str, cost: int = 1) -> LimitResult:
        """What ``take(key, cost)`` would answer now, without taking;
        ``cost=0`` reads the bucket as it is."""
        reply = self._run(*self.plan_peek(key, cost))[0]
        with boundary:
            return self.layout.peeked(reply)

    def reserve_tokens(self, key: str, tokens: int, needed: int = 1) -> Reserved:
        """Takes up to ``tokens`` from the bucket, as many as it holds but
        none unless ``needed`` fit, for a lease (reserve.lua's reply: see
        Reserved; a refusal's retry is for ``needed``)."""
        reply = self._run(*self.plan_reserve(key, tokens, needed))[0]
        with boundary:
            return self.layout.reserved(reply)

    def release_tokens(self, key: str, tokens: int, now_us: int, ahead_ticks: int) -> int:
        """Gives back up to ``tokens`` of the reservation made at ``now_us``
        whose TAT lay ``ahead_ticks`` ahead (release.lua); the tokens returned."""
        reply = self._run(*self.plan_release(key, tokens, now_us, ahead_ticks))[0]
        with boundary:
            return self.layout.count(reply[0])

    def reserve(self, key: str, tokens: int) -> Tuple[int, int, float, float]:
        """Takes up to ``tokens`` from the bucket, as many as it holds:
        (granted, remaining, retry_after_s, reset_after_s)."""
        return self.seconds(self.reserve_tokens(key, tokens))

    # --- several limits on one key (Limits): one take_all.lua per check ----

    def take_detail(self, key: str, cost: int = 1) -> LimitsResult:
        """The check of ``take``, with which limit denied it (the one with
        the longest wait) and each limit's own answer."""
        if self.limits is None:
            r = self.take(key, cost)
            return LimitsResult(r, None if r.allowed else 0, None if r.allowed else self.config, (r,))
        reply = self._take_all_reply(key, cost)
        with boundary:
            return self.decode_all(reply)

    def _take_all_reply(self, key: str, cost: int) -> Any:
        """take_all.lua's reply for ``key``: on one server pre-packed on
        the hot path, on a cluster through its slot's primary."""
        if self.direct:
            packed = self.pack_take_all(key, cost)
            with boundary:
                return self._one(packed)
        packed = self.pack_take_all(key, cost)
        with boundary:
            return self._route_one(packed, self.packer.slot(key), key, cost, self.take_all_call)

    def _take_all(self, key: str, cost: int = 1) -> LimitResult:
        return self.take_detail(key, cost).result

    def _try_take_all(self, key: str, cost: int = 1) -> bool:
        reply = self._take_all_reply(key, cost)
        with boundary:
            return self.admitted_all(reply)

    def _take_many_all(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        return [self.take_detail(k, cost).result for k in list(keys)]

    def _usage_all(self, key: str) -> int:
        return usage_all([b.usage(key) for b in self.each], self.limits)

    def _reset_all(self, key: str) -> None:
        for b in self.each:
            b.reset(key)

    def _peek_all(self, key: str, cost: int = 1) -> LimitResult:
        return peek_all([b.peek(key, cost) for b in self.each], self.limits)

    def close(self) -> None:
        for b in getattr(self, "each", ()):
            b.close()
        idle, self._idle = self._idle, []
        for wire in idle:
            wire.close()
        for name in list(self._nodes):
            self._drop_node(name, None)
        if self._owns_client:
            self.client.close()
        for sentinel in self.sentinels():
            sentinel.close()
