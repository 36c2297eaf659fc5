"""The deadlines of queued callers, kept for one shared timer instead of one timer each.

A timer per waiting caller is what made the peers slow under contention: arming and
cancelling an event-loop timer for every wait costs more than the rest of the hand-off, and
cancelled timers pile up in the loop's heap. Here the shell arms a single timer at the
earliest deadline, and this heap says which waiters are due when it fires. I/O-free.

The common contended acquire, a caller waiting with the pool's one ``acquire_timeout``, is
not recorded here at all: such callers queue in deadline order, so the waiter queue itself
says who is due (``Waiter.deadline``, ``PoolState.overdue``). This heap keeps the others:
per-call timeouts, and the waits of the acquire procedure.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Generic, TypeVar

__all__ = ["DeadlineHeap"]

W = TypeVar("W")


class DeadlineHeap(Generic[W]):
    """The ``(deadline, waiter)`` pairs of queued callers, earliest first.

    Most callers wait with the pool's one ``acquire_timeout``, so their deadlines arrive in
    order, and the pool serves them oldest first. Those go to a FIFO: a served caller's entry
    is then at its front, and :meth:`push` drops it there. Entries that stop waiting elsewhere
    (cancelled, or served out of turn) are dropped when they reach the front. Deadlines that
    arrive out of order (a shorter ``timeout=`` for one call) go to a heap, which drops the
    entries of callers that stopped waiting when they reach its top, and rebuilds itself when
    they outnumber the live ones.

    Dropping served entries at once matters beyond memory: an entry kept alive is a tuple, a
    waiter and its future per acquire that outlive the wait, and under contention that kept
    Python's cyclic garbage collector running (a full collection of every task included)
    while no cycle existed.
    """

    __slots__ = ("_finished", "_heap", "_order", "_queue")

    def __init__(self, finished: Callable[[W], bool]) -> None:
        """``finished(waiter)`` says whether ``waiter`` no longer waits (served, cancelled, or
        timed out): its entry is then dropped. It is called once or twice per push, so a
        C-level callable (``operator.methodcaller("done")`` for futures) is worth having."""
        self._finished = finished
        self._queue: deque[tuple[float, W]] = deque()
        self._heap: list[tuple[float, int, W]] = []
        self._order = count()

    def __len__(self) -> int:
        return len(self._queue) + len(self._heap)

    def push(self, deadline: float, waiter: W, live: int) -> None:
        """Add ``waiter``, due at ``deadline``; ``live`` is how many waiters are queued now."""
        queue, finished = self._queue, self._finished
        while queue and finished(queue[0][1]):
            queue.popleft()
        if not queue or deadline >= queue[-1][0]:
            queue.append((deadline, waiter))
            return
        heap = self._heap
        if len(heap) > 2 * live + 64:
            heap[:] = [item for item in heap if not finished(item[2])]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, next(self._order), waiter))

    def pop_due(self, now: float) -> list[W]:
        """Remove and return the live waiters whose deadline is ``<= now``, earliest first."""
        queue, heap, finished = self._queue, self._heap, self._finished
        due: list[tuple[float, W]] = []
        while queue and queue[0][0] <= now:
            item = queue.popleft()
            if not finished(item[1]):
                due.append(item)
        from_queue = len(due)
        while heap and heap[0][0] <= now:
            deadline, _, waiter = heapq.heappop(heap)
            if not finished(waiter):
                due.append((deadline, waiter))
        if from_queue and len(due) > from_queue:
            due.sort(key=_deadline_of)
        return [waiter for _, waiter in due]

    def earliest(self) -> float | None:
        """The earliest deadline of a live waiter (dropping dead entries in front), or
        ``None``."""
        queue, heap, finished = self._queue, self._heap, self._finished
        while queue and finished(queue[0][1]):
            queue.popleft()
        while heap and finished(heap[0][2]):
            heapq.heappop(heap)
        if queue and heap:
            return min(queue[0][0], heap[0][0])
        if queue:
            return queue[0][0]
        if heap:
            return heap[0][0]
        return None

    def clear(self) -> None:
        self._queue.clear()
        self._heap.clear()


def _deadline_of(item: tuple[float, object]) -> float:
    return item[0]
