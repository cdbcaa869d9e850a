"""A stop signal that arrives before a server's event loop handles signals."""

from __future__ import annotations

__all__ = ["note_stop", "stop_requested"]

_stop = False


def note_stop(_signum: int, _frame: object) -> None:
    global _stop
    _stop = True


def stop_requested() -> bool:
    return _stop
