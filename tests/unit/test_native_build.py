"""The native engine is optional: ``--engine auto`` (the default) serves
with it where guardian._native is built and with grpcio where it is not
(saying why); ``--engine native`` without it refuses to start with the
reason."""

from __future__ import annotations

import os

import signal
import subprocess
import sys
import time

import pytest

from guardian.server.config import ServeOptions

WITHOUT_NATIVE = (
    "import socket, sys; sys.modules['guardian._native'] = None\n"  # as if never built
    "from guardian.__main__ import main\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = str(s.getsockname()[1]); s.close()\n"
    "sys.argv = ['guardian', 'serve', *sys.argv[1:], '--grpc-port', port, '--http-port', '0']\n"
    "sys.exit(main())\n"
)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "GUARDIAN_ENGINE"}


def test_auto_is_the_default_engine() -> None:
    assert ServeOptions().engine == "auto"


def test_engine_native_without_the_extension_exits_2_with_the_reason() -> None:
    out = subprocess.run([sys.executable, "-c", WITHOUT_NATIVE, "--engine", "native"], capture_output=True,
                         text=True, timeout=60, env=_env())
    assert out.returncode == 2, out.stderr
    assert "--engine native" in out.stderr and "not built" in out.stderr


def test_the_default_engine_without_the_extension_is_grpcio_and_says_why() -> None:
    proc = subprocess.Popen([sys.executable, "-c", WITHOUT_NATIVE], stderr=subprocess.PIPE, text=True,
                            env=_env())
    lines = []
    try:
        deadline = time.monotonic() + 60
        while not any("serving gRPC" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stderr.readline())  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    log = "".join(lines)
    assert "native engine is not built here" in log and "serving with grpcio" in log
    assert "serving gRPC (grpcio engine)" in log


def test_unknown_engine_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "guardian", "serve", "--engine", "rust"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice: 'rust'" in out.stderr


def test_the_native_engine_was_checked_against_the_python_services_in_this_tree() -> None:
    """The C code answers as service_rls.py / service_v1.py / policy.py do.
    When those change, the native engine sends their calls to Python (safe,
    slow) until someone runs tests/integration/test_native_engine.py (both
    engines, same requests), adapts _dataplane/policy.c if it fails, and
    records the new digests in guardian.server.native.CHECKED_AGAINST."""
    from guardian.server.native import CHECKED_AGAINST, python_digests

    assert python_digests() == CHECKED_AGAINST, (
        "the Python services changed since the native engine was checked against them: "
        "see this test's docstring; the digests now are " + repr(python_digests()))


def test_changed_python_code_sends_its_calls_to_python(monkeypatch: "pytest.MonkeyPatch") -> None:
    from guardian.server import native
    from guardian.server.config import ServeOptions
    from guardian.server.state import State

    state = State(ServeOptions(), None)
    state.load()  # the built-in policy: guardian.v1's "default"
    monkeypatch.setattr(native, "CHECKED_AGAINST", native.python_digests())  # as if re-checked
    plan = native.build_plan(state, state.opts)
    assert [t for _, t in plan["limits"]] == [0] and not plan["rls_python"]
    monkeypatch.setitem(native.CHECKED_AGAINST, "v1", "0" * 16)
    monkeypatch.setitem(native.CHECKED_AGAINST, "rls", "0" * 16)
    plan = native.build_plan(state, state.opts)
    assert [t for _, t in plan["limits"]] == [-1] and plan["rls_python"]


def test_batched_leases_reach_c_only_when_checked(monkeypatch: "pytest.MonkeyPatch") -> None:
    """With --batched, a limit's lease table goes to C (with its mirror and
    the Redis scripts' units) only when the lease code is the one checked,
    and only when the server gives a mirror; otherwise its checks are Python's."""
    from guardian.server import native
    from guardian.server.config import ServeOptions
    from guardian.server.state import State

    state = State(ServeOptions(redis_url="redis://127.0.0.1:1/0", batched=True), None)
    state.load()  # no connection is made: the backends are only built
    monkeypatch.setattr(native, "CHECKED_AGAINST", native.python_digests())
    mirrors = []
    plan = native.build_plan(state, state.opts, lambda bucket: mirrors.append(bucket) or "mirror")
    assert [t for _, t in plan["limits"]] == [0] and not plan["python_all"]
    (table,) = plan["tables"]
    layout = mirrors[0].backend.redis.layout
    assert table["mirror"] == "mirror" and table["table"] is mirrors[0].backend.book.table._table
    assert (table["P"], table["tau"], table["tps"]) == (layout.P, layout.tau, layout.ticks_per_second)
    assert [t for _, t in native.build_plan(state, state.opts)["limits"]] == [-1]  # no mirror: Python's
    monkeypatch.setitem(native.CHECKED_AGAINST, "lease", "0" * 16)
    plan = native.build_plan(state, state.opts, lambda bucket: "mirror")
    assert [t for _, t in plan["limits"]] == [-1] and plan["checked"]["lease"] is False
    plain = State(ServeOptions(redis_url="redis://127.0.0.1:1/0"), None)
    plain.load()
    assert native.build_plan(plain, plain.opts, lambda bucket: "mirror")["python_all"]  # Redis without leases
