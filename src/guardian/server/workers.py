"""``--workers N``: a supervisor and N worker processes on the same ports.

Each worker is ``python -m guardian serve`` with the same arguments, told
its index, the run id and the run directory through the environment. They
bind the gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads
connections over them, and attach to the same shared-memory tables (named
after the run id) or the same Redis, so a limit is one limit across them.
The supervisor forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that
dies (with a pause if it dies at once; after MAX_FAST_DEATHS such deaths in
a row it stops the run instead), and at exit removes the run's
shared tables and run directory. It exits 0 after a SIGTERM when every
worker it stopped exited 0 (or of that SIGTERM); a worker that had died
just before is logged, not counted. A worker that exits 2 (a configuration error: a bad
policy, a port it cannot bind) is not restarted: the supervisor stops the
others and exits 2, since a restart would meet the same error.
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
from typing import TYPE_CHECKING, Dict, List, Optional

from .. import MemoryBackend
from .buckets import shared_table_prefix
from .config import DIR_ENV, RUN_ENV, WORKER_ENV, ServeOptions

__all__ = ["supervise", "Supervisor", "CONFIG_ERROR"]

log = logging.getLogger("guardian.server")

#: A worker that dies sooner than this after its start is restarted only after a pause.
_FAST_DEATH = 2.0
#: Workers still alive this long after SIGTERM's grace are killed.
_KILL_MARGIN = 1.0
#: The exit code of a worker (and of the command) that met a configuration error.
CONFIG_ERROR = 2
#: A worker that dies this many times in a row soon after its start is not
#: restarted again: the run stops (exit 1) rather than loop.
MAX_FAST_DEATHS = 5

if TYPE_CHECKING:
    Popen = subprocess.Popen[bytes]


def _remove_tables(run_id: str) -> None:
    prefix = "guardian." + shared_table_prefix(run_id)
    try:
        names = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        MemoryBackend.unlink(n[len("guardian."):])


class Supervisor:
    """Starts, watches, restarts and stops the workers of one run."""

    def __init__(self, opts: ServeOptions, argv: List[str], run_id: Optional[str] = None) -> None:
        self.opts = opts
        self.argv = argv
        self.run_id = run_id or uuid.uuid4().hex[:10]
        self.run_dir = tempfile.mkdtemp(prefix=f"guardian-{self.run_id}-")
        self.stopping: List[int] = []
        self.hup: List[int] = []
        self.procs: "Dict[int, Popen]" = {}
        self.started: Dict[int, float] = {}
        self.restart_at: Dict[int, float] = {}
        #: Exit codes of workers that will not be restarted.
        self.codes: Dict[int, Optional[int]] = {}
        self.config_error = False
        #: Deaths in a row within _FAST_DEATH of the start, per worker.
        self.fast_deaths: Dict[int, int] = {}

    def _on_signal(self, signum: int, _frame: object) -> None:
        (self.hup if signum == signal.SIGHUP else self.stopping).append(signum)

    def _start(self, index: int) -> None:
        env = dict(os.environ, **{WORKER_ENV: str(index), RUN_ENV: self.run_id, DIR_ENV: self.run_dir})
        self.procs[index] = subprocess.Popen([sys.executable, "-m", "guardian", *self.argv], env=env)
        self.started[index] = time.monotonic()

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        log.info("guardian supervisor (pid %d): starting %d workers, run %s",
                 os.getpid(), self.opts.workers, self.run_id)
        try:
            for i in range(self.opts.workers):
                self._start(i)
            while not self.stopping:
                self._forward_reload()
                self._watch()
                time.sleep(0.05)
            self._stop_all()
        finally:
            self._cleanup()
        return self._exit_code()

    def _forward_reload(self) -> None:
        if self.hup:
            self.hup.clear()
            log.info("guardian supervisor: SIGHUP, workers reload the policy")
            for p in self.procs.values():
                p.send_signal(signal.SIGHUP)

    def _watch(self) -> None:
        """Restarts workers that died; stops the run on a configuration error."""
        now = time.monotonic()
        for i, p in list(self.procs.items()):
            code = p.poll()
            if code is None:
                continue
            if self.stopping:  # a signal to the whole group reached this worker first
                return
            if code == CONFIG_ERROR:
                log.error("guardian supervisor: worker %d stopped on a configuration error (see above); "
                          "not restarting it, stopping", i)
                self.codes[i] = code
                self.config_error = True
                self.stopping.append(signal.SIGTERM)
                return
            self._schedule_restart(i, p, code, now)

    def _schedule_restart(self, i: int, p: "Popen", code: int, now: float) -> None:
        if i not in self.restart_at:
            fast = now - self.started[i] < _FAST_DEATH
            self.fast_deaths[i] = self.fast_deaths.get(i, 0) + 1 if fast else 0
            if self.fast_deaths[i] >= MAX_FAST_DEATHS:
                log.error("guardian supervisor: worker %d died %d times in a row within %gs of its start "
                          "(last exit %s); not restarting it, stopping", i, self.fast_deaths[i], _FAST_DEATH, code)
                self.codes[i] = code
                self.stopping.append(signal.SIGTERM)
                return
            self.restart_at[i] = now + (1.0 if fast else 0.0)
            log.warning("guardian supervisor: worker %d (pid %d) exited with %s; restarting%s",
                        i, p.pid, code, " in 1s" if fast else "")
        if now >= self.restart_at[i]:
            del self.restart_at[i]
            self._start(i)

    def _stop_all(self) -> None:
        log.info("guardian supervisor: %s, stopping %d workers",
                 signal.Signals(self.stopping[0]).name, len(self.procs))
        for i, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            elif i not in self.codes:
                # Died before the stop (its replacement pending): nothing left
                # to stop, not an error of the run (a pod must not end in
                # Error for it).
                log.warning("guardian supervisor: worker %d (pid %d) had exited with %s before the stop",
                            i, p.pid, p.returncode)
                self.codes[i] = 0
        deadline = time.monotonic() + self.opts.grace + _KILL_MARGIN
        for i, p in self.procs.items():
            if i in self.codes:
                continue
            try:
                self.codes[i] = p.wait(max(deadline - time.monotonic(), 0.01))
                if self.codes[i] == -signal.SIGTERM:
                    self.codes[i] = 0  # a replacement still starting: stopped by our SIGTERM, as asked
                elif self.codes[i] == -signal.SIGKILL:
                    # Killed from outside between our poll and the stop (the
                    # race of a worker dying just before SIGTERM): as above,
                    # logged, not an error of the run.
                    log.warning("guardian supervisor: worker %d (pid %d) was killed before it could stop",
                                i, p.pid)
                    self.codes[i] = 0
            except subprocess.TimeoutExpired:
                log.warning("guardian supervisor: worker %d (pid %d) did not stop; killing it", i, p.pid)
                p.kill()
                self.codes[i] = p.wait()

    def _cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        _remove_tables(self.run_id)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _exit_code(self) -> int:
        bad = {i: c for i, c in self.codes.items() if c != 0}
        log.info("guardian supervisor (pid %d) stopped%s", os.getpid(),
                 f"; workers with errors: {bad}" if bad else "")
        if self.config_error:
            return CONFIG_ERROR
        return 0 if not bad else 1


def supervise(opts: ServeOptions, argv: List[str]) -> int:
    return Supervisor(opts, argv).run()
