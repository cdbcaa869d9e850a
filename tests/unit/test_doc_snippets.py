"""The Python snippets of the docs listed here run as written, in order,
each page in one namespace (a later block may use an earlier one's names)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["docs/testing.md"]


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page: str) -> None:
    text = (ROOT / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{page} has no python snippet"
    namespace: dict = {"__name__": "__doc_snippet__"}
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)
