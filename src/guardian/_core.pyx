# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""guardian's GCRA slot table in C: one {fingerprint, TAT} slot per key,
updated with compare-and-swap, in process memory or in shared memory.

Slot protocol (ARCHITECTURE.md "The core"; proven by tests/integration):

* A taker reads fingerprint, TAT, fingerprint. It commits an admission with
  one CAS on the TAT. A denial writes nothing.
* A slot changes owner only while its TAT holds a LOCKED sentinel
  (-1 - pid of the holder). The reclaimer CASes an expired TAT (<= now, a
  full bucket, indistinguishable from an absent key) to LOCKED, stores the
  new fingerprint, then CASes LOCKED to the new key's TAT, which is > now
  and so differs from any TAT a taker read before: no ABA.
* Inserts of one key are serialised by the stripe lock of the key's home
  slot (a pid in the header), so one key never lands in two slots. Lookups
  never take it; only a key that is absent (or met LOCKED) does.
* A holder that died is detected by pid; its stripe lock is taken over and
  its LOCKED slots are repaired to an expired tombstone. Every step a live
  holder takes on a slot is a CAS, so a wrong takeover cannot corrupt.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_Check
from cpython.long cimport PyLong_CheckExact
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int64_t, uint64_t, INT64_MAX
from libc.stdlib cimport malloc, free

from guardian import _region
from guardian._errors import ArgumentTypeError, BackendTimeoutError, InvalidArgumentError

cdef extern from "Python.h":
    # No except clause: NULL is checked by hand so that the hot path carries
    # no try/except (Cython saves and restores exception state for one).
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size)
    void PyErr_Clear()
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    bint PyBool_Check(object o)

cdef extern from "Python.h" nogil:
    # To release the GIL while waiting for a stripe lock, from code that is
    # also run without it (check_many's loop): only when it is held.
    ctypedef struct PyThreadState
    int PyGILState_Check()
    PyThreadState *PyEval_SaveThread()
    void PyEval_RestoreThread(PyThreadState *state)

cdef extern from "_atomic.h" nogil:
    int64_t g_load(const int64_t *p)
    uint64_t g_load_u(const uint64_t *p)
    void g_store(int64_t *p, int64_t v)
    void g_store_u(uint64_t *p, uint64_t v)
    bint g_cas(int64_t *p, int64_t expected, int64_t desired)
    bint g_cas_u(uint64_t *p, uint64_t expected, uint64_t desired)
    void g_count(uint64_t *p)
    void g_uncount(uint64_t *p)
    uint64_t g_read_count(const uint64_t *p)

cdef extern from "_siphash.h" nogil:
    uint64_t g_siphash13(uint64_t k0, uint64_t k1, const unsigned char *data, size_t n)

cdef extern from "_since.h" nogil:
    int g_bucket_read(int64_t ahead, int64_t held, int64_t P, int64_t tau, int64_t elapsed_ns,
                      int64_t ticks_per_second, int64_t *remaining, int64_t *lead)

cdef extern from "_table.h" nogil:
    enum: G_STRIPES
    enum: G_TOMB
    ctypedef struct g_header:
        uint64_t magic
        uint64_t nslots
        uint64_t seed0
        uint64_t seed1
        int64_t epoch_ns
        uint64_t full_count
        uint64_t reclaim_count
        uint64_t stripes[G_STRIPES]
    ctypedef struct g_slot:
        uint64_t fp
        int64_t tat
    int64_t g_monotonic_ns()
    int g_pid_alive(int64_t pid)
    int64_t g_self_pid
    int g_pid_setup()
    void g_pause(unsigned spins)
    void g_sleep_ns(int64_t ns)

if g_pid_setup() != 0:  # pragma: no cover
    raise ImportError("guardian: pthread_atfork failed")

__all__ = ["Table", "LimitResult", "BucketReading", "unlink", "take_all", "take_all_result", "try_take_all", "siphash13",
           "MAX_KEY_BYTES"]

MAX_KEY_BYTES = _region.MAX_KEY_BYTES
cdef enum:
    MAX_KEY = 4096
if MAX_KEY_BYTES != MAX_KEY:  # pragma: no cover
    raise ImportError("_core.pyx and _region.py disagree on MAX_KEY_BYTES")

# Waiting for a stripe lock: spins, then yields for LOCK_YIELD_NS, then
# sleeps of LOCK_SLEEP_NS until the table's lock_wait_ns.
cdef enum:
    LOCK_SPINS = 64
    LOCK_YIELD_NS = 1000000
    LOCK_SLEEP_NS = 50000
    # After a wait for a stripe lock ran out, waits for the same (live) holder
    # give up at once for this long; then one waits the bound again, as a
    # probe. One stuck process costs a check the bound about once a second
    # per stripe, not every time (what the limiter's breaker did before the
    # limiter bound ``deciding`` views). _pycore._STUCK_COOLDOWN_S likewise.
    STUCK_COOLDOWN_NS = 1000000000

# Outcomes of a slot lookup.
cdef enum:
    ABSENT = -1      # no slot holds the key
    CONTENDED = -2   # a LOCKED slot was met: resolve under the stripe lock
    INSERTED = -3    # the slow path placed the key and decided the take
    FULL = -4        # every slot in the key's window holds a live bucket
    STUCK = -5       # the stripe lock stayed held past the bound: undecided


cdef struct Decision:
    bint allowed
    int64_t remaining
    int64_t retry_ticks
    int64_t reset_ticks
    int64_t stuck  # 0, or the pid that held the key's stripe lock past the bound
    # An admission's write, so that take_all can undo it: the slot's TAT
    # went from ``before`` to ``after``.
    Py_ssize_t slot
    int64_t before, after


@cython.final
@cython.freelist(64)
cdef class LimitResult:
    """The decision for one check of ``cost`` tokens against a bucket.

    ``allowed``: whether the tokens were taken. ``remaining``: whole tokens
    left after this check. ``retry_after``: seconds until the same check
    would be allowed (0 when allowed). ``reset_after``: seconds until the
    bucket is full again. ``limit``: the bucket's capacity. A result is
    truthy when allowed.
    """

    cdef readonly bint allowed
    cdef readonly long long remaining
    cdef readonly double retry_after
    cdef readonly double reset_after
    cdef readonly long long limit

    def __init__(self, allowed, long long remaining, double retry_after, double reset_after,
                 long long limit):
        self.allowed = bool(allowed)
        self.remaining = remaining
        self.retry_after = retry_after
        self.reset_after = reset_after
        self.limit = limit

    def is_allowed(self):
        return self.allowed

    def __bool__(self):
        return self.allowed

    def __eq__(self, other):
        if not isinstance(other, LimitResult):
            return NotImplemented
        cdef LimitResult o = <LimitResult>other
        return (self.allowed == o.allowed and self.remaining == o.remaining
                and self.retry_after == o.retry_after and self.reset_after == o.reset_after
                and self.limit == o.limit)

    __hash__ = None

    def __reduce__(self):
        return (LimitResult, (self.allowed, self.remaining, self.retry_after, self.reset_after,
                              self.limit))

    def __repr__(self):
        return (f"LimitResult(allowed={self.allowed}, remaining={self.remaining}, "
                f"retry_after={self.retry_after:.6f}, reset_after={self.reset_after:.6f}, "
                f"limit={self.limit})")


#: Bounds of BucketReading's integers: the Redis scripts' doubles hold every
#: integer below 2^53 (MAX_TAU_TICKS keeps the buckets there), and a double
#: division of two such integers is Python's int / int exactly.
cdef int64_t EXACT = 9007199254740992  # 2^53


@cython.final
cdef class BucketReading:
    """A Redis bucket (one limit in the scripts' ticks: ``P`` ticks a token,
    burst ``tau`` ticks, ``ticks_per_second``) read the way the batched
    backends report it between reservations: see ``since``."""

    cdef readonly int64_t P, tau, ticks_per_second, capacity

    def __init__(self, int64_t P, int64_t tau, int64_t ticks_per_second, int64_t capacity):
        if not (1 <= P < EXACT and 0 <= tau < EXACT and 1 <= ticks_per_second < EXACT and capacity >= 1):
            raise InvalidArgumentError(
                f"BucketReading needs 1 <= P, ticks_per_second < 2^53, 0 <= tau < 2^53 and capacity >= 1, "
                f"got P={P}, tau={tau}, ticks_per_second={ticks_per_second}, capacity={capacity}")
        self.P, self.tau, self.ticks_per_second, self.capacity = P, tau, ticks_per_second, capacity

    def since(self, allowed, int64_t ahead, int64_t elapsed_ns, int64_t held, double retry_after):
        """The result for a bucket whose TAT lay ``ahead`` ticks ahead of
        the server's clock ``elapsed_ns`` ago, with ``held`` of its taken
        tokens (leased here, unspent) given back: remaining and reset_after
        as a take reply read now would say (``retry_after`` as given)."""
        if not -EXACT < ahead < EXACT:
            raise InvalidArgumentError(f"ahead must be within +-2^53 ticks, got {ahead}")
        cdef int64_t remaining, a
        g_bucket_read(ahead, held, self.P, self.tau, elapsed_ns, self.ticks_per_second, &remaining, &a)
        return LimitResult(allowed, remaining, retry_after, <double>a / <double>self.ticks_per_second,
                           self.capacity)

    def __repr__(self):
        return (f"BucketReading(P={self.P}, tau={self.tau}, ticks_per_second={self.ticks_per_second}, "
                f"capacity={self.capacity})")


@cython.final
@cython.no_gc_clear  # the GC must not drop self.buf while self.view still exports it
cdef class Table:
    """A GCRA slot table for one limit (capacity C, emission interval
    T = P/Q ns stored as P ticks of 1/Q ns).

    ``Table(capacity, emission_ticks, ticks_per_ns, slots=None, name=None,
    clock=None, seed=None)``: ``name`` creates or attaches the named shared
    table; ``clock`` (a callable returning integer nanoseconds) replaces the
    monotonic clock for tests; ``seed`` (16 bytes) fixes the hash key.
    """

    cdef g_header *hdr
    cdef g_slot *slots_
    cdef uint64_t mask, k0, k1
    cdef int64_t epoch, P, Q, tau, horizon
    cdef double scale
    cdef unsigned window
    cdef int64_t lock_wait_ns
    cdef object clock
    cdef object buf
    cdef Py_buffer view
    cdef bint has_view
    cdef uint64_t spends_  # successful spends by this process (atomic: free-threading)
    # Takes decided through this object. Per object, not in the shared header:
    # workers sharing a table would otherwise bounce one cache line per check.
    cdef uint64_t allowed_, denied_
    # Where this object counts its takes: its own counters, or for a view
    # (``deciding``) those of the table it views, kept alive by ``parent``.
    cdef uint64_t *allowed_p
    cdef uint64_t *denied_p
    cdef Table parent
    # What a take answers when a stripe lock stays stuck: -1 raise
    # BackendTimeoutError, else that decision (0 deny, 1 allow), counted in stuck_.
    cdef int on_stuck_
    cdef uint64_t stuck_
    cdef object report  # None, or called with the BackendTimeoutError a view did not raise
    # Per stripe: the holder that last kept the lock past the bound, and until
    # when a wait for that same holder gives up at once (see _lock_stripe).
    cdef int64_t stuck_holder[G_STRIPES]
    cdef int64_t stuck_until[G_STRIPES]
    cdef readonly int64_t capacity
    cdef readonly uint64_t slots
    cdef readonly object name

    def __cinit__(self):
        self.has_view = False
        self.spends_ = 0
        self.allowed_ = 0
        self.denied_ = 0
        self.allowed_p = &self.allowed_
        self.denied_p = &self.denied_
        self.on_stuck_ = -1
        self.stuck_ = 0

    def __init__(self, int64_t capacity, int64_t emission_ticks, int64_t ticks_per_ns,
                 slots=None, name=None, clock=None, seed=None):
        nslots = _region.round_slots(slots if slots is not None else _region.DEFAULT_SLOTS)
        geo = _region.Geometry(capacity, emission_ticks, ticks_per_ns, nslots, _region.IMPL_C)
        self.clock = clock
        epoch = clock() if clock is not None else g_monotonic_ns()
        if name is None:
            self.buf = _region.local_region(geo, epoch, seed)
        else:
            self.buf = _region.shared_region(name, geo, epoch, slots is None, seed)
        PyObject_GetBuffer(self.buf, &self.view, PyBUF_WRITABLE | PyBUF_SIMPLE)
        self.has_view = True
        self.hdr = <g_header *>self.view.buf
        cdef Py_ssize_t offset = _region.SLOTS_OFFSET
        self.slots_ = <g_slot *>(<char *>self.view.buf + offset)
        self.name = name
        self.slots = self.hdr.nslots
        self.mask = self.slots - 1
        self.k0 = self.hdr.seed0
        self.k1 = self.hdr.seed1
        self.epoch = self.hdr.epoch_ns
        self.capacity = capacity
        self.P = emission_ticks
        self.Q = ticks_per_ns
        self.tau = capacity * emission_ticks
        self.scale = <double>ticks_per_ns * 1e9
        self.horizon = (<int64_t>1 << 62) // ticks_per_ns
        self.window = min(_region.PROBE_WINDOW, self.slots)
        self.lock_wait_ns = <int64_t>(_region.LOCK_WAIT_S * 1e9)

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False

    # --- the boundary: arguments checked once, then C all the way --------

    cdef inline int64_t _now(self) except -1:
        cdef int64_t ns
        if self.clock is None:
            ns = g_monotonic_ns() - self.epoch
        else:
            ns = <int64_t>self.clock() - self.epoch
        if ns < 0:
            ns = 0  # an injected clock may start before the epoch
        if ns > self.horizon:
            raise OverflowError("the table is older than its tick horizon; recreate it")
        return ns * self.Q

    cdef inline int64_t _cost(self, object cost) except -1:
        cdef long long c
        cdef int overflow = 0
        if PyLong_CheckExact(cost):
            c = PyLong_AsLongLongAndOverflow(cost, &overflow)
            if overflow == 0 and 1 <= c <= self.capacity:
                return c
        return self._bad_cost(cost)

    cdef inline int64_t _peek_cost(self, object cost) except -1:
        """A peek may ask for 0 tokens: the bucket as it is."""
        cdef long long c
        cdef int overflow = 0
        if PyLong_CheckExact(cost):
            c = PyLong_AsLongLongAndOverflow(cost, &overflow)
            if overflow == 0 and 0 <= c <= self.capacity:
                return c
        return self._bad_cost(cost, 0)

    cdef int64_t _bad_cost(self, object cost, int64_t lowest=1) except -1:
        if PyBool_Check(cost) or not hasattr(cost, "__index__"):
            raise ArgumentTypeError(f"cost must be an int, got {type(cost).__name__}")
        c = cost.__index__()
        if c < lowest:
            raise InvalidArgumentError(f"cost must be at least {lowest}, got {c}")
        if c > self.capacity:
            raise InvalidArgumentError(
                f"cost {c} is above the bucket's capacity {self.capacity}; it could never be allowed")
        return c

    cdef inline uint64_t _hash(self, object key) except? 0:
        cdef Py_ssize_t n
        cdef const char *data
        if not PyUnicode_Check(key):
            raise ArgumentTypeError(f"key must be a str, got {type(key).__name__}")
        data = PyUnicode_AsUTF8AndSize(key, &n)
        if data == NULL:
            self._bad_text(key)
        if n == 0 or n > MAX_KEY:
            self._bad_key_length(n)
        return g_siphash13(self.k0, self.k1, <const unsigned char *>data, <size_t>n)

    cdef int _bad_text(self, str key) except -1:
        PyErr_Clear()
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"key is not valid Unicode text: {exc}") from exc
        raise InvalidArgumentError("key cannot be encoded as UTF-8")

    cdef int _bad_key_length(self, Py_ssize_t n) except -1:
        if n == 0:
            raise InvalidArgumentError("key must not be empty")
        raise InvalidArgumentError(f"key is {n} bytes in UTF-8, the maximum is {MAX_KEY}")

    cdef inline tuple _result(self, Decision *d):
        return (d.allowed, d.remaining, <double>d.retry_ticks / self.scale,
                <double>d.reset_ticks / self.scale)

    # --- the Python API -------------------------------------------------------

    def try_acquire(self, key, cost=1):
        """Take ``cost`` tokens if the bucket holds them; True when taken."""
        cdef Decision d
        cdef uint64_t h = self._hash(key)
        cdef int64_t c = self._cost(cost)
        self._take(h, c, self._now(), &d)
        if d.stuck:
            self._stuck_decision(d.stuck, &d)
        return d.allowed

    def check(self, key, cost=1):
        """(allowed, remaining, retry_after_s, reset_after_s) for one take."""
        cdef Decision d
        cdef uint64_t h = self._hash(key)
        cdef int64_t c = self._cost(cost)
        self._take(h, c, self._now(), &d)
        if d.stuck:
            self._stuck_decision(d.stuck, &d)
        return self._result(&d)

    def check_result(self, key, cost=1):
        """The same take as ``check``, answered as a LimitResult built in C."""
        cdef Decision d
        cdef uint64_t h = self._hash(key)
        cdef int64_t c = self._cost(cost)
        self._take(h, c, self._now(), &d)
        if d.stuck:
            self._stuck_decision(d.stuck, &d)
        cdef LimitResult r = LimitResult.__new__(LimitResult)
        r.allowed = d.allowed
        r.remaining = d.remaining
        r.retry_after = <double>d.retry_ticks / self.scale
        r.reset_after = <double>d.reset_ticks / self.scale
        r.limit = self.capacity
        return r

    @cython.boundscheck(False)
    @cython.wraparound(False)  # i runs over range(len(held)): held[i] needs no check
    def check_many(self, keys, cost=1):
        """One take per key, all decided at the same instant; the loop runs
        without the GIL. Every key is checked before any is taken."""
        cdef tuple held = tuple(keys)  # keeps the str objects alive meanwhile
        cdef Py_ssize_t n = len(held), i
        cdef int64_t c = self._cost(cost)
        cdef uint64_t *hashes = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        cdef Decision *out = <Decision *>malloc(max(n, 1) * sizeof(Decision))
        cdef int64_t now
        if hashes == NULL or out == NULL:
            free(hashes)
            free(out)
            raise MemoryError()
        try:
            for i in range(n):
                hashes[i] = self._hash(held[i])
            now = self._now()
            with nogil:
                for i in range(n):
                    self._take(hashes[i], c, now, &out[i])
            for i in range(n):
                if out[i].stuck:  # the keys before it were decided (and taken): fewer admissions, never more
                    self._stuck_decision(out[i].stuck, &out[i])
            return [self._result(&out[i]) for i in range(n)]
        finally:
            free(hashes)
            free(out)

    def peek(self, key, cost=1):
        """What ``check(key, cost)`` would answer now, changing nothing:
        (allowed, remaining, retry_after_s, reset_after_s). ``cost`` may be
        0: the bucket as it is (remaining now, seconds until full)."""
        cdef Decision d
        cdef uint64_t h = self._hash(key)
        cdef int64_t c = self._peek_cost(cost)
        self._peek(h, c, self._now(), &d)
        if d.stuck:
            self._stuck(d.stuck)
        return self._result(&d)

    def usage(self, key):
        """Tokens in use: capacity minus the tokens available now."""
        cdef uint64_t h = self._hash(key)
        cdef int64_t stuck = 0
        cdef int64_t used = self._usage(h, self._now(), &stuck)
        if stuck:
            self._stuck(stuck)
        return used

    cdef int64_t _usage(self, uint64_t h, int64_t now, int64_t *stuck) noexcept nogil:
        """Tokens in use; sets ``stuck`` to the holder of a lock that did
        not come free within the bound (the caller raises, with the GIL)."""
        cdef int64_t tat
        cdef Py_ssize_t s = self._locate(h, &tat)
        if s == CONTENDED:
            s = self._locate_locked(h, &tat)
            if s == STUCK:
                stuck[0] = tat
                return 0
        if s < 0 or tat <= now:
            return 0
        return self.capacity - (self.tau - (tat - now)) // self.P

    def reset(self, key):
        """Refill the key's bucket."""
        cdef uint64_t h = self._hash(key)
        cdef int64_t tat
        cdef Py_ssize_t s
        while True:
            s = self._locate(h, &tat)
            if s == CONTENDED:
                s = self._locate_locked(h, &tat)
            if s == STUCK:
                self._stuck(tat)
            if s < 0 or g_cas(&self.slots_[s].tat, tat, 0):
                return

    # --- leases: the batching backend's local tokens ------------------------
    # A lease table counts tokens *held*: a slot holds ceil((TAT - now) / T)
    # tokens, so an absent or expired slot holds none (and may be reclaimed)
    # and try_acquire(key, n) credits n. With T far longer than a lease lives,
    # the count does not decay (docs/batched.md).

    def spend(self, key, cost=1):
        """Take ``cost`` held tokens: the tokens left, or -1 (nothing taken)
        when the slot holds fewer. Never inserts the key."""
        cdef uint64_t h = self._hash(key)
        cdef int64_t c = self._cost(cost)
        cdef int64_t stuck = 0
        cdef Decision d
        cdef int64_t left = self._spend(h, c, self._now(), &stuck, &d)
        if stuck:
            self._stuck(stuck)
        return left

    @cython.cdivision(True)
    cdef int64_t _spend(self, uint64_t h, int64_t c, int64_t now, int64_t *stuck, Decision *d) noexcept nogil:
        """spend's slot step: the tokens left, or -1 (nothing taken).
        ``stuck``: set to the pid of a stripe lock's holder past the bound
        (then -1, undecided). ``d``: the spend's write (slot, TAT before and
        after), for an exact undo."""
        cdef int64_t t, new, left
        cdef Py_ssize_t s
        while True:
            s = self._locate(h, &t)
            if s == CONTENDED:
                s = self._locate_locked(h, &t)
                if s == STUCK:
                    stuck[0] = t
                    return -1
            if s < 0 or t - now <= (c - 1) * self.P:
                return -1
            new = t - c * self.P
            left = (new - now + self.P - 1) // self.P if new > now else 0
            if new <= now:
                new = 0  # empty: the slot may be reclaimed
            if g_cas(&self.slots_[s].tat, t, new):
                g_count(&self.spends_)
                d.slot, d.before, d.after = s, t, new
                return left

    @property
    def spends(self):
        """Successful spends made through this Table object (not shared)."""
        return g_read_count(&self.spends_)

    def drain(self, key):
        """Take every held token of ``key`` at once; how many there were."""
        cdef uint64_t h = self._hash(key)
        cdef int64_t now = self._now(), t
        cdef Py_ssize_t s
        while True:
            s = self._locate(h, &t)
            if s == CONTENDED:
                s = self._locate_locked(h, &t)
                if s == STUCK:
                    self._stuck(t)
            if s < 0 or t <= now:
                return 0
            if g_cas(&self.slots_[s].tat, t, 0):
                return (t - now + self.P - 1) // self.P

    def stats(self):
        """Table counters: ``full`` (denials because the window was full) and
        ``reclaims`` are the table's, shared by every process attached;
        ``allowed`` and ``denied`` count the takes (try_acquire, check,
        check_result, check_many) decided through this Table object."""
        return {
            "slots": self.slots,
            "full": g_read_count(&self.hdr.full_count),
            "reclaims": g_read_count(&self.hdr.reclaim_count),
            "allowed": g_read_count(self.allowed_p),
            "denied": g_read_count(self.denied_p),
            "stuck": g_read_count(&self.stuck_),
        }

    def deciding(self, on_stuck, report=None):
        """A view of this table whose takes (try_acquire, check,
        check_result, check_many) answer ``on_stuck`` (True: allowed,
        False: denied; remaining 0, retry_after 0) instead of raising
        BackendTimeoutError when a stripe lock stays held past the bound,
        and count those answers in its ``stats()["stuck"]``. It shares the
        slots and the allowed/denied counts; the other operations raise as
        the table's do. ``report``, when given, is called with the
        BackendTimeoutError each such answer stands for (to log and count
        it). For a caller whose failure policy is a fixed answer: it binds
        the view's methods, with no Python frame in between."""
        if not isinstance(on_stuck, bool):
            raise ArgumentTypeError(f"on_stuck must be True or False, got {type(on_stuck).__name__}")
        cdef Table v = Table.__new__(Table)
        cdef Table root = self if self.parent is None else self.parent
        v.parent = root
        v.buf = root.buf  # the parent holds the buffer view; v releases none
        v.hdr, v.slots_, v.mask, v.k0, v.k1 = root.hdr, root.slots_, root.mask, root.k0, root.k1
        v.epoch, v.P, v.Q, v.tau, v.horizon = root.epoch, root.P, root.Q, root.tau, root.horizon
        v.scale, v.window, v.lock_wait_ns, v.clock = root.scale, root.window, root.lock_wait_ns, root.clock
        v.capacity, v.slots, v.name = root.capacity, root.slots, root.name
        v.allowed_p, v.denied_p = root.allowed_p, root.denied_p
        v.on_stuck_ = 1 if on_stuck else 0
        v.report = report
        return v

    @property
    def on_stuck(self):
        """None (a stuck lock raises), or the answer of a ``deciding`` view."""
        return None if self.on_stuck_ < 0 else bool(self.on_stuck_)

    def close(self):
        """Detach (the shared segment stays until unlink)."""

    def _native_api(self):
        """A capsule of the C entry points the native data plane
        (guardian._native) calls without the GIL; the caller keeps this
        Table alive while it uses them. Refused with an injected clock,
        which only Python can read."""
        if self.clock is not None:
            raise ValueError("a Table with an injected clock cannot be used without the GIL")
        return PyCapsule_New(<void *>&_NATIVE_API, b"guardian._core.native_api", NULL)

    # --- the native data plane's entry points (no GIL, no Python objects) ---

    cdef int _native_now(self, int64_t *now) noexcept nogil:
        cdef int64_t ns = g_monotonic_ns() - self.epoch
        if ns < 0:
            ns = 0
        if ns > self.horizon:
            return -1
        now[0] = ns * self.Q
        return 0

    cdef int _native_key(self, const unsigned char *key, size_t n, uint64_t *h) noexcept nogil:
        if n == 0 or n > MAX_KEY:
            return -2
        h[0] = g_siphash13(self.k0, self.k1, key, n)
        return 0

    # --- slot protocol (no Python objects below this line) ---------------

    cdef inline void _take(self, uint64_t h, int64_t cost, int64_t now, Decision *d) noexcept nogil:
        self._decide(h, cost, now, d)
        if d.stuck:
            return  # not decided: not counted
        if d.allowed:
            g_count(self.allowed_p)
        else:
            g_count(self.denied_p)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef void _decide(self, uint64_t h, int64_t cost, int64_t now, Decision *d) noexcept nogil:
        cdef int64_t t, new
        cdef Py_ssize_t s
        d.stuck = 0
        while True:
            s = self._locate(h, &t)
            if s < 0:
                s = self._place(h, cost, now, &t, d)
                if s == INSERTED or s == FULL or s == STUCK:
                    return
            new = self._judge(t, cost, now, d)
            if new >= 0:
                if not g_cas(&self.slots_[s].tat, t, new):
                    continue  # another taker or a reclaimer won; re-read
                d.slot, d.before, d.after = s, t, new
            return

    @cython.cdivision(True)
    cdef inline int64_t _judge(self, int64_t t, int64_t cost, int64_t now, Decision *d) noexcept nogil:
        """The GCRA rule for a bucket whose TAT is ``t``: fills ``d`` and
        returns the TAT to store when allowed, else -1."""
        cdef int64_t tat = t if t > now else now
        cdef int64_t new = tat + cost * self.P
        if new - now <= self.tau:
            d.allowed = True
            d.remaining = (self.tau - (new - now)) // self.P
            d.retry_ticks = 0
            d.reset_ticks = new - now
            return new
        d.allowed = False
        d.remaining = (self.tau - (tat - now)) // self.P
        d.retry_ticks = new - now - self.tau
        d.reset_ticks = tat - now
        return -1

    cdef void _peek(self, uint64_t h, int64_t cost, int64_t now, Decision *d) noexcept nogil:
        """``_decide`` without the write. An absent key is a full bucket
        unless its window has no slot to give it (then a take would be
        denied as FULL); that is settled under the stripe lock, like an
        insert, so the answer is the one a take would get."""
        cdef uint64_t stripe
        cdef int64_t t, wait = 0
        cdef Py_ssize_t s = self._locate(h, &t)
        d.stuck = 0
        if s < 0:
            stripe = (h & self.mask) % G_STRIPES
            d.stuck = self._lock_stripe(stripe)
            if d.stuck:
                return
            s = self._scan(h, now, &t, &wait)
            self._unlock_stripe(stripe)
            if s == FULL:
                d.allowed = False
                d.remaining = 0
                d.retry_ticks = wait
                d.reset_ticks = wait
                return
            if s < 0:
                t = 0  # absent, with room: a full bucket
        self._judge(t, cost, now, d)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _locate(self, uint64_t h, int64_t *tat_out) noexcept nogil:
        """The key's slot with a consistent TAT, ABSENT, or CONTENDED."""
        cdef uint64_t fp = h | 1, f
        cdef uint64_t home = h & self.mask
        cdef unsigned i
        cdef g_slot *slot
        cdef int64_t t
        for i in range(self.window):
            slot = &self.slots_[(home + i) & self.mask]
            f = g_load_u(&slot.fp)
            if f == fp:
                t = g_load(&slot.tat)
                if t < 0 or g_load_u(&slot.fp) != fp:
                    return CONTENDED
                tat_out[0] = t
                return <Py_ssize_t>((home + i) & self.mask)
            if f == 0:
                return ABSENT  # keys never lie beyond a slot never used
        return ABSENT

    cdef Py_ssize_t _locate_locked(self, uint64_t h, int64_t *tat_out) noexcept nogil:
        """``_locate`` under the stripe lock; STUCK (the holder's pid in
        tat_out) when that lock stayed held past the bound."""
        cdef uint64_t stripe = (h & self.mask) % G_STRIPES
        cdef int64_t ignored_wait
        cdef int64_t holder = self._lock_stripe(stripe)
        if holder:
            tat_out[0] = holder
            return STUCK
        s = self._scan(h, 0, tat_out, &ignored_wait)
        self._unlock_stripe(stripe)
        return s if s >= 0 else ABSENT

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef Py_ssize_t _place(self, uint64_t h, int64_t cost, int64_t now, int64_t *tat_out,
                           Decision *d) noexcept nogil:
        """Under the key's stripe lock: find the key, or claim the first
        expired slot of its window for it and take from a full bucket."""
        cdef uint64_t stripe = (h & self.mask) % G_STRIPES
        cdef uint64_t fp = h | 1, old_fp
        cdef int64_t lock = -1 - g_self_pid
        cdef int64_t t, wait, new
        cdef Py_ssize_t s
        d.stuck = self._lock_stripe(stripe)
        if d.stuck:
            return STUCK
        while True:
            s = self._scan(h, now, &t, &wait)
            if s >= 0:
                self._unlock_stripe(stripe)
                tat_out[0] = t
                return s
            if s == FULL:
                self._unlock_stripe(stripe)
                g_count(&self.hdr.full_count)
                d.allowed = False
                d.remaining = 0
                d.retry_ticks = wait
                d.reset_ticks = wait
                return FULL
            s = -10 - s  # _scan encodes a claimable slot as -10 - index
            if not g_cas(&self.slots_[s].tat, t, lock):
                continue  # its own key took from it meanwhile; rescan
            old_fp = g_load_u(&self.slots_[s].fp)
            if old_fp != 0 and old_fp != G_TOMB:
                g_count(&self.hdr.reclaim_count)
            g_store_u(&self.slots_[s].fp, fp)
            new = now + cost * self.P
            if not g_cas(&self.slots_[s].tat, lock, new):
                continue  # taken over as if we were dead (pid reuse); start again
            self._unlock_stripe(stripe)
            d.slot, d.before, d.after = s, 0, new  # before: a full bucket
            d.allowed = True
            d.remaining = (self.tau - cost * self.P) // self.P
            d.retry_ticks = 0
            d.reset_ticks = new - now
            return INSERTED

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _scan(self, uint64_t h, int64_t now, int64_t *t_out,
                          int64_t *wait_out) noexcept nogil:
        """With the stripe lock held: the key's slot (>= 0, TAT in t_out),
        else the slot to claim as -10 - index (its TAT in t_out): the first
        free one (never used, or a tombstone) before the first never-used
        slot, else the first expired one; else FULL with the shortest wait
        until a slot expires. Free slots first, so that an absent key does
        not evict a present one (whose next check would evict another)."""
        cdef uint64_t fp = h | 1, f
        cdef uint64_t home = h & self.mask
        cdef Py_ssize_t s, free_slot = -1, expired = -1
        cdef int64_t t, wait = INT64_MAX, free_t = 0, expired_t = 0
        cdef unsigned i = 0
        while i < self.window:
            s = <Py_ssize_t>((home + i) & self.mask)
            f = g_load_u(&self.slots_[s].fp)
            t = g_load(&self.slots_[s].tat)
            if t < 0:
                if not g_pid_alive(-1 - t):
                    self._repair(s, t)
                    continue  # look at the repaired slot again
                i += 1  # another key is moving in; ours is inserted only under our stripe
                continue
            if g_load_u(&self.slots_[s].fp) != f:
                continue  # reclaimed while we looked; read it again
            if f == fp:
                t_out[0] = t
                return s
            if t <= now:
                if f == 0 or f == G_TOMB:
                    if free_slot < 0:
                        free_slot = s
                        free_t = t
                    if f == 0:
                        break  # never used: the key cannot lie beyond
                elif expired < 0:
                    expired = s
                    expired_t = t
            elif t - now < wait:
                wait = t - now
            i += 1
        if free_slot >= 0:
            t_out[0] = free_t
            return -10 - free_slot
        if expired >= 0:
            t_out[0] = expired_t
            return -10 - expired
        wait_out[0] = wait
        return FULL

    cdef void _repair(self, Py_ssize_t s, int64_t dead) noexcept nogil:
        """Recover a slot its holder left LOCKED when it died: the slot was
        expired when locked, so an expired tombstone loses nothing."""
        cdef int64_t lock = -1 - g_self_pid
        if g_cas(&self.slots_[s].tat, dead, lock):
            g_store_u(&self.slots_[s].fp, G_TOMB)
            g_cas(&self.slots_[s].tat, lock, 0)

    cdef int64_t _lock_stripe(self, uint64_t stripe) noexcept nogil:
        """Takes the stripe's insert lock: 0. A holder that died loses it.
        A live one that keeps it past lock_wait_ns (stopped by SIGSTOP or a
        debugger, or a pid reused by another process) is not waited for
        longer: returns its pid, nothing taken. A holder is only ever inside
        a short insert: the wait spins, then yields for up to a millisecond
        (yields can cost a time slice each on a busy host, so they are
        timed, not counted), then sleeps with the GIL released (when this
        thread holds it)."""
        cdef uint64_t me = <uint64_t>g_self_pid, holder
        cdef unsigned spins = 0, mask = 1023  # look at the holder every mask + 1 tries
        cdef int64_t now, sleep_at = 0, deadline = 0
        cdef bint got = False, sleeping = False
        cdef PyThreadState *released = NULL
        while True:
            holder = g_load_u(&self.hdr.stripes[stripe])
            if holder == 0:
                if g_cas_u(&self.hdr.stripes[stripe], 0, me):
                    got = True
                    break
            elif (spins & mask) == mask and not g_pid_alive(<int64_t>holder):
                if g_cas_u(&self.hdr.stripes[stripe], holder, me):
                    got = True
                    break  # the holder died inside; its LOCKED slots get repaired by _scan
            spins += 1
            if spins < LOCK_SPINS:
                g_pause(0)
                continue
            now = g_monotonic_ns()
            if deadline == 0:
                if <int64_t>holder == g_load(&self.stuck_holder[stripe]) \
                        and now < g_load(&self.stuck_until[stripe]) and g_pid_alive(<int64_t>holder):
                    break  # it kept this lock past the bound moments ago: no new wait
                sleep_at = now + LOCK_YIELD_NS
                deadline = now + self.lock_wait_ns
            if now < sleep_at:
                g_pause(LOCK_SPINS)  # a yield
                continue
            if now > deadline:
                g_store(&self.stuck_holder[stripe], <int64_t>holder)
                g_store(&self.stuck_until[stripe], now + STUCK_COOLDOWN_NS)
                break
            if not sleeping:
                sleeping = True
                mask = 15
                if PyGILState_Check():
                    released = PyEval_SaveThread()
            g_sleep_ns(LOCK_SLEEP_NS)
        if released != NULL:
            PyEval_RestoreThread(released)
        if got and g_load(&self.stuck_holder[stripe]) != 0:
            g_store(&self.stuck_holder[stripe], 0)  # it let go: wait for it as for anyone
        return 0 if got else <int64_t>holder

    cdef bint _undo(self, uint64_t h, int64_t cost, int64_t now, Decision *d) noexcept nogil:
        """Takes back an admission of ``_decide`` (``now``: the time of the
        undo). If the slot still holds what the take wrote, it gets back
        what it held: exactly as before. If others took since, the take's
        ``cost * P`` comes off the TAT only when the TAT it started from
        was still ahead of ``now``: every later take then started from our
        TAT, not from its own clock, so it would have landed exactly
        ``cost * P`` earlier without ours (other undos shift it the same
        way), and the result must still be ahead of ``now``. Otherwise (a
        bucket that was full, a reclaim) it is left taken: a check may then
        be denied that could have been admitted, never the reverse. (A
        reset of the key in between is not told apart: the bucket it
        refilled may get our tokens back too.)"""
        cdef int64_t t, back = cost * self.P
        cdef Py_ssize_t s
        if g_cas(&self.slots_[d.slot].tat, d.after, d.before):
            return True
        if d.before < now:
            return False
        while True:
            s = self._locate(h, &t)
            if s != d.slot or t - back < now:
                return False  # moved, reclaimed, reset, or being written: leave it
            if g_cas(&self.slots_[s].tat, t, t - back):
                return True

    cdef int _stuck_decision(self, int64_t holder, Decision *d) except -1:
        """A take met a stuck stripe lock: raise, or answer the view's
        decision (nothing was taken either way) and count it."""
        if self.on_stuck_ < 0:
            return self._stuck(holder)
        g_count(&self.stuck_)
        if self.report is not None:
            self.report(self._stuck_error(holder))
        d.allowed = self.on_stuck_ == 1
        d.remaining = 0
        d.retry_ticks = 0
        d.reset_ticks = 0
        d.stuck = 0
        return d.allowed

    cdef int _stuck(self, int64_t holder) except -1:
        raise self._stuck_error(holder)

    cdef object _stuck_error(self, int64_t holder):
        where = f"shared table {self.name!r}" if self.name is not None else "the local table"
        return BackendTimeoutError(
            f"{where}: an insert lock has been held by process {holder} for more than "
            f"{self.lock_wait_ns / 1e9:g}s (a stopped process, or its pid was reused); this "
            "check was not decided and changed nothing. Resume or end that process, or "
            "unlink the table")

    cdef void _unlock_stripe(self, uint64_t stripe) noexcept nogil:
        g_store_u(&self.hdr.stripes[stripe], 0)


# The native data plane's view of a Table (mirrored by
# _dataplane/core_api.h; a version and the struct sizes are checked there).
# Each function takes the Table as a borrowed pointer: the C caller holds a
# reference, so no reference count is touched without the GIL.
ctypedef int (*native_take_fn)(void *table, const unsigned char *key, size_t n, int64_t cost,
                               Decision *d) noexcept nogil
ctypedef int (*native_usage_fn)(void *table, const unsigned char *key, size_t n,
                                int64_t *used) noexcept nogil
ctypedef int (*native_params_fn)(void *table, int64_t *capacity, double *scale) noexcept nogil
ctypedef int (*native_peek_fn)(void *table, const unsigned char *key, size_t n, Decision *d) noexcept nogil
ctypedef int (*native_undo_fn)(void *table, const unsigned char *key, size_t n, int64_t cost,
                               Decision *d) noexcept nogil
ctypedef int (*native_spend_fn)(void *table, const unsigned char *key, size_t n, int64_t cost,
                                int64_t *left, Decision *d) noexcept nogil
ctypedef int (*native_unspend_fn)(void *table, const unsigned char *key, size_t n, Decision *d) noexcept nogil
ctypedef int (*native_read_fn)(int64_t ahead, int64_t held, int64_t P, int64_t tau, int64_t elapsed_ns,
                               int64_t ticks_per_second, int64_t *remaining, int64_t *lead) noexcept nogil

cdef struct NativeApi:
    unsigned version
    unsigned decision_size
    native_take_fn take
    native_usage_fn usage
    native_params_fn params
    native_peek_fn peek
    native_undo_fn undo
    native_spend_fn spend
    native_unspend_fn unspend
    native_read_fn read


cdef inline int _native_at(Table t, const unsigned char *key, size_t n, uint64_t *h,
                           int64_t *now) noexcept nogil:
    """The key's hash and the table's clock, as every entry point starts:
    0, -2 for a bad key length, -1 past the tick horizon."""
    if t._native_key(key, n, h) != 0:
        return -2
    if t._native_now(now) != 0:
        return -1
    return 0


cdef inline int _native_cost_at(Table t, const unsigned char *key, size_t n, int64_t cost, uint64_t *h,
                                int64_t *now) noexcept nogil:
    """_native_at for an entry point that takes ``cost`` tokens: -3 for a
    cost outside 1..capacity first."""
    if cost < 1 or cost > t.capacity:
        return -3
    return _native_at(t, key, n, h, now)


cdef int _native_take(Table t, const unsigned char *key, size_t n, int64_t cost,
                      Decision *d) noexcept nogil:
    """One take, as check_result makes it: 0, or -1 past the tick horizon,
    -2 for a bad key length, -3 for a cost outside 1..capacity, -4 when a
    stripe lock stayed held past the bound (the caller hands it to Python)."""
    cdef uint64_t h
    cdef int64_t now
    cdef int rc = _native_cost_at(t, key, n, cost, &h, &now)
    if rc != 0:
        return rc
    t._take(h, cost, now, d)
    if d.stuck:
        return -4  # a stuck stripe lock: the Python path decides, by the policy
    return 0


cdef int _native_usage(Table t, const unsigned char *key, size_t n, int64_t *used) noexcept nogil:
    cdef uint64_t h
    cdef int64_t now
    cdef int rc = _native_at(t, key, n, &h, &now)
    if rc != 0:
        return rc
    cdef int64_t stuck = 0
    used[0] = t._usage(h, now, &stuck)
    if stuck:
        return -4  # as in _native_take
    return 0


cdef int _native_peek(Table t, const unsigned char *key, size_t n, Decision *d) noexcept nogil:
    """``peek(key, 0)``: the bucket as it is (remaining now, ticks until
    full), changing nothing; 0, or -1/-2/-4 as _native_take."""
    cdef uint64_t h
    cdef int64_t now
    cdef int rc = _native_at(t, key, n, &h, &now)
    if rc != 0:
        return rc
    t._peek(h, 0, now, d)
    if d.stuck:
        return -4
    return 0


cdef int _native_undo(Table t, const unsigned char *key, size_t n, int64_t cost,
                      Decision *d) noexcept nogil:
    """Takes back a take ``_native_take`` answered 0 with ``d``: its count,
    and when it admitted, its tokens (``_undo``, as take_all undoes: exact
    unless the bucket moved meanwhile, and then left taken, never given
    twice). For a request the data plane began and then hands to Python,
    which takes it all again. 0, or -2 for a bad key."""
    cdef uint64_t h
    cdef int64_t now
    if t._native_key(key, n, &h) != 0:
        return -2
    if not d.allowed:
        g_uncount(t.denied_p)
        return 0
    g_uncount(t.allowed_p)
    if t._native_now(&now) == 0:
        t._undo(h, cost, now, d)
    return 0


cdef int _native_spend(Table t, const unsigned char *key, size_t n, int64_t cost,
                       int64_t *left, Decision *d) noexcept nogil:
    """A lease table's spend: 0 with ``left`` the tokens left, or -1 when
    fewer were held (nothing taken); else -1/-2/-3/-4 as _native_take.
    ``d`` records what a spend wrote (for _native_unspend)."""
    cdef uint64_t h
    cdef int64_t now, stuck = 0
    cdef int rc = _native_cost_at(t, key, n, cost, &h, &now)
    if rc != 0:
        return rc
    left[0] = t._spend(h, cost, now, &stuck, d)
    if stuck:
        return -4
    return 0


cdef int _native_unspend(Table t, const unsigned char *key, size_t n, Decision *d) noexcept nogil:
    """Gives back a spend ``_native_spend`` recorded in ``d`` (for a request
    the data plane began and then hands to Python, which spends again), and
    uncounts it: only when the key's slot still holds exactly what that
    spend wrote. Anything since (another spend, a refill, a drain by reset
    or expiry, a reclaim) and the tokens are dropped instead: fewer
    admitted, never more (a drained lease must not get void tokens back).
    0, or 1 when dropped, or -2 for a bad key."""
    cdef uint64_t h
    cdef int64_t tat
    if t._native_key(key, n, &h) != 0:
        return -2
    g_uncount(&t.spends_)
    if t._locate(h, &tat) == d.slot and tat == d.after and g_cas(&t.slots_[d.slot].tat, d.after, d.before):
        return 0
    return 1


cdef int _native_params(Table t, int64_t *capacity, double *scale) noexcept nogil:
    capacity[0] = t.capacity
    scale[0] = t.scale
    return 0


cdef NativeApi _NATIVE_API
_NATIVE_API.version = 4
_NATIVE_API.decision_size = sizeof(Decision)
_NATIVE_API.take = <native_take_fn>_native_take
_NATIVE_API.usage = <native_usage_fn>_native_usage
_NATIVE_API.params = <native_params_fn>_native_params
_NATIVE_API.peek = <native_peek_fn>_native_peek
_NATIVE_API.undo = <native_undo_fn>_native_undo
_NATIVE_API.spend = <native_spend_fn>_native_spend
_NATIVE_API.unspend = <native_unspend_fn>_native_unspend
_NATIVE_API.read = <native_read_fn>g_bucket_read


unlink = _region.unlink


# --- several limits on one key, all or nothing -----------------------------

cdef enum:
    MAX_TABLES = 8


cdef Py_ssize_t _take_all(tuple tables, object key, object cost, Decision *out) except -2:
    """Takes ``cost`` for ``key`` from every table (one limit each), or from
    none: -1 when every table admitted (all taken), else the index of the
    table whose denial is the longest wait (nothing taken anywhere; ``out``
    then holds what each table would answer now)."""
    cdef Py_ssize_t n = len(tables), i, j, worst
    cdef double wait, longest = 0
    cdef Table t
    cdef uint64_t h[MAX_TABLES]
    cdef int64_t c[MAX_TABLES]
    cdef int64_t now[MAX_TABLES]
    if not 1 <= n <= MAX_TABLES:
        raise InvalidArgumentError(f"take_all needs 1 to {MAX_TABLES} tables, got {n}")
    for i in range(n):  # every argument checked before anything is taken
        t = tables[i]
        if i and t.k0 == (<Table>tables[i - 1]).k0 and t.k1 == (<Table>tables[i - 1]).k1:
            h[i] = h[i - 1]  # one seed (MemoryBackend gives its tables one): one hash
        else:
            h[i] = t._hash(key)
        c[i] = t._cost(cost)
        now[i] = t._now()
    for i in range(n):
        t = tables[i]
        t._decide(h[i], c[i], now[i], &out[i])
        if out[i].allowed and not out[i].stuck:
            continue
        for j in range(i):
            t = tables[j]
            t._undo(h[j], c[j], t._now(), &out[j])
        if out[i].stuck:
            t._stuck(out[i].stuck)
        for j in range(n):
            if j == i:
                continue
            t = tables[j]
            t._peek(h[j], c[j], now[j], &out[j])
            if out[j].stuck:
                t._stuck(out[j].stuck)
        worst = -1  # the first of the longest waits (Lua's take_all picks the same)
        for j in range(n):
            wait = <double>out[j].retry_ticks / (<Table>tables[j]).scale
            if not out[j].allowed and (worst < 0 or wait > longest):
                worst, longest = j, wait
        g_count((<Table>tables[worst]).denied_p)
        return worst
    for i in range(n):
        g_count((<Table>tables[i]).allowed_p)
    return -1


def take_all(tuple tables, key, cost=1):
    """Several limits on one key, all or nothing: takes ``cost`` tokens for
    ``key`` from every table, or from none. Returns ``(denied_by, results)``:
    ``denied_by`` is -1 when admitted, else the index of the table whose
    wait is longest (the limit that decides when to retry); ``results[i]``
    is table i's (allowed, remaining, retry_after_s, reset_after_s): its
    take when admitted, what a take would answer now when denied."""
    cdef Decision out[MAX_TABLES]
    cdef Py_ssize_t i, worst = _take_all(tables, key, cost, out)
    return worst, [(<Table>tables[i])._result(&out[i]) for i in range(len(tables))]


def take_all_result(tuple tables, key, cost=1):
    """``take_all`` answered as one LimitResult, built in C: remaining is
    the fewest any limit has left; retry_after the denying limit's wait;
    reset_after the longest until every bucket is full; limit the capacity
    of the limit that speaks (the one with the fewest left when admitted,
    the denying one when denied; the first on a tie)."""
    cdef Decision out[MAX_TABLES]
    cdef Py_ssize_t i, n = len(tables), worst = _take_all(tables, key, cost, out)
    cdef Py_ssize_t speaker = 0
    cdef int64_t fewest = out[0].remaining
    cdef double reset, longest = 0
    cdef Table t
    for i in range(n):
        t = tables[i]
        reset = <double>out[i].reset_ticks / t.scale
        if reset > longest:
            longest = reset
        if out[i].remaining < fewest:
            fewest = out[i].remaining
            speaker = i
    cdef LimitResult r = LimitResult.__new__(LimitResult)
    r.allowed = worst < 0
    r.remaining = fewest
    r.reset_after = longest
    if worst < 0:
        r.retry_after = 0.0
        r.limit = (<Table>tables[speaker]).capacity
    else:
        t = tables[worst]
        r.retry_after = <double>out[worst].retry_ticks / t.scale
        r.limit = t.capacity
    return r


def try_take_all(tuple tables, key, cost=1):
    """``take_all`` answered as one bool: True when every table admitted."""
    cdef Decision out[MAX_TABLES]
    return _take_all(tables, key, cost, out) < 0


def siphash13(uint64_t k0, uint64_t k1, bytes data):
    """The table's key hash, exposed so tests can hold it to _pycore's."""
    return g_siphash13(k0, k1, <const unsigned char *>data, <size_t>len(data))


def _self_pid():
    """The pid the core names its locks with (cached, refreshed on fork)."""
    return g_self_pid
