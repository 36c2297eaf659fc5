"""Cancellation and interruption against a real PostgreSQL: a connection given back
mid-query is cancelled and drained within a bound, or closed, and the next borrower always
gets its own rows (issue 3 point 3; reliability.md CAN-4, CAN-5, CAN-6, TMO-3, LOAD-6).

``AsyncPool`` is driven through asyncpg (``postgresql://``) and psycopg
(``postgresql+psycopg://``); ``Pool`` (psycopg, threads) is interrupted the ways a thread can
be: ``statement_timeout``, ``pg_cancel_backend`` from another session, a terminated backend
and a connection handed back with its query still running.

Every scenario ends with design.md section 7's invariants, including the server-side session
count for the pool's ``application_name``. Bounds are generous (a loaded 2-core machine):
they only turn a hang or a leak into a failure, never measure speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

import tidepool
from pg_helpers import admin, app_name, backend_pids, pg_url, require_pg, session_count

DRIVERS = ("asyncpg", "psycopg")
# Bound for anything that should be quick (a cancel, a drain, a next borrower): generous.
BOUND = 8.0
# A query that outlives every bound here unless it is cancelled.
LONG_SLEEP = 30
LONG_NEEDLE = f"pg_sleep({LONG_SLEEP})"
DEFAULT_SEARCH_PATH = '"$user", public'
_values = itertools.count(100_000)


def unique() -> int:
    """A value no other query in this module returns."""
    return next(_values)


# ---------------------------------------------------------------------- driver glue


def _sql(driver: str, sql: str) -> str:
    """``sql`` is written with asyncpg's ``$n`` placeholders; psycopg wants ``%s``."""
    return sql if driver == "asyncpg" else re.sub(r"\$\d+", "%s", sql)


async def fetch(conn: Any, driver: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """All rows of ``sql`` on a lent connection, as tuples, for either driver."""
    if driver == "asyncpg":
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    cur = await conn.execute(_sql(driver, sql), args or None)
    return [tuple(r) for r in await cur.fetchall()]


async def run(conn: Any, driver: str, sql: str) -> None:
    """Run a statement that returns no rows."""
    await conn.execute(sql)


async def own_value(conn: Any, driver: str, value: int) -> int:
    rows = await fetch(conn, driver, "SELECT $1::int", value)
    assert len(rows) == 1, rows
    assert len(rows[0]) == 1, rows
    got: int = rows[0][0]
    return got


async def backend_pid(conn: Any, driver: str) -> int:
    rows = await fetch(conn, driver, "SELECT pg_backend_pid()")
    pid: int = rows[0][0]
    return pid


def url(app: str, driver: str) -> str:
    return pg_url(app, driver=driver)


@contextlib.asynccontextmanager
async def apool(driver: str, **options: Any) -> AsyncIterator[tuple[tidepool.AsyncPool[Any], str]]:
    """An opened ``AsyncPool`` with its own application_name, always closed."""
    app = app_name("can")
    options.setdefault("acquire_timeout", 30.0)
    pool: tidepool.AsyncPool[Any] = tidepool.AsyncPool(url(app, driver), **options)
    try:
        await pool.open()
        yield pool, app
    finally:
        await pool.aclose(timeout=5)
        await asyncio.to_thread(_cancel_leftovers, app)


@contextlib.contextmanager
def spool(**options: Any) -> Iterator[tuple[tidepool.Pool[Any], str]]:
    """An opened ``Pool`` (psycopg) with its own application_name, always closed."""
    app = app_name("can")
    options.setdefault("acquire_timeout", 30.0)
    pool: tidepool.Pool[Any] = tidepool.Pool(pg_url(app), **options)
    try:
        pool.open()
        yield pool, app
    finally:
        pool.close(timeout=5)
        _cancel_leftovers(app)


def run_async(main: Callable[[], Awaitable[None]]) -> None:
    """``asyncio.run`` with a loop exception handler that fails the test: a 'Task exception
    was never retrieved' or a driver complaining through the loop is a bug too."""
    reported: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        await main()

    asyncio.run(scenario())
    assert not reported, f"errors reported to the event loop: {reported}"


# ---------------------------------------------------------------------- server-side views


def _cancel_leftovers(app: str) -> None:
    """Clean-up only (after the assertions): nothing of ``app`` keeps running on the server."""
    with admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )


def active_queries(app: str, needle: str) -> list[str]:
    """Queries of ``app`` the server is running now whose text contains ``needle``."""
    with admin() as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = %s "
            "AND state <> 'idle' AND position(%s in query) > 0",
            (app, needle),
        ).fetchall()
    return [str(r[0]) for r in rows]


def advisory_lock_free(key: int) -> bool:
    """Whether no session holds advisory lock ``key`` (takes and drops it to find out)."""
    with admin() as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        assert row is not None
        if row[0]:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return bool(row[0])


async def eventually(pred: Callable[[], bool], timeout: float = BOUND) -> bool:
    """Poll a blocking predicate (in a thread, so the loop keeps running) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(pred):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


def eventually_sync(pred: Callable[[], bool], timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def assert_counts(stats: tidepool.PoolStats) -> None:
    assert stats.size <= stats.max_size, stats
    assert stats.idle + stats.in_use + stats.connecting == stats.size, stats
    assert min(stats.size, stats.idle, stats.in_use, stats.connecting, stats.waiting) >= 0, stats


def _quiet(pool: tidepool.AsyncPool[Any] | tidepool.Pool[Any]) -> bool:
    s = pool.stats()
    return s.in_use == 0 and s.connecting == 0 and s.waiting == 0


async def settle(pool: tidepool.AsyncPool[Any], app: str, timeout: float = BOUND) -> None:
    """Wait for background work to finish, then check design.md section 7's invariants,
    server-side session count included."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _quiet(pool) and await asyncio.to_thread(session_count, app) == pool.stats().size:
            break
        await asyncio.sleep(0.05)
    stats = pool.stats()
    assert_counts(stats)
    assert stats.waiting == 0, stats
    assert stats.connecting == 0, stats
    assert stats.in_use == 0, stats
    sessions = await asyncio.to_thread(session_count, app)
    assert sessions == stats.size, f"server shows {sessions} sessions for the pool, {stats}"


def settle_sync(pool: tidepool.Pool[Any], app: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _quiet(pool) and session_count(app) == pool.stats().size:
            break
        time.sleep(0.05)
    stats = pool.stats()
    assert_counts(stats)
    assert stats.waiting == 0, stats
    assert stats.connecting == 0, stats
    assert stats.in_use == 0, stats
    sessions = session_count(app)
    assert sessions == stats.size, f"server shows {sessions} sessions for the pool, {stats}"


async def lend_all(pool: tidepool.AsyncPool[Any], driver: str) -> None:
    """The pool can still lend ``max_size`` connections at once, each answering for itself."""
    size = pool.stats().max_size
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.acquire(timeout=BOUND)) for _ in range(size)]
        pids = set()
        for conn in conns:
            value = unique()
            assert await own_value(conn, driver, value) == value
            pids.add(await backend_pid(conn, driver))
        assert len(pids) == size, pids


async def next_borrower(pool: tidepool.AsyncPool[Any], driver: str, value: int) -> int:
    async with pool.acquire() as conn:
        return await own_value(conn, driver, value)


async def clean_session_report(conn: Any, driver: str) -> tuple[Any, ...]:
    """What a fresh session would show: (search_path, advisory locks held, LISTEN channels,
    temp tables visible, in a transaction)."""
    rows = await fetch(
        conn,
        driver,
        "SELECT current_setting('search_path'), "
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        " AND pid = pg_backend_pid())::int, "
        "(SELECT count(*) FROM pg_listening_channels())::int, "
        "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int",
    )
    return (*rows[0], in_transaction(conn, driver))


def in_transaction(conn: Any, driver: str) -> bool:
    """The driver's view of the session: inside a transaction (open or failed)?"""
    if driver == "asyncpg":
        return bool(conn.is_in_transaction())
    return bool(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


CLEAN = (DEFAULT_SEARCH_PATH, 0, 0, 0, False)


# ---------------------------------------------------------------------- CAN-4


LONG_QUERIES = {
    "sleep": (f"SELECT {LONG_NEEDLE}", LONG_NEEDLE),
    "fetch": ("SELECT generate_series(1, 2000000)", "generate_series"),
}
DELAYS = (0.01, 0.03, 0.06, 0.1, 0.2)


@pytest.mark.parametrize("kind", sorted(LONG_QUERIES))
@pytest.mark.parametrize("driver", DRIVERS)
def test_cancel_mid_query_next_borrower_gets_own_rows(driver: str, kind: str) -> None:
    """CAN-4: a task cancelled 10-200 ms into a long query or a large fetch gives back a
    connection that the next borrower (max_size=1) uses for its own rows at once; the
    cancelled query does not keep running on the server."""
    require_pg()
    sql, needle = LONG_QUERIES[kind]

    async def main() -> None:
        async with apool(driver, max_size=1) as (pool, app):
            cancelled = 0
            for i, delay in enumerate(DELAYS * 2):
                started = asyncio.Event()

                async def victim(started: asyncio.Event = started) -> None:
                    async with pool.acquire() as conn:
                        started.set()
                        await fetch(conn, driver, sql)

                task = asyncio.create_task(victim())
                await asyncio.wait_for(started.wait(), BOUND)
                queued: asyncio.Task[int] | None = None
                value = unique()
                if i % 2:  # the next borrower already waits when the cancel lands
                    queued = asyncio.create_task(next_borrower(pool, driver, value))
                await asyncio.sleep(delay)
                task.cancel()
                await asyncio.wait([task], timeout=BOUND)
                assert task.done(), f"cancelled task still running after {BOUND} s"
                if task.cancelled():
                    cancelled += 1
                else:
                    assert task.exception() is None, task.exception()
                if queued is None:
                    queued = asyncio.create_task(next_borrower(pool, driver, value))
                got = await asyncio.wait_for(queued, BOUND)
                assert got == value, f"delay {delay}: next borrower got {got!r}, not {value}"
                still = await eventually(lambda: not active_queries(app, needle))
                assert still, (
                    f"the cancelled {kind} query still runs on the server: "
                    f"{active_queries(app, needle)}"
                )
            # The sleep is never done by itself; the fetch takes long enough to be hit too.
            assert cancelled >= (len(DELAYS) * 2 if kind == "sleep" else 1), cancelled
            await settle(pool, app)
            await lend_all(pool, driver)

    run_async(main)


@pytest.mark.parametrize("driver", DRIVERS)
def test_cancel_mid_transaction_query(driver: str) -> None:
    """CAN-4 inside an explicit transaction: the cancelled statement leaves the transaction
    failed; the next borrower finds no transaction at all and gets its own rows."""
    require_pg()

    async def main() -> None:
        async with apool(driver, max_size=1) as (pool, app):
            for delay in (0.02, 0.1):
                started = asyncio.Event()

                async def victim(started: asyncio.Event = started) -> None:
                    async with pool.acquire() as conn:
                        await run(conn, driver, "BEGIN")
                        await run(conn, driver, "SET LOCAL search_path = pg_catalog")
                        started.set()
                        await run(conn, driver, f"SELECT pg_sleep({LONG_SLEEP})")

                task = asyncio.create_task(victim())
                await asyncio.wait_for(started.wait(), BOUND)
                await asyncio.sleep(delay)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, BOUND)
                async with pool.acquire(timeout=BOUND) as conn:
                    assert await clean_session_report(conn, driver) == CLEAN
                    value = unique()
                    assert await own_value(conn, driver, value) == value
                assert await eventually(lambda: not active_queries(app, LONG_NEEDLE))
            await settle(pool, app)

    run_async(main)


@pytest.mark.parametrize("driver", DRIVERS)
def test_executor_and_transaction_cancelled_mid_query(driver: str) -> None:
    """CAN-4 through the pool's own executor (one checkout per call) and through
    ``pool.transaction()``: the cancelled call gives its connection back (rolled back,
    drained) and the next call gets its own value."""
    require_pg()

    async def in_transaction(pool: tidepool.AsyncPool[Any]) -> None:
        async with pool.transaction() as conn:
            await run(conn, driver, "SET LOCAL search_path = pg_catalog")
            await run(conn, driver, f"SELECT {LONG_NEEDLE}")

    async def main() -> None:
        async with apool(driver, max_size=1) as (pool, app):
            for delay in (0.01, 0.05, 0.15):
                calls: list[Callable[[], Awaitable[Any]]] = [
                    lambda: pool.fetch_value(f"SELECT 1 FROM {LONG_NEEDLE}"),
                    lambda: pool.execute(f"SELECT {LONG_NEEDLE}"),
                    lambda: in_transaction(pool),
                ]
                for call in calls:
                    task = asyncio.create_task(call())
                    await asyncio.sleep(delay)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await asyncio.wait_for(task, BOUND)
                    value = unique()
                    got = await asyncio.wait_for(
                        pool.fetch_value(_sql(driver, "SELECT $1::int"), value), BOUND
                    )
                    assert got == value
                    async with pool.acquire(timeout=BOUND) as conn:
                        assert await clean_session_report(conn, driver) == CLEAN
                    assert await eventually(lambda: not active_queries(app, LONG_NEEDLE))
            await settle(pool, app)

    run_async(main)


@pytest.mark.parametrize("driver", DRIVERS)
def test_cancelled_again_and_again_during_release(driver: str) -> None:
    """CAN-6, torn-down task group style: the task is cancelled mid-query and then again
    every few milliseconds while it gives the connection back (drain, reset). The release
    still ends within a bound (the connection reset or closed), the slot is freed and the
    server keeps no session or query of it."""
    require_pg()

    async def main() -> None:
        async with apool(driver, max_size=1) as (pool, app):
            for delay in (0.01, 0.05):
                started = asyncio.Event()

                async def victim(started: asyncio.Event = started) -> None:
                    async with pool.acquire() as conn:
                        started.set()
                        await run(conn, driver, f"SELECT {LONG_NEEDLE}")

                task = asyncio.create_task(victim())
                await asyncio.wait_for(started.wait(), BOUND)
                await asyncio.sleep(delay)
                deadline = time.monotonic() + BOUND
                while not task.done():
                    assert time.monotonic() < deadline, "release never finished"
                    task.cancel()
                    await asyncio.sleep(0.002)
                assert task.cancelled()
                value = unique()
                assert await asyncio.wait_for(next_borrower(pool, driver, value), BOUND) == value
                assert await eventually(lambda: not active_queries(app, LONG_NEEDLE)), (
                    "the cancelled query still runs on the server"
                )
                await settle(pool, app)

    run_async(main)


@pytest.mark.parametrize("driver", DRIVERS)
def test_aclose_with_query_in_flight(driver: str) -> None:
    """TMO-3 without freezing the shared server: ``aclose(timeout)`` while one borrower is
    mid-query and another's cancelled query is still being drained. aclose returns within
    its bound and afterwards the server keeps no session of the pool."""
    require_pg()

    async def main() -> None:
        app = app_name("can")
        pool: tidepool.AsyncPool[Any] = tidepool.AsyncPool(url(app, driver), max_size=2)
        try:
            await pool.open()
            started = asyncio.Semaphore(0)

            async def borrower() -> None:
                async with pool.acquire() as conn:
                    started.release()
                    await run(conn, driver, f"SELECT {LONG_NEEDLE}")

            stuck = asyncio.create_task(borrower())
            cancelled = asyncio.create_task(borrower())
            for _ in range(2):
                await asyncio.wait_for(started.acquire(), BOUND)
            await asyncio.to_thread(_wait_active_count, app, LONG_NEEDLE, 2)
            cancelled.cancel()
            began = time.monotonic()
            await asyncio.wait_for(pool.aclose(timeout=1.0), BOUND * 2)
            assert time.monotonic() - began < BOUND * 2
            await asyncio.wait([stuck, cancelled], timeout=BOUND)
            assert stuck.done(), "the borrower is still waiting on a connection closed under it"
            assert cancelled.done()
            if not stuck.cancelled():
                stuck.exception()  # the driver's error for a connection closed under it
            assert pool.stats().size == 0, pool.stats()
            left = await eventually(lambda: session_count(app) == 0)
            assert left, (
                f"sessions left on the server after aclose: {session_count(app)}, running "
                f"{active_queries(app, LONG_NEEDLE)}"
            )
        finally:
            await pool.aclose(timeout=1)
            await asyncio.to_thread(_cancel_leftovers, app)

    run_async(main)


def _wait_active_count(app: str, needle: str, count: int) -> None:
    assert eventually_sync(lambda: len(active_queries(app, needle)) == count)


# ---------------------------------------------------------------------- CAN-5


@pytest.mark.parametrize("driver", DRIVERS)
def test_late_cancel_request_never_hits_next_borrower(driver: str) -> None:
    """CAN-5: a query is cancelled (sometimes just as it finishes by itself, so the cancel
    request is late); the next borrower's own half-second query on the same connection must
    complete with its own value, never with QueryCanceled. 20 rounds over 4 pools at once."""
    require_pg()
    rng = random.Random(5)
    plans = [[(rng.uniform(0, 0.04), rng.uniform(0, 0.04)) for _ in range(5)] for _ in range(4)]

    async def one_pool(plan: list[tuple[float, float]]) -> int:
        cancelled = 0
        async with apool(driver, max_size=1) as (pool, app):
            for query_time, cancel_after in plan:
                started = asyncio.Event()

                async def victim(
                    seconds: float = query_time, started: asyncio.Event = started
                ) -> None:
                    async with pool.acquire() as conn:
                        started.set()
                        await fetch(conn, driver, f"SELECT pg_sleep({seconds:.4f})")

                task = asyncio.create_task(victim())
                await asyncio.wait_for(started.wait(), BOUND)
                await asyncio.sleep(cancel_after)
                task.cancel()
                await asyncio.wait([task], timeout=BOUND)
                assert task.done()
                if task.cancelled():
                    cancelled += 1
                else:
                    assert task.exception() is None, task.exception()
                value = unique()
                async with pool.acquire(timeout=BOUND) as conn:
                    rows = await asyncio.wait_for(
                        fetch(conn, driver, "SELECT $1::int FROM pg_sleep(0.5)", value), BOUND
                    )
                assert rows == [(value,)], rows
            await settle(pool, app)
        return cancelled

    async def main() -> None:
        counts = await asyncio.gather(*(one_pool(plan) for plan in plans))
        assert sum(counts) > 0, "no query was ever cancelled: the scenario tested nothing"

    run_async(main)


# ---------------------------------------------------------------------- CAN-6


async def make_dirty(conn: Any, driver: str, lock_key: int, temp_tables: int) -> None:
    """Leave every kind of session state the reset must undo; many temp tables make the
    reset (DISCARD TEMP) slow enough to be cancelled in the middle."""
    await run(conn, driver, "SET search_path = pg_catalog")
    await run(conn, driver, "LISTEN tidepool_cancel_test")
    await fetch(conn, driver, f"SELECT pg_advisory_lock({lock_key})")
    await run(
        conn,
        driver,
        "DO $$ BEGIN FOR i IN 1.." + str(temp_tables) + " LOOP "
        "EXECUTE format('CREATE TEMP TABLE tp_cancel_%s (a int)', i); END LOOP; END $$",
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_cancel_during_reset_never_lends_dirty(driver: str) -> None:
    """CAN-6: the borrower's task is cancelled while the pool resets its connection (right
    after the body returned, and a few ms later). The connection is then either reset or
    closed; the next borrower finds a clean session and the lock is free on the server."""
    require_pg()

    async def main() -> None:
        async with apool(driver, max_size=1) as (pool, app):
            for delay in (0.0, 0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
                lock_key = unique()
                body_done = asyncio.Event()

                async def victim(key: int = lock_key, body_done: asyncio.Event = body_done) -> None:
                    async with pool.acquire() as conn:
                        await make_dirty(conn, driver, key, temp_tables=150)
                        body_done.set()
                    # the release (and its reset) ran in __aexit__, in this task

                task = asyncio.create_task(victim())
                await asyncio.wait_for(body_done.wait(), BOUND * 2)
                if delay:
                    await asyncio.sleep(delay)
                task.cancel()
                await asyncio.wait([task], timeout=BOUND)
                assert task.done(), "release did not finish within its bound"
                if not task.cancelled():
                    assert task.exception() is None, task.exception()
                async with pool.acquire(timeout=BOUND) as conn:
                    assert await clean_session_report(conn, driver) == CLEAN
                    value = unique()
                    assert await own_value(conn, driver, value) == value
                assert await eventually(lambda key=lock_key: advisory_lock_free(key)), (
                    f"advisory lock {lock_key} still held on the server after the release"
                )
                await settle(pool, app)
            # Cancelled with the reset in flight, the connection's state is unknown: closed.
            assert pool.stats().closed >= 1, f"no cancel ever hit a reset: {pool.stats()}"

    run_async(main)


@pytest.mark.parametrize("driver", DRIVERS)
def test_timeout_around_whole_checkout(driver: str) -> None:
    """CAN-6 with ``asyncio.timeout`` tight around the whole ``async with``: it fires in
    the acquire, the body or the reset. Whatever it hits, the next borrower is clean."""
    require_pg()

    async def main() -> None:
        async with apool(driver, max_size=1) as (pool, app):
            timed_out = 0
            for budget in (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12):
                lock_key = unique()
                try:
                    async with asyncio.timeout(budget):
                        async with pool.acquire() as conn:
                            await make_dirty(conn, driver, lock_key, temp_tables=60)
                            await fetch(conn, driver, "SELECT pg_sleep(0.01)")
                except tidepool.PoolTimeout:
                    raise
                except TimeoutError:
                    timed_out += 1
                async with pool.acquire(timeout=BOUND) as conn:
                    assert await clean_session_report(conn, driver) == CLEAN
                    value = unique()
                    assert await own_value(conn, driver, value) == value
                assert await eventually(lambda key=lock_key: advisory_lock_free(key))
            assert timed_out > 0
            await settle(pool, app)

    run_async(main)


# ---------------------------------------------------------------------- storm (LOAD-6)


@pytest.mark.parametrize("driver", DRIVERS)
def test_cancellation_storm(driver: str) -> None:
    """LOAD-6 / design.md section 7: 300 seeded checkouts over 8 tasks on max_size=3, each
    checking it gets its own value back from a clean session, with cancellations and
    timeouts at random points (acquire, query, reset). Then the invariants hold, the
    server's session count equals the pool's size and the pool lends max_size at once."""
    require_pg()
    rng = random.Random(20240611)
    iterations, workers, max_size = 300, 8, 3

    async def main() -> None:
        async with apool(driver, max_size=max_size) as (pool, app):
            problems: list[str] = []
            outcomes = {"ok": 0, "cancelled": 0, "timeout": 0}
            plan = [
                (
                    rng.choice(("none", "none", "cancel", "timeout")),
                    rng.uniform(0.0, 0.02),
                    rng.choice(("plain", "sleep", "dirty")),
                )
                for _ in range(iterations)
            ]
            todo = iter(plan)

            async def checkout(work: str) -> None:
                value = unique()
                async with pool.acquire() as conn:
                    rows = await fetch(
                        conn,
                        driver,
                        "SELECT $1::int, current_setting('search_path'), "
                        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        " AND pid = pg_backend_pid())::int, "
                        "(SELECT count(*) FROM pg_listening_channels())::int "
                        "FROM pg_sleep($2)",
                        value,
                        0.005 if work == "sleep" else 0.0,
                    )
                    expected = (value, DEFAULT_SEARCH_PATH, 0, 0)
                    if rows != [expected]:
                        problems.append(f"expected {expected}, got {rows}")
                    if work == "dirty":
                        await fetch(
                            conn,
                            driver,
                            "SELECT set_config('search_path', 'pg_catalog', false), "
                            "pg_advisory_lock($1)",
                            value,
                        )
                        await run(conn, driver, "LISTEN tidepool_storm")

            async def worker() -> None:
                for mode, delay, work in todo:
                    if mode == "timeout":
                        task = asyncio.create_task(_with_timeout(checkout(work), delay))
                    else:
                        task = asyncio.create_task(checkout(work))
                        if mode == "cancel":
                            await asyncio.sleep(delay)
                            task.cancel()
                    await asyncio.wait([task], timeout=BOUND * 3)
                    if not task.done():
                        problems.append(f"a checkout ({mode}, {work}) hung")
                        task.cancel()
                        continue
                    if task.cancelled():
                        outcomes["cancelled"] += 1
                        continue
                    exc = task.exception()
                    if exc is None:
                        outcomes["ok"] += 1
                    elif isinstance(exc, TimeoutError) and not isinstance(
                        exc, tidepool.PoolTimeout
                    ):
                        outcomes["timeout"] += 1
                    else:
                        problems.append(f"{mode}/{work}: {exc!r}")

            await asyncio.gather(*(worker() for _ in range(workers)))
            assert not problems, problems[:10]
            assert outcomes["ok"] > 0, outcomes
            assert outcomes["cancelled"] + outcomes["timeout"] > 0, outcomes
            await settle(pool, app)
            assert pool.stats().size <= max_size
            await lend_all(pool, driver)
            await settle(pool, app)

    run_async(main)


async def _with_timeout(work: Awaitable[None], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        await work


# ---------------------------------------------------------------------- Pool (threads)


def _pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _check_next_borrower(pool: tidepool.Pool[Any]) -> int:
    """The next borrower: own value, clean session, working statements; its backend pid."""
    with pool.acquire(timeout=BOUND) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        value = unique()
        row = conn.execute(
            "SELECT %s::int, current_setting('statement_timeout'), "
            "current_setting('search_path') FROM pg_sleep(0.2)",
            (value,),
        ).fetchone()
        assert row == (value, "0", DEFAULT_SEARCH_PATH), row
        return _pid(conn)


def test_sync_statement_timeout_leaves_connection_usable() -> None:
    """Pool: a statement interrupted by statement_timeout (set for the session, set LOCAL in
    a transaction left failed, or inside pool.transaction()) leaves the connection rolled
    back, reset and lent again: the next borrower works on the same backend."""
    require_pg()
    with spool(max_size=1) as (pool, app):
        with pool.acquire() as conn:
            pid = _pid(conn)
            conn.execute("SET statement_timeout = '50ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(f"SELECT pg_sleep({LONG_SLEEP})")
        assert _check_next_borrower(pool) == pid

        def in_failed_transaction() -> None:
            with pool.acquire() as conn:
                conn.execute("BEGIN")
                conn.execute("SET LOCAL statement_timeout = '50ms'")
                conn.execute("SET search_path = pg_catalog")
                conn.execute(f"SELECT pg_sleep({LONG_SLEEP})")

        with pytest.raises(psycopg.errors.QueryCanceled):
            in_failed_transaction()  # given back with a failed transaction (INERROR)
        assert _check_next_borrower(pool) == pid

        def in_pool_transaction() -> None:
            with pool.transaction() as conn:
                conn.execute("SET LOCAL statement_timeout = '50ms'")
                conn.execute(f"SELECT pg_sleep({LONG_SLEEP})")

        with pytest.raises(psycopg.errors.QueryCanceled):
            in_pool_transaction()
        assert _check_next_borrower(pool) == pid
        assert not active_queries(app, LONG_NEEDLE)
        settle_sync(pool, app)


def _wait_active(app: str, needle: str) -> int:
    """The pid of the session of ``app`` running a query containing ``needle``."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        with admin() as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND state = 'active' AND position(%s in query) > 0",
                (app, needle),
            ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError(f"no active {needle!r} query for {app}")


def test_sync_query_cancelled_from_another_connection() -> None:
    """Pool: a borrower's query is cancelled with pg_cancel_backend from another session,
    mid-query and in a transaction; the connection comes back usable on the same backend."""
    require_pg()
    with spool(max_size=1) as (pool, app), concurrent.futures.ThreadPoolExecutor(1) as ex:

        def borrower(in_transaction: bool) -> int:
            with pool.acquire() as conn:
                if in_transaction:
                    conn.execute("BEGIN")
                    conn.execute("SET LOCAL search_path = pg_catalog")
                try:
                    conn.execute(f"SELECT pg_sleep({LONG_SLEEP})")
                except psycopg.errors.QueryCanceled:
                    return _pid_unchecked(conn)
                raise AssertionError("the query was not cancelled")

        for in_transaction in (False, True):
            future = ex.submit(borrower, in_transaction)
            pid = _wait_active(app, LONG_NEEDLE)
            with admin() as conn:
                conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
            assert future.result(timeout=BOUND) == pid
            assert _check_next_borrower(pool) == pid
        settle_sync(pool, app)


def _pid_unchecked(conn: psycopg.Connection[Any]) -> int:
    # In a failed transaction no query runs; libpq knows the backend pid.
    return int(conn.info.backend_pid)


def test_sync_terminated_backend_is_replaced() -> None:
    """Pool: the backend of a lent connection is terminated (while idle in the borrower's
    hands, and while running a query); the borrower sees the driver's error, the connection
    is discarded on release, and the next borrower gets a fresh, working one."""
    require_pg()
    with spool(max_size=1) as (pool, app), concurrent.futures.ThreadPoolExecutor(1) as ex:
        closed_before = pool.stats().closed
        with pool.acquire() as conn:
            old = _pid(conn)
            with admin() as other:
                other.execute("SELECT pg_terminate_backend(%s, 5000)", (old,))
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        new = _check_next_borrower(pool)
        assert new != old
        assert old not in backend_pids(app)

        def busy() -> None:
            with pool.acquire() as conn:
                conn.execute(f"SELECT pg_sleep({LONG_SLEEP})")

        future = ex.submit(busy)
        busy_pid = _wait_active(app, LONG_NEEDLE)
        assert busy_pid == new
        with admin() as other:
            other.execute("SELECT pg_terminate_backend(%s, 5000)", (busy_pid,))
        with pytest.raises(psycopg.OperationalError):
            future.result(timeout=BOUND)
        newest = _check_next_borrower(pool)
        assert newest not in (old, new)
        settle_sync(pool, app)
        assert pool.stats().closed >= closed_before + 2, pool.stats()


# Streams a borrower may leave unfinished. "large": the server is busy sending rows (it
# notices a closed socket at once). "slow": the first rows arrive at once (the second pushes
# the first out of the server's 8 kB send buffer), then the server sleeps inside the query,
# where it does not notice a closed socket until the sleep ends.
STREAMS = {
    "large": ("SELECT generate_series(1, 2000000)::text", "generate_series"),
    "slow": (
        "SELECT CASE WHEN x < 3 THEN repeat('x', 20000) "
        f"ELSE (SELECT 'y' FROM {LONG_NEEDLE} WHERE x > 0) END "
        "FROM generate_series(1, 3) AS x",
        LONG_NEEDLE,
    ),
}


def wait_sleeping(app: str, stream_kind: str) -> None:
    """For the "slow" stream: wait until the server really sleeps inside the query (so the
    scenario does not depend on how fast the connection is given back)."""
    if stream_kind != "slow":
        return
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        with admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event = 'PgSleep'",
                (app,),
            ).fetchone()
        if row is not None and row[0] == 1:
            return
        time.sleep(0.02)
    raise AssertionError("the slow stream never reached its sleep")


@pytest.mark.parametrize("stream_kind", sorted(STREAMS))
def test_sync_connection_returned_mid_query(stream_kind: str) -> None:
    """Pool: a connection given back with its query still running (a stream left
    unfinished) is not lent again as it is: the next borrower gets its own rows at once, and
    the abandoned query does not keep a server session beyond the pool's size (it is
    cancelled, or its session ends)."""
    require_pg()
    sql, needle = STREAMS[stream_kind]
    with spool(max_size=1) as (pool, app):
        with pool.acquire() as conn:
            stream = conn.cursor().stream(sql)
            assert len(next(stream)[0]) > 0
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
            wait_sleeping(app, stream_kind)
        try:
            # the stream is still referenced: the connection came back ACTIVE
            _check_next_borrower(pool)
            assert eventually_sync(lambda: not active_queries(app, needle)), (
                f"the abandoned query still runs on the server: {active_queries(app, needle)}"
            )
            settle_sync(pool, app)
        finally:
            with contextlib.suppress(Exception):
                stream.close()


@pytest.mark.parametrize("stream_kind", sorted(STREAMS))
def test_async_psycopg_connection_returned_mid_stream(stream_kind: str) -> None:
    """AsyncPool (psycopg): the same, with an async stream left unfinished."""
    require_pg()
    sql, needle = STREAMS[stream_kind]

    async def main() -> None:
        async with apool("psycopg", max_size=1) as (pool, app):
            async with pool.acquire() as conn:
                stream = conn.cursor().stream(sql)
                assert len((await anext(stream))[0]) > 0
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
                await asyncio.to_thread(wait_sleeping, app, stream_kind)
            try:
                value = unique()
                got = await asyncio.wait_for(next_borrower(pool, "psycopg", value), BOUND)
                assert got == value
                assert await eventually(lambda: not active_queries(app, needle)), (
                    f"the abandoned query still runs on the server: "
                    f"{await asyncio.to_thread(active_queries, app, needle)}"
                )
                await settle(pool, app)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    run_async(main)


def test_asyncpg_cancelled_between_start_and_commit() -> None:
    """AsyncPool (asyncpg): a task cancelled between ``tr.start()`` and ``tr.commit()``
    (asyncpg's unmanaged transaction), with a cursor open; the connection comes back in a
    transaction. The next borrower gets a clean session and its own rows, and nothing is
    reported to the event loop."""
    require_pg()

    async def main() -> None:
        async with apool("asyncpg", max_size=1) as (pool, app):
            started = asyncio.Event()

            async def victim() -> None:
                async with pool.acquire() as conn:
                    tr = conn.transaction()
                    await tr.start()
                    await conn.execute("SET LOCAL search_path = pg_catalog")
                    cursor = conn.cursor("SELECT generate_series(1, 100000)", prefetch=10)
                    async for _row in cursor:
                        started.set()
                        await asyncio.sleep(0.01)
                    await tr.commit()

            task = asyncio.create_task(victim())
            await asyncio.wait_for(started.wait(), BOUND)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, BOUND)
            async with pool.acquire(timeout=BOUND) as conn:
                assert await clean_session_report(conn, "asyncpg") == CLEAN
                value = unique()
                assert await own_value(conn, "asyncpg", value) == value
            await settle(pool, app)

    run_async(main)


def test_sync_threads_interrupted_by_statement_timeout_under_load() -> None:
    """Pool: four threads on max_size=2, each checkout either interrupted by a short
    statement_timeout or not; every borrower gets its own value and, at the end, the
    invariants and the server-side session count hold."""
    require_pg()
    rng = random.Random(7)
    plan = [(rng.random() < 0.5, rng.choice((5, 10, 20))) for _ in range(60)]
    lock = threading.Lock()
    todo = iter(plan)
    problems: list[str] = []

    with spool(max_size=2) as (pool, app):

        def worker() -> None:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                interrupt, ms = item
                value = unique()
                try:
                    with pool.acquire() as conn:
                        row = conn.execute(
                            "SELECT %s::int, current_setting('statement_timeout')", (value,)
                        ).fetchone()
                        if row != (value, "0"):
                            problems.append(f"expected {(value, '0')}, got {row}")
                        if interrupt:
                            conn.execute(f"SET statement_timeout = '{ms}ms'")
                            conn.execute(f"SELECT pg_sleep({LONG_SLEEP})")
                            problems.append("statement_timeout did not interrupt")
                except psycopg.errors.QueryCanceled:
                    if not interrupt:
                        problems.append("a query was cancelled that nobody cancelled")
                except Exception as exc:
                    problems.append(repr(exc))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BOUND * 4)
        assert not any(t.is_alive() for t in threads), "a worker hung"
        assert not problems, problems[:10]
        settle_sync(pool, app)
