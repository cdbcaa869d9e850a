"""BatchedRedisBackend: token leases reserved from Redis in bulk and served
from the local core table; a thread refills them ahead of need. The shared
logic is in _lease; this module only talks to Redis (docs/batched.md)."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, List, Optional, Sequence

from .._errors import BackendError
from .._result import LimitResult
from ._lease import BatchedCommon, Lease, live
from .redis import RedisBackend

__all__ = ["BatchedRedisBackend"]

_STOP = object()


class BatchedRedisBackend(BatchedCommon):
    """Token buckets in Redis, checked against local leases.

    ``BatchedRedisBackend(config, url=...)`` takes RedisBackend's arguments
    (``client=``, ``prefix=``, timeouts) and: ``shared="name"`` keeps the
    leases in that shared-memory table, so the processes of a host draw from
    one lease; ``lease_lifetime`` (s) after its last reservation a lease's
    unused tokens go back to Redis; ``refresh_interval`` (s) of observed
    demand is the lease size, at most ``max_share`` of the capacity.
    """

    redis_class = RedisBackend
    lock_class = threading.Lock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spend = self.book.table.spend
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._worker: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._closed = False
        live.add(self)

    # --- the Backend protocol ---------------------------------------------

    def try_take(self, key: str, cost: int = 1) -> bool:
        left = self._spend(key, cost)
        if left > self._low_cap:  # the hot path: one C call, one compare
            return True
        if left >= 0:
            self._low(key, left)
            return True
        return self._miss(key, cost).allowed

    def take(self, key: str, cost: int = 1) -> LimitResult:
        left = self._spend(key, cost)
        if left >= 0:
            if left <= self._low_cap:
                self._low(key, left)
            return LimitResult(True, left, 0.0, 0.0, self._capacity)  # book.hit, inlined
        return self._miss(key, cost)

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        return [self.take(key, cost) for key in keys]

    def usage(self, key: str) -> int:
        """Tokens in use in Redis (leased ones count as in use)."""
        return int(self.redis.usage(key))

    def reset(self, key: str) -> None:
        self.redis.reset(key)
        self.book.forget(key)

    # --- misses and refills -----------------------------------------------

    def _low(self, key: str, left: int) -> None:
        """A hit that may have taken the lease to its low water."""
        if self.book.wants_refill(key, left) is not None:
            self._start()
            self._queue.put(key)

    def _miss(self, key: str, cost: int) -> LimitResult:
        book = self.book
        denial = book.cached_denial(key, cost)
        if denial is not None:
            return denial
        lease = book.lease(key)
        with lease.lock:
            left = self._spend(key, cost)  # a refill may have landed meanwhile
            if left >= 0:
                return book.hit(left)
            reply = self._reserve(key, lease, cost)
            return book.decided(key, cost, self._spend(key, cost) if reply[0] else -1, reply)

    def _reserve(self, key: str, lease: Lease, cost: int) -> Any:
        """One reservation, with the key's lease lock held."""
        held = self.book.table.usage(key)
        n = self.book.size(lease, held, cost)
        reply = self.redis._run(*self.reserve_call(key, n))[0]
        spill = self.book.granted(key, lease, n, reply)
        self._low_cap = self.book.low_cap
        if spill:
            self._release(key, spill, (reply[4], reply[3]))
        return reply

    def _release(self, key: str, n: int, reservation: Any) -> None:
        try:
            self.returned(self.redis._run(*self.release_call(key, n, reservation))[0])
        except BackendError:
            self.book.counts["dropped_tokens"] += n

    def _refill(self, key: str) -> None:
        lease = self.book.lease(key)
        with lease.lock:
            try:
                if self.book.table.usage(key) <= lease.low:
                    self._reserve(key, lease, 1)
            except BackendError:
                self.book.counts["refill_errors"] += 1
            finally:
                lease.busy = False

    def _expire(self) -> None:
        for key, n, reservation in self.book.expired():
            self._release(key, n, reservation)
        self._low_cap = self.book.low_cap

    def _start(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            with self._start_lock:
                if self._closed or (self._worker is not None and self._worker.is_alive()):
                    return
                self._worker = threading.Thread(target=self._work, name="guardian-leases", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            try:
                key = self._queue.get(timeout=self.scan_interval)
            except queue.Empty:
                key = None
            if key is _STOP:
                return
            if key is not None:
                self._refill(key)
            self._expire()

    # --- shutdown -----------------------------------------------------------

    def close(self) -> None:
        """Gives every unused leased token back to Redis and closes."""
        if self._closed:
            return
        self._closed = True
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(_STOP)
            worker.join(timeout=5)
        for key, n, reservation in self.book.everything():
            self._release(key, n, reservation)
        self.redis.close()
        self.book.table.close()

    _close_at_exit = close

    def _after_fork(self) -> None:
        self.book.after_fork()
        self._worker = None
        self._queue = queue.SimpleQueue()
        self._start_lock = threading.Lock()


def _forget_after_fork() -> None:
    for backend in list(live):
        if isinstance(backend, BatchedRedisBackend):
            backend._after_fork()


os.register_at_fork(after_in_child=_forget_after_fork)
