"""A token bucket that caps the bytes per second of a whole sync, across files and hosts.

The seed limits download speed so a model copy never starves the serving traffic of a machine's
network. One bucket is shared by everything a syncer downloads; a chunk that overdraws the bucket
waits until the debt is paid, so the long-run rate is exact whatever the chunk size.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
UNLIMITED = ("0", "none", "off", "unlimited")


def parse_rate(text: str | int | float | None) -> float | None:
    """``20M`` -> 20 MiB/s in bytes per second; K/M/G/T are powers of 1024; an optional
    ``B``/``iB``/``/s`` is accepted (``20MB/s``). ``0``/``none``/``off`` mean no limit (None)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"rate limit must be >= 0 bytes per second, got {text}")
        return float(text) or None
    if str(text).strip().lower() in UNLIMITED:
        return None
    return parse_bytes(text, "rate limit", "bytes per second (0 for no limit)") or None


def parse_bytes(text: str | int, what: str = "size", unit: str = "bytes") -> float:
    """``512K``, ``20M``, ``1.5G`` -> bytes (powers of 1024); raises ValueError naming ``what``."""
    m = _RATE_RE.match(str(text))
    if not m:
        raise ValueError(f"{what} {text!r}: expected {unit} with an optional K/M/G suffix, like "
                         "20M, 512K or 1.5G")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def format_rate(rate: float | None) -> str:
    if not rate:
        return "unlimited"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if rate >= size:
            return f"{rate / size:.4g}{unit}B/s"
    return f"{rate:.0f}B/s"


class TokenBucket:
    """``consume(n)`` blocks so that, over time, at most ``rate`` bytes per second pass.

    ``burst`` bytes may pass at once after an idle spell (default: 50 ms worth, at most 1 MiB),
    which keeps short bursts from overshooting the limit on multi-megabyte transfers.
    A ``rate`` of None means no limit.
    """

    def __init__(self, rate: float | None, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 bytes per second or None, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else (min(rate * 0.05, 1 << 20) if rate else 0.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def consume(self, n: int, stop: threading.Event | None = None) -> float:
        """Take ``n`` bytes' worth of tokens, waiting as needed; returns the seconds waited.
        Returns early if ``stop`` is set while waiting."""
        if not self.rate or n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            if stop is not None:
                stop.wait(wait)
            else:
                self._sleep(wait)
        return wait
