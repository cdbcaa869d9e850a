"""Regenerates the guardian.v1 modules from proto/guardian/v1/guardian.proto.

    python proto/generate.py            # writes src/guardian/v1/guardian_pb2*.py(i)
    python proto/generate.py OUT_DIR    # writes OUT_DIR/guardian/v1/... instead

Needs grpcio-tools (the ``server`` extra's build-time dependency). The output
is checked in; tests/unit/test_proto_codegen.py regenerates it into a
temporary directory and fails when the checked-in files differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "guardian/v1/guardian.proto"


def generate(out: Path) -> None:
    from grpc_tools import protoc

    (out / "guardian" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src")
