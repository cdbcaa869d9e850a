"""The background refiller of AsyncBatchedRedisBackend: one task per
backend, started on first need on the running loop, that refills leases
at low water and gives expired leases back."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from .._errors import BackendError

__all__ = ["Refiller"]


class Refiller:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.queue: "Optional[asyncio.Queue[Optional[str]]]" = None
        self.worker: "Optional[asyncio.Task[None]]" = None

    def submit(self, key: str) -> None:
        """Refill ``key``'s lease soon."""
        if not self.backend._closed:
            self.start()
            assert self.queue is not None
            self.queue.put_nowait(key)

    def start(self) -> None:
        """Runs the worker (and so the expiry scans) if it is not running."""
        if self.backend._closed:
            return
        if self.queue is None:
            self.queue = asyncio.Queue()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work(self.queue))

    async def _work(self, q: "asyncio.Queue[Optional[str]]") -> None:
        backend = self.backend
        while True:
            try:
                key = await asyncio.wait_for(q.get(), backend.scan_interval)
            except asyncio.TimeoutError:
                key = None
            else:
                if key is None:
                    return
            try:
                if key is not None:
                    await backend._refill(key)
                await backend._expire()
            except Exception:  # pragma: no cover - the worker must outlive any one error
                backend.book.counts["refill_errors"] += 1

    async def stop(self, deadline: float) -> None:
        """Stops the worker, cancelling it at ``deadline`` (time.monotonic())."""
        if self.worker is not None and not self.worker.done():
            assert self.queue is not None
            self.queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self.worker), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                self.worker.cancel()
                await asyncio.gather(self.worker, return_exceptions=True)

    def after_fork(self) -> None:
        self.queue = None
        self.worker = None

    @staticmethod
    def close_at_exit(backend: Any) -> None:
        """aclose() never ran: give the leases back without an event loop,
        over a short-lived synchronous connection (backends built from a
        URL; an event loop is usually gone by then)."""
        if backend._closed or backend._url is None:
            return
        backend._closed = True
        from .redis import RedisBackend

        deadline = backend.close_deadline()
        sync = RedisBackend(backend.config, backend._url, prefix=backend.redis.prefix, **backend._timeouts)
        returns = backend.book.everything()
        try:
            for i, (key, n, (us, ahead)) in enumerate(returns):
                if time.monotonic() >= deadline:
                    backend.abandon(returns[i:])
                    break
                try:
                    backend.returned(sync.release_tokens(key, n, us, ahead))
                except BackendError as exc:
                    if backend.hopeless(exc):
                        backend.abandon(returns[i:])
                        break
                    backend.book.counts["dropped_tokens"] += n
        finally:
            sync.close()
