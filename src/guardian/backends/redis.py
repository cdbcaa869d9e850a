"""RedisBackend: buckets in Redis, decided by Lua scripts on the server's
clock. Only the I/O lives here; see _redis_client / _redis_proto."""

from __future__ import annotations

import socket
import struct
from itertools import chain
from typing import Any, List, Optional, Sequence, Tuple

import hiredis
import redis
import redis.exceptions as rex
from redis._parsers import BaseParser
from redis.crc import key_slot

from .._result import LimitResult
from ._redis_client import Call, RedisCommon, boundary, first_error, redirected

__all__ = ["RedisBackend"]

class _Wire:
    """One connection of ours. redis-py opens it (TCP, TLS or unix socket,
    AUTH, SELECT, Sentinel's master lookup); then we speak on its socket
    with our own hiredis reader: redis-py's command path costs more than
    the script. A plain socket gets its timeout from the kernel
    (SO_RCVTIMEO/SO_SNDTIMEO) instead of a poll() before every read."""

    __slots__ = ("conn", "sock", "reader")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        conn.connect()
        self.sock = sock = conn._sock
        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        timeout = sock.gettimeout()
        if type(sock) is socket.socket and timeout is not None:
            whole = int(timeout)
            tv = struct.pack("ll", whole, int((timeout - whole) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            sock.settimeout(None)

    def exchange(self, packed: bytes) -> Any:
        """Sends ``packed`` (may be empty) and reads one reply."""
        if packed:
            self.sock.sendall(packed)
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            data = self.sock.recv(65536)
            if not data:
                raise rex.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    def close(self) -> None:
        self.conn.disconnect()


class RedisBackend(RedisCommon):
    """Token buckets in Redis (single server, Sentinel or Cluster).

    ``RedisBackend(config, url="redis://localhost:6379/0")``, or
    ``client=`` an existing ``redis.Redis`` / ``RedisCluster`` (Sentinel:
    ``Sentinel(...).master_for(name)``). Keys are ``{prefix}:{<key>}``.
    ``connect_timeout`` and ``timeout`` (seconds, 0.25 by default) apply
    to clients built from a URL; further keyword arguments go to that
    client. URLs: see guardian.backends._redis_client.
    """

    lib = redis

    # --- I/O ------------------------------------------------------------------

    def _wire(self) -> _Wire:
        try:
            wire: _Wire = self._idle.pop()
            return wire
        except IndexError:
            return _Wire(self._pool.make_connection())  # type: ignore[union-attr]

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
        wire = self._wire()
        try:
            reply = wire.exchange(packed)
        except BaseException as exc:
            self._discard(wire, exc)
            raise
        self._idle.append(wire)
        if isinstance(reply, Exception):
            return self._exchange(packed, 1, reply)[0]
        return reply

    def _send(self, packed: bytes, count: int) -> List[Any]:
        wire = self._wire()
        try:
            replies = [wire.exchange(packed)] + [wire.exchange(b"") for _ in range(count - 1)]
        except BaseException as exc:
            self._discard(wire, exc)
            raise
        self._idle.append(wire)
        return replies

    def _exchange(self, packed: bytes, count: int, error: Optional[Exception] = None) -> List[Any]:
        """Sends ``count`` pre-packed commands at once and reads their
        replies. A NOSCRIPT (cache flushed, restart, failover) loads the
        scripts and sends once more; other error replies are raised."""
        if error is None:
            replies = self._send(packed, count)
            error = first_error(replies)
            if error is None:
                return replies
        if not isinstance(error, rex.NoScriptError):
            raise error
        for script in self.packer.scripts.values():
            self.client.script_load(script.source)
        replies = self._send(packed, count)
        error = first_error(replies)
        if error is not None:
            raise error
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
        for i, reply in enumerate(replies):
            if isinstance(reply, rex.NoScriptError):
                name, keys, extra = calls[i]
                replies[i] = client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))
        error = first_error(replies)
        if error is not None:
            raise error
        return list(replies)

    # --- Redis Cluster: straight to each slot's primary ------------------

    def _node_wire(self, node: Any) -> _Wire:
        idle = self._nodes.get(node.name)
        if idle:
            wire: _Wire = idle.pop()
            return wire
        return _Wire(node.redis_connection.connection_pool.make_connection())

    def _drop_node(self, name: str, wire: Optional[_Wire]) -> None:
        """A node's connection failed: close it and the node's idle ones."""
        if wire is not None:
            wire.close()
        for other in self._nodes.pop(name, []):
            other.close()

    def _route_one(self, packed: bytes, slot: int, key: str, cost: int) -> Any:
        """The cluster's hot path: one packed call on a wire of the slot's
        primary; anything unusual goes through redis-py's cluster client."""
        nodes = self.client.nodes_manager.slots_cache.get(slot)
        if nodes:
            node = nodes[0]
            wire = None
            try:
                wire = self._node_wire(node)
                reply = wire.exchange(packed)
            except (OSError, rex.ConnectionError, rex.TimeoutError):
                self._drop_node(node.name, wire)
            else:
                self._nodes.setdefault(node.name, []).append(wire)
                if not redirected(reply):
                    if isinstance(reply, Exception):
                        raise reply
                    return reply
        return self._via_client([("take", [self.packer.key(key)], (self.packer.cost(cost),))])[0]

    def _routed(self, calls: Sequence[Call], slots: Sequence[int]) -> List[Any]:
        """Many calls: every node's calls are written before any reply is
        read, so the nodes work at once. The calls that fail on our path
        go through redis-py's cluster client (which follows MOVED/ASK and
        failovers and refreshes the slot map both paths read)."""
        by_node, again = self.route(slots)
        packer = self.packer
        replies: List[Any] = [None] * len(calls)
        sent = []
        for name, (node, positions) in by_node.items():
            wire = None
            try:
                wire = self._node_wire(node)
                wire.sock.sendall(b"".join(packer.command(calls[i][0], calls[i][1], *calls[i][2]) for i in positions))
            except (OSError, rex.ConnectionError, rex.TimeoutError):
                self._drop_node(name, wire)
                again.extend(positions)
            else:
                sent.append((name, wire, positions))
        for name, wire, positions in sent:
            try:
                for n, i in enumerate(positions):
                    replies[i] = wire.exchange(b"")
            except (OSError, rex.ConnectionError, rex.TimeoutError):
                self._drop_node(name, wire)
                again.extend(positions[n:])
            else:
                self._nodes.setdefault(name, []).append(wire)
        again = self.retries(replies, again)
        if again:
            for i, reply in zip(again, self._via_client([calls[i] for i in again])):
                replies[i] = reply
        return replies

    def _run(self, calls: List[Call], packed: bytes, slots: Optional[Sequence[int]] = None) -> List[Any]:
        with boundary:
            if self.direct:
                return self._exchange(packed, len(calls))
            return self._routed(calls, slots or [key_slot(calls[0][1][0])])

    # --- the Backend protocol ---------------------------------------------

    def take(self, key: str, cost: int = 1) -> LimitResult:
        packed = self.packer.take(key, cost)
        with boundary:
            reply = self._one(packed) if self.direct else self._route_one(packed, self.packer.slot(key), key, cost)
        return self.layout.result(reply[0], cost)

    def try_take(self, key: str, cost: int = 1) -> bool:
        packed = self.packer.take(key, cost)
        with boundary:
            reply = self._one(packed) if self.direct else self._route_one(packed, self.packer.slot(key), key, cost)
        return reply[0] > 0  # type: ignore[no-any-return]

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        if self.direct:
            c, count, packed = self.pack_many(keys, cost)
            if not count:
                return []
            with boundary:
                replies = self._exchange(packed, count)
            return self.layout.results(chain.from_iterable(replies), c)
        c, plan, calls, slots = self.plan_take_many(keys, cost)
        return self.assemble(len(keys), plan, self._run(calls, b"", slots), c) if calls else []

    def usage(self, key: str) -> int:
        return int(self._run(*self.plan_call("usage", key))[0])

    def reset(self, key: str) -> None:
        self._run(*self.plan_call("reset", key))

    def reserve(self, key: str, tokens: int) -> Tuple[int, int, float, float]:
        """Takes up to ``tokens`` from the bucket, as many as it holds:
        (granted, remaining, retry_after_s, reset_after_s)."""
        return self.reserved(self._run(*self.plan_call("reserve", key, self.packer.wanted(tokens)))[0])

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for wire in idle:
            wire.close()
        for name in list(self._nodes):
            self._drop_node(name, None)
        if self._owns_client:
            self.client.close()
        for sentinel in self.sentinels():
            sentinel.close()
