"""Which core is in use, and that it is the one that was asked for."""

from __future__ import annotations

import os
import warnings

import pytest

import guardian
from guardian import _impl


def test_c_extension_loaded_when_expected() -> None:
    """CI builds the extension and sets GUARDIAN_EXPECT_C=1: a silent
    fallback to the Python core must fail the run, not slow it down."""
    if os.environ.get("GUARDIAN_EXPECT_C") != "1":
        pytest.skip("GUARDIAN_EXPECT_C is not set")
    assert guardian.CORE == "c"
    from guardian import _core

    assert _impl.Table is _core.Table


def test_no_extensions_switch_selects_python_core() -> None:
    import subprocess
    import sys

    code = "import guardian; print(guardian.CORE)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GUARDIAN_NO_EXTENSIONS": "1"}).stdout.strip()
    assert out == "python"


def test_memory_try_acquire_is_the_core_method() -> None:
    """The limiter's try_acquire is the core's own method: no Python frame
    between the caller and the slot table."""
    backend = guardian.MemoryBackend(guardian.TokenBucketConfig(10, 1))
    limiter = guardian.RateLimiter(backend)
    assert limiter.try_acquire == backend.table.try_acquire
    assert limiter.try_acquire.__self__ is backend.table


def test_cached_pid_follows_fork() -> None:
    """Locks name their holder by a cached pid; a forked child must not
    name its parent (a lock it left when killed would never be recovered)."""
    if guardian.CORE != "c":
        pytest.skip("the pid cache is the C core's")
    from guardian import _core

    assert _core._self_pid() == os.getpid()
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns about fork with threads alive
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, str(_core._self_pid()).encode())
        os._exit(0)
    os.close(write)
    seen = int(os.read(read, 64))
    os.close(read)
    os.waitpid(child, 0)
    assert seen == child
