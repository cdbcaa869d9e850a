"""Recovery after many Redis restarts with a small connection pool: the
backends give every connection back to the pool, whatever happened to it
(issue 11; the 300-restart figures come from bench/redis_restarts.py)."""

from __future__ import annotations

import pytest
import redis_restarts
from redis_servers import Server

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("kind", redis_restarts.KINDS)
def test_recovers_after_many_restarts_with_four_connections(own_server: Server, prefix: str, kind: str) -> None:
    # 25 outages x 3 failed checks: 75 failures; a leaked slot per failure
    # used to exhaust max_connections=4 after the second outage.
    samples = redis_restarts.run(own_server, prefix, kind, restarts=25, max_connections=4)
    assert samples[-1]["restart"] == 25
    assert samples[-1]["created"] <= 4 and samples[-1]["in_use"] <= 4
