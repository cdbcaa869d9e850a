"""MemoryBackend: the core slot table, private to this process or shared by
name across the processes of one host."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from .. import _impl
from .._config import TokenBucketConfig
from .._errors import ConfigurationError
from .._result import LimitResult

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Token buckets in a GCRA slot table.

    ``shared="name"`` creates or attaches the named shared-memory table, so
    every process that passes the same name enforces one limit. ``slots``
    bounds the keys tracked at once (rounded up to a power of two; keep it
    at least twice the number of keys whose buckets are not full, see
    docs/core.md). ``clock`` (a callable returning integer nanoseconds) and
    ``seed`` are for tests.
    """

    can_fail = False

    def __init__(
        self,
        config: TokenBucketConfig,
        shared: Optional[str] = None,
        slots: Optional[int] = None,
        clock: Optional[Callable[[], int]] = None,
        seed: Optional[bytes] = None,
    ) -> None:
        if not isinstance(config, TokenBucketConfig):
            raise ConfigurationError(f"config must be a TokenBucketConfig, got {config!r}")
        self.config = config
        self.table = _impl.Table(
            config.capacity,
            config.emission_ticks,
            config.ticks_per_ns,
            slots=slots,
            name=shared,
            clock=clock,
            seed=seed,
        )
        self.shared = shared
        # The result type of the core that decides (there is one per process;
        # the tests swap cores, and results must not mix types).
        self._result = _impl.LimitResult
        # The core's own methods, bound once: no Python frame in between.
        self.try_take: Callable[..., bool] = self.table.try_acquire
        self.take: Callable[..., LimitResult] = self.table.check_result
        self.usage: Callable[[str], int] = self.table.usage
        self.reset: Callable[[str], None] = self.table.reset

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        limit, make = self.config.capacity, self._result
        return [make(*r, limit) for r in self.table.check_many(keys, cost)]

    def peek(self, key: str, cost: int = 1) -> LimitResult:
        """What ``take(key, cost)`` would answer now, without taking;
        ``cost=0`` reads the bucket as it is (remaining now, seconds until
        full)."""
        return self._result(*self.table.peek(key, cost), self.config.capacity)

    def stats(self) -> Dict[str, int]:
        """Slots, denials because a key's window was full, reclaims."""
        return dict(self.table.stats())

    def close(self) -> None:
        self.table.close()

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the named shared table (attached processes keep theirs)."""
        return bool(_impl.unlink(name))

    def __repr__(self) -> str:
        where = f"shared={self.shared!r}" if self.shared else "local"
        return f"MemoryBackend({self.config!r}, {where}, slots={self.table.slots})"
