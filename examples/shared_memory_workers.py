"""One limit across worker processes through a shared-memory table.
Run: python examples/shared_memory_workers.py [workers] [seconds]"""

from __future__ import annotations

import multiprocessing
import sys
import time
import uuid

from guardian import MemoryBackend, RateLimiter, TokenBucketConfig

CONFIG = TokenBucketConfig(capacity=100, refill_rate=100)


def worker(name: str, seconds: float, out: "multiprocessing.Queue[int]") -> None:
    limiter = RateLimiter(MemoryBackend(CONFIG, shared=name))  # attaches the table
    allowed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        allowed += limiter.try_acquire("shared-key")
    out.put(allowed)


if __name__ == "__main__":
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    name = f"example-{uuid.uuid4().hex[:8]}"
    MemoryBackend(CONFIG, shared=name)  # create before the workers attach
    try:
        queue: "multiprocessing.Queue[int]" = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=worker, args=(name, seconds, queue)) for _ in range(workers)]
        started = time.monotonic()
        for p in procs:
            p.start()
        counts = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.monotonic() - started
    finally:
        MemoryBackend.unlink(name)  # the table outlives processes until unlinked
    bound = CONFIG.capacity + 100 * elapsed
    print(f"{workers} workers admitted {counts} = {sum(counts)} in {elapsed:.2f}s; "
          f"one limit allows at most {bound:.0f}: {'held' if sum(counts) <= bound + 1 else 'EXCEEDED'}")
