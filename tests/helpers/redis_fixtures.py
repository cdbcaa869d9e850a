"""Fixtures for real Redis servers, started by the suite on free loopback
ports (a plugin: tests/conftest.py lists it in pytest_plugins)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
import redis
import redis_servers
from redis_servers import Cluster, Sentinel, Server


def _need_redis() -> None:
    if not redis_servers.available():
        pytest.skip("redis-server is not installed (.ci/run installs it)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One redis-server for the whole session."""
    _need_redis()
    server = Server(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A redis-server of this test alone (to kill and restart)."""
    _need_redis()
    server = Server(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """3 masters with one replica each."""
    _need_redis()
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def deployment(request: pytest.FixtureRequest) -> Iterator[Tuple[str, Any]]:
    """(url, plain client) of a single server, then of the cluster."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        client: Any = redis.Redis(port=server.port)
    else:
        server = request.getfixturevalue("redis_cluster")
        client = redis.RedisCluster(host="127.0.0.1", port=server.servers[0].port)
    yield server.url, client
    client.close()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Sentinel]:
    _need_redis()
    s = Sentinel(tmp_path).start()
    yield s
    s.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone, so tests share servers safely."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def raw(redis_server: Server) -> Iterator[redis.Redis]:
    """A plain redis-py client to look at the server."""
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()
