"""The Python snippets of the docs listed here run as written, in order,
each page in one namespace (a later block may use an earlier one's names;
top-level ``await`` runs as in an asyncio REPL). Pages whose snippets run
elsewhere: docs/core.md (test_config), docs/middleware.md (test_middleware),
docs/reliability.md (test_reliability_doc)."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["docs/testing.md", "docs/redis.md", "docs/batched.md", "README.md"]
#: Blocks that are a summary of names, not a program (their first line),
#: with where they are run in full instead.
NOT_PROGRAMS = {
    "from guardian.asgi import RateLimitMiddleware": "the middleware summary: docs/middleware.md and examples/",
}


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page: str) -> None:
    if not (ROOT / page).exists():  # the wheel's own test run copies tests/ without docs/
        pytest.skip(f"no {page}")
    text = (ROOT / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{page} has no python snippet"
    namespace: dict = {"__name__": "__doc_snippet__"}
    ran = 0
    for block in blocks:
        if any(block.startswith(first) for first in NOT_PROGRAMS):
            continue
        # Construction does no I/O for single-server Redis URLs, so these run without a server.
        code = compile(block, page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
        ran += 1
    assert ran, page


@pytest.mark.parametrize("page", ["README.md", "docs/sidecar.md"])
def test_page_policy_files_load(page: str) -> None:
    """The policy files the docs show load as written (a new user copies them)."""
    pytest.importorskip("yaml")
    import textwrap

    from guardian.server.policy import parse_policy

    if not (ROOT / page).exists():
        pytest.skip(f"no {page}")
    for block in re.findall(r"```ya?ml\n(.*?)```", (ROOT / page).read_text(), re.S):
        parse_policy(textwrap.dedent(block), page)  # raises PolicyError with the reason
