"""Pool events: subclass :class:`PoolListener`, override what you need, pass it as
``listeners=[...]``.

Listeners are called synchronously from the pool's own code path (outside its lock), so they
must be quick and must not block; an exception from a listener is logged and swallowed, never
raised into the pool. ``connection_id`` is the pool's own number for a connection (1, 2, ...).
"""

from __future__ import annotations

__all__ = ["CloseReason", "PoolListener"]

CloseReason = str
"""Why a connection was closed: ``"idle"``, ``"lifetime"``, ``"broken"``, ``"expired"``,
``"pool closed"``, ``"check failed"``, ``"reset failed"``, ``"resized"``, ``"discarded"``
(released with ``discard=True``), ``"reclaimed"``
(garbage-collected without release) or ``"forced"`` (still lent when ``close()`` timed out)."""


class PoolListener:
    """No-op base for pool event listeners."""

    def on_connect(self, pool: str, connection_id: int, seconds: float) -> None:
        """A new connection was opened in ``seconds``."""

    def on_connect_failed(self, pool: str, error: BaseException) -> None:
        """A connection attempt failed (it may be retried)."""

    def on_acquire(self, pool: str, connection_id: int, wait_seconds: float) -> None:
        """A connection was lent after ``wait_seconds`` (0 for an idle one)."""

    def on_release(self, pool: str, connection_id: int, use_seconds: float) -> None:
        """A connection came back after being lent for ``use_seconds``."""

    def on_timeout(self, pool: str, phase: str) -> None:
        """An acquire raised ``PoolTimeout`` (``phase``: wait, connect or check)."""

    def on_check_failed(self, pool: str, connection_id: int, error: BaseException) -> None:
        """A liveness check failed; the connection is closed and another one is tried."""

    def on_reset_failed(self, pool: str, connection_id: int, error: BaseException) -> None:
        """A reset failed; the connection is closed instead of being lent again."""

    def on_close(self, pool: str, connection_id: int, reason: CloseReason) -> None:
        """A connection left the pool for ``reason``."""
