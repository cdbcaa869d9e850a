"""``fail_open="local"`` across processes while Redis is down: each process
limits on its own, so N processes admit up to N times the limit; with
``local_share=1/N`` they stay within it (issue 11 item 5); with
``local_shared="name"`` the processes of a host share one fallback table,
so together they admit the limit once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from faults import free_port

pytestmark = [pytest.mark.faults]

PROCESSES = 3
LIMIT = 30

CHILD = textwrap.dedent("""
    import sys
    from guardian import RateLimiter, TokenBucketConfig
    from guardian.backends.redis import RedisBackend
    backend = RedisBackend(TokenBucketConfig(int(sys.argv[2]), 1, 3600), url=sys.argv[1],
                           timeout=0.2, connect_timeout=0.2)
    limiter = RateLimiter(backend, fail_open="local", local_share=float(sys.argv[3]), log_interval=3600,
                          local_shared=sys.argv[4] or None)
    print(sum(limiter.try_acquire("shared-key") for _ in range(100)))
""")


@pytest.mark.parametrize("share", [1.0, 1 / PROCESSES], ids=["share-1", "share-1/N"])
def test_local_fallback_admits_share_times_n_times_the_limit(share: float) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every call is refused
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    children = [subprocess.Popen([sys.executable, "-c", CHILD, down, str(LIMIT), repr(share), ""],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(PROCESSES)]
    outputs = [c.communicate(timeout=30) for c in children]
    assert all(c.returncode == 0 for c in children), outputs
    admitted = [int(out) for out, _ in outputs]
    print(f"\nfail_open='local', local_share={share:.3f}, {PROCESSES} processes, limit {LIMIT}, Redis down: "
          f"admitted {admitted} = {sum(admitted)}")
    assert admitted == [int(LIMIT * share + 1e-9)] * PROCESSES
    assert sum(admitted) <= round(PROCESSES * share * LIMIT)


def test_a_shared_fallback_admits_the_limit_once_across_processes() -> None:
    from guardian import MemoryBackend

    down = f"redis://127.0.0.1:{free_port()}/0"
    name = f"fallback-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        children = [subprocess.Popen([sys.executable, "-c", CHILD, down, str(LIMIT), "1.0", name],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                    for _ in range(PROCESSES)]
        outputs = [c.communicate(timeout=30) for c in children]
        assert all(c.returncode == 0 for c in children), outputs
        admitted = [int(out) for out, _ in outputs]
        assert sum(admitted) == LIMIT, admitted
    finally:
        MemoryBackend.unlink(name)
