"""`guardian serve` as an operator meets it, cases found in review: a policy
file broken in several ways (at start: one line, exit 2; on SIGHUP with two
workers: every worker keeps the old policy), option values that used to be
accepted (--grace nan) or quietly read as false (a typo in a boolean
variable). Real `guardian serve` processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from sidecar import Sidecar, free_port, wait_until, write

from guardian.client import Client

pytestmark = pytest.mark.grpc

BROKEN = {
    "yaml syntax": "limits: {default: [\n",
    "not a mapping": "- just\n- a list\n",
    "bad value": "limits: {default: {capacity: nan, refill_rate: 1}}\n",
}


def run(args: List[str], env: Dict[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
    import os
    return subprocess.run([sys.executable, "-m", "guardian", "serve", "--grpc-port", str(free_port()),
                           "--http-port", "0", *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, **(env or {})))


def one_line_exit_2(r: "subprocess.CompletedProcess[str]", message: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text", list(BROKEN.values()), ids=list(BROKEN))
def test_a_broken_policy_file_at_start_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    one_line_exit_2(run(["--config", write(tmp_path / "p.yaml", text)]), "p.yaml")


@pytest.mark.parametrize("args, env, message", [
    (["--grace", "nan"], {}, "--grace must be finite seconds >= 0, got nan"),
    (["--grace", "inf"], {}, "--grace must be finite seconds >= 0, got inf"),
    ([], {"GUARDIAN_GRACE": "nan"}, "--grace must be finite seconds >= 0, got nan"),
    ([], {"GUARDIAN_SHADOW_MODE": "ture"}, "bad GUARDIAN_SHADOW_MODE='ture': use true or false"),
    ([], {"GUARDIAN_BATCHED": "enabled"}, "bad GUARDIAN_BATCHED='enabled'"),
    ([], {"GUARDIAN_WORKERS": "two"}, "bad GUARDIAN_WORKERS='two'"),
])
def test_option_values_refused_in_one_line(args: List[str], env: Dict[str, str], message: str) -> None:
    one_line_exit_2(run(args, env), message)


def test_a_boolean_variable_may_say_false(tmp_path: Path) -> None:
    s = Sidecar(tmp_path, env={"GUARDIAN_SHADOW_MODE": "off", "GUARDIAN_BATCHED": "0"}).start()
    try:
        with Client(s.target) as client:
            assert client.check_limit("k").allowed
    finally:
        assert s.stop()[0] == 0


@pytest.mark.shm
def test_sighup_with_broken_files_keeps_the_old_policy_in_every_worker(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    good = "limits:\n  default: {capacity: 4, refill_rate: 1, refill_interval: 3600}\n"
    s = Sidecar(tmp_path, "--config", write(path, good), "--workers", "2").start()
    try:
        wait_until(lambda: s.log().count("serving gRPC") == 2, 20, "both workers serving")
        for i, text in enumerate(BROKEN.values(), start=1):
            write(path, text)
            s.signal(signal.SIGHUP)
            wait_until(lambda: s.log().count("policy reload rejected") == 2 * i, 10, "both workers rejecting")
        path.unlink()  # the file gone altogether
        s.signal(signal.SIGHUP)
        wait_until(lambda: s.log().count("policy reload rejected") == 2 * (len(BROKEN) + 1), 10, "rejected")
        rejections = [line for line in s.log().splitlines() if "policy reload rejected" in line]
        assert all("keeping the old policy" in line for line in rejections)
        # Many connections, so both workers answer: each still has capacity 4.
        for n in range(8):
            with Client(s.target) as client:
                assert client.check_limit(f"w{n}").limit == 4
        assert "Traceback" not in s.log()
    finally:
        assert s.stop()[0] == 0


def test_client_refuses_bad_keys_and_costs_before_sending(tmp_path: Path) -> None:
    from guardian import ArgumentTypeError, InvalidArgumentError

    s = Sidecar(tmp_path).start()
    try:
        with Client(s.target) as client:
            for bad, error in (("\udc80", InvalidArgumentError), (b"k", ArgumentTypeError), ("", InvalidArgumentError)):
                with pytest.raises(error):
                    client.check_limit(bad)  # type: ignore[arg-type]
                with pytest.raises(error):
                    client.get_usage(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match="above any bucket's capacity"):
                client.check_limit("k", cost=2**70)
            # Before: "abc" was three checks, of the keys "a", "b" and "c".
            with pytest.raises(ArgumentTypeError, match="sequence of str"):
                client.check_limits("abc")
            with pytest.raises(InvalidArgumentError):
                client.check_limits([("k", 0)])
            assert [client.get_usage(k) for k in ("a", "b", "c", "k")] == [0, 0, 0, 0]  # nothing was taken
            assert [r.allowed for r in client.check_limits(["a", ("b", 2)])] == [True, True]
    finally:
        assert s.stop()[0] == 0


def test_a_policy_that_limits_nothing_is_warned_about(tmp_path: Path) -> None:
    empty = tmp_path / "policies"
    empty.mkdir()
    s = Sidecar(tmp_path, "--config", str(empty)).start()
    try:
        assert "WARNING" in s.log() and "limits nothing" in s.log()
    finally:
        assert s.stop()[0] == 0
    path = tmp_path / "policy.yaml"
    s = Sidecar(tmp_path, "--config", write(path, "limits: {default: {capacity: 3, refill_rate: 1}}\n")).start()
    try:
        assert "limits nothing" not in s.log()
        write(path, "")  # truncated by a deploy, then SIGHUP
        s.signal(signal.SIGHUP)
        wait_until(lambda: "limits nothing" in s.log(), 10, "the warning after the reload")
    finally:
        assert s.stop()[0] == 0
