"""``AsyncPool`` bounds a manager call that suspends (connect, check, reset, close) on its
shared timer, with ``asyncio.timeout()``'s semantics (issue 5: the bound cost more than the
rest of a release). A call past ``connect_timeout`` fails as a timeout; a cancellation from
elsewhere stays a cancellation; a call that ends in time leaves nothing behind in the task;
a borrower's reset keeps its bound while the pool closes."""

from __future__ import annotations

import asyncio
import time
from asyncio import Task
from typing import Any

import pytest

from fakes import AsyncFakeManager, settle
from tidepool import AsyncPool


def test_a_call_past_its_bound_times_out_and_the_task_carries_on() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1, connect_timeout=0.2)
        try:
            async with pool.acquire() as first:
                first.dirty = True
                manager.behaviour.reset = "hang"
            # The reset timed out: the connection is closed, the borrower saw no error, and
            # the expiry's cancellation was consumed, not left pending on the task.
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0
            await asyncio.sleep(0.01)  # would raise CancelledError if one were pending
            await settle(pool, manager)
            assert first.closed
            assert pool.stats().reset_failures == 1
        finally:
            manager.release_hangs()
            await pool.aclose()

    asyncio.run(main())


def test_a_call_that_ends_in_time_leaves_no_cancellation_behind() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.reset_delay = 0.05  # suspends, then succeeds
        pool = AsyncPool(manager, max_size=1, connect_timeout=0.2)
        try:
            for _ in range(3):
                async with pool.acquire() as conn:
                    conn.dirty = True
            # Past every deadline those resets had: nothing fires into this task.
            await asyncio.sleep(0.4)
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0
            assert pool.stats().reset_failures == 0
            assert not pool._call_deadlines.earliest()  # every bound was dropped
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


async def borrower_stuck_in_reset(pool: AsyncPool[Any], manager: AsyncFakeManager) -> Task[None]:
    """A task whose borrow ends in a reset that hangs; returns once it is in that reset."""
    resetting = asyncio.Event()

    async def borrower() -> None:
        async with pool.acquire() as conn:
            conn.dirty = True
            manager.behaviour.reset = "hang"
            resetting.set()

    task = asyncio.create_task(borrower())
    await resetting.wait()
    await asyncio.sleep(0.05)  # inside the hanging reset now
    return task


def test_a_borrower_cancelled_during_its_reset_stays_cancelled() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1, connect_timeout=5.0)
        try:
            task = await borrower_stuck_in_reset(pool, manager)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):  # not TimeoutError
                await task
            manager.behaviour.reset = "ok"
            await settle(pool, manager)  # the interrupted reset closed the connection
            assert pool.stats().size == 0
            async with pool.acquire(timeout=1) as fresh:
                assert not fresh.closed
        finally:
            manager.release_hangs()
            await pool.aclose()

    asyncio.run(main())


def test_a_borrowers_reset_keeps_its_bound_while_the_pool_closes() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1, connect_timeout=0.3)
        try:
            task = await borrower_stuck_in_reset(pool, manager)
            started = time.monotonic()
            await pool.aclose(timeout=0.05)
            await asyncio.wait_for(task, 5)  # the reset gave up at its bound
            assert time.monotonic() - started < 2
            assert pool.stats().reset_failures == 1
        finally:
            manager.release_hangs()
            await pool.aclose()

    asyncio.run(main())
