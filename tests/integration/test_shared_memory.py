"""Named shared-memory tables across real processes, on both cores."""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple

import pytest

from guardian import (
    BackendTimeoutError,
    MemoryBackend,
    RateLimiter,
    SharedTableError,
    TokenBucketConfig,
    _pycore,
    _region,
)

pytestmark = pytest.mark.shm

WORKER = str(Path(__file__).parent.parent / "helpers" / "shm_worker.py")


def spawn(env: dict, job: str, name: str, capacity: int, rate: float, interval: float,
          slots: int, *args: Any) -> subprocess.Popen:
    cmd = [sys.executable, WORKER, job, name, str(capacity), str(rate), str(interval), str(slots)]
    stdin = subprocess.PIPE if job == "hammer" else subprocess.DEVNULL  # hammer waits for "go"
    return subprocess.Popen(cmd + [str(a) for a in args], env=env, stdout=subprocess.PIPE,
                            stdin=stdin, text=True)


def start_together(procs: List[subprocess.Popen]) -> None:
    """Release workers that wait for "go" once all of them have attached."""
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def result(proc: subprocess.Popen, timeout: float = 60) -> Dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.stdin is not None:
        proc.stdin.close()
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_limits_survive_the_process_that_took_them(core: ModuleType, core_env: dict, shm_name: str) -> None:
    out = result(spawn(core_env, "take", shm_name, 10, 1, 3600, 64, "client", 3))
    assert out["results"][0][:2] == [True, 7]
    backend = MemoryBackend(TokenBucketConfig(10, 1, 3600), shared=shm_name, slots=64)
    assert backend.usage("client") == 3  # the writer exited; its take remains
    assert backend.take("client", 7).allowed
    assert not backend.take("client").allowed


def test_attach_adopts_slot_count(core: ModuleType, shm_name: str) -> None:
    config = TokenBucketConfig(10, 1)
    first = MemoryBackend(config, shared=shm_name, slots=256)
    second = MemoryBackend(config, shared=shm_name)  # slots=None: take the table as it is
    assert second.table.slots == 256
    assert first.try_take("k", 4) and second.usage("k") == 4


@pytest.mark.parametrize(
    "config, slots, message",
    [
        (TokenBucketConfig(11, 1), 64, "holds a different limit: capacity 10, refilling 1 per second; "
                                       "this process asked for capacity 11, refilling 1 per second"),
        (TokenBucketConfig(10, 2, 60), 64, "asked for capacity 10, refilling 2 per minute"),
        (TokenBucketConfig(10, 3, 7), 64, "asked for capacity 10, refilling 25.7143 per minute"),
        (TokenBucketConfig(10, 1, 86400 * 2), 64, "asked for capacity 10, refilling 0.5 per day"),
        (TokenBucketConfig(10, 1), 128, "has 64 slots, 128 were asked for"),
    ],
)
def test_incompatible_attach_is_refused(core: ModuleType, shm_name: str, config: TokenBucketConfig,
                                        slots: int, message: str) -> None:
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64).try_take("k")
    with pytest.raises(SharedTableError) as refused:
        MemoryBackend(config, shared=shm_name, slots=slots)
    assert message in str(refused.value)
    if "limit" in message:  # and names the remedy
        assert f"use a new name (shared='{shm_name}-2')" in str(refused.value)
        assert f"guardian tables --unlink {shm_name}" in str(refused.value)
    # ...and the refusal changed nothing.
    assert MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name).usage("k") == 1


def test_other_core_is_refused(core: ModuleType, shm_name: str, core_env: dict) -> None:
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    env = dict(core_env)
    if core is _pycore:
        env.pop("GUARDIAN_NO_EXTENSIONS")
    else:
        env["GUARDIAN_NO_EXTENSIONS"] = "1"
    code = ("import guardian; print(guardian.CORE);"
            f"guardian.MemoryBackend(guardian.TokenBucketConfig(10, 1), shared={shm_name!r})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.stdout.strip() == ("python" if core is _pycore else "c") or proc.stdout.strip() == "":
        pytest.skip("only one core is available")
    assert proc.returncode != 0 and "must use the same core" in proc.stderr


def test_corrupt_or_foreign_segment_is_refused_not_reinitialised(core: ModuleType, shm_name: str) -> None:
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    path = f"/dev/shm/guardian.{shm_name}"
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0:8] = b"NOTOURS!"
    with pytest.raises(SharedTableError, match="not a guardian table"):
        MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name)
    with open(path, "rb") as f:
        assert f.read(8) == b"NOTOURS!"  # left as it was
    assert MemoryBackend.unlink(shm_name)
    assert not MemoryBackend.unlink(shm_name)
    assert MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name).try_take("k")  # a fresh one


def test_bad_names_are_refused(core: ModuleType) -> None:
    for name in ["", "a/b", "x" * 201, "spaces are bad"]:
        with pytest.raises(SharedTableError, match="shared table name"):
            MemoryBackend(TokenBucketConfig(10, 1), shared=name)


def test_two_processes_by_four_threads_never_over_admit(core: ModuleType, core_env: dict, shm_name: str) -> None:
    capacity, rate = 100, 1000
    MemoryBackend(TokenBucketConfig(capacity, rate), shared=shm_name, slots=64)
    start = time.monotonic()
    procs = [spawn(core_env, "hammer", shm_name, capacity, rate, 1, 64, 1.0, 4, "hot") for _ in range(2)]
    start_together(procs)
    outs = [result(p) for p in procs]
    elapsed = time.monotonic() - start  # covers both workers' whole lives
    admitted = sum(o["admitted"] for o in outs)
    assert sum(o["checks"] for o in outs) > 10 * admitted  # the key really was hammered
    assert admitted <= capacity + rate * elapsed + 1
    assert admitted >= capacity + rate * 1.0 * 0.9  # and the bucket was honoured, not starved


def test_two_processes_admit_exactly_one_bucket(core: ModuleType, core_env: dict, shm_name: str) -> None:
    # Refilled by 1 per hour, the bucket is all there is; sized so that
    # both workers drain it well within their second of hammering.
    capacity = 20_000 if core is _pycore else 500_000
    MemoryBackend(TokenBucketConfig(capacity, 1, 3600), shared=shm_name, slots=64)
    procs = [spawn(core_env, "hammer", shm_name, capacity, 1, 3600, 64, 1.0, 2, "hot") for _ in range(2)]
    start_together(procs)
    outs = [result(p) for p in procs]
    assert all(o["admitted"] > 0 for o in outs)  # both took part
    assert abs(sum(o["admitted"] for o in outs) - capacity) <= 1


def proven_violations(admissions: List[List[int]], period_ns: int) -> List[tuple]:
    """With capacity 1, two admissions of one key must be >= T apart. Each
    admission's decision time lies in its [before, after] interval, so a
    pair is a proven violation when even the widest reading is < T."""
    spans = sorted(admissions)
    bad = []
    for i, (b1, a1) in enumerate(spans):
        for b2, a2 in spans[i + 1:]:
            if b2 - a1 >= period_ns:
                break
            if max(a2 - b1, a1 - b2) < period_ns:
                bad.append(((b1, a1), (b2, a2)))
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("nkeys, period_us", [(64, 20), (12, 1000)])
def test_reclaim_churn_never_admits_a_key_beyond_its_bucket(core: ModuleType, core_env: dict, shm_name: str,
                                                            nkeys: int, period_us: int) -> None:
    """8 slots, many keys, 2 processes: slots change owner all the time.
    (Both shapes caught inserts without the stripe lock when it was removed
    on purpose; the second needs fewer reclaims to do so.)"""
    rate = 1_000_000 // period_us
    MemoryBackend(TokenBucketConfig(1, rate), shared=shm_name, slots=8)
    procs = [spawn(core_env, "churn", shm_name, 1, rate, 1, 8, 1.5, nkeys) for _ in range(2)]
    outs = [result(p) for p in procs]
    stats = MemoryBackend(TokenBucketConfig(1, rate), shared=shm_name).stats()
    assert stats["reclaims"] > 500, stats  # the churn really happened
    total = 0
    for key in outs[0]["admissions"]:
        spans = outs[0]["admissions"][key] + outs[1]["admissions"][key]
        total += len(spans)
        assert proven_violations(spans, period_us * 1000) == [], key
    assert total > 500


def test_violation_checker_catches_a_double_admission() -> None:
    assert proven_violations([[0, 10], [100, 110]], 1000)
    assert not proven_violations([[0, 10], [2000, 2010]], 1000)


@pytest.mark.slow
def test_killed_inserter_leaves_a_usable_table(core: ModuleType, core_env: dict, shm_name: str) -> None:
    """SIGKILL a process at random points of a tight insert/reclaim loop; the
    survivors must never hang and every key must become admissible again."""
    args = (shm_name, 1, 1000, 1, 8)
    MemoryBackend(TokenBucketConfig(1, 1000), shared=shm_name, slots=8)
    rng = random.Random(1234)
    for _ in range(8):
        victim = spawn(core_env, "insert-loop", *args, 64)
        assert victim.stdout is not None and victim.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))  # a random point in the loop, not a synchronisation
        victim.kill()
        victim.wait()
        victim.stdout.close()
        check = spawn(core_env, "all-keys-admitted", *args, 64, 5.0)
        assert result(check, timeout=30)["pending"] == []


def test_lock_of_a_dead_process_is_recovered(shm_name: str, core: ModuleType) -> None:
    """A stripe lock and a LOCKED slot naming a dead pid are taken over."""
    if core is _pycore:
        pytest.skip("the Python core locks with flock, which the kernel releases")
    backend = MemoryBackend(TokenBucketConfig(1, 1), shared=shm_name, slots=8)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(f"/dev/shm/guardian.{shm_name}", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        for stripe in range(_region.STRIPES):
            struct.pack_into("=Q", m, (_region.HEADER_WORDS + stripe) * 8, dead.pid)
        for slot in range(8):
            struct.pack_into("=Qq", m, _region.SLOTS_OFFSET + 16 * slot, 0, -1 - dead.pid)
    assert backend.try_take("k")  # takes over the stripe, repairs a slot, inserts
    assert not backend.try_take("k")
    assert backend.try_take("other")


def test_all_processes_see_one_clock(core: ModuleType, core_env: dict, shm_name: str) -> None:
    """CLOCK_MONOTONIC is host-wide: a bucket emptied by one process is seen
    empty by another, with a consistent retry time."""
    backend = MemoryBackend(TokenBucketConfig(5, 1, 60), shared=shm_name, slots=64)
    assert backend.take("k", 5).allowed
    out = result(spawn(core_env, "take", shm_name, 5, 1, 60, 64, "k", 1))
    allowed, remaining, retry_after, _ = out["results"][0]
    assert (allowed, remaining) == (False, 0)
    assert 59.0 < retry_after <= 60.0
    assert os.path.exists(f"/dev/shm/guardian.{shm_name}")


# --- a table belongs to its owner (issue 10 item 5) ----------------------------


def segment_path(name: str) -> str:
    return f"/dev/shm/guardian.{name}"


def test_a_segment_others_may_write_is_refused(core: ModuleType, shm_name: str) -> None:
    """Pre-created by anyone with mode 0666 (or opened up later): every
    bucket in it could be refilled at will, so it is refused, unchanged."""
    fd = os.open(segment_path(shm_name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
    os.fchmod(fd, 0o666)  # past the umask
    os.close(fd)
    with pytest.raises(SharedTableError, match="mode 0o666: other users may read or write it"):
        MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name)
    assert os.stat(segment_path(shm_name)).st_size == 0  # not initialised behind anyone's back
    MemoryBackend.unlink(shm_name)
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64).try_take("k")
    assert os.stat(segment_path(shm_name)).st_mode & 0o777 == 0o600  # what guardian creates
    os.chmod(segment_path(shm_name), 0o640)
    with pytest.raises(SharedTableError, match="mode 0o640"):
        MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name)


def _as_nobody(code: str) -> None:
    """Runs ``code`` in a forked child that switched to uid/gid 65534."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            exec(code)
            os._exit(0)
        except BaseException as exc:
            print(f"child failed: {exc!r}", flush=True)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_segment_of_another_user_is_refused(core: ModuleType, shm_name: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a segment as another user")
    _as_nobody("from guardian import MemoryBackend, TokenBucketConfig\n"
               f"MemoryBackend(TokenBucketConfig(10, 1), shared={shm_name!r}, slots=64).try_take('k')\n")
    assert os.stat(segment_path(shm_name)).st_uid == 65534
    with pytest.raises(SharedTableError, match="belongs to uid 65534, not to this process' uid 0"):
        MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name)
    listed = guardian("tables").stdout
    assert "(refused by guardian: another user's)" in listed.split(f"{shm_name}\n", 1)[1].split("\n\n")[0]
    MemoryBackend.unlink(shm_name)
    # The other way round: a table of ours is no business of another user.
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    _as_nobody("import io, pytest\nfrom guardian import MemoryBackend, SharedTableError, TokenBucketConfig\n"
               "from guardian._tables_cli import unlink_table\n"
               "with pytest.raises(SharedTableError, match='belongs to another user'):\n"
               f"    MemoryBackend(TokenBucketConfig(10, 1), shared={shm_name!r})\n"
               "err = io.StringIO()\n"
               f"assert unlink_table({shm_name!r}, io.StringIO(), err) == 1\n"
               "assert 'belongs to another user' in err.getvalue(), err.getvalue()\n")
    assert os.path.exists(segment_path(shm_name))  # another user cannot remove it


def _attach_in_child(core_env: dict, name: str) -> subprocess.CompletedProcess:
    code = ("import guardian\n"
            "try:\n"
            f"    guardian.MemoryBackend(guardian.TokenBucketConfig(10, 1), shared={name!r}).try_take('k')\n"
            "except guardian.SharedTableError as exc:\n"
            "    print('refused:', exc)\n")
    return subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("size", [_region.SLOTS_OFFSET + 16 * 32, _region.SLOTS_OFFSET + 8])
def test_a_truncated_segment_is_refused_not_a_crash(core: ModuleType, core_env: dict, shm_name: str,
                                                    size: int) -> None:
    """A process that attached to a truncated table would die of SIGBUS
    on its first check; it is refused at attach instead."""
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    os.truncate(segment_path(shm_name), size)
    out = _attach_in_child(core_env, shm_name)
    assert out.returncode == 0, (out.returncode, out.stderr)  # -7 would be SIGBUS
    assert "refused:" in out.stdout and "truncated or corrupt" in out.stdout, out.stdout


@pytest.mark.parametrize("nslots", [0, 4, 100, 1 << 40])
def test_a_header_with_an_impossible_slot_count_is_refused(core: ModuleType, core_env: dict, shm_name: str,
                                                           nslots: int) -> None:
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    with open(segment_path(shm_name), "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        struct.pack_into("=Q", m, _region.W_NSLOTS * 8, nslots)
    out = _attach_in_child(core_env, shm_name)
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert f"its header says {nslots} slots, not a power of two" in out.stdout, out.stdout


@pytest.fixture
def stopped() -> Any:
    """A live process, stopped with SIGSTOP (killed after the test)."""
    procs: List[subprocess.Popen] = []

    def start(code: str = "import time; time.sleep(60)") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _counting_thread() -> Tuple[threading.Thread, List[int], threading.Event]:
    """A thread that counts while the main thread waits: it only gets far
    if the wait releases the GIL."""
    count, stop = [0], threading.Event()

    def run() -> None:
        while not stop.is_set():
            count[0] += 1

    return threading.Thread(target=run), count, stop


def _plant_stuck_locks(core: ModuleType, shm_name: str, stopped: Any) -> subprocess.Popen:
    """Every lock of the table held by a live process stopped with SIGSTOP."""
    if core is _pycore:  # its lock is an flock on the segment
        holder = stopped("import fcntl, os, signal, sys\n"
                         f"fd = os.open({segment_path(shm_name)!r}, os.O_RDWR)\n"
                         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\n"
                         "os.kill(os.getpid(), signal.SIGSTOP)\n")
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    else:
        holder = stopped()
        os.kill(holder.pid, signal.SIGSTOP)
        with open(segment_path(shm_name), "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            for stripe in range(_region.STRIPES):
                struct.pack_into("=Q", m, (_region.HEADER_WORDS + stripe) * 8, holder.pid)
    return holder


def test_a_lock_planted_by_a_stopped_process_costs_a_bounded_wait(
        core: ModuleType, shm_name: str, stopped: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every insert lock names a live process that never lets go (stopped,
    or a pid reused since): a check that needs one waits at most
    LOCK_WAIT_S, with the GIL released, then raises BackendTimeoutError,
    and the limiter's policy decides; keys already in the table are
    decided as usual meanwhile."""
    monkeypatch.setattr(_region, "LOCK_WAIT_S", 0.2)
    backend = MemoryBackend(TokenBucketConfig(2, 1, 3600), shared=shm_name, slots=64)
    assert backend.try_take("old") and backend.can_fail
    holder = _plant_stuck_locks(core, shm_name, stopped)
    thread, count, stop = _counting_thread()
    thread.start()
    try:
        for call in (backend.try_take, backend.take, backend.peek, lambda k: backend.take_many([k])):
            start = time.monotonic()
            with pytest.raises(BackendTimeoutError, match="held by .* for more than 0.2s"):
                call("newcomer")
            assert time.monotonic() - start < 0.2 + 0.5
    finally:
        stop.set()
        thread.join()
    assert count[0] > 1000  # the other thread ran while we waited
    assert backend.stats()["allowed"] + backend.stats()["denied"] == 1  # undecided checks are not counted
    for fail_open, allowed in ((False, False), (True, True)):
        limiter = RateLimiter(backend, fail_open=fail_open)
        start = time.monotonic()
        assert limiter.try_acquire("newcomer") is allowed  # the policy's decision, in bounded time
        assert limiter.check_limit("newcomer").allowed is allowed
        assert time.monotonic() - start < 2 * (0.2 + 0.5)
        assert limiter.errors == 2
    if core is not _pycore:  # the C core needs no lock for a key it holds
        assert backend.try_take("old") and not backend.try_take("old")
    holder.kill()
    holder.wait()
    assert backend.try_take("newcomer")  # a dead holder's locks are taken over


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_stuck_lock_is_decided_by_the_policy_inside_the_core(
        core: ModuleType, shm_name: str, stopped: Any, monkeypatch: pytest.MonkeyPatch,
        fail_open: bool, caplog: pytest.LogCaptureFixture) -> None:
    """With fail_open True or False, RateLimiter binds a view of the table
    that answers the policy itself (no Python frame per check): a check
    that meets a stuck lock is decided by the policy within the bound, with
    the GIL released meanwhile, nothing taken, counted in failures and
    errors and logged, as the Python wrapper does. The backend itself, and
    a second limiter with the other policy, are unaffected by the view."""
    monkeypatch.setattr(_region, "LOCK_WAIT_S", 0.2)
    backend = MemoryBackend(TokenBucketConfig(2, 1, 3600), shared=shm_name, slots=64)
    limiter = RateLimiter(backend, fail_open=fail_open)
    other = RateLimiter(backend, fail_open=not fail_open)
    view = getattr(limiter.try_acquire, "__self__", None)
    assert isinstance(view, core.Table) and view.on_stuck is fail_open  # bound to the core, not the wrapper
    assert limiter.check_limit.__self__ is view and backend.table.on_stuck is None
    assert limiter.try_acquire("old") and backend.stats()["allowed"] == 1  # counted where the backend counts
    holder = _plant_stuck_locks(core, shm_name, stopped)
    thread, count, stop = _counting_thread()
    thread.start()
    try:
        start = time.monotonic()
        with caplog.at_level("WARNING", logger="guardian"):
            assert limiter.try_acquire("newcomer") is fail_open
        assert time.monotonic() - start < 0.2 + 0.5
        assert "BackendTimeoutError" in caplog.text and "held by" in caplog.text
        start = time.monotonic()
        assert limiter.check_limit("newcomer") == core.LimitResult(fail_open, 0, 0.0, 0.0, 2)
        assert time.monotonic() - start < 0.2 + 0.5
    finally:
        stop.set()
        thread.join()
    assert count[0] > 1000  # the other thread ran while the core waited
    assert limiter.failures == 2 and limiter.errors == 2 and view.stats()["stuck"] == 2
    assert backend.stats()["allowed"] + backend.stats()["denied"] == 1  # nothing decided by the table
    assert other.try_acquire("newcomer") is (not fail_open)  # its own policy, its own counts
    assert other.failures == 1 and limiter.failures == 2
    with pytest.raises(BackendTimeoutError):
        backend.try_take("newcomer")  # the backend still raises for callers with their own policy
    assert [r.allowed for r in limiter.check_many(["newcomer"])] == [fail_open]  # the wrapper's path
    assert limiter.failures == 3
    holder.kill()
    holder.wait()
    assert limiter.try_acquire("newcomer") and limiter.failures == 3  # decided by the table again
    assert backend.stats()["allowed"] == 2


def test_a_stuck_holder_costs_the_bound_once_per_cooldown(core: ModuleType, shm_name: str, stopped: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """After a wait for a stuck lock ran out, checks that need the same
    lock, held by the same live process, give up at once for a cooldown
    (what the limiter's breaker did for the wrapper), instead of each
    waiting the bound; a holder that dies meanwhile is taken over at once."""
    monkeypatch.setattr(_region, "LOCK_WAIT_S", 1.0)
    backend = MemoryBackend(TokenBucketConfig(2, 1, 3600), shared=shm_name, slots=64)
    limiter = RateLimiter(backend, fail_open=True)
    holder = _plant_stuck_locks(core, shm_name, stopped)
    start = time.monotonic()
    assert limiter.try_acquire("newcomer")  # waits the bound
    waited = time.monotonic() - start
    assert waited >= 1.0
    start = time.monotonic()
    assert all(limiter.try_acquire("newcomer") for _ in range(5))  # the same lock: no new wait
    assert time.monotonic() - start < 0.5
    assert limiter.failures == limiter.errors == 6
    holder.kill()
    holder.wait()
    assert limiter.try_acquire("newcomer") and limiter.failures == 6  # a dead holder is not waited for
    assert backend.stats()["allowed"] == 1


def test_fail_open_local_keeps_the_wrapper_on_a_shared_table(core: ModuleType, shm_name: str, stopped: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """fail_open="local" is no fixed answer: the Python wrapper decides a
    stuck check by the in-process limit, which holds."""
    monkeypatch.setattr(_region, "LOCK_WAIT_S", 0.2)
    backend = MemoryBackend(TokenBucketConfig(2, 1, 3600), shared=shm_name, slots=64)
    limiter = RateLimiter(backend, fail_open="local", breaker_threshold=None)
    assert getattr(limiter.try_acquire, "__func__", None) is RateLimiter.try_acquire
    holder = _plant_stuck_locks(core, shm_name, stopped)
    assert [limiter.try_acquire("newcomer") for _ in range(3)] == [True, True, False]
    assert limiter.failures == 3 and limiter.errors == 3
    holder.kill()
    holder.wait()


# --- guardian tables ----------------------------------------------------------


def guardian(*args: str, env: "dict | None" = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guardian", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_guardian_tables_lists_limits_owner_and_size(core: ModuleType, core_env: dict, shm_name: str) -> None:
    backend = MemoryBackend(TokenBucketConfig(100, 10, 3600), shared=shm_name, slots=64)
    for key in ("a", "b", "c"):
        backend.try_take(key)  # live for 6 minutes
    out = guardian("tables", env=core_env)
    assert out.returncode == 0, out.stderr
    block = out.stdout.split(f"{shm_name}\n", 1)[1].split("\n\n")[0].splitlines()[:3]
    assert block[0] == "  limit  capacity 100, refilling 10 per hour"
    core_name = "python" if core is _pycore else "c"
    assert block[1] == f"  size   1.6 KiB, 64 slots, 3 live keys, {core_name} core"
    assert block[2].startswith("  owner  ") and block[2].endswith(", mode 0o600")
    os.chmod(segment_path(shm_name), 0o666)
    out = guardian("tables", env=core_env)
    assert "mode 0o666 (refused by guardian: others may write it)" in out.stdout


def test_guardian_tables_flags_a_broken_table(core: ModuleType, shm_name: str) -> None:
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    os.truncate(segment_path(shm_name), _region.SLOTS_OFFSET + 100)
    out = guardian("tables")
    assert f"PROBLEM corrupt or truncated (its size does not match its slot count): remove it with " \
           f"guardian tables --unlink {shm_name}" in out.stdout


def test_guardian_tables_unlink(core: ModuleType, core_env: dict, shm_name: str) -> None:
    MemoryBackend(TokenBucketConfig(10, 1), shared=shm_name, slots=64)
    user = spawn(core_env, "hammer", shm_name, 10, 1, 1, 64, 0.0, 1, "k")  # attached, waiting for "go"
    assert user.stdout is not None and user.stdout.readline().strip() == "ready"
    try:
        out = guardian("tables", "--unlink", shm_name)
        assert out.returncode == 0 and f"removed table '{shm_name}'" in out.stdout, out.stderr
        assert f"still mapped by pid {user.pid}:" in out.stdout
    finally:
        assert user.stdin is not None
        user.stdin.write("go\n")
        user.stdin.flush()
        result(user)
    assert not os.path.exists(segment_path(shm_name))
    again = guardian("tables", "--unlink", shm_name)
    assert again.returncode == 1 and f"no table named '{shm_name}'" in again.stderr
    bad = guardian("tables", "--unlink", "../etc")
    assert bad.returncode == 2 and "shared table name must be" in bad.stderr


def test_guardian_tables_unlink_removes_the_tables_of_several_limits(shm_name: str) -> None:
    """shared=NAME with several limits makes NAME.0, NAME.1: --unlink NAME
    removes them (it said "no table named NAME" and removed nothing)."""
    from guardian import Limits

    MemoryBackend(Limits.parse("10/second and 100/minute"), shared=shm_name, slots=64).close()
    assert os.path.exists(segment_path(f"{shm_name}.0")) and os.path.exists(segment_path(f"{shm_name}.1"))
    out = guardian("tables", "--unlink", shm_name)
    assert out.returncode == 0, out.stderr
    assert f"removed table '{shm_name}.0'" in out.stdout and f"removed table '{shm_name}.1'" in out.stdout
    assert not os.path.exists(segment_path(f"{shm_name}.0")) and not os.path.exists(segment_path(f"{shm_name}.1"))


# --- several limits on one key ------------------------------------------------


@pytest.mark.parametrize("limits, binding", [
    # The first limit runs out first: nothing is ever taken from the second in vain.
    ("200/hour and 300/hour", 0),
    # The second runs out first: every denial undoes a take from the first.
    ("300/hour and 200/hour", 1),
])
def test_several_limits_two_processes_by_four_threads_never_over_admit(
        core: ModuleType, core_env: dict, shm_name: str, limits: str, binding: int) -> None:
    """All or nothing under contention: exactly the binding limit's tokens
    are admitted, and every admission took from every limit. A take that
    had to be undone while another thread took from the same bucket is
    left taken (fewer admissions, never more), so the other limit may have
    lost tokens; none was ever admitted twice."""
    backend = MemoryBackend(limits, shared=shm_name, slots=64)
    procs = [spawn(core_env, "hammer", shm_name, "limits", limits, "-", 64, 1.0, 4, "hot") for _ in range(2)]
    start_together(procs)
    outs = [result(p) for p in procs]
    admitted = sum(o["admitted"] for o in outs)
    assert all(o["checks"] > 1000 for o in outs)  # both hammered the key
    assert admitted == 200  # the binding limit, to the token: never over, and not under
    used = [t.usage("hot") for t in backend.tables]
    assert used[binding] == 200
    assert 200 <= used[1 - binding] <= 300
    if binding == 0:
        assert used[1] == 200  # a denial by the first limit never touched the second
    assert MemoryBackend(limits, shared=shm_name).usage("hot") == 200  # attached by its parts' names


@pytest.mark.parametrize("limits, binding", [("200/second and 5000/hour", 0), ("5000/hour and 200/second", 1)])
def test_several_limits_with_refill_hold_each_limit_under_contention(
        core: ModuleType, core_env: dict, shm_name: str, limits: str, binding: int) -> None:
    """The refilling limit binds: admissions stay within its burst plus its
    rate over the run and are not starved, and the other limit was taken
    from exactly once per admission (up to the takes that could not be
    undone, which only ever cost admissions)."""
    backend = MemoryBackend(limits, shared=shm_name, slots=64)
    start = time.monotonic()
    procs = [spawn(core_env, "hammer", shm_name, "limits", limits, "-", 64, 1.0, 4, "hot") for _ in range(2)]
    start_together(procs)
    outs = [result(p) for p in procs]
    elapsed = time.monotonic() - start
    admitted = sum(o["admitted"] for o in outs)
    assert admitted <= 200 + 200 * elapsed + 1
    assert admitted >= (200 + 200 * 1.0) * 0.9
    hourly = backend.tables[1 - binding].usage("hot")  # 1.4 tokens a second came back meanwhile
    assert admitted - 5000 / 3600 * elapsed - 1 <= hourly <= admitted * 1.05 + 5, (admitted, hourly)
