"""One run owns its ports, stops cleanly on a signal to its whole process
group, stops (not loops) on a configuration error, and its command line
fails in one line (issue 13, items 2 and 3). Real `guardian serve` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from sidecar import Sidecar, free_port, write

from guardian.client import AdminTokenError, Client

pytestmark = pytest.mark.grpc

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args: str, timeout: float = 30) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "guardian", "serve", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--grpc-port", "70000"], "--grpc-port must be 1-65535, got 70000"),
    (["--grpc-port", "0"], "--grpc-port must be 1-65535, got 0"),
    (["--http-port", "65536"], "--http-port must be 1-65535 (0: no HTTP port), got 65536"),
    (["--redis-url", "localhost:6379"], "--redis-url must start with one of redis://"),
    (["--redis-url", "http://user:secret@host/"], "got 'http://***@host/'"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--admin-token-file", "/nonexistent/token"], "cannot read --admin-token-file /nonexistent/token"),
])
def test_bad_options_one_line_exit_2(args: List[str], message: str) -> None:
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "secret" not in r.stderr


def test_help_names_the_default_limit() -> None:
    r = subprocess.run([sys.executable, "-m", "guardian", "serve", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "'default': a burst of 100, then 10 per second" in " ".join(r.stdout.split())


def test_readme_client_example_against_readme_serve(tmp_path: Path) -> None:
    # README: `guardian serve` (no policy) and `Client("127.0.0.1:50051").check_limit("client-42")`
    example = 'guardian.client.Client("127.0.0.1:50051").check_limit("client-42")'
    assert example in README.read_text()
    s = Sidecar(tmp_path).start()
    try:
        assert "1 named limit(s) [default: burst 100, 10/second]" in s.log()  # the startup log names it
        with Client(s.target) as client:
            r = client.check_limit("client-42")
        assert r.allowed and r.limit == 100 and r.remaining == 99
    finally:
        assert s.stop()[0] == 0


def test_admin_token_file(tmp_path: Path) -> None:
    token = write(tmp_path / "token", "s3cret\n")
    s = Sidecar(tmp_path, "--admin-token-file", token).start()
    try:
        with Client(s.target) as client:
            with pytest.raises(AdminTokenError):
                client.reset("k")
        with Client(s.target, admin_token="s3cret") as client:
            client.reset("k")
    finally:
        s.stop()
    assert "s3cret" not in s.log()


def _start_group(tmp_path: Path, *args: str) -> Sidecar:
    s = Sidecar(tmp_path, *args)
    # its own process group, as a terminal or systemd starts it
    s._log = open(s.log_path, "wb")
    s.proc = subprocess.Popen([sys.executable, "-m", "guardian", "serve", *s.args], stdout=s._log,
                              stderr=subprocess.STDOUT, env=s.env, start_new_session=True)
    from sidecar import wait_until

    wait_until(lambda: s.log().count("serving gRPC") == 2 or s.proc.poll() is not None,  # type: ignore[union-attr]
               30, "two workers", step=0.05)
    assert s.proc.poll() is None, s.log()
    return s


@pytest.mark.shm
def test_second_run_on_the_same_ports_refuses(tmp_path: Path) -> None:
    first = _start_group(tmp_path, "--workers", "2")
    try:
        for workers in ("2", "1"):
            r = run("--workers", workers, "--grpc-port", str(first.grpc_port), "--http-port", str(free_port()))
            assert r.returncode == 2, r.stderr
            assert (f"gRPC port {first.grpc_port} belongs to another guardian serve run (pid {first.proc.pid}"
                    in r.stderr), r.stderr  # type: ignore[union-attr]
        # the HTTP port alone, too
        r = run("--workers", "2", "--grpc-port", str(free_port()), "--http-port", str(first.http_port))
        assert r.returncode == 2 and f"HTTP port {first.http_port} belongs to another" in r.stderr, r.stderr
        # a port some other process listens on (no guardian lock): refused, not shared
        import socket

        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            port = other.getsockname()[1]
            r = run("--workers", "2", "--grpc-port", str(port), "--http-port", str(free_port()))
        assert r.returncode == 2 and f"gRPC port {port} on 127.0.0.1 is in use by another process" in r.stderr
        with Client(first.target) as client:  # the first run never noticed
            assert client.check_limit("k").allowed
    finally:
        first.kill()


@pytest.mark.shm
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_whole_group_exits_0_after_draining(tmp_path: Path, sig: int) -> None:
    s = _start_group(tmp_path, "--workers", "2")
    try:
        t0 = time.monotonic()
        os.killpg(s.proc.pid, sig)  # type: ignore[union-attr]
        code = s.proc.wait(15)  # type: ignore[union-attr]
        seconds = time.monotonic() - t0
    finally:
        s.kill()
    log = s.log()
    assert code == 0, log
    assert seconds < 5, seconds
    assert log.count("stopping: draining") == 2 and "workers with errors" not in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


@pytest.mark.shm
def test_worker_configuration_error_stops_the_supervisor(tmp_path: Path) -> None:
    bad = write(tmp_path / "p.yaml", "limits:\n  a: {capacity: 1, refill_rate: 1}\n  a: {capacity: 9, refill_rate: 9}\n")
    t0 = time.monotonic()
    r = run("--workers", "2", "--config", bad, "--grpc-port", str(free_port()), "--http-port", str(free_port()))
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t0 < 20
    assert "duplicate key 'a'" in r.stderr and "; restarting" not in r.stderr
    assert "stopped on a configuration error" in r.stderr


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_a_signal_while_starting_still_exits_0(tmp_path: Path) -> None:
    from sidecar import wait_until

    s = Sidecar(tmp_path)
    s.start(wait=False)
    pid = s.proc.pid  # type: ignore[union-attr]
    wait_until(lambda: _catches(pid, signal.SIGTERM), 20, "the early SIGTERM handler", step=0.002)
    code, _ = s.stop()
    assert code == 0, s.log()
    assert "stopping: draining" in s.log()


@pytest.mark.shm
def test_without_a_writable_lock_directory_the_probe_still_refuses(tmp_path: Path) -> None:
    # a read-only root filesystem (the Kubernetes manifest's): a warning, and the bind probe decides
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    first = Sidecar(tmp_path, "--workers", "2", env={"XDG_RUNTIME_DIR": str(blocked)}).start()
    try:
        assert "no lock for gRPC port" in first.log()
        r = subprocess.run([sys.executable, "-m", "guardian", "serve", "--workers", "2", "--grpc-port",
                            str(first.grpc_port), "--http-port", str(free_port())], capture_output=True, text=True,
                           timeout=30, env=dict(os.environ, XDG_RUNTIME_DIR=str(blocked)))
        assert r.returncode == 2 and f"gRPC port {first.grpc_port} on 127.0.0.1 is in use by another process" \
            in r.stderr and "Traceback" not in r.stderr
    finally:
        first.kill()


def test_redis_refusals_are_told_apart_from_outages() -> None:
    import redis.exceptions as rx

    from guardian.server.backend_probe import refusal

    assert refusal(rx.AuthenticationError("invalid username-password pair or user is disabled."))
    assert refusal(rx.NoPermissionError("this user has no permissions to run the 'evalsha' command"))
    assert refusal(rx.ResponseError("NOAUTH Authentication required."))
    assert refusal(rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")) is None
    assert refusal(rx.TimeoutError("Timeout reading from socket")) is None


def _children(pid: int) -> List[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.shm
def test_a_worker_dying_at_once_again_and_again_stops_the_run(tmp_path: Path) -> None:
    from sidecar import wait_until

    s = _start_group(tmp_path, "--workers", "2")
    sup = s.proc.pid  # type: ignore[union-attr]
    killed = set()
    try:
        deadline = time.monotonic() + 60
        while s.proc.poll() is None and time.monotonic() < deadline:  # type: ignore[union-attr]
            for child in _children(sup):
                if child not in killed:
                    killed.add(child)
                    os.kill(child, signal.SIGKILL)  # dies at once after each start
            time.sleep(0.02)
        code = s.proc.wait(10)  # type: ignore[union-attr]
    finally:
        s.kill()
    log = s.log()
    assert code == 1, log
    assert "died 5 times in a row" in log and "not restarting it, stopping" in log
    assert len(killed) <= 2 * 5 + 2
    wait_until(lambda: not _children(sup), 5, "no worker left")


@pytest.mark.shm
def test_workers_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) on the supervisor must not leave orphan
    workers serving the run's ports with their own table: the next run on
    those ports would then count the limit twice."""
    from sidecar import wait_until

    s = _start_group(tmp_path, "--workers", "2")
    sup = s.proc.pid  # type: ignore[union-attr]
    workers = _children(sup)
    try:
        assert len(workers) == 2, s.log()
        os.kill(sup, signal.SIGKILL)
        s.proc.wait(10)  # type: ignore[union-attr]

        def gone(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            except OSError:
                return True

        wait_until(lambda: all(gone(w) for w in workers), 10, "the orphaned workers to exit")
    finally:
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass
        s.kill()
    assert "the supervisor (pid %d) is gone" % sup in s.log()
