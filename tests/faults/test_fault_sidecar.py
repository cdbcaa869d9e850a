"""`guardian serve --workers 2` with workers killed under load, and SIGTERM
at awkward moments: the shared limit holds across a dead worker, the
supervisor replaces it quickly, clients see only guardian errors, and a
stop exits 0 (issue 11 items 4 and 6)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import List

import grpc
import pytest
from sidecar import Sidecar, wait_until, write

from guardian import RateLimitError
from guardian.client import Client

pytestmark = [pytest.mark.faults, pytest.mark.grpc, pytest.mark.shm]

LIMIT = 40


def _policy(tmp: Path) -> str:
    return write(tmp / "policy.yaml",
                 f"limits:\n  default: {{capacity: {LIMIT}, refill_rate: 1, refill_interval: 3600}}\n")


def _workers(supervisor_pid: int) -> List[int]:
    """The supervisor's live child processes."""
    out: List[int] = []
    for task in os.listdir(f"/proc/{supervisor_pid}/task"):
        try:
            with open(f"/proc/{supervisor_pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def _serving(s: Sidecar) -> int:
    return s.log().count("serving gRPC")


def test_killed_workers_are_replaced_and_the_shared_limit_holds(tmp_path: Path) -> None:
    s = Sidecar(tmp_path, "--config", _policy(tmp_path), "--workers", "2").start()
    try:
        assert s.proc is not None
        wait_until(lambda: _serving(s) == 2, 20, "both workers serving")
        allowed, denied, errors, foreign = [0], [0], [0], []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                # a new connection per batch: SO_REUSEPORT spreads them over the workers
                ch = grpc.insecure_channel(s.target, options=[("grpc.use_local_subchannel_pool", 1)])
                with Client(s.target, channel=ch, timeout=2.0) as client:
                    for _ in range(5):
                        try:
                            ok = client.check_limit("shared").allowed
                            allowed[0] += ok
                            denied[0] += not ok
                        except RateLimitError:
                            errors[0] += 1
                        except Exception as exc:  # the promise: only guardian's errors
                            foreign.append(exc)
                ch.close()

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        replaced = []
        time.sleep(2.0)  # past the supervisor's fast-death pause (_FAST_DEATH)
        for round_ in range(2):
            time.sleep(0.3)
            before = _serving(s)
            victim = _workers(s.proc.pid)[0]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: _serving(s) == before + 1, 20, "a replacement worker serving", step=0.01)
            replaced.append(time.monotonic() - killed)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
        print(f"\nsidecar: 2 workers SIGKILLed under load: replaced (serving again) after "
              f"{', '.join(f'{r * 1000:.0f} ms' for r in replaced)}; {errors[0]} RPCs failed, "
              f"admitted {allowed[0]} of {LIMIT} ({denied[0]} denied)")
        assert foreign == []
        # One shared bucket across both deaths: never more than the limit; less
        # only by tokens taken by a worker killed before it answered.
        assert denied[0] > 0 and LIMIT - errors[0] <= allowed[0] <= LIMIT
        assert max(replaced) < 5.0
        code, took = s.stop()
        assert code == 0, s.log()[-3000:]
    finally:
        s.kill()


@pytest.mark.parametrize("age, delay", [(0.0, 0.0), (0.0, 0.3), (0.0, 1.5), (2.1, 0.08)],
                         ids=["not-noticed", "restart-pending", "replaced", "replacement-starting"])
def test_sigterm_just_after_a_worker_died_exits_0(tmp_path: Path, age: float, delay: float) -> None:
    """A worker ``age`` s old killed ``delay`` s before the supervisor's
    SIGTERM (its death not yet noticed, its restart pending, its
    replacement starting or serving): the run still ends cleanly, so a pod
    does not end in Error."""
    s = Sidecar(tmp_path, "--config", _policy(tmp_path), "--workers", "2").start()
    try:
        assert s.proc is not None
        wait_until(lambda: _serving(s) == 2, 20, "both workers serving")
        time.sleep(age)
        os.kill(_workers(s.proc.pid)[0], signal.SIGKILL)
        time.sleep(delay)
        code, took = s.stop()
        print(f"\nsidecar: worker killed {delay}s before SIGTERM: exit {code} after {took * 1000:.0f} ms")
        assert code == 0, s.log()[-3000:]
        assert took < 5.0
    finally:
        s.kill()


def test_sigterm_while_starting_and_under_load(tmp_path: Path) -> None:
    """SIGTERM before the workers serve, and SIGTERM with calls in flight."""
    early = Sidecar(tmp_path, "--config", _policy(tmp_path), "--workers", "2").start(wait=False)
    # The supervisor has its handlers (it logged its start); the workers are still importing.
    wait_until(lambda: "starting 2 workers" in early.log(), 20, "the supervisor", step=0.005)
    code, took = early.stop()
    assert code == 0 and took < 5.0, early.log()[-3000:]
    s = Sidecar(tmp_path, "--config", _policy(tmp_path), "--workers", "2").start()
    try:
        wait_until(lambda: _serving(s) == 2, 20, "both workers serving")
        foreign: List[BaseException] = []
        done = threading.Event()

        def load() -> None:
            with Client(s.target, timeout=2.0) as client:
                while not done.is_set():
                    try:
                        client.check_limit("k")
                    except RateLimitError:
                        pass
                    except Exception as exc:
                        foreign.append(exc)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        code, took = s.stop()
        done.set()
        for t in threads:
            t.join(10)
        print(f"\nsidecar: SIGTERM under load: exit {code} after {took * 1000:.0f} ms")
        assert code == 0 and took < 5.0, s.log()[-3000:]
        assert foreign == []
    finally:
        s.kill()
