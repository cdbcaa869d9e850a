"""Every request has a key, also with no peer address: uvicorn --uds and
gunicorn bind unix:..., the shape of most nginx -> app deployments.

Against an edge limit of capacity 2 per client (tests/helpers/mw_apps):
- the Unix socket not trusted: all requests share one bucket, whatever
  X-Forwarded-For says (a header from an unknown party is never a key), and
  one warning is logged, once;
- the Unix socket trusted (client_ip(trusted_proxies=["unix"])): each
  forwarded client has its own bucket; requests without the header share one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from web_servers import WebServer

pytestmark = pytest.mark.slow

SERVERS = [("starlette", "uvicorn"), ("flask", "gunicorn")]
WARNING = "has no peer address"


@pytest.fixture(params=SERVERS, ids=lambda t: "-".join(t))
def target(request: pytest.FixtureRequest) -> tuple:
    return request.param  # type: ignore[no-any-return]


def serve(target: tuple, tmp_path: Path, trust: bool) -> WebServer:
    env = {"MW_EDGE_CAPACITY": "2", "MW_TRUST_UNIX": "1" if trust else "0"}
    return WebServer(*target, tmp_path, unix=True, env=env).start()


def statuses(web: WebServer, n: int, forwarded: Optional[str] = None) -> List[int]:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return [web.request("/", headers=headers).status for _ in range(n)]


@pytest.fixture
def untrusted(target: tuple, tmp_path: Path) -> Iterator[WebServer]:
    web = serve(target, tmp_path, trust=False)
    yield web
    web.stop()


@pytest.fixture
def trusted(target: tuple, tmp_path: Path) -> Iterator[WebServer]:
    web = serve(target, tmp_path, trust=True)
    yield web
    web.stop()


def test_untrusted_unix_socket_is_one_shared_bucket(untrusted: WebServer) -> None:
    assert statuses(untrusted, 10) == [200, 200] + [429] * 8
    # A forwarded header from an untrusted socket changes nothing: same bucket, spent.
    assert statuses(untrusted, 10, "203.0.113.7") == [429] * 10
    log = untrusted.log_text()
    assert log.count(WARNING) == 1, log
    assert "Traceback" not in log


def test_trusted_unix_socket_keys_by_forwarded_header(trusted: WebServer) -> None:
    assert statuses(trusted, 10, "203.0.113.7") == [200, 200] + [429] * 8
    assert statuses(trusted, 10, "203.0.113.8") == [200, 200] + [429] * 8  # another client
    assert statuses(trusted, 10, "198.51.100.1, 203.0.113.8") == [429] * 10  # the nearest hop is the client
    assert trusted.log_text().count(WARNING) == 0
    # No header: one shared bucket, and the warning once.
    assert statuses(trusted, 10) == [200, 200] + [429] * 8
    log = trusted.log_text()
    assert log.count(WARNING) == 1, log
    assert "Traceback" not in log


def test_uvicorn_proxy_headers_leave_a_unix_peer_empty(tmp_path: Path) -> None:
    """uvicorn's default --proxy-headers does not trust a Unix-socket peer:
    guardian still sees no peer, so the untrusted rules hold."""
    web = WebServer("starlette", "uvicorn", tmp_path, unix=True, proxy_headers=True,
                    env={"MW_EDGE_CAPACITY": "2", "MW_TRUST_UNIX": "0"}).start()
    try:
        assert [web.request("/", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status
                for i in range(10)] == [200, 200] + [429] * 8
        assert web.log_text().count(WARNING) == 1
    finally:
        web.stop()
