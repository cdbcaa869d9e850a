"""What the sync and async batching backends share and does no I/O: the
lease table, per-key lease bookkeeping, lease sizing and the denial cache.
The design and its accuracy bound are in docs/batched.md.
"""

from __future__ import annotations

import atexit
import math
import os
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, TypeVar, Union

from .. import _impl
from .._args import check_clock
from .._config import Limits, TokenBucketConfig, as_limits
from .._errors import BackendError, BackendTimeoutError, BackendUnavailableError, ConfigurationError, MisuseError
from .._result import LimitResult
from ._redis_scripts import Layout, Reserved

__all__ = ["LeaseBook", "LeaseTable", "Lease", "LeaseObserver", "lease_size"]

#: A lease table's capacity C times its T stays at 2^61 ticks (1 ns each),
#: far from int64 overflow; T is then months for any sane capacity.
_SPAN = 1 << 61
#: A held token decays once it is one T old (held is ceil((TAT - now) / T));
#: T must outlive a lease.
_MIN_T_OVER_LIFETIME = 2
_NS = 1_000_000_000

#: (server microseconds, ticks its TAT lay ahead): reserve's 5th and 4th.
Reservation = Tuple[int, int]
#: Reservations remembered per lease for giving tokens back.
_KEEP = 4
#: What to give back: (key, tokens, the reservation they came from).
Returns = List[Tuple[str, int, Reservation]]
#: Time in integer nanoseconds of a monotonic clock: the core's convention,
#: used for every lease deadline too, so one injected clock moves them all.
Clock = Callable[[], int]


K = TypeVar("K")
V = TypeVar("V")


def _snapshot(d: Dict[K, V]) -> List[Tuple[K, V]]:
    """The items of ``d`` while other threads insert and pop.
    ``list(d.items())`` iterates ``d`` itself, and an allocation in that
    loop can run a garbage collection whose finalizers let another thread
    mutate it ("dictionary changed size during iteration", seen once in
    test_batched_bounded). ``d.copy()`` copies the table in one C call that
    runs no Python code between its allocation and its end, so the loop
    walks a private copy: no retry needed."""
    return list(d.copy().items())


class LeaseObserver(Protocol):
    """Told what a lease hit's answer depends on beyond the table, as it
    changes (guardian serve's native data plane keeps a copy to answer hits
    without Python). Called on the book's thread, never on the hot path."""

    def reserved(self, key: str, ahead: int, ahead_at: int, low: int) -> None:
        """``key``'s reservation: its bucket's TAT lay ``ahead`` ticks ahead
        at clock time ``ahead_at`` (ns), and a hit that leaves ``low`` held
        tokens or fewer may start a refill; ``ahead`` < 0: none."""

    def forgot(self, key: str) -> None:
        """``key`` has no lease any more."""

    def forgot_all(self) -> None:
        """No key has a lease any more."""

    def low_water(self, low_cap: int) -> None:
        """A hit that leaves ``low_cap`` held tokens or fewer may start a refill."""


class LeaseTable:
    """Tokens held per key by this process (or, shared, by this host),
    kept in a core table whose T is so long that nothing refills while a
    lease lives: TAT - now = held * T (see _core.pyx). Plain verbs for the
    core's operations, whose names mean the opposite here."""

    __slots__ = ("_table", "spend", "held", "drain")

    def __init__(self, capacity: int, shared: Optional[str], slots: Optional[int],
                 clock: Optional[Clock]) -> None:
        self._table = table = _impl.Table(capacity, _SPAN // capacity, 1, slots=slots, name=shared, clock=clock)
        #: spend(key, n=1): take n held tokens; what is left, or -1 (nothing
        #: taken) when fewer are held. The hot path: the core's own method.
        self.spend: Callable[..., int] = table.spend
        #: held(key): tokens held.
        self.held: Callable[[str], int] = table.usage
        #: drain(key): take every held token; how many there were.
        self.drain: Callable[[str], int] = table.drain

    def credit(self, key: str, n: int) -> bool:
        """Adds ``n`` held tokens; False (nothing added) when the key would
        then hold more than the capacity."""
        return bool(self._table.try_acquire(key, n))

    @property
    def spends(self) -> int:
        """Checks served from held tokens (all processes, when shared)."""
        return int(self._table.spends)

    def stats(self) -> Dict[str, int]:
        return dict(self._table.stats())

    def close(self) -> None:
        self._table.close()


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

    __slots__ = ("size", "low", "held_at", "at", "ahead", "ahead_at", "expires", "reservations", "busy", "lock",
                 "failed", "error", "streak", "window", "missed")

    def __init__(self, lock: Any, expires: int) -> None:
        self.size = 0  # tokens last asked for; 0: cold
        self.low = 0  # refill in the background at or below this many held
        self.held_at = 0  # tokens held right after the last credit...
        self.at = 0  # ...at this clock time (ns)
        #: Ticks the bucket's TAT lay ahead of the server's clock right
        #: after the last reservation (the leased tokens included); -1: none.
        self.ahead = -1
        self.ahead_at = 0  # ...at this clock time (ns)
        #: Forgotten at this clock time (ns) unless a reservation renews it:
        #: a key whose reservations are denied or fail holds no entry for long.
        self.expires = expires
        #: The last few reservations, newest last: [us, ahead, tokens not
        #: given back]. Each can only give back its own tokens (release.lua).
        self.reservations: List[List[int]] = []
        self.busy = False  # a background refill is queued or running
        self.lock = lock  # one Redis reservation per key at a time
        self.streak = 0  # Redis denials in a row
        self.window = 0  # ns the last one is served from here
        self.missed = 0  # tokens denied from the cache since
        #: Reservations of this key that failed, and the last failure: a check
        #: that waited on ``lock`` while one failed shares that outcome instead
        #: of trying Redis again (N queued checks cost one timeout, not N).
        self.failed = 0
        self.error: Optional[BackendError] = None

    def shared_failure(self) -> BackendError:
        """The failure of the reservation a queued check waited for, as a
        new exception of the same kind (the original is another caller's)."""
        error = self.error
        assert error is not None
        try:
            return type(error)(f"{error} (the reservation of this key that this check waited for)")
        except Exception:  # pragma: no cover - a subclass with another signature
            return BackendError(str(error))


class LeaseBook:
    """The leases of one backend. The hot path is ``table.spend``; the rest
    runs on a miss, in the background refill or at expiry. Every per-key
    entry (lease, cached denial) ends within a lease lifetime of its last
    renewal, so the book stays bounded whatever keys callers send."""

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
        layout: Layout,
        clock: Optional[Clock] = None,
    ) -> None:
        for name, value in (("lease_lifetime", lease_lifetime), ("refresh_interval", refresh_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
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
        #: The scripts' units: replies are decoded with it.
        self.layout = layout
        self.tps = layout.ticks_per_second
        self.lifetime = float(lease_lifetime)
        self._lifetime_ns = int(lease_lifetime * _NS)
        self.refresh = float(refresh_interval)
        self.max_lease = max(1, int(capacity * max_share))
        self.shared = shared
        self.now: Clock = check_clock(clock) if clock is not None else time.monotonic_ns
        self._args = (capacity, shared, slots, clock)
        self.table = LeaseTable(*self._args)
        self._lock = lock
        self.leases: Dict[str, Lease] = {}
        #: The highest low water of the live leases: a hit that leaves more
        #: held tokens than this needs no look at its lease.
        self.low_cap = 0
        #: key: (clock time (ns) until which Redis' last denial is served
        #: from here, the time (ns) the tokens it needed are there, how many).
        self.denied: Dict[str, Tuple[int, int, int]] = {}
        #: Told of every change a hit's answer depends on (observe()).
        self.observer: Optional[LeaseObserver] = None
        self.counts = dict.fromkeys(
            ("reservations", "reserved_tokens", "redis_denials", "denial_cache_hits",
             "returned_tokens", "dropped_tokens", "expired_leases", "refill_errors"), 0)

    def observe(self, observer: Optional[LeaseObserver]) -> None:
        """Tells ``observer`` the book as it is, then every change (None: stop)."""
        self.observer = observer
        if observer is None:
            return
        observer.forgot_all()
        for key, lease in _snapshot(self.leases):
            if lease.ahead >= 0:
                observer.reserved(key, lease.ahead, lease.ahead_at, lease.low)
        observer.low_water(self.low_cap)

    def _tell(self, key: str, lease: Lease) -> None:
        """The observer, of a reservation just credited (not of a lease an
        expiry scan dropped while its reservation was in flight: the book
        then knows none for the key)."""
        if self.observer is not None and self.leases.get(key) is lease:
            self.observer.reserved(key, lease.ahead, lease.ahead_at, lease.low)

    def _forgot(self, key: str) -> None:
        if self.observer is not None:
            self.observer.forgot(key)

    def _set_low_cap(self, low_cap: int) -> None:
        if low_cap != self.low_cap:
            self.low_cap = low_cap
            if self.observer is not None:
                self.observer.low_water(low_cap)

    # --- decisions without Redis ------------------------------------------

    def hit(self, key: str, left: int) -> LimitResult:
        """A check served from the lease, ``left`` tokens held after it."""
        return self.bucket(key, True, left, 0.0)

    def bucket(self, key: str, allowed: bool, held: int, retry_after: float) -> LimitResult:
        """A result that reports the bucket, not the lease: as the server
        saw it at this process' last reservation, moved on by the time
        since, with the tokens still held here given back. For one process
        that is the plain Redis backend's answer (within a token's rounding);
        with several, the tokens the others took since that reservation are
        not seen (docs/batched.md). Without a reservation of this process
        (a shared lease of another one), the lease's own numbers."""
        lease = self.leases.get(key)
        if lease is None or lease.ahead < 0:
            return LimitResult(allowed, held, retry_after, 0.0, self.capacity)
        return self.layout.since(allowed, lease.ahead, self.now() - lease.ahead_at, max(held, 0), retry_after)

    def cached_denial(self, key: str, cost: int) -> Optional[LimitResult]:
        """Redis' last denial of ``key`` while it holds, for a check that
        needs as many tokens as the denied one did: no call needed. (Any
        other need asks Redis, whose reply says exactly when it fits.)"""
        entry = self.denied.get(key)
        if entry is None:
            return None
        now = self.now()
        if entry[0] <= now:
            self.denied.pop(key, None)
            return None
        held = max(self.table.held(key), 0)
        if cost - held != entry[2]:
            return None
        self.counts["denial_cache_hits"] += 1
        lease = self.leases.get(key)
        if lease is not None:
            lease.missed += cost
        return self.bucket(key, False, held, (entry[1] - now) / _NS)

    def needed(self, key: str, cost: int) -> int:
        """Tokens a check of ``cost`` needs from Redis beyond those held."""
        return max(cost - max(self.table.held(key), 0), 1)

    def lease(self, key: str) -> Lease:
        lease = self.leases.get(key)
        if lease is None:
            lease = self.leases[key] = Lease(self._lock(), self.now() + self._lifetime_ns)
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
        if lease.streak:
            # Back from a denial window: ask for what accrued meanwhile (or
            # a lone node admits one token per window), but no more than
            # this node was denied in it (or idle nodes sit on tokens).
            accrued = math.ceil(lease.window / _NS / self.config.emission_interval - 1e-9)
            return max(min(accrued, lease.missed + cost, self.max_lease), cost)
        elapsed = (self.now() - lease.at) / _NS
        return lease_size(lease.held_at - held, elapsed, self.refresh, lease.size,
                          self.max_lease, cost - held if held > 0 else cost)

    def granted(self, key: str, lease: Lease, asked: int, needed: int, reply: Reserved, sent: int,
                claim: int = 0) -> int:
        """Credits a reserve reply (to a request sent at clock time ``sent``)
        to the table; the tokens that did not fit (to give back at once).
        ``claim``: the tokens of the check that asked, taken out of the grant
        when it holds them (claimed(reply, claim) says so) instead of being
        credited and then spent: in between, another thread (or guardian
        serve's native data plane) could spend them, and the check that
        reserved them would be denied."""
        got = reply.granted
        counts = self.counts
        lease.missed = 0
        counts["reservations"] += 1
        now = self.now()
        lease.expires = now + self._lifetime_ns
        # The server read its clock after ``sent``: counting time from then
        # errs by at most the round trip, towards a shorter reset_after.
        lease.ahead, lease.ahead_at = reply.ahead_ticks, sent
        if got == 0:
            counts["redis_denials"] += 1
            # Cached until Redis' retry_after, but at most a lease lifetime:
            # a flood of denied keys leaves no entry for long. The next
            # token goes to one of the nodes asking: each denial in a row
            # doubles how long this one waits (else N nodes ask N times per
            # token), never past half the bucket's fill time (it cannot
            # overflow while all wait) or ``refresh``, never below Redis'
            # retry_after (docs/scaling.md).
            wait = reply.retry_ticks * _NS // self.tps
            lease.streak = min(lease.streak + 1, 16)
            cap = int(min(self.refresh, self.capacity * self.config.emission_interval / 2) * _NS)
            lease.window = max(wait, min(wait << lease.streak, cap))
            self.denied[key] = (min(now + lease.window, now + self._lifetime_ns), now + wait, needed)
            self._tell(key, lease)
            return 0
        lease.streak = 0
        self.denied.pop(key, None)
        counts["reserved_tokens"] += got
        table = self.table
        taken = claim if self.claimed(reply, claim) else 0
        fit = got - taken
        if fit and not table.credit(key, fit):  # held + got > C: another process refilled too
            fit = min(got - taken, self.capacity - table.held(key))
            if fit <= 0 or not table.credit(key, fit):
                fit = 0
        lease.size = asked
        lease.low = asked // 2
        if lease.low > self.low_cap:
            self._set_low_cap(lease.low)
        lease.held_at = table.held(key) + taken  # the claimed tokens count as spent since (demand)
        lease.at = now
        lease.reservations.append([reply.now_us, reply.ahead_ticks, fit])
        del lease.reservations[:-_KEEP]
        self._tell(key, lease)  # after the credit: a hit elsewhere sees the new lead with the new tokens
        return got - taken - fit

    @staticmethod
    def claimed(reply: Reserved, claim: int) -> bool:
        """Whether granted() took a check's ``claim`` tokens out of ``reply``."""
        return 0 < claim <= reply.granted

    def decided(self, key: str, cost: int, left: int, reply: Reserved) -> LimitResult:
        """The answer after a reservation: a hit when the tokens are now
        held, else Redis' denial."""
        if left >= 0:
            return self.hit(key, left)
        # Redis' retry is exact for the tokens this check needed beyond the
        # held ones (reserve.lua's "needed"); granted but not spendable (a
        # full shared table, another process was faster): try again now.
        retry = reply.retry_ticks / self.tps if reply.granted == 0 else 0.0
        return self.bucket(key, False, max(self.table.held(key), 0), retry)

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
        a refill in flight), and cached denials past their end."""
        now = self.now()
        out: Returns = []
        # Checks add entries meanwhile (other threads): copy before iterating,
        # and pop, never del.
        for key, lease in _snapshot(self.leases):
            if lease.expires <= now and not lease.busy and not lease.lock.locked():
                if self.leases.pop(key, None) is lease:
                    self._forgot(key)
                    self.counts["expired_leases"] += 1
                    self.take_back(key, lease, out)
        for key, (until, _, _) in _snapshot(self.denied):
            if until <= now:
                self.denied.pop(key, None)
        self._set_low_cap(max((lease.low for _, lease in _snapshot(self.leases)), default=0))
        return out

    def everything(self) -> Returns:
        """Every lease, drained and forgotten (close, exit)."""
        out: Returns = []
        for key, lease in _snapshot(self.leases):
            if self.leases.pop(key, None) is lease:
                self._forgot(key)
                self.take_back(key, lease, out)
        return out

    def forget(self, key: str) -> None:
        """After reset: the bucket is full, held tokens are void."""
        self.table.drain(key)
        if self.leases.pop(key, None) is not None:
            self._forgot(key)
        self.denied.pop(key, None)

    def after_fork(self) -> None:
        """A forked child must not serve its parent's private leases twice."""
        if self.shared is None:
            self.table = LeaseTable(*self._args)
        self.leases = {}
        self.denied = {}
        self.low_cap = 0
        self.observer = None  # the parent's (its data plane is not the child's)

    def stats(self) -> Dict[str, int]:
        return dict(self.counts, leases=len(self.leases), denials=len(self.denied))


class BatchedCommon:
    """What BatchedRedisBackend and its asyncio twin share: arguments, the
    wrapped Redis backend and the book. The twins are one source
    (batched_async.py; batched.py is generated from it) and differ only in
    their Redis backend, lock and refiller."""

    can_fail = True
    #: Every call talks to Redis (a synchronous one would block an event loop).
    does_io = True
    #: The Redis backend class wrapped (sync or asyncio); set by subclasses.
    redis_class: Any
    #: What guards one key's reservations (threading.Lock or asyncio.Lock).
    lock_class: Any
    #: What refills leases in the background (a thread or a task).
    refiller_class: Any

    def __init__(
        self,
        config: Union[TokenBucketConfig, str],
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
        limit_in_key: bool = True,
        clock: Optional[Clock] = None,
        close_timeout: float = 2.0,
        **client_options: Any,
    ) -> None:
        limit = as_limits(config)  # a config or its notation ("100/minute")
        if isinstance(limit, Limits):
            # A lease is tokens of one bucket served locally: several limits
            # would need a lease per limit taken all or nothing, which leases
            # cannot give without a round trip per check.
            raise MisuseError(
                f"{type(self).__name__} takes one limit, got {limit!r}: for several limits on "
                f"one key use RedisBackend / AsyncRedisBackend (one script per check, all or nothing), "
                f"or one batched backend per limit if each may be checked on its own")
        config = limit
        if isinstance(close_timeout, bool) or not isinstance(close_timeout, (int, float)) \
                or not 0 <= close_timeout < math.inf:
            raise ConfigurationError(f"close_timeout must be seconds >= 0, got {close_timeout!r}")
        #: Seconds close() and the at-exit return may spend giving leased
        #: tokens back (plus at most one ``timeout`` for a call in flight);
        #: what is left then is abandoned: it only under-admits until the
        #: buckets refill.
        self.close_timeout = float(close_timeout)
        self.redis = self.redis_class(config, url, client=client, prefix=prefix,
                                      connect_timeout=connect_timeout, timeout=timeout,
                                      limit_in_key=limit_in_key, **client_options)
        self.config = config
        self.book = LeaseBook(config, shared=shared, slots=slots, lease_lifetime=lease_lifetime,
                              refresh_interval=refresh_interval, max_share=max_share,
                              lock=self.lock_class, layout=self.redis.layout, clock=clock)
        self._low_cap = 0  # the book's low_cap, copied for the hot path
        self._capacity = config.capacity  # likewise, for results of local hits
        self._spend = self.book.table.spend
        # For results of local hits (BatchedRedisBackend.take inlines book.hit).
        self._leases, self._now = self.book.leases, self.book.now
        self._since: Callable[..., LimitResult] = self.redis.layout.since
        #: Seconds between expiry scans of the background worker.
        self.scan_interval = min(lease_lifetime / 4, 0.5)
        #: To give leases back at interpreter exit over a fresh connection.
        self._url = url
        self._timeouts = {"connect_timeout": connect_timeout, "timeout": timeout, "limit_in_key": limit_in_key}
        self._closed = False
        self._refiller = self.refiller_class(self)
        live.add(self)

    def returned(self, tokens: int) -> None:
        self.book.counts["returned_tokens"] += tokens

    def close_deadline(self) -> float:
        """When close() stops giving tokens back (time.monotonic()); at
        interpreter exit, one deadline shared by every backend."""
        return min(time.monotonic() + self.close_timeout, _exit_deadline[0])

    def abandon(self, returns: Returns) -> None:
        """Tokens close() will not give back (past its deadline, or Redis
        stopped answering): counted as dropped."""
        self.book.counts["dropped_tokens"] += sum(n for _, n, _ in returns)

    @staticmethod
    def hopeless(exc: BaseException) -> bool:
        """A failed return after which the others would fail the same way,
        each after a timeout: Redis does not answer."""
        return isinstance(exc, (BackendTimeoutError, BackendUnavailableError))

    def stats(self) -> Dict[str, int]:
        """Counters: local_hits, reservations (Redis calls that reserved),
        reserved_tokens, redis_denials, denial_cache_hits, returned_tokens,
        dropped_tokens (drained but not returnable), expired_leases,
        refill_errors (background refills that failed), leases (live),
        denials (cached)."""
        return dict(self.book.stats(), local_hits=self.book.table.spends)

    def after_fork(self) -> None:
        """A forked child starts with no leases of its own and no worker."""
        self.book.after_fork()
        self._spend = self.book.table.spend
        self._leases = self.book.leases
        self._low_cap = 0
        self._refiller.after_fork()

    def __repr__(self) -> str:
        where = f"shared={self.book.shared!r}" if self.book.shared else "local"
        return f"{type(self).__name__}({self.config!r}, prefix={self.redis.prefix!r}, {where})"


#: Every batched backend alive, sync or asyncio: their leases go back to
#: Redis at interpreter exit (not after SIGKILL: those tokens come back as
#: the bucket refills; docs/batched.md).
live: "weakref.WeakSet[BatchedCommon]" = weakref.WeakSet()


#: At interpreter exit: when every backend stops giving tokens back.
_exit_deadline = [math.inf]


@atexit.register
def _close_all_at_exit() -> None:
    backends = list(live)
    _exit_deadline[0] = time.monotonic() + max((b.close_timeout for b in backends), default=0.0)
    for backend in backends:
        try:
            backend._refiller.close_at_exit(backend)
        except Exception:  # pragma: no cover - exit must not fail on one backend
            pass


def _after_fork_in_child() -> None:
    for backend in list(live):
        backend.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
