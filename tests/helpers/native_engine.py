"""Whether guardian._native (the native data plane) is here: tests of it
skip with the reason when it is not built, and fail instead when
GUARDIAN_EXPECT_NATIVE=1 says it must be."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Iterator

import pytest


def native_module() -> ModuleType:
    """guardian._native, or a skip (a failure under GUARDIAN_EXPECT_NATIVE=1)."""
    try:
        from guardian import _native
    except ImportError as exc:
        reason = f"guardian._native is not built (libnghttp2-dev missing at build time?): {exc}"
        if os.environ.get("GUARDIAN_EXPECT_NATIVE", "") not in ("", "0"):
            pytest.fail(f"GUARDIAN_EXPECT_NATIVE=1 but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    from guardian import _impl

    if not _impl.USING_C:
        pytest.skip("the native engine needs the C core", allow_module_level=True)
    return _native


@pytest.fixture(scope="module", autouse=True)
def native_engine() -> Iterator[None]:
    """In a module that imports it: every Sidecar started there runs --engine native."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GUARDIAN_ENGINE", "native")
        yield
