"""Cancellation of ``AsyncPool.acquire`` and release at every await point.

reliability.md section 3.1: CAN-1 (queued waiters), CAN-2 (cancel at the hand-off), CAN-3
(cancel/timeout while the pool connects for the caller), CAN-6 (cancel during reset), CAN-7
(cancel during the pre-lend check), ``asyncio.timeout`` / ``asyncio.wait_for`` around acquire,
and a seeded fuzz that cancels thousands of acquires at random moments. After every scenario
the design.md section 7 invariants are checked with ``settle()`` and the pool must still lend
``max_size`` connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable
from typing import Any

import pytest

from fakes import AsyncFakeManager, FakeConnection, new_apool, run, settle, until
from tidepool import AsyncPool, PoolListener, PoolTimeout

Pool = AsyncPool[FakeConnection]


async def lend_all_at_once(pool: Pool, n: int) -> None:
    """Capacity check: ``n`` connections can be held simultaneously, all distinct, open and
    clean."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.acquire(timeout=5)) for _ in range(n)]
        assert len({c.id for c in conns}) == n
        assert all(not c.closed and not c.dirty for c in conns)
        assert pool.stats().in_use == n


async def finish(pool: Pool, manager: AsyncFakeManager) -> None:
    """Invariants, close, and no server-side session left behind."""
    await settle(pool, manager)
    await pool.aclose()
    assert not manager.live, manager.live


# ---------------------------------------------------------------------------- CAN-1


def test_can1_cancel_queued_waiters_in_reverse_order() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=3, check="never")
        holders = [await pool.acquire() for _ in range(3)]
        got: list[FakeConnection] = []

        async def waiter() -> None:
            async with pool.acquire(timeout=30) as conn:
                got.append(conn)

        tasks = [asyncio.create_task(waiter()) for _ in range(6)]
        await until(lambda: pool.stats().waiting == 6)

        for remaining, task in zip(range(5, -1, -1), reversed(tasks), strict=True):
            task.cancel()
            await asyncio.sleep(0)  # one loop step: the waiter runs its cancellation
            assert task.done(), "a cancelled waiter must leave at once"
            assert task.cancelled()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.stats().waiting == remaining

        s = pool.stats()
        assert (s.waiting, s.in_use, s.size, s.idle) == (0, 3, 3, 0)
        for conn in holders:
            await pool.release(conn)
        s = pool.stats()
        assert (s.waiting, s.idle, s.in_use, s.size) == (0, 3, 0, 3)
        assert got == [], "a connection went to a cancelled waiter"
        assert manager.opened == 3
        await settle(pool, manager)
        await lend_all_at_once(pool, 3)
        await finish(pool, manager)

    run(main)


# ---------------------------------------------------------------------------- CAN-2


@pytest.mark.parametrize("reset", [True, False])
def test_can2_cancel_at_handoff_from_release_passes_connection_on(reset: bool) -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=2, check="never", reset=reset)
        c1 = await pool.acquire()
        c2 = await pool.acquire()
        got: dict[str, FakeConnection] = {}
        may_leave = asyncio.Event()

        async def waiter(name: str) -> None:
            async with pool.acquire(timeout=30) as conn:
                got[name] = conn
                await may_leave.wait()

        w1 = asyncio.create_task(waiter("w1"))
        await until(lambda: pool.stats().waiting == 1)
        w2 = asyncio.create_task(waiter("w2"))
        await until(lambda: pool.stats().waiting == 2)

        # The release hands c1 to w1 (the oldest waiter) without yielding to the loop...
        await pool.release(c1)
        assert pool.stats().waiting == 1, "c1 was not handed to the oldest waiter"
        assert not w1.done()
        assert got == {}
        # ... and w1 is cancelled in the same loop iteration, before it ever runs.
        w1.cancel()

        with pytest.raises(asyncio.CancelledError):
            await w1
        assert w1.cancelled(), "the cancellation was swallowed"
        await until(lambda: "w2" in got)
        assert got["w2"] is c1, "the connection w1 abandoned must go to the next waiter"
        assert "w1" not in got
        may_leave.set()
        await w2
        await pool.release(c2)
        s = pool.stats()
        assert (s.size, s.idle, s.waiting) == (2, 2, 0)
        await settle(pool, manager)
        await lend_all_at_once(pool, 2)
        await finish(pool, manager)

    run(main)


def test_can2_cancel_at_handoff_single_waiter_returns_connection_to_idle() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never")
        c1 = await pool.acquire()
        got: list[FakeConnection] = []

        async def waiter() -> None:
            async with pool.acquire(timeout=30) as conn:
                got.append(conn)

        w1 = asyncio.create_task(waiter())
        await until(lambda: pool.stats().waiting == 1)
        await pool.release(c1)
        assert pool.stats().waiting == 0  # handed to w1
        assert pool.stats().idle == 0
        w1.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w1
        assert got == []
        s = pool.stats()
        assert (s.size, s.idle, s.in_use) == (1, 1, 0), s
        assert not c1.closed
        await settle(pool, manager)
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


def test_can2_cancel_at_handoff_of_a_fresh_connection() -> None:
    """The connect worker hands a new connection to the oldest waiter; a listener cancels
    that waiter in the very same step (before the waiter runs)."""

    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "hang"  # until both waiters are queued
        tasks: dict[str, asyncio.Task[None]] = {}
        seen: list[int] = []

        class CancelFirstOnConnect(PoolListener):
            def on_connect(self, pool: str, connection_id: int, seconds: float) -> None:
                if not seen:
                    seen.append(pool_ref.stats().waiting)
                    tasks["w1"].cancel()

        pool_ref = pool = new_apool(
            manager, max_size=1, check="never", listeners=[CancelFirstOnConnect()]
        )
        got: dict[str, FakeConnection] = {}

        async def waiter(name: str) -> None:
            async with pool.acquire(timeout=30) as conn:
                got[name] = conn

        tasks["w1"] = asyncio.create_task(waiter("w1"))
        await until(lambda: pool.stats().waiting == 1)
        tasks["w2"] = asyncio.create_task(waiter("w2"))
        await until(lambda: pool.stats().waiting == 2)
        assert pool.stats().connecting == 1  # max_size=1: one connect for both
        manager.behaviour.connect = "ok"
        manager.release_hangs()
        with pytest.raises(asyncio.CancelledError):
            await tasks["w1"]
        await tasks["w2"]
        assert seen == [1], "the fresh connection should have been handed to w1 first"
        assert "w1" not in got
        assert got["w2"].id == next(iter(manager.live)).id
        assert manager.opened == 1
        await settle(pool, manager)
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


# ---------------------------------------------------------------------------- CAN-3


def test_can3_wait_for_fires_while_connecting_keeps_the_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect_delay = 0.1
        pool = new_apool(manager, max_size=2, check="never")
        with pytest.raises(TimeoutError) as info:
            await asyncio.wait_for(pool.acquire(), 0.02)
        assert not isinstance(info.value, PoolTimeout)
        assert pool.stats().waiting == 0
        await settle(pool, manager)
        s = pool.stats()
        # The connection opened for the departed caller was kept, not orphaned.
        assert (s.size, s.idle) == (1, 1), s
        assert manager.opened == 1
        await lend_all_at_once(pool, 2)
        await finish(pool, manager)

    run(main)


def test_can3_pool_timeout_while_connecting_keeps_the_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect_delay = 0.1
        pool = new_apool(manager, max_size=2, check="never")
        with pytest.raises(PoolTimeout) as info:
            async with pool.acquire(timeout=0.02):
                pass
        assert info.value.phase == "connect"
        await settle(pool, manager)
        assert pool.stats().idle == 1
        await lend_all_at_once(pool, 2)
        await finish(pool, manager)

    run(main)


def test_can3_task_cancelled_while_connecting() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect_delay = 0.05
        pool = new_apool(manager, max_size=1, check="never")

        async def borrower() -> None:
            async with pool.acquire(timeout=30):
                raise AssertionError("must not be lent after cancellation")

        task = asyncio.create_task(borrower())
        await until(lambda: pool.stats().connecting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().waiting == 0
        await settle(pool, manager)
        s = pool.stats()
        assert (s.size, s.idle, s.connecting) == (1, 1, 0), s
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


def test_can3_random_budgets_leave_no_orphan_connection() -> None:
    async def main() -> None:
        rng = random.Random(3)
        manager = AsyncFakeManager()
        manager.behaviour.connect_delay = 0.004
        pool = new_apool(manager, max_size=3, check="never")
        outcomes = {"ok": 0, "timeout": 0}

        async def one(budget: float) -> None:
            try:
                async with asyncio.timeout(budget):
                    async with pool.acquire(timeout=30) as conn:
                        assert not conn.closed
                        await asyncio.sleep(0.001)
                outcomes["ok"] += 1
            except TimeoutError:
                outcomes["timeout"] += 1

        for _ in range(15):
            pool.expire()  # every round connects afresh
            await asyncio.gather(*(one(rng.uniform(0.0, 0.008)) for _ in range(6)))
            check = pool.stats()
            assert check.size <= 3
        assert outcomes["ok"] + outcomes["timeout"] == 90
        assert outcomes["timeout"] > 0
        await settle(pool, manager)
        await lend_all_at_once(pool, 3)
        await finish(pool, manager)

    run(main)


# ---------------------------------------------------------------------------- CAN-6


def test_can6_cancel_during_reset_closes_the_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never")
        manager.behaviour.reset_delay = 0.2
        lent: list[FakeConnection] = []

        async def borrower() -> None:
            async with pool.acquire() as conn:
                lent.append(conn)
                conn.dirty = True  # an open transaction the reset would roll back

        task = asyncio.create_task(borrower())
        await until(lambda: manager.calls["reset"] == 1)
        assert pool.stats().in_use == 1  # being reset counts as in use
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(pool, manager)
        s = pool.stats()
        assert (s.size, s.idle, s.in_use) == (0, 0, 0), s
        assert lent[0].closed, "an interrupted reset must close the connection"
        manager.behaviour.reset_delay = 0.0
        async with pool.acquire(timeout=5) as conn:
            assert conn is not lent[0]
            assert not conn.dirty
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


def test_can6_timeout_scope_expiring_during_reset() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=2, check="never")
        manager.behaviour.reset_delay = 0.3
        lent: list[FakeConnection] = []

        async def borrow() -> None:
            async with asyncio.timeout(0.05):
                async with pool.acquire() as conn:
                    lent.append(conn)
                    conn.dirty = True

        with pytest.raises(TimeoutError):
            await borrow()
        await settle(pool, manager)
        assert lent[0].closed
        assert pool.stats().size == 0
        manager.behaviour.reset_delay = 0.0
        await lend_all_at_once(pool, 2)
        await finish(pool, manager)

    run(main)


def test_can6_borrower_cancelled_mid_query_gives_back_a_reset_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never")
        manager.behaviour.reset_delay = 0.01
        lent: list[FakeConnection] = []

        async def borrower() -> None:
            async with pool.acquire() as conn:
                lent.append(conn)
                conn.dirty = True
                await asyncio.sleep(10)  # the "query"

        task = asyncio.create_task(borrower())
        await until(lambda: bool(lent))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelled once, in the body: the release still ran its reset to the end.
        await settle(pool, manager)
        conn = lent[0]
        assert not conn.closed
        assert not conn.dirty
        assert pool.stats().idle == 1
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


# ---------------------------------------------------------------------------- CAN-7


def test_can7_cancel_during_check() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=2, check="always")
        async with pool.acquire() as first:
            pass
        assert manager.calls["check"] == 1
        manager.behaviour.check_delay = 2.0

        async def borrower() -> None:
            async with pool.acquire(timeout=30):
                raise AssertionError("must not be lent after cancellation")

        task = asyncio.create_task(borrower())
        await until(lambda: manager.calls["check"] == 2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Promptly: long before the 2 s check would have finished.
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.05)
        assert manager.calls["check"] == 2, "the check loop went on after the cancellation"
        await settle(pool, manager)
        # Its state unknown, the connection was closed, and its slot freed.
        assert first.closed
        assert pool.stats().size == 0
        manager.behaviour.check_delay = 0.0
        await lend_all_at_once(pool, 2)
        await finish(pool, manager)

    run(main)


@pytest.mark.parametrize("how", ["wait_for", "timeout", "pool_timeout"])
def test_can7_deadline_during_check(how: str) -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="always")
        async with pool.acquire():
            pass
        manager.behaviour.check_delay = 2.0

        async def attempt() -> None:
            if how == "wait_for":
                await asyncio.wait_for(pool.acquire(), 0.05)
            elif how == "timeout":
                async with asyncio.timeout(0.05), pool.acquire():
                    pass
            else:
                async with pool.acquire(timeout=0.05):
                    pass

        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await attempt()
        assert time.monotonic() - started < 1.0
        if how == "pool_timeout":
            assert isinstance(info.value, PoolTimeout)
            assert info.value.phase == "check"
        else:
            assert not isinstance(info.value, PoolTimeout)
        assert manager.calls["check"] == 2
        await settle(pool, manager)
        assert pool.stats().size == 0
        manager.behaviour.check_delay = 0.0
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


# ---------------------------------------------------------------------------- timeout scopes


@pytest.mark.parametrize("how", ["wait_for", "timeout"])
def test_asyncio_deadline_around_a_queued_acquire(how: str) -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never")
        held = await pool.acquire()

        async def attempt() -> None:
            if how == "wait_for":
                await asyncio.wait_for(pool.acquire(timeout=30), 0.05)
            else:
                async with asyncio.timeout(0.05), pool.acquire(timeout=30):
                    pass

        with pytest.raises(TimeoutError) as info:
            await attempt()
        assert not isinstance(info.value, PoolTimeout)
        s = pool.stats()
        assert (s.waiting, s.in_use, s.timeouts) == (0, 1, 0), s
        await pool.release(held)
        assert pool.stats().idle == 1
        # wait_for with enough time returns the connection itself.
        conn = await asyncio.wait_for(pool.acquire(), 1.0)
        assert conn is held
        await pool.release(conn)
        await settle(pool, manager)
        await lend_all_at_once(pool, 1)
        await finish(pool, manager)

    run(main)


def test_cancelled_waiter_while_closing_pool_does_not_hang_close() -> None:
    """asyncpg#547: aclose() must not hang after a cancelled acquire(timeout=...)."""

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never")
        held = await pool.acquire()

        async def get() -> FakeConnection:
            return await pool.acquire(timeout=5.0)

        task = asyncio.create_task(get())
        await until(lambda: pool.stats().waiting == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await pool.release(held)
        await settle(pool, manager)
        await asyncio.wait_for(pool.aclose(), 5.0)
        assert not manager.live

    run(main)


# ---------------------------------------------------------------------------- fuzz


async def _fuzz_round(
    pool: Pool,
    manager: AsyncFakeManager,
    rng: random.Random,
    n: int,
    in_use: set[int],
    outcomes: dict[str, int],
) -> None:
    b = manager.behaviour
    b.connect_delay = rng.choice([0.0, rng.uniform(0.0002, 0.002)])
    b.check_delay = rng.choice([0.0, rng.uniform(0.0002, 0.002)])
    b.reset_delay = rng.choice([0.0, rng.uniform(0.0002, 0.002)])
    if rng.random() < 0.5:
        pool.expire()  # force reconnects: cancellations then also hit connects
    loop = asyncio.get_running_loop()

    async def borrow(kind: int, budget: float, hold: float) -> None:
        lease: Awaitable[Any]
        if kind == 0:  # plain acquire, cancelled from outside
            cm: Any = pool.acquire(timeout=10)
        elif kind == 1:  # a tiny pool deadline
            cm = pool.acquire(timeout=budget)
        else:
            cm = None
        if cm is not None:
            async with cm as conn:
                await use(conn, hold)
        elif kind == 2:
            async with asyncio.timeout(budget), pool.acquire(timeout=10) as conn:
                await use(conn, hold)
        else:
            lease = pool.acquire(timeout=10)
            conn = await asyncio.wait_for(lease, budget)
            try:
                await use(conn, hold)
            finally:
                await pool.release(conn)

    async def use(conn: FakeConnection, hold: float) -> None:
        assert conn.id not in in_use, "one connection lent to two borrowers"
        assert not conn.closed, "a closed connection was lent"
        assert not conn.dirty, "a dirty connection was lent"
        assert conn in manager.live
        in_use.add(conn.id)
        try:
            conn.dirty = True
            if hold:
                await asyncio.sleep(hold)
        finally:
            in_use.discard(conn.id)

    async def one(kind: int, budget: float, hold: float) -> None:
        try:
            await borrow(kind, budget, hold)
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
            raise
        except PoolTimeout:
            outcomes["pool_timeout"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        else:
            outcomes["ok"] += 1

    tasks = []
    for _ in range(n):
        kind = rng.randrange(4)
        budget = rng.uniform(0.0, 0.004)
        hold = rng.choice([0.0, rng.uniform(0.0, 0.001)])
        task = asyncio.create_task(one(kind, budget, hold))
        tasks.append(task)
        if rng.random() < 0.8:
            loop.call_later(rng.uniform(0.0, 0.005), task.cancel)
            if rng.random() < 0.3:  # a second cancel: lands in release/reset
                loop.call_later(rng.uniform(0.0, 0.008), task.cancel)
        if rng.random() < 0.1:
            await asyncio.sleep(rng.choice([0, 0.0005]))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    pool_stats = pool.stats()
    assert pool_stats.size <= pool_stats.max_size
    assert pool_stats.idle + pool_stats.in_use + pool_stats.connecting == pool_stats.size


@pytest.mark.parametrize("check", ["always", "never"])
def test_fuzz_random_cancellations_keep_capacity(check: str) -> None:
    async def main() -> None:
        rng = random.Random(20261121 if check == "always" else 7)
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=4, check=check)
        in_use: set[int] = set()
        outcomes = {"ok": 0, "cancelled": 0, "pool_timeout": 0, "timeout": 0}
        for _ in range(5):
            await _fuzz_round(pool, manager, rng, 300, in_use, outcomes)
        assert sum(outcomes.values()) == 1500, outcomes
        # The fuzz must really have exercised both sides.
        assert outcomes["ok"] > 0, outcomes
        assert outcomes["cancelled"] > 0, outcomes
        assert not in_use
        await settle(pool, manager)
        s = pool.stats()
        assert s.acquired >= outcomes["ok"]
        manager.behaviour.check_delay = manager.behaviour.reset_delay = 0.0
        await lend_all_at_once(pool, 4)
        await settle(pool, manager)
        await finish(pool, manager)

    run(main)
