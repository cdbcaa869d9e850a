"""``--workers N``: a supervisor and N worker processes on the same ports.

Each worker is ``python -m guardian serve`` with the same arguments, told
its index, the run id and the run directory through the environment. They
bind the gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads
connections over them, and attach to the same shared-memory tables (named
after the run id) or the same Redis, so a limit is one limit across them.
The supervisor forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that
dies (with a pause if it dies at once), and at exit removes the run's
shared tables and run directory. It exits 0 after a SIGTERM when every
worker it stopped exited 0 (or of that SIGTERM); a worker that had died
just before is logged, not counted.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional

from .. import MemoryBackend
from .buckets import shared_table_prefix
from .config import ServeOptions

__all__ = ["supervise"]

log = logging.getLogger("guardian.server")

#: A worker that dies sooner than this after its start is restarted only after a pause.
_FAST_DEATH = 2.0
#: Workers still alive this long after SIGTERM's grace are killed.
_KILL_MARGIN = 1.0


def _remove_tables(run_id: str) -> None:
    prefix = "guardian." + shared_table_prefix(run_id)
    try:
        names = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        MemoryBackend.unlink(n[len("guardian."):])


def supervise(opts: ServeOptions, argv: List[str]) -> int:
    from . import DIR_ENV, RUN_ENV, WORKER_ENV

    run_id = uuid.uuid4().hex[:10]
    run_dir = tempfile.mkdtemp(prefix=f"guardian-{run_id}-")
    stopping: List[int] = []
    hup: List[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        (hup if signum == signal.SIGHUP else stopping).append(signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    def start(index: int) -> "subprocess.Popen[bytes]":
        env = dict(os.environ, **{WORKER_ENV: str(index), RUN_ENV: run_id, DIR_ENV: run_dir})
        return subprocess.Popen([sys.executable, "-m", "guardian", *argv], env=env)

    procs: Dict[int, "subprocess.Popen[bytes]"] = {}
    started: Dict[int, float] = {}
    restart_at: Dict[int, float] = {}
    log.info("guardian supervisor (pid %d): starting %d workers, run %s", os.getpid(), opts.workers, run_id)
    codes: Dict[int, Optional[int]] = {}
    try:
        for i in range(opts.workers):
            procs[i], started[i] = start(i), time.monotonic()
        while not stopping:
            if hup:
                hup.clear()
                log.info("guardian supervisor: SIGHUP, workers reload the policy")
                for p in procs.values():
                    p.send_signal(signal.SIGHUP)
            now = time.monotonic()
            for i, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                if code == 2 and now - started[i] < _FAST_DEATH:
                    log.error("guardian supervisor: worker %d could not start (see above); stopping", i)
                    stopping.append(signal.SIGTERM)
                    codes[i] = code
                    break
                if i not in restart_at:
                    fast = now - started[i] < _FAST_DEATH
                    restart_at[i] = now + (1.0 if fast else 0.0)
                    log.warning("guardian supervisor: worker %d (pid %d) exited with %s; restarting%s",
                                i, p.pid, code, " in 1s" if fast else "")
                if now >= restart_at[i]:
                    del restart_at[i]
                    procs[i], started[i] = start(i), now
            time.sleep(0.05)
        log.info("guardian supervisor: %s, stopping %d workers",
                 signal.Signals(stopping[0]).name, len(procs))
        for i, p in procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            elif i not in codes:
                # Died before the stop (logged above, or not yet noticed) with
                # its replacement pending: nothing left to stop, not an error
                # of the run (a pod must not end in Error for it).
                log.warning("guardian supervisor: worker %d (pid %d) had exited with %s before the stop",
                            i, p.pid, p.returncode)
                codes[i] = 0
        deadline = time.monotonic() + opts.grace + _KILL_MARGIN
        for i, p in procs.items():
            if i in codes:
                continue
            try:
                codes[i] = p.wait(max(deadline - time.monotonic(), 0.01))
                if codes[i] == -signal.SIGTERM:
                    codes[i] = 0  # a replacement still starting: stopped by our SIGTERM, as asked
                elif codes[i] == -signal.SIGKILL:
                    # Killed from outside (OOM killer, operator) just before
                    # the stop, not yet reaped when we signalled it.
                    log.warning("guardian supervisor: worker %d (pid %d) was killed (SIGKILL) as the run "
                                "stopped", i, p.pid)
                    codes[i] = 0
            except subprocess.TimeoutExpired:
                log.warning("guardian supervisor: worker %d (pid %d) did not stop; killing it", i, p.pid)
                p.kill()
                codes[i] = p.wait()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        _remove_tables(run_id)
        shutil.rmtree(run_dir, ignore_errors=True)
    bad = {i: c for i, c in codes.items() if c != 0}
    log.info("guardian supervisor (pid %d) stopped%s", os.getpid(),
             f"; workers with errors: {bad}" if bad else "")
    return 0 if not bad else 1
