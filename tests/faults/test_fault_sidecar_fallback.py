"""`guardian serve --workers 2 --fail-local` with Redis unreachable: the
workers fall back to one in-process limit between them (a shared table of
the run), not one each, so the sidecar admits the limit once."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from sidecar import Sidecar, free_port, wait_until, write

from guardian.client import Client

pytestmark = [pytest.mark.faults, pytest.mark.grpc, pytest.mark.shm]

LIMIT = 10


def test_workers_fall_back_to_one_limit_between_them(tmp_path: Path) -> None:
    policy = write(tmp_path / "policy.yaml",
                   f"limits:\n  default: {{capacity: {LIMIT}, refill_rate: 1, refill_interval: 3600}}\n")
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every call is refused
    s = Sidecar(tmp_path, "--config", policy, "--workers", "2", "--redis-url", down, "--fail-local").start()
    try:
        wait_until(lambda: s.log().count("serving gRPC") == 2, 20, "both workers serving")
        allowed = 0
        for _ in range(20):
            # a new connection each time: SO_REUSEPORT spreads them over both workers
            ch = grpc.insecure_channel(s.target, options=[("grpc.use_local_subchannel_pool", 1)])
            with Client(s.target, channel=ch, timeout=5.0) as client:
                allowed += sum(client.check_limit("k").allowed for _ in range(3))
            ch.close()
        assert allowed == LIMIT, f"admitted {allowed} of {LIMIT} while Redis was down"
        served = {line.split("guardian[", 1)[1].split("]", 1)[0] for line in s.log().splitlines()
                  if "limiting in-process checks until" in line}
        assert len(served) == 2, f"both workers fell back (the test spreads its load): {served}"
    finally:
        s.stop()
