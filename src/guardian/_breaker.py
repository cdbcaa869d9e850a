"""A circuit breaker, so a dead backend does not add its timeout to every
check: after ``threshold`` failures in a row the breaker opens and checks
are decided locally; every ``cooldown`` seconds one check probes the
backend, and the first success closes the breaker again.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from ._errors import ConfigurationError

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Counts consecutive failures; no lock: a race at worst lets one more
    probe through, which is harmless."""

    __slots__ = ("threshold", "cooldown", "failures", "opened", "_probe_at", "_clock", "watch")

    def __init__(
        self, threshold: int = 3, cooldown: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigurationError(f"breaker_threshold must be an int >= 1 (or None for no breaker), got {threshold!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or not 0 < cooldown < float("inf"):
            # inf would never probe again: the backend's recovery would go unseen.
            raise ConfigurationError(f"breaker_cooldown must be finite positive seconds, got {cooldown!r}")
        self.threshold = threshold
        self.cooldown = float(cooldown)
        #: Failures in a row; 0 while healthy (the hot path tests only this).
        self.failures = 0
        #: Times the breaker opened.
        self.opened = 0
        self._probe_at = 0.0
        self._clock = clock
        #: Called with True when failures start to count (0 -> 1) and False
        #: when a success clears them: a copy of the breaker's state kept
        #: elsewhere (guardian serve's native data plane hands every check to
        #: Python while there are failures). Never called on the hot path.
        self.watch: Optional[Callable[[bool], None]] = None

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold

    def allow(self) -> bool:
        """May this call go to the backend? Closed: yes. Open: only the
        first call after each cooldown, as a probe."""
        if self.failures < self.threshold:
            return True
        now = self._clock()
        if now < self._probe_at:
            return False
        self._probe_at = now + self.cooldown
        return True

    def retry_after(self) -> float:
        """Seconds until the next probe (0 when closed)."""
        if self.failures < self.threshold:
            return 0.0
        return max(self._probe_at - self._clock(), 0.0)

    def failure(self) -> bool:
        """Records a failure; True when this one opened the breaker."""
        self.failures += 1
        if self.failures == 1 and self.watch is not None:
            self.watch(True)
        if self.failures == self.threshold:
            self.opened += 1
            self._probe_at = self._clock() + self.cooldown
            return True
        return False

    def success(self) -> bool:
        """Records a success; True when it closed an open breaker."""
        was_open = self.failures >= self.threshold
        if self.failures:
            self.failures = 0
            if self.watch is not None:
                self.watch(False)
        return was_open
