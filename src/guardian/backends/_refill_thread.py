"""The background refiller of BatchedRedisBackend: one daemon thread per
backend, started on first need, that refills leases at low water and
gives expired leases back."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Optional

__all__ = ["Refiller"]

_STOP = object()


class Refiller:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.worker: Optional[threading.Thread] = None
        self.start_lock = threading.Lock()
        self.closed = False

    def submit(self, key: str) -> None:
        """Refill ``key``'s lease soon."""
        self.start()
        self.queue.put(key)

    def start(self) -> None:
        """Runs the worker (and so the expiry scans) if it is not running."""
        worker = self.worker
        if worker is None or not worker.is_alive():
            with self.start_lock:
                if self.closed or (self.worker is not None and self.worker.is_alive()):
                    return
                self.worker = threading.Thread(target=self._work, name="guardian-leases", daemon=True)
                self.worker.start()

    def _work(self) -> None:
        backend = self.backend
        while True:
            try:
                key = self.queue.get(timeout=backend.scan_interval)
            except queue.Empty:
                key = None
            if key is _STOP:
                return
            try:
                if key is not None:
                    backend._refill(key)
                backend._expire()
            except Exception:  # pragma: no cover - the worker must outlive any one error
                backend.book.counts["refill_errors"] += 1

    def stop(self, deadline: float) -> None:
        """Stops the worker, waiting for it until ``deadline``
        (time.monotonic()); a daemon thread left in a Redis call ends
        with that call."""
        self.closed = True
        worker = self.worker
        if worker is not None and worker.is_alive():
            self.queue.put(_STOP)
            worker.join(timeout=max(deadline - time.monotonic(), 0.0))

    def after_fork(self) -> None:
        self.worker = None
        self.queue = queue.SimpleQueue()
        self.start_lock = threading.Lock()

    @staticmethod
    def close_at_exit(backend: Any) -> None:
        backend.close()
