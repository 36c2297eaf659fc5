"""Pools over a manager that fails, hangs or misbehaves (LEAK-8, LOAD-10, NET-6).

Every scenario runs against ``AsyncPool`` (through ``asyncio.run``) and ``Pool``, and ends with
the design.md section 7 invariant check (``settle``): no slot is leaked and the manager's live
connections equal the pool's size.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import tidepool
from fakes import (
    AsyncFakeManager,
    FakeConnection,
    FakeError,
    FakeManager,
    settle,
    settle_sync,
    until,
    until_sync,
)
from tidepool import AsyncPool, ConnectError, Pool, PoolStats, PoolTimeout

# ---------------------------------------------------------------- helpers


class StatsAtFailure(tidepool.PoolListener):
    """Takes a ``stats()`` snapshot each time a connection attempt fails."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.snapshots: list[PoolStats] = []
        self.errors: list[BaseException] = []

    def on_connect_failed(self, pool: str, error: BaseException) -> None:
        self.errors.append(error)
        self.snapshots.append(self.pool.stats())


def assert_no_slot_leaked(snapshots: list[PoolStats]) -> None:
    # At each failure the failed attempt's slot is already given back: whatever size the
    # pool counts is attempts still in flight, nothing else (LEAK-8).
    for snap in snapshots:
        assert snap.idle + snap.in_use + snap.connecting == snap.size, snap
        assert snap.size == snap.connecting, snap


class FlakyHook:
    """An ``on_connect`` hook failing its first ``fails`` calls."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.seen: list[FakeConnection] = []
        self.lock = threading.Lock()

    def __call__(self, conn: FakeConnection) -> None:
        with self.lock:
            self.seen.append(conn)
            if self.fails > 0:
                self.fails -= 1
                raise FakeError("on_connect failed (fake)")


# ---------------------------------------------------------------- transient connect failures


def test_transient_connect_failures_are_retried_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        spy = StatsAtFailure()
        pool = AsyncPool(manager, max_size=2, acquire_timeout=10, listeners=[spy])
        spy.pool = pool
        manager.behaviour.fail_next("connect", 3)
        try:
            started = time.monotonic()
            async with pool.acquire() as conn:
                elapsed = time.monotonic() - started
                assert isinstance(conn, FakeConnection)
                assert not conn.closed
            s = pool.stats()
            assert s.connect_errors == 3
            assert s.connects == 1
            assert manager.calls["connect"] == 4
            assert elapsed >= 0.02  # at least one backoff delay between attempts
            assert len(spy.snapshots) == 3
            assert all(isinstance(e, FakeError) for e in spy.errors)
            assert_no_slot_leaked(spy.snapshots)
            await settle(pool, manager)
            assert pool.stats().size == 1
        finally:
            await pool.aclose()
        assert manager.live == set()

    asyncio.run(main())


def test_transient_connect_failures_are_retried_sync() -> None:
    manager = FakeManager()
    spy = StatsAtFailure()
    pool = Pool(manager, max_size=2, acquire_timeout=10, listeners=[spy])
    spy.pool = pool
    manager.behaviour.fail_next("connect", 3)
    try:
        started = time.monotonic()
        with pool.acquire() as conn:
            elapsed = time.monotonic() - started
            assert isinstance(conn, FakeConnection)
            assert not conn.closed
        s = pool.stats()
        assert s.connect_errors == 3
        assert s.connects == 1
        assert manager.calls["connect"] == 4
        assert elapsed >= 0.02
        assert len(spy.snapshots) == 3
        assert_no_slot_leaked(spy.snapshots)
        settle_sync(pool, manager)
        assert pool.stats().size == 1
    finally:
        pool.close()
    assert manager.live == set()


def test_connect_always_failing_times_out_with_cause_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "fail"
        pool = AsyncPool(manager, max_size=2)
        try:
            with pytest.raises(PoolTimeout) as info:
                await pool.acquire(timeout=0.4)
            assert info.value.phase == "connect"
            assert isinstance(info.value.__cause__, FakeError)
            assert pool.stats().connect_errors >= 1
            await settle(pool, manager)
            assert pool.stats().size == 0
            # The database comes back: the pool serves again.
            manager.behaviour.connect = "ok"
            async with pool.acquire(timeout=5) as conn:
                assert not conn.closed
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_connect_always_failing_times_out_with_cause_sync() -> None:
    manager = FakeManager()
    manager.behaviour.connect = "fail"
    pool = Pool(manager, max_size=2)
    try:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.4)
        assert info.value.phase == "connect"
        assert isinstance(info.value.__cause__, FakeError)
        settle_sync(pool, manager)
        assert pool.stats().size == 0
        manager.behaviour.connect = "ok"
        with pool.acquire(timeout=5) as conn:
            assert not conn.closed
        settle_sync(pool, manager)
    finally:
        pool.close()


# ---------------------------------------------------------------- connect returns None / permanent


def test_connect_returning_none_is_a_connect_error_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "none"
        pool = AsyncPool(manager, max_size=2, acquire_timeout=30)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectError, match="None"):
                await pool.acquire()
            assert time.monotonic() - started < 10  # failed fast, not at the deadline
            await settle(pool, manager)
            assert pool.stats().size == 0
            manager.behaviour.connect = "ok"
            async with pool.acquire(timeout=5) as conn:
                assert isinstance(conn, FakeConnection)
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_connect_returning_none_is_a_connect_error_sync() -> None:
    manager = FakeManager()
    manager.behaviour.connect = "none"
    pool = Pool(manager, max_size=2, acquire_timeout=30)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError, match="None"):
            pool.getconn()
        assert time.monotonic() - started < 10
        settle_sync(pool, manager)
        assert pool.stats().size == 0
        manager.behaviour.connect = "ok"
        with pool.acquire(timeout=5) as conn:
            assert isinstance(conn, FakeConnection)
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_permanent_connect_error_fails_fast_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "permanent"
        pool = AsyncPool(manager, max_size=3, acquire_timeout=30)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                await pool.acquire()
            assert time.monotonic() - started < 10
            assert isinstance(info.value.__cause__, FakeError)
            assert "28P01" in str(info.value.__cause__)
            assert manager.calls["connect"] <= 2  # no retry loop
            # open() reports it the same way.
            with pytest.raises(ConnectError):
                await pool.open()
            await settle(pool, manager)
            assert pool.stats().size == 0
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_permanent_connect_error_fails_fast_sync() -> None:
    manager = FakeManager()
    manager.behaviour.connect = "permanent"
    pool = Pool(manager, max_size=3, acquire_timeout=30)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError) as info:
            pool.getconn()
        assert time.monotonic() - started < 10
        assert isinstance(info.value.__cause__, FakeError)
        assert manager.calls["connect"] <= 2
        with pytest.raises(ConnectError):
            pool.open()
        settle_sync(pool, manager)
        assert pool.stats().size == 0
    finally:
        pool.close()


# ---------------------------------------------------------------- connect hangs


def test_hanging_connect_times_out_then_pool_recovers_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "hang"
        pool = AsyncPool(manager, max_size=2)
        try:
            started = time.monotonic()
            with pytest.raises(PoolTimeout) as info:
                await pool.acquire(timeout=0.3)
            elapsed = time.monotonic() - started
            assert 0.25 <= elapsed < 5
            assert info.value.phase == "connect"
            s = pool.stats()
            assert s.size == s.connecting  # only the hung attempt is counted
            manager.behaviour.connect = "ok"
            manager.release_hangs()
            async with pool.acquire(timeout=5) as conn:
                assert not conn.closed
            await settle(pool, manager)
        finally:
            await pool.aclose()
        assert manager.live == set()

    asyncio.run(main())


def test_hanging_connect_times_out_then_pool_recovers_sync() -> None:
    manager = FakeManager()
    manager.behaviour.connect = "hang"
    pool = Pool(manager, max_size=2)
    try:
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.3)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 5
        assert info.value.phase == "connect"
        manager.behaviour.connect = "ok"
        manager.release_hangs()
        with pool.acquire(timeout=5) as conn:
            assert not conn.closed
        settle_sync(pool, manager)
    finally:
        manager.release_hangs()
        pool.close()
    assert manager.live == set()


# ---------------------------------------------------------------- check failures


def test_failed_check_closes_and_lends_another_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, check="always")
        try:
            async with pool.acquire() as first:
                pass
            manager.behaviour.fail_next("check", 1)
            async with pool.acquire(timeout=5) as second:
                assert second is not first
                assert not second.closed
            await settle(pool, manager)
            assert first.closed
            s = pool.stats()
            assert s.check_failures == 1
            assert s.size == 1
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_failed_check_closes_and_lends_another_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, check="always")
    try:
        with pool.acquire() as first:
            pass
        manager.behaviour.fail_next("check", 1)
        with pool.acquire(timeout=5) as second:
            assert second is not first
            assert not second.closed
        settle_sync(pool, manager)
        assert first.closed
        s = pool.stats()
        assert s.check_failures == 1
        assert s.size == 1
    finally:
        pool.close()


def test_every_idle_check_failing_does_not_starve_async() -> None:
    """LOAD-10: every idle connection fails its check; they are replaced, callers served."""

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(
            manager, max_size=3, min_size=3, check="idle", check_idle_after=0.1, acquire_timeout=10
        )
        try:
            await pool.open()
            await settle(pool, manager)
            old = set(manager.live)
            assert len(old) == 3
            await asyncio.sleep(0.3)  # every idle connection now needs a check
            manager.behaviour.check = "fail"
            served: list[FakeConnection] = []

            async def user() -> None:
                async with pool.acquire() as conn:
                    served.append(conn)
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(user() for _ in range(8)))
            assert len(served) == 8
            assert not old & set(served)
            await settle(pool, manager)
            assert all(c.closed for c in old)
            assert pool.stats().check_failures >= 3
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_every_idle_check_failing_does_not_starve_sync() -> None:
    manager = FakeManager()
    pool = Pool(
        manager, max_size=3, min_size=3, check="idle", check_idle_after=0.1, acquire_timeout=10
    )
    try:
        pool.open()
        settle_sync(pool, manager)
        old = set(manager.live)
        assert len(old) == 3
        time.sleep(0.3)
        manager.behaviour.check = "fail"
        served: list[FakeConnection] = []
        errors: list[BaseException] = []

        def user() -> None:
            try:
                with pool.acquire() as conn:
                    served.append(conn)
                    time.sleep(0.01)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=user) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(served) == 8
        assert not old & set(served)
        settle_sync(pool, manager)
        assert all(c.closed for c in old)
        assert pool.stats().check_failures >= 3
    finally:
        pool.close()


# ---------------------------------------------------------------- reset failures


def test_failed_reset_closes_instead_of_lending_again_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1)
        try:
            manager.behaviour.fail_next("reset", 1)
            async with pool.acquire() as first:
                first.dirty = True
            await settle(pool, manager)
            assert first.closed
            async with pool.acquire(timeout=5) as second:
                assert second is not first
                assert not second.dirty
            async with pool.acquire(timeout=5) as third:
                assert third is second  # a good reset keeps the connection
            s = pool.stats()
            assert s.reset_failures == 1
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_failed_reset_closes_instead_of_lending_again_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    try:
        manager.behaviour.fail_next("reset", 1)
        with pool.acquire() as first:
            first.dirty = True
        settle_sync(pool, manager)
        assert first.closed
        with pool.acquire(timeout=5) as second:
            assert second is not first
        with pool.acquire(timeout=5) as third:
            assert third is second
        assert pool.stats().reset_failures == 1
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_hanging_reset_is_bounded_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1, connect_timeout=0.3)
        try:
            manager.behaviour.reset = "hang"
            async with pool.acquire() as first:
                first.dirty = True
                exit_started = time.monotonic()
            exit_took = time.monotonic() - exit_started
            assert exit_took < 5  # bounded by connect_timeout, not forever
            await settle(pool, manager)
            assert first.closed
            assert pool.stats().reset_failures == 1
            manager.behaviour.reset = "ok"
            async with pool.acquire(timeout=5) as second:
                assert second is not first
            await settle(pool, manager)
        finally:
            manager.release_hangs()
            await pool.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- close failures


def test_failing_close_keeps_accounting_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.close = "fail"
        pool = AsyncPool(manager, max_size=3, min_size=3)
        try:
            await pool.open()
            await settle(pool, manager)
            first = set(manager.live)
            async with pool.acquire() as held:
                pool.expire()
                await settle(pool, manager)
            # refilled to min_size in the background (wait: settle() may look before it starts)
            await until(lambda: pool.stats().size == 3)
            await settle(pool, manager)
            assert held.closed
            assert all(c.closed for c in first)
            s = pool.stats()
            assert s.closed == 3
            assert s.size == 3  # refilled to min_size
            assert not first & manager.live
        finally:
            await pool.aclose()
        assert manager.live == set()
        assert pool.stats().size == 0

    asyncio.run(main())


def test_failing_close_keeps_accounting_sync() -> None:
    manager = FakeManager()
    manager.behaviour.close = "fail"
    pool = Pool(manager, max_size=3, min_size=3)
    try:
        pool.open()
        settle_sync(pool, manager)
        first = set(manager.live)
        with pool.acquire() as held:
            pool.expire()
            settle_sync(pool, manager)
        until_sync(lambda: pool.stats().size == 3)
        settle_sync(pool, manager)
        assert held.closed
        assert all(c.closed for c in first)
        s = pool.stats()
        assert s.closed == 3
        assert s.size == 3
    finally:
        pool.close()
    assert manager.live == set()
    assert pool.stats().size == 0


def test_hanging_close_is_bounded_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, min_size=2, connect_timeout=0.3)
        try:
            await pool.open()
            await settle(pool, manager)
            manager.behaviour.close = "hang"
            pool.expire()
            await settle(pool, manager)  # closes give up after connect_timeout
            assert pool.stats().closed == 2
            manager.behaviour.close = "ok"
        finally:
            started = time.monotonic()
            await pool.aclose()
            assert time.monotonic() - started < 5
        assert manager.live == set()

    asyncio.run(main())


# ---------------------------------------------------------------- broken on return


def test_broken_connection_is_closed_and_replaced_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1)
        try:
            async with pool.acquire() as first:
                first.broken = True
            async with pool.acquire(timeout=5) as second:
                assert second is not first
            await settle(pool, manager)
            assert first.closed
            assert pool.stats().closed == 1
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_broken_connection_is_closed_and_replaced_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    try:
        with pool.acquire() as first:
            first.broken = True
        with pool.acquire(timeout=5) as second:
            assert second is not first
        settle_sync(pool, manager)
        assert first.closed
        assert pool.stats().closed == 1
    finally:
        pool.close()


def test_first_returns_broken_do_not_starve_async() -> None:
    """LOAD-10: the first five connections come back broken; every caller is served."""

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, acquire_timeout=10)
        lock = asyncio.Lock()
        breaks = [5]

        async def user() -> None:
            async with pool.acquire() as conn:
                await asyncio.sleep(0.005)
                async with lock:
                    if breaks[0] > 0:
                        breaks[0] -= 1
                        conn.broken = True

        try:
            await asyncio.gather(*(user() for _ in range(12)))
            await settle(pool, manager)
            s = pool.stats()
            assert s.acquired == 12
            assert s.closed == 5
            assert s.size <= 2
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_first_returns_broken_do_not_starve_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, acquire_timeout=10)
    lock = threading.Lock()
    breaks = [5]
    errors: list[BaseException] = []

    def user() -> None:
        try:
            with pool.acquire() as conn:
                time.sleep(0.005)
                with lock:
                    if breaks[0] > 0:
                        breaks[0] -= 1
                        conn.broken = True
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=user) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        settle_sync(pool, manager)
        s = pool.stats()
        assert s.acquired == 12
        assert s.closed == 5
        assert s.size <= 2
    finally:
        pool.close()


# ---------------------------------------------------------------- on_connect


def test_sync_on_connect_runs_on_each_new_connection_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        hook = FlakyHook(0)
        pool = AsyncPool(manager, max_size=3, min_size=3, on_connect=hook)
        try:
            await pool.open()
            await settle(pool, manager)
            assert len(hook.seen) == 3
            assert set(hook.seen) == manager.live
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_async_on_connect_runs_on_each_new_connection_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        seen: list[FakeConnection] = []

        async def hook(conn: FakeConnection) -> None:
            await asyncio.sleep(0.01)
            conn.uses = -1  # mark it as configured
            seen.append(conn)

        pool = AsyncPool(manager, max_size=3, min_size=3, on_connect=hook)
        try:
            await pool.open()
            await settle(pool, manager)
            assert len(seen) == 3
            assert set(seen) == manager.live
            async with pool.acquire() as conn:
                assert conn.uses == -1  # lent only after the hook ran
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_on_connect_runs_on_each_new_connection_sync() -> None:
    manager = FakeManager()
    hook = FlakyHook(0)
    pool = Pool(manager, max_size=3, min_size=3, on_connect=hook)
    try:
        pool.open()
        settle_sync(pool, manager)
        assert len(hook.seen) == 3
        assert set(hook.seen) == manager.live
    finally:
        pool.close()


def test_failing_on_connect_does_not_leak_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        hook = FlakyHook(2)
        pool = AsyncPool(manager, max_size=2, on_connect=hook, acquire_timeout=10)
        try:
            async with pool.acquire() as conn:
                assert conn is hook.seen[-1]
            await settle(pool, manager)
            assert len(hook.seen) == 3
            assert hook.seen[0].closed  # half-opened ones are closed
            assert hook.seen[1].closed
            s = pool.stats()
            assert s.connect_errors == 2
            assert s.size == 1
        finally:
            await pool.aclose()
        assert manager.live == set()

    asyncio.run(main())


def test_async_on_connect_always_failing_does_not_leak_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()

        async def hook(conn: FakeConnection) -> None:
            await asyncio.sleep(0)
            raise FakeError("cannot configure (fake)")

        pool = AsyncPool(manager, max_size=2, on_connect=hook)
        try:
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=0.3)
            await settle(pool, manager)
            assert pool.stats().size == 0
            assert manager.opened >= 1
        finally:
            await pool.aclose()
        assert manager.live == set()

    asyncio.run(main())


def test_failing_on_connect_does_not_leak_sync() -> None:
    manager = FakeManager()
    hook = FlakyHook(2)
    pool = Pool(manager, max_size=2, on_connect=hook, acquire_timeout=10)
    try:
        with pool.acquire() as conn:
            assert conn is hook.seen[-1]
        settle_sync(pool, manager)
        assert len(hook.seen) == 3
        assert hook.seen[0].closed
        assert hook.seen[1].closed
        s = pool.stats()
        assert s.connect_errors == 2
        assert s.size == 1
    finally:
        pool.close()
    assert manager.live == set()


def test_on_connect_always_failing_does_not_leak_sync() -> None:
    manager = FakeManager()
    hook = FlakyHook(10**6)
    pool = Pool(manager, max_size=2, on_connect=hook)
    try:
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.3)
        settle_sync(pool, manager)
        assert pool.stats().size == 0
        assert manager.opened >= 1
    finally:
        pool.close()
    until_sync(lambda: not manager.live)


# ---------------------------------------------------------------- wrong flavour of manager


def test_async_manager_refused_by_pool() -> None:
    with pytest.raises(TypeError, match="AsyncPool"):
        Pool(AsyncFakeManager())  # type: ignore[arg-type]


def test_sync_manager_refused_by_async_pool() -> None:
    with pytest.raises(TypeError, match="async"):
        AsyncPool(FakeManager())  # type: ignore[arg-type]
