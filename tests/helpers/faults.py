"""Fault injectors and a tally of decisions, for tests/faults and bench/soak.py.

Every injector works on a real process or a real socket: a redis-server
killed (SIGKILL) and restarted empty, stopped (SIGSTOP) and continued, or a
TCP proxy between a client and Redis that adds latency, drops connections
or blackholes them. Nothing here mocks Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Set

from redis_servers import Server, free_port, ping, wait_until

__all__ = ["Proxy", "hung", "restart_empty", "Tally", "rss_kib", "open_fds", "pool_size", "SLACK"]

#: Seconds added to every latency bound for scheduling: the suite shares a
#: 2-core box (load averages of 8 per core were seen while helpers ran
#: side by side), where a thread can wait this long for a core. The
#: promises themselves (one timeout, 1.5 timeouts) are multiples of the
#: timeout; the failures they catch cost seconds (5 s, 2-3 s, minutes).
SLACK = float(os.environ.get("GUARDIAN_FAULT_SLACK", "0.3"))


# --- processes -----------------------------------------------------------------


@contextlib.contextmanager
def hung(pid: int) -> Iterator[None]:
    """The process is stopped (SIGSTOP) inside the block: its listening
    socket still completes TCP handshakes, so clients connect and then wait
    for a reply that never comes, as with a server stuck in a long command."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def restart_empty(server: Server) -> float:
    """SIGKILL, then start again on the same port with no data (the suite's
    servers run without persistence); the seconds it was down."""
    down = time.monotonic()
    server.kill()
    server.start()
    return time.monotonic() - down


# --- the network ---------------------------------------------------------------


class Proxy:
    """A TCP proxy on a free loopback port in front of ``target_port``,
    served by an asyncio loop in its own thread. Switches, settable at any
    time from the test's thread:

    - ``latency`` (s): each reply chunk from the server is delayed by it;
    - ``blackhole``: bytes in either direction are swallowed (connections
      stay open, nothing answers: a partition or a hung middlebox);
    - ``refuse``: new connections are closed at once;
    - ``drop()``: every open connection is closed now (a reset).
    """

    def __init__(self, target_port: int, port: Optional[int] = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.latency = 0.0
        self.blackhole = False
        self.refuse = False
        self.accepted = 0
        self._writers: Set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: Optional[asyncio.AbstractServer] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Proxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop).result(5)
        return self

    def stop(self) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            self._drop()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def drop(self) -> None:
        """Closes every connection open now (both sides)."""
        self._loop.call_soon_threadsafe(self._drop)
        time.sleep(0.02)

    def _drop(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.blackhole:
                continue
            if replies and self.latency:
                await asyncio.sleep(self.latency)
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


# --- what a scenario measures ----------------------------------------------------


class Tally:
    """Decisions made through a façade: how many, how many allowed, how slow,
    and every exception that escaped it (the promise: none)."""

    def __init__(self) -> None:
        self.decisions = 0
        self.allowed = 0
        self.slowest = 0.0
        self.escapes: List[BaseException] = []
        self._lock = threading.Lock()

    def record(self, allowed: bool, took: float) -> None:
        with self._lock:
            self.decisions += 1
            self.allowed += bool(allowed)
            if took > self.slowest:
                self.slowest = took

    def check(self, call: Callable[[], Any]) -> Optional[bool]:
        """Runs one check (returning a bool or a LimitResult); None if it raised."""
        start = time.perf_counter()
        try:
            result = call()
        except Exception as exc:  # the promise under test: nothing escapes
            with self._lock:
                self.escapes.append(exc)
            return None
        allowed = bool(getattr(result, "allowed", result))
        self.record(allowed, time.perf_counter() - start)
        return allowed

    async def acheck(self, call: Callable[[], Any]) -> Optional[bool]:
        start = time.perf_counter()
        try:
            result = await call()
        except Exception as exc:
            self.escapes.append(exc)
            return None
        allowed = bool(getattr(result, "allowed", result))
        self.record(allowed, time.perf_counter() - start)
        return allowed


def rss_kib(pid: Optional[int] = None) -> int:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: Optional[int] = None) -> int:
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


def pool_size(backend: Any) -> int:
    """Connections a (plain or batched) Redis backend counts as open: the
    asyncio backends' own pool, else what the redis-py pool counts as made
    (what ``max_connections`` caps)."""
    redis_backend = getattr(backend, "redis", backend)
    if not getattr(redis_backend, "direct", True):  # a cluster: the busiest node's pool
        nodes = redis_backend.client.nodes_manager.nodes_cache.values()
        return max((int(getattr(getattr(n.redis_connection, "connection_pool", None), "_created_connections", 0))
                    for n in nodes if n.redis_connection is not None), default=0)
    wires = getattr(redis_backend, "_wires", None)
    if wires is not None:
        return int(wires.open)
    pool = getattr(redis_backend, "_pool", None)
    return int(getattr(pool, "_created_connections", 0) or 0)


__all__ += ["ping", "wait_until", "free_port"]
