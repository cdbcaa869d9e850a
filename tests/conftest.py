"""Fixtures shared by the whole suite.

Every test that takes ``core`` runs twice: on the C extension and on its
pure-Python twin (``--no-c-extensions`` keeps only the twin).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

from guardian import _impl, _pycore

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

# Fixtures for real redis-server processes (a plugin, not a second conftest:
# two modules named conftest would shadow each other's imports).
pytest_plugins = ["redis_fixtures"]

# The sidecar suites (tests/integration/test_sidecar*.py) pin the grpcio
# engine; their twins test_native_sidecar*.py run them again on the native
# one (tests/helpers/native_engine.py). --engine auto, the default, is
# tested on its own (test_native_build.py).
os.environ.setdefault("GUARDIAN_ENGINE", "grpcio")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        help="run only against the pure-Python core",
    )


def _cores(config: pytest.Config) -> list:
    if config.getoption("--no-c-extensions") or _impl.NO_EXTENSIONS:
        return ["py"]
    return ["c", "py"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "core" in metafunc.fixturenames:
        metafunc.parametrize("core", _cores(metafunc.config), indirect=True)


@pytest.fixture
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The core module under test; MemoryBackend is pointed at it too."""
    if request.param == "c":
        from guardian import _core as module
    else:
        module = _pycore
    for name in ("Table", "LimitResult", "unlink", "take_all", "take_all_result", "try_take_all"):
        monkeypatch.setattr(_impl, name, getattr(module, name))
    return module


@pytest.fixture
def core_env(core: ModuleType) -> dict:
    """Environment for a subprocess that must use the same core."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "helpers")] + sys.path)
    if core is _pycore:
        env["GUARDIAN_NO_EXTENSIONS"] = "1"
    else:
        env.pop("GUARDIAN_NO_EXTENSIONS", None)
    return env


class ManualClock:
    """A monotonic clock in integer nanoseconds that moves only when told."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.ns = start_ns

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float = 0.0, ns: int = 0) -> None:
        self.ns += round(seconds * 1e9) + ns


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def shm_name(core: ModuleType) -> Iterator[str]:
    """A unique shared-table name, removed after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    core.unlink(name)
    for i in range(8):  # several limits on one name: "name.0", "name.1", ...
        core.unlink(f"{name}.{i}")
