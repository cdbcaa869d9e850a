"""Load generator for `guardian serve` (a plain script, bounded duration).

    python bench/sidecar_bench.py [--seconds 3] [--clients 2] [--concurrency 16] [--out docs/benchmarks-sidecar.md]

Measures requests per second and p50/p99 latency of guardian.v1 CheckLimit
and Envoy's ShouldRateLimit against `guardian serve` at 1 and 2 workers,
side by side with a floor measured in the same run: a grpc.aio server with
the same services and message shapes that answers a constant. Then
CheckLimits with 100 checks per call against single CheckLimit calls.

Load comes from ``--clients`` processes, each running ``--concurrency``
grpc.aio tasks over its own connections (a local subchannel pool per
channel, so SO_REUSEPORT spreads them over the workers). The server and
the load generator share the machine: on a 2-core host the clients take a
good part of the CPU, which caps what 2 workers can show.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import signal
import socket
import statistics
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


def _client(target: str, kind: str, seconds: float, concurrency: int, out: "multiprocessing.Queue[Any]") -> None:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    from guardian.v1 import guardian_pb2 as pb
    from guardian.v1 import guardian_pb2_grpc as pb_grpc

    async def main() -> Tuple[int, List[float]]:
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
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        done = True
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        for ch in channels:
            await ch.close()
        return int(count / elapsed * 1), latencies

    out.put(asyncio.run(main()))


def load(target: str, kind: str, seconds: float, clients: int, concurrency: int) -> Dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    q: "multiprocessing.Queue[Any]" = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(target, kind, seconds, concurrency, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    rps = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    q99 = lat[min(int(len(lat) * 0.99), len(lat) - 1)]
    return {"rps": rps, "p50": statistics.median(lat) * 1e3, "p99": q99 * 1e3}


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


def start_guardian(workers: int, policy: str) -> Tuple[int, "subprocess.Popen[bytes]"]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "guardian", "serve", "--grpc-port", str(port), "--http-port",
                             str(free_port()), "--config", policy, "--workers", str(workers),
                             "--log-level", "warning"])
    wait_port(port, proc)
    return port, proc


def start_floor() -> Tuple[int, "subprocess.Popen[bytes]"]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--floor-server", str(port)])
    wait_port(port, proc)
    return port, proc


def stop(proc: "subprocess.Popen[bytes]") -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--floor-server", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.floor_server is not None:
        floor_server(a.floor_server)
        return 0
    policy = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    policy.write(POLICY)
    policy.close()
    rows: List[Tuple[str, str, Dict[str, float]]] = []
    run = lambda label, kind, port: rows.append(  # noqa: E731
        (label, kind, load(f"127.0.0.1:{port}", kind, a.seconds, a.clients, a.concurrency)))
    try:
        port, proc = start_floor()
        for kind in ("check", "rls", "batch"):
            run("floor (constant answer)", kind, port)
        stop(proc)
        for workers in (1, 2):
            port, proc = start_guardian(workers, policy.name)
            for kind in ("check", "rls") + (("batch",) if workers == 1 else ()):
                run(f"guardian serve, {workers} worker{'s' * (workers > 1)}", kind, port)
            stop(proc)
    finally:
        os.unlink(policy.name)
    names = {"check": "CheckLimit", "rls": "ShouldRateLimit", "batch": "CheckLimits x100"}
    by = {(label, kind): r for label, kind, r in rows}
    lines = [
        f"Command: `python bench/sidecar_bench.py --seconds {a.seconds:g} --clients {a.clients} "
        f"--concurrency {a.concurrency}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}; load generator ({a.clients} processes x {a.concurrency} grpc.aio tasks) "
        "on the same machine.",
        "",
        "| server | RPC | calls/s | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for label, kind, r in rows:
        lines.append(f"| {label} | {names[kind]} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
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
        f"ShouldRateLimit {g2r['rps'] / g1r['rps']:.2f}x (target >= 1.6x).",
        f"- CheckLimits with 100 checks: {batch['rps'] * 100:,.0f} checks/s; one check costs "
        f"{per_check * 100:.1f}% of a single CheckLimit call (target <= 5%).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(Path(a.out).read_text().split("<!-- results -->")[0] + "<!-- results -->\n\n" + text
                               if Path(a.out).exists() else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
