"""A worker process for the shared-memory tests: attaches a named table and
does one job, printing a JSON line with what it saw.

    python shm_worker.py JOB NAME CAPACITY RATE INTERVAL SLOTS [ARGS...]
    python shm_worker.py JOB NAME limits "10/second and 1000/day" - SLOTS [ARGS...]
"""

from __future__ import annotations

import json
import sys
import threading
import time

from guardian import MemoryBackend, TokenBucketConfig


def hammer(backend: MemoryBackend, seconds: float, threads: int, key: str) -> dict:
    """Every thread takes from one key as fast as it can for ``seconds``."""
    counts = [[0, 0] for _ in range(threads)]
    start = threading.Barrier(threads)
    try_take = backend.try_take

    def run(i: int) -> None:
        start.wait()
        end = time.monotonic() + seconds
        checks = admitted = 0
        while time.monotonic() < end:
            for _ in range(100):
                admitted += try_take(key)
            checks += 100
        counts[i] = [checks, admitted]

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"checks": sum(c for c, _ in counts), "admitted": sum(a for _, a in counts)}


def churn(backend: MemoryBackend, seconds: float, nkeys: int) -> dict:
    """Cycle through many keys on a small table; record for each admission
    the monotonic time just before and just after the call."""
    keys = [f"key-{i}" for i in range(nkeys)]
    seen: dict = {k: [] for k in keys}
    clock = time.monotonic_ns
    end = clock() + int(seconds * 1e9)
    i = 0
    while True:
        before = clock()
        if before > end:
            break
        key = keys[i % nkeys]
        if backend.try_take(key):
            seen[key].append((before, clock()))
        i += 1
    return {"checks": i, "admissions": seen}


def insert_loop(backend: MemoryBackend, nkeys: int) -> None:
    """Insert and reclaim as fast as possible until killed."""
    keys = [f"key-{i}" for i in range(nkeys)]
    print("ready", flush=True)
    i = 0
    while True:
        backend.try_take(keys[i % nkeys])
        i += 1


def main() -> None:
    job, name, capacity, rate, interval, slots = sys.argv[1:7]
    extra = sys.argv[7:]
    # CAPACITY "limits": RATE is a notation ("10/second and 1000/day").
    config = rate if capacity == "limits" else TokenBucketConfig(int(capacity), float(rate), float(interval))
    backend = MemoryBackend(config, shared=name, slots=int(slots))
    if job == "hammer":
        # Attached: wait for the parent's "go" so that all workers start together.
        print("ready", flush=True)
        sys.stdin.readline()
        out = hammer(backend, float(extra[0]), int(extra[1]), extra[2])
    elif job == "churn":
        out = churn(backend, float(extra[0]), int(extra[1]))
    elif job == "insert-loop":
        insert_loop(backend, int(extra[0]))
        return
    elif job == "take":
        out = {"results": [list(backend.table.check(extra[0], int(extra[1])))]}
    elif job == "all-keys-admitted":
        # Every key must become admissible again within the deadline: the
        # table recovered from whatever a killed process left behind.
        deadline = time.monotonic() + float(extra[1])
        pending = {f"key-{i}" for i in range(int(extra[0]))}
        while pending and time.monotonic() < deadline:
            pending = {k for k in pending if not backend.try_take(k)}
        out = {"pending": sorted(pending)}
    else:
        raise SystemExit(f"unknown job {job}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
