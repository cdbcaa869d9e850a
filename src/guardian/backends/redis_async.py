"""AsyncRedisBackend: RedisBackend for asyncio, on redis.asyncio. The same
scripts, packing and decoding (_redis_client / _redis_proto); only the
I/O differs."""

from __future__ import annotations

import asyncio
import sys
from itertools import chain
from typing import Any, List, Optional, Sequence, Tuple

import hiredis
import redis.asyncio
import redis.exceptions as rex
from redis._parsers import BaseParser

from .._result import LimitResult
from ._redis_client import Call, RedisCommon, boundary, first_error

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _timeout

__all__ = ["AsyncRedisBackend"]


class _Wire:
    """One connection of ours: redis.asyncio opens it (TLS, AUTH, SELECT,
    Sentinel's lookup); we then write packed commands to its stream and
    parse replies with our own hiredis reader."""

    __slots__ = ("conn", "stream", "writer", "reader", "timeout")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.stream: Any = None
        self.writer: Any = None
        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self.timeout: Optional[float] = conn.socket_timeout

    async def open(self) -> "_Wire":
        conn = self.conn
        await conn.connect()
        self.stream, self.writer = conn._reader, conn._writer
        return self

    async def exchange(self, packed: bytes) -> Any:
        """Sends ``packed`` (may be empty) and reads one reply."""
        if packed:
            self.writer.write(packed)
        reader = self.reader
        reply = reader.gets()
        if reply is False:
            async with _timeout(self.timeout):
                if packed and self.writer.transport.get_write_buffer_size() > 65536:
                    await self.writer.drain()
                while reply is False:
                    data = await self.stream.read(65536)
                    if not data:
                        raise rex.ConnectionError("Redis closed the connection")
                    reader.feed(data)
                    reply = reader.gets()
        return reply

    async def close(self, wait: bool = False) -> None:
        await self.conn.disconnect(nowait=not wait)


class AsyncRedisBackend(RedisCommon):
    """RedisBackend for asyncio: the same arguments (``client=`` takes a
    ``redis.asyncio`` client) and the same operations, as coroutines."""

    lib = redis.asyncio
    #: Connections of one backend at most; more concurrent checks wait for
    #: one (a burst of tasks must not open a connection each).
    max_wires = 32
    _wires: Optional[asyncio.Semaphore] = None

    # --- I/O ------------------------------------------------------------------

    async def _send(self, packed: bytes, count: int) -> List[Any]:
        if self._wires is None:
            self._wires = asyncio.Semaphore(self.max_wires)
        async with self._wires:
            return await self._send_on_a_wire(packed, count)

    async def _send_on_a_wire(self, packed: bytes, count: int) -> List[Any]:
        try:
            wire = self._idle.pop()
        except IndexError:
            wire = await _Wire(self._pool.make_connection()).open()  # type: ignore[union-attr]
        try:
            replies = [await wire.exchange(packed)]
            for _ in range(count - 1):
                replies.append(await wire.exchange(b""))
        except BaseException as exc:  # cancelled mid-reply too: the wire is out of step
            await wire.close()
            if isinstance(exc, (OSError, rex.ConnectionError, asyncio.TimeoutError)):
                idle, self._idle = self._idle, []  # the server went away: all are dead
                for other in idle:
                    await other.close()
            raise
        self._idle.append(wire)
        return replies

    async def _exchange(self, packed: bytes, count: int) -> List[Any]:
        """Like RedisBackend._exchange: NOSCRIPT loads the scripts, once."""
        replies = await self._send(packed, count)
        error = first_error(replies)
        if isinstance(error, rex.NoScriptError):
            for script in self.packer.scripts.values():
                await self.client.script_load(script.source)
            replies = await self._send(packed, count)
            error = first_error(replies)
        if error is not None:
            raise error
        return replies

    async def _via_client(self, calls: Sequence[Call]) -> List[Any]:
        packer, client = self.packer, self.client
        if len(calls) == 1:
            name, keys, extra = calls[0]
            try:
                return [await client.execute_command("EVALSHA", *packer.args(name, keys, *extra))]
            except rex.NoScriptError:
                return [await client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))]
        pipe = client.pipeline(transaction=False)
        for name, keys, extra in calls:
            pipe.execute_command("EVALSHA", *packer.args(name, keys, *extra))
        replies = list(await pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, rex.NoScriptError):
                name, keys, extra = calls[i]
                replies[i] = await client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))
        error = first_error(replies)
        if error is not None:
            raise error
        return replies

    async def _run(self, calls: List[Call], packed: bytes) -> List[Any]:
        with boundary:
            if self.direct:
                return await self._exchange(packed, len(calls))
            return await self._via_client(calls)

    # --- the Backend protocol, as coroutines -------------------------------

    async def take(self, key: str, cost: int = 1) -> LimitResult:
        if self.direct:
            packed = self.packer.take(key, cost)
            with boundary:
                return self.layout.result((await self._exchange(packed, 1))[0][0], cost)
        c = self.packer.cost(cost)
        return self.layout.result((await self._run(*self.plan_call("take", key, c)))[0][0], int(c))

    async def try_take(self, key: str, cost: int = 1) -> bool:
        return (await self.take(key, cost)).allowed

    async def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        if self.direct:
            c, count, packed = self.pack_many(keys, cost)
            if not count:
                return []
            with boundary:
                replies = await self._exchange(packed, count)
            return self.layout.results(chain.from_iterable(replies), c)
        c, plan, calls = self.plan_take_many(keys, cost)
        return self.assemble(len(keys), plan, await self._run(calls, b""), c) if calls else []

    async def usage(self, key: str) -> int:
        return int((await self._run(*self.plan_call("usage", key)))[0])

    async def reset(self, key: str) -> None:
        await self._run(*self.plan_call("reset", key))

    async def reserve(self, key: str, tokens: int) -> Tuple[int, int, float, float]:
        """Takes up to ``tokens`` from the bucket, as many as it holds."""
        return self.reserved((await self._run(*self.plan_call("reserve", key, self.packer.wanted(tokens))))[0])

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for wire in idle:
            await wire.close(wait=True)
        if self._owns_client:
            await self.client.aclose()
        for sentinel in self.sentinels():
            await sentinel.aclose()
