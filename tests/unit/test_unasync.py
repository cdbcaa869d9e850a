"""The sync batched backend is generated from the asyncio one."""

from __future__ import annotations

import unasync


def test_batched_py_is_generated_from_batched_async_py() -> None:
    expected = unasync.generate(unasync.SOURCE.read_text())
    assert unasync.TARGET.read_text() == expected, (
        "src/guardian/backends/batched.py is stale: run python tests/helpers/unasync.py")


def test_the_generated_file_has_no_asyncio_left() -> None:
    text = unasync.TARGET.read_text()
    for word in ("async ", "await ", "asyncio", "aclose"):
        assert word not in text, word
