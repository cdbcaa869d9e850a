"""The sidecar's named limits in words (issue 10 item 6): ``rate:
"100/minute"`` beside capacity/refill_rate, served by a real ``guardian
serve``; a bad rate is a load error that names the place."""

from __future__ import annotations

from pathlib import Path

import pytest
from sidecar import Sidecar, write

from guardian.client import Client

pytestmark = pytest.mark.grpc


def test_named_limits_in_words(tmp_path: Path) -> None:
    policy = write(tmp_path / "policy.yaml",
                   'limits:\n'
                   '  default: {rate: "3/hour"}\n'
                   '  burst:   {rate: "100/minute; burst 2"}\n'
                   '  keyed:   {rate: "10 per second", burst: 4}\n')
    server = Sidecar(tmp_path, "--config", policy).start()
    try:
        with Client(server.target) as client:
            got = [client.check_limit("k") for _ in range(4)]
            assert [r.allowed for r in got] == [True, True, True, False]
            assert got[0].limit == 3 and got[3].retry_after == pytest.approx(1200, abs=2)
            assert [client.check_limit("k", limit="burst").allowed for _ in range(3)] == [True, True, False]
            assert client.check_limit("k", limit="keyed").limit == 4
    finally:
        server.kill()


@pytest.mark.parametrize("rate, message", [
    ('"100 a minute"', "write it like '100/minute'"),
    ("5", 'rate must be a string like "100/minute"'),
    ('"1/second and 5/day"', "name each limit on its own"),
    ('"0/minute"', "admits nothing"),
])
def test_a_bad_rate_is_a_load_error(tmp_path: Path, rate: str, message: str) -> None:
    policy = write(tmp_path / "policy.yaml", f"limits:\n  login: {{rate: {rate}}}\n")
    server = Sidecar(tmp_path, "--config", policy)
    try:
        with pytest.raises(RuntimeError, match="exited with") as failed:
            server.start()  # the server refuses to start, saying where and what
    finally:
        server.kill()
    out = str(failed.value)
    assert message in out and "limits.login" in out, out
