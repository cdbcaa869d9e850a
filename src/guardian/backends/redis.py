"""RedisBackend: buckets in Redis, decided by Lua scripts on the server's
clock. Only the I/O lives here; see _redis_client / _redis_proto."""

from __future__ import annotations

import os
import socket
import struct
import weakref
from typing import Any, List, Optional, Sequence, Tuple

import hiredis
import redis
import redis.exceptions as rex
from redis._parsers import BaseParser

from .._config import TokenBucketConfig
from .._result import LimitResult
from ._redis_client import RedisCommon, boundary

__all__ = ["RedisBackend"]

_live: "weakref.WeakSet[RedisBackend]" = weakref.WeakSet()


def _forget_connections() -> None:
    # A forked child must not speak on its parent's sockets.
    for backend in list(_live):
        backend._idle.clear()


os.register_at_fork(after_in_child=_forget_connections)


class _Wire:
    """One connection of ours. redis-py opens it (TCP, TLS or unix socket,
    AUTH, SELECT, Sentinel's master lookup); then we speak on its socket
    with our own hiredis reader: redis-py's command path costs more than
    the script. A plain socket gets its timeout from the kernel
    (SO_RCVTIMEO/SO_SNDTIMEO) instead of a poll() before every read."""

    __slots__ = ("conn", "sock", "reader", "buf")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        conn.connect()
        self.sock = sock = conn._sock
        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self.buf = bytearray(16384)
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
            n = self.sock.recv_into(self.buf)
            if not n:
                raise rex.ConnectionError("Redis closed the connection")
            reader.feed(self.buf, 0, n)
            reply = reader.gets()
        return reply

    def close(self) -> None:
        self.conn.disconnect()


class RedisBackend(RedisCommon):
    """Token buckets in Redis (single server, Sentinel or Cluster).

    ``RedisBackend(config, url="redis://localhost:6379/0")``, or
    ``client=`` an existing ``redis.Redis`` / ``RedisCluster`` (Sentinel:
    ``Sentinel(...).master_for(name)``). Keys are ``{prefix}:{<key>}``.
    ``connect_timeout`` and ``timeout`` (seconds) apply to clients built
    from a URL; further keyword arguments go to that client.
    """

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
        super().__init__(redis, config, url, client, prefix, connect_timeout, timeout, client_kwargs)
        _live.add(self)

    # --- I/O ------------------------------------------------------------------

    def _wire(self) -> "_Wire":
        try:
            return self._idle.pop()
        except IndexError:
            return _Wire(self._pool.make_connection())  # type: ignore[union-attr]

    def _one(self, packed: bytes) -> Any:
        """Sends one pre-packed command and returns its reply."""
        wire = self._wire()
        try:
            reply = wire.exchange(packed)
        except BaseException:
            wire.close()
            raise
        self._idle.append(wire)
        if type(reply) is list or not isinstance(reply, Exception):
            return reply
        return self._retry_error(reply, packed, 1)[0]

    def _many(self, packed: bytes, count: int) -> List[Any]:
        """Sends ``count`` pre-packed commands at once; their replies."""
        wire = self._wire()
        try:
            replies = [wire.exchange(packed)] + [wire.exchange(b"") for _ in range(count - 1)]
        except BaseException:
            wire.close()
            raise
        self._idle.append(wire)
        for reply in replies:
            if isinstance(reply, Exception):
                return self._retry_error(reply, packed, count)
        return replies

    def _retry_error(self, error: Exception, packed: bytes, count: int) -> List[Any]:
        """A NOSCRIPT (script cache flushed, failover, restart) loads the
        scripts and sends once more; any other error reply is raised."""
        if not isinstance(error, rex.NoScriptError):
            raise error
        self._load_scripts()
        wire = _Wire(self._pool.make_connection())  # type: ignore[union-attr]
        try:
            replies = [wire.exchange(packed)] + [wire.exchange(b"") for _ in range(count - 1)]
        finally:
            wire.close()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _load_scripts(self) -> None:
        for script in self.packer.scripts.values():
            self.client.script_load(script.source)

    def _via_client(self, calls: Sequence[Tuple[str, List[bytes], Tuple[bytes, ...]]]) -> List[Any]:
        """Cluster: the client routes each call to its slot's node."""
        packer, client = self.packer, self.client
        if len(calls) == 1:
            name, keys, extra = calls[0]
            try:
                return [client.execute_command("EVALSHA", *packer.args(name, keys, *extra))]
            except rex.NoScriptError:
                return [client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))]
        pipe = client.pipeline(transaction=False)
        for name, keys, extra in calls:
            pipe.execute_command("EVALSHA", *packer.args(name, keys, *extra))
        replies = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, rex.NoScriptError):
                name, keys, extra = calls[i]
                replies[i] = client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))
            elif isinstance(reply, Exception):
                raise reply
        return list(replies)

    def _call(self, name: str, key: str, *extra: bytes) -> Any:
        keys = [self.packer.key(key)]
        with boundary:
            if self.direct:
                return self._one(self.packer.command(name, keys, *extra))
            return self._via_client([(name, keys, extra)])[0]

    # --- the Backend protocol ---------------------------------------------

    def take(self, key: str, cost: int = 1) -> LimitResult:
        if self.direct:
            packed = self.packer.take(key, cost)
            with boundary:
                reply = self._one(packed)
            return self.layout.result(reply)
        return self.layout.result(self._call("take", key, self.packer.cost(cost)))

    def try_take(self, key: str, cost: int = 1) -> bool:
        if self.direct:
            packed = self.packer.take(key, cost)
            with boundary:
                return self._one(packed)[0] == 1  # type: ignore[no-any-return]
        return self._call("take", key, self.packer.cost(cost))[0] == 1  # type: ignore[no-any-return]

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        packer = self.packer
        bkeys = packer.keys(keys)
        c = packer.cost(cost)
        plan = self.plan_many(bkeys)
        if not plan:
            return []
        calls = [("take", [bkeys[i] for i in group], (c,)) for group in plan]
        with boundary:
            if self.direct:
                packed = b"".join(packer.command(n, k, *e) for n, k, e in calls)
                replies = self._many(packed, len(calls))
            else:
                replies = self._via_client(calls)
        return self.assemble(len(bkeys), plan, replies)

    def usage(self, key: str) -> int:
        return int(self._call("usage", key))

    def reset(self, key: str) -> None:
        self._call("reset", key)

    def reserve(self, key: str, tokens: int) -> Tuple[int, int, float, float]:
        """Takes up to ``tokens`` from the bucket, as many as it holds:
        (granted, remaining, retry_after_s, reset_after_s)."""
        reply = self._call("reserve", key, self.packer.wanted(tokens))
        tps = self.layout.ticks_per_second
        return reply[0], reply[1], reply[2] / tps, reply[3] / tps

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for wire in idle:
            wire.close()
        if self._owns_client:
            self.client.close()
