"""Load generator for `guardian serve` (a plain script, bounded duration).

    python bench/sidecar_bench.py [--seconds 3] [--pin] [--generator auto|h2load|python] [--out docs/benchmarks-sidecar.md]

Measures requests per second and p50/p99 latency of guardian.v1 CheckLimit
and Envoy's ShouldRateLimit against `guardian serve` at 1 and 2 workers,
side by side with a floor measured in the same run: a grpc.aio server with
the same services and message shapes that answers a constant. Then
CheckLimits with 100 checks per call against single CheckLimit calls.

Load comes from ``h2load`` (nghttp2's C HTTP/2 load generator, Debian
package ``nghttp2-client``) when it is on PATH: unary gRPC is one HTTP/2
POST of a length-prefixed message with ``content-type: application/grpc``,
so a C client can send it prebuilt from a file (``--connections`` x
``--streams`` in flight, one thread). h2load checks the HTTP status, not
``grpc-status``, so each RPC is first called once with the Python stub.
Without h2load (or with ``--generator python``), ``--clients`` processes
each run ``--concurrency`` grpc.aio tasks over their own connections (a
local subchannel pool per channel, so SO_REUSEPORT spreads them over the
workers). Either way the CPU the generator and the server use over the run
is measured (rusage of the generator, /proc of the server's processes) and
reported: on a 2-core host the generator shares the cores with the server.
``--pin`` puts the generator on CPU 0 and the floor and 1-worker servers on
CPU 1 (the 2-worker server may use both).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]

POLICY = """
limits:
  default: {requests_per_unit: 1000000000, unit: second}
---
domain: bench
descriptors:
  - key: client
    rate_limit: {unit: second, requests_per_unit: 1000000000}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the floor: same services and message shapes, constant answers ----------


def floor_server(port: int) -> None:
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    from guardian.v1 import guardian_pb2 as pb
    from guardian.v1 import guardian_pb2_grpc as pb_grpc

    class V1(pb_grpc.RateLimiterServicer):  # type: ignore[misc]
        async def CheckLimit(self, request: Any, context: Any) -> Any:
            return pb.CheckLimitResponse(allowed=True, remaining=99, retry_after=0.0, reset_after=0.1, limit=100)

        async def CheckLimits(self, request: Any, context: Any) -> Any:
            r = pb.CheckLimitsResponse()
            for _ in request.checks:
                r.results.add(allowed=True, remaining=99, retry_after=0.0, reset_after=0.1, limit=100)
            return r

    R = rls_pb2.RateLimitResponse

    class Rls(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
        async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
            r = R(overall_code=R.OK)
            for _ in request.descriptors:
                st = r.statuses.add(code=R.OK, current_limit=R.RateLimit(requests_per_unit=100, unit=R.RateLimit.SECOND),
                                    limit_remaining=99)
                st.duration_until_reset.FromNanoseconds(100_000_000)
            return r

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_RateLimiterServicer_to_server(V1(), server)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Rls(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


# --- load ---------------------------------------------------------------------


def _client(target: str, kind: str, seconds: float, concurrency: int, pin: bool,
            out: "multiprocessing.Queue[Any]") -> None:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    from guardian.v1 import guardian_pb2 as pb
    from guardian.v1 import guardian_pb2_grpc as pb_grpc

    if pin:
        os.sched_setaffinity(0, {0})

    async def main() -> Tuple[int, List[float], float]:
        channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(max(concurrency // 4, 1))]
        pid = os.getpid()
        latencies: List[float] = []
        count = 0

        async def worker(i: int) -> None:
            nonlocal count
            ch = channels[i % len(channels)]
            if kind == "check":
                call = pb_grpc.RateLimiterStub(ch).CheckLimit
                req: Any = pb.CheckLimitRequest(key=f"k{pid}-{i}", cost=1)
            elif kind == "batch":
                call = pb_grpc.RateLimiterStub(ch).CheckLimits
                req = pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key=f"k{pid}-{i}-{j}", cost=1)
                                                    for j in range(100)])
            else:
                call = rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit
                req = rls_pb2.RateLimitRequest(domain="bench", descriptors=[rl.RateLimitDescriptor(
                    entries=[rl.RateLimitDescriptor.Entry(key="client", value=f"c{pid}-{i}")])])
            await call(req)  # connect and warm up
            await start.wait()
            perf = time.perf_counter
            while not done:
                t0 = perf()
                await call(req)
                latencies.append(perf() - t0)
                count += 1

        start = asyncio.Event()
        done = False
        tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(0.5)
        start.set()
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        done = True
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        cpu = (time.process_time() - c0) / elapsed  # cores this client used (all its threads)
        for ch in channels:
            await ch.close()
        return int(count / elapsed * 1), latencies, cpu

    out.put(asyncio.run(main()))


def _message(kind: str) -> Tuple[str, bytes]:
    """(gRPC path, request message) of one RPC kind, as the Python clients send it."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
    from envoy.service.ratelimit.v3 import rls_pb2

    from guardian.v1 import guardian_pb2 as pb

    if kind == "check":
        return "/guardian.v1.RateLimiter/CheckLimit", pb.CheckLimitRequest(key="k-h2load", cost=1).SerializeToString()
    if kind == "batch":
        return "/guardian.v1.RateLimiter/CheckLimits", pb.CheckLimitsRequest(checks=[
            pb.CheckLimitRequest(key=f"k-h2load-{j}", cost=1) for j in range(100)]).SerializeToString()
    return "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", rls_pb2.RateLimitRequest(
        domain="bench", descriptors=[rl.RateLimitDescriptor(
            entries=[rl.RateLimitDescriptor.Entry(key="client", value="c-h2load")])]).SerializeToString()


def _call_once(target: str, path: str, body: bytes) -> None:
    """One call with grpcio, so a method that fails is not timed as a success by h2load."""
    import grpc

    with grpc.insecure_channel(target) as ch:
        ch.unary_unary(path)(body, timeout=5)


def load_h2load(target: str, kind: str, seconds: float, connections: int, streams: int,
                pin: bool) -> Dict[str, float]:
    path, body = _message(kind)
    _call_once(target, path, body)
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log"
        data.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)
        cmd = ["h2load", "-D", f"{seconds:g}", "--warm-up-time=1", "-c", str(connections), "-m", str(streams),
               "-t", "1", "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
               f"--log-file={log}", f"http://{target}{path}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0 or " 0 failed" not in out:
            raise RuntimeError(f"h2load failed:\n{out}")
        # "finished in 3.00s, 3104.33 req/s, ..." is over the measured window (after the warm-up)
        rps = float(out.split("finished in", 1)[1].split(",")[1].split()[0])
        lat = sorted(int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines() if line.count("\t") >= 2)
    q99 = lat[min(int(len(lat) * 0.99), len(lat) - 1)]
    # rusage covers h2load's whole life (warm-up included): cores used over that time
    cpu = (usage.ru_utime + usage.ru_stime) / (seconds + 1.0)
    return {"rps": rps, "p50": statistics.median(lat) * 1e3, "p99": q99 * 1e3, "gen_cpu": cpu}


def load(target: str, kind: str, seconds: float, clients: int, concurrency: int, pin: bool = False) -> Dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    q: "multiprocessing.Queue[Any]" = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(target, kind, seconds, concurrency, pin, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    rps = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    q99 = lat[min(int(len(lat) * 0.99), len(lat) - 1)]
    return {"rps": rps, "p50": statistics.median(lat) * 1e3, "p99": q99 * 1e3, "gen_cpu": sum(r[2] for r in results)}


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children (a supervisor's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        pids += [int(c) for t in os.listdir(f"/proc/{pid}/task")
                 for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wait_port(port: int, proc: "subprocess.Popen[bytes]") -> None:
    import grpc

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                grpc.channel_ready_future(ch).result(timeout=0.5)
            time.sleep(0.5)  # the other workers
            return
        except grpc.FutureTimeoutError:
            continue
    raise TimeoutError(f"port {port}")


def _affinity(cpus: Any) -> Any:
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def start_guardian(workers: int, policy: str, cpus: Any = None) -> Tuple[int, "subprocess.Popen[bytes]"]:
    # this table is grpcio's; --native compares both engines
    return start_guardian_engine("grpcio", workers, policy, cpus)


def start_floor(cpus: Any = None) -> Tuple[int, "subprocess.Popen[bytes]"]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--floor-server", str(port)], preexec_fn=_affinity(cpus))
    wait_port(port, proc)
    return port, proc


def stop(proc: "subprocess.Popen[bytes]") -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--generator", choices=("auto", "h2load", "python"), default="auto",
                    help="auto: h2load when it is on PATH, else the grpc.aio clients")
    ap.add_argument("--connections", type=int, default=16,
                    help="h2load: connections (enough that SO_REUSEPORT spreads them evenly over 2 workers)")
    ap.add_argument("--streams", type=int, default=8, help="h2load: requests in flight per connection")
    ap.add_argument("--clients", type=int, default=2, help="python: client processes")
    ap.add_argument("--concurrency", type=int, default=16, help="python: grpc.aio tasks per client")
    ap.add_argument("--pin", action="store_true",
                    help="generator on CPU 0; floor and 1-worker server on CPU 1; 2 workers on both")
    ap.add_argument("--out", default=None)
    ap.add_argument("--floor-server", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.floor_server is not None:
        floor_server(a.floor_server)
        return 0
    h2 = a.generator == "h2load" or (a.generator == "auto" and shutil.which("h2load") is not None)
    if h2 and shutil.which("h2load") is None:
        raise SystemExit("h2load is not on PATH (Debian: apt-get install nghttp2-client)")
    pin = a.pin and len(os.sched_getaffinity(0)) >= 2
    one_cpu = {1} if pin else None
    policy = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    policy.write(POLICY)
    policy.close()
    rows: List[Tuple[str, str, Dict[str, float]]] = []

    def run(label: str, kind: str, port: int, proc: "subprocess.Popen[bytes]") -> None:
        target = f"127.0.0.1:{port}"
        c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        if h2:
            r = load_h2load(target, kind, a.seconds, a.connections, a.streams, pin)
        else:
            r = load(target, kind, a.seconds, a.clients, a.concurrency, pin)
        r["server_cpu"] = (_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        rows.append((label, kind, r))

    try:
        port, proc = start_floor(one_cpu)
        try:
            for kind in ("check", "rls", "batch"):
                run("floor (constant answer)", kind, port, proc)
        finally:
            stop(proc)
        for workers in (1, 2):
            port, proc = start_guardian(workers, policy.name, one_cpu if workers == 1 else None)
            try:
                for kind in ("check", "rls") + (("batch",) if workers == 1 else ()):
                    run(f"guardian serve, {workers} worker{'s' * (workers > 1)}", kind, port, proc)
            finally:
                stop(proc)
    finally:
        os.unlink(policy.name)
    names = {"check": "CheckLimit", "rls": "ShouldRateLimit", "batch": "CheckLimits x100"}
    by = {(label, kind): r for label, kind, r in rows}
    gen = (f"h2load, {a.connections} connections x {a.streams} streams, 1 thread" if h2
           else f"{a.clients} processes x {a.concurrency} grpc.aio tasks")
    flags = (f"--generator h2load --connections {a.connections} --streams {a.streams}" if h2
             else f"--generator python --clients {a.clients} --concurrency {a.concurrency}")
    lines = [
        f"Command: `python bench/sidecar_bench.py --seconds {a.seconds:g} {flags}{' --pin' if pin else ''}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end; load generator "
        f"({gen}) on the same machine{', pinned to CPU 0; floor and 1 worker on CPU 1' if pin else ''}.",
        "",
        "| server | RPC | calls/s | p50 ms | p99 ms | generator CPU (cores) | server CPU (cores) "
        "| server CPU us/call |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, kind, r in rows:
        lines.append(f"| {label} | {names[kind]} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
                     f"| {r['gen_cpu']:.2f} | {r['server_cpu']:.2f} | {r['server_cpu'] / r['rps'] * 1e6:.0f} |")
    floor_c, g1c, g2c = (by[("floor (constant answer)", "check")], by[("guardian serve, 1 worker", "check")],
                         by[("guardian serve, 2 workers", "check")])
    floor_r, g1r, g2r = (by[("floor (constant answer)", "rls")], by[("guardian serve, 1 worker", "rls")],
                         by[("guardian serve, 2 workers", "rls")])
    batch = by[("guardian serve, 1 worker", "batch")]
    per_check = (1 / (batch["rps"] * 100)) / (1 / g1c["rps"])
    lines += [
        "",
        f"- CheckLimit, 1 worker / floor: {g1c['rps'] / floor_c['rps']:.2f}x (target >= 0.8x); "
        f"ShouldRateLimit: {g1r['rps'] / floor_r['rps']:.2f}x.",
        f"- 2 workers / 1 worker: CheckLimit {g2c['rps'] / g1c['rps']:.2f}x, "
        f"ShouldRateLimit {g2r['rps'] / g1r['rps']:.2f}x (target >= 1.6x); the 2 workers got "
        f"{g2c['server_cpu']:.2f} and {g2r['server_cpu']:.2f} cores against {g1c['server_cpu']:.2f} and "
        f"{g1r['server_cpu']:.2f} for 1, at {g2c['server_cpu'] / g2c['rps'] * 1e6:.0f} and "
        f"{g2r['server_cpu'] / g2r['rps'] * 1e6:.0f} us of CPU per call against "
        f"{g1c['server_cpu'] / g1c['rps'] * 1e6:.0f} and {g1r['server_cpu'] / g1r['rps'] * 1e6:.0f}.",
        f"- CheckLimits with 100 checks: {batch['rps'] * 100:,.0f} checks/s; one check costs "
        f"{per_check * 100:.1f}% of a single CheckLimit call (target <= 5%).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(Path(a.out).read_text().split("<!-- results -->")[0] + "<!-- results -->\n\n" + text
                               if Path(a.out).exists() else text)
    return 0


# --- the native data plane (issue 14): nghttpd, grpc.aio floor, both engines ----
# Added by the native engine's work: new functions only; `--native` runs them.

NATIVE_USAGE = """python bench/sidecar_bench.py --native [--seconds 3] [--pin] [--batched] [--out docs/native-bench.md]

One run, h2load as the generator (16 connections x 8 streams for calls/s and
p99; 1 connection x 1 stream for p50): nghttpd answering a small static
body (the HTTP/2 floor of this machine), the grpc.aio constant server (the
floor of any grpcio server), guardian serve --engine grpcio and --engine
native (1 worker; native also with 2 workers), CheckLimit and
ShouldRateLimit; CheckLimits x100 on the native engine. --batched: both
engines again with --redis-url --batched (a redis-server of the bench's own),
whose calls are lease hits."""


def start_nghttpd(body: bytes, cpus: Any = None) -> Tuple[int, "subprocess.Popen[bytes]", str]:
    """nghttpd (Debian nghttp2-server) serving one small file, without TLS."""
    docroot = tempfile.mkdtemp(prefix="guardian-nghttpd-")
    Path(docroot, "static").write_bytes(body)
    port = free_port()
    proc = subprocess.Popen(["nghttpd", "--no-tls", "-d", docroot, str(port)], preexec_fn=_affinity(cpus),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return port, proc, docroot
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nghttpd did not start")


def start_guardian_engine(engine: str, workers: int, policy: str, cpus: Any = None,
                          extra: Tuple[str, ...] = ()) -> Tuple[int, "subprocess.Popen[bytes]"]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "guardian", "serve", "--grpc-port", str(port), "--http-port",
                             str(free_port()), "--config", policy, "--workers", str(workers), "--engine", engine,
                             "--log-level", "error", *extra], preexec_fn=_affinity(cpus))
    wait_port(port, proc)
    return port, proc


def h2load_url(url: str, body: bytes, seconds: float, connections: int, streams: int, pin: bool,
               grpc_headers: bool = True) -> Dict[str, float]:
    """calls/s, p50 and p99 (ms) and generator CPU of one h2load run against ``url``."""
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log"
        data.write_bytes(body)
        cmd = ["h2load", "-D", f"{seconds:g}", "--warm-up-time=1", "-c", str(connections), "-m", str(streams),
               "-t", "1", f"--log-file={log}"]
        if grpc_headers:
            cmd += ["-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        proc = subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0 or " 0 failed" not in out or " 0 errored" not in out:
            raise RuntimeError(f"h2load failed:\n{out}")
        rps = float(out.split("finished in", 1)[1].split(",")[1].split()[0])
        lat = sorted(int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines() if line.count("\t") >= 2)
    q99 = lat[min(int(len(lat) * 0.99), len(lat) - 1)]
    return {"rps": rps, "p50": statistics.median(lat) * 1e3, "p99": q99 * 1e3,
            "gen_cpu": (usage.ru_utime + usage.ru_stime) / (seconds + 1.0)}


def start_redis() -> Tuple[int, "subprocess.Popen[bytes]"]:
    """A redis-server of its own on a free port (nothing kept on disk)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return port, proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("redis-server did not start")


def native_main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(usage=NATIVE_USAGE)
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--pin", action="store_true", help="h2load on CPU 0, the 1-process servers on CPU 1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--batched", action="store_true",
                    help="also both engines with --redis-url --batched (a redis-server of its own): lease hits")
    a = ap.parse_args(argv)
    for tool in ("h2load", "nghttpd", *(("redis-server",) if a.batched else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: nghttp2-client, nghttp2-server)")
    pin = a.pin and len(os.sched_getaffinity(0)) >= 2
    one_cpu = {1} if pin else None
    policy = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    policy.write(POLICY)
    policy.close()
    rows: List[Tuple[str, str, Dict[str, float]]] = []

    def measure(label: str, kind: str, url: str, body: bytes, proc: "subprocess.Popen[bytes]", grpc_call: bool = True) -> None:
        c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        r = h2load_url(url, body, a.seconds, a.connections, a.streams, pin, grpc_call)
        r["server_cpu"] = (_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        one = h2load_url(url, body, max(round(a.seconds / 2), 1), 1, 1, pin, grpc_call)
        r["p50_1"] = one["p50"]
        rows.append((label, kind, r))

    def grpc_server(label: str, port: int, proc: "subprocess.Popen[bytes]", kinds: Tuple[str, ...]) -> None:
        for kind in kinds:
            path, msg = _message(kind)
            _call_once(f"127.0.0.1:{port}", path, msg)
            measure(label, kind, f"http://127.0.0.1:{port}{path}", b"\0" + struct.pack(">I", len(msg)) + msg, proc)

    try:
        _, check_msg = _message("check")
        port, proc, docroot = start_nghttpd(b"\0" * 5 + b"\x08\x01\x10\x63\x28\x64", one_cpu)
        try:
            measure("nghttpd, static body", "static", f"http://127.0.0.1:{port}/static", b"", proc, False)
        finally:
            stop(proc)
            shutil.rmtree(docroot, ignore_errors=True)
        port, proc = start_floor(one_cpu)
        try:
            grpc_server("grpc.aio, constant answer", port, proc, ("check", "rls"))
        finally:
            stop(proc)
        def engines(mode: str, policy_path: str, extra: Tuple[str, ...] = ()) -> None:
            """Both engines (native also with 2 workers) on one backend; ``mode``
            goes into the labels ("" or "--batched ")."""
            for engine, workers, kinds in (("grpcio", 1, ("check", "rls")),
                                           ("native", 1, ("check", "rls") + (("batch",) if not mode else ())),
                                           ("native", 2, ("check", "rls"))):
                port, proc = start_guardian_engine(engine, workers, policy_path,
                                                   one_cpu if workers == 1 else None, extra)
                try:
                    grpc_server(f"guardian serve {mode}--engine {engine}, {workers} worker{'s' * (workers > 1)}",
                                port, proc, kinds)
                finally:
                    stop(proc)

        engines("", policy.name)
        if a.batched:
            # Redis on its own (unpinned): the leases reserve from it now and then
            batched_policy = Path(policy.name).with_suffix(".batched.yaml")
            # a lease table's capacity must leave its tokens undecayed for twice
            # a lease's life (docs/batched.md): a million a second, never denied
            batched_policy.write_text(POLICY.replace("1000000000", "1000000"))
            rport, redis = start_redis()
            try:
                engines("--batched ", str(batched_policy), ("--redis-url", f"redis://127.0.0.1:{rport}/0", "--batched"))
            finally:
                stop(redis)
                batched_policy.unlink()
    finally:
        os.unlink(policy.name)
    names = {"static": "GET static body", "check": "CheckLimit", "rls": "ShouldRateLimit", "batch": "CheckLimits x100"}
    by = {(label, kind): r for label, kind, r in rows}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Command: `python bench/sidecar_bench.py --native --seconds {a.seconds:g} --connections {a.connections} "
        f"--streams {a.streams}{' --pin' if pin else ''}{' --batched' if a.batched else ''}`",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}; `uptime` at the end: {uptime}. "
        f"Generator: h2load, 1 thread, {a.connections} connections x {a.streams} streams (calls/s, p99) and "
        f"1 x 1 (p50 at 1 in flight){'; h2load on CPU 0, 1-process servers on CPU 1' if pin else ''}.",
        "",
        "| server | call | calls/s | p50 ms (1 in flight) | p50 ms | p99 ms | h2load CPU (cores) "
        "| server CPU (cores) | server CPU us/call |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, kind, r in rows:
        lines.append(f"| {label} | {names[kind]} | {r['rps']:,.0f} | {r['p50_1']:.3f} | {r['p50']:.3f} "
                     f"| {r['p99']:.3f} | {r['gen_cpu']:.2f} | {r['server_cpu']:.2f} "
                     f"| {r['server_cpu'] / r['rps'] * 1e6:.1f} |")
    static = by[("nghttpd, static body", "static")]
    lines.append("")
    for mode in ("", "--batched ") if a.batched else ("",):
        for kind in ("check", "rls"):
            n1 = by[(f"guardian serve {mode}--engine native, 1 worker", kind)]
            n2 = by[(f"guardian serve {mode}--engine native, 2 workers", kind)]
            aio = by[("grpc.aio, constant answer", kind)]
            grpcio = by[(f"guardian serve {mode}--engine grpcio, 1 worker", kind)]
            lines.append(
                f"- {names[kind]}{' --batched (lease hits)' if mode else ''}, native 1 worker: {n1['rps']:,.0f} "
                f"calls/s (target >= 100,000) = {n1['rps'] / static['rps'] * 100:.0f}% of nghttpd (target >= 30%), "
                f"{n1['rps'] / aio['rps']:.0f}x the grpc.aio floor (target >= 30x), "
                f"{n1['rps'] / grpcio['rps']:.0f}x the grpcio engine; p50 at 1 in flight "
                f"{n1['p50_1'] * 1000:.0f} us (target <= 100), p99 at {a.connections * a.streams} in flight "
                f"{n1['p99']:.2f} ms (target <= 5); 2 workers / 1: {n2['rps'] / n1['rps']:.2f}x (target >= 1.6x), "
                f"with h2load using {n1['gen_cpu']:.2f} / {n2['gen_cpu']:.2f} cores of the machine's "
                f"{os.cpu_count()} and the servers {n1['server_cpu']:.2f} / {n2['server_cpu']:.2f}; server CPU "
                f"per call {n1['server_cpu'] / n1['rps'] * 1e6:.1f} / {n2['server_cpu'] / n2['rps'] * 1e6:.1f} us.")
        if not mode:
            batch = by[("guardian serve --engine native, 1 worker", "batch")]
            lines.append(f"- CheckLimits x100, native 1 worker: {batch['rps'] * 100:,.0f} checks/s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(Path(a.out).read_text().split("<!-- results -->")[0] + "<!-- results -->\n\n" + text
                               if Path(a.out).exists() else text)
    return 0


if __name__ == "__main__":
    sys.exit(native_main(sys.argv[1:]) if "--native" in sys.argv else main())
