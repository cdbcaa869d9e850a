"""Every script in examples/ runs, with a short duration; the Redis ones
against the suite's redis-server, the sidecar one against `guardian serve`.
(fastapi_app.py and flask_app.py run under uvicorn and gunicorn in
test_middleware_servers.py; fastapi_per_user.py under uvicorn here.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis_servers import free_port
from sidecar import Sidecar
from web_servers import WebServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_basic() -> None:
    out = run("basic.py")
    assert "try_acquire x7: [True, True, True, True, True, False, False]" in out
    assert "denied, retry after" in out


def test_benchmark() -> None:
    out = run("benchmark.py", "0.2")
    assert "try_acquire" in out and "checks/s" in out


@pytest.mark.shm
def test_shared_memory_workers() -> None:
    assert "held" in run("shared_memory_workers.py", "2", "0.3")


@pytest.mark.redis
def test_redis_basic(redis_server: Any) -> None:
    out = run("redis_basic.py", redis_server.url)
    assert "sync: 10 of 15 allowed" in out and "asyncio: 10 of 15 allowed" in out


@pytest.mark.redis
def test_redis_batched(redis_server: Any) -> None:
    assert "held" in run("redis_batched.py", redis_server.url, "0.5")


def test_fail_open_closed_with_redis_down() -> None:
    out = run("fail_open_closed.py", f"redis://127.0.0.1:{free_port()}/0")
    assert "fail_open=True : [True, True, True, True, True]" in out
    assert "fail_open=False: [False, False, False, False, False]" in out
    assert "fail_open=local: [True, True, True, False, False]" in out


@pytest.mark.redis
def test_fail_open_closed_with_redis_up(redis_server: Any) -> None:
    """Healthy Redis: every policy has its own bucket, so each admits its 3
    (one shared key made fail-open look like fail-closed)."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    out = run("fail_open_closed.py", redis_server.url)
    for policy in ("True ", "False", "local"):
        assert f"fail_open={policy}: [True, True, True, False, False]" in out, out


@pytest.mark.grpc
def test_sidecar_client(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path).start()
    try:
        out = run("sidecar_client.py", sidecar.target)
        assert "allowed=True" in out and "usage: 3" in out
    finally:
        sidecar.stop()


@pytest.mark.slow
def test_fastapi_per_user(tmp_path: Path) -> None:
    """2 users x 10 requests against 3 per user per hour: 3 + 3 allowed; the
    429s carry Retry-After and the per-user fields; no token: 401."""
    web = WebServer("fastapi", "uvicorn", tmp_path, app="fastapi_per_user:app", cwd=EXAMPLES).start()
    try:
        for user in ("alice", "bob"):
            replies = [web.request("/me", headers={"Authorization": f"Bearer {user}-token"}) for _ in range(10)]
            assert [r.status for r in replies] == [200] * 3 + [429] * 7, (user, replies)
            assert replies[0].body == f'{{"user":"{user}"}}'.encode()
            assert replies[0].item("ratelimit", "per-user") == '"per-user";r=2;t=1200'
            denied = replies[3]
            assert 1100 < int(denied.headers["retry-after"]) <= 1200  # one token back every 20 minutes
            assert denied.item("ratelimit-policy", "per-user") == '"per-user";q=3;w=3600'
        assert web.request("/me").status == 401  # authentication runs first; no user, no limit to take
        assert "Traceback" not in web.log_text()
    finally:
        web.stop()
