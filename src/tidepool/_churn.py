"""Spotting the pool-per-request mistake: a process that keeps opening new pools to one target.

A pool is meant to live as long as the process. Code that opens one per request (or per job)
pays a full connection setup every time and can exhaust the server's connection limit, and
nothing fails loudly until it does. This module counts pool openings per target (the URL with
its password redacted) and logs one WARNING per target and window when they pile up.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from time import monotonic

__all__ = ["ChurnWatch", "churn_watch"]

log = logging.getLogger("tidepool.pool")


class ChurnWatch:
    """Counts openings per target in a sliding window of ``window`` seconds and warns when a
    target reaches ``threshold`` openings, at most once per window for that target."""

    def __init__(self, threshold: int = 10, window: float = 60.0) -> None:
        self.threshold = threshold
        self.window = window
        self._lock = threading.Lock()
        self._opened: dict[str, deque[float]] = {}
        self._warned: dict[str, float] = {}

    def note_opened(self, target: str, pool_name: str, now: float | None = None) -> bool:
        """Record that a pool to ``target`` opened; return whether this call logged the
        warning."""
        now = monotonic() if now is None else now
        horizon = now - self.window
        with self._lock:
            times = self._opened.setdefault(target, deque())
            times.append(now)
            while times and times[0] < horizon:
                times.popleft()
            count = len(times)
            if count < self.threshold or self._warned.get(target, -1e300) >= horizon:
                return False
            self._warned[target] = now
        log.warning(
            "pool %r: %d pools to %s were opened in this process in the last %.0f s. A pool "
            "should live as long as the process: open it once at startup and share it; one "
            "per request pays a new connection each time and can exhaust the server's "
            "connection limit",
            pool_name,
            count,
            target,
            self.window,
        )
        return True

    def forget(self) -> None:
        """Drop every count, with a fresh lock: called in a forked child, where the parent's
        lock may have been held by a thread that does not exist there."""
        self._lock = threading.Lock()
        self._opened = {}
        self._warned = {}


churn_watch = ChurnWatch()
"""The process-wide watch that both pool shells report their first opening to."""
