"""`guardian serve` in a subprocess, on free ports, as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from redis_servers import free_port, wait_until


class Sidecar:
    def __init__(self, tmp: Path, *args: str, env: Optional[Dict[str, str]] = None,
                 ports: bool = True) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.log_path = tmp / f"sidecar-{self.grpc_port}.log"
        self.args: List[str] = list(args)
        if ports:
            self.args = ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port), *self.args]
        self.env = dict(os.environ, **(env or {}))
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait: bool = True) -> "Sidecar":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "guardian", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            wait_until(lambda: self.health() is not None or self.proc.poll() is not None,  # type: ignore[union-attr]
                       30, f"guardian serve on {self.grpc_port}", step=0.05)
            if self.proc.poll() is not None:
                raise RuntimeError(f"guardian serve exited with {self.proc.returncode}:\n{self.log()}")
            wait_until(lambda: self.http("/health")[0] == 200, 10, "HTTP /health", step=0.05)
        return self

    def health(self, service: str = "") -> Optional[int]:
        """The grpc.health.v1 status, or None while the port does not answer."""
        try:
            with grpc.insecure_channel(self.target) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
            return int(r.status)
        except grpc.RpcError:
            return None

    def http(self, path: str) -> Tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
        """{(sample name, sorted labels): value} from one scrape of /metrics."""
        status, text = self.http("/metrics")
        assert status == 200, text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> Tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        assert self.proc is not None
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def counter(metrics: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


__all__ = ["Sidecar", "write", "counter", "wait_until", "free_port", "Sequence"]
