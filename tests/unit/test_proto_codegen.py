"""The checked-in guardian.v1 modules are exactly what proto/generate.py makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ["guardian_pb2.py", "guardian_pb2.pyi", "guardian_pb2_grpc.py"]


def test_regenerating_gives_the_checked_in_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in FILES:
        fresh = (tmp_path / "guardian" / "v1" / name).read_text()
        checked_in = (ROOT / "src" / "guardian" / "v1" / name).read_text()
        assert fresh == checked_in, f"src/guardian/v1/{name} is stale: run python proto/generate.py"


def test_the_client_does_not_import_the_server() -> None:
    code = "import sys, guardian.client; print(any(m.startswith('guardian.server') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr

