"""Overhead of guardian.asgi.RateLimitMiddleware per request, in one run:
a minimal ASGI app called directly in process (no server, no sockets), bare
and wrapped, so the difference is the middleware alone.

    python bench/middleware_bench.py [--requests 200000] [--repeat 7]

Prints the median over ``repeat`` runs of ns per request for each variant.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from typing import Any, Callable, Dict, List

from guardian import CORE, AsyncRateLimiter, MemoryBackend, RateLimiter, TokenBucketConfig
from guardian.asgi import RateLimitMiddleware

SCOPE: Dict[str, Any] = {
    "type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench")], "client": ("10.1.2.3", 4567),
    "server": ("127.0.0.1", 8000), "scheme": "http", "http_version": "1.1", "root_path": "",
    "asgi": {"version": "3.0"},
}
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
BODY = {"type": "http.response.body", "body": b"ok"}


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send(dict(START))
    await send(BODY)


async def receive() -> Dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    pass


def config() -> TokenBucketConfig:
    return TokenBucketConfig(10**9, 10**9)  # never denies: measure the allowed path


VARIANTS: Dict[str, Callable[[], Any]] = {
    "bare app": lambda: app,
    "middleware, RateLimiter (memory), draft fields": lambda: RateLimitMiddleware(
        app, limiter=RateLimiter(MemoryBackend(config()))),
    "middleware, RateLimiter (memory), no fields": lambda: RateLimitMiddleware(
        app, limiter=RateLimiter(MemoryBackend(config())), headers="none"),
    "middleware, AsyncRateLimiter (memory), draft fields": lambda: RateLimitMiddleware(
        app, limiter=AsyncRateLimiter(MemoryBackend(config()))),
}


async def run(target: Any, n: int) -> float:
    scope = SCOPE
    start = time.perf_counter_ns()
    for _ in range(n):
        await target(dict(scope), receive, send)
    return (time.perf_counter_ns() - start) / n


async def main(n: int, repeat: int) -> None:
    apps = {name: make() for name, make in VARIANTS.items()}
    results: Dict[str, List[float]] = {name: [] for name in apps}
    for _ in range(repeat):  # interleaved, so drift hits every variant alike
        for name, target in apps.items():
            results[name].append(await run(target, n))
    bare = statistics.median(results["bare app"])
    print(f"guardian {CORE} core, Python {platform.python_version()}, {platform.machine()}, "
          f"{n:,} requests x {repeat} runs (median)")
    print(f"| variant | ns per request | overhead vs bare |\n|---|---:|---:|")
    for name, samples in results.items():
        med = statistics.median(samples)
        extra = "" if name == "bare app" else f"+{med - bare:,.0f} ns"
        print(f"| {name} | {med:,.0f} | {extra} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=7)
    a = p.parse_args()
    asyncio.run(main(a.requests, a.repeat))
