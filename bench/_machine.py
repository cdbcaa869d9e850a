"""What else the machine did while we measured: CPU time used by other
processes and time stolen by the hypervisor. On a shared 2-core VM these,
not the code under test, can decide a figure, so the benchmarks record
them next to it."""

from __future__ import annotations

import os
import time
from typing import Tuple


class Usage:
    """CPU time on this machine that was not ours, and time the hypervisor
    stole, between start() and stop(): both can decide a scaling ratio on a
    shared VM, so they are printed next to it."""

    TICK = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _stat() -> Tuple[float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = sum(v[:8]) - v[3] - v[4]  # all but idle and iowait
        return busy / Usage.TICK, (v[7] if len(v) > 7 else 0) / Usage.TICK

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = self._stat()
        self.ours0 = self._ours()

    def stop(self) -> Tuple[float, float]:
        """(foreign CPU, stolen) as shares of all CPUs' time."""
        wall = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        busy, steal = self._stat()
        foreign = (busy - self.busy0) - (steal - self.steal0) - (self._ours() - self.ours0)
        return max(foreign, 0.0) / wall, (steal - self.steal0) / wall
