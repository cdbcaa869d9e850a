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
import struct
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

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
    if not adopt_slots and nslots != geo.nslots:
        raise SharedTableError(f"shared table {name!r} has {nslots} slots, {geo.nslots} were asked for")
    have = (read_word(buf, W_CAPACITY), read_word(buf, W_EMISSION), read_word(buf, W_TICKS_PER_NS))
    want = (geo.capacity, geo.emission_ticks, geo.ticks_per_ns)
    if have != want:
        raise SharedTableError(
            f"shared table {name!r} holds a different limit (capacity, emission ticks, "
            f"ticks per ns) = {have}, this process asked for {want}"
        )
    if len(buf) != SLOTS_OFFSET + nslots * SLOT_BYTES:
        raise SharedTableError(f"shared table {name!r} has size {len(buf)}, its header says {nslots} slots")
    return nslots


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
        fd = _posixshmem.shm_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
        created = True
    except FileExistsError:
        fd = _posixshmem.shm_open(path, os.O_RDWR, mode=0o600)
        created = False
    try:
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
        return int(_posixshmem.shm_open(segment_name(name), os.O_RDWR, mode=0o600))
    except FileNotFoundError as exc:
        raise SharedTableError(f"shared table {name!r} was removed while opening it") from exc
