"""Deterministic unit tests of :class:`tidepool._core.state.PoolState`, used directly.

No pool shell and no I/O: the tests play the shell's part (workers, borrowers, waiters) by
calling the state's atomic steps in a chosen order and checking what each step decided.
"""

from __future__ import annotations

import gc
import random
import sys
from typing import Any

import pytest

from tidepool._core.entry import Entry, Where
from tidepool._core.state import BACK, BROKEN, GONE, RESET, Limits, PoolState
from tidepool._core.waiter import Waiter
from tidepool.errors import ConnectError, PoolClosed, PoolTimeout, TooManyWaiters

# --------------------------------------------------------------------------- helpers


class Conn:
    """A stand-in for a driver connection: weak-referenceable, like most drivers' objects."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"<Conn {self.n}>"


class RecWaiter(Waiter):
    """A waiter that records its wake-ups; ``alive=False`` plays a cancelled/timed-out one."""

    def __init__(self, *, alive: bool = True) -> None:
        super().__init__()
        self.alive = alive
        self.wakes = 0

    def wake(self) -> bool:
        self.wakes += 1
        return self.alive


_numbers = iter(range(1, 1_000_000))


def make_state(**overrides: Any) -> PoolState[Conn]:
    options: dict[str, Any] = {
        "max_size": 4,
        "min_size": 0,
        "max_waiting": None,
        "max_connecting": 2,
        "max_lifetime": None,
        "idle_timeout": None,
        "check": "never",
        "check_idle_after": 0.5,
        "leak_timeout": None,
    }
    options.update(overrides)
    return PoolState("test", Limits(**options), rng=random.Random(1234))


def connect(state: PoolState[Any], now: float = 0.0, conn: Any = None) -> Entry[Any]:
    """Open one connection the way a worker does (claim a slot, then succeed).

    The slot is claimed as background fill: ``min_size`` is raised for the claim only.
    """
    saved = state.limits.min_size
    state.limits.min_size = state.size + 1
    try:
        generation = state.claim_connect()
    finally:
        state.limits.min_size = saved
    assert generation is not None, "the state refused a connect the test needed"
    return state.connect_succeeded(Conn(next(_numbers)) if conn is None else conn, now, generation)


def fill(state: PoolState[Conn], n: int, now: float = 0.0) -> list[Entry[Conn]]:
    return [connect(state, now) for _ in range(n)]


def lend(state: PoolState[Conn], now: float = 0.0) -> tuple[Entry[Conn], Conn]:
    got = state.try_lend(now, None)
    assert got is not None
    return got


def release(
    state: PoolState[Conn], entry: Entry[Conn], conn: Conn, now: float, *, reusable: bool = True
) -> None:
    outcome = state.put_back(entry, conn, now, reset=True)
    assert outcome != GONE
    if outcome == RESET:
        state.give_back(entry, now, reusable=reusable)


def enqueue(state: PoolState[Conn], now: float = 0.0, *, alive: bool = True) -> RecWaiter:
    waiter = RecWaiter(alive=alive)
    got = state.lend_or_enqueue(now, lambda: waiter, may_wait=True)
    assert got is waiter
    return waiter


def assert_consistent(state: PoolState[Any]) -> None:
    s = state.snapshot()
    assert s.size == s.idle + s.in_use + s.connecting
    assert min(s.size, s.idle, s.in_use, s.connecting, s.waiting) >= 0
    assert state.closing >= 0
    assert state.workers >= 0
    assert not (set(map(id, state.idle)) & set(map(id, state.lent.values())))


# --------------------------------------------------------------------------- try_lend


def test_try_lend_on_empty_pool_returns_none_and_never_queues() -> None:
    state = make_state()
    assert state.try_lend(0.0, None) is None
    s = state.snapshot()
    assert (s.size, s.waiting, s.acquired, s.waited) == (0, 0, 0, 0)


def test_try_lend_is_lifo_over_connect_order() -> None:
    state = make_state()
    a, b, c = fill(state, 3)
    assert [lend(state, 1.0)[0] for _ in range(3)] == [c, b, a]
    assert state.try_lend(1.0, None) is None


def test_try_lend_is_lifo_over_return_order() -> None:
    state = make_state()
    fill(state, 3)
    lent = [lend(state, 1.0) for _ in range(3)]
    order = [lent[1], lent[2], lent[0]]
    for t, (entry, conn) in enumerate(order, start=2):
        release(state, entry, conn, float(t))
    assert list(state.idle) == [e for e, _ in order]
    again = [lend(state, 10.0)[0] for _ in range(3)]
    assert again == [lent[0][0], lent[2][0], lent[1][0]]


def test_try_lend_marks_entry_lent_and_counts() -> None:
    state = make_state()
    (entry,) = fill(state, 1)
    conn = entry.conn
    frame = sys._getframe()
    site = (frame.f_code, frame.f_lasti, None, None)  # as PoolBase.acquire() captures it
    line = frame.f_lineno - 1
    got = state.try_lend(3.0, site)
    assert got == (entry, conn)
    assert entry.where is Where.LENT
    assert entry.lent_since == 3.0
    assert entry.site_text() == f"{__file__}:{line}"
    assert state.find_lent(conn) is entry
    s = state.snapshot()
    assert (s.size, s.idle, s.in_use, s.acquired) == (1, 0, 1, 1)
    assert_consistent(state)


def test_lent_connection_is_held_only_weakly() -> None:
    state = make_state()
    (entry,) = fill(state, 1)
    _, conn = lend(state)
    assert entry.conn is None
    assert entry.ref is not None
    assert entry.live_conn() is conn


def test_try_lend_retires_lifetime_expired_entries_on_the_way() -> None:
    state = make_state(max_lifetime=10.0)
    young = connect(state, now=5.0)  # expires in [14.5, 15]
    old = connect(state, now=0.0)  # expires in [9.5, 10]; most recent in the idle list
    assert list(state.idle) == [young, old]
    got = state.try_lend(10.5, None)
    assert got is not None
    assert got[0] is young
    assert old.where is Where.GONE
    assert old.reason == "lifetime"
    assert state.take_retired() == [old]
    s = state.snapshot()
    assert (s.size, s.idle, s.in_use) == (1, 0, 1)
    assert state.closing == 1


def test_try_lend_retires_every_expired_entry_and_returns_none() -> None:
    state = make_state(max_lifetime=10.0)
    entries = fill(state, 3, now=0.0)
    assert state.try_lend(10.0, None) is None
    assert state.take_retired() == entries[::-1]
    assert state.size == 0
    assert state.closing == 3


def test_try_lend_retires_entries_of_an_old_generation() -> None:
    state = make_state()
    current, stale = fill(state, 2)
    # expire() empties the idle list itself; an old-generation entry can only be met here if
    # it came back some other way, so stamp one directly to exercise the defensive path.
    stale.generation = state.generation - 1
    got = state.try_lend(1.0, None)
    assert got is not None
    assert got[0] is current
    assert stale.reason == "expired"
    assert state.take_retired() == [stale]
    assert_consistent(state)


def test_try_lend_defers_to_check_when_top_entry_was_idle_too_long() -> None:
    state = make_state(check="idle", check_idle_after=0.5)
    (entry,) = fill(state, 1, now=0.0)
    assert state.try_lend(0.6, None) is None
    assert state.snapshot().idle == 1  # left where it was: the slow path checks it
    assert state.needs_check(entry, 0.6)
    assert not state.needs_check(entry, 0.4)
    got = state.try_lend(0.4, None)
    assert got is not None
    assert got[0] is entry


def test_check_always_and_never() -> None:
    always = make_state(check="always")
    (entry,) = fill(always, 1)
    assert always.try_lend(0.0, None) is None
    assert always.needs_check(entry, 0.0)
    never = make_state(check="never")
    (entry2,) = fill(never, 1)
    assert not never.needs_check(entry2, 1e9)
    assert never.try_lend(1e9, None) is not None


# --------------------------------------------------------------------------- lend_or_enqueue


def test_lend_or_enqueue_takes_idle_entry_as_busy_then_lend() -> None:
    state = make_state(check="always")
    (entry,) = fill(state, 1)
    got = state.lend_or_enqueue(1.0, RecWaiter, may_wait=True)
    assert got is entry
    assert entry.where is Where.BUSY
    s = state.snapshot()
    assert (s.idle, s.in_use, s.waiting, s.acquired) == (0, 1, 0, 0)
    conn = state.lend(entry, 1.0, None)
    assert isinstance(conn, Conn)
    assert entry.where is Where.LENT
    assert state.snapshot().acquired == 1


def test_lend_or_enqueue_without_waiting_returns_none() -> None:
    state = make_state()
    assert state.lend_or_enqueue(0.0, RecWaiter, may_wait=False) is None
    s = state.snapshot()
    assert (s.waiting, s.waited) == (0, 0)


def test_lend_or_enqueue_queues_fifo_and_hands_connections_in_order() -> None:
    state = make_state()
    waiters = [enqueue(state, now=float(i)) for i in range(3)]
    assert [w.enqueued_at for w in waiters] == [0.0, 1.0, 2.0]
    s = state.snapshot()
    assert (s.waiting, s.waited) == (3, 3)
    first = connect(state, now=5.0)
    assert waiters[0].entry is first
    assert first.where is Where.BUSY
    assert [w.wakes for w in waiters] == [1, 0, 0]
    second = connect(state, now=6.0)
    assert waiters[1].entry is second
    assert [w.wakes for w in waiters] == [1, 1, 0]
    conn = state.lend(first, 7.0, None)
    release(state, first, conn, 8.0)
    assert waiters[2].entry is first
    assert [w.wakes for w in waiters] == [1, 1, 1]
    s = state.snapshot()
    assert (s.waiting, s.idle, s.in_use) == (0, 0, 2)


def test_lend_or_enqueue_retires_expired_idle_entries() -> None:
    state = make_state(max_lifetime=10.0)
    (old,) = fill(state, 1, now=0.0)
    waiter = RecWaiter()
    assert state.lend_or_enqueue(20.0, lambda: waiter, may_wait=True) is waiter
    assert old.where is Where.GONE
    assert state.take_retired() == [old]
    assert state.snapshot().waiting == 1


def test_too_many_waiters_at_max_waiting() -> None:
    state = make_state(max_waiting=2)
    w1 = enqueue(state)
    enqueue(state)
    with pytest.raises(TooManyWaiters, match="max_waiting=2"):
        state.lend_or_enqueue(0.0, RecWaiter, may_wait=True)
    s = state.snapshot()
    assert (s.waiting, s.waited) == (2, 2)
    # A waiter that gave up no longer counts.
    assert state.withdraw(w1) is None
    assert state.snapshot().waiting == 1
    enqueue(state)
    with pytest.raises(TooManyWaiters):
        state.lend_or_enqueue(0.0, RecWaiter, may_wait=True)


def test_waiters_skipped_by_a_hand_over_no_longer_count_towards_max_waiting() -> None:
    state = make_state(max_waiting=2)
    dead1 = enqueue(state, alive=False)
    dead2 = enqueue(state, alive=False)
    with pytest.raises(TooManyWaiters):
        state.lend_or_enqueue(0.0, RecWaiter, may_wait=True)
    entry = connect(state)  # nobody alive to take it: both dead waiters leave the queue
    assert entry.where is Where.IDLE
    assert (dead1.wakes, dead2.wakes) == (1, 1)
    assert state.withdraw(dead1) is None
    assert state.withdraw(dead2) is None
    lend(state)
    enqueue(state)
    enqueue(state)
    assert state.snapshot().waiting == 2


def test_max_waiting_does_not_refuse_when_idle_available() -> None:
    state = make_state(max_waiting=0)
    (entry,) = fill(state, 1)
    assert state.lend_or_enqueue(0.0, RecWaiter, may_wait=True) is entry
    with pytest.raises(TooManyWaiters):
        state.lend_or_enqueue(0.0, RecWaiter, may_wait=True)


# --------------------------------------------------------------------------- queue


def test_queue_puts_a_caller_in_line_when_nothing_is_idle() -> None:
    state = make_state()
    first, second = RecWaiter(), RecWaiter()
    assert state.queue(1.0, first)
    assert state.queue(2.0, second)
    assert (first.enqueued_at, second.enqueued_at) == (1.0, 2.0)
    s = state.snapshot()
    assert (s.waiting, s.waited) == (2, 2)
    entry = connect(state, now=3.0)
    assert (first.entry, first.wakes, second.wakes) == (entry, 1, 0)


def test_overdue_reports_in_order_deadlines_oldest_first_and_once() -> None:
    state = make_state()
    waiters = [RecWaiter() for _ in range(5)]
    # Three callers with in-order deadlines; between them one without any deadline and one
    # whose deadline is kept elsewhere (a per-call timeout): both are passed over.
    deadlines = [10.0, None, 11.0, None, 12.0]
    for at, (waiter, deadline) in enumerate(zip(waiters, deadlines, strict=True)):
        waiter.deadline = deadline
        assert state.queue(float(at), waiter)
    assert state.next_deadline() == 10.0
    assert state.overdue(9.0) == []
    assert state.overdue(11.0) == [waiters[0], waiters[2]]
    # Reported once: they stay queued (their callers withdraw them) but leave the order.
    assert (waiters[0].deadline, waiters[2].deadline) == (None, None)
    assert state.snapshot().waiting == 5
    assert state.overdue(11.5) == []
    assert state.next_deadline() == 12.0
    assert state.withdraw(waiters[0]) is None
    assert state.overdue(20.0) == [waiters[4]]
    assert state.next_deadline() is None
    assert all(w.wakes == 0 for w in waiters)  # overdue() wakes nobody: the shell does


def test_a_served_waiter_leaves_the_deadline_order() -> None:
    state = make_state()
    first, second = RecWaiter(), RecWaiter()
    first.deadline, second.deadline = 5.0, 6.0
    assert state.queue(0.0, first)
    assert state.queue(1.0, second)
    connect(state, now=2.0)  # handed to the oldest
    assert first.entry is not None
    assert state.next_deadline() == 6.0
    assert state.overdue(7.0) == [second]


def test_queue_leaves_an_idle_connection_to_lend_or_enqueue() -> None:
    # try_lend() left it there (due for a check, or to retire): the full procedure must run.
    state = make_state(check="always")
    (entry,) = fill(state, 1)
    waiter = RecWaiter()
    assert not state.queue(0.0, waiter)
    assert entry.where is Where.IDLE
    s = state.snapshot()
    assert (s.waiting, s.waited, s.idle) == (0, 0, 1)


def test_queue_refuses_like_lend_or_enqueue() -> None:
    state = make_state(max_waiting=1)
    assert state.queue(0.0, RecWaiter())
    with pytest.raises(TooManyWaiters, match="max_waiting=1"):
        state.queue(0.0, RecWaiter())
    assert state.snapshot().waiting == 1
    state.close()
    with pytest.raises(PoolClosed):
        state.queue(0.0, RecWaiter())


def test_lend_or_enqueue_after_close_raises_pool_closed() -> None:
    state = make_state()
    state.close()
    with pytest.raises(PoolClosed):
        state.lend_or_enqueue(0.0, RecWaiter, may_wait=True)
    with pytest.raises(PoolClosed):
        state.lend_or_enqueue(0.0, RecWaiter, may_wait=False)
    assert state.try_lend(0.0, None) is None
    assert state.snapshot().waiting == 0


# --------------------------------------------------------------------------- give_back


def test_give_back_goes_to_oldest_waiter_even_while_connect_in_flight() -> None:
    state = make_state(max_size=2)
    (entry,) = fill(state, 1)
    entry_, conn = lend(state)
    w1 = enqueue(state, now=1.0)
    w2 = enqueue(state, now=2.0)
    assert state.begin_worker()
    assert state.claim_connect() == 0  # a connect is now in flight for w1
    assert state.snapshot().connecting == 1
    release(state, entry_, conn, 3.0)
    assert w1.entry is entry
    assert w1.wakes == 1
    assert w2.wakes == 0
    assert w2.entry is None
    assert state.snapshot().idle == 0
    assert entry.where is Where.BUSY
    assert entry.idle_since == 3.0
    late = state.connect_succeeded(Conn(0), 4.0, 0)
    assert w2.entry is late
    assert_consistent(state)


def test_give_back_skips_waiters_that_are_gone() -> None:
    state = make_state()
    (entry,) = fill(state, 1)
    entry_, conn = lend(state)
    dead = enqueue(state, alive=False)
    live = enqueue(state)
    release(state, entry_, conn, 1.0)
    assert dead.wakes == 1
    assert dead.entry is None  # taken back from the waiter that was gone
    assert live.entry is entry
    assert state.snapshot().waiting == 0
    assert state.withdraw(dead) is None


def test_give_back_with_only_gone_waiters_puts_entry_idle() -> None:
    state = make_state()
    (entry,) = fill(state, 1)
    entry_, conn = lend(state)
    dead = [enqueue(state, alive=False) for _ in range(3)]
    release(state, entry_, conn, 1.0)
    assert [w.wakes for w in dead] == [1, 1, 1]
    assert all(w.entry is None for w in dead)
    assert list(state.idle) == [entry]
    assert entry.where is Where.IDLE
    s = state.snapshot()
    assert (s.waiting, s.idle, s.in_use) == (0, 1, 0)


def test_give_back_not_reusable_retires_even_with_waiters() -> None:
    state = make_state()
    (entry,) = fill(state, 1)
    entry_, conn = lend(state)
    waiter = enqueue(state)
    release(state, entry_, conn, 1.0, reusable=False)
    assert waiter.wakes == 0
    assert entry.where is Where.GONE
    assert entry.reason == "broken"
    assert state.take_retired() == [entry]
    s = state.snapshot()
    assert (s.size, s.waiting) == (0, 1)
    assert state.begin_worker()  # the waiter now needs a connect


def test_give_back_of_lifetime_expired_entry_retires_it() -> None:
    state = make_state(max_lifetime=10.0)
    (entry,) = fill(state, 1, now=0.0)
    entry_, conn = lend(state, 1.0)
    waiter = enqueue(state, 2.0)
    assert not state.keeps(entry, 10.0)
    release(state, entry_, conn, 10.0)
    assert waiter.entry is None
    assert entry.reason == "lifetime"
    assert state.take_retired() == [entry]


def test_give_back_after_close_retires() -> None:
    state = make_state()
    (entry,) = fill(state, 1)
    entry_, conn = lend(state)
    state.close()
    assert not state.keeps(entry, 1.0)
    release(state, entry_, conn, 1.0)
    assert entry.reason == "pool closed"
    assert state.take_retired() == [entry]
    assert state.snapshot().size == 0


def test_discard_counts_check_and_reset_failures() -> None:
    state = make_state(check="always")
    a, b = fill(state, 2)
    assert state.lend_or_enqueue(0.0, RecWaiter, may_wait=True) is b
    state.discard(b, check_failed=True)  # the liveness check failed
    assert state.lend_or_enqueue(0.0, RecWaiter, may_wait=True) is a
    conn = state.lend(a, 0.0, None)
    assert state.put_back(a, conn, 0.0, reset=True) == RESET
    state.discard(a, reset_failed=True)  # the reset on return failed
    assert (b.reason, a.reason) == ("check failed", "reset failed")
    assert a.where is Where.GONE
    s = state.snapshot()
    assert (s.check_failures, s.reset_failures, s.size) == (1, 1, 0)
    assert state.take_retired() == [b, a]


# --------------------------------------------------------------------------- withdraw


def test_withdraw_of_queued_waiter_removes_it() -> None:
    state = make_state()
    w1 = enqueue(state)
    w2 = enqueue(state)
    assert state.withdraw(w1) is None
    assert state.snapshot().waiting == 1
    assert state.withdraw(w1) is None  # twice is harmless
    entry = connect(state)
    assert w2.entry is entry
    assert w1.wakes == 0


def test_withdraw_returns_entry_handed_over_meanwhile() -> None:
    state = make_state()
    w1 = enqueue(state)
    w2 = enqueue(state)
    entry = connect(state)
    assert w1.entry is entry
    # w1 times out after the hand-over but before it saw the wake-up: it now owns the entry.
    assert state.withdraw(w1) is entry
    assert w1.entry is None
    assert entry.where is Where.BUSY
    state.give_back(entry, 1.0, reusable=True)
    assert w2.entry is entry
    assert_consistent(state)


def test_withdraw_after_error_returns_none() -> None:
    state = make_state()
    waiter = enqueue(state)
    state.close()
    assert isinstance(waiter.error, PoolClosed)
    assert state.withdraw(waiter) is None


# --------------------------------------------------------------------------- connect


def test_begin_worker_needs_a_reason() -> None:
    state = make_state()
    assert not state.wants_worker()
    assert not state.begin_worker()
    assert state.workers == 0


def test_workers_capped_at_max_connecting() -> None:
    state = make_state(max_connecting=2, max_size=10)
    for _ in range(5):
        enqueue(state)
    assert state.wants_worker()
    assert state.begin_worker()
    assert state.begin_worker()
    assert not state.wants_worker()
    assert not state.begin_worker()
    assert state.workers == 2


def test_connects_only_while_waiters_outnumber_connects_in_flight() -> None:
    state = make_state(max_connecting=2, max_size=10)
    enqueue(state)
    enqueue(state)
    assert state.begin_worker()
    assert state.begin_worker()
    assert state.claim_connect() == 0
    assert state.claim_connect() == 0
    s = state.snapshot()
    assert (s.size, s.connecting, s.in_use, s.idle) == (2, 2, 0, 0)
    # Both waiters are covered: another claim ends its worker in the same step.
    assert state.claim_connect() is None
    assert state.workers == 1
    assert not state.begin_worker()
    enqueue(state)
    assert state.begin_worker()
    assert state.claim_connect() == 0
    assert state.snapshot().connecting == 3


def test_claim_connect_respects_max_size() -> None:
    state = make_state(max_size=1, max_connecting=2)
    enqueue(state)
    enqueue(state)
    assert state.begin_worker()
    assert state.begin_worker()
    assert state.claim_connect() == 0
    assert state.claim_connect() is None
    assert not state.begin_worker()
    assert state.snapshot().size == 1


def test_min_size_fill_without_waiters() -> None:
    state = make_state(min_size=2, max_connecting=1)
    assert state.wants_worker()
    assert state.begin_worker()
    assert not state.begin_worker()  # max_connecting=1
    for t in (1.0, 2.0):
        gen = state.claim_connect()
        assert gen == 0
        state.connect_succeeded(Conn(int(t)), t, gen)
    assert state.claim_connect() is None
    assert state.workers == 0
    s = state.snapshot()
    assert (s.size, s.idle, s.connects) == (2, 2, 2)
    assert not state.wants_worker()


def test_connect_succeeded_hands_to_oldest_waiter_and_counts() -> None:
    state = make_state()
    w1 = enqueue(state)
    w2 = enqueue(state)
    assert state.begin_worker()
    gen = state.claim_connect()
    assert gen is not None
    entry = state.connect_succeeded(Conn(1), 1.0, gen)
    assert w1.entry is entry
    assert w2.entry is None
    assert entry.created == entry.idle_since == 1.0
    s = state.snapshot()
    assert (s.connects, s.connecting, s.size, s.in_use, s.waiting) == (1, 0, 1, 1, 1)


def test_transient_connect_failure_keeps_waiters() -> None:
    state = make_state()
    waiter = enqueue(state, now=1.0)
    assert state.begin_worker()
    assert state.claim_connect() == 0
    error = OSError("connection refused")
    state.connect_failed(error, 2.0, permanent=False)
    s = state.snapshot()
    assert (s.size, s.connecting, s.connect_errors, s.waiting) == (0, 0, 1, 1)
    assert waiter.wakes == 0
    assert waiter.error is None
    assert state.last_connect_error is error
    assert state.claim_connect() == 0  # the same worker retries
    timeout = state.timeout_error(waiter, 5.0)
    assert isinstance(timeout, PoolTimeout)
    assert timeout.phase == "connect"
    assert timeout.__cause__ is error
    assert state.snapshot().timeouts == 1


def test_permanent_connect_failure_fails_every_waiter_and_pauses_fill() -> None:
    state = make_state(min_size=2, max_connecting=2)
    waiters = [enqueue(state) for _ in range(3)]
    gone = enqueue(state, alive=False)
    assert state.begin_worker()
    assert state.claim_connect() == 0
    error = ConnectError("password authentication failed")
    state.connect_failed(error, 1.0, permanent=True)
    state.end_worker()
    for waiter in waiters:
        assert waiter.error is error
        assert waiter.wakes == 1
        assert waiter.entry is None
    assert gone.entry is None
    s = state.snapshot()
    assert (s.waiting, s.size, s.connecting, s.connect_errors) == (0, 0, 0, 1)
    assert state.workers == 0
    # min_size fill is paused until the next maintenance tick ...
    assert not state.wants_worker()
    assert not state.begin_worker()
    state.sweep(2.0)
    # ... and resumes after it.
    assert state.wants_worker()
    assert state.begin_worker()


def test_paused_fill_still_connects_for_a_new_waiter() -> None:
    state = make_state(min_size=1)
    assert state.begin_worker()
    assert state.claim_connect() == 0
    state.connect_failed(ConnectError("bad"), 0.0, permanent=True)
    state.end_worker()
    assert not state.begin_worker()
    enqueue(state)
    assert state.begin_worker()
    assert state.claim_connect() == 0


def test_connect_succeeded_after_close_or_expire_or_shrink_retires() -> None:
    state = make_state(max_size=3)
    for _ in range(3):
        enqueue(state)
    gens = [state.claim_connect() for _ in range(3)]
    assert gens == [0, 0, 0]
    state.expire()
    expired = state.connect_succeeded(Conn(1), 1.0, 0)
    assert expired.where is Where.GONE
    assert expired.reason == "expired"
    state.resize(1, 0)  # size 2 (two connecting) > 1
    shrunk = state.connect_succeeded(Conn(2), 1.0, state.generation)
    assert shrunk.where is Where.GONE
    state.close()
    closed = state.connect_succeeded(Conn(3), 1.0, state.generation)
    assert closed.where is Where.GONE
    assert closed.reason == "pool closed"
    assert state.take_retired() == [expired, shrunk, closed]
    s = state.snapshot()
    assert (s.size, s.connecting, s.connects) == (0, 0, 3)


def test_max_lifetime_jitter_spreads_expiry_below_max_lifetime() -> None:
    state = make_state(max_size=500, max_lifetime=100.0)
    entries = fill(state, 400, now=50.0)
    expiries = [e.expires for e in entries]
    assert all(x is not None for x in expiries)
    values = [x for x in expiries if x is not None]
    assert all(50.0 + 95.0 <= x <= 50.0 + 100.0 for x in values)
    assert max(values) - min(values) > 4.0  # spread over (nearly) the whole 5 % window
    assert len(set(values)) > 390  # born together, they do not die together


def test_no_max_lifetime_means_no_expiry() -> None:
    state = make_state(max_lifetime=None)
    (entry,) = fill(state, 1)
    assert entry.expires is None
    assert state.try_lend(1e12, None) is not None


# --------------------------------------------------------------------------- sweep


def test_sweep_retires_idle_down_to_min_size_oldest_first() -> None:
    state = make_state(idle_timeout=10.0, min_size=1)
    fill(state, 3, now=0.0)
    lent = [lend(state, 0.0) for _ in range(3)]
    for t, (entry, conn) in zip((1.0, 2.0, 3.0), lent, strict=True):
        release(state, entry, conn, t)
    oldest, middle, newest = (e for e, _ in lent)
    assert state.sweep(10.5) == []
    assert state.take_retired() == []  # idle 9.5 s at most: nothing yet
    state.sweep(20.0)  # all three idle too long, but min_size keeps one: the newest
    assert state.take_retired() == [oldest, middle]
    assert {oldest.reason, middle.reason} == {"idle"}
    assert list(state.idle) == [newest]
    assert state.snapshot().size == 1


def test_sweep_idle_timeout_counts_lent_connections_towards_min_size() -> None:
    state = make_state(idle_timeout=5.0, min_size=2)
    a, b, _c = fill(state, 3)
    lend(state)  # c is lent, a and b idle
    state.sweep(100.0)
    assert state.take_retired() == [a]
    assert list(state.idle) == [b]


def test_sweep_retires_lifetime_expired_only_down_to_min_size_minus_max_connecting() -> None:
    # NET-14: connections born together expire together; retiring them all at once would
    # empty the pool. Age retires them only while the pool stays within max_connecting of
    # min_size; the rest serve on until replacements arrive.
    state = make_state(max_lifetime=10.0, min_size=3, max_connecting=2, idle_timeout=None)
    entries = fill(state, 3, now=0.0)
    state.sweep(9.0)
    assert state.take_retired() == []
    state.sweep(10.0)
    retired = state.take_retired()
    assert len(retired) == 2
    assert set(retired) < set(entries)
    assert all(e.reason == "lifetime" for e in retired)
    assert state.snapshot().size == 1
    assert len(state.idle) == 1
    assert state.begin_worker()  # refill to min_size


def test_sweep_without_idle_timeout_keeps_idle() -> None:
    state = make_state(idle_timeout=None)
    fill(state, 2)
    state.sweep(1e9)
    assert state.take_retired() == []
    assert state.snapshot().idle == 2


def test_sweep_reports_each_leak_once() -> None:
    state = make_state(leak_timeout=5.0)
    fill(state, 2)
    (entry, conn) = lend(state, 0.0)
    assert state.sweep(4.0) == []
    assert state.sweep(5.5) == [entry]
    assert state.sweep(6.0) == []
    assert state.sweep(100.0) == []
    release(state, entry, conn, 101.0)
    (entry2, _conn2) = lend(state, 102.0)
    assert entry2 is entry
    assert state.sweep(106.0) == []
    assert state.sweep(107.5) == [entry]


def test_sweep_reports_no_leak_without_leak_timeout() -> None:
    state = make_state(leak_timeout=None)
    fill(state, 1)
    _held = lend(state)
    assert state.sweep(1e9) == []


# --------------------------------------------------------------------------- expire, resize


def test_expire_retires_idle_now_and_lent_when_returned() -> None:
    state = make_state()
    a, b, c = fill(state, 3)
    lent_entry, conn = lend(state)
    assert lent_entry is c
    state.expire()
    assert state.generation == 1
    assert state.take_retired() == [b, a]
    assert {a.reason, b.reason} == {"expired"}
    assert state.snapshot().size == 1
    assert not state.keeps(c, 0.0)
    release(state, c, conn, 1.0)
    assert c.reason == "expired"
    assert state.take_retired() == [c]
    fresh = connect(state)
    assert fresh.generation == 1
    assert fresh.where is Where.IDLE


def test_resize_shrink_retires_oldest_idle_and_later_returns() -> None:
    state = make_state(max_size=4)
    entries = fill(state, 4)  # idle oldest->newest: entries[0..3]
    lent = [lend(state) for _ in range(2)]  # entries[3], entries[2]
    state.resize(1, 0)
    assert (state.limits.max_size, state.limits.min_size) == (1, 0)
    assert state.take_retired() == [entries[0], entries[1]]
    assert {entries[0].reason, entries[1].reason} == {"resized"}
    s = state.snapshot()
    assert (s.size, s.max_size) == (2, 1)
    # Over the cap: no connect, and the first return is retired.
    enqueue(state)
    assert not state.begin_worker()
    assert state.claim_connect() is None
    release(state, *lent[0], 1.0)
    assert lent[0][0].reason == "resized"
    assert state.snapshot().size == 1
    release(state, *lent[1], 2.0)
    assert lent[1][0].where is Where.BUSY  # back under the cap: handed to the waiter
    assert state.snapshot().size == 1


def test_resize_grow_allows_more_connects() -> None:
    state = make_state(max_size=1)
    fill(state, 1)
    lend(state)
    enqueue(state)
    assert not state.begin_worker()
    state.resize(3, 2)
    assert state.snapshot().max_size == 3
    assert state.snapshot().min_size == 2
    assert state.begin_worker()
    assert state.claim_connect() == 0


# --------------------------------------------------------------------------- close and drain


def test_close_fails_waiters_and_is_idempotent() -> None:
    state = make_state()
    w1, w2 = enqueue(state), enqueue(state)
    state.close()
    for w in (w1, w2):
        assert isinstance(w.error, PoolClosed)
        assert w.wakes == 1
        assert w.entry is None
    assert state.snapshot().waiting == 0
    state.close()
    assert (w1.wakes, w2.wakes) == (1, 1)
    assert state.closed


def test_close_retires_idle_keeps_lent_and_stops_connects() -> None:
    state = make_state(min_size=3)
    a, b = fill(state, 2)
    assert lend(state)[0] is b
    assert state.wants_worker()
    state.close()
    assert state.take_retired() == [a]
    assert a.reason == "pool closed"
    s = state.snapshot()
    assert (s.size, s.idle, s.in_use) == (1, 0, 1)
    assert not state.begin_worker()
    assert state.claim_connect() is None


def test_drain_waiter_woken_only_when_nothing_open_or_closing() -> None:
    state = make_state(max_size=3)
    fill(state, 2)
    entry, conn = lend(state)
    drain = RecWaiter()
    state.add_drain_waiter(drain)
    assert drain.wakes == 0  # not closed yet
    # One connect in flight when the pool closes.
    state.limits.min_size = 3
    assert state.claim_connect() == 0
    state.close()
    assert drain.wakes == 0  # idle one retired but closing; lent one and connect open
    (idle_one,) = state.take_retired()
    state.close_done(idle_one)
    assert drain.wakes == 0
    state.connect_failed(OSError("refused"), 1.0, permanent=False)
    assert drain.wakes == 0
    release(state, entry, conn, 2.0)
    assert state.snapshot().size == 0
    assert state.closing == 1
    assert drain.wakes == 0  # size 0, but a close is still running
    (returned,) = state.take_retired()
    state.close_done(returned)
    assert drain.wakes == 1
    assert state.snapshot().closed == 2
    late = RecWaiter()
    state.add_drain_waiter(late)
    assert late.wakes == 1  # already drained: woken at once
    assert drain.wakes == 1


def test_drain_waiter_not_woken_on_open_pool_even_when_empty() -> None:
    state = make_state()
    waiter = RecWaiter()
    state.add_drain_waiter(waiter)
    state.sweep(1.0)
    assert waiter.wakes == 0
    state.close()
    assert waiter.wakes == 1


def test_take_lent_stops_counting_lent_connections() -> None:
    state = make_state()
    fill(state, 3)
    held = [lend(state) for _ in range(2)]
    drain = RecWaiter()
    state.close()
    state.add_drain_waiter(drain)
    (idle_one,) = state.take_retired()
    state.close_done(idle_one)
    assert drain.wakes == 0
    taken = state.take_lent()
    assert {(id(e), id(c)) for e, c in taken} == {(id(e), id(c)) for e, c in held}
    assert all(e.where is Where.GONE for e, _ in taken)
    s = state.snapshot()
    assert (s.size, s.in_use, s.closed) == (0, 0, 3)
    assert drain.wakes == 1
    for entry, conn in held:
        assert state.find_lent(conn) is None
        assert state.put_back(entry, conn, 1.0, reset=True) == GONE  # released late
    assert state.snapshot().size == 0
    assert state.take_lent() == []


# --------------------------------------------------------------------------- reclaim


def test_collect_reclaimed_after_lent_connection_is_garbage_collected() -> None:
    state = make_state()
    fill(state, 2)
    entry, conn = lend(state)
    other_entry, other_conn = lend(state)
    assert state.collect_reclaimed() == []
    del conn
    gc.collect()
    assert state.collect_reclaimed() == [entry]
    assert entry.where is Where.GONE
    s = state.snapshot()
    assert (s.size, s.in_use, s.reclaimed, s.closed) == (1, 1, 1, 1)
    assert list(state.lent.values()) == [other_entry]
    assert state.collect_reclaimed() == []
    assert state.closing == 0  # nothing for the shell to close: the driver finalizes it
    release(state, other_entry, other_conn, 1.0)
    assert state.snapshot().idle == 1


def test_collect_reclaimed_wakes_drain_waiter() -> None:
    state = make_state()
    fill(state, 1)
    entry, conn = lend(state)
    state.close()
    drain = RecWaiter()
    state.add_drain_waiter(drain)
    assert drain.wakes == 0
    del conn
    gc.collect()
    assert state.collect_reclaimed() == [entry]
    assert drain.wakes == 1


def test_reclaim_skips_connection_taken_by_take_lent() -> None:
    state = make_state()
    fill(state, 1)
    _entry, conn = lend(state)
    state.close()
    taken = state.take_lent()
    assert len(taken) == 1
    del taken, conn
    gc.collect()
    assert state.collect_reclaimed() == []
    s = state.snapshot()
    assert (s.size, s.closed, s.reclaimed) == (0, 1, 0)


def test_connection_without_weakref_support_is_held_strongly() -> None:
    state: PoolState[object] = PoolState("strong", make_state().limits)
    token = object()  # plain object() instances do not support weak references
    entry = connect(state, conn=token)
    got = state.try_lend(0.0, None)
    assert got == (entry, token)
    assert entry.conn is token
    assert entry.ref is None
    assert state.find_lent(token) is entry
    assert state.find_lent(object()) is None
    assert state.put_back(entry, token, 1.0, reset=False) == BACK
    assert list(state.idle) == [entry]


def test_put_back_resets_only_what_it_keeps() -> None:
    state = make_state(max_size=3, max_lifetime=100.0)
    fill(state, 3, now=0.0)
    (a, ca), (b, cb), (c, cc) = (lend(state) for _ in range(3))
    assert state.put_back(a, ca, 1.0, reset=True) == RESET  # worth a reset
    assert a.where is Where.BUSY
    assert state.find_lent(ca) is None
    assert state.put_back(b, cb, 100.0, reset=True) == BACK  # past its lifetime: retired
    state.resize(1, 0)  # (b already left: 2 open, a and c)
    assert state.put_back(c, cc, 1.0, reset=True) == BACK  # over the new max_size: retired
    assert state.put_back(c, cc, 1.0, reset=True) == GONE  # not lent any more
    state.give_back(a, 1.0, reusable=True)
    assert list(state.idle) == [a]
    assert (b.reason, c.reason) == ("lifetime", "resized")
    assert state.take_retired() == [b, c]


def test_put_back_without_reset_hands_to_the_oldest_waiter() -> None:
    state = make_state(max_size=1)
    fill(state, 1)
    entry, conn = lend(state)
    first, second = enqueue(state), enqueue(state)
    assert state.put_back(entry, conn, 1.0, reset=False) == BACK
    assert (first.entry, second.entry) == (entry, None)
    assert entry.where is Where.BUSY
    assert entry.idle_since == 1.0


def test_put_back_of_broken_or_discarded_connection_retires_it() -> None:
    dead: set[int] = set()
    state: PoolState[Conn] = PoolState(
        "broken", make_state().limits, is_broken=lambda conn: conn.n in dead
    )
    fill(state, 2)
    (a, ca), (b, cb) = lend(state), lend(state)
    dead.add(ca.n)
    assert state.put_back(a, ca, 1.0, reset=True) == BROKEN
    assert state.put_back(b, cb, 1.0, reset=True, discard=True) == BACK
    assert (a.reason, b.reason) == ("broken", "discarded")
    assert state.take_retired() == [a, b]
    assert state.snapshot().size == 0


def test_find_lent_and_put_back_reject_foreign_connections() -> None:
    state = make_state()
    fill(state, 1)
    entry, _conn = lend(state)
    stranger = Conn(-1)
    assert state.find_lent(stranger) is None
    assert state.put_back(entry, stranger, 0.0, reset=True) == GONE
    assert entry.where is Where.LENT


# --------------------------------------------------------------------------- snapshot, timeouts


def test_snapshot_counts_through_a_scenario() -> None:
    state = make_state(max_size=4)
    e1, e2, e3 = fill(state, 3)
    assert state.lend_or_enqueue(0.0, RecWaiter, may_wait=True) is e3  # busy: being checked
    assert lend(state)[0] is e2  # lent
    s = state.snapshot()
    assert (s.size, s.idle, s.in_use, s.connecting, s.waiting) == (3, 1, 2, 0, 0)
    assert lend(state)[0] is e1
    waiter = enqueue(state)
    assert state.begin_worker()
    assert state.claim_connect() == 0  # connecting
    s = state.snapshot()
    assert (s.size, s.idle, s.in_use, s.connecting, s.waiting) == (4, 0, 3, 1, 1)
    assert s.size == s.idle + s.in_use + s.connecting
    assert (s.max_size, s.min_size, s.name) == (4, 0, "test")
    assert (s.acquired, s.waited, s.connects) == (2, 1, 3)
    assert waiter.entry is None
    assert_consistent(state)


def test_timeout_error_phases_and_counts() -> None:
    state = make_state(max_size=1)
    fill(state, 1)
    _held = lend(state)
    waiter = enqueue(state, now=10.0)
    assert state.withdraw(waiter) is None
    error = state.timeout_error(waiter, 2.0)
    assert error.phase == "wait"  # full pool, nothing connecting: everything stayed in use
    assert error.__cause__ is None
    assert "size=1/1" in str(error)
    assert "within 2.00 s" in str(error)
    zero = state.timeout_error(None, 0, "check")
    assert zero.phase == "check"
    assert "timeout=0" in str(zero)
    assert state.snapshot().timeouts == 2
