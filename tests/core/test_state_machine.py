"""Hypothesis stateful test of :class:`tidepool._core.state.PoolState`.

The machine plays every part a shell plays (borrowers, waiters, connect workers, closers, the
garbage collector, the maintenance tick) in random order, keeps its own model of who owns each
connection, predicts what each atomic step of the core must decide, and after every step checks
the accounting invariants of design.md section 7 against the model.
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tidepool._core.entry import Entry, Where
from tidepool._core.state import BACK, GONE, RESET, Limits, PoolState
from tidepool._core.waiter import Waiter
from tidepool.errors import ConnectError, PoolClosed, TooManyWaiters

LIFETIME_JITTER = 0.05


class Conn:
    """A weak-referenceable stand-in for a driver connection."""

    def __init__(self, n: int) -> None:
        self.n = n


class MWaiter(Waiter):
    """A queued caller; ``alive`` false once it has timed out or been cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = True
        self.wakes = 0
        self.seen: tuple[int, int, bool] | None = None  # (size, closing, closed) at wake

    def wake(self) -> bool:
        self.wakes += 1
        return self.alive


class DrainWaiter(MWaiter):
    """Waits for the pool to drain after close(); records the state it was woken in."""

    def __init__(self, state: PoolState[Any]) -> None:
        super().__init__()
        self.state = state

    def wake(self) -> bool:
        # Called under the state's lock: read the fields, do not call snapshot().
        self.seen = (self.state.size, self.state.closing, self.state.closed)
        return super().wake()


@dataclass
class Info:
    """What the model knows about one entry."""

    n: int  # which Conn it wraps
    generation: int
    expires: float | None
    idle_since: float
    lent_since: float = 0.0
    leak_reported: bool = False


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state: PoolState[Conn] | None = None

    # ------------------------------------------------------------------ setup

    @initialize(
        max_size=st.integers(1, 4),
        min_size=st.integers(0, 3),
        max_waiting=st.none() | st.integers(0, 3),
        max_connecting=st.integers(1, 2),
        max_lifetime=st.sampled_from([None, 3.0, 15.0]),
        idle_timeout=st.sampled_from([None, 1.0, 5.0]),
        check=st.sampled_from(["never", "idle", "always"]),
        leak_timeout=st.sampled_from([None, 2.0]),
        seed=st.integers(0, 2**16),
        prefill=st.integers(0, 4),
    )
    def setup(
        self,
        max_size: int,
        min_size: int,
        max_waiting: int | None,
        max_connecting: int,
        max_lifetime: float | None,
        idle_timeout: float | None,
        check: str,
        leak_timeout: float | None,
        seed: int,
        prefill: int,
    ) -> None:
        min_size = min(min_size, max_size)
        self.limits = Limits(
            max_size=max_size,
            min_size=min_size,
            max_waiting=max_waiting,
            max_connecting=max_connecting,
            max_lifetime=max_lifetime,
            idle_timeout=idle_timeout,
            check=check,
            check_idle_after=0.5,
            leak_timeout=leak_timeout,
        )
        self.state = PoolState("machine", self.limits, rng=random.Random(seed))
        # The model's own copy of the limits (the core's Limits object is the core's business).
        self.max_waiting = max_waiting
        self.max_connecting = max_connecting
        self.max_lifetime = max_lifetime
        self.idle_timeout = idle_timeout
        self.leak_timeout = leak_timeout
        self.check = check
        self.check_idle_after = 0.5
        # model
        self.steps = 0
        self.now = 0.0
        self.max_size = max_size
        self.min_size = min_size
        self.cap = max_size  # size may exceed max_size only after a shrink, and never grows
        self.closed = False
        self.generation = 0
        self.fill_paused = False
        self.size = 0
        self.next_n = 0
        self.info: dict[Entry[Conn], Info] = {}
        self.reasons: dict[Entry[Conn], set[str]] = {}
        # owners (each live entry in exactly one of these)
        self.idle: list[Entry[Conn]] = []  # right end = most recently returned
        self.handed: list[tuple[MWaiter, Entry[Conn]]] = []  # woken waiter owns it
        self.checking: list[Entry[Conn]] = []  # taken by lend_or_enqueue, being checked
        self.borrowers: list[tuple[Entry[Conn], Conn]] = []  # lent; the model holds the conn
        self.resetting: list[tuple[Entry[Conn], Conn]] = []  # taken back, being reset
        self.retired: list[Entry[Conn]] = []  # waiting for take_retired()
        self.closing: list[Entry[Conn]] = []  # the shell is closing it
        self.orphans: list[tuple[Entry[Conn], Conn]] = []  # lent when take_lent() ran
        # waiters and workers
        self.queue: list[MWaiter] = []  # queued in the core, oldest first
        self.gone: list[MWaiter] = []  # left the queue owning nothing; will still withdraw
        self.drains: list[DrainWaiter] = []
        self.workers: list[int | None] = []  # None: between attempts; else claimed generation
        # counters
        self.acquired = 0
        self.waited = 0
        self.connects = 0
        self.connect_errors = 0
        self.closed_count = 0
        self.check_failures = 0
        self.reset_failures = 0
        self.reclaimed = 0
        self.timeouts = 0
        # Start with up to ``prefill`` idle connections, opened and returned the usual way.
        for _ in range(prefill):
            self.acquire()
        while self.borrowers:
            self.release(0)

    # ------------------------------------------------------------------ model helpers

    @property
    def pool(self) -> PoolState[Conn]:
        assert self.state is not None
        return self.state

    def connecting(self) -> int:
        return sum(1 for g in self.workers if g is not None)

    def expired(self, entry: Entry[Conn]) -> bool:
        info = self.info[entry]
        if info.generation != self.generation:
            return True
        # Retirement by age keeps the pool within max_connecting of min_size (NET-14).
        return (
            info.expires is not None
            and info.expires <= self.now
            and self.size > self.min_size - self.max_connecting
        )

    def expiry_reason(self, entry: Entry[Conn]) -> str:
        return "expired" if self.info[entry].generation != self.generation else "lifetime"

    def needs_check(self, entry: Entry[Conn]) -> bool:
        check = self.check
        if check == "idle":
            return self.now - self.info[entry].idle_since > self.check_idle_after
        return check == "always"

    def retire(self, entry: Entry[Conn], *reasons: str) -> None:
        self.retired.append(entry)
        self.reasons[entry] = set(reasons)
        self.size -= 1

    def connect_wanted(self) -> bool:
        return (
            not self.closed
            and self.size < self.max_size
            and (
                len(self.queue) > self.connecting()
                or (self.size < self.min_size and not self.fill_paused)
            )
        )

    def hand_or_idle(self, entry: Entry[Conn]) -> None:
        """The core's hand-over: the oldest live waiter gets it, else the idle list."""
        while self.queue:
            waiter = self.queue.pop(0)
            if waiter.alive:
                self.handed.append((waiter, entry))
                return
            self.gone.append(waiter)
        self.idle.append(entry)

    def model_give_back(self, entry: Entry[Conn]) -> None:
        """``entry`` (already removed from its holder, still counted in size) comes back."""
        if self.closed:
            self.retire(entry, "pool closed")
        elif self.size > self.max_size:
            self.retire(entry, "resized")
        elif self.expired(entry):
            self.retire(entry, self.expiry_reason(entry))
        else:
            self.info[entry].idle_since = self.now
            self.hand_or_idle(entry)

    def lent(self, entry: Entry[Conn], conn: Conn) -> None:
        assert conn.n == self.info[entry].n
        info = self.info[entry]
        info.lent_since = self.now
        info.leak_reported = False
        self.borrowers.append((entry, conn))
        self.acquired += 1

    @staticmethod
    def pick(items: list[Any], i: int) -> Any:
        return items.pop(i % len(items))

    # ------------------------------------------------------------------ clock

    @rule(dt=st.sampled_from([0.1, 0.4, 1.0, 2.5, 7.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    # ------------------------------------------------------------------ acquire

    @rule()
    def acquire_fast(self) -> None:
        expected: Entry[Conn] | None = None
        while self.idle:
            top = self.idle[-1]
            if self.expired(top):
                self.idle.pop()
                self.retire(top, self.expiry_reason(top))
                continue
            if not self.needs_check(top):
                expected = self.idle.pop()
            break
        got = self.pool.try_lend(self.now, None)
        if expected is None:
            assert got is None
        else:
            assert got is not None
            entry, conn = got
            assert entry is expected
            self.lent(entry, conn)

    @rule(may_wait=st.booleans())
    def acquire_queue(self, may_wait: bool) -> None:
        made: list[MWaiter] = []

        def make() -> MWaiter:
            waiter = MWaiter()
            made.append(waiter)
            return waiter

        if self.closed:
            try:
                self.pool.lend_or_enqueue(self.now, make, may_wait=may_wait)
            except PoolClosed:
                assert made == []
                return
            raise AssertionError("lend_or_enqueue on a closed pool did not raise PoolClosed")
        expected: Entry[Conn] | None = None
        while self.idle:
            top = self.idle.pop()
            if self.expired(top):
                self.retire(top, self.expiry_reason(top))
                continue
            expected = top
            break
        max_waiting = self.max_waiting
        refuse = (
            expected is None
            and may_wait
            and max_waiting is not None
            and len(self.queue) >= max_waiting
        )
        try:
            got = self.pool.lend_or_enqueue(self.now, make, may_wait=may_wait)
        except TooManyWaiters:
            assert refuse, "TooManyWaiters below max_waiting"
            assert made == []
            return
        assert not refuse, "max_waiting live waiters queued, yet one more was accepted"
        if expected is not None:
            assert got is expected
            self.checking.append(expected)
        elif not may_wait:
            assert got is None
        else:
            assert len(made) == 1
            assert got is made[0]
            assert made[0].enqueued_at == self.now
            self.queue.append(made[0])
            self.waited += 1

    @rule()
    def acquire_in_line(self) -> None:
        """The shells' contended acquire: queue only when nothing is idle (what is idle is
        left for ``lend_or_enqueue``)."""
        waiter = MWaiter()
        if self.closed:
            with pytest.raises(PoolClosed):
                self.pool.queue(self.now, waiter)
            return
        refuse = (
            not self.idle and self.max_waiting is not None and len(self.queue) >= self.max_waiting
        )
        try:
            queued = self.pool.queue(self.now, waiter)
        except TooManyWaiters:
            assert refuse, "TooManyWaiters below max_waiting"
            return
        assert not refuse, "max_waiting live waiters queued, yet one more was accepted"
        assert queued == (not self.idle)
        if queued:
            assert waiter.enqueued_at == self.now
            self.queue.append(waiter)
            self.waited += 1

    @precondition(lambda self: self.checking)
    @rule(i=st.integers(0, 7), ok=st.booleans())
    def finish_check(self, i: int, ok: bool) -> None:
        entry = self.pick(self.checking, i)
        assert self.pool.needs_check(entry, self.now) == self.needs_check(entry)
        if ok:
            self.lent(entry, self.pool.lend(entry, self.now, None))
        else:
            self.pool.discard(entry, check_failed=True)
            self.retire(entry, "check failed")
            self.check_failures += 1

    @precondition(lambda self: self.handed)
    @rule(i=st.integers(0, 7))
    def waiter_takes_connection(self, i: int) -> None:
        waiter, entry = self.pick(self.handed, i)
        assert waiter.entry is entry
        assert waiter.wakes >= 1
        self.lent(entry, self.pool.lend(entry, self.now, None))

    @precondition(lambda self: self.handed)
    @rule(i=st.integers(0, 7))
    def handed_waiter_cancelled(self, i: int) -> None:
        """Woken with a connection, but cancelled before it used it: pass it on."""
        waiter, entry = self.pick(self.handed, i)
        waiter.alive = False
        assert self.pool.withdraw(waiter) is entry
        assert waiter.entry is None
        self.pool.give_back(entry, self.now, reusable=True)
        self.model_give_back(entry)

    @precondition(lambda self: any(w.alive for w in self.queue))
    @rule(i=st.integers(0, 7))
    def waiter_times_out(self, i: int) -> None:
        """Its deadline passed: from now on wake() fails; it has not withdrawn yet."""
        live = [w for w in self.queue if w.alive]
        live[i % len(live)].alive = False

    @precondition(lambda self: self.queue or self.gone)
    @rule(i=st.integers(0, 15), timed_out=st.booleans())
    def waiter_withdraws(self, i: int, timed_out: bool) -> None:
        pool = self.queue + self.gone
        waiter = pool[i % len(pool)]
        if waiter in self.queue:
            self.queue.remove(waiter)
        else:
            self.gone.remove(waiter)
        waiter.alive = False
        assert self.pool.withdraw(waiter) is None
        assert waiter.entry is None
        if timed_out and waiter.error is None:
            error = self.pool.timeout_error(waiter, 1.0)
            assert error.phase in ("wait", "connect")
            self.timeouts += 1

    # ------------------------------------------------------------------ release

    @precondition(lambda self: self.borrowers or self.orphans)
    @rule(i=st.integers(0, 15), reset=st.booleans(), discard=st.booleans())
    def put_back(self, i: int, reset: bool, discard: bool) -> None:
        n = len(self.borrowers)
        k = i % (n + len(self.orphans))
        if k >= n:  # lent before take_lent(): the pool no longer counts it
            entry, conn = self.orphans.pop(k - n)
            assert self.pool.put_back(entry, conn, self.now, reset=reset) == GONE
            assert entry.where is Where.GONE
            return
        entry, conn = self.borrowers.pop(k)
        outcome = self.pool.put_back(entry, conn, self.now, reset=reset, discard=discard)
        keeps = not (self.closed or self.size > self.max_size or self.expired(entry))
        if discard:
            assert outcome == BACK
            self.retire(entry, "discarded")
        elif reset and keeps:
            assert outcome == RESET
            assert entry.where is Where.BUSY
            self.resetting.append((entry, conn))
        else:
            assert outcome == BACK
            self.model_give_back(entry)

    @precondition(lambda self: self.resetting)
    @rule(i=st.integers(0, 7), outcome=st.sampled_from(["ok", "broken", "reset failed"]))
    def give_back(self, i: int, outcome: str) -> None:
        entry, _conn = self.pick(self.resetting, i)
        if outcome == "ok":
            self.pool.give_back(entry, self.now, reusable=True)
            self.model_give_back(entry)
        elif outcome == "broken":
            self.pool.give_back(entry, self.now, reusable=False)
            self.retire(entry, "broken")
        else:
            self.pool.discard(entry, reset_failed=True)
            self.retire(entry, "reset failed")
            self.reset_failures += 1

    @precondition(lambda self: self.borrowers)
    @rule(i=st.integers(0, 7))
    def borrower_forgets_connection(self, i: int) -> None:
        """The borrower drops a lent connection without releasing it."""
        entry = self.pick(self.borrowers, i)[0]  # the model's only strong reference goes
        gc.collect(0)  # Conn has no cycles: the refcount drop already fired the callback
        assert self.pool.collect_reclaimed() == [entry]
        assert entry.where is Where.GONE
        del self.info[entry]
        self.size -= 1
        self.reclaimed += 1
        self.closed_count += 1
        assert self.pool.collect_reclaimed() == []

    # ------------------------------------------------------------------ connect

    @rule()
    def start_worker(self) -> None:
        expected = len(self.workers) < self.max_connecting and self.connect_wanted()
        if expected:
            assert self.pool.wants_worker()
        assert self.pool.begin_worker() is expected
        if expected:
            self.workers.append(None)

    @precondition(lambda self: None in self.workers)
    @rule()
    def claim(self) -> None:
        wanted = self.connect_wanted()
        got = self.pool.claim_connect()
        index = self.workers.index(None)
        if wanted:
            assert got == self.generation
            self.workers[index] = got
            self.size += 1
        else:
            assert got is None  # and the worker has ended
            del self.workers[index]

    @precondition(lambda self: None in self.workers)
    @rule()
    def worker_cancelled(self) -> None:
        self.workers.remove(None)
        self.pool.end_worker()

    def connecting_index(self, i: int) -> int:
        indexes = [k for k, g in enumerate(self.workers) if g is not None]
        return indexes[i % len(indexes)]

    @precondition(lambda self: any(g is not None for g in self.workers))
    @rule(i=st.integers(0, 3))
    def connect_ok(self, i: int) -> None:
        index = self.connecting_index(i)
        generation = self.workers[index]
        assert generation is not None
        self.workers[index] = None
        self.next_n += 1
        entry = self.pool.connect_succeeded(Conn(self.next_n), self.now, generation)
        lifetime = self.max_lifetime
        if lifetime is None:
            assert entry.expires is None
        else:
            assert entry.expires is not None
            assert self.now + lifetime * (1 - LIFETIME_JITTER) <= entry.expires
            assert entry.expires <= self.now + lifetime
        self.info[entry] = Info(self.next_n, generation, entry.expires, self.now)
        self.connects += 1
        self.fill_paused = False
        if self.closed:
            self.retire(entry, "pool closed")
        elif generation != self.generation:
            self.retire(entry, "expired")
        elif self.size > self.max_size:
            self.retire(entry, "expired", "resized")
        else:
            self.hand_or_idle(entry)

    @precondition(lambda self: any(g is not None for g in self.workers))
    @rule(i=st.integers(0, 3), permanent=st.booleans())
    def connect_fails(self, i: int, permanent: bool) -> None:
        index = self.connecting_index(i)
        error: Exception = ConnectError("bad password") if permanent else OSError("refused")
        self.pool.connect_failed(error, self.now, permanent=permanent)
        self.size -= 1
        self.connect_errors += 1
        if permanent:
            self.fill_paused = True
            for waiter in self.queue:
                if waiter.alive:
                    assert waiter.error is error
                    assert waiter.wakes == 1
                assert waiter.entry is None
            self.gone.extend(self.queue)
            self.queue = []
            del self.workers[index]
            self.pool.end_worker()
        else:
            self.workers[index] = None

    # ------------------------------------------------------------------ close and maintenance

    @rule()
    def take_retired(self) -> None:
        got = self.pool.take_retired()
        assert got == self.retired
        self.closing.extend(got)
        self.retired = []

    @precondition(lambda self: self.closing)
    @rule(i=st.integers(0, 7))
    def close_done(self, i: int) -> None:
        entry = self.pick(self.closing, i)
        self.pool.close_done(entry)
        assert entry.conn is None
        del self.info[entry]
        del self.reasons[entry]
        self.closed_count += 1

    # Closing ends most of the interesting traffic, so it is allowed only after a while.
    @precondition(lambda self: self.steps >= 20)
    @rule()
    def close(self) -> None:
        was_closed = self.closed
        before = [(w, w.wakes) for w in self.queue]
        self.pool.close()
        if was_closed:
            assert self.queue == []
            return
        self.closed = True
        for waiter, wakes in before:
            assert waiter.wakes == wakes + 1
            assert waiter.entry is None
            if waiter.alive:
                assert isinstance(waiter.error, PoolClosed)
        self.gone.extend(self.queue)
        self.queue = []
        while self.idle:
            self.retire(self.idle.pop(), "pool closed")

    @rule()
    def add_drain_waiter(self) -> None:
        waiter = DrainWaiter(self.pool)
        self.drains.append(waiter)
        self.pool.add_drain_waiter(waiter)

    @precondition(lambda self: self.closed)
    @rule()
    def take_lent(self) -> None:
        taken = self.pool.take_lent()
        assert sorted((id(e), id(c)) for e, c in taken) == sorted(
            (id(e), id(c)) for e, c in self.borrowers
        )
        for entry, _conn in self.borrowers:
            del self.info[entry]
        self.size -= len(self.borrowers)
        self.closed_count += len(self.borrowers)
        self.orphans.extend(self.borrowers)
        self.borrowers = []

    @rule()
    def expire(self) -> None:
        self.pool.expire()
        self.generation += 1
        while self.idle:
            self.retire(self.idle.pop(), "expired")

    @rule(max_size=st.integers(1, 4), min_size=st.integers(0, 4))
    def resize(self, max_size: int, min_size: int) -> None:
        min_size = min(min_size, max_size)
        self.pool.resize(max_size, min_size)
        self.max_size, self.min_size = max_size, min_size
        while self.size > max_size and self.idle:
            self.retire(self.idle.pop(0), "resized")
        self.cap = max(max_size, self.size)

    @rule(dt=st.sampled_from([0.0, 1.0, 4.0, 10.0]))
    def sweep(self, dt: float) -> None:
        self.now += dt
        leaks = self.pool.sweep(self.now)
        self.fill_paused = False
        idle_timeout = self.idle_timeout
        kept: list[Entry[Conn]] = []
        for entry in self.idle:
            if self.expired(entry):
                self.retire(entry, self.expiry_reason(entry))
            elif (
                idle_timeout is not None
                and self.info[entry].idle_since <= self.now - idle_timeout
                and self.size > self.min_size
            ):
                self.retire(entry, "idle")
            else:
                kept.append(entry)
        self.idle = kept
        expected: list[Entry[Conn]] = []
        leak_timeout = self.leak_timeout
        if leak_timeout is not None:
            for entry, _conn in self.borrowers:
                info = self.info[entry]
                if not info.leak_reported and info.lent_since <= self.now - leak_timeout:
                    info.leak_reported = True
                    expected.append(entry)
        assert sorted(e.id for e in leaks) == sorted(e.id for e in expected)

    # ------------------------------------------------------------------ composites
    # Common multi-step paths as one rule, so random runs reach busy pools more often.

    @rule(outcome=st.sampled_from(["ok", "ok", "transient", "permanent"]))
    def open_connection(self, outcome: str = "ok") -> None:
        """A connect worker's round: start (if wanted), claim a slot, open or fail."""
        self.start_worker()
        if None in self.workers:
            self.claim()
        if any(g is not None for g in self.workers):
            if outcome == "ok":
                self.connect_ok(0)
            else:
                self.connect_fails(0, permanent=outcome == "permanent")

    @rule(patient=st.booleans(), outcome=st.sampled_from(["ok", "ok", "ok", "permanent"]))
    def acquire(self, patient: bool = True, outcome: str = "ok") -> None:
        """What a shell's acquire does: fast path, else take idle or queue, then connect;
        an impatient caller gives up if that did not get it a connection."""
        lent = len(self.borrowers)
        self.acquire_fast()
        if len(self.borrowers) > lent or self.closed:
            return
        queued = len(self.queue)
        self.acquire_queue(may_wait=True)
        if self.checking:
            self.finish_check(len(self.checking) - 1, ok=True)
            return
        mine = self.queue[-1] if len(self.queue) > queued else None
        self.open_connection(outcome)
        if self.handed:
            self.waiter_takes_connection(0)
        if not patient and mine is not None and mine in self.queue:
            self.waiter_withdraws(self.queue.index(mine), timed_out=True)

    @precondition(lambda self: self.borrowers)
    @rule(i=st.integers(0, 7))
    def release(self, i: int) -> None:
        entry, conn = self.borrowers[i % len(self.borrowers)]
        resetting = len(self.resetting)
        self.put_back(self.borrowers.index((entry, conn)), reset=True, discard=False)
        if len(self.resetting) > resetting:
            self.give_back(len(self.resetting) - 1, "ok")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def accounting(self) -> None:
        if self.state is None:
            return
        self.steps += 1
        state = self.state
        snap = state.snapshot()
        in_use = len(self.handed) + len(self.checking) + len(self.borrowers) + len(self.resetting)
        connecting = self.connecting()
        assert self.size == len(self.idle) + in_use + connecting
        assert snap.size == state.size == self.size
        assert snap.idle + snap.in_use + snap.connecting == snap.size
        assert (snap.idle, snap.in_use, snap.connecting) == (len(self.idle), in_use, connecting)
        assert snap.waiting == len(self.queue)
        assert (snap.max_size, snap.min_size) == (self.max_size, self.min_size)
        # size <= max_size, except after a shrink: then it must not grow until back under.
        assert snap.size <= self.cap
        self.cap = self.max_size if snap.size <= self.max_size else min(self.cap, snap.size)
        # counters
        assert state.closing == len(self.retired) + len(self.closing)
        assert state.workers == len(self.workers)
        assert state.fill_paused == self.fill_paused
        assert state.generation == self.generation
        assert state.closed == self.closed
        assert (
            snap.acquired,
            snap.waited,
            snap.connects,
            snap.connect_errors,
            snap.closed,
            snap.check_failures,
            snap.reset_failures,
            snap.reclaimed,
            snap.timeouts,
        ) == (
            self.acquired,
            self.waited,
            self.connects,
            self.connect_errors,
            self.closed_count,
            self.check_failures,
            self.reset_failures,
            self.reclaimed,
            self.timeouts,
        )
        for name in (
            "size",
            "idle",
            "in_use",
            "connecting",
            "waiting",
            "acquired",
            "waited",
            "timeouts",
            "connects",
            "connect_errors",
            "closed",
            "check_failures",
            "reset_failures",
            "reclaimed",
        ):
            assert getattr(snap, name) >= 0, name
        assert state.closing >= 0
        assert state.workers >= 0
        if self.closed:
            assert snap.waiting == 0, "a waiter was left queued after close()"

    @invariant()
    def one_owner(self) -> None:
        if self.state is None:
            return
        state = self.state
        holders: list[tuple[str, list[Entry[Conn]]]] = [
            ("idle", self.idle),
            ("waiter", [e for _, e in self.handed]),
            ("checking", self.checking),
            ("borrower", [e for e, _ in self.borrowers]),
            ("resetting", [e for e, _ in self.resetting]),
            ("retired", self.retired),
            ("closing", self.closing),
        ]
        owned = [e for _, entries in holders for e in entries]
        assert len(owned) == len(set(owned)), "an entry has two owners"
        assert set(owned) == set(self.info), "an entry has no owner"
        where = {
            "idle": Where.IDLE,
            "waiter": Where.BUSY,
            "checking": Where.BUSY,
            "borrower": Where.LENT,
            "resetting": Where.BUSY,
            "retired": Where.GONE,
            "closing": Where.GONE,
        }
        for name, entries in holders:
            for entry in entries:
                assert entry.where is where[name], (entry, name)
        for entry, _conn in self.orphans:
            assert entry.where is Where.GONE
        # The core's own structures agree with the model.
        assert list(state.idle) == self.idle
        assert state.retired == self.retired
        lent = list(state.lent.values())
        assert sorted(e.id for e in lent) == sorted(e.id for e, _ in self.borrowers)
        assert not {id(e) for e in state.idle} & {id(e) for e in lent}, "idle and lent"
        for entry, conn in self.borrowers:
            assert entry.conn is None  # held weakly while lent
            assert entry.live_conn() is conn
            assert state.find_lent(conn) is entry
        for entry in self.idle:
            assert entry.generation == self.generation
            assert entry.idle_since == self.info[entry].idle_since
        for entry in self.retired + self.closing:
            assert entry.reason in self.reasons[entry], (entry.reason, self.reasons[entry])
        # Hand-over: a returned connection goes to a waiter before the idle list.
        if state.idle:
            assert state.snapshot().waiting == 0
        for waiter, entry in self.handed:
            assert waiter.entry is entry
        for waiter in self.queue:
            assert waiter.entry is None

    @invariant()
    def drain(self) -> None:
        if self.state is None:
            return
        drained = self.closed and self.size == 0 and not self.retired and not self.closing
        for waiter in self.drains:
            if waiter.wakes:
                assert waiter.wakes == 1
                assert waiter.seen == (0, 0, True)
            else:
                assert not drained, "the pool drained but a drain waiter was not woken"
        self.drains = [w for w in self.drains if not w.wakes]


PoolMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, derandomize=True, database=None
)
TestPoolStateMachine = PoolMachine.TestCase
