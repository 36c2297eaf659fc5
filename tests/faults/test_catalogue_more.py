"""Two more scenarios of the reliability catalogue: a restart of a TLS server under a warm
pool (NET-11) and an async generator that holds a transaction and is finalised late
(LEAK-14).

NET-11 runs on a private TLS cluster (never on the shared server) for AsyncPool + asyncpg,
AsyncPool + psycopg and Pool + psycopg. LEAK-14 is about asyncio's async generators, so it
runs for AsyncPool + asyncpg and AsyncPool + psycopg, on the shared server with a table of
its own. Both end with the invariant check of design.md section 7 (``settle``), including the
server-side session count for the pool's ``application_name``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import psycopg
import pytest

import tidepool
from pg_helpers import admin, app_name, pg_url, require_pg, session_count

from .pgcluster import FLAVOURS, Driver, Flavour, PrivateCluster, settle
from .test_pg_tls import SSL_IN_USE, tls_url

# ---------------------------------------------------------------- NET-11

TLS_SESSIONS = (
    "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)"
    " FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = %s"
)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return the last answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def eventually_async(count: Callable[[], int], expected: int, timeout: float = 5.0) -> bool:
    """Poll the blocking ``count()`` (in a thread) until it returns ``expected``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await asyncio.to_thread(count) != expected:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def tls_sessions(cluster: PrivateCluster, app: str) -> tuple[int, int]:
    """(encrypted, plain) server-side sessions of ``app``."""
    [(encrypted, plain)] = cluster.sql(TLS_SESSIONS, (app,))
    return int(encrypted), int(plain)


@pytest.mark.parametrize(
    ("mode", "sslmode"), [("fast", "require"), ("fast", "verify-full"), ("immediate", "require")]
)
def test_net11_tls_restart_with_warm_pool_costs_at_most_one_request(
    tls_cluster: PrivateCluster, flavour: Flavour, mode: str, sslmode: str
) -> None:
    """NET-11: NET-3 over TLS. Restart the server under a warm pool of five TLS sessions
    (every one used recently, so the idle check does not run): of 10 sequential requests
    after the restart at most one fails, so the TLS flavour of "the server went away" (SSL
    EOF, "SSL connection has been closed unexpectedly") retires the whole generation like a
    plain disconnect; the new sessions are TLS again, and the invariants hold."""
    app = app_name("net11")
    params = {"sslmode": sslmode}
    if sslmode == "verify-full":
        params["sslrootcert"] = str(tls_cluster.ca_cert)
    url = tls_url(tls_cluster, flavour, app, **params)

    def sessions() -> int:
        return tls_cluster.session_count(app)

    async def main() -> None:
        driver = Driver(
            flavour,
            url,
            min_size=5,
            max_size=10,
            check="idle",
            check_idle_after=60,
            acquire_timeout=10,
            connect_timeout=5,
        )
        try:
            await driver.open()
            await settle(driver, sessions, size=5)

            async def use_one() -> Any:
                async with driver.acquire() as conn:
                    await driver.value(conn, "SELECT pg_sleep(0.05)")
                    return await driver.value(conn, SSL_IN_USE)

            # Warm: all five in use at once (each one answers over TLS).
            assert await asyncio.gather(*(use_one() for _ in range(5))) == [True] * 5
            warm = await settle(driver, sessions, size=5)
            assert warm.connects == 5
            assert await asyncio.to_thread(tls_sessions, tls_cluster, app) == (5, 0)
            old_pids = set(await asyncio.to_thread(tls_cluster.backend_pids, app))

            await asyncio.to_thread(tls_cluster.restart, mode)
            failures: list[BaseException] = []
            for i in range(10):
                try:
                    assert await driver.fetch_value(f"SELECT {i}") == i
                except Exception as exc:
                    failures.append(exc)
            assert len(failures) <= 1, (
                f"{len(failures)} of 10 requests failed after a {mode} restart over TLS: "
                + "; ".join(f"{type(e).__name__}: {e}" for e in failures)
            )
            for exc in failures:  # the driver's error or the pool's, never an assertion
                assert isinstance(exc, (*driver.driver_errors(), tidepool.PoolError)), repr(exc)

            assert await driver.fetch_value(SSL_IN_USE) is True
            after = await settle(driver, sessions)
            assert after.size >= 5
            assert after.connects >= 6
            # The whole pre-restart generation was retired (a close may still be finishing).
            assert await eventually(lambda: driver.stats().closed >= 5), driver.stats()
            assert after.size <= after.max_size
            encrypted, plain = await asyncio.to_thread(tls_sessions, tls_cluster, app)
            assert (encrypted, plain) == (after.size, 0)
            pids = set(await asyncio.to_thread(tls_cluster.backend_pids, app))
            assert not pids & old_pids  # every session is one made after the restart
        finally:
            await driver.close()
        # The server ends a backend a moment after its client closed it.
        assert await eventually_async(sessions, 0), "sessions remain after close"

    asyncio.run(main())


# ---------------------------------------------------------------- LEAK-14

ASYNC_FLAVOURS = [f for f in FLAVOURS if not f.sync]


@pytest.fixture
def leak_table() -> Iterator[str]:
    """A table of this test's own on the shared server, dropped afterwards."""
    require_pg()
    table = f"leak14_{uuid.uuid4().hex[:12]}"
    with admin() as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        yield table
    finally:
        with admin() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


class LoopErrors:
    """Collects what reaches the event loop's exception handler (an exception in a task or
    in an async generator's finaliser, "Task exception was never retrieved", ...)."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: self.contexts.append(context)
        )

    def check(self) -> None:
        assert self.contexts == [], [
            f"{c.get('message')}: {c.get('exception')!r}" for c in self.contexts
        ]


async def in_transaction(flavour: Flavour, conn: Any) -> bool:
    """Whether the driver says the connection is inside a transaction."""
    if flavour.id == "asyncpg":
        return bool(conn.is_in_transaction())
    return bool(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


async def value(flavour: Flavour, conn: Any, sql: str, *args: Any) -> Any:
    if flavour.id == "asyncpg":
        return await conn.fetchval(sql, *args)
    cur = await conn.execute(sql, args or None)
    row = await cur.fetchone()
    return None if row is None else row[0]


def make_rows(
    flavour: Flavour, table: str, pids: list[int]
) -> Callable[[tidepool.AsyncPool[Any]], AsyncIterator[int]]:
    """The async generator under test: a transaction that inserts a row (uncommitted while
    the generator is suspended) and yields 100 values, each read on the connection."""
    p = flavour.placeholder

    async def rows(pool: tidepool.AsyncPool[Any]) -> AsyncIterator[int]:
        async with pool.transaction() as conn:
            pids.append(await value(flavour, conn, "SELECT pg_backend_pid()"))
            await value(flavour, conn, f"INSERT INTO {table} VALUES (1) RETURNING id")
            for i in range(100):
                yield await value(flavour, conn, f"SELECT {p}::int + 0", i)

    return rows


class Stop(Exception):
    pass


async def check_clean(
    flavour: Flavour, pool: tidepool.AsyncPool[Any], table: str, app: str, pid: int
) -> None:
    """The next borrower (max_size=1: the connection the generator had) sees no transaction
    and no uncommitted row, and the server shows the session idle, outside a transaction."""
    async with pool.acquire() as conn:
        assert not await in_transaction(flavour, conn)
        assert await value(flavour, conn, "SELECT pg_backend_pid()") == pid  # reused, not replaced
        assert await value(flavour, conn, f"SELECT count(*) FROM {table}") == 0
    assert await pool.fetch_value(f"SELECT count(*) FROM {table}") == 0

    def server_view() -> list[tuple[Any, ...]]:
        with admin() as conn:
            return conn.execute(
                "SELECT state, backend_xid IS NULL FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app,),
            ).fetchall()

    assert await asyncio.to_thread(server_view) == [("idle", True)]
    stats = await settle_shared(pool, app, size=1)
    assert (stats.closed, stats.reset_failures, stats.reclaimed) == (0, 0, 0), stats


class StatsOnly:
    """The one method of a :class:`Driver` that ``settle`` uses, over a bare AsyncPool."""

    def __init__(self, pool: tidepool.AsyncPool[Any]) -> None:
        self.stats = pool.stats


async def settle_shared(pool: tidepool.AsyncPool[Any], app: str, size: int) -> Any:
    """``settle`` for a pool on the shared server (sessions counted by application_name)."""
    return await settle(cast(Driver, StatsOnly(pool)), lambda: session_count(app), size=size)


@pytest.mark.parametrize("ending", ["break", "raise", "aclose"])
@pytest.mark.parametrize("flavour", ASYNC_FLAVOURS, ids=str)
def test_leak14_asyncgen_holding_a_transaction_finalised_late(
    flavour: Flavour, leak_table: str, ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LEAK-14: ``async for`` over a generator that holds ``pool.transaction()``, left by
    ``break`` or an exception in the loop body without closing the generator (asyncio's
    finaliser hook closes it once it is unreachable), or by an explicit ``aclose()``. After
    ``break`` the next borrower queues (max_size=1) until the finaliser has run. Afterwards
    the connection is back and clean: rolled back, reused (not discarded), no "another
    operation is in progress", nothing reported to the loop or logged."""
    app = app_name("leak14")
    url = pg_url(app, driver="psycopg" if flavour.id == "psycopg-async" else "")
    caplog.set_level(logging.WARNING, logger="tidepool")

    async def main() -> None:
        errors = LoopErrors()
        errors.install()
        pids: list[int] = []
        rows = make_rows(flavour, leak_table, pids)
        pool = tidepool.AsyncPool(url, min_size=1, max_size=1, acquire_timeout=10)
        try:
            await pool.open()
            await settle_shared(pool, app, size=1)
            seen: list[int] = []
            if ending == "break":
                async for v in rows(pool):
                    seen.append(v)
                    if v == 3:
                        break
            elif ending == "raise":
                raised = False
                try:
                    async for v in rows(pool):
                        seen.append(v)
                        if v == 3:
                            raise Stop
                except Stop:
                    raised = True
                assert raised
                # Nobody else asks for the connection: asyncio's finaliser alone brings it back.
                for _ in range(200):
                    if pool.stats().in_use == 0:
                        break
                    await asyncio.sleep(0.025)
                assert pool.stats().in_use == 0, pool.stats()
            elif ending == "aclose":
                gen = rows(pool)
                async for v in gen:
                    seen.append(v)
                    if v == 3:
                        break
                assert pool.stats().in_use == 1  # still suspended inside the transaction
                await gen.aclose()
                assert pool.stats().in_use == 0  # back as soon as aclose() returns
            assert seen == [0, 1, 2, 3]
            # After "break" this borrower queues behind the suspended generator (max_size=1)
            # and gets the connection once asyncio's finaliser has closed the generator.
            assert await pool.fetch_value(f"SELECT count(*) FROM {leak_table}") == 0
            assert len(pids) == 1
            await check_clean(flavour, pool, leak_table, app, pids[0])
            errors.check()
        finally:
            await pool.aclose()
        assert await asyncio.to_thread(session_count, app) == 0

    asyncio.run(main())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("flavour", ASYNC_FLAVOURS, ids=str)
def test_leak14_asyncgen_closed_by_loop_shutdown(
    flavour: Flavour, leak_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LEAK-14, the latest finalisation: a generator still referenced when the coroutine
    that ran it returns is closed by ``loop.shutdown_asyncgens()``, which ``asyncio.run``
    (and ``asyncio.Runner.close``) call at the end. Run the same steps with a Runner so the
    pool can be checked and closed on that loop afterwards."""
    app = app_name("leak14s")
    url = pg_url(app, driver="psycopg" if flavour.id == "psycopg-async" else "")
    caplog.set_level(logging.WARNING, logger="tidepool")
    pids: list[int] = []
    rows = make_rows(flavour, leak_table, pids)
    errors = LoopErrors()
    kept: list[Any] = []
    pool = tidepool.AsyncPool(url, min_size=1, max_size=1, acquire_timeout=10)

    async def first() -> None:
        errors.install()
        await pool.open()
        gen = rows(pool)
        kept.append(gen)  # still reachable when this coroutine returns
        async for v in gen:
            if v == 5:
                break
        assert pool.stats().in_use == 1

    async def then() -> None:
        try:
            assert pool.stats().in_use == 0  # shutdown_asyncgens() gave it back
            assert len(pids) == 1
            await check_clean(flavour, pool, leak_table, app, pids[0])
            errors.check()
        finally:
            await pool.aclose()

    with asyncio.Runner() as runner:
        try:
            runner.run(first())
            loop = runner.get_loop()
            loop.run_until_complete(loop.shutdown_asyncgens())  # as asyncio.run does at exit
            assert kept[0].ag_frame is None  # the generator is finished
        finally:
            runner.run(then())
    assert session_count(app) == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
