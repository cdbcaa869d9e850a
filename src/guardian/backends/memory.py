"""MemoryBackend: the core slot table, private to this process or shared by
name across the processes of one host; one table per limit when a key
carries several (all or nothing)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .. import _impl
from .._args import check_clock, check_keys
from .._errors import MisuseError
from .._config import MAX_LIMITS, Limits, TokenBucketConfig, as_limits
from .._result import LimitResult

__all__ = ["MemoryBackend", "LimitsResult"]


@dataclass(frozen=True)
class LimitsResult:
    """A check against several limits (``MemoryBackend.take_detail``).

    ``result``: the answer as one LimitResult (what ``take`` returns).
    ``denied_by``: None when admitted, else the index in the backend's
    Limits of the limit whose wait is longest, the one that decides when to
    retry; ``limit`` is that TokenBucketConfig. ``results[i]``: limit i's
    own answer (its take when admitted; when denied, what a take would
    answer now, nothing having been taken from any limit).
    """

    result: LimitResult
    denied_by: Optional[int]
    limit: Optional[TokenBucketConfig]
    results: Tuple[LimitResult, ...]


class MemoryBackend:
    """Token buckets in a GCRA slot table.

    ``config``: a TokenBucketConfig, or the notation of one ("100/minute",
    "10 per second; burst 20"); or several limits that a check must all
    pass, as ``Limits`` or "10/second and 1000/day" (then nothing is taken
    from any limit unless every one admits the check).

    ``shared="name"`` creates or attaches the named shared-memory table, so
    every process that passes the same name enforces one limit (several
    limits use the tables "name.0", "name.1", ...). ``slots`` bounds the
    keys tracked at once (rounded up to a power of two; keep it at least
    twice the number of keys whose buckets are not full, see docs/core.md).
    ``clock`` (a callable returning integer nanoseconds) and ``seed`` are
    for tests.

    A shared table can fail a check: when another process holds its insert
    lock past a bound (stopped by SIGSTOP, say), the check raises
    BackendTimeoutError, so the limiter's failure policy decides it
    (``can_fail``). A private table cannot. Neither does I/O (``does_io``).
    """

    can_fail = False
    #: No network or disk I/O: callers may run checks inline (on an event
    #: loop, without a thread), shared table or not.
    does_io = False

    def __init__(
        self,
        config: Union[TokenBucketConfig, Limits, str],
        shared: Optional[str] = None,
        slots: Optional[int] = None,
        clock: Optional[Callable[[], int]] = None,
        seed: Optional[bytes] = None,
    ) -> None:
        config = as_limits(config)
        if clock is not None:
            clock = check_clock(clock)  # float seconds would fail on first use, deep in the core
        if seed is not None and not isinstance(seed, bytes):
            raise MisuseError(f"seed must be 16 bytes (os.urandom(16)), got {type(seed).__name__}")
        self.config: Any = config
        limits = tuple(config) if isinstance(config, Limits) else (config,)
        names: Sequence[Optional[str]]
        if shared is None:
            names = [None] * len(limits)
        else:
            names = [shared] if len(limits) == 1 and not isinstance(config, Limits) else [
                f"{shared}.{i}" for i in range(len(limits))]
        if len(limits) > 1 and seed is None:
            seed = os.urandom(16)  # one key hash serves every table of a check
        self.tables = tuple(
            _impl.Table(c.capacity, c.emission_ticks, c.ticks_per_ns, slots=slots, name=name,
                        clock=clock, seed=seed)
            for c, name in zip(limits, names)
        )
        self.table = self.tables[0]
        self.shared = shared
        self.can_fail = shared is not None
        # The result type of the core that decides (there is one per process;
        # the tests swap cores, and results must not mix types).
        self._result = _impl.LimitResult
        if isinstance(config, Limits):
            self._limits = limits
            self.try_take: Callable[..., bool] = functools.partial(_impl.try_take_all, self.tables)
            self.take: Callable[..., LimitResult] = functools.partial(_impl.take_all_result, self.tables)
            self.usage: Callable[[str], int] = self._usage_all
            self.reset: Callable[[str], None] = self._reset_all
            return
        # The core's own methods, bound once: no Python frame in between.
        self.try_take = self.table.try_acquire
        self.take = self.table.check_result
        self.usage = self.table.usage
        self.reset = self.table.reset

    # --- several limits ----------------------------------------------------

    def take_detail(self, key: str, cost: int = 1) -> LimitsResult:
        """The check of ``take``, with which limit denied it and each
        limit's own answer."""
        denied_by, answers = _impl.take_all(self.tables, key, cost)
        make = self._result
        results = tuple(make(*r, t.capacity) for r, t in zip(answers, self.tables))
        if denied_by < 0:
            # Admitted: the tightest limit speaks for the rest.
            tight = min(results, key=lambda r: r.remaining)
            one = make(True, tight.remaining, 0.0, max(r.reset_after for r in results), tight.limit)
            return LimitsResult(one, None, None, results)
        deny = results[denied_by]
        one = make(False, min(r.remaining for r in results), deny.retry_after,
                   max(r.reset_after for r in results), deny.limit)
        return LimitsResult(one, denied_by, self._limits[denied_by], results)

    def _usage_all(self, key: str) -> int:
        """Tokens in use of the limit with the fewest tokens left."""
        used = [t.usage(key) for t in self.tables]
        return min(zip((t.capacity - u for t, u in zip(self.tables, used)), used))[1]

    def _reset_all(self, key: str) -> None:
        for t in self.tables:
            t.reset(key)

    # --- one limit or several ------------------------------------------------

    def take_many(self, keys: Sequence[str], cost: int = 1) -> List[LimitResult]:
        keys = check_keys(keys)
        if len(self.tables) > 1:
            return [self.take(k, cost) for k in list(keys)]
        limit, make = self.config.capacity, self._result
        return [make(*r, limit) for r in self.table.check_many(keys, cost)]

    def peek(self, key: str, cost: int = 1) -> LimitResult:
        """What ``take(key, cost)`` would answer now, without taking;
        ``cost=0`` reads the bucket as it is (remaining now, seconds until
        full)."""
        make = self._result
        if len(self.tables) == 1:
            return make(*self.table.peek(key, cost), self.table.capacity)
        results = [make(*t.peek(key, cost), t.capacity) for t in self.tables]
        if all(r.allowed for r in results):
            tight = min(results, key=lambda r: r.remaining)
            return make(True, tight.remaining, 0.0, max(r.reset_after for r in results), tight.limit)
        deny = max((r for r in results if not r.allowed), key=lambda r: r.retry_after)
        return make(False, min(r.remaining for r in results), deny.retry_after,
                    max(r.reset_after for r in results), deny.limit)

    def stats(self) -> Dict[str, int]:
        """Slots, denials because a key's window was full, reclaims, and the
        checks allowed and denied (with several limits: checks, not takes)."""
        if len(self.tables) == 1:
            return dict(self.table.stats())
        each = [t.stats() for t in self.tables]
        return {"slots": each[0]["slots"], "full": sum(s["full"] for s in each),
                "reclaims": sum(s["reclaims"] for s in each), "allowed": each[0]["allowed"],
                "denied": sum(s["denied"] for s in each)}

    def close(self) -> None:
        for t in self.tables:
            t.close()

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the named shared table (attached processes keep theirs),
        and the tables "name.0", "name.1", ... that ``shared=name`` made for
        several limits, so the name given is the name removed."""
        removed = bool(_impl.unlink(name))
        if len(name) <= 198:  # room for ".N" in a valid table name
            for i in range(MAX_LIMITS):
                removed = bool(_impl.unlink(f"{name}.{i}")) or removed
        return removed

    def __repr__(self) -> str:
        where = f"shared={self.shared!r}" if self.shared else "local"
        return f"MemoryBackend({self.config!r}, {where}, slots={self.table.slots})"
