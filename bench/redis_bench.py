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
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import hiredis  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from redis_servers import Cluster, Server  # noqa: E402

from guardian import AsyncRateLimiter, RateLimiter, TokenBucketConfig  # noqa: E402
from guardian.backends._redis_scripts import Layout, Packer, scripts  # noqa: E402
from guardian.backends.redis import RedisBackend  # noqa: E402
from guardian.backends.redis_async import AsyncRedisBackend  # noqa: E402

KEYS = [f"user:{i:04d}" for i in range(1000)]
CONFIG = TokenBucketConfig(100, 100)
Row = Tuple[str, float, float, float]  # name, p50 us, p99 us, checks/s


def keyed(f: Callable[[str], Any]) -> Callable[[], Any]:
    it = iter(range(1 << 62))
    return lambda: f(KEYS[next(it) % 1000])


#: Subjects are measured in turns of seconds/ROUNDS each, ROUNDS times, and
#: their samples pooled: on a shared machine every subject then sees the
#: same mix of quiet and busy moments.
ROUNDS = 5
Subject = Tuple[str, Callable[[], Any]]


class _Plan:
    """The turns of an interleaved measurement; the sync and async loops
    below only time the calls."""

    def __init__(self, subjects: List[Tuple[str, Any]], seconds: float, rounds: int) -> None:
        self.subjects, self.seconds, self.rounds = subjects, seconds, rounds
        self.samples: Dict[str, List[int]] = {name: [] for name, _ in subjects}
        self.spent = dict.fromkeys(self.samples, 0)

    def warmups(self) -> Iterator[Tuple[Any, float]]:
        """(call, perf_counter deadline): connections, script cache, windows."""
        for _, call in self.subjects:
            yield call, time.perf_counter() + self.seconds / 3 / self.rounds

    def turns(self) -> Iterator[Tuple[Any, List[int], int]]:
        """(call, its samples, perf_counter_ns deadline), round after round."""
        for _ in range(self.rounds):
            for name, call in self.subjects:
                start = time.perf_counter_ns()
                yield call, self.samples[name], start + int(self.seconds / self.rounds * 1e9)
                self.spent[name] += time.perf_counter_ns() - start

    def rows(self) -> List[Row]:
        out = []
        for name, _ in self.subjects:
            samples = sorted(self.samples[name])
            out.append((name, samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3,
                        len(samples) / (self.spent[name] / 1e9)))
        return out


def measure_all(subjects: List[Subject], seconds: float, rounds: int = ROUNDS) -> List[Row]:
    plan, clock = _Plan(subjects, seconds, rounds), time.perf_counter_ns
    for call, end in plan.warmups():
        while time.perf_counter() < end:
            call()
    for call, out, stop in plan.turns():
        while True:
            t0 = clock()
            call()
            t1 = clock()
            out.append(t1 - t0)
            if t1 > stop:
                break
    return plan.rows()


def measure(name: str, call: Callable[[], Any], seconds: float) -> Row:
    return measure_all([(name, call)], seconds, 1)[0]


async def ameasure_all(subjects: List[Tuple[str, Callable[[], Awaitable[Any]]]], seconds: float,
                       rounds: int = ROUNDS) -> List[Row]:
    plan, clock = _Plan(subjects, seconds, rounds), time.perf_counter_ns
    for call, end in plan.warmups():
        while time.perf_counter() < end:
            await call()
    for call, out, stop in plan.turns():
        while True:
            t0 = clock()
            await call()
            t1 = clock()
            out.append(t1 - t0)
            if t1 > stop:
                break
    return plan.rows()


# --- floors -----------------------------------------------------------------


Route = Tuple[socket.socket, Any, bytes]  # a plain socket, its hiredis reader, a packed command


def plain(host: str, port: int) -> Tuple[socket.socket, Any]:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, hiredis.Reader()


def replay(routes: List[Route]) -> Callable[[], Any]:
    """Sends the routes' pre-encoded commands in turn, each on its blocking
    socket, and parses each reply with hiredis."""
    it = iter(range(1 << 62))
    n = len(routes)

    def call() -> Any:
        sock, reader, packed = routes[next(it) % n]
        sock.sendall(packed)
        reply = reader.gets()
        while reply is False:
            reader.feed(sock.recv(65536))
            reply = reader.gets()
        return reply

    return call


def raw_evalsha(host: str, port: int, packer: Packer) -> Callable[[], Any]:
    """The physical floor: the same EVALSHA, pre-encoded, on a plain
    blocking TCP socket, parsed by hiredis."""
    sock, reader = plain(host, port)
    return replay([(sock, reader, packer.take1(k)) for k in KEYS])


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


def raw_cluster_evalsha(client: Any, packer: Packer) -> Callable[[], Any]:
    """The cluster's physical floor: the same EVALSHA, pre-encoded, on a
    plain socket to the key's primary (slot map read beforehand)."""
    socks: Dict[str, Tuple[socket.socket, Any]] = {}
    routes = []
    for k in KEYS:
        node = client.get_node_from_key(packer.key(k))
        if node.name not in socks:
            socks[node.name] = plain(node.host, node.port)
        routes.append((*socks[node.name], packer.take1(k)))
    return replay(routes)


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
    limiter = RateLimiter(RedisBackend(CONFIG, url=url, prefix="g"))
    subjects: List[Subject] = [("guardian sync check_limit", keyed(limiter.check_limit))]
    client: Any = redis.RedisCluster(host=host, port=port) if cluster else redis.Redis(host=host, port=port)
    sha = scripts()["take"].sha
    load_take(client)
    layout = Layout(CONFIG)
    evalsha = keyed(lambda k: client.evalsha(sha, 1, f"f:{{{k}}}", *layout.argv, 1))
    subjects.append(("floor: redis-py EVALSHA, same script", evalsha))
    if cluster:
        subjects.append(("floor: EVALSHA pre-encoded, plain socket to the key's primary + hiredis",
                         raw_cluster_evalsha(client, Packer("f", layout))))
    else:
        subjects.append(("floor: redis-py PING", client.ping))
        subjects.append(("floor: EVALSHA pre-encoded, plain socket + hiredis",
                         raw_evalsha(host, port, Packer("f", layout))))
    subjects += peers(url, "p").items()
    rows = measure_all(subjects, seconds)
    limiter.close()
    client.close()
    return rows


async def async_client(url: str, host: str, port: int, seconds: float, cluster: bool) -> List[Row]:
    limiter = AsyncRateLimiter(AsyncRedisBackend(CONFIG, url=url, prefix="g"))
    client: Any = (redis.asyncio.RedisCluster(host=host, port=port) if cluster
                   else redis.asyncio.Redis(host=host, port=port))
    sha = scripts()["take"].sha
    layout = Layout(CONFIG)
    subjects = [
        ("guardian async check_limit", keyed(limiter.check_limit)),
        ("floor: redis.asyncio EVALSHA, same script",
         keyed(lambda k: client.evalsha(sha, 1, f"f:{{{k}}}", *layout.argv, 1))),
    ]
    if not cluster:
        subjects += [
            ("floor: redis.asyncio PING", client.ping),
            ("floor: EVALSHA pre-encoded, asyncio Protocol + hiredis",
             await aproto_evalsha(host, port, Packer("f", layout))),
            ("floor: EVALSHA pre-encoded, asyncio stream + hiredis",
             await araw_evalsha(host, port, Packer("f", layout))),
        ]
    rows = await ameasure_all(subjects, seconds)
    await limiter.aclose()
    await client.aclose()
    return rows


#: The least server work take_many can do per key with one string per key
#: and a TTL: one MGET for all, one SET PX each, no arithmetic.
#: (PX 10 ms: the keys expire between visits, as guardian's do here.)
MINIMAL_WRITES = ("local v = redis.call('MGET', unpack(KEYS)) local o = {} "
                  "for i = 1, #KEYS do redis.call('SET', KEYS[i], '1790000000123456', 'PX', '10') "
                  "o[i] = i end return o")


def batches(url: str, seconds: float, host: str = "", port: int = 0) -> List[Row]:
    """take_many of 100 keys per key, beside a single check; on one server
    also the server's own time and the least server work possible."""
    limiter = RateLimiter(RedisBackend(CONFIG, url=url, prefix="b"))
    # 100 batches of 100 keys in turn: a key comes back after ~100 batches,
    # later than its 10 ms TTL, so, like the single checks over 1000 keys,
    # every check is allowed into an absent (full) bucket and writes it.
    groups = [[f"user:{i:05d}" for i in range(j, j + 100)] for j in range(0, 10_000, 100)]
    it = iter(range(1 << 62))
    subjects: List[Subject] = [
        ("guardian check_many, 100 keys (per key)", lambda: limiter.check_many(groups[next(it) % 100]))]
    raw = redis.Redis(host=host, port=port) if port else None
    if raw is not None:
        sha = raw.script_load(MINIMAL_WRITES)
        sock, reader = plain(host, port)
        minimal = replay([(sock, reader, hiredis.pack_command(("EVALSHA", sha, 100, *[f"n:{{{k}}}" for k in g])))
                          for g in groups])
        subjects.append(("floor: MGET + SET PX per key only, pre-encoded, plain socket (per key)", minimal))
    subjects.append(("guardian check_limit", keyed(limiter.check_limit)))
    rows = [(n, p50 / 100, p99 / 100, rate * 100) if "per key" in n else (n, p50, p99, rate)
            for n, p50, p99, rate in measure_all(subjects, seconds)]
    if raw is not None:
        # The server's time per key in guardian's take_many alone.
        raw.config_resetstat()
        measure("", subjects[0][1], seconds / ROUNDS)
        server = raw.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        rows.insert(1, ("  its Redis server time per key (INFO commandstats, mean)", server / 100, 0, 0))
        sock.close()
        raw.close()
    limiter.close()
    return rows


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
        out.append(table("take_many of 100 keys, amortised per key", batches(url, s, "127.0.0.1", port),
                         "guardian check_limit"))
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
