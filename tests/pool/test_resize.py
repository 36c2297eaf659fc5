"""``resize()`` and ``expire()`` on a live pool (LOAD-6, LOAD-11)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest

from fakes import (
    AsyncFakeManager,
    FakeConnection,
    FakeManager,
    settle,
    settle_sync,
    until,
    until_sync,
)
from tidepool import AsyncPool, ConfigError, Pool

# ---------------------------------------------------------------- helpers


class Borrowers:
    """Threads that each acquire once, record the connection and hold it until told."""

    def __init__(self, pool: Pool[Any], n: int) -> None:
        self.pool = pool
        self.got: list[FakeConnection] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        try:
            with self.pool.acquire(timeout=10) as conn:
                with self.lock:
                    self.got.append(conn)
                self.done.wait(10)
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)

    def finish(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(10)
            assert not t.is_alive()
        assert self.errors == []


# ---------------------------------------------------------------- grow


def test_resize_up_serves_waiters_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1)
        try:
            held = await pool.acquire()
            got: list[FakeConnection] = []
            release = asyncio.Event()

            async def borrower() -> None:
                async with pool.acquire(timeout=10) as conn:
                    got.append(conn)
                    await release.wait()

            tasks = [asyncio.create_task(borrower()) for _ in range(2)]
            await until(lambda: pool.stats().waiting == 2)
            assert pool.stats().size == 1
            pool.resize(max_size=3)
            await until(lambda: len(got) == 2)  # served while `held` is still lent
            assert held not in got
            assert len(set(got)) == 2
            s = pool.stats()
            assert s.max_size == 3
            assert s.size == 3
            assert s.in_use == 3
            release.set()
            await asyncio.gather(*tasks)
            await pool.release(held)
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_resize_up_serves_waiters_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    try:
        held = pool.getconn()
        borrowers = Borrowers(pool, 2)
        try:
            until_sync(lambda: pool.stats().waiting == 2)
            assert pool.stats().size == 1
            pool.resize(max_size=3)
            until_sync(lambda: len(borrowers.got) == 2)
            assert held not in borrowers.got
            assert len(set(borrowers.got)) == 2
            s = pool.stats()
            assert s.max_size == 3
            assert s.size == 3
        finally:
            borrowers.finish()
        pool.release(held)
        settle_sync(pool, manager)
    finally:
        pool.close()


# ---------------------------------------------------------------- shrink


def test_resize_down_closes_idle_now_and_lent_on_return_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=4)
        try:
            conns = [await pool.acquire() for _ in range(4)]
            for conn in conns[2:]:
                await pool.release(conn)
            await settle(pool, manager)
            assert pool.stats().idle == 2
            pool.resize(max_size=1)
            # size stays above the new max while lent extras are out: no full settle() here
            await until(lambda: len(manager.live) == pool.stats().size == 2)
            s = pool.stats()
            assert s.max_size == 1
            assert s.idle == 0
            assert s.size == 2  # the lent ones wait for their borrowers
            assert all(c.closed for c in conns[2:])
            assert not any(c.closed for c in conns[:2])
            await pool.release(conns[0])
            await settle(pool, manager)  # back within max_size: the full check applies
            assert conns[0].closed
            assert pool.stats().size == 1
            await pool.release(conns[1])
            await settle(pool, manager)
            assert not conns[1].closed  # within the new max: kept
            s = pool.stats()
            assert s.size == 1
            assert s.idle == 1
            async with pool.acquire(timeout=5) as conn:
                assert conn is conns[1]
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_resize_down_closes_idle_now_and_lent_on_return_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=4)
    try:
        conns = [pool.getconn() for _ in range(4)]
        for conn in conns[2:]:
            pool.release(conn)
        settle_sync(pool, manager)
        assert pool.stats().idle == 2
        pool.resize(max_size=1)
        until_sync(lambda: len(manager.live) == pool.stats().size == 2)
        s = pool.stats()
        assert s.max_size == 1
        assert s.idle == 0
        assert s.size == 2
        assert all(c.closed for c in conns[2:])
        assert not any(c.closed for c in conns[:2])
        pool.release(conns[0])
        settle_sync(pool, manager)
        assert conns[0].closed
        assert pool.stats().size == 1
        pool.release(conns[1])
        settle_sync(pool, manager)
        assert not conns[1].closed
        assert pool.stats().size == 1
        with pool.acquire(timeout=5) as conn:
            assert conn is conns[1]
    finally:
        pool.close()


def test_resize_down_never_exceeds_new_max_under_load_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=6, acquire_timeout=10)
        sizes: list[int] = []

        async def user() -> None:
            for _ in range(20):
                async with pool.acquire():
                    await asyncio.sleep(0.001)

        try:
            tasks = [asyncio.create_task(user()) for _ in range(10)]
            await asyncio.sleep(0.02)
            pool.resize(max_size=2)
            while not all(t.done() for t in tasks):
                sizes.append(pool.stats().size)
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)
            await settle(pool, manager)
            s = pool.stats()
            assert s.size <= 2
            assert s.max_size == 2
            assert s.acquired == 200
            # After the resize no connection is opened above the new max: the size only
            # shrinks until it is within it, then stays within it.
            assert sizes
            for before, after in itertools.pairwise(sizes):
                assert after <= max(before, 2), sizes
        finally:
            await pool.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- min_size


def test_resize_min_size_grows_in_background_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=5)
        try:
            await pool.open()
            await settle(pool, manager)
            assert pool.stats().size == 1
            pool.resize(min_size=4)
            await until(lambda: pool.stats().size == 4)  # nobody asked for a connection
            await settle(pool, manager)
            s = pool.stats()
            assert s.min_size == 4
            assert s.max_size == 5
            assert s.idle == 4
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_resize_min_size_grows_in_background_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=5)
    try:
        pool.open()
        settle_sync(pool, manager)
        assert pool.stats().size == 1
        pool.resize(min_size=4)
        until_sync(lambda: pool.stats().size == 4)
        settle_sync(pool, manager)
        s = pool.stats()
        assert s.min_size == 4
        assert s.idle == 4
    finally:
        pool.close()


# ---------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"max_size": 0}, ConfigError, "max_size"),
        ({"min_size": -1}, ConfigError, "min_size"),
        ({"min_size": 5}, ConfigError, "min_size"),  # above max_size=3
        ({"max_size": 1}, ConfigError, "min_size"),  # below min_size=2
        ({"max_size": "3"}, TypeError, "max_size"),
        ({"max_size": True}, TypeError, "max_size"),
        ({"min_size": 2.5}, TypeError, "min_size"),
    ],
)
def test_invalid_resize_is_refused(
    kwargs: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=3, min_size=2)
    try:
        pool.open()
        settle_sync(pool, manager)
        before = pool.stats()
        with pytest.raises(error, match=fragment):
            pool.resize(**kwargs)
        after = pool.stats()
        assert (after.max_size, after.min_size, after.size) == (3, 2, before.size)
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_invalid_resize_is_refused_async() -> None:
    async def main() -> None:
        pool = AsyncPool(AsyncFakeManager(), max_size=3)
        try:
            with pytest.raises(ConfigError, match="max_size"):
                pool.resize(max_size=0)
            with pytest.raises(TypeError, match="min_size"):
                pool.resize(min_size="1")  # type: ignore[arg-type]
            s = pool.stats()
            assert (s.max_size, s.min_size) == (3, 0)
        finally:
            await pool.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- expire()


def test_expire_replaces_idle_now_and_lent_on_return_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=4, min_size=3)
        try:
            await pool.open()
            await settle(pool, manager)
            old = set(manager.live)
            assert len(old) == 3
            held = await pool.acquire()
            assert held in old
            pool.expire()
            await settle(pool, manager)
            idle_old = old - {held}
            assert all(c.closed for c in idle_old)  # idle ones closed now
            assert not held.closed  # the lent one is left alone...
            await pool.release(held)
            await settle(pool, manager)
            assert held.closed  # ...and closed when it comes back
            assert not old & manager.live
            await until(lambda: pool.stats().size >= 3)  # min_size refilled, in the background
            lent = [await pool.acquire() for _ in range(3)]
            assert not old & set(lent)
            assert not any(c.closed for c in lent)
            for conn in lent:
                await pool.release(conn)
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_expire_replaces_idle_now_and_lent_on_return_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=4, min_size=3)
    try:
        pool.open()
        settle_sync(pool, manager)
        old = set(manager.live)
        assert len(old) == 3
        held = pool.getconn()
        assert held in old
        pool.expire()
        settle_sync(pool, manager)
        assert all(c.closed for c in old - {held})
        assert not held.closed
        pool.release(held)
        settle_sync(pool, manager)
        assert held.closed
        assert not old & manager.live
        lent = [pool.getconn() for _ in range(3)]
        assert not old & set(lent)
        assert not any(c.closed for c in lent)
        for conn in lent:
            pool.release(conn)
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_expire_with_waiter_hands_new_connection_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    try:
        held = pool.getconn()
        borrowers = Borrowers(pool, 1)
        try:
            until_sync(lambda: pool.stats().waiting == 1)
            pool.expire()
            pool.release(held)  # expired: closed, and the waiter gets a new connection
            until_sync(lambda: len(borrowers.got) == 1)
            assert borrowers.got[0] is not held
            assert not borrowers.got[0].closed
        finally:
            borrowers.finish()
        settle_sync(pool, manager)
        assert held.closed
    finally:
        pool.close()
