"""The native engine is optional: without guardian._native, ``--engine
native`` refuses to start with the reason, and grpcio stays the default."""

from __future__ import annotations

import os
import subprocess
import sys

from guardian.server.config import ServeOptions

WITHOUT_NATIVE = (
    "import sys; sys.modules['guardian._native'] = None\n"  # as if never built
    "from guardian.__main__ import main\n"
    "sys.argv = ['guardian', 'serve', '--engine', 'native', '--grpc-port', '0', '--http-port', '0']\n"
    "sys.exit(main())\n"
)


def test_grpcio_is_the_default_engine() -> None:
    assert ServeOptions().engine == "grpcio"


def test_engine_native_without_the_extension_exits_2_with_the_reason() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GUARDIAN_ENGINE"}
    out = subprocess.run([sys.executable, "-c", WITHOUT_NATIVE], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert "--engine native" in out.stderr and "not built" in out.stderr


def test_unknown_engine_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "guardian", "serve", "--engine", "rust"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice: 'rust'" in out.stderr
