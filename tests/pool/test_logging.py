"""The ``tidepool`` logger: slow-acquire and pool-churn warnings, the pool name in every
record, and no handler of the library's own."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import tidepool
from fakes import AsyncFakeManager, FakeManager, new_apool, new_spool, run
from tidepool._churn import ChurnWatch, churn_watch
from tidepool._core.flows import Flows


@pytest.fixture(autouse=True)
def _fresh_churn_counts() -> None:
    churn_watch.forget()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_library_configures_no_handler() -> None:
    assert logging.getLogger("tidepool").handlers == []
    assert logging.getLogger("tidepool.pool").handlers == []


def test_async_slow_acquire_warns_with_the_wait_and_the_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")

    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1, slow_acquire=0.05, name="slowpool")
        holder = await pool.acquire()

        async def release_later() -> None:
            await asyncio.sleep(0.15)
            await pool.release(holder)

        task = asyncio.create_task(release_later())
        async with pool.acquire():
            pass
        await task
        # A fast acquire (an idle connection) logs nothing.
        async with pool.acquire():
            pass

    run(main)
    slow = [r for r in warnings_of(caplog) if "slow_acquire" in r.getMessage()]
    assert len(slow) == 1
    message = slow[0].getMessage()
    assert "'slowpool'" in message
    assert "slow_acquire=0.05" in message
    waited = float(message.split(" took ")[1].split(" s")[0])
    assert waited >= 0.1
    assert "in_use=" in message or "in use" in message


def test_sync_slow_acquire_warns_once_per_slow_acquire(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    pool = new_spool(FakeManager(), max_size=1, slow_acquire=0.05)
    holder = pool.getconn()
    timer = threading.Timer(0.15, pool.release, args=(holder,))
    timer.start()
    with pool.acquire():
        pass
    timer.join()
    with pool.acquire():
        pass
    slow = [r for r in warnings_of(caplog) if "slow_acquire" in r.getMessage()]
    assert len(slow) == 1


def test_slow_acquire_none_never_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    pool = new_spool(FakeManager(), max_size=1, slow_acquire=None)
    holder = pool.getconn()
    timer = threading.Timer(0.1, pool.release, args=(holder,))
    timer.start()
    with pool.acquire():
        pass
    timer.join()
    assert not [r for r in warnings_of(caplog) if "slow_acquire" in r.getMessage()]


def test_a_slow_connect_counts_as_a_slow_acquire(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    manager = FakeManager()
    manager.behaviour.connect_delay = 0.1
    pool = new_spool(manager, slow_acquire=0.05)
    with pool.acquire():
        pass
    assert [r for r in warnings_of(caplog) if "slow_acquire" in r.getMessage()]


def test_opening_a_pool_per_request_warns_once_per_window(
    caplog: pytest.LogCaptureFixture, tmp_path: object
) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    url = f"sqlite:///{tmp_path}/churn.db"

    async def request() -> None:
        async with tidepool.AsyncPool(url) as pool:
            await pool.fetch_value("select 1")

    async def main() -> None:
        for _ in range(25):
            await request()

    asyncio.run(main())
    churn = [r for r in warnings_of(caplog) if "pools to" in r.getMessage()]
    assert len(churn) == 1
    message = churn[0].getMessage()
    assert "10 pools to sqlite:///" in message
    assert "open it once at startup" in message


def test_one_long_lived_pool_never_warns_about_churn(
    caplog: pytest.LogCaptureFixture, tmp_path: object
) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    url = f"sqlite:///{tmp_path}/steady.db"
    with tidepool.Pool(url) as pool:
        for _ in range(50):
            pool.fetch_value("select 1")
    assert not [r for r in warnings_of(caplog) if "pools to" in r.getMessage()]


def test_churn_warning_never_shows_a_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    watch = ChurnWatch(threshold=3, window=60.0)
    target = "postgresql://app:***@db.example/app"
    results = [watch.note_opened(target, "p", now=float(i)) for i in range(5)]
    assert results == [False, False, True, False, False]
    # The window slides: after it, the count starts again and may warn again.
    assert watch.note_opened(target, "p", now=100.0) is False
    assert watch.note_opened(target, "p", now=101.0) is False
    assert watch.note_opened(target, "p", now=102.0) is True


def test_pools_built_on_managers_are_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    for _ in range(15):
        with new_spool(FakeManager()) as pool, pool.acquire():
            pass
    assert not [r for r in warnings_of(caplog) if "pools to" in r.getMessage()]


def test_every_record_names_its_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidepool")

    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), name="named", min_size=1, max_size=1)
        await pool.open()
        async with pool.acquire():
            pass
        try:
            await pool.acquire(timeout=0)
            await pool.acquire(timeout=0)
        except tidepool.PoolTimeout:
            pass
        await pool.aclose()

    run(main)
    records = [r for r in caplog.records if r.name.startswith("tidepool")]
    assert len(records) >= 4
    for record in records:
        assert "'named'" in record.getMessage(), record.getMessage()


def test_slow_acquire_warnings_are_rate_limited_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    monkeypatch.setattr(Flows, "slow_log_interval", 0.5)
    pool = new_spool(FakeManager(), max_size=1, slow_acquire=0.01)

    def slow_acquire() -> None:
        holder = pool.getconn()
        timer = threading.Timer(0.03, pool.release, args=(holder,))
        timer.start()
        with pool.acquire():
            pass
        timer.join()

    for _ in range(5):  # within one interval: one record
        slow_acquire()
    slow = [r for r in warnings_of(caplog) if "slow_acquire" in r.getMessage()]
    assert len(slow) == 1
    time.sleep(0.5)
    slow_acquire()  # the next interval: one record, counting those not logged
    slow = [r for r in warnings_of(caplog) if "slow_acquire" in r.getMessage()]
    assert len(slow) == 2
    assert "4 more slow acquires" in slow[1].getMessage()
