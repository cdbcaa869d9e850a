"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    commands = readme_commands()
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_serve_command_is_the_sidecar() -> None:
    """The front door starts the sidecar (tests/integration/test_sidecar*.py
    start it exactly so and talk to it)."""
    assert readme_commands()[0] == "pip install '.[server]' && guardian serve"
    out = subprocess.run([sys.executable, "-m", "guardian", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--grpc-port" in out.stdout


def test_demo_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "guardian", "demo", "--seconds", "0.3", "--clients", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "held" in out.stdout


def test_serve_refuses_abbreviated_flags() -> None:
    """A deployment file's typo must fail loudly, not mean another flag."""
    out = subprocess.run([sys.executable, "-m", "guardian", "serve", "--redis", "redis://x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: --redis" in out.stderr
