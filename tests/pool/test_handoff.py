"""The contended acquire of ``AsyncPool``: a caller that finds nothing idle waits in line and
takes the connection handed over, without the acquire procedure; every other ending of that
wait (a check due, the deadline, an error, a cancellation, a connect) goes back to the
procedure, which must behave as if it had queued the caller itself."""

from __future__ import annotations

import asyncio

import pytest

from fakes import AsyncFakeManager, FakeConnection, new_apool, run, settle, until
from tidepool import AsyncPool, PoolClosed, PoolTimeout

Pool = AsyncPool[FakeConnection]


async def queued(pool: Pool, n: int = 1) -> None:
    await until(lambda: pool.stats().waiting == n)


async def finish(pool: Pool, manager: AsyncFakeManager) -> None:
    await settle(pool, manager)
    await pool.aclose()
    assert not manager.live, manager.live


def test_a_handed_connection_goes_to_the_oldest_caller_in_line() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1)
        order: list[int] = []

        async def borrower(i: int) -> None:
            async with pool.acquire(timeout=5):
                order.append(i)

        async with pool.acquire() as held:
            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(borrower(i)))
                await queued(pool, i + 1)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        stats = pool.stats()
        # (The first acquire waited too: for the pool's first connection.)
        assert (stats.waited, stats.acquired, stats.connects) == (6, 6, 1)
        assert not held.closed
        await finish(pool, manager)

    run(main)


@pytest.mark.parametrize("check", ["ok", "fail"])
def test_a_handed_connection_due_for_a_check_is_checked_first(check: str) -> None:
    # check="always": the hand-off cannot complete the lend; the procedure checks it and, if
    # the check fails, opens another connection for the same caller.
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="always")
        async with pool.acquire() as first:
            if check == "fail":
                manager.behaviour.fail_next("check")
            waiter = asyncio.create_task(pool.acquire(timeout=5).__aenter__())
            await queued(pool)
            checks = manager.calls["check"]
        conn = await waiter
        # A failed check is followed by one of the new connection.
        assert manager.calls["check"] == checks + (1 if check == "ok" else 2)
        assert (conn is first) == (check == "ok")
        assert first.closed == (check == "fail")
        await pool.release(conn)
        await finish(pool, manager)

    run(main)


def test_a_caller_whose_deadline_passes_in_line_gets_pool_timeout() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1)
        async with pool.acquire():
            with pytest.raises(PoolTimeout) as info:
                async with pool.acquire(timeout=0.05):
                    raise AssertionError("nothing was free to lend")
        assert info.value.phase == "wait"
        assert pool.stats().waiting == 0
        await finish(pool, manager)

    run(main)


def test_closing_the_pool_ends_the_wait_with_pool_closed() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1)
        async with pool.acquire():
            waiter = asyncio.create_task(pool.acquire(timeout=5).__aenter__())
            await queued(pool)
            closing = asyncio.create_task(pool.aclose(timeout=5))
            with pytest.raises(PoolClosed):
                await waiter
        await closing
        assert not manager.live

    run(main)


def test_a_caller_cancelled_after_the_hand_off_passes_the_connection_on() -> None:
    # Handed the connection, then cancelled before it ran: the procedure takes the
    # connection back from the withdrawn waiter and hands it to the next caller in line.
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1)
        async with pool.acquire() as held:
            first = asyncio.create_task(pool.acquire(timeout=5).__aenter__())
            await queued(pool, 1)
            second = asyncio.create_task(pool.acquire(timeout=5).__aenter__())
            await queued(pool, 2)
        first.cancel()  # its future already holds the hand-off; it has not run yet
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is held
        await pool.release(held)
        assert pool.stats().in_use == 0
        await finish(pool, manager)

    run(main)


def test_a_caller_in_line_takes_a_connection_opened_for_it() -> None:
    # Nothing idle but room to grow: the caller waits in line while a connect worker opens
    # a connection, which is handed to it.
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect_delay = 0.02
        pool = new_apool(manager, max_size=2, min_size=0)
        async with pool.acquire() as first, pool.acquire(timeout=5) as second:
            assert first is not second
        assert pool.stats().connects == 2
        await finish(pool, manager)

    run(main)
