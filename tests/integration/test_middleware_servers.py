"""The middleware under real servers, checked over HTTP: the FastAPI example
under uvicorn, and the Flask example under gunicorn with 2 workers that
share one shared-memory table (the limit holds across workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from redis_servers import free_port, wait_until

from guardian import MemoryBackend, TokenBucketConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def fetch(port: int, path: str) -> Tuple[int, Dict[str, str], str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()
    except OSError:
        return 0, {}, ""


def start(cmd: List[str], port: int, env: Dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, **env),
                                cwd=EXAMPLES)
    wait_until(lambda: fetch(port, "/health")[0] in (200, 404) or proc.poll() is not None, 30, " ".join(cmd))
    if proc.poll() is not None:
        raise RuntimeError(log.read_text())
    return proc


def stop(proc: "subprocess.Popen[bytes]") -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def shared_table() -> Iterator[str]:
    name = f"test-mw-{uuid.uuid4().hex[:10]}"
    # Made here, before the workers start, so every worker attaches one table.
    MemoryBackend(TokenBucketConfig(5, 0.001), shared=name).close()
    yield name
    MemoryBackend.unlink(name)


@pytest.mark.slow
def test_fastapi_under_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    proc = start([sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(port),
                  "--host", "127.0.0.1", "--log-level", "warning"],
                 port, {"GUARDIAN_CAPACITY": "5", "GUARDIAN_RATE": "0.001"}, tmp_path / "uvicorn.log")
    try:
        replies = [fetch(port, "/hello") for _ in range(7)]
        assert [r[0] for r in replies] == [200] * 5 + [429] * 2
        assert replies[0][1]["ratelimit-policy"] == '"default";q=5;w=5000'
        assert replies[0][1]["ratelimit"].startswith('"default";r=4;t=')
        assert int(replies[-1][1]["retry-after"]) > 900
        assert [fetch(port, "/health")[0] for _ in range(8)] == [200] * 8  # exempt route
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.shm
def test_flask_under_gunicorn_two_workers_share_one_limit(tmp_path: Path, shared_table: str) -> None:
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    proc = start([gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "flask_app:app"],
                 port, {"GUARDIAN_CAPACITY": "5", "GUARDIAN_RATE": "0.001", "GUARDIAN_SHARED": shared_table},
                 tmp_path / "gunicorn.log")
    try:
        # Both workers are up once parallel probes of the (unlimited) /health
        # have been answered by two processes.
        seen: set = set()

        def two_workers() -> bool:
            with ThreadPoolExecutor(8) as pool:
                seen.update(r[1].get("x-served-by") for r in pool.map(lambda _: fetch(port, "/health"), range(8)))
            return len(seen - {None}) >= 2
        wait_until(two_workers, 30, "both gunicorn workers", step=0.1)
        # 40 requests from 8 threads at once keep both workers busy; every
        # response names the worker that answered it.
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: fetch(port, "/hello"), range(40)))
        codes = [r[0] for r in replies]
        assert codes.count(200) == 5, codes  # one bucket for both workers
        assert codes.count(429) == 35, codes
        assert len({r[1]["x-served-by"] for r in replies}) == 2  # both workers answered
        denied = next(r[1] for r in replies if r[0] == 429)
        assert denied["x-ratelimit-limit"] == "5"
        assert denied["ratelimit"] == '"default";r=0;t=' + denied["retry-after"]
    finally:
        stop(proc)
