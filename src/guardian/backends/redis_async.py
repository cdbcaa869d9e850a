"""AsyncRedisBackend: RedisBackend for asyncio, on redis.asyncio. The same
scripts, packing and decoding (_redis_common / _redis_scripts); only the
I/O differs."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

import hiredis
import redis.asyncio
import redis.exceptions as rex
from redis._parsers import BaseParser

from .._result import LimitResult
from ._redis_common import Call, RedisCommon, Reserved, boundary, peek_all, usage_all
from .memory import LimitsResult

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


class _Pool:
    """The wires to one server: at most ``size`` open; more concurrent
    requests wait for one to be released (a burst of tasks must not open
    a connection each). A counter and a queue of Futures, no Semaphore:
    taking an idle wire costs no coroutine."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self.connect = connect
        self.size = size
        self.idle: List[_Wire] = []
        self.open = 0
        self.queue: Deque["asyncio.Future[None]"] = deque()

    async def acquire(self) -> _Wire:
        while True:
            if self.idle:
                wire = self.idle.pop()
                if wire.dead is None:
                    return wire
                # Closed by the server while idle (a restart, CLIENT KILL):
                # the loop saw it and nothing was sent on it, so taking a
                # fresh wire is no retry. The other idle ones go too.
                await self.discard(wire, wire.dead)
                continue
            if self.open < self.size:
                self.open += 1
                try:
                    return await _Wire(self.connect()).open()
                except BaseException:
                    self.open -= 1
                    self.wake()
                    raise
            ticket = asyncio.get_running_loop().create_future()
            self.queue.append(ticket)
            try:
                await ticket
            except BaseException:
                if ticket.done() and not ticket.cancelled():
                    self.wake()  # pass the wakeup on
                raise

    def wake(self) -> None:
        queue = self.queue
        while queue:
            ticket = queue.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return

    def release(self, wire: _Wire) -> None:
        self.idle.append(wire)
        if self.queue:
            self.wake()

    async def discard(self, wire: _Wire, exc: BaseException) -> None:
        """A wire that failed or was cancelled mid-request is out of step:
        close it; when the server went away, the idle ones are dead too."""
        self.open -= 1
        await wire.close()
        if isinstance(exc, _NETWORK):
            await self.close()
        self.wake()

    async def request(self, packed: bytes, count: int = 0) -> Any:
        wire = self.idle.pop() if self.idle and self.idle[-1].dead is None else await self.acquire()
        try:
            reply = await wire.request(packed, count)
        except BaseException as exc:  # cancelled mid-reply too
            await self.discard(wire, exc)
            raise
        self.release(wire)
        return reply

    async def close(self, wait: bool = False) -> None:
        idle, self.idle = self.idle, []
        self.open -= len(idle)
        for wire in idle:
            await wire.close(wait)


_NETWORK = (OSError, rex.ConnectionError, rex.TimeoutError, asyncio.TimeoutError)


class AsyncRedisBackend(RedisCommon):
    """RedisBackend for asyncio: the same arguments (``client=`` takes a
    ``redis.asyncio`` client) and the same operations, as coroutines."""

    lib = redis.asyncio
    #: Connections of one backend to one server at most; more concurrent
    #: checks wait for one.
    max_wires = 32
    _wires: Optional[_Pool] = None

    # --- I/O ------------------------------------------------------------------

    def forget(self) -> None:
        super().forget()
        self._wires = None

    def _pool_of(self, node: Any = None) -> _Pool:
        """The wires to the server, or to a cluster node."""
        if node is None:
            if self._wires is None:
                # The client's max_connections bounds our wires too.
                size = min(self.max_wires, getattr(self._pool, "max_connections", self.max_wires))
                self._wires = _Pool(self._pool.make_connection, size)  # type: ignore[union-attr]
            return self._wires
        pool: Optional[_Pool] = self._nodes.get(node.name)
        if pool is None:
            pool = self._nodes[node.name] = _Pool(
                lambda: node.connection_class(**node.connection_kwargs),
                min(self.max_wires, getattr(node, "max_connections", self.max_wires)))
        return pool

    async def _send(self, packed: bytes, count: int) -> List[Any]:
        replies: List[Any] = await self._pool_of().request(packed, count)
        return replies

    async def _route_one(self, packed: bytes, slot: int, key: str, cost: int,
                         call_of: Optional[Callable[[str, int], Call]] = None) -> Any:
        """Like RedisBackend._route_one."""
        node = self.primary(slot)
        if node is not None:
            try:
                reply = await self._pool_of(node).request(packed)
            except _NETWORK:
                self._remap()
                raise
            if self.routed_reply(reply):
                return reply
        return (await self._via_client([(call_of or self.take_call)(key, cost)]))[0]

    def _remap(self) -> None:
        """Like RedisBackend._remap, in a task."""
        if self.remap_due():
            task = asyncio.get_running_loop().create_task(self._remap_now())
            self._remap_task = task  # a reference, so the task is not collected mid-way

    _remap_task: "Optional[asyncio.Task[None]]" = None

    async def _remap_now(self) -> None:
        try:
            await self.client.nodes_manager.initialize()
        except Exception:  # no node answers: the next failed check tries again
            pass
        finally:
            self._remapping = False

    async def _routed(self, calls: Sequence[Call], slots: Sequence[int]) -> List[Any]:
        """Like RedisBackend._routed: the nodes' requests run concurrently."""
        by_node, again = self.route(slots)
        packer = self.packer
        replies: List[Any] = [None] * len(calls)
        groups = list(by_node.values())
        answers = await asyncio.gather(*(
            self._pool_of(node).request(
                b"".join(packer.command(calls[i][0], calls[i][1], *calls[i][2]) for i in positions),
                len(positions))
            for node, positions in groups), return_exceptions=True)
        failed: Optional[BaseException] = None
        for (node, positions), answer in zip(groups, answers):
            if isinstance(answer, _NETWORK):
                failed = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                for i, reply in zip(positions, answer):
                    replies[i] = reply
        if failed is not None:  # one deadline: the calls are not retried
            self._remap()
            raise failed
        again = self.retries(replies, again)
        if again:
            for i, reply in zip(again, await self._via_client([calls[i] for i in again])):
                replies[i] = reply
        return replies

    async def _exchange(self, packed: bytes, count: int, replies: Optional[List[Any]] = None) -> List[Any]:
        """Like RedisBackend._exchange."""
        if replies is None:
            replies = await self._send(packed, count)
        if not self.usable(replies, reloaded=False):
            self.checked(await self._send(*self.packer.load_scripts()))
            replies = await self._send(packed, count)
            self.usable(replies, reloaded=True)
        return replies

    async def _via_client(self, calls: Sequence[Call]) -> List[Any]:
        """Like RedisBackend._via_client."""
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
        for i in self.noscript(replies):
            name, keys, extra = calls[i]
            replies[i] = await client.execute_command("EVAL", *packer.eval_args(name, keys, *extra))
        return self.checked(replies)

    async def _run(self, calls: List[Call], packed: bytes, slots: Optional[Sequence[int]] = None) -> List[Any]:
        with boundary:
            if self.direct:
                return await self._exchange(packed, len(calls))
            return await self._routed(calls, slots or self.call_slot(calls))

    # --- the Backend protocol, as coroutines -------------------------------

    async def take(self, key: str, cost: int = 1) -> LimitResult:
        packed = self.packer.take(key, cost)
        with boundary:
            if not self.direct:
                reply = await self._route_one(packed, self.packer.slot(key), key, cost)
                return self.layout.result(self.layout.one(reply), cost)
            pool = self._wires or self._pool_of()
            # _Pool.request inlined: the hot path awaits the wire's Future.
            wire = pool.idle.pop() if pool.idle and pool.idle[-1].dead is None else await pool.acquire()
            try:
                reply = await wire.request(packed)
            except BaseException as exc:
                await pool.discard(wire, exc)
                raise
            pool.release(wire)
            if isinstance(reply, Exception):
                reply = (await self._exchange(packed, 1, [reply]))[0]
            return self.layout.result(self.layout.one(reply), cost)

    async def try_take(self, key: str, cost: int = 1) -> bool:
        return (await self.take(key, cost)).allowed

    async def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        if self.direct:
            c, count, packed = self.pack_many(keys, cost)
            if not count:
                return []
            with boundary:
                replies = await self._exchange(packed, count)
                return self.layout.results(replies, c, len(keys))
        c, plan, calls, slots = self.plan_take_many(keys, cost)
        if not calls:
            return []
        replies = await self._run(calls, b"", slots)
        with boundary:
            return self.assemble(len(keys), plan, replies, c)

    async def usage(self, key: str) -> int:
        reply = (await self._run(*self.plan_call("usage", key)))[0]
        with boundary:
            return self.layout.count(reply)

    async def reset(self, key: str) -> None:
        await self._run(*self.plan_call("reset", key))

    async def peek(self, key: str, cost: int = 1) -> LimitResult:
        """Like RedisBackend.peek."""
        reply = (await self._run(*self.plan_peek(key, cost)))[0]
        with boundary:
            return self.layout.peeked(reply)

    async def reserve_tokens(self, key: str, tokens: int, needed: int = 1) -> Reserved:
        """Like RedisBackend.reserve_tokens."""
        reply = (await self._run(*self.plan_reserve(key, tokens, needed)))[0]
        with boundary:
            return self.layout.reserved(reply)

    async def release_tokens(self, key: str, tokens: int, now_us: int, ahead_ticks: int) -> int:
        """Like RedisBackend.release_tokens."""
        reply = (await self._run(*self.plan_release(key, tokens, now_us, ahead_ticks)))[0]
        with boundary:
            return self.layout.count(reply[0])

    async def reserve(self, key: str, tokens: int) -> Tuple[int, int, float, float]:
        """Takes up to ``tokens`` from the bucket, as many as it holds."""
        return self.seconds(await self.reserve_tokens(key, tokens))

    # --- several limits on one key (Limits): one take_all.lua per check ----

    async def take_detail(self, key: str, cost: int = 1) -> LimitsResult:
        """Like RedisBackend.take_detail."""
        if self.limits is None:
            r = await self.take(key, cost)
            return LimitsResult(r, None if r.allowed else 0, None if r.allowed else self.config, (r,))
        if self.direct:
            reply = await self._run_packed(self.pack_take_all(key, cost))
        else:
            reply = await self._route_all(key, cost)
        with boundary:
            return self.decode_all(reply)

    async def _take_all(self, key: str, cost: int = 1) -> LimitResult:
        return (await self.take_detail(key, cost)).result

    async def _try_take_all(self, key: str, cost: int = 1) -> bool:
        if self.direct:
            packed = self.pack_take_all(key, cost)
            reply = await self._run_packed(packed)
        else:
            reply = await self._route_all(key, cost)
        with boundary:
            return self.admitted_all(reply)

    async def _route_all(self, key: str, cost: int) -> Any:
        """take_all on a cluster: straight to the slot's primary."""
        packed = self.pack_take_all(key, cost)
        with boundary:
            return await self._route_one(packed, self.packer.slot(key), key, cost, self.take_all_call)

    async def _run_packed(self, packed: bytes) -> Any:
        """One pre-packed call on a single server (NOSCRIPT reloads)."""
        with boundary:
            return (await self._exchange(packed, 1))[0]

    async def _take_many_all(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        return [(await self.take_detail(k, cost)).result for k in list(keys)]

    async def _usage_all(self, key: str) -> int:
        return usage_all([await b.usage(key) for b in self.each], self.limits)

    async def _reset_all(self, key: str) -> None:
        for b in self.each:
            await b.reset(key)

    async def _peek_all(self, key: str, cost: int = 1) -> LimitResult:
        return peek_all([await b.peek(key, cost) for b in self.each], self.limits)

    async def _no_lease(self, *args: Any, **kwargs: Any) -> Any:
        raise self.no_lease()

    async def aclose(self) -> None:
        for b in getattr(self, "each", ()):
            await b.aclose()
        pools: List[_Pool] = [self._wires] if self._wires is not None else []
        pools += self._nodes.values()
        self._wires, self._nodes = None, {}
        for pool in pools:
            await pool.close(wait=True)
        if self._owns_client:
            await self.client.aclose()
        for sentinel in self.sentinels():
            await sentinel.aclose()
