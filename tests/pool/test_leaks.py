"""Connections that are not given back properly, and pools that are not closed (LEAK-1/2/3/13)."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
import threading
import time
import warnings
import weakref
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
from tidepool import AsyncPool, Pool, PoolStats

# ---------------------------------------------------------------- helpers


def here() -> int:
    """The caller's line number."""
    return sys._getframe(1).f_lineno


def no_tasks_named(prefix: str) -> bool:
    return not [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix)]


def no_threads_named(prefix: str) -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def drop_all(box: list[Any]) -> None:
    """Drop the last references to what ``box`` holds, and collect."""
    box.clear()
    gc.collect()


def drop_then_stats(box: list[Any], pool: Any) -> PoolStats:
    drop_all(box)
    return pool.stats()  # accounts for what the collector reclaimed


def leak_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tidepool.pool"
        and r.levelno == logging.WARNING
        and "leak_timeout" in r.getMessage()
    ]


class Boom(Exception):
    """Raised in a borrower's body."""


# ---------------------------------------------------------------- LEAK-1


def test_exception_in_body_returns_connection_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=1)
        seen: list[FakeConnection] = []

        async def failing_body() -> None:
            async with pool.acquire() as conn:
                seen.append(conn)
                conn.dirty = True  # an open transaction
                raise ZeroDivisionError

        try:
            with pytest.raises(ZeroDivisionError):
                await failing_body()
            s = pool.stats()
            assert s.in_use == 0
            assert s.idle == 1
            async with pool.acquire(timeout=5) as again:
                assert again is seen[0]
                assert not again.dirty  # reset on return
                assert not again.closed
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_exception_in_body_returns_connection_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    seen: list[FakeConnection] = []

    def failing_body() -> None:
        with pool.acquire() as conn:
            seen.append(conn)
            conn.dirty = True
            raise ZeroDivisionError

    try:
        with pytest.raises(ZeroDivisionError):
            failing_body()
        s = pool.stats()
        assert s.in_use == 0
        assert s.idle == 1
        with pool.acquire(timeout=5) as again:
            assert again is seen[0]
            assert not again.dirty
            assert not again.closed
        settle_sync(pool, manager)
    finally:
        pool.close()


# ---------------------------------------------------------------- LEAK-2: garbage-collected


def test_garbage_collected_connection_is_reclaimed_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, name="gc-reclaim-async")
        try:
            box: list[Any] = [await pool.acquire()]
            acquire_line = here() - 1
            await settle(pool, manager)
            await until(lambda: no_tasks_named("tidepool-"))
            assert pool.stats().in_use == 1
            # The driver's own finalizer ends the session of a collected connection.
            manager.live.discard(box[0])
            gone = weakref.ref(box[0])
            with pytest.warns(ResourceWarning) as record:
                s = drop_then_stats(box, pool)
            assert gone() is None
            assert s.in_use == 0
            assert s.size == 0
            assert s.reclaimed == 1
            reclaim = [w for w in record if issubclass(w.category, ResourceWarning)]
            assert len(reclaim) == 1
            assert reclaim[0].filename == __file__
            assert reclaim[0].lineno == acquire_line
            assert "gc-reclaim-async" in str(reclaim[0].message)
            await settle(pool, manager)
            # The slot is usable again.
            async with pool.acquire(timeout=5) as again:
                assert not again.closed
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_garbage_collected_connection_is_reclaimed_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, name="gc-reclaim-sync")
    try:
        box: list[Any] = [pool.getconn()]
        acquire_line = here() - 1
        settle_sync(pool, manager)
        until_sync(lambda: no_threads_named("tidepool-connect-gc-reclaim-sync"))
        assert pool.stats().in_use == 1
        manager.live.discard(box[0])
        gone = weakref.ref(box[0])
        # (inside pytest.warns also a warning from the maintenance thread would be recorded)
        with pytest.warns(ResourceWarning) as record:
            s = drop_then_stats(box, pool)
        assert gone() is None
        assert s.in_use == 0
        assert s.size == 0
        assert s.reclaimed == 1
        reclaim = [w for w in record if issubclass(w.category, ResourceWarning)]
        assert len(reclaim) == 1
        assert reclaim[0].filename == __file__
        assert reclaim[0].lineno == acquire_line
        settle_sync(pool, manager)
        with pool.acquire(timeout=5) as again:
            assert not again.closed
    finally:
        pool.close()


# ---------------------------------------------------------------- LEAK-2: leak_timeout


def test_leak_timeout_logs_borrower_and_stack_async(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tidepool.pool")
    lines: list[int] = []

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, leak_timeout=0.2, name="leaky-async")

        async def slow_borrower() -> None:
            async with pool.acquire() as conn:
                lines.append(here() - 1)
                assert not conn.closed
                await until(lambda: bool(leak_records(caplog)), timeout=10)
                await asyncio.sleep(0.3)  # still held: reported once, not per tick

        try:
            await asyncio.create_task(slow_borrower(), name="borrower-task-7")
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())
    records = leak_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "leaky-async" in message
    assert "borrower-task-7" in message
    assert f"{__file__}:{lines[0]}" in message
    assert f'File "{__file__}", line {lines[0]}, in slow_borrower' in message


def test_leak_timeout_logs_borrower_and_stack_sync(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tidepool.pool")
    manager = FakeManager()
    pool = Pool(manager, max_size=2, leak_timeout=0.2, name="leaky-sync")
    lines: list[int] = []
    errors: list[BaseException] = []

    def slow_borrower() -> None:
        try:
            with pool.acquire() as conn:
                lines.append(here() - 1)
                assert not conn.closed
                until_sync(lambda: bool(leak_records(caplog)), timeout=10)
                time.sleep(0.3)
        except BaseException as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=slow_borrower, name="borrower-thread-7")
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        assert errors == []
        settle_sync(pool, manager)
    finally:
        pool.close()
    records = leak_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "leaky-sync" in message
    assert "borrower-thread-7" in message
    assert f"{__file__}:{lines[0]}" in message
    assert f'File "{__file__}", line {lines[0]}, in slow_borrower' in message


def test_no_leak_warning_for_short_loans_sync(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tidepool.pool")
    manager = FakeManager()
    pool = Pool(manager, max_size=1, leak_timeout=0.5)
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            with pool.acquire():
                time.sleep(0.01)
        settle_sync(pool, manager)
    finally:
        pool.close()
    assert leak_records(caplog) == []


# ---------------------------------------------------------------- LEAK-3


def test_double_release_raises_and_keeps_state_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, name="p-double")
        try:
            conn = await pool.acquire()
            other = await pool.acquire()
            await pool.release(conn)
            before = pool.stats()
            with pytest.raises(ValueError, match=re.escape("'p-double'")):
                await pool.release(conn)
            assert pool.stats() == before
            assert before.in_use == 1
            assert before.idle == 1
            await pool.release(other)
            await settle(pool, manager)
            assert pool.stats().idle == 2
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_double_release_raises_and_keeps_state_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, name="p-double")
    try:
        conn = pool.getconn()
        other = pool.getconn()
        pool.release(conn)
        before = pool.stats()
        with pytest.raises(ValueError, match=re.escape("'p-double'")):
            pool.release(conn)
        assert pool.stats() == before
        assert before.in_use == 1
        assert before.idle == 1
        pool.release(other)
        settle_sync(pool, manager)
        assert pool.stats().idle == 2
    finally:
        pool.close()


def test_release_to_wrong_pool_raises_and_keeps_state_async() -> None:
    async def main() -> None:
        manager_a, manager_b = AsyncFakeManager(), AsyncFakeManager()
        pool_a = AsyncPool(manager_a, max_size=2, name="p-one")
        pool_b = AsyncPool(manager_b, max_size=2, name="p-two")
        try:
            conn_a = await pool_a.acquire()
            async with pool_b.acquire():
                pass
            before_a, before_b = pool_a.stats(), pool_b.stats()
            with pytest.raises(ValueError, match=re.escape("'p-two'")):
                await pool_b.release(conn_a)
            with pytest.raises(ValueError, match=re.escape("'p-two'")):
                await pool_b.release(FakeConnection())  # not from any pool
            assert pool_a.stats() == before_a
            assert pool_b.stats() == before_b
            assert not conn_a.closed
            await pool_a.release(conn_a)  # still lent by its own pool
            assert pool_a.stats().idle == 1
            await settle(pool_a, manager_a)
            await settle(pool_b, manager_b)
        finally:
            await pool_a.aclose()
            await pool_b.aclose()

    asyncio.run(main())


def test_release_to_wrong_pool_raises_and_keeps_state_sync() -> None:
    manager_a, manager_b = FakeManager(), FakeManager()
    pool_a = Pool(manager_a, max_size=2, name="p-one")
    pool_b = Pool(manager_b, max_size=2, name="p-two")
    try:
        conn_a = pool_a.getconn()
        with pool_b.acquire():
            pass
        before_a, before_b = pool_a.stats(), pool_b.stats()
        with pytest.raises(ValueError, match=re.escape("'p-two'")):
            pool_b.release(conn_a)
        with pytest.raises(ValueError, match=re.escape("'p-two'")):
            pool_b.release(FakeConnection())
        assert pool_a.stats() == before_a
        assert pool_b.stats() == before_b
        assert not conn_a.closed
        pool_a.release(conn_a)
        assert pool_a.stats().idle == 1
        settle_sync(pool_a, manager_a)
        settle_sync(pool_b, manager_b)
    finally:
        pool_a.close()
        pool_b.close()


# ---------------------------------------------------------------- LEAK-13: unclosed pools


def test_unclosed_opened_pool_warns_on_gc_async() -> None:
    async def main() -> weakref.ref[AsyncPool[FakeConnection]]:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, min_size=1, name="forgotten-async")
        await pool.open()
        await settle(pool, manager)
        await until(lambda: no_tasks_named("tidepool-"))
        await asyncio.sleep(0.01)  # let the finished tasks' done-callbacks run
        ref = weakref.ref(pool)
        box: list[Any] = [pool]
        del pool
        with pytest.warns(ResourceWarning, match="forgotten-async"):
            drop_all(box)
        return ref

    ref = asyncio.run(main())
    assert ref() is None


def test_unclosed_opened_pool_warns_on_gc_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, min_size=1, name="forgotten-sync")
    pool.open()
    settle_sync(pool, manager)
    until_sync(lambda: no_threads_named("tidepool-connect-forgotten-sync"))
    ref = weakref.ref(pool)
    box: list[Any] = [pool]
    del pool
    with pytest.warns(ResourceWarning, match="forgotten-sync"):
        drop_all(box)
    assert ref() is None
    # Its maintenance thread stops too.
    until_sync(lambda: no_threads_named("tidepool-maintenance-forgotten-sync"))


def test_never_opened_pool_is_silent_on_gc_async() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = AsyncPool(AsyncFakeManager(), max_size=2)
        ref = weakref.ref(pool)
        del pool
        gc.collect()
    assert ref() is None
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_never_opened_pool_is_silent_on_gc_sync() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = FakeManager()
        pool = Pool(manager, max_size=2)
        ref = weakref.ref(pool)
        del pool
        gc.collect()
    assert ref() is None
    assert manager.calls["connect"] == 0
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_closed_pool_is_silent_on_gc_sync() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = FakeManager()
        pool = Pool(manager, max_size=2, min_size=1)
        pool.open()
        pool.close()
        del pool
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert manager.live == set()
