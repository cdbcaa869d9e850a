"""Hostile inputs against `guardian serve` (a plain script, bounded duration).

    python bench/sidecar_hostile.py [--only NAME ...]

For each hostile policy file or request (issue 13, items 4 and 5) a fresh
`guardian serve` (memory backend, one worker) is started, a prober process
sends CheckLimit calls one after another on its own connection, and the
input is applied: a policy file at start and again by SIGHUP, or a request.
Reported per input: the outcome (refused with which message, or answered),
the server's peak RSS (VmHWM) and the longest CheckLimit latency of the
prober while the input was processed (the stall other clients see; the
issue's aim is < 50 ms). The machine may be shared: stalls are upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(target: str, stop: Any, out: "multiprocessing.Queue[List[Tuple[float, float]]]") -> None:
    """CheckLimit in a loop; (start, latency) of each call."""
    from guardian.v1 import guardian_pb2 as pb  # type: ignore[import-not-found]
    from guardian.v1 import guardian_pb2_grpc as pb_grpc  # type: ignore[import-not-found]

    async def main() -> List[Tuple[float, float]]:
        samples = []
        async with grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.RateLimiterStub(ch)
            while not stop.is_set():
                t = time.monotonic()
                try:
                    await stub.CheckLimit(pb.CheckLimitRequest(key="probe"), timeout=10)
                except grpc.RpcError:
                    pass
                samples.append((t, time.monotonic() - t))
        return samples

    out.put(asyncio.run(main()))


class Server:
    def __init__(self, policy: Optional[str], *extra: str) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        args = ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port), *extra]
        if policy is not None:
            args += ["--config", policy]
        self.log = tempfile.NamedTemporaryFile("w+b", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, "-m", "guardian", "serve", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 30) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.grpc_port), 0.2):
                    pass
                if "serving gRPC" in self.text():
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def peak_rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def measured(server: Server, action: Callable[[], str], settle: float = 0.3) -> Tuple[str, float, float]:
    """Runs ``action`` while a prober calls CheckLimit; (outcome, longest stall
    in ms, the longest call in the 0.8 s before: the machine's noise)."""
    ctx = multiprocessing.get_context("spawn")
    q: "multiprocessing.Queue[List[Tuple[float, float]]]" = ctx.Queue()
    stop = ctx.Event()
    p = ctx.Process(target=_probe, args=(server.target, stop, q))
    p.start()
    time.sleep(1.0)  # the prober's imports and first calls
    t0 = time.monotonic()
    outcome = action()
    t1 = time.monotonic() + settle
    time.sleep(settle)
    stop.set()
    samples: List[Tuple[float, float]] = []
    try:
        samples = q.get(timeout=30)
    except Exception:  # noqa: BLE001 - the prober died: no figure
        samples = []
    p.join(5)
    if p.exitcode is None:
        p.kill()
    stall = max((lat for start, lat in samples if start <= t1 and start + lat >= t0), default=float("nan"))
    noise = max((lat for start, lat in samples if t0 - 0.8 <= start and start + lat < t0), default=float("nan"))
    return outcome, stall * 1000, noise * 1000


# --- the inputs ----------------------------------------------------------------

def billion_laughs(levels: int = 9) -> str:
    lines = ["domain: d", "x0: &a0 {key: k, value: v, rate_limit: {unit: second, requests_per_unit: 1}}"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"descriptors: *a{levels - 1}")
    return "\n".join(lines) + "\n"


POLICIES: Dict[str, str] = {
    "yaml aliases (1.6 KB, 9^9 rules if expanded)": billion_laughs(),
    "duplicate key (a second login: loosens)":
        "limits:\n  login: {capacity: 5, refill_rate: 1}\n  login: {capacity: 500, refill_rate: 100}\n",
    "600 levels of nesting": "domain: d\ndescriptors: " + "[" * 600 + "]" * 600 + "\n",
    "requests_per_unit 2^32": "domain: d\ndescriptors: [{key: a, rate_limit: {unit: second, "
                              "requests_per_unit: 4294967296}}]\n",
    "64 KB policy, 1000 distinct rates": "domain: d\ndescriptors:\n" + "".join(
        f"  - {{key: k{i}, rate_limit: {{unit: minute, requests_per_unit: {i + 1}}}}}\n" for i in range(1000)),
    "64 KB policy, 1300 rules, 100 distinct rates": "domain: d\ndescriptors:\n" + "".join(
        f"  - {{key: k{i}, rate_limit: {{unit: minute, requests_per_unit: {i % 100 + 1}}}}}\n"
        for i in range(1300)),
}


def run_policy(name: str, text: str, tmp: Path) -> Dict[str, Any]:
    good = tmp / "good.yaml"
    good.write_text("limits: {default: {capacity: 100000000, refill_rate: 100000000}}\n")
    bad = tmp / "hostile.yaml"
    bad.write_text(text)
    # 1. at start
    s = Server(str(bad))
    started = s.wait_ready()
    if started:
        at_start = "loaded"
    else:
        s.proc.wait(30)
        errors = [ln for ln in s.text().splitlines() if " ERROR " in ln] or ["?"]
        at_start = f"exit {s.proc.returncode}: " + errors[-1].split(" ERROR ", 1)[-1]
    start_rss = s.peak_rss_mib() if started else float("nan")
    s.stop()
    # 2. by SIGHUP under load
    path = tmp / "live.yaml"
    path.write_text(good.read_text())
    s = Server(str(path))
    assert s.wait_ready(), s.text()

    def reload() -> str:
        path.write_text(text)
        before = s.text().count("policy reload")
        s.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 30
        while s.text().count("policy reload") == before and time.monotonic() < end:
            time.sleep(0.01)
        line = [ln for ln in s.text().splitlines() if "policy reload" in ln][-1:]
        return line[0].split("guardian server: ", 1)[-1][:160] if line else "no answer in 30 s"

    outcome, stall, noise = measured(s, reload)
    rss = s.peak_rss_mib()
    alive = s.proc.poll() is None
    s.stop()
    return {"input": f"policy: {name} ({len(text.encode())} bytes)", "at start": at_start[:160],
            "on SIGHUP": outcome, "alive": alive, "peak RSS MiB": round(max(rss, start_rss or 0), 1),
            "stall ms": round(stall, 1), "noise ms": round(noise, 1)}


def run_request(name: str, call: Callable[[grpc.Channel], str]) -> Dict[str, Any]:
    s = Server(None, "--config", _policy_file())
    assert s.wait_ready(), s.text()
    ch = grpc.insecure_channel(s.target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                 ("grpc.max_send_message_length", 64 << 20)])
    outcome, stall, noise = measured(s, lambda: call(ch))
    ch.close()
    rss = s.peak_rss_mib()
    alive = s.proc.poll() is None
    s.stop()
    return {"input": f"request: {name}", "outcome": outcome[:160], "alive": alive,
            "peak RSS MiB": round(rss, 1), "stall ms": round(stall, 1), "noise ms": round(noise, 1)}


_POLICY_DIR = tempfile.mkdtemp(prefix="guardian-hostile-")


def _policy_file() -> str:
    p = Path(_POLICY_DIR) / "requests.yaml"
    p.write_text("limits: {default: {capacity: 100000000, refill_rate: 100000000}}\n"
                 "---\ndomain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 10}\n")
    return str(p)


def _rpc_outcome(f: Callable[[], Any]) -> str:
    try:
        r = f()
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return f"answered ({r.ByteSize()} bytes)"


def _checks(n: int) -> Callable[[grpc.Channel], str]:
    def call(ch: grpc.Channel) -> str:
        from guardian.v1 import guardian_pb2 as pb
        from guardian.v1 import guardian_pb2_grpc as pb_grpc

        req = pb.CheckLimitsRequest(checks=[pb.CheckLimitRequest(key=f"k{i}") for i in range(n)])
        return _rpc_outcome(lambda: pb_grpc.RateLimiterStub(ch).CheckLimits(req, timeout=60))
    return call


def _overrides(n: int) -> Callable[[grpc.Channel], str]:
    def call(ch: grpc.Channel) -> str:
        from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
        from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        last = ""
        for i in range(n):
            d = rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key="k", value="v")])
            d.limit.requests_per_unit, d.limit.unit = i + 1, rls_pb2.RateLimitResponse.RateLimit.MINUTE
            last = _rpc_outcome(lambda: stub.ShouldRateLimit(
                rls_pb2.RateLimitRequest(domain="d", descriptors=[d]), timeout=10))
            if i == n - 1:
                r = stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="d", descriptors=[d]), timeout=10)
                last += f"; the {n}th: {rls_pb2.RateLimitResponse.Code.Name(r.overall_code)} " \
                        f"({r.statuses[0].current_limit.name or 'its own limit'})"
        return last
    return call


def _override_out_of_range(ch: grpc.Channel) -> str:
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    d = rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key="k", value="v")])
    d.limit.requests_per_unit, d.limit.unit = 4_000_000_000, rls_pb2.RateLimitResponse.RateLimit.SECOND
    return _rpc_outcome(lambda: rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(
        rls_pb2.RateLimitRequest(domain="d", descriptors=[d]), timeout=10))


def _descriptors(n: int) -> Callable[[grpc.Channel], str]:
    def call(ch: grpc.Channel) -> str:
        from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as rl
        from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

        ds = [rl.RateLimitDescriptor(entries=[rl.RateLimitDescriptor.Entry(key="k", value=f"v{i}")])
              for i in range(n)]
        return _rpc_outcome(lambda: rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain="d", descriptors=ds), timeout=60))
    return call


REQUESTS: Dict[str, Callable[[grpc.Channel], str]] = {
    "CheckLimits with 830,000 checks": _checks(830_000),
    "CheckLimits with 1,000 checks (the cap)": _checks(1000),
    "1,100 distinct descriptor limit overrides": _overrides(1100),
    "override 4e9/second (out of range)": _override_out_of_range,
    "ShouldRateLimit with 1,024 descriptors": _descriptors(1024),
    "ShouldRateLimit with 100,000 descriptors": _descriptors(100_000),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="substrings of the inputs to run")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in POLICIES.items():
            if args.only and not any(o in name for o in args.only):
                continue
            rows.append(run_policy(name, text, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    for name, call in REQUESTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        rows.append(run_request(name, call))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
