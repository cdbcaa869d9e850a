"""The server's backends: one per (namespace, bucket config), built on first
use and kept across policy reloads (a reload that keeps a limit keeps its
buckets' state).

In memory, each is a MemoryBackend: private with one worker, a named
shared-memory table with ``--workers`` (named after the run id, so every
worker of one run attaches to the same table and the supervisor removes
them at exit). With ``--redis-url``, each is an AsyncRedisBackend on one
shared client, wrapped in an AsyncRateLimiter with the fail policy; with
``--batched`` too, an AsyncBatchedRedisBackend on that client whose leases
live in a private table of each worker (each worker gives its own unused
tokens back when it stops).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .. import AsyncRateLimiter, MemoryBackend, RateLimiter, TokenBucketConfig
from .._region import DEFAULT_SLOTS, SLOT_BYTES
from .._result import LimitResult
from .config import ServeOptions
from .metrics import LEASE_METRICS

__all__ = ["Bucket", "Buckets", "shared_table_prefix", "redis_prefix"]

log = logging.getLogger("guardian.server")

Ident = Tuple[str, int, int, int]

#: Slots of a small table (256 KiB; 8,192 keys at the core's load of 1/2).
SMALL_SLOTS = 1 << 14


def shared_table_prefix(run_id: str) -> str:
    return f"gs{run_id}."


def _tag(namespace: str, config: TokenBucketConfig) -> str:
    ns = hashlib.sha1(namespace.encode()).hexdigest()[:10]
    return f"{ns}.{config.capacity}.{config.emission_ticks}.{config.ticks_per_ns}"


def redis_prefix(namespace: str, config: TokenBucketConfig) -> str:
    """The Redis key prefix of one bucket config (``v1:<name>`` or ``rls``)."""
    return f"guardian:{_tag(namespace, config)}"


class Bucket:
    """A backend as the services use it: ``fast`` is the in-process check
    (no await: a private table's ``take``, or for a shared table, which can
    fail on a lock a dead process holds, the sync façade with the fail
    policy); otherwise ``limiter`` applies the fail policy over the network."""

    __slots__ = ("config", "capacity", "backend", "limiter", "fast", "local")

    def __init__(self, backend: Any, fail_open: Any, fallback: Optional[str] = None) -> None:
        """``fallback``: the shared table that ``fail_open="local"`` decides
        in while the backend fails (one for a run's workers, so they fall
        back to one limit, not one each)."""
        self.config: TokenBucketConfig = backend.config
        self.capacity = self.config.capacity
        self.backend = backend
        #: In-process: no I/O to await, checks run inline on the event loop
        #: (``does_io``, the backends' own word for it, once they all carry it).
        self.local = not getattr(backend, "does_io", not isinstance(backend, MemoryBackend))
        self.fast: Optional[Callable[[str, int], LimitResult]] = None
        self.limiter: Optional[AsyncRateLimiter] = None
        if not self.local:
            self.limiter = AsyncRateLimiter(backend, fail_open=fail_open,
                                            local_shared=fallback if fail_open == "local" else None)
        elif getattr(backend, "can_fail", False):
            self.fast = RateLimiter(backend, fail_open=fail_open).check_limit
        else:
            self.fast = backend.take

    async def take(self, key: str, cost: int) -> LimitResult:
        if self.fast is not None:
            result: LimitResult = self.fast(key, cost)
            return result
        assert self.limiter is not None
        return await self.limiter.check_limit(key, cost)

    async def peek(self, key: str) -> Tuple[int, float]:
        """(remaining, seconds until full) without taking, as the cores or
        peek.lua answer it (the reset moves with time). A Redis backend
        without ``peek`` (before the backends expose it) falls back to the
        usage in whole tokens."""
        if self.limiter is None:
            r = self.backend.peek(key, 0)
            return r.remaining, r.reset_after
        peek = getattr(self.backend, "peek", None)
        if peek is not None:
            r = await peek(key, 0)
            return r.remaining, r.reset_after
        used = await self.limiter.get_usage(key)
        return self.capacity - used, used * self.config.emission_interval

    async def usage(self, key: str) -> int:
        if self.limiter is None:
            return int(self.backend.usage(key))
        return await self.limiter.get_usage(key)

    async def reset(self, key: str) -> None:
        if self.limiter is None:
            self.backend.reset(key)
        else:
            await self.limiter.reset(key)


class Buckets:
    def __init__(self, opts: ServeOptions, run_id: Optional[str]) -> None:
        self.opts = opts
        #: Shared tables only when several workers must see one limit.
        self.run_id = run_id if opts.workers > 1 else None
        self._by_config: Dict[Tuple[str, int, int, int], Bucket] = {}
        self.redis_client: Any = None
        if opts.redis_url:
            import redis.asyncio

            from ..backends.redis_url import client_for_url

            self.redis_client = client_for_url(redis.asyncio, opts.redis_url)

    @staticmethod
    def ident(namespace: str, config: TokenBucketConfig) -> Ident:
        return (namespace, config.capacity, config.emission_ticks, config.ticks_per_ns)

    @property
    def in_memory(self) -> bool:
        return self.redis_client is None

    def table_bytes(self) -> int:
        """The memory of one (not small) table."""
        return (self.opts.slots or DEFAULT_SLOTS) * SLOT_BYTES

    def build(self, namespace: str, config: TokenBucketConfig) -> Bucket:
        """The bucket ``get`` would return, built without registering it
        (safe off the event loop; ``adopt`` it on the loop)."""
        ident = self.ident(namespace, config)
        return self._by_config.get(ident) or self._bucket(ident, config, self.opts.slots)

    def adopt(self, buckets: Dict[Ident, Bucket]) -> None:
        """Registers built buckets (a table built twice keeps the first)."""
        for ident, bucket in buckets.items():
            kept = self._by_config.setdefault(ident, bucket)
            if kept is not bucket:
                bucket.backend.close()

    def get(self, namespace: str, config: TokenBucketConfig, small: bool = False) -> Bucket:
        """The bucket of ``config`` in ``namespace``; ``small``: a table of
        SMALL_SLOTS slots in memory (a full one denies new keys; never grows)."""
        ident = self.ident(namespace, config)
        bucket = self._by_config.get(ident)
        if bucket is None:
            bucket = self._by_config[ident] = self._bucket(ident, config, SMALL_SLOTS if small else self.opts.slots)
        return bucket

    def _bucket(self, ident: Ident, config: TokenBucketConfig, slots: Optional[int]) -> Bucket:
        # With several workers, fail_open="local" falls back to a table they
        # share (removed with the run's other tables), so a Redis outage
        # admits the limit once per sidecar, not once per worker.
        fallback = None
        if self.run_id is not None and self.redis_client is not None and self.opts.fail_open == "local":
            fallback = shared_table_prefix(self.run_id) + "fb." + _tag(ident[0], config)
        return Bucket(self._backend(ident, config, slots), self.opts.fail_open, fallback)

    def _backend(self, ident: Tuple[str, int, int, int], config: TokenBucketConfig, slots: Optional[int]) -> Any:
        if self.redis_client is not None:
            prefix = redis_prefix(ident[0], config)
            if self.opts.batched:
                from ..backends.batched_async import AsyncBatchedRedisBackend

                return AsyncBatchedRedisBackend(config, client=self.redis_client, prefix=prefix)
            from ..backends.redis_async import AsyncRedisBackend

            return AsyncRedisBackend(config, client=self.redis_client, prefix=prefix)
        tag = _tag(ident[0], config)
        if self.run_id is not None:
            return MemoryBackend(config, shared=shared_table_prefix(self.run_id) + tag, slots=slots)
        return MemoryBackend(config, slots=slots)

    def prune(self, keep: Set[Ident]) -> List[Tuple[Ident, Bucket]]:
        """Forgets the policy's memory tables (guardian.v1 limits, Envoy rules;
        not overrides) a new policy no longer uses, so reloads cannot grow
        memory; returns them to be closed. Redis buckets stay: they hold no
        memory, and a call may be awaiting one."""
        gone = [(i, b) for i, b in self._by_config.items()
                if b.local and i not in keep and (i[0] == "rls" or i[0].startswith("v1:"))]
        for ident, bucket in gone:
            del self._by_config[ident]
        return gone

    def core_counts(self) -> Iterator[Tuple[str, int, int]]:
        """(limit name, allowed, denied) of each guardian.v1 limit's memory
        tables, as their cores counted them. Each name has its own tables
        (the namespace is ``v1:<name>``), so the label is exact; tables of a
        config a reload replaced keep counting under their name. Envoy rules
        share ``rls`` tables and carry labels a table cannot know (rule path,
        shadow mode), so their checks are counted by the service instead."""
        for ident, bucket in self._by_config.items():
            if bucket.local and ident[0].startswith("v1:"):
                counts = bucket.backend.stats()
                yield ident[0][3:], counts["allowed"], counts["denied"]

    def gauges(self) -> Dict[str, float]:
        limiters = [b.limiter for b in self._by_config.values() if b.limiter is not None]
        out = {
            "errors": float(sum(lim.errors for lim in limiters)),
            "policy_decisions": float(sum(lim.failures for lim in limiters)),
            "breaker_open": float(any(_breaker_open(lim) for lim in limiters)),
        }
        if self.opts.batched:
            leases = dict.fromkeys(LEASE_METRICS, 0.0)
            for b in self._by_config.values():
                counts = b.backend.stats()
                for name in LEASE_METRICS:
                    leases[name] += counts[name]
            out.update((f"lease_{k}", v) for k, v in leases.items())
        return out

    async def close(self) -> None:
        """Closes every backend; batched ones give their unused leased
        tokens back to Redis first (all buckets at once, so the time this
        takes is about the slowest bucket's, not their sum)."""
        closing = []
        for bucket in self._by_config.values():
            if bucket.limiter is not None:
                closing.append(bucket.limiter.aclose())
            else:
                bucket.backend.close()
        # closing is best effort at exit: a failure leaves tokens to come back as the bucket refills
        await asyncio.gather(*closing, return_exceptions=True)
        if self.redis_client is not None:
            try:
                await self.redis_client.aclose()
            except Exception:  # noqa: BLE001
                pass


def _breaker_open(limiter: AsyncRateLimiter) -> bool:
    breaker = limiter.breaker
    return breaker is not None and breaker.is_open
