"""The pool's counts and counters, as one frozen snapshot."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of one pool, taken atomically by ``pool.stats()``.

    ``size == idle + in_use + connecting`` always holds: a connection being checked or reset
    counts as ``in_use``, one being opened as ``connecting``; one being closed has left ``size``.

    Attributes:
        name: the pool's name.
        size: open connections, counting those being created.
        idle: connections ready to be lent.
        in_use: connections lent, or being checked or reset.
        connecting: connection attempts in flight.
        waiting: callers queued for a connection.
        max_size: the cap on ``size``.
        min_size: the floor the pool keeps open in the background.
        acquired: acquires that got a connection.
        waited: acquires that had to queue first.
        timeouts: acquires that ended in ``PoolTimeout``.
        connects: connections opened.
        connect_errors: connection attempts that failed.
        closed: connections closed (for any reason).
        check_failures: liveness checks that failed, the round trip of the ``check`` policy or
            the manager's ``is_broken`` when lending an idle connection (it was closed).
        reset_failures: resets that failed (the connection was closed).
        reclaimed: lent connections garbage-collected without release.
    """

    name: str
    size: int
    idle: int
    in_use: int
    connecting: int
    waiting: int
    max_size: int
    min_size: int
    acquired: int
    waited: int
    timeouts: int
    connects: int
    connect_errors: int
    closed: int
    check_failures: int
    reset_failures: int
    reclaimed: int
