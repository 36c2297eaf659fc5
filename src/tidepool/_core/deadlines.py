"""The deadlines of queued callers, kept for one shared timer instead of one timer each.

A timer per waiting caller is what made the peers slow under contention: arming and
cancelling an event-loop timer for every wait costs more than the rest of the hand-off, and
cancelled timers pile up in the loop's heap. Here the shell arms a single timer at the
earliest deadline, and this heap says which waiters are due when it fires. I/O-free.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count
from typing import Generic, TypeVar

__all__ = ["DeadlineHeap"]

W = TypeVar("W")


class DeadlineHeap(Generic[W]):
    """A min-heap of ``(deadline, waiter)``.

    Waiters that stop waiting (served, cancelled) are not removed at once: ``alive`` tells
    them apart when they reach the top, and :meth:`push` rebuilds the heap when such dead
    entries outnumber the live ones, so its size stays proportional to the waiters queued.
    """

    __slots__ = ("_alive", "_heap", "_order")

    def __init__(self, alive: Callable[[W], bool]) -> None:
        self._alive = alive
        self._heap: list[tuple[float, int, W]] = []
        self._order = count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, waiter: W, live: int) -> None:
        """Add ``waiter``, due at ``deadline``; ``live`` is how many waiters are queued now."""
        heap = self._heap
        if len(heap) > 2 * live + 64:
            alive = self._alive
            heap[:] = [item for item in heap if alive(item[2])]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, next(self._order), waiter))

    def pop_due(self, now: float) -> list[W]:
        """Remove and return the live waiters whose deadline is ``<= now``."""
        heap, alive = self._heap, self._alive
        due: list[W] = []
        while heap and heap[0][0] <= now:
            waiter = heapq.heappop(heap)[2]
            if alive(waiter):
                due.append(waiter)
        return due

    def earliest(self) -> float | None:
        """The earliest deadline of a live waiter (dropping dead entries on top), or ``None``."""
        heap, alive = self._heap, self._alive
        while heap:
            if alive(heap[0][2]):
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def clear(self) -> None:
        self._heap.clear()
