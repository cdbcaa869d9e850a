"""`guardian serve --batched`: checks from token leases reserved in a real
Redis, lease counters on /metrics, unused tokens given back at SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from redis_servers import Server
from sidecar import Sidecar, counter, wait_until, write

from guardian import TokenBucketConfig
from guardian.backends.redis import RedisBackend
from guardian.client import Client
from guardian.server.buckets import redis_prefix

pytestmark = [pytest.mark.grpc, pytest.mark.redis]

#: T = 3.6 s, so a few seconds of test refill at most a token or two.
CONFIG = TokenBucketConfig(1000, 1, 3600)
POLICY = "limits:\n  default: {capacity: 1000, refill_rate: 1, refill_interval: 3600}\n"
CHECKS = 300


def test_batched_leases_metrics_and_sigterm_returns_tokens(tmp_path: Path, redis_server: Server) -> None:
    key = f"batched-{uuid.uuid4().hex}"
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", POLICY),
                "--redis-url", redis_server.url, "--batched").start()
    direct = RedisBackend(CONFIG, redis_server.url, prefix=redis_prefix("v1:default", CONFIG))
    try:
        assert "batched redis backend" in s.log()
        with Client(s.target) as client:
            results = [client.check_limit(key) for _ in range(CHECKS)]
            assert all(r.allowed for r in results)
            assert client.get_usage(key) >= CHECKS  # usage is Redis': leased tokens count as used
        m = s.metrics()
        assert counter(m, "guardian_requests_total", limit="default", result="allowed") == CHECKS
        reservations = counter(m, "guardian_lease_reservations_total")
        local_hits = counter(m, "guardian_lease_local_hits_total")
        assert 1 <= reservations < CHECKS / 4  # leases grow, so most checks never reach Redis
        assert local_hits >= CHECKS - reservations
        assert counter(m, "guardian_lease_reserved_tokens_total") > CHECKS
        assert counter(m, "guardian_lease_tokens_returned_total") == 0
        assert ("guardian_lease_denial_cache_hits_total", ()) in m
        assert counter(m, "guardian_cache_hit_rate") > 0.5
        held = direct.usage(key)
        assert held > CHECKS  # this worker still holds leased tokens
        code, seconds = s.stop()
        assert code == 0 and seconds < 5, s.log()
        # the held tokens went back: Redis counts only what was spent (less a token or two refilled)
        after = direct.usage(key)
        assert CHECKS - 2 <= after <= CHECKS, (held, after)
        assert "not closed within" not in s.log()
    finally:
        s.kill()
        direct.close()


def test_batched_denials_are_cached(tmp_path: Path, redis_server: Server) -> None:
    """A denied key is answered locally until its retry_after."""
    key = f"denied-{uuid.uuid4().hex}"
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", "limits:\n  default: "
                "{capacity: 2, refill_rate: 1, refill_interval: 3600}\n"),
                "--redis-url", redis_server.url, "--batched").start()
    try:
        with Client(s.target) as client:
            allowed = [client.check_limit(key).allowed for _ in range(10)]
        assert allowed == [True, True] + [False] * 8
        m = s.metrics()
        assert counter(m, "guardian_lease_denial_cache_hits_total") >= 7
        assert counter(m, "guardian_requests_total", limit="default", result="denied") == 8
        assert s.stop()[0] == 0
    finally:
        s.kill()


def test_batched_needs_redis(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "guardian", "serve", "--batched", "--http-port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--batched needs --redis-url" in out.stderr


def test_batched_from_the_environment_with_two_workers(tmp_path: Path, redis_server: Server) -> None:
    """GUARDIAN_BATCHED; each worker holds its own leases, one scrape sums
    their lease counters, and both give their tokens back at SIGTERM."""
    key = f"workers-{uuid.uuid4().hex}"
    s = Sidecar(tmp_path, "--config", write(tmp_path / "p.yaml", POLICY), "--redis-url", redis_server.url,
                "--workers", "2", env={"GUARDIAN_BATCHED": "1"}).start()
    direct = RedisBackend(CONFIG, redis_server.url, prefix=redis_prefix("v1:default", CONFIG))
    try:
        channels = [grpc.insecure_channel(s.target, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]
        for ch in channels:
            with Client(s.target, channel=ch) as client:
                assert all(client.check_limit(key).allowed for _ in range(50))
        for ch in channels:
            ch.close()
        assert direct.usage(key) >= 400

        def summed() -> bool:
            m = s.metrics()
            return (counter(m, "guardian_workers") == 2
                    and counter(m, "guardian_requests_total", limit="default", result="allowed") == 400
                    and counter(m, "guardian_lease_local_hits_total") > 0)

        wait_until(summed, 10, "the summed lease counters")
        code, seconds = s.stop()
        assert code == 0 and seconds < 5, s.log()
        assert 400 - 2 <= direct.usage(key) <= 400
    finally:
        s.kill()
        direct.close()
