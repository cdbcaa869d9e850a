"""RedisBackend: buckets in Redis, decided by Lua scripts on the server's
clock. Only the I/O lives here; see _redis_client / _redis_proto."""

from __future__ import annotations

import os
import weakref
from typing import Any, List, Optional, Sequence, Tuple

import redis
import redis.exceptions as rex

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

    def _roundtrip(self, packed: bytes, count: int = 1) -> List[Any]:
        """Sends pre-packed commands on an idle connection of our own and
        reads ``count`` replies; a NOSCRIPT loads the scripts and retries."""
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._pool.make_connection()  # type: ignore[union-attr]
        replies: List[Any] = []
        try:
            conn.send_packed_command((packed,), False)
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except rex.ResponseError as exc:  # the connection stays in step
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        idle.append(conn)
        return self._check(replies, packed, count)

    def _check(self, replies: List[Any], packed: bytes, count: int) -> List[Any]:
        for reply in replies:
            if isinstance(reply, rex.NoScriptError):
                self._load_scripts()
                replies = self._roundtrip_once(packed, count)
                break
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _roundtrip_once(self, packed: bytes, count: int) -> List[Any]:
        conn = self._pool.make_connection()  # type: ignore[union-attr]
        try:
            conn.send_packed_command((packed,), False)
            replies = [conn.read_response() for _ in range(count)]
        finally:
            conn.disconnect()
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
                return self._roundtrip(self.packer.command(name, keys, *extra))[0]
            return self._via_client([(name, keys, extra)])[0]

    # --- the Backend protocol ---------------------------------------------

    def take(self, key: str, cost: int = 1) -> LimitResult:
        if self.direct:
            packed = self.packer.take(key, cost)
            with boundary:
                return self.layout.result(self._roundtrip(packed)[0])
        return self.layout.result(self._call("take", key, self.packer.cost(cost)))

    def try_take(self, key: str, cost: int = 1) -> bool:
        if self.direct:
            packed = self.packer.take(key, cost)
            with boundary:
                return self._roundtrip(packed)[0][0] == 1  # type: ignore[no-any-return]
        return self._call("take", key, self.packer.cost(cost))[0] == 1  # type: ignore[no-any-return]

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        packer = self.packer
        bkeys = packer.keys(keys)
        c = packer.cost(cost)
        plan = self.plan_many(bkeys)
        calls = [("take", [bkeys[i] for i in group], (c,)) for group in plan]
        with boundary:
            if self.direct:
                packed = b"".join(packer.command(n, k, *e) for n, k, e in calls)
                replies = self._roundtrip(packed, len(calls))
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
        for conn in idle:
            conn.disconnect()
        if self._owns_client:
            self.client.close()
