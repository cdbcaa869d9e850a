"""Writes src/guardian/backends/batched.py from batched_async.py: the
batched backends are one source (issue 9: sync and async written once).
``python tests/helpers/unasync.py`` regenerates it; tests/unit/test_unasync.py
fails when the checked-in file differs from what this makes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

BACKENDS = Path(__file__).resolve().parents[2] / "src" / "guardian" / "backends"
SOURCE = BACKENDS / "batched_async.py"
TARGET = BACKENDS / "batched.py"

#: Exact replacements, in order (names first, then the asyncio vocabulary).
WORDS = [
    ('''"""AsyncBatchedRedisBackend: token leases''', '''"""BatchedRedisBackend: token leases'''),
    ("batched.py is generated from this file (tests/helpers/unasync.py; a test\n"
     "checks it): edit this one and run ``python tests/helpers/unasync.py``.",
     "GENERATED from batched_async.py by tests/helpers/unasync.py: do not edit\n"
     "this file; edit batched_async.py and run ``python tests/helpers/unasync.py``."),
    ("AsyncBatchedRedisBackend", "BatchedRedisBackend"),
    ("AsyncRedisBackend", "RedisBackend"),
    ("from .redis_async import", "from .redis import"),
    ("from ._refill_task import", "from ._refill_thread import"),
    ("import asyncio\n", "import threading\n"),
    ("asyncio.Lock", "threading.Lock"),
    (" (for asyncio).", "."),
    ("on aclose() and at", "on close() and at"),
    ("def aclose(", "def close("),
    ("self.redis.aclose()", "self.redis.close()"),
]
#: Then the keywords.
PATTERNS = [
    (re.compile(r"\basync def "), "def "),
    (re.compile(r"\basync with "), "with "),
    (re.compile(r"\bawait "), ""),
]


def generate(source: str) -> str:
    for old, new in WORDS:
        if old not in source:
            raise ValueError(f"unasync: {old!r} no longer occurs in {SOURCE.name}")
        source = source.replace(old, new)
    for pattern, new in PATTERNS:
        source = pattern.sub(new, source)
    return source


def main() -> int:
    TARGET.write_text(generate(SOURCE.read_text()))
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
