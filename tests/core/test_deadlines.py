"""DeadlineHeap: which queued callers are due when the one shared timer fires."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidepool._core.deadlines import DeadlineHeap


class W:
    def __init__(self, name: str) -> None:
        self.name = name
        self.waiting = True


def finished(w: W) -> bool:
    return not w.waiting


def test_due_waiters_come_out_in_deadline_order_and_dead_ones_are_skipped() -> None:
    heap: DeadlineHeap[W] = DeadlineHeap(finished)
    a, b, c, d = W("a"), W("b"), W("c"), W("d")
    heap.push(3.0, a, live=1)
    heap.push(1.0, b, live=2)
    heap.push(2.0, c, live=3)
    heap.push(9.0, d, live=4)
    c.waiting = False  # served before its deadline
    assert heap.earliest() == 1.0
    assert [w.name for w in heap.pop_due(2.5)] == ["b"]
    assert heap.earliest() == 3.0
    assert [w.name for w in heap.pop_due(3.0)] == ["a"]  # a deadline equal to now is due
    assert heap.pop_due(8.9) == []
    assert heap.earliest() == 9.0


def test_earliest_skips_dead_entries_and_is_none_when_nobody_waits() -> None:
    heap: DeadlineHeap[W] = DeadlineHeap(finished)
    first, second = W("first"), W("second")
    heap.push(1.0, first, live=1)
    heap.push(5.0, second, live=2)
    first.waiting = False
    assert heap.earliest() == 5.0
    second.waiting = False
    assert heap.earliest() is None
    assert len(heap) == 0


def test_callers_served_in_turn_leave_at_once() -> None:
    # The normal case under load: one acquire_timeout for everyone, served oldest first, long
    # before the deadline. The entries must stay proportional to the callers still queued,
    # not to the traffic, and a served caller's must go at the next push (an entry kept alive
    # is a tuple, a waiter and a future per acquire, which kept the cyclic garbage collector
    # busy).
    heap: DeadlineHeap[W] = DeadlineHeap(finished)
    queued: list[W] = []
    for i in range(10_000):
        w = W(str(i))
        heap.push(30.0 + i * 1e-5, w, live=len(queued) + 1)
        queued.append(w)
        if len(queued) > 10:
            queued.pop(0).waiting = False
        assert len(heap) <= 12


def test_a_shorter_timeout_that_arrives_later_is_due_first() -> None:
    heap: DeadlineHeap[W] = DeadlineHeap(finished)
    a, b, c, d = W("a"), W("b"), W("c"), W("d")
    heap.push(10.0, a, live=1)
    heap.push(20.0, b, live=2)
    heap.push(5.0, c, live=3)  # acquire(timeout=...) shorter than the pool's
    heap.push(15.0, d, live=4)
    assert heap.earliest() == 5.0
    assert [w.name for w in heap.pop_due(6.0)] == ["c"]
    assert heap.earliest() == 10.0
    assert [w.name for w in heap.pop_due(25.0)] == ["a", "d", "b"]
    assert heap.earliest() is None


@given(
    st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.booleans()), min_size=0, max_size=60),
    st.floats(0, 100, allow_nan=False),
)
def test_pop_due_returns_exactly_the_live_waiters_past_their_deadline(
    items: list[tuple[float, bool]], now: float
) -> None:
    heap: DeadlineHeap[W] = DeadlineHeap(finished)
    waiters = []
    for i, (deadline, served) in enumerate(items):
        w = W(str(i))
        heap.push(deadline, w, live=i + 1)
        waiters.append((deadline, w))
        w.waiting = not served
    expected = {id(w) for deadline, w in waiters if w.waiting and deadline <= now}
    due = heap.pop_due(now)
    assert {id(w) for w in due} == expected
    deadlines = {id(w): deadline for deadline, w in waiters}
    assert [deadlines[id(w)] for w in due] == sorted(deadlines[id(w)] for w in due)
    remaining = [deadline for deadline, w in waiters if w.waiting and deadline > now]
    assert heap.earliest() == (min(remaining) if remaining else None)
