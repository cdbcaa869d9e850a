"""Real redis-server processes for the integration tests: one server, a
Redis Cluster, Sentinel. Each lives on free loopback ports in its own temp
directory, without persistence, and is stopped by the fixture that made it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def available() -> bool:
    return Path(REDIS_SERVER).exists() and Path(REDIS_CLI).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, step: float = 0.02) -> None:
    """Polls ``predicate`` until true; a bounded wait for a process, not a
    substitute for synchronisation."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def ping(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


#: Replicas sync at once (the default waits 5 s to batch diskless syncs).
FAST_SYNC = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]


class Server:
    """One redis-server process on 127.0.0.1:``port``; restartable."""

    def __init__(self, workdir: Path, port: Optional[int] = None, args: Sequence[str] = ()) -> None:
        self.chosen = port is None  # a free port of ours: another may take it first (see start)
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Server":
        for attempt in range(5):
            cmd = [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"), *self.args,
            ]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: ping(self.port) or self.proc.poll() is not None, 10, f"redis on {self.port}")
            if self.proc.poll() is None:
                return self
            # free_port() races with every other process on the machine: a
            # first start may find its port (or cluster bus port) taken.
            if not (self.chosen and "Address already in use" in self.log_tail() and attempt < 4):
                raise RuntimeError(f"redis-server on {self.port} exited: {self.log_tail()}")
            (self.dir / "redis.log").unlink()
            self.port = free_port()
            if "--cluster-port" in self.args:
                i = self.args.index("--cluster-port")
                self.args[i + 1] = str(free_port())
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        self.kill()
        self.proc = None

    def log_tail(self) -> str:
        log = self.dir / "redis.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()


class Cluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` each."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.servers: List[Server] = []
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0", *FAST_SYNC]
        for _ in range(masters * (1 + replicas)):
            server = Server(workdir, args=args)
            # The bus port defaults to port + 10000, out of range for high ports.
            server.args += ["--cluster-config-file", str(server.dir / "nodes.conf"),
                            "--cluster-port", str(free_port())]
            self.servers.append(server)
        self.replicas = replicas

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> "Cluster":
        try:
            for server in self.servers:
                server.start()
            addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas",
                 str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=120,
            )
            # Generous: six servers agreeing on a loaded machine take a while.
            wait_until(self.healthy, 90, "the cluster to be ok", step=0.1)
            wait_until(self.replicated, 90, "the replicas to be in sync", step=0.1)
        except BaseException:
            self.stop()  # no server outlives a cluster that failed to form
            raise
        return self

    def replicated(self) -> bool:
        infos = [m.cli("info", "replication") for m in self.masters()]
        return len(infos) * (1 + self.replicas) == len(self.servers) and all(
            info.count("state=online") == self.replicas for info in infos)

    def healthy(self) -> bool:
        live = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]
        return all("cluster_state:ok" in s.cli("cluster", "info") for s in live)

    def masters(self) -> List[Server]:
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None
                and "role:master" in s.cli("info", "replication")]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class Sentinel:
    """A master, one replica and one sentinel watching them as ``mymaster``."""

    service = "mymaster"

    def __init__(self, workdir: Path) -> None:
        self.master = Server(workdir, args=FAST_SYNC)
        self.replica = Server(workdir, args=["--replicaof", "127.0.0.1", str(self.master.port), *FAST_SYNC])
        self.port = free_port()
        self.dir = workdir / f"sentinel-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def start(self) -> "Sentinel":
        self.master.start()
        self.replica.start()
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: ping(self.port), 10, "sentinel")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
        self.master.stop()
        self.replica.stop()
