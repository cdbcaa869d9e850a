"""Storage backends: every backend offers take / take_many / usage / reset
for a (key, cost) against the one limit it was built with."""

from .base import Backend
from .memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend"]
