"""The slot table's memory: its fixed layout, and where it lives.

Both cores (the C ``_core`` and the Python ``_pycore``) keep their table in
one buffer with the layout below, either a private ``bytearray`` or a named
POSIX shared-memory segment. This module creates, attaches and validates
that buffer; the cores only read and update slots. ``_table.h`` declares the
same layout as a C struct and asserts these offsets at compile time.

Shared segments are opened with ``shm_open`` directly, not through
``multiprocessing.shared_memory``: before Python 3.13 its resource tracker
unlinks a segment when *any* attached process exits, which would wipe the
limits of every other worker. A segment lives until :func:`unlink` (or a
reboot); see docs/core.md for its lifecycle.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import stat
import struct
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, List, Optional, Union

from ._errors import SharedTableError

_posixshmem: Any
try:  # the C half of multiprocessing.shared_memory, without its tracker
    import _posixshmem  # type: ignore[import-not-found,no-redef]
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

MAGIC = int.from_bytes(b"GRDNTBL1", "little")
LAYOUT_VERSION = 1
IMPL_C = 1  # slots updated with CAS; never mixed with...
IMPL_PY = 2  # ...slots updated under a whole-table lock
HEADER_WORDS = 16
STRIPES = 64
SLOTS_OFFSET = (HEADER_WORDS + STRIPES) * 8  # 640
SLOT_BYTES = 16
#: Linear probing looks at most this many slots from a key's home.
PROBE_WINDOW = 128
MIN_SLOTS = 8
MAX_SLOTS = 1 << 32
#: 2**17 slots = 2 MiB; tracks 65,536 live keys at the default load of 1/2.
DEFAULT_SLOTS = 1 << 17
MAX_KEY_BYTES = 4096

# Header word indexes (each an 8-byte little- or native-endian integer).
W_MAGIC, W_VERSION_IMPL, W_NSLOTS, W_SEED0, W_SEED1, W_EPOCH = range(6)
W_CAPACITY, W_EMISSION, W_TICKS_PER_NS, W_FULL, W_RECLAIMS = range(6, 11)

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_ATTACH_WAIT_S = 2.0
#: Longest wait for a shared table's insert lock held by a live process
#: (one stopped with SIGSTOP, or a reused pid): the check then raises
#: BackendTimeoutError and the limiter's failure policy decides. An insert
#: holds the lock for microseconds; only a process that is not running
#: holds it longer.
LOCK_WAIT_S = 0.5


@dataclass(frozen=True)
class Geometry:
    """What a table holds and how big it is; stored in its header."""

    capacity: int
    emission_ticks: int
    ticks_per_ns: int
    nslots: int
    impl: int

    @property
    def size(self) -> int:
        return SLOTS_OFFSET + self.nslots * SLOT_BYTES


def round_slots(slots: int) -> int:
    """The power of two at or above ``slots`` (the table masks, not divides)."""
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise SharedTableError(f"slots must be an int, got {slots!r}")
    if not MIN_SLOTS <= slots <= MAX_SLOTS:
        raise SharedTableError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}, got {slots}")
    return 1 << (slots - 1).bit_length()


def _write_header(buf: Union[bytearray, mmap.mmap], geo: Geometry, epoch_ns: int,
                  seed: Optional[bytes]) -> None:
    seed = seed if seed is not None else os.urandom(16)
    if len(seed) != 16:
        raise SharedTableError("seed must be 16 bytes")
    s0, s1 = struct.unpack("<QQ", seed)
    fields = {
        W_VERSION_IMPL: LAYOUT_VERSION | (geo.impl << 32),
        W_NSLOTS: geo.nslots,
        W_SEED0: s0,
        W_SEED1: s1,
        W_EPOCH: epoch_ns,
        W_CAPACITY: geo.capacity,
        W_EMISSION: geo.emission_ticks,
        W_TICKS_PER_NS: geo.ticks_per_ns,
    }
    for index, value in fields.items():
        struct.pack_into("=Q" if index != W_EPOCH else "=q", buf, index * 8, value)
    # Magic last: a header with magic set is complete.
    struct.pack_into("=Q", buf, W_MAGIC * 8, MAGIC)


def read_word(buf: Union[bytes, bytearray, mmap.mmap, memoryview], index: int) -> int:
    return int(struct.unpack_from("=Q", buf, index * 8)[0])


def local_region(geo: Geometry, epoch_ns: int, seed: Optional[bytes] = None) -> bytearray:
    """A private zeroed table in process memory."""
    buf = bytearray(geo.size)
    _write_header(buf, geo, epoch_ns, seed)
    return buf


def segment_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SharedTableError(
            f"shared table name must be 1-200 characters of A-Z a-z 0-9 _ . -, got {name!r}"
        )
    return f"/guardian.{name}"


def _validate(buf: mmap.mmap, name: str, geo: Geometry, adopt_slots: bool) -> int:
    """Check an attached header against what this process asked for.

    Returns the segment's slot count. Never rewrites anything: a segment in
    use is never reinitialised behind its users' backs.
    """
    magic = read_word(buf, W_MAGIC)
    if magic != MAGIC:
        raise SharedTableError(
            f"shared table {name!r} is not a guardian table or was never fully "
            f"initialised (magic {magic:#x}); if no process uses it, remove it with "
            f"MemoryBackend.unlink({name!r})"
        )
    version_impl = read_word(buf, W_VERSION_IMPL)
    version, impl = version_impl & 0xFFFFFFFF, version_impl >> 32
    if version != LAYOUT_VERSION:
        raise SharedTableError(
            f"shared table {name!r} has layout version {version}, this guardian uses {LAYOUT_VERSION}"
        )
    if impl != geo.impl:
        kinds = {IMPL_C: "the C extension", IMPL_PY: "the pure-Python core"}
        raise SharedTableError(
            f"shared table {name!r} was created by {kinds.get(impl, impl)}, this process "
            f"uses {kinds[geo.impl]}; every process sharing a table must use the same core "
            "(check GUARDIAN_NO_EXTENSIONS)"
        )
    nslots = read_word(buf, W_NSLOTS)
    if not MIN_SLOTS <= nslots <= MAX_SLOTS or nslots & (nslots - 1):
        raise SharedTableError(
            f"shared table {name!r} is corrupt: its header says {nslots} slots, not a power of "
            f"two between {MIN_SLOTS} and {MAX_SLOTS}; if no process uses it, remove it with "
            f"MemoryBackend.unlink({name!r})"
        )
    if not adopt_slots and nslots != geo.nslots:
        raise SharedTableError(f"shared table {name!r} has {nslots} slots, {geo.nslots} were asked for")
    have = (read_word(buf, W_CAPACITY), read_word(buf, W_EMISSION), read_word(buf, W_TICKS_PER_NS))
    want = (geo.capacity, geo.emission_ticks, geo.ticks_per_ns)
    if have != want:
        raise SharedTableError(
            f"shared table {name!r} holds a different limit: {describe_limit(*have)}; this "
            f"process asked for {describe_limit(*want)}. Every process sharing a table must use "
            f"one limit. To change it, use a new name (shared={name + '-2'!r}), or remove the "
            f"old table once no process uses it: guardian tables --unlink {name} (or "
            f"MemoryBackend.unlink({name!r}))"
        )
    if len(buf) != SLOTS_OFFSET + nslots * SLOT_BYTES:
        raise SharedTableError(
            f"shared table {name!r} is {len(buf)} bytes, its header says {nslots} slots "
            f"({SLOTS_OFFSET + nslots * SLOT_BYTES} bytes): truncated or corrupt; if no process "
            f"uses it, remove it with MemoryBackend.unlink({name!r})"
        )
    return nslots


_UNITS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))


def describe_limit(capacity: int, emission_ticks: int, ticks_per_ns: int) -> str:
    """A table's limit in the units a user configured it in: "capacity 100,
    refilling 10 per second" (the first unit in which at least one token
    refills; the emission interval T is emission_ticks/ticks_per_ns ns)."""
    if capacity < 1 or emission_ticks < 1 or ticks_per_ns < 1:
        return f"an invalid limit (capacity {capacity}, T = {emission_ticks}/{ticks_per_ns} ns)"
    t_ns = Fraction(emission_ticks, ticks_per_ns)
    for unit, seconds in _UNITS:
        rate = Fraction(seconds * 10**9) / t_ns
        if rate >= 1 or unit == "day":
            break
    shown = f"{float(rate):.6g}" if rate.denominator != 1 else f"{rate.numerator}"
    return f"capacity {capacity}, refilling {shown} per {unit}"


@dataclass(frozen=True)
class TableInfo:
    """What ``guardian tables`` shows of one segment, read without trusting it."""

    name: str
    uid: int
    mode: int
    size: int
    #: None when the segment could not be read or is not a guardian table.
    nslots: Optional[int] = None
    limit: Optional[str] = None
    core: Optional[str] = None
    live_keys: Optional[int] = None
    problem: Optional[str] = None


#: Where Linux keeps POSIX shared memory (macOS has no listing of it).
SHM_DIR = "/dev/shm"
_COUNT_LIVE_UP_TO = 1 << 22


def table_names() -> List[str]:
    """Names of the guardian tables on this host (Linux)."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    names = [e[len("guardian."):] for e in entries if e.startswith("guardian.")]
    return sorted(n for n in names if _NAME.fullmatch(n))


def table_info(name: str) -> TableInfo:
    """Reads a table's header (read-only, never validated against a limit).
    A table whose slots are few enough also reports its live keys."""
    path = os.path.join(SHM_DIR, segment_name(name)[1:])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        try:
            st = os.lstat(path)
        except OSError:
            return TableInfo(name, -1, 0, 0, problem=f"cannot open: {exc.strerror}")
        return TableInfo(name, st.st_uid, stat.S_IMODE(st.st_mode), st.st_size,
                         problem=f"cannot open: {exc.strerror}")
    try:
        st = os.fstat(fd)
        seen = (name, st.st_uid, stat.S_IMODE(st.st_mode), st.st_size)
        if st.st_size < SLOTS_OFFSET:
            return TableInfo(*seen, problem="empty or truncated")
        with mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) as buf:
            return _read_table(buf, seen)
    finally:
        os.close(fd)


def _read_table(buf: mmap.mmap, seen: "tuple[str, int, int, int]") -> TableInfo:
    if read_word(buf, W_MAGIC) != MAGIC:
        return TableInfo(*seen, problem="not a guardian table")
    nslots = read_word(buf, W_NSLOTS)
    impl = read_word(buf, W_VERSION_IMPL) >> 32
    core = {IMPL_C: "c", IMPL_PY: "python"}.get(impl, f"unknown ({impl})")
    q = read_word(buf, W_TICKS_PER_NS)
    limit = describe_limit(read_word(buf, W_CAPACITY), read_word(buf, W_EMISSION), q)
    if nslots < MIN_SLOTS or nslots & (nslots - 1) or len(buf) != SLOTS_OFFSET + nslots * SLOT_BYTES:
        return TableInfo(*seen, nslots=nslots, limit=limit, core=core,
                         problem="corrupt or truncated (its size does not match its slot count)")
    live = None
    if nslots <= _COUNT_LIVE_UP_TO:
        # A slot is live while its TAT is ahead of now, in ticks since the
        # table's epoch on the host-wide monotonic clock.
        now = (time.monotonic_ns() - struct.unpack_from("=q", buf, W_EPOCH * 8)[0]) * q
        with memoryview(buf) as view, view.cast("q") as words, words[SLOTS_OFFSET // 8 + 1::2] as tats:
            live = sum(1 for t in tats if t > now)
    return TableInfo(*seen, nslots=nslots, limit=limit, core=core, live_keys=live)


def check_owner(fd: int, name: str) -> os.stat_result:
    """A segment is trusted only when this effective user owns it and no
    other user may read or write it: anyone who can write a table can
    refill every bucket in it, hang its users with a planted lock, or
    truncate it under them. (/dev/shm is sticky: another user cannot
    remove or replace a segment we own.)"""
    st = os.fstat(fd)
    me = os.geteuid()
    if st.st_uid != me:
        raise SharedTableError(
            f"shared table {name!r} (/dev/shm{segment_name(name)}) belongs to uid {st.st_uid}, "
            f"not to this process' uid {me}: guardian only uses a table its own user created. "
            "Choose another name, or have its owner (or root) remove it"
        )
    if st.st_mode & 0o077:
        raise SharedTableError(
            f"shared table {name!r} (/dev/shm{segment_name(name)}) has mode "
            f"{stat.S_IMODE(st.st_mode):#o}: other users may read or write it, so its limits "
            f"cannot be trusted; guardian creates tables with mode 0o600. Remove it with "
            f"MemoryBackend.unlink({name!r}) if no process uses it, or choose another name"
        )
    return st


def shared_region(name: str, geo: Geometry, epoch_ns: int, adopt_slots: bool,
                  seed: Optional[bytes] = None) -> mmap.mmap:
    """Create the named segment, or attach to it if it exists.

    The creator initialises the header while holding an exclusive flock on
    the segment; attachers read it under a shared flock, so they never see a
    half-written header (flock is also the memory barrier between them).
    """
    if _posixshmem is None:  # pragma: no cover - Windows
        raise SharedTableError("shared tables need POSIX shared memory (Linux, macOS)")
    path = segment_name(name)
    try:
        try:
            fd = _posixshmem.shm_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
            created = True
        except FileExistsError:
            fd = _posixshmem.shm_open(path, os.O_RDWR, mode=0o600)
            created = False
    except PermissionError as exc:
        raise SharedTableError(
            f"shared table {name!r} (/dev/shm{path}) exists and belongs to another user: "
            "guardian only uses a table its own user created. Choose another name"
        ) from exc
    try:
        check_owner(fd, name)
        if created:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.ftruncate(fd, geo.size)
                buf = mmap.mmap(fd, geo.size)
                _write_header(buf, geo, epoch_ns, seed)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return buf
        deadline = time.monotonic() + _ATTACH_WAIT_S
        while True:
            expired = time.monotonic() > deadline
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                size = os.fstat(fd).st_size
                if size >= SLOTS_OFFSET:
                    buf = mmap.mmap(fd, size)
                    if read_word(buf, W_MAGIC) == MAGIC or expired:
                        _validate(buf, name, geo, adopt_slots)
                        return buf
                    buf.close()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if expired:
                raise SharedTableError(
                    f"shared table {name!r} exists but is empty; if no process is creating "
                    f"it, remove it with MemoryBackend.unlink({name!r})"
                )
            time.sleep(0.001)  # another process is between shm_open and flock
    finally:
        os.close(fd)  # the mapping keeps the segment open


def unlink(name: str) -> bool:
    """Remove a named table. Processes attached keep their mapping; new
    ones create a fresh table. Returns False when there was none."""
    if _posixshmem is None:  # pragma: no cover - Windows
        return False
    try:
        _posixshmem.shm_unlink(segment_name(name))
    except FileNotFoundError:
        return False
    return True


def lock_fd(name: str) -> int:
    """A fresh descriptor of the named segment, for flock-based locking."""
    assert _posixshmem is not None
    try:
        fd = int(_posixshmem.shm_open(segment_name(name), os.O_RDWR, mode=0o600))
    except FileNotFoundError as exc:
        raise SharedTableError(f"shared table {name!r} was removed while opening it") from exc
    try:
        check_owner(fd, name)
    except BaseException:
        os.close(fd)
        raise
    return fd
