"""A caller queued for a connection, and the FIFO queue of them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .entry import Entry

__all__ = ["Waiter", "WaiterQueue"]


class Waiter:
    """One queued caller. The shell supplies :meth:`wake` (a future, a lock...).

    The core assigns ``entry`` (or ``error``) and calls :meth:`wake` in the same atomic step
    that removes the waiter from the queue, so a connection always has exactly one owner.

    ``deadline``, when not ``None``, is a deadline kept *in queue order*: the shell promises
    that every queued waiter with one was queued with a deadline no earlier than those queued
    before it (callers waiting with the pool's one ``acquire_timeout``), so the queue itself
    says who is due (:meth:`PoolState.overdue`) and no other record of the deadline is kept.
    """

    __slots__ = ("deadline", "enqueued_at", "entry", "error")

    def __init__(self) -> None:
        self.entry: Entry[Any] | None = None
        self.error: BaseException | None = None
        self.enqueued_at = 0.0
        self.deadline: float | None = None

    def wake(self) -> bool:
        """Wake the caller. Return ``False`` if it is already gone (cancelled or timed out),
        in which case the core takes back what it assigned and tries the next waiter."""
        raise NotImplementedError


class WaiterQueue(OrderedDict[Waiter, None]):
    """FIFO of waiters with O(1) append, pop-oldest and removal of any waiter.

    Removal must be O(1) and immediate: during an outage thousands of callers time out, and a
    queue that keeps dead waiters grows without bound (psycopg_pool's LOAD-2 failure). An
    ``OrderedDict`` subclass, so ``len()`` and truth tests stay C-level on the hot path; the
    state queues (``waiters[w] = None``) and takes the oldest (``popitem(last=False)``) with
    the dict's own methods, which cost less than a Python method around them.
    """

    __slots__ = ()

    def remove(self, waiter: Waiter) -> bool:
        """Remove ``waiter``; ``False`` if it was no longer queued."""
        return self.pop(waiter, 0) is None

    def drain(self) -> list[Waiter]:
        items = list(self)
        self.clear()
        return items
