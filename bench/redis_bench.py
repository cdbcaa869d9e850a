"""Redis benchmarks, one run, side by side: guardian against the floors
(redis-py PING, redis-py EVALSHA of the same take script, that EVALSHA
pre-encoded on a plain socket with hiredis' reader) and against peers
(limits, pyrate-limiter, throttled-py), on a single Redis and on a
3-master cluster that this script starts on free loopback ports.

    python bench/redis_bench.py [--seconds 1.5] [--out docs/benchmarks-redis.md]

Every subject checks 1000 keys in turn, 100/s each, so all are allowed:
each does its full write path. Latency is per check (p50, p99); checks/s
is one client in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import hiredis  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from redis_servers import Cluster, Server  # noqa: E402

from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig  # noqa: E402
from guardian.backends._redis_proto import Layout, Packer, scripts  # noqa: E402
from guardian.backends.redis import RedisBackend  # noqa: E402
from guardian.backends.redis_async import AsyncRedisBackend  # noqa: E402

KEYS = [f"user:{i:04d}" for i in range(1000)]
CONFIG = TokenBucketConfig(100, 100)
Row = Tuple[str, float, float, float]  # name, p50 us, p99 us, checks/s


def keyed(f: Callable[[str], Any]) -> Callable[[], Any]:
    it = iter(range(1 << 62))
    return lambda: f(KEYS[next(it) % 1000])


def measure(name: str, call: Callable[[], Any], seconds: float) -> Row:
    end = time.perf_counter() + seconds / 3
    while time.perf_counter() < end:  # warm up: connections, script cache, windows
        call()
    samples: List[int] = []
    clock = time.perf_counter_ns
    start = clock()
    stop = start + int(seconds * 1e9)
    while True:
        t0 = clock()
        call()
        t1 = clock()
        samples.append(t1 - t0)
        if t1 > stop:
            break
    total = (clock() - start) / 1e9
    samples.sort()
    return name, samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3, len(samples) / total


async def ameasure(name: str, call: Callable[[], Awaitable[Any]], seconds: float) -> Row:
    end = time.perf_counter() + seconds / 3
    while time.perf_counter() < end:
        await call()
    samples: List[int] = []
    clock = time.perf_counter_ns
    start = clock()
    stop = start + int(seconds * 1e9)
    while True:
        t0 = clock()
        await call()
        t1 = clock()
        samples.append(t1 - t0)
        if t1 > stop:
            break
    total = (clock() - start) / 1e9
    samples.sort()
    return name, samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3, len(samples) / total


# --- floors -----------------------------------------------------------------


def raw_evalsha(host: str, port: int, packer: Packer) -> Callable[[], Any]:
    """The physical floor: the same EVALSHA, pre-encoded, on a plain
    blocking TCP socket, parsed by hiredis."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()
    packed = [packer.take1(k) for k in KEYS]
    it = iter(range(1 << 62))

    def call() -> Any:
        sock.sendall(packed[next(it) % 1000])
        reply = reader.gets()
        while reply is False:
            reader.feed(sock.recv(65536))
            reply = reader.gets()
        return reply

    return call


class _FloorProtocol(asyncio.Protocol):
    """The asyncio floor's transport: data_received feeds hiredis and
    resolves the one pending Future (no timeout, no error handling)."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiter: Any = None

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        reply = self.reader.gets()
        if reply is not False:
            self.waiter.set_result(reply)


async def aproto_evalsha(host: str, port: int, packer: Packer) -> Callable[[], Awaitable[Any]]:
    """The asyncio physical floor: the same EVALSHA, pre-encoded, written
    to an asyncio transport (loop.create_connection, TCP_NODELAY, the kind
    of transport guardian's wires use) whose Protocol parses the reply with
    hiredis and resolves a Future per request."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_FloorProtocol, host, port)
    packed = [packer.take1(k) for k in KEYS]
    it = iter(range(1 << 62))

    def call() -> Any:
        proto.waiter = waiter = loop.create_future()
        transport.write(packed[next(it) % 1000])
        return waiter

    return call


async def araw_evalsha(host: str, port: int, packer: Packer) -> Callable[[], Awaitable[Any]]:
    """The same on an asyncio stream (StreamReader.read per reply)."""
    stream, writer = await asyncio.open_connection(host, port)
    reader = hiredis.Reader()
    packed = [packer.take1(k) for k in KEYS]
    it = iter(range(1 << 62))

    async def call() -> Any:
        writer.write(packed[next(it) % 1000])
        reply = reader.gets()
        while reply is False:
            reader.feed(await stream.read(65536))
            reply = reader.gets()
        return reply

    return call


def load_take(client: Any) -> str:
    client.script_load(scripts()["take"].source)  # a cluster client loads it on every primary
    return scripts()["take"].sha


# --- peers --------------------------------------------------------------------


def peers(url: str, prefix: str) -> Dict[str, Callable[[], Any]]:
    import limits
    import limits.storage
    import limits.strategies
    from pyrate_limiter import Duration, Limiter, Rate
    from pyrate_limiter.buckets.redis_bucket import RedisBucket
    from throttled import RateLimiterType, RedisStore, Throttled, rate_limiter

    out: Dict[str, Callable[[], Any]] = {}
    storage = limits.storage.storage_from_string(url)
    item = limits.parse("100/second")
    moving = limits.strategies.MovingWindowRateLimiter(storage)
    fixed = limits.strategies.FixedWindowRateLimiter(storage)
    out["limits RedisStorage, moving window"] = keyed(lambda k: moving.hit(item, prefix + "mw", k))
    out["limits RedisStorage, fixed window"] = keyed(lambda k: fixed.hit(item, prefix + "fw", k))
    if "cluster" in url:
        return out
    client = redis.Redis.from_url(url)
    buckets = [RedisBucket.init([Rate(100, Duration.SECOND)], client, f"{prefix}pyrate:{k}") for k in KEYS[:100]]
    pyrate = [Limiter(b) for b in buckets]
    it = iter(range(1 << 62))
    out["pyrate-limiter RedisBucket (100 keys)"] = lambda: pyrate[next(it) % 100].try_acquire(
        "x", blocking=False)
    store = RedisStore(server=url)
    quota = rate_limiter.per_sec(100, burst=100)
    bucket = Throttled(using=RateLimiterType.TOKEN_BUCKET.value, quota=quota, store=store)
    gcra = Throttled(using=RateLimiterType.GCRA.value, quota=quota, store=store)
    out["throttled-py RedisStore, token bucket"] = keyed(lambda k: bucket.limit(prefix + "tb" + k))
    out["throttled-py RedisStore, GCRA"] = keyed(lambda k: gcra.limit(prefix + "gc" + k))
    return out


# --- scenarios ----------------------------------------------------------------


def single_client(url: str, host: str, port: int, seconds: float, cluster: bool) -> List[Row]:
    rows = []
    limiter = RateLimiter(RedisBackend(CONFIG, url=url, prefix="g"))
    rows.append(measure("guardian sync check_limit", keyed(limiter.check_limit), seconds))
    client: Any = redis.RedisCluster(host=host, port=port) if cluster else redis.Redis(host=host, port=port)
    sha = scripts()["take"].sha
    load_take(client)
    layout = Layout(CONFIG)
    evalsha = keyed(lambda k: client.evalsha(sha, 1, f"f:{{{k}}}", *layout.argv, 1))
    rows.append(measure("floor: redis-py EVALSHA, same script", evalsha, seconds))
    if not cluster:
        rows.append(measure("floor: redis-py PING", client.ping, seconds))
        rows.append(measure("floor: EVALSHA pre-encoded, plain socket + hiredis",
                            raw_evalsha(host, port, Packer("f", layout)), seconds))
    for name, call in peers(url, "p").items():
        rows.append(measure(name, call, seconds))
    limiter.close()
    client.close()
    return rows


async def async_client(url: str, host: str, port: int, seconds: float, cluster: bool) -> List[Row]:
    rows = []
    limiter = AsyncRateLimiter(AsyncRedisBackend(CONFIG, url=url, prefix="g"))
    rows.append(await ameasure("guardian async check_limit", keyed(limiter.check_limit), seconds))
    client: Any = (redis.asyncio.RedisCluster(host=host, port=port) if cluster
                   else redis.asyncio.Redis(host=host, port=port))
    sha = scripts()["take"].sha
    layout = Layout(CONFIG)
    rows.append(await ameasure("floor: redis.asyncio EVALSHA, same script",
                               keyed(lambda k: client.evalsha(sha, 1, f"f:{{{k}}}", *layout.argv, 1)), seconds))
    if not cluster:
        rows.append(await ameasure("floor: redis.asyncio PING", client.ping, seconds))
        rows.append(await ameasure("floor: EVALSHA pre-encoded, asyncio Protocol + hiredis",
                                   await aproto_evalsha(host, port, Packer("f", layout)), seconds))
        rows.append(await ameasure("floor: EVALSHA pre-encoded, asyncio stream + hiredis",
                                   await araw_evalsha(host, port, Packer("f", layout)), seconds))
    await limiter.aclose()
    await client.aclose()
    return rows


def batches(url: str, seconds: float) -> List[Row]:
    limiter = RateLimiter(RedisBackend(CONFIG, url=url, prefix="b"))
    groups = [KEYS[i:i + 100] for i in range(0, 1000, 100)]
    it = iter(range(1 << 62))
    name, p50, p99, rate = measure("guardian check_many, 100 keys", lambda: limiter.check_many(
        groups[next(it) % 10]), seconds)
    single = measure("guardian check_limit", keyed(limiter.check_limit), seconds)
    limiter.close()
    return [(name + " (per key)", p50 / 100, p99 / 100, rate * 100), single]


def two_processes(url: str, seconds: float) -> List[Row]:
    rows = []
    for subject in ("guardian", "redis-py"):
        cmd = [sys.executable, __file__, "--worker", subject, "--url", url, "--seconds", str(seconds)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        results = [tuple(map(float, p.communicate()[0].split())) for p in procs]
        p50 = max(r[0] for r in results)
        p99 = max(r[1] for r in results)
        rows.append((f"{subject} sync, 2 processes (total)", p50, p99, sum(r[2] for r in results)))
    return rows


def worker(subject: str, url: str, seconds: float) -> None:
    if subject == "guardian":
        limiter = RateLimiter(RedisBackend(CONFIG, url=url, prefix="w"))
        call = keyed(limiter.check_limit)
    else:
        client = redis.Redis.from_url(url)
        sha = load_take(client)
        layout = Layout(CONFIG)
        call = keyed(lambda k: client.evalsha(sha, 1, f"w:{{{k}}}", *layout.argv, 1))
    _, p50, p99, rate = measure(subject, call, seconds)
    print(p50, p99, rate)


def failure(tmp: Path) -> List[Row]:
    """Decisions while Redis is down (breaker open), and recovery time."""
    server = Server(tmp).start()
    rows = []
    for mode in (True, False):
        limiter = RateLimiter(RedisBackend(CONFIG, url=server.url, prefix="f"), fail_open=mode)
        limiter.check_limit("k")
        server.kill()
        for _ in range(5):
            limiter.check_limit("k")
        name = f"breaker open, fail_open={mode}: check_limit"
        rows.append(measure(name, keyed(limiter.check_limit), 0.5))
        server.start()
        back = time.monotonic()
        while limiter.breaker is not None and limiter.breaker.is_open:
            limiter.check_limit("probe")
            time.sleep(0.001)
        rows.append((f"recovery after Redis returned, fail_open={mode} (s)", time.monotonic() - back, 0, 0))
        limiter.close()
    server.stop()
    return rows


def table(title: str, rows: List[Row], base: Optional[str] = None) -> str:
    ref = next((r for r in rows if base and r[0].startswith(base)), None)
    lines = [f"### {title}", "", "| subject | p50 µs | p99 µs | checks/s | p50 vs guardian |",
             "|---|---:|---:|---:|---:|"]
    for name, p50, p99, rate in rows:
        ratio = f"{p50 / ref[1]:.2f}×" if ref and ref[1] else ""
        lines.append(f"| {name} | {p50:.1f} | {p99:.1f} | {rate:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker")
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.url, args.seconds)
    s = args.seconds
    out = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
           f"Python {platform.python_version()}, redis-py {redis.__version__}, "
           f"redis-server {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}.",
           f"Command: `python bench/redis_bench.py --seconds {s}`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp)).start()
        url, port = server.url, server.port
        out.append("## Single Redis\n")
        out.append(table("Sync, one client", single_client(url, "127.0.0.1", port, s, False), "guardian"))
        out.append(table("asyncio, one client", asyncio.run(async_client(url, "127.0.0.1", port, s, False)),
                         "guardian"))
        out.append(table("take_many of 100 keys, amortised per key", batches(url, s), "guardian check_limit"))
        out.append(table("2 processes, one key set", two_processes(url, s), "guardian"))
        server.stop()
        out.append(table("Failure policy (Redis killed, then restarted on its port)", failure(Path(tmp))))
        cluster = Cluster(Path(tmp) / "cluster").start()
        curl, cport = cluster.url, cluster.servers[0].port
        out.append("## Redis Cluster (3 masters, 3 replicas)\n")
        out.append(table("Sync, one client", single_client(curl, "127.0.0.1", cport, s, True), "guardian"))
        out.append(table("asyncio, one client", asyncio.run(async_client(curl, "127.0.0.1", cport, s, True)),
                         "guardian"))
        out.append(table("take_many of 100 keys, amortised per key", batches(curl, s), "guardian check_limit"))
        cluster.stop()
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(args.out.read_text().split("<!-- results -->")[0] + "<!-- results -->\n\n" + text)


if __name__ == "__main__":
    main()
