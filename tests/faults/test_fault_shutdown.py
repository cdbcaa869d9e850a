"""Shutdown under faults: ``close()`` and the at-exit lease return have one
overall deadline while Redis hangs (issue 11 item 4), and what SIGTERM
costs a process with leases, with and without a handler (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from faults import hung
from redis_servers import Server

from guardian import ConfigurationError, TokenBucketConfig
from guardian.backends.batched import BatchedRedisBackend
from guardian.backends.batched_async import AsyncBatchedRedisBackend

pytestmark = [pytest.mark.faults, pytest.mark.redis]

TIMEOUT = 0.25
KEYS = 1000
#: The documented default deadline of close() and of the at-exit return.
CLOSE_DEADLINE = 2.0
SLACK = 0.5
CONFIG = TokenBucketConfig(100, 1, 3600)

def _lease_many(backend: Any) -> None:
    """Two checks per key: the second reserves 2, so each key holds one."""
    for i in range(KEYS):
        assert backend.try_take(f"k{i}") and backend.try_take(f"k{i}")
    assert len(backend.book.leases) == KEYS


def test_close_with_1000_leased_keys_while_hung_sync(own_server: Server, prefix: str) -> None:
    backend = BatchedRedisBackend(CONFIG, url=own_server.url, prefix=prefix, timeout=TIMEOUT,
                                  connect_timeout=TIMEOUT)
    _lease_many(backend)
    took = []
    closer = threading.Thread(target=lambda: took.append(_timed(backend.close)), daemon=True)
    assert own_server.proc is not None
    with hung(own_server.proc.pid):
        closer.start()
        closer.join(CLOSE_DEADLINE + SLACK)
        finished = not closer.is_alive()
    closer.join(60)  # the server answers (or refuses) again: the rest is quick
    print(f"\nclose() with {KEYS} leased keys, Redis hung: "
          f"{f'{took[0]:.2f}s' if finished else f'not done after {CLOSE_DEADLINE + SLACK}s'}")
    assert finished


async def test_close_with_1000_leased_keys_while_hung_async(own_server: Server, prefix: str) -> None:
    backend = AsyncBatchedRedisBackend(CONFIG, url=own_server.url, prefix=prefix, timeout=TIMEOUT,
                                       connect_timeout=TIMEOUT)
    for i in range(KEYS):
        assert await backend.try_take(f"k{i}") and await backend.try_take(f"k{i}")
    assert own_server.proc is not None
    start = time.perf_counter()
    with hung(own_server.proc.pid):
        try:
            await asyncio.wait_for(asyncio.shield(backend.aclose()), CLOSE_DEADLINE + SLACK)
            finished = True
        except asyncio.TimeoutError:
            finished = False
    took = time.perf_counter() - start
    await asyncio.wait_for(backend.aclose(), 60)
    print(f"\naclose() with {KEYS} leased keys, Redis hung: {took:.2f}s (finished: {finished})")
    assert finished


def _timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    # SIGINT as in a terminal: a shell's background job (CI scripts) starts
    # with it ignored, and Python then installs no KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from guardian import TokenBucketConfig
    from guardian.backends.batched import BatchedRedisBackend
    if sys.argv[3] == "handler":
        # docs/reliability.md: turn SIGTERM into a normal exit, so the
        # at-exit hook gives the leased tokens back.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    backend = BatchedRedisBackend(TokenBucketConfig(100, 1, 3600), url=sys.argv[1], prefix=sys.argv[2],
                                  timeout=0.25, connect_timeout=0.25)
    for i in range(int(sys.argv[4])):
        backend.try_take(f"k{i}"); backend.try_take(f"k{i}")
    held = sum(backend.book.table.held(f"k{i}") for i in range(int(sys.argv[4])))
    print(held, flush=True)
    if sys.argv[5] == "exit":
        sys.exit(0)
    time.sleep(60)
""")


def _child(server: Server, prefix: str, mode: str, keys: int, end: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", CHILD, server.url, prefix, mode, str(keys), end],
                            stdout=subprocess.PIPE, text=True, env=env)


def _in_use(server: Server, prefix: str, keys: int) -> int:
    """Tokens in use in Redis over the child's keys (what it took)."""
    from guardian.backends.redis import RedisBackend
    backend = RedisBackend(CONFIG, url=server.url, prefix=prefix)
    try:
        return sum(backend.usage(f"k{i}") for i in range(keys))
    finally:
        backend.close()


@pytest.mark.parametrize("mode", ["bare", "handler"])
def test_sigterm_returns_leases_only_with_a_handler(own_server: Server, prefix: str, mode: str) -> None:
    keys = 50
    child = _child(own_server, prefix, mode, keys, "wait")
    assert child.stdout is not None
    held = int(child.stdout.readline())
    assert held == keys  # one leased token per key, unused
    child.send_signal(signal.SIGTERM)
    code = child.wait(10)
    child.stdout.close()
    in_use = _in_use(own_server, prefix, keys)
    # Per key: 2 checks spent 2 tokens, 3 were reserved (1, then 2), so 1 is held.
    print(f"\nSIGTERM, {mode}: exit {code}; {in_use} tokens taken in Redis for {2 * keys} spent "
          f"({held} leased and unused at the signal)")
    if mode == "bare":
        assert code == -signal.SIGTERM and in_use == 3 * keys  # the leased tokens are lost until refill
    else:
        assert code == 0 and in_use == 2 * keys  # given back at exit: only what was spent


def test_exit_with_1000_leased_keys_while_hung_is_bounded(own_server: Server, prefix: str) -> None:
    child = _child(own_server, prefix, "bare", KEYS, "stdin")
    assert child.stdout is not None and own_server.proc is not None
    assert int(child.stdout.readline()) == KEYS
    with hung(own_server.proc.pid):
        start = time.monotonic()
        child.stdin = None
        child.send_signal(signal.SIGINT)  # KeyboardInterrupt: a normal exit, at-exit hooks run
        try:
            child.wait(CLOSE_DEADLINE + SLACK + 0.5)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        took = time.monotonic() - start
    if not finished:
        child.kill()
        child.wait()
    child.stdout.close()
    print(f"\nexit with {KEYS} leased keys, Redis hung: {took:.2f}s (finished: {finished})")
    assert finished


def test_close_timeout_is_configurable_and_abandoned_tokens_are_counted(own_server: Server, prefix: str) -> None:
    backend = BatchedRedisBackend(CONFIG, url=own_server.url, prefix=prefix, close_timeout=0)
    for i in range(10):
        assert backend.try_take(f"k{i}") and backend.try_take(f"k{i}")
    backend.close()  # no time at all: nothing given back, all of it counted
    stats = backend.stats()
    assert stats["returned_tokens"] == 0 and stats["dropped_tokens"] == 10
    healthy = BatchedRedisBackend(CONFIG, url=own_server.url, prefix=prefix + "h")
    for i in range(10):
        assert healthy.try_take(f"k{i}") and healthy.try_take(f"k{i}")
    healthy.close()  # a healthy Redis: everything back, well within the default deadline
    assert healthy.stats()["returned_tokens"] == 10 and healthy.stats()["dropped_tokens"] == 0
    for bad in (-1, float("nan"), float("inf"), "2", True):
        with pytest.raises(ConfigurationError, match="close_timeout"):
            BatchedRedisBackend(CONFIG, url=own_server.url, close_timeout=bad)
