"""Picks the core: the C extension, or its pure-Python twin when
GUARDIAN_NO_EXTENSIONS is set, the interpreter is not CPython, or the
extension is not built. Both twins expose the same names (tests/unit/
test_parity.py); this module takes them from one, never a mix. Type
checkers see the twin (one definition)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

NO_EXTENSIONS = os.environ.get("GUARDIAN_NO_EXTENSIONS", "") not in ("", "0") or (
    sys.implementation.name != "cpython"
)

if TYPE_CHECKING:
    from ._pycore import BucketReading as BucketReading
    from ._pycore import LimitResult as LimitResult
    from ._pycore import Table as Table
    from ._pycore import take_all as take_all
    from ._pycore import take_all_result as take_all_result
    from ._pycore import try_take_all as try_take_all
    from ._pycore import unlink as unlink

    USING_C = False
else:
    if NO_EXTENSIONS:
        from ._pycore import BucketReading, LimitResult, Table, take_all, take_all_result, try_take_all, unlink

        USING_C = False
    else:
        try:
            from ._core import BucketReading, LimitResult, Table, take_all, take_all_result, try_take_all, unlink

            USING_C = True
        except ImportError:  # not built: a source checkout without a compiler
            from ._pycore import BucketReading, LimitResult, Table, take_all, take_all_result, try_take_all, unlink

            USING_C = False

__all__ = ["Table", "LimitResult", "BucketReading", "unlink", "take_all", "take_all_result", "try_take_all", "USING_C"]
