"""What the sync and async batching backends share and does no I/O: the
lease table, per-key lease bookkeeping, lease sizing and the denial cache.
The design and its accuracy bound are in docs/batched.md.
"""

from __future__ import annotations

import atexit
import math
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import _impl
from .._config import TokenBucketConfig
from .._errors import ConfigurationError
from .._result import LimitResult

__all__ = ["LeaseBook", "Lease", "lease_size", "lease_table"]

#: A lease table's capacity C times its T stays at 2^61 ticks (1 ns each),
#: far from int64 overflow; T is then months for any sane capacity.
_SPAN = 1 << 61
#: A held token decays once it is one T old (held is ceil((TAT - now) / T));
#: T must outlive a lease.
_MIN_T_OVER_LIFETIME = 2

#: (server microseconds, ticks its TAT lay ahead): reserve's 5th and 4th.
Reservation = Tuple[int, int]
#: Reservations remembered per lease for giving tokens back.
_KEEP = 4
#: What to give back: (key, tokens, the reservation they came from).
Returns = List[Tuple[str, int, Reservation]]


def lease_table(capacity: int, shared: Optional[str], slots: Optional[int],
                clock: Optional[Callable[[], int]]) -> Any:
    """A core table counting tokens *held*: T is so long that nothing
    refills while a lease lives, so TAT - now = held * T (see _core.pyx)."""
    return _impl.Table(capacity, _SPAN // capacity, 1, slots=slots, name=shared, clock=clock)


def lease_size(consumed: int, elapsed: float, refresh: float, prev: int, max_lease: int, cost: int) -> int:
    """Tokens to ask for: about ``refresh`` seconds of the demand observed
    since the last reservation (``consumed`` tokens in ``elapsed`` s), at
    most twice the last lease (a burst must prove itself before it takes a
    large share), within [1, max_lease], and at least ``cost``."""
    if prev <= 0:
        want = 1  # a cold key: a plain Redis check, nothing held back
    else:
        rate = max(consumed, 0) / max(elapsed, 1e-6)
        want = min(max(math.ceil(rate * refresh), 1), 2 * prev)
    return max(min(want, max_lease), cost)


class Lease:
    """This process' bookkeeping for one key's lease."""

    __slots__ = ("size", "low", "held_at", "at", "expires", "reservations", "busy", "lock", "streak", "window",
                 "missed")

    def __init__(self, lock: Any) -> None:
        self.size = 0  # tokens last asked for; 0: cold
        self.low = 0  # refill in the background at or below this many held
        self.held_at = 0  # tokens held right after the last credit...
        self.at = 0.0  # ...at this monotonic time
        self.expires = math.inf
        #: The last few reservations, newest last: [us, ahead, tokens not
        #: given back]. Each can only give back its own tokens (release.lua).
        self.reservations: List[List[int]] = []
        self.busy = False  # a background refill is queued or running
        self.streak = 0  # Redis denials in a row
        self.window = 0.0  # seconds the last one is cached for
        self.missed = 0  # tokens denied from the cache since
        self.lock = lock  # one Redis reservation per key at a time


class LeaseBook:
    """The leases of one backend. The hot path is ``table.spend``; the rest
    runs on a miss, in the background refill or at expiry."""

    def __init__(
        self,
        config: TokenBucketConfig,
        *,
        shared: Optional[str],
        slots: Optional[int],
        lease_lifetime: float,
        refresh_interval: float,
        max_share: float,
        lock: Callable[[], Any],
        ticks_per_second: int,
        clock: Optional[Callable[[], int]] = None,
    ) -> None:
        for name, value in (("lease_lifetime", lease_lifetime), ("refresh_interval", refresh_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{name} must be positive seconds, got {value!r}")
        if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 0.5:
            # Refills start at half a lease, so held tokens stay within C.
            raise ConfigurationError(f"max_share must be in (0, 0.5], got {max_share!r}")
        capacity = config.capacity
        if _SPAN // capacity < lease_lifetime * 1e9 * _MIN_T_OVER_LIFETIME:
            raise ConfigurationError(
                f"capacity {capacity} is too large for leases of {lease_lifetime}s "
                "(held tokens would decay; see docs/batched.md)"
            )
        self.config = config
        self.capacity = capacity
        self.emission = config.emission_interval
        self.tps = ticks_per_second  # of the scripts' replies
        self.lifetime = float(lease_lifetime)
        self.refresh = float(refresh_interval)
        self.max_lease = max(1, int(capacity * max_share))
        self.shared = shared
        self._args = (capacity, shared, slots, clock)
        self.table = lease_table(*self._args)
        self._lock = lock
        self.leases: Dict[str, Lease] = {}
        #: The highest low water of the live leases: a hit that leaves more
        #: held tokens than this needs no look at its lease.
        self.low_cap = 0
        self.denied: Dict[str, float] = {}
        self.counts = dict.fromkeys(
            ("reservations", "reserved_tokens", "redis_denials", "denial_cache_hits",
             "returned_tokens", "dropped_tokens", "expired_leases", "refill_errors"), 0)

    # --- decisions without Redis ------------------------------------------

    def hit(self, left: int) -> LimitResult:
        return LimitResult(True, left, 0.0, 0.0, self.capacity)

    def cached_denial(self, key: str, cost: int) -> Optional[LimitResult]:
        """Redis' last denial of ``key`` while it holds: no call needed."""
        until = self.denied.get(key)
        if until is None:
            return None
        wait = until - time.monotonic()
        if wait <= 0:
            self.denied.pop(key, None)
            return None
        self.counts["denial_cache_hits"] += 1
        lease = self.leases.get(key)
        if lease is not None:
            lease.missed += cost
        return LimitResult(False, 0, wait + (cost - 1) * self.emission, wait, self.capacity)

    def lease(self, key: str) -> Lease:
        lease = self.leases.get(key)
        if lease is None:
            lease = self.leases[key] = Lease(self._lock())
        return lease

    def wants_refill(self, key: str, left: int) -> Optional[Lease]:
        """The lease to refill in the background after a hit that left
        ``left`` tokens, or None (above low water, or one in flight)."""
        lease = self.leases.get(key)
        if lease is None:
            if self.shared is None:
                return None  # drained by expiry meanwhile: the next miss reserves
            lease = self.lease(key)  # another process' lease: refill it too
        if left > lease.low or lease.busy:
            return None
        lease.busy = True
        return lease

    # --- a reservation ----------------------------------------------------

    def size(self, lease: Lease, held: int, cost: int) -> int:
        now = time.monotonic()
        if lease.streak:
            # Back from a denial window: ask for what accrued meanwhile (or
            # a lone node admits one token per window), but no more than
            # this node was denied in it (or idle nodes sit on tokens).
            accrued = math.ceil(lease.window / self.emission - 1e-9)
            return max(min(accrued, lease.missed + cost, self.max_lease), cost)
        return lease_size(lease.held_at - held, now - lease.at, self.refresh, lease.size,
                          self.max_lease, cost - held if held > 0 else cost)

    def granted(self, key: str, lease: Lease, asked: int, reply: Sequence[int]) -> int:
        """Credits a reserve reply to the table; the tokens that did not fit
        (to give back at once)."""
        got, retry_ticks, ahead, us = reply[0], reply[2], reply[3], reply[4]
        counts = self.counts
        lease.missed = 0
        counts["reservations"] += 1
        now = time.monotonic()
        if got == 0:
            counts["redis_denials"] += 1
            # The next token goes to one of the nodes asking: each denial
            # in a row doubles how long this one waits (else N nodes ask
            # N times per token), never past half the bucket's fill time
            # (it cannot overflow while all wait) or ``refresh``, never
            # below Redis' retry_after (docs/scaling.md).
            lease.streak = min(lease.streak + 1, 16)
            wait = retry_ticks / self.tps
            cap = min(self.refresh, self.capacity * self.emission / 2)
            lease.window = max(wait, min(wait * 2 ** lease.streak, cap))
            self.denied[key] = now + lease.window
            return 0
        lease.streak = 0
        self.denied.pop(key, None)
        counts["reserved_tokens"] += got
        table = self.table
        fit = got
        if not table.try_acquire(key, fit):  # held + got > C: another process refilled too
            fit = min(got, self.capacity - table.usage(key))
            if fit <= 0 or not table.try_acquire(key, fit):
                fit = 0
        lease.size = asked
        lease.low = asked // 2
        if lease.low > self.low_cap:
            self.low_cap = lease.low
        lease.held_at = table.usage(key)
        lease.at = now
        lease.expires = now + self.lifetime
        lease.reservations.append([us, ahead, fit])
        del lease.reservations[:-_KEEP]
        return got - fit

    def decided(self, key: str, cost: int, left: int, reply: Sequence[int]) -> LimitResult:
        """The answer after a reservation: a hit when the tokens are now
        held, else Redis' denial."""
        if left >= 0:
            return self.hit(left)
        tps = self.tps
        retry = reply[2] / tps if reply[0] == 0 else 0.0
        held = max(self.table.usage(key), 0)
        return LimitResult(False, 0, retry + max(cost - held - 1, 0) * self.emission,
                           reply[3] / tps, self.capacity)

    # --- giving tokens back -----------------------------------------------

    def take_back(self, key: str, lease: Lease, out: Returns) -> None:
        """Drains the key's held tokens into ``out``, newest reservation
        first, each at most its own unreturned tokens; the rest (older
        than the reservations kept) are dropped."""
        drained = self.table.drain(key)
        for r in reversed(lease.reservations):
            n = min(drained, r[2])
            if n:
                r[2] -= n
                drained -= n
                out.append((key, n, (r[0], r[1])))
        self.counts["dropped_tokens"] += drained

    def expired(self) -> Returns:
        """Leases past their lifetime, drained and forgotten (not one with
        a refill in flight)."""
        now = time.monotonic()
        out: Returns = []
        for key, lease in list(self.leases.items()):
            if lease.expires <= now and not lease.busy:
                self.counts["expired_leases"] += 1
                del self.leases[key]
                self.take_back(key, lease, out)
        for key, until in list(self.denied.items()):
            if until <= now:
                self.denied.pop(key, None)
        self.low_cap = max((lease.low for lease in self.leases.values()), default=0)
        return out

    def everything(self) -> Returns:
        """Every lease, drained and forgotten (close, exit)."""
        out: Returns = []
        for key, lease in list(self.leases.items()):
            del self.leases[key]
            self.take_back(key, lease, out)
        return out

    def forget(self, key: str) -> None:
        """After reset: the bucket is full, held tokens are void."""
        self.table.drain(key)
        self.leases.pop(key, None)
        self.denied.pop(key, None)

    def after_fork(self) -> None:
        """A forked child must not serve its parent's private leases twice."""
        if self.shared is None:
            self.table = lease_table(*self._args)
        self.leases = {}
        self.denied = {}
        self.low_cap = 0

    def stats(self) -> Dict[str, int]:
        return dict(self.counts, leases=len(self.leases))


class BatchedCommon:
    """What BatchedRedisBackend and its asyncio twin share: arguments, the
    wrapped Redis backend, the book and the script calls' packing. The
    subclasses only do I/O and run the background refill."""

    can_fail = True
    #: The Redis backend class wrapped (sync or asyncio); set by subclasses.
    redis_class: Any
    #: What guards one key's reservations (threading.Lock or asyncio.Lock).
    lock_class: Any

    def __init__(
        self,
        config: TokenBucketConfig,
        url: Optional[str] = None,
        *,
        client: Any = None,
        prefix: str = "guardian",
        shared: Optional[str] = None,
        slots: Optional[int] = None,
        lease_lifetime: float = 5.0,
        refresh_interval: float = 0.1,
        max_share: float = 0.2,
        connect_timeout: float = 0.25,
        timeout: float = 0.25,
        **client_kwargs: Any,
    ) -> None:
        if not isinstance(config, TokenBucketConfig):
            raise ConfigurationError(f"config must be a TokenBucketConfig, got {config!r}")
        self.redis = self.redis_class(config, url, client=client, prefix=prefix,
                                      connect_timeout=connect_timeout, timeout=timeout, **client_kwargs)
        self.config = config
        self.book = LeaseBook(config, shared=shared, slots=slots, lease_lifetime=lease_lifetime,
                              refresh_interval=refresh_interval, max_share=max_share,
                              lock=self.lock_class, ticks_per_second=self.redis.layout.ticks_per_second)
        self._low_cap = 0  # the book's low_cap, copied for the hot path
        self._capacity = config.capacity  # likewise, for results of local hits
        #: Seconds between expiry scans of the background worker.
        self.scan_interval = min(lease_lifetime / 4, 0.5)

    def reserve_call(self, key: str, n: int) -> Tuple[List[Any], bytes]:
        return self.redis.plan_call("reserve", key, self.redis.packer.wanted(n))  # type: ignore[no-any-return]

    def release_call(self, key: str, n: int, reservation: Reservation) -> Tuple[List[Any], bytes]:
        us, ahead = reservation
        return self.redis.plan_call("release", key, b"%d" % n, b"%d" % us, b"%d" % ahead)  # type: ignore[no-any-return]

    def _close_at_exit(self) -> None:
        """Give leases back at interpreter exit; subclasses say how."""

    def returned(self, reply: Sequence[int]) -> None:
        self.book.counts["returned_tokens"] += int(reply[0])

    def stats(self) -> Dict[str, int]:
        """Counters: local_hits, reservations (Redis calls that reserved),
        reserved_tokens, redis_denials, denial_cache_hits, returned_tokens,
        dropped_tokens (drained but not returnable), expired_leases,
        refill_errors (background refills that failed), leases (live)."""
        return dict(self.book.stats(), local_hits=self.book.table.spends)

    def __repr__(self) -> str:
        where = f"shared={self.book.shared!r}" if self.book.shared else "local"
        return f"{type(self).__name__}({self.config!r}, prefix={self.redis.prefix!r}, {where})"


#: Every batched backend alive, sync or asyncio: their leases go back to
#: Redis at interpreter exit (not after SIGKILL: those tokens come back as
#: the bucket refills; docs/batched.md).
live: "weakref.WeakSet[BatchedCommon]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for backend in list(live):
        try:
            backend._close_at_exit()
        except Exception:  # pragma: no cover - exit must not fail on one backend
            pass
