"""AsyncBatchedRedisBackend: BatchedRedisBackend for asyncio. The same
book, sizing and scripts (_lease); a task instead of a thread refills."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Sequence

from .._errors import BackendError
from .._result import LimitResult
from ._lease import BatchedCommon, Lease, live
from .redis_async import AsyncRedisBackend

__all__ = ["AsyncBatchedRedisBackend"]


class AsyncBatchedRedisBackend(BatchedCommon):
    """BatchedRedisBackend for asyncio: the same arguments (``client=``
    takes a ``redis.asyncio`` client), the operations as coroutines.
    Unused tokens go back in ``aclose()``, or at interpreter exit over a
    short-lived synchronous connection (for backends built from a URL; an
    event loop is usually gone by then)."""

    redis_class = AsyncRedisBackend
    lock_class = asyncio.Lock

    def __init__(self, config: Any, url: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(config, url, **kwargs)
        self._url = url
        self._timeouts = {k: kwargs[k] for k in ("connect_timeout", "timeout") if k in kwargs}
        live.add(self)
        self._spend = self.book.table.spend
        self._queue: "Optional[asyncio.Queue[Optional[str]]]" = None
        self._worker: "Optional[asyncio.Task[None]]" = None
        self._closed = False

    async def try_take(self, key: str, cost: int = 1) -> bool:
        left = self._spend(key, cost)
        if left > self._low_cap:
            return True
        if left >= 0:
            self._low(key, left)
            return True
        return (await self._miss(key, cost)).allowed

    async def take(self, key: str, cost: int = 1) -> LimitResult:
        left = self._spend(key, cost)
        if left >= 0:
            if left <= self._low_cap:
                self._low(key, left)
            return LimitResult(True, left, 0.0, 0.0, self._capacity)  # book.hit, inlined
        return await self._miss(key, cost)

    async def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        return [await self.take(key, cost) for key in keys]

    async def usage(self, key: str) -> int:
        return int(await self.redis.usage(key))

    async def reset(self, key: str) -> None:
        await self.redis.reset(key)
        self.book.forget(key)

    # --- misses and refills -----------------------------------------------

    def _low(self, key: str, left: int) -> None:
        if self.book.wants_refill(key, left) is not None and not self._closed:
            self._start().put_nowait(key)

    async def _miss(self, key: str, cost: int) -> LimitResult:
        book = self.book
        denial = book.cached_denial(key, cost)
        if denial is not None:
            return denial
        lease = book.lease(key)
        async with lease.lock:
            left = self._spend(key, cost)
            if left >= 0:
                return book.hit(left)
            reply = await self._reserve(key, lease, cost)
            return book.decided(key, cost, self._spend(key, cost) if reply[0] else -1, reply)

    async def _reserve(self, key: str, lease: Lease, cost: int) -> Any:
        n = self.book.size(lease, self.book.table.usage(key), cost)
        reply = (await self.redis._run(*self.reserve_call(key, n)))[0]
        spill = self.book.granted(key, lease, n, reply)
        self._low_cap = self.book.low_cap
        if spill:
            await self._release(key, spill, (reply[4], reply[3]))
        return reply

    async def _release(self, key: str, n: int, reservation: Any) -> None:
        try:
            self.returned((await self.redis._run(*self.release_call(key, n, reservation)))[0])
        except BackendError:
            self.book.counts["dropped_tokens"] += n

    async def _refill(self, key: str) -> None:
        lease = self.book.lease(key)
        async with lease.lock:
            try:
                if self.book.table.usage(key) <= lease.low:
                    await self._reserve(key, lease, 1)
            except BackendError:
                self.book.counts["refill_errors"] += 1
            finally:
                lease.busy = False

    async def _expire(self) -> None:
        for key, n, reservation in self.book.expired():
            await self._release(key, n, reservation)
        self._low_cap = self.book.low_cap

    def _start(self) -> "asyncio.Queue[Optional[str]]":
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        return self._queue

    async def _work(self, q: "asyncio.Queue[Optional[str]]") -> None:
        while True:
            try:
                key = await asyncio.wait_for(q.get(), self.scan_interval)
            except asyncio.TimeoutError:
                key = None
            else:
                if key is None:
                    return
                await self._refill(key)
            await self._expire()

    def _close_at_exit(self) -> None:
        """aclose() never ran: give the leases back without an event loop."""
        if self._closed or self._url is None:
            return
        self._closed = True
        from .redis import RedisBackend

        sync = RedisBackend(self.config, self._url, prefix=self.redis.prefix, **self._timeouts)
        try:
            for key, n, reservation in self.book.everything():
                self.returned(sync._run(*self.release_call(key, n, reservation))[0])
        finally:
            sync.close()

    async def aclose(self) -> None:
        """Gives every unused leased token back to Redis and closes."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None and not self._worker.done():
            assert self._queue is not None
            self._queue.put_nowait(None)
            await self._worker
        for key, n, reservation in self.book.everything():
            await self._release(key, n, reservation)
        await self.redis.aclose()
        self.book.table.close()
