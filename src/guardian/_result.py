"""LimitResult: the answer to one check.

With the C core loaded, ``LimitResult`` is its extension type (built in C
on the memory hot path, no Python ``__init__``); otherwise this module's
class. Both have the same attributes and behaviour; there is only ever one
``LimitResult`` type in a process, whichever backend made the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _impl

__all__ = ["LimitResult", "PyLimitResult"]


class PyLimitResult:
    """The decision for one check of ``cost`` tokens against a bucket.

    ``allowed``: whether the tokens were taken. ``remaining``: whole tokens
    left after this check. ``retry_after``: seconds until the same check
    would be allowed (0 when allowed). ``reset_after``: seconds until the
    bucket is full again. ``limit``: the bucket's capacity. A result is
    truthy when allowed.
    """

    __slots__ = ("allowed", "remaining", "retry_after", "reset_after", "limit")

    def __init__(
        self, allowed: bool, remaining: int, retry_after: float, reset_after: float, limit: int
    ) -> None:
        self.allowed = allowed
        self.remaining = remaining
        self.retry_after = retry_after
        self.reset_after = reset_after
        self.limit = limit

    def is_allowed(self) -> bool:
        return self.allowed

    def __bool__(self) -> bool:
        return self.allowed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PyLimitResult):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:  # type: ignore[type-arg]
        return (type(self), tuple(getattr(self, f) for f in self.__slots__))

    def __repr__(self) -> str:
        return (
            f"LimitResult(allowed={self.allowed}, remaining={self.remaining}, "
            f"retry_after={self.retry_after:.6f}, reset_after={self.reset_after:.6f}, "
            f"limit={self.limit})"
        )


if TYPE_CHECKING:
    LimitResult = PyLimitResult
elif _impl.USING_C:
    from ._core import LimitResult
else:
    LimitResult = PyLimitResult
