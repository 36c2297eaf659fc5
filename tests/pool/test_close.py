"""Closing a pool: graceful, forced, idempotent, and leaving nothing running (LEAK-7, LEAK-13)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from fakes import AsyncFakeManager, FakeConnection, FakeManager, settle_sync, until, until_sync
from tidepool import AsyncPool, Pool, PoolClosed, PoolTimeout

# ---------------------------------------------------------------- helpers


def pool_tasks(name: str) -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("tidepool-") and t.get_name().endswith(name)
    ]


def pool_threads(name: str) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("tidepool-") and t.name.endswith(name) and t.is_alive()
    ]


# ---------------------------------------------------------------- LEAK-7


def test_close_with_lent_connections_and_waiters_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, acquire_timeout=30)
        a = await pool.acquire()
        b = await pool.acquire()

        async def waiter() -> FakeConnection:
            async with pool.acquire() as conn:
                return conn

        waiters = [asyncio.create_task(waiter()) for _ in range(3)]
        await until(lambda: pool.stats().waiting == 3)
        closing = asyncio.create_task(pool.aclose(timeout=30))
        # Waiters fail at once, long before any timeout.
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
        assert all(isinstance(r, PoolClosed) for r in results), results
        assert pool.stats().waiting == 0
        with pytest.raises(PoolClosed):
            await pool.acquire(timeout=5)
        await asyncio.sleep(0.05)
        assert not closing.done()  # still waiting for the two lent connections
        assert not a.closed  # not closed under their borrowers
        assert not b.closed
        await pool.release(a)
        await until(lambda: a.closed)
        assert not closing.done()
        await pool.release(b)
        await asyncio.wait_for(closing, 10)  # returns as soon as the last one is back
        assert b.closed
        assert manager.live == set()
        s = pool.stats()
        assert s.size == 0
        assert s.closed == 2
        settle_sync(pool, manager)

    asyncio.run(main())


def test_close_with_lent_connections_and_waiters_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, acquire_timeout=30)
    a = pool.getconn()
    b = pool.getconn()
    results: list[BaseException | FakeConnection] = []
    lock = threading.Lock()

    def waiter() -> None:
        try:
            with pool.acquire() as conn:
                outcome: BaseException | FakeConnection = conn
        except BaseException as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    until_sync(lambda: pool.stats().waiting == 3)
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 30})
    closer.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert len(results) == 3
    assert all(isinstance(r, PoolClosed) for r in results), results
    with pytest.raises(PoolClosed):
        pool.getconn(timeout=5)
    time.sleep(0.05)
    assert closer.is_alive()
    assert not a.closed
    assert not b.closed
    pool.release(a)
    until_sync(lambda: a.closed)
    assert closer.is_alive()
    pool.release(b)
    closer.join(10)
    assert not closer.is_alive()
    assert b.closed
    assert manager.live == set()
    s = pool.stats()
    assert s.size == 0
    assert s.closed == 2


# ---------------------------------------------------------------- forced close


def test_close_timeout_closes_unreturned_connection_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, min_size=1)
        await pool.open()
        conn = await pool.acquire()
        started = time.monotonic()
        await pool.aclose(timeout=0.3)
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 5
        assert conn.closed  # closed under its borrower
        assert manager.live == set()
        assert pool.stats().size == 0
        before = pool.stats()
        await pool.release(conn)  # a late release is a silent no-op
        assert pool.stats() == before
        assert manager.calls["close"] == 1
        settle_sync(pool, manager)

    asyncio.run(main())


def test_close_timeout_closes_unreturned_connection_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, min_size=1)
    pool.open()
    conn = pool.getconn()
    started = time.monotonic()
    pool.close(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 5
    assert conn.closed
    assert manager.live == set()
    assert pool.stats().size == 0
    before = pool.stats()
    pool.release(conn)
    assert pool.stats() == before
    assert manager.calls["close"] == 1
    settle_sync(pool, manager)


def test_with_block_exit_after_forced_close_is_silent_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    with pool.acquire() as conn:
        pool.close(timeout=0.05)
        assert conn.closed
    # leaving the block released nothing and raised nothing
    assert pool.stats().size == 0
    assert manager.calls["reset"] == 0


def test_async_with_block_exit_after_forced_close_is_silent_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1)
        async with pool.acquire() as conn:
            await pool.aclose(timeout=0.05)
            assert conn.closed
        assert pool.stats().size == 0
        assert manager.calls["reset"] == 0

    asyncio.run(main())


# ---------------------------------------------------------------- idempotence, closed pool


def test_close_is_idempotent_and_closed_pool_refuses_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, min_size=2)
        await pool.open()
        await pool.aclose()
        await pool.aclose()
        await pool.aclose(timeout=0)
        assert manager.calls["close"] == 2
        assert manager.live == set()
        with pytest.raises(PoolClosed, match="closed"):
            await pool.acquire()
        with pytest.raises(PoolClosed):
            async with pool.acquire(timeout=0):
                pass
        assert pool.try_acquire() is None
        assert manager.calls["connect"] == 2
        assert "closed" in repr(pool)

    asyncio.run(main())


def test_close_is_idempotent_and_closed_pool_refuses_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, min_size=2)
    pool.open()
    pool.close()
    pool.close()
    pool.close(timeout=0)
    assert manager.calls["close"] == 2
    assert manager.live == set()
    with pytest.raises(PoolClosed, match="closed"):
        pool.getconn()
    with pytest.raises(PoolClosed), pool.acquire(timeout=0):
        pass
    assert pool.try_acquire() is None
    assert manager.calls["connect"] == 2
    assert "closed" in repr(pool)


def test_close_never_opened_pool_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, name="never-opened-async")
        await pool.aclose()
        await pool.aclose()
        with pytest.raises(PoolClosed):
            await pool.acquire()
        assert manager.calls["connect"] == 0
        assert pool_tasks("never-opened-async") == []

    asyncio.run(main())


def test_close_never_opened_pool_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, name="never-opened-sync")
    pool.close()
    pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn()
    assert manager.calls["connect"] == 0
    # A closed pool refuses without starting background work: no maintenance thread may be
    # (re)started by an acquire after close. (Its tick is 1 s, so allow half of that.)
    until_sync(lambda: pool_threads("never-opened-sync") == [], timeout=0.5)


# ---------------------------------------------------------------- context managers


def test_async_with_pool_closes_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        async with AsyncPool(manager, max_size=2, min_size=2) as pool:
            async with pool.acquire() as conn:
                assert not conn.closed
            assert pool.stats().size == 2
        assert conn.closed
        assert manager.live == set()
        assert pool.stats().size == 0
        with pytest.raises(PoolClosed):
            await pool.acquire()

    asyncio.run(main())


def test_async_with_pool_closes_on_error_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2)

        async def body() -> None:
            async with pool, pool.acquire():
                raise KeyError("boom")

        with pytest.raises(KeyError):
            await body()
        assert manager.live == set()
        with pytest.raises(PoolClosed):
            await pool.acquire()

    asyncio.run(main())


def test_with_pool_closes_sync() -> None:
    manager = FakeManager()
    with Pool(manager, max_size=2, min_size=2) as pool:
        with pool.acquire() as conn:
            assert not conn.closed
        assert pool.stats().size == 2
    assert conn.closed
    assert manager.live == set()
    assert pool.stats().size == 0
    with pytest.raises(PoolClosed):
        pool.getconn()


def test_with_pool_closes_on_error_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2)

    def body() -> None:
        with pool, pool.acquire():
            raise KeyError("boom")

    with pytest.raises(KeyError):
        body()
    assert manager.live == set()
    with pytest.raises(PoolClosed):
        pool.getconn()


# ---------------------------------------------------------------- nothing left running


def test_no_background_task_left_after_aclose_async() -> None:
    async def main() -> None:
        name = "tasks-left-check"
        manager = AsyncFakeManager()
        manager.behaviour.close_delay = 0.02
        manager.behaviour.connect_delay = 0.01
        pool = AsyncPool(manager, max_size=4, min_size=3, name=name)
        await pool.open()
        held = [await pool.acquire() for _ in range(4)]
        for conn in held[:2]:
            await pool.release(conn)
        pool.expire()  # closes in flight
        pool.resize(min_size=4)  # connects in flight
        for conn in held[2:]:
            await pool.release(conn)
        await pool.aclose(timeout=5)
        assert pool_tasks(name) == []
        assert manager.live == set()
        assert pool.stats().size == 0

    asyncio.run(main())


def test_no_background_task_left_after_aclose_with_hung_connect_async() -> None:
    async def main() -> None:
        name = "hung-connect-close"
        manager = AsyncFakeManager()
        manager.behaviour.connect = "hang"
        pool = AsyncPool(manager, max_size=2, name=name)
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0.1)
        assert pool.stats().connecting == 1  # an attempt hangs in the background
        started = time.monotonic()
        await pool.aclose(timeout=0.3)
        assert time.monotonic() - started < 5
        assert pool_tasks(name) == []
        s = pool.stats()
        assert s.size == 0
        assert s.connecting == 0
        assert manager.live == set()

    asyncio.run(main())


def test_no_background_thread_left_after_close_sync() -> None:
    name = "threads-left-check"
    manager = FakeManager()
    manager.behaviour.close_delay = 0.02
    manager.behaviour.connect_delay = 0.01
    pool = Pool(manager, max_size=4, min_size=3, name=name)
    pool.open()
    assert pool_threads(name)  # at least its maintenance thread
    held = [pool.getconn() for _ in range(4)]
    for conn in held[:2]:
        pool.release(conn)
    pool.expire()
    pool.resize(min_size=4)
    for conn in held[2:]:
        pool.release(conn)
    pool.close(timeout=5)
    until_sync(lambda: pool_threads(name) == [], timeout=3)
    assert manager.live == set()
    assert pool.stats().size == 0


def test_close_right_after_background_connects_never_raises_sync() -> None:
    """close() must not fail while a worker thread is starting another worker thread.

    With min_size=2 the connect worker that opened the first connection starts a second one
    (from its own thread) as the caller is already closing the pool.
    """
    failures: list[BaseException] = []
    for _ in range(400):
        manager = FakeManager()
        pool = Pool(manager, max_size=2, min_size=2, reset=False, check="never")
        with pool.acquire(timeout=5):
            pass
        try:
            pool.close(timeout=1)
        except BaseException as exc:
            failures.append(exc)
            until_sync(lambda: not pool_threads("FakeManager"), timeout=3)
            pool.close(timeout=1)
        until_sync(lambda: not manager.live, timeout=3)  # noqa: B023
    assert failures == [], f"{len(failures)} of 400 close() calls raised: {failures[0]!r}"
