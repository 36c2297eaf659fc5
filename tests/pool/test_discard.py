"""``release(conn, discard=True)``: the borrower no longer trusts the connection. It is closed
(reason "discarded"), never reset, never lent again, and the other connections stay."""

from __future__ import annotations

import asyncio
from typing import Any

import tidepool
from fakes import (
    AsyncFakeManager,
    FakeManager,
    check_invariants,
    new_apool,
    new_spool,
    run,
    settle,
    settle_sync,
)


class Reasons(tidepool.PoolListener):
    def __init__(self) -> None:
        self.closed: list[str] = []

    def on_close(self, pool: str, connection_id: int, reason: str) -> None:
        self.closed.append(reason)


def test_async_discard_retires_only_that_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        reasons = Reasons()
        pool = new_apool(manager, max_size=3, min_size=3, listeners=[reasons])
        await pool.open()
        await settle(pool, manager)
        conn = await pool.acquire()
        resets = manager.calls["reset"]
        await pool.release(conn, discard=True)
        await settle(pool, manager)
        assert manager.calls["reset"] == resets  # no reset for a discarded connection
        assert conn.closed
        assert reasons.closed == ["discarded"]
        stats = pool.stats()
        assert stats.closed == 1
        assert stats.idle == 3  # the other two stayed; min_size brought a third
        async with pool.acquire() as again:
            assert again is not conn
        check_invariants(pool, manager)

    run(main)


def test_sync_discard_retires_only_that_connection() -> None:
    manager = FakeManager()
    reasons = Reasons()
    pool = new_spool(manager, max_size=2, listeners=[reasons])
    first, second = pool.getconn(), pool.getconn()
    pool.release(second)
    pool.release(first, discard=True)
    settle_sync(pool, manager)
    assert first.closed
    assert not second.closed
    assert reasons.closed == ["discarded"]
    with pool.acquire() as conn:
        assert conn is second
    check_invariants(pool, manager)


def test_discarding_a_broken_connection_still_counts_as_a_disconnect() -> None:
    class Disconnects(AsyncFakeManager):
        def is_disconnect(self, conn: Any, error: BaseException | None) -> bool:
            return bool(conn.broken)

    async def main() -> None:
        manager = Disconnects()
        pool = new_apool(manager, max_size=3)
        conns = [await pool.acquire() for _ in range(3)]
        for conn in conns[1:]:
            await pool.release(conn)
        # A healthy discard leaves the older idle connections alone...
        await pool.release(conns[0], discard=True)
        await settle(pool, manager)
        assert pool.stats().idle == 2
        # ...a broken one means the server dropped it: the older ones go too.
        conn = await pool.acquire()
        conn.broken = True
        await pool.release(conn, discard=True)
        await settle(pool, manager)
        assert pool.stats().idle == 0
        check_invariants(pool, manager)

    run(main)


def test_discard_then_waiter_gets_a_new_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1)
        conn = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire(timeout=5))
        await asyncio.sleep(0.01)
        await pool.release(conn, discard=True)
        fresh = await waiter
        assert fresh is not conn
        assert not fresh.closed
        await pool.release(fresh)
        check_invariants(pool, manager)

    run(main)
