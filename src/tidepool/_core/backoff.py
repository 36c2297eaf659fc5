"""Jittered exponential backoff for connection retries."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``base`` up to ``cap``, each scaled by a random factor in
    [0.5, 1.0) so that many pools retrying after the same outage spread out.

    ``reset()`` after a success starts again from ``base``.
    """

    __slots__ = ("_attempt", "_base", "_cap", "_rng")

    def __init__(
        self, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap (got base={base}, cap={cap})")
        self._base = base
        self._cap = cap
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self._cap, self._base * float(2 ** min(self._attempt, 30)))
        self._attempt += 1
        jitter: float = 0.5 + self._rng.random() / 2
        return ceiling * jitter

    @property
    def failures(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def reset(self) -> None:
        """Forget past failures."""
        self._attempt = 0
