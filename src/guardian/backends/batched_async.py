"""AsyncBatchedRedisBackend: token leases reserved from Redis in bulk and
served from the local core table; a background refiller keeps them ahead
of need. The shared logic is in _lease; this module only talks to Redis
(docs/batched.md).

batched.py is generated from this file (tests/helpers/unasync.py; a test
checks it): edit this one and run ``python tests/helpers/unasync.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, List, Sequence

from .._args import check_keys
from .._errors import BackendError
from .._result import LimitResult
from ._lease import BatchedCommon, Lease
from ._redis_scripts import Reserved
from ._refill_task import Refiller
from .redis_async import AsyncRedisBackend

__all__ = ["AsyncBatchedRedisBackend"]


class AsyncBatchedRedisBackend(BatchedCommon):
    """Token buckets in Redis, checked against local leases (for asyncio).

    ``AsyncBatchedRedisBackend(config, url=...)`` takes AsyncRedisBackend's
    arguments (``client=``, ``prefix=``, timeouts) and: ``shared="name"``
    keeps the leases in that shared-memory table, so the processes of a
    host draw from one lease; ``lease_lifetime`` (s) after its last
    reservation a lease's unused tokens go back to Redis;
    ``refresh_interval`` (s) of observed demand is the lease size, at most
    ``max_share`` of the capacity; ``clock`` (integer nanoseconds, for
    tests) times the leases. Unused tokens go back on aclose() and at
    interpreter exit.
    """

    redis_class = AsyncRedisBackend
    redis: AsyncRedisBackend
    lock_class = asyncio.Lock
    refiller_class = Refiller

    # --- the Backend protocol ---------------------------------------------

    async def try_take(self, key: str, cost: int = 1) -> bool:
        left = self._spend(key, cost)
        if left > self._low_cap:  # the hot path: one C call, one compare
            return True
        if left >= 0:
            self.refill_if_low(key, left)
            return True
        return (await self._miss(key, cost)).allowed

    async def take(self, key: str, cost: int = 1) -> LimitResult:
        left = self._spend(key, cost)
        if left >= 0:
            if left <= self._low_cap:
                self.refill_if_low(key, left)
            lease = self._leases.get(key)  # book.hit, inlined
            if lease is not None and lease.ahead >= 0:
                return self._since(True, lease.ahead, self._now() - lease.ahead_at, left, 0.0)
            return LimitResult(True, left, 0.0, 0.0, self._capacity)
        return await self._miss(key, cost)

    async def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        return [await self.take(key, cost) for key in check_keys(keys)]

    async def usage(self, key: str) -> int:
        """Tokens in use in Redis (leased ones count as in use)."""
        return await self.redis.usage(key)

    async def peek(self, key: str, cost: int = 1) -> LimitResult:
        """What a take of ``cost`` would answer from Redis now, without
        taking (tokens leased here count as taken)."""
        return await self.redis.peek(key, cost)

    async def reset(self, key: str) -> None:
        await self.redis.reset(key)
        self.book.forget(key)

    # --- misses and refills -----------------------------------------------

    def refill_if_low(self, key: str, left: int) -> None:
        """After a hit that left ``left`` held tokens: a background refill
        when that is at or below the lease's low water (and none is in
        flight). For hits answered elsewhere too (guardian serve's native
        data plane tells it of those)."""
        if self.book.wants_refill(key, left) is not None:
            self._refiller.submit(key)

    async def _miss(self, key: str, cost: int) -> LimitResult:
        book = self.book
        self._refiller.start()  # expiry scans keep the book small
        denial = book.cached_denial(key, cost)
        if denial is not None:
            return denial
        lease = book.lease(key)
        failed = lease.failed
        async with lease.lock:
            left = self._spend(key, cost)  # a refill may have landed meanwhile
            if left >= 0:
                return book.hit(key, left)
            if lease.failed != failed:  # the reservation we waited for failed: so do we, at once
                raise lease.shared_failure()
            reply = await self._reserve(key, lease, cost, claim=cost)
            if book.claimed(reply, cost):  # the check's tokens came out of the grant itself
                left = max(book.table.held(key), 0)
            else:
                left = self._spend(key, cost) if reply.granted else -1
            return book.decided(key, cost, left, reply)

    async def _reserve(self, key: str, lease: Lease, cost: int, claim: int = 0) -> Reserved:
        """One reservation, with the key's lease lock held (``claim``: see
        LeaseBook.granted)."""
        needed = self.book.needed(key, cost)
        n = self.book.size(lease, self.book.table.held(key), cost)
        sent = self.book.now()
        try:
            reply = await self.redis.reserve_tokens(key, n, needed)
        except BackendError as exc:
            lease.failed += 1
            lease.error = exc
            raise
        spill = self.book.granted(key, lease, n, needed, reply, sent, claim)
        self._low_cap = self.book.low_cap
        if spill:
            await self._release(key, spill, (reply.now_us, reply.ahead_ticks))
        return reply

    async def _release(self, key: str, n: int, reservation: Any) -> None:
        try:
            self.returned(await self.redis.release_tokens(key, n, *reservation))
        except BackendError:
            self.book.counts["dropped_tokens"] += n

    async def _refill(self, key: str) -> None:
        lease = self.book.lease(key)
        async with lease.lock:
            try:
                if self.book.table.held(key) <= lease.low:
                    await self._reserve(key, lease, 1)
            except BackendError:
                self.book.counts["refill_errors"] += 1
            finally:
                lease.busy = False

    async def _expire(self) -> None:
        for key, n, reservation in self.book.expired():
            await self._release(key, n, reservation)
        self._low_cap = self.book.low_cap

    # --- shutdown -----------------------------------------------------------

    async def aclose(self) -> None:
        """Gives every unused leased token back to Redis, for at most
        ``close_timeout`` seconds (plus one ``timeout``), and closes."""
        if self._closed:
            return
        self._closed = True
        deadline = self.close_deadline()
        await self._refiller.stop(deadline)
        returns = self.book.everything()
        for i, (key, n, (us, ahead)) in enumerate(returns):
            if time.monotonic() >= deadline:
                self.abandon(returns[i:])
                break
            try:
                self.returned(await self.redis.release_tokens(key, n, us, ahead))
            except BackendError as exc:
                if self.hopeless(exc):
                    self.abandon(returns[i:])
                    break
                self.book.counts["dropped_tokens"] += n
        await self.redis.aclose()
        self.book.table.close()
