"""The pure-Python twin of ``guardian._core``: same table layout, same hash,
same probing and the same GCRA arithmetic, so the two give identical results
step by step (a hypothesis state machine checks this). It is the fallback
without a compiler and the executable specification of the C core.

Where the C core updates slots with compare-and-swap, this twin holds one
lock per operation: a ``threading.Lock`` inside the process and, for shared
tables, an ``flock`` on the segment across processes.
"""

from __future__ import annotations

import copy
import fcntl
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import _region
from ._args import check_cost, check_key
from ._errors import ArgumentTypeError, BackendTimeoutError
from ._errors import InvalidArgumentError as _InvalidArgument

__all__ = ["Table", "LimitResult", "BucketReading", "unlink", "take_all", "take_all_result", "try_take_all", "siphash13",
           "MAX_KEY_BYTES"]

MAX_KEY_BYTES = _region.MAX_KEY_BYTES

_M64 = (1 << 64) - 1
_TOMB = 2  # fingerprint of a repaired slot; real fingerprints are odd
_PROBES = _region.PROBE_WINDOW
#: See STUCK_COOLDOWN_NS in _core.pyx.
_STUCK_COOLDOWN_S = 1.0

Result = Tuple[bool, int, float, float]


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash13(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 of ``data`` under the 128-bit key (k0, k1)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    n = len(data)
    end = n - (n % 8)

    def sipround() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)  # noqa: E702
        v2 = (v2 + v3) & _M64; v3 = _rotl(v3, 16); v3 ^= v2  # noqa: E702
        v0 = (v0 + v3) & _M64; v3 = _rotl(v3, 21); v3 ^= v0  # noqa: E702
        v2 = (v2 + v1) & _M64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)  # noqa: E702

    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        sipround()
        v0 ^= m
    b = (n << 56) & _M64 | int.from_bytes(data[end:], "little")
    v3 ^= b
    sipround()
    v0 ^= b
    v2 ^= 0xFF
    sipround()
    sipround()
    sipround()
    return v0 ^ v1 ^ v2 ^ v3


class LimitResult:
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
        if not isinstance(other, LimitResult):
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


#: See EXACT in _core.pyx.
_EXACT = 1 << 53


class BucketReading:
    """A Redis bucket (one limit in the scripts' ticks: ``P`` ticks a token,
    burst ``tau`` ticks, ``ticks_per_second``) read the way the batched
    backends report it between reservations: see ``since``."""

    __slots__ = ("P", "tau", "ticks_per_second", "capacity")

    def __init__(self, P: int, tau: int, ticks_per_second: int, capacity: int) -> None:
        if not (1 <= P < _EXACT and 0 <= tau < _EXACT and 1 <= ticks_per_second < _EXACT and capacity >= 1):
            raise _InvalidArgument(
                f"BucketReading needs 1 <= P, ticks_per_second < 2^53, 0 <= tau < 2^53 and capacity >= 1, "
                f"got P={P}, tau={tau}, ticks_per_second={ticks_per_second}, capacity={capacity}")
        self.P, self.tau, self.ticks_per_second, self.capacity = P, tau, ticks_per_second, capacity

    def since(self, allowed: bool, ahead: int, elapsed_ns: int, held: int, retry_after: float) -> "LimitResult":
        """The result for a bucket whose TAT lay ``ahead`` ticks ahead of
        the server's clock ``elapsed_ns`` ago, with ``held`` of its taken
        tokens (leased here, unspent) given back: remaining and reset_after
        as a take reply read now would say (``retry_after`` as given)."""
        if not -_EXACT < ahead < _EXACT:
            raise _InvalidArgument(f"ahead must be within +-2^53 ticks, got {ahead}")
        P, tps = self.P, self.ticks_per_second
        # _since.h: a clock that went back and a negative count read as 0
        a = ahead - max(held, 0) * P - max(elapsed_ns, 0) * tps // 1_000_000_000
        if a < 0:
            a = 0
        return LimitResult(bool(allowed), (self.tau - a) // P, float(retry_after), a / tps, self.capacity)

    def __repr__(self) -> str:
        return (f"BucketReading(P={self.P}, tau={self.tau}, ticks_per_second={self.ticks_per_second}, "
                f"capacity={self.capacity})")


class Table:
    """A GCRA slot table; see guardian._core.Table for the contract."""

    def __init__(
        self,
        capacity: int,
        emission_ticks: int,
        ticks_per_ns: int,
        slots: Optional[int] = None,
        name: Optional[str] = None,
        clock: Optional[Callable[[], int]] = None,
        seed: Optional[bytes] = None,
    ) -> None:
        self._clock = clock if clock is not None else time.monotonic_ns
        nslots = _region.round_slots(slots if slots is not None else _region.DEFAULT_SLOTS)
        geo = _region.Geometry(capacity, emission_ticks, ticks_per_ns, nslots, _region.IMPL_PY)
        epoch = self._clock()
        self._lock = threading.Lock()
        self._fd = -1
        self.name = name
        if name is None:
            self._buf: Any = _region.local_region(geo, epoch, seed)
        else:
            self._buf = _region.shared_region(name, geo, epoch, slots is None, seed)
            self._fd = _region.lock_fd(name)
        words = memoryview(self._buf).cast("q")
        self._words = words
        header = [(w + (1 << 64)) & _M64 for w in words[: _region.HEADER_WORDS]]
        self.slots = header[_region.W_NSLOTS]
        self._mask = self.slots - 1
        self._k0, self._k1 = header[_region.W_SEED0], header[_region.W_SEED1]
        self._epoch = words[_region.W_EPOCH]
        self.capacity = capacity
        self._P = emission_ticks
        self._Q = ticks_per_ns
        self._tau = capacity * emission_ticks
        self._scale = float(ticks_per_ns) * 1e9
        self._horizon = (1 << 62) // ticks_per_ns
        self._base = _region.SLOTS_OFFSET // 8
        self._window = min(_PROBES, self.slots)
        #: Successful spends made through this Table object (not shared).
        self.spends = 0
        #: Takes decided through this Table object and its views (allowed, denied).
        self._counts = [0, 0]
        #: None: a stuck lock raises; a ``deciding`` view's answer otherwise.
        self.on_stuck: Optional[bool] = None
        self._stuck = 0
        self._owner = True  # a view does not close the table's descriptor
        self._report: Optional[Callable[[BackendTimeoutError], Any]] = None
        self._stuck_until = 0.0  # see _wait_for_table

    # --- locking and time -------------------------------------------------

    def _enter(self) -> None:
        self._lock.acquire()
        if self._fd >= 0:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._wait_for_table()

    def _wait_for_table(self) -> None:
        """Another process holds the table's lock. It only ever holds it for
        one operation, so one holding it past LOCK_WAIT_S is not running
        (SIGSTOP, a debugger): give up, the failure policy decides. For
        _STUCK_COOLDOWN_S after that, give up at once (see _core._lock_stripe)."""
        now = time.monotonic()
        deadline = now + _region.LOCK_WAIT_S if now >= self._stuck_until else now
        while time.monotonic() < deadline:
            time.sleep(0.0005)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._stuck_until = 0.0  # it let go: wait for it as for anyone
                return
            except BlockingIOError:
                continue
        if deadline > now:
            self._stuck_until = time.monotonic() + _STUCK_COOLDOWN_S
        self._lock.release()
        raise BackendTimeoutError(
            f"shared table {self.name!r}: its lock has been held by another process for more "
            f"than {_region.LOCK_WAIT_S:g}s (a stopped process); this check was not decided and "
            "changed nothing. Resume or end that process, or unlink the table"
        )

    def _leave(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    def _now(self) -> int:
        ns = self._clock() - self._epoch
        if ns < 0:
            ns = 0  # an injected clock may start before the epoch; time never runs back
        if ns > self._horizon:
            raise OverflowError("the table is older than its tick horizon; recreate it")
        return ns * self._Q

    def _hash(self, data: bytes) -> Tuple[int, int]:
        h = siphash13(self._k0, self._k1, data)
        fp = h | 1
        return fp - (1 << 64) if fp >= 1 << 63 else fp, h & self._mask

    # --- probing ----------------------------------------------------------

    def _find(self, fp: int, home: int) -> int:
        w = self._words
        for i in range(self._window):
            s = self._base + 2 * ((home + i) & self._mask)
            f = w[s]
            if f == fp:
                return s
            if f == 0 and w[s + 1] == 0:
                return -1
        return -1

    def _claim(self, fp: int, home: int, now: int) -> Tuple[int, int]:
        """The slot to claim: the first free one (never used, or a
        tombstone) up to the first never-used slot, else the first expired
        one; or (-1, shortest wait). Free first, so that an absent key does
        not evict a present one."""
        w = self._words
        wait = free = expired = -1
        for i in range(self._window):
            s = self._base + 2 * ((home + i) & self._mask)
            f, t = w[s], w[s + 1]
            if t <= now:
                if f == 0 or f == _TOMB:
                    if free < 0:
                        free = s
                    if f == 0:
                        break
                elif expired < 0:
                    expired = s
            elif wait < 0 or t - now < wait:
                wait = t - now
        if free >= 0:
            return free, 0
        if expired >= 0:
            return expired, 0
        return -1, wait

    # --- GCRA ---------------------------------------------------------------

    def _take_locked(self, fp: int, home: int, cost: int, now: int) -> Tuple[bool, int, int, int]:
        r = self._decide(fp, home, cost, now)
        self._counts[0 if r[0] else 1] += 1
        return r

    def _decide(self, fp: int, home: int, cost: int, now: int) -> Tuple[bool, int, int, int]:
        return self._decide_at(fp, home, cost, now)[0]

    def _decide_at(self, fp: int, home: int, cost: int, now: int) -> Tuple[Tuple[bool, int, int, int], int, int]:
        """The decision, and for an admission the slot and its TAT before
        (what take_all restores to undo it)."""
        w = self._words
        s = self._find(fp, home)
        if s < 0:
            s, wait = self._claim(fp, home, now)
            if s < 0:
                self._count(_region.W_FULL)
                return (False, 0, wait, wait), -1, 0
            if w[s] != 0:
                self._count(_region.W_RECLAIMS)
            w[s] = fp
            w[s + 1] = 0
        before = w[s + 1]
        r = self._judge(before, cost, now)
        if r[0]:
            w[s + 1] = now + r[3]
        return r, s, before

    def _judge(self, t: int, cost: int, now: int) -> Tuple[bool, int, int, int]:
        """The GCRA rule for a bucket whose TAT is ``t``."""
        tat = max(t, now)
        new = tat + cost * self._P
        if new - now <= self._tau:
            return True, (self._tau - (new - now)) // self._P, 0, new - now
        return False, (self._tau - (tat - now)) // self._P, new - now - self._tau, tat - now

    def _peek(self, fp: int, home: int, cost: int, now: int) -> Tuple[bool, int, int, int]:
        """``_decide`` without the write (an absent key is a full bucket,
        unless its window has no slot for it)."""
        s = self._find(fp, home)
        if s >= 0:
            return self._judge(self._words[s + 1], cost, now)
        free, wait = self._claim(fp, home, now)
        if free < 0:
            return False, 0, wait, wait
        return self._judge(0, cost, now)

    def _count(self, index: int) -> None:
        self._words[index] = (self._words[index] + 1 + (1 << 63)) % (1 << 64) - (1 << 63)

    def _result(self, r: Tuple[bool, int, int, int]) -> Result:
        return r[0], r[1], float(r[2]) / self._scale, float(r[3]) / self._scale

    def _enter_take(self, n: int) -> bool:
        """Takes the locks for ``n`` takes: True; False (counted) when a
        ``deciding`` view answers them by its decision instead of raising."""
        try:
            self._enter()
        except BackendTimeoutError as exc:
            if self.on_stuck is None:
                raise
            self._stuck += n
            if self._report is not None:
                for _ in range(n):
                    self._report(exc)
            return False
        return True

    def _stuck_answer(self) -> Result:
        return bool(self.on_stuck), 0, 0.0, 0.0

    def deciding(self, on_stuck: bool, report: Optional[Callable[[BackendTimeoutError], Any]] = None) -> "Table":
        """A view whose takes answer ``on_stuck`` instead of raising
        BackendTimeoutError; see guardian._core.Table.deciding."""
        if not isinstance(on_stuck, bool):
            raise ArgumentTypeError(f"on_stuck must be True or False, got {type(on_stuck).__name__}")
        view = copy.copy(self)  # shares the words, the locks and the counts
        view.on_stuck, view._stuck, view._owner, view._report = on_stuck, 0, False, report
        return view

    def try_acquire(self, key: str, cost: int = 1) -> bool:
        """Take ``cost`` tokens if the bucket holds them; True when taken."""
        return self.check(key, cost)[0]

    def check(self, key: str, cost: int = 1) -> Result:
        """(allowed, remaining, retry_after_s, reset_after_s) for one take."""
        fp, home = self._hash(check_key(key))
        cost = check_cost(cost, self.capacity)
        now = self._now()
        if not self._enter_take(1):
            return self._stuck_answer()
        try:
            return self._result(self._take_locked(fp, home, cost, now))
        finally:
            self._leave()

    def check_result(self, key: str, cost: int = 1) -> LimitResult:
        """The same take as ``check``, answered as a LimitResult."""
        return LimitResult(*self.check(key, cost), self.capacity)

    def check_many(self, keys: Iterable[str], cost: int = 1) -> List[Result]:
        """One take per key, all decided at the same instant."""
        hashed = [self._hash(check_key(k)) for k in keys]
        cost = check_cost(cost, self.capacity)
        now = self._now()
        if not self._enter_take(len(hashed)):
            return [self._stuck_answer() for _ in hashed]
        try:
            return [self._result(self._take_locked(fp, home, cost, now)) for fp, home in hashed]
        finally:
            self._leave()

    def peek(self, key: str, cost: int = 1) -> Result:
        """What ``check(key, cost)`` would answer now, changing nothing;
        ``cost`` may be 0: the bucket as it is."""
        fp, home = self._hash(check_key(key))
        cost = check_cost(cost, self.capacity, 0)
        now = self._now()
        self._enter()
        try:
            return self._result(self._peek(fp, home, cost, now))
        finally:
            self._leave()

    def usage(self, key: str) -> int:
        """Tokens in use: capacity minus the tokens available now."""
        fp, home = self._hash(check_key(key))
        now = self._now()
        self._enter()
        try:
            s = self._find(fp, home)
            if s < 0:
                return 0
            ahead = max(self._words[s + 1] - now, 0)
            return self.capacity - (self._tau - ahead) // self._P
        finally:
            self._leave()

    def reset(self, key: str) -> None:
        """Refill the key's bucket."""
        fp, home = self._hash(check_key(key))
        self._enter()
        try:
            s = self._find(fp, home)
            if s >= 0:
                self._words[s + 1] = 0
        finally:
            self._leave()

    # --- leases (see _core.pyx): a slot holds ceil((TAT - now) / T) tokens --

    def spend(self, key: str, cost: int = 1) -> int:
        """Take ``cost`` held tokens: the tokens left, or -1 (nothing taken)
        when the slot holds fewer. Never inserts the key."""
        fp, home = self._hash(check_key(key))
        cost = check_cost(cost, self.capacity)
        now = self._now()
        self._enter()
        try:
            s = self._find(fp, home)
            if s < 0 or self._words[s + 1] - now <= (cost - 1) * self._P:
                return -1
            new = self._words[s + 1] - cost * self._P
            self._words[s + 1] = new if new > now else 0
            self.spends += 1
            return -(-(new - now) // self._P) if new > now else 0
        finally:
            self._leave()

    def drain(self, key: str) -> int:
        """Take every held token of ``key`` at once; how many there were."""
        fp, home = self._hash(check_key(key))
        now = self._now()
        self._enter()
        try:
            s = self._find(fp, home)
            if s < 0 or self._words[s + 1] <= now:
                return 0
            held = -(-(self._words[s + 1] - now) // self._P)
            self._words[s + 1] = 0
            return held
        finally:
            self._leave()

    def stats(self) -> Dict[str, int]:
        """Table counters: ``full`` and ``reclaims`` are the table's (shared);
        ``allowed`` and ``denied`` count takes through this Table object."""
        return {
            "slots": self.slots,
            "full": self._words[_region.W_FULL] & _M64,
            "reclaims": self._words[_region.W_RECLAIMS] & _M64,
            "allowed": self._counts[0],
            "denied": self._counts[1],
            "stuck": self._stuck,
        }

    def close(self) -> None:
        """Detach (the shared segment stays until unlink)."""
        if self._fd >= 0 and self._owner:
            os.close(self._fd)
            self._fd = -1


unlink = _region.unlink


# --- several limits on one key, all or nothing (see _core.take_all) ----------

_MAX_TABLES = 8


def _take_all(tables: Tuple[Table, ...], key: str, cost: int) -> Tuple[int, List[Tuple[bool, int, int, int]]]:
    if not isinstance(tables, tuple):
        raise TypeError(f"tables must be a tuple, got {type(tables).__name__}")
    if not 1 <= len(tables) <= _MAX_TABLES:
        raise _InvalidArgument(f"take_all needs 1 to {_MAX_TABLES} tables, got {len(tables)}")
    for t in tables:
        if not isinstance(t, Table):
            raise TypeError(f"take_all needs Table objects, got {type(t).__name__}")
    data = check_key(key)
    prepared = [(t, t._hash(data), check_cost(cost, t.capacity), t._now()) for t in tables]
    out: List[Tuple[bool, int, int, int]] = []
    undo: List[Tuple[int, int, int]] = []
    for i, (t, (fp, home), c, now) in enumerate(prepared):
        t._enter()
        try:
            r, s, before = t._decide_at(fp, home, c, now)
        finally:
            t._leave()
        if r[0]:
            out.append(r)
            undo.append((s, before, now + r[3]))
            continue
        for (u, (fpu, _), cu, _), (slot, was, wrote) in zip(prepared, undo):
            later = u._now()
            u._enter()
            try:
                w, back = u._words, cu * u._P
                if w[slot + 1] == wrote:  # nothing wrote it since: exactly as before
                    w[slot + 1] = was
                elif was >= later and w[slot] == fpu and w[slot + 1] - back >= later:
                    w[slot + 1] -= back  # later takes started from our TAT (see _core._undo)
            finally:
                u._leave()
        answers: List[Tuple[bool, int, int, int]] = []
        for j, (u, (fpj, homej), cj, nowj) in enumerate(prepared):
            if j == i:
                answers.append(r)
                continue
            u._enter()
            try:
                answers.append(u._peek(fpj, homej, cj, nowj))
            finally:
                u._leave()
        waits = [a[2] / t._scale if not a[0] else -1.0 for a, t in zip(answers, tables)]
        worst = waits.index(max(waits))  # the first of the longest waits decides when to retry
        tables[worst]._counts[1] += 1
        return worst, answers
    for t, *_ in prepared:
        t._counts[0] += 1
    return -1, out


def take_all(tables: Tuple[Table, ...], key: str, cost: int = 1) -> Tuple[int, List[Result]]:
    """Several limits on one key, all or nothing; see guardian._core.take_all."""
    worst, decided = _take_all(tables, key, cost)
    return worst, [t._result(r) for t, r in zip(tables, decided)]


def take_all_result(tables: Tuple[Table, ...], key: str, cost: int = 1) -> LimitResult:
    """``take_all`` answered as one LimitResult; see guardian._core.take_all_result."""
    worst, answers = take_all(tables, key, cost)
    fewest = min(a[1] for a in answers)
    speaker = [a[1] for a in answers].index(fewest)
    longest = max(0.0, *(a[3] for a in answers))
    if worst < 0:
        return LimitResult(True, fewest, 0.0, longest, tables[speaker].capacity)
    return LimitResult(False, fewest, answers[worst][2], longest, tables[worst].capacity)


def try_take_all(tables: Tuple[Table, ...], key: str, cost: int = 1) -> bool:
    """``take_all`` answered as one bool: True when every table admitted."""
    return _take_all(tables, key, cost)[0] < 0
