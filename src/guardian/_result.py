"""LimitResult: the answer to one check.

Each core defines its own (``_core.LimitResult``, an extension type built
in C on the memory hot path; ``_pycore.LimitResult``, its twin) and
``_impl`` picks the pair in use, so there is only ever one ``LimitResult``
type in a process, whichever backend made the result. This module is where
the layers above the core import it from.
"""

from __future__ import annotations

from ._impl import LimitResult

__all__ = ["LimitResult"]
