"""AsyncRedisBackend: RedisBackend for asyncio, on redis.asyncio. The same
scripts, packing and decoding (_redis_client / _redis_proto); only the
I/O differs."""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import chain
from typing import Any, Deque, List, Optional, Sequence, Tuple

import hiredis
import redis.asyncio
import redis.exceptions as rex
from redis._parsers import BaseParser

from .._result import LimitResult
from ._redis_client import Call, RedisCommon, boundary, first_error

__all__ = ["AsyncRedisBackend"]


class _Wire(asyncio.Protocol):
    """One connection of ours. redis.asyncio opens it (TLS, AUTH, SELECT,
    Sentinel's lookup); then this protocol takes over its transport: a
    request writes packed bytes and returns a Future that data_received
    resolves once hiredis has parsed the replies, so no coroutine or
    stream sits between a check and the socket. One request at a time.

    Timeouts: a request sets a deadline; one timer per wire (armed when
    none is, re-armed when it fires early) fails the request once the
    deadline has passed, instead of a timer per request."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self.timeout: float = conn.socket_timeout or 3600.0
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.stream_protocol: Any = None
        self.waiter: Optional["asyncio.Future[Any]"] = None
        self.want = 0  # replies the waiter needs; 0: one reply, not a list
        self.got: List[Any] = []
        self.deadline = 0.0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.dead: Optional[BaseException] = None

    async def open(self) -> "_Wire":
        conn = self.conn
        await conn.connect()
        if conn._reader._buffer:  # pragma: no cover - redis-py read every reply of its handshake
            raise rex.ConnectionError("unexpected data after the connection handshake")
        self.transport = transport = conn._writer.transport
        self.stream_protocol = transport.get_protocol()
        transport.set_protocol(self)
        return self

    def request(self, packed: bytes, count: int = 0) -> "asyncio.Future[Any]":
        """Sends ``packed`` and returns a Future of its reply (``count`` > 0:
        of the list of ``count`` replies)."""
        if self.dead is not None:
            raise self.dead
        self.waiter = waiter = self.loop.create_future()
        self.want = count
        self.transport.write(packed)
        self.deadline = deadline = self.loop.time() + self.timeout
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._check_deadline)
        return waiter

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None:
            self._fail(rex.ConnectionError("Redis sent data nobody asked for"))
            return
        reader = self.reader
        reader.feed(data)
        try:
            if not self.want:
                reply = reader.gets()
                if reply is False:
                    return
            else:
                got = self.got
                while len(got) < self.want:
                    one = reader.gets()
                    if one is False:
                        return
                    got.append(one)
                reply, self.got = got, []
        except hiredis.ProtocolError as exc:
            self._fail(rex.ConnectionError(f"bad reply from Redis: {exc}"))
            return
        self.waiter = None
        if not waiter.done():  # a cancelled caller closes the wire itself
            waiter.set_result(reply)

    def _check_deadline(self) -> None:
        self.timer = None
        if self.waiter is None or self.dead is not None:
            return
        if self.loop.time() >= self.deadline:
            self._fail(rex.TimeoutError(f"no reply from Redis within {self.timeout}s"))
        else:
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)

    def _fail(self, exc: BaseException) -> None:
        if self.dead is None:
            self.dead = exc
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._fail(rex.ConnectionError(f"Redis closed the connection{f': {exc}' if exc else ''}"))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # StreamWriter.wait_closed (redis-py's disconnect) waits on the
        # stream protocol's own connection_lost.
        self.stream_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self.stream_protocol.resume_writing()

    async def close(self, wait: bool = False) -> None:
        if self.dead is None:
            self.dead = rex.ConnectionError("connection closed")
        await self.conn.disconnect(nowait=not wait)


class AsyncRedisBackend(RedisCommon):
    """RedisBackend for asyncio: the same arguments (``client=`` takes a
    ``redis.asyncio`` client) and the same operations, as coroutines."""

    lib = redis.asyncio
    #: Connections of one backend at most; more concurrent checks wait for
    #: one (a burst of tasks must not open a connection each).
    max_wires = 32
    _open = 0
    _queue: Optional[Deque["asyncio.Future[None]"]] = None

    # --- I/O ------------------------------------------------------------------

    def forget(self) -> None:
        super().forget()
        self._open = 0
        self._queue = None

    async def _acquire(self) -> _Wire:
        """An idle wire, a new one (at most ``max_wires``), or the next
        one released."""
        while True:
            if self._idle:
                wire: _Wire = self._idle.pop()
                return wire
            if self._open < self.max_wires:
                self._open += 1
                try:
                    return await _Wire(self._pool.make_connection()).open()  # type: ignore[union-attr]
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            if self._queue is None:
                self._queue = deque()
            ticket = asyncio.get_running_loop().create_future()
            self._queue.append(ticket)
            try:
                await ticket
            except BaseException:
                if ticket.done() and not ticket.cancelled():
                    self._wake()  # pass the wakeup on
                raise

    def _wake(self) -> None:
        queue = self._queue
        while queue:
            ticket = queue.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return

    def _release(self, wire: _Wire) -> None:
        self._idle.append(wire)
        if self._queue:
            self._wake()

    async def _discard(self, wire: _Wire, exc: BaseException) -> None:
        """A wire that failed or was cancelled mid-request is out of step:
        close it; when the server went away, the idle ones are dead too."""
        self._open -= 1
        await wire.close()
        if isinstance(exc, (OSError, rex.ConnectionError, rex.TimeoutError, asyncio.TimeoutError)):
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            for other in idle:
                await other.close()
        self._wake()

    async def _send(self, packed: bytes, count: int) -> List[Any]:
        wire = self._idle.pop() if self._idle else await self._acquire()
        try:
            replies: List[Any] = await wire.request(packed, count)
        except BaseException as exc:  # cancelled mid-reply too
            await self._discard(wire, exc)
            raise
        self._release(wire)
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
                wire = self._idle.pop() if self._idle else await self._acquire()
                try:
                    reply = await wire.request(packed)
                except BaseException as exc:
                    await self._discard(wire, exc)
                    raise
                self._release(wire)
                if isinstance(reply, Exception):
                    if not isinstance(reply, rex.NoScriptError):
                        raise reply
                    reply = (await self._exchange(packed, 1))[0]
            return self.layout.result(reply[0], cost)
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
        self._open -= len(idle)
        for wire in idle:
            await wire.close(wait=True)
        if self._owns_client:
            await self.client.aclose()
        for sentinel in self.sentinels():
            await sentinel.aclose()
