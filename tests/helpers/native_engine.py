"""Whether guardian._native (the native data plane) is here: tests of it
skip with the reason when it is not built, and fail instead when
GUARDIAN_EXPECT_NATIVE=1 says it must be; and who answered a native
sidecar's calls (answered_by)."""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Dict, Iterator, Tuple

import pytest

if TYPE_CHECKING:
    from sidecar import Sidecar


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


def answered_by(sidecar: "Sidecar") -> Dict[Tuple[str, str], float]:
    """{(operation, "native" | "python"): calls} from one /metrics scrape of a
    native sidecar (guardian_native_calls_total): the calls its C thread
    answered, and those it handed to the Python services."""
    out: Dict[Tuple[str, str], float] = {}
    for (name, labels), value in sidecar.metrics().items():
        if name == "guardian_native_calls_total":
            d = dict(labels)
            out[(d["operation"], d["answered_by"])] = value
    return out
