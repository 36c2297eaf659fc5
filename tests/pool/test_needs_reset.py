"""A manager's optional ``needs_reset(conn)``: a release whose reset provably has nothing to do
skips it; a manager that says ``True``, or cannot tell, still gets its reset."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fakes import AsyncFakeManager, FakeConnection, FakeManager, new_apool, new_spool, run, settle


def answering(manager_class: type[Any]) -> Any:
    """A fake manager whose ``needs_reset`` says whether the borrower dirtied the connection,
    or raises when told to."""

    class Answering(manager_class):  # type: ignore[misc,valid-type]
        raise_in_needs_reset = False

        def needs_reset(self, conn: FakeConnection) -> bool:
            self.count("needs_reset")
            if self.raise_in_needs_reset:
                raise RuntimeError("cannot tell (fake)")
            return conn.dirty

    manager = Answering()
    manager.calls["needs_reset"] = 0
    return manager


@pytest.mark.parametrize("dirty", [False, True])
def test_async_reset_runs_only_when_the_manager_says_it_has_work(dirty: bool) -> None:
    async def main() -> None:
        manager = answering(AsyncFakeManager)
        pool = new_apool(manager, max_size=1)
        async with pool.acquire() as conn:
            conn.dirty = dirty
        assert manager.calls["needs_reset"] == 1
        assert manager.calls["reset"] == (1 if dirty else 0)
        async with pool.acquire() as again:
            assert again is conn
            assert not again.dirty
        await settle(pool, manager)
        await pool.aclose()

    run(main)


@pytest.mark.parametrize("dirty", [False, True])
def test_threaded_reset_runs_only_when_the_manager_says_it_has_work(dirty: bool) -> None:
    manager = answering(FakeManager)
    pool = new_spool(manager, max_size=1)
    with pool.acquire() as conn:
        conn.dirty = dirty
    assert manager.calls["needs_reset"] == 1
    assert manager.calls["reset"] == (1 if dirty else 0)
    with pool.acquire() as again:
        assert again is conn
        assert not again.dirty
    pool.close()


def test_a_manager_that_cannot_tell_gets_its_reset(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        manager = answering(AsyncFakeManager)
        manager.raise_in_needs_reset = True
        pool = new_apool(manager, max_size=1)
        with caplog.at_level(logging.ERROR, logger="tidepool.pool"):
            async with pool.acquire():
                pass
        assert manager.calls["reset"] == 1
        assert "needs_reset() failed; resetting" in caplog.text
        await settle(pool, manager)
        await pool.aclose()

    run(main)


def test_needs_reset_is_not_asked_with_the_reset_off() -> None:
    async def main() -> None:
        manager = answering(AsyncFakeManager)
        pool = new_apool(manager, max_size=1, reset=False)
        async with pool.acquire():
            pass
        assert (manager.calls["needs_reset"], manager.calls["reset"]) == (0, 0)
        await settle(pool, manager)
        await pool.aclose()

    run(main)


def test_needs_reset_is_not_asked_for_a_discarded_connection() -> None:
    async def main() -> None:
        manager = answering(AsyncFakeManager)
        pool = new_apool(manager, max_size=1)
        conn = await pool.acquire()
        await pool.release(conn, discard=True)
        assert (manager.calls["needs_reset"], manager.calls["reset"]) == (0, 0)
        await settle(pool, manager)
        assert conn.closed
        await pool.aclose()

    run(main)
