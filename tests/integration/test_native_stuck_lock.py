"""A request the native engine starts in C and then hands to Python.

With --workers 2 the tables are shared memory; a new key needs a stripe
lock, and a lock held by a stopped process makes the core refuse the
insert (after LOCK_WAIT_S). When that happens to the second check of a
CheckLimits call (or the second descriptor of a ShouldRateLimit), C has
already taken the first one; it then hands the whole request to Python,
which takes the first one again. The request must be counted once.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Set

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from native_engine import native_module
from sidecar import Sidecar, wait_until, write

from guardian import _region
from guardian.v1 import guardian_pb2 as pb
from guardian.v1 import guardian_pb2_grpc as pb_grpc

native_module()

pytestmark = pytest.mark.grpc

POLICY = """
domain: web
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 10}
---
limits:
  one: {capacity: 10, refill_rate: 1, refill_interval: 86400}
"""


def _segments() -> Set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("guardian.gs")}


@pytest.fixture(params=["native", "grpcio"])
def stuck_sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sidecar]:
    """--workers 2 (shared tables), fail-closed; each bucket holds a key
    "a" with one token taken, then every stripe lock is held by a stopped
    process. The grpcio engine is the reference."""
    before = _segments()
    policy = write(tmp_path / "p.yaml", POLICY)
    s = Sidecar(tmp_path, "--config", policy, "--engine", request.param, "--workers", "2", "--fail-closed").start()
    wait_until(lambda: s.log().count("serving gRPC") == 2, 30, "both workers")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # the first key of each bucket goes in while the locks are free
        with grpc.insecure_channel(s.target) as ch:
            assert pb_grpc.RateLimiterStub(ch).CheckLimit(pb.CheckLimitRequest(key="a", limit="one")).remaining == 9
            r = rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(rls_pb2.RateLimitRequest(
                domain="web", descriptors=[{"entries": [{"key": "user", "value": "a"}]}]))
            assert r.statuses[0].limit_remaining == 9
        os.kill(holder.pid, signal.SIGSTOP)
        mine = sorted(_segments() - before)
        assert mine, "no shared-memory table of this sidecar"
        for name in mine:  # every stripe lock: held by a live process that never lets go
            with open(f"/dev/shm/{name}", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
                for stripe in range(_region.STRIPES):
                    struct.pack_into("=Q", m, (_region.HEADER_WORDS + stripe) * 8, holder.pid)
        yield s
    finally:
        holder.kill()
        holder.wait()
        s.stop()


def _usage(s: Sidecar, key: str) -> int:
    with grpc.insecure_channel(s.target) as ch:
        return int(pb_grpc.RateLimiterStub(ch).GetUsage(pb.GetUsageRequest(key=key, limit="one"), timeout=10).used)


def test_check_limits_meeting_a_stuck_lock_counts_each_check_once(stuck_sidecar: Sidecar) -> None:
    s = stuck_sidecar
    with grpc.insecure_channel(s.target) as ch:
        r = pb_grpc.RateLimiterStub(ch).CheckLimits(pb.CheckLimitsRequest(checks=[
            pb.CheckLimitRequest(key="a", limit="one"), pb.CheckLimitRequest(key="new", limit="one")]), timeout=10)
    assert [x.allowed for x in r.results] == [True, False]  # "new": the failure policy (closed)
    assert r.results[0].remaining == 8  # a: 10 - 2, as the one call said
    assert _usage(s, "a") == 2


def test_should_rate_limit_meeting_a_stuck_lock_counts_each_descriptor_once(stuck_sidecar: Sidecar) -> None:
    s = stuck_sidecar
    with grpc.insecure_channel(s.target) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        r = stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="web", descriptors=[
            {"entries": [{"key": "user", "value": "a"}]}, {"entries": [{"key": "user", "value": "new"}]}]),
            timeout=10)
        statuses: List[int] = [x.limit_remaining for x in r.statuses]
        assert statuses[0] == 8, statuses  # a: 10 - 2
        # read a's bucket back (hits_addend 0 takes nothing)
        r = stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="web", descriptors=[
            {"entries": [{"key": "user", "value": "a"}], "hits_addend": {"value": 0}}]), timeout=10)
        assert r.statuses[0].limit_remaining == 8
