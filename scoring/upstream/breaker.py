"""A circuit breaker per upstream host.

Closed: requests pass; ``failures`` consecutive failures open it. Open: requests are refused at
once (no time is spent on a host known to be down) until ``cooldown`` seconds have passed. Then
half-open: one probe request passes; its success closes the circuit, its failure opens it again
for another cool-down.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # for a Prometheus gauge


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = max(1, int(failures))
        self.cooldown = float(cooldown)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.opened = 0  # how many times the circuit opened

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                return HALF_OPEN
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a request go to this upstream now? In half-open, only one probe at a time."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.cooldown:
                    return False
                self._state = HALF_OPEN
                self._probing = False
            if self._probing:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.threshold:
                if self._state != OPEN:
                    self.opened += 1
                self._state = OPEN
                self._opened_at = self._clock()
            self._probing = False

    def release(self) -> None:
        """A request that was allowed ended with neither verdict (cancelled): free the probe."""
        with self._lock:
            self._probing = False
