"""asyncpg: the reset's probe for SQL-level prepared statements is prepared once per
connection and executed by name, instead of being planned by the server on every release
(issue 5: the reset's server cost), and a borrower that deallocates it still gets a clean
session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import tidepool
from pg_helpers import app_name, pg_url, require_pg

PROBES = (
    "SELECT name, from_sql, generic_plans + custom_plans FROM pg_prepared_statements "
    "WHERE name LIKE 'tidepool_reset_probe_%'"
)


@asynccontextmanager
async def one_connection_pool(*, probed: bool = True) -> AsyncIterator[tidepool.AsyncPool[Any]]:
    """An open pool of one asyncpg connection; ``probed``: its first reset has run, so the
    probe is prepared."""
    pool: tidepool.AsyncPool[Any] = tidepool.AsyncPool(
        pg_url(app_name(), driver="asyncpg"), max_size=1, min_size=1, check="never"
    )
    try:
        await pool.open()
        if probed:
            async with pool.acquire() as conn:
                await conn.execute("SET work_mem TO '7MB'")  # the first reset prepares it
        yield pool
        assert pool.stats().reset_failures == 0
    finally:
        await pool.aclose()


async def probes(conn: Any) -> list[tuple[str, bool, int]]:
    """The probes prepared on ``conn``'s session: (name, from_sql, times run)."""
    # Outside asyncpg's statement cache, which a borrower's DEALLOCATE ALL leaves stale.
    statement = await conn.prepare(PROBES)
    return [(row[0], row[1], row[2]) for row in await statement.fetch()]


def test_the_probe_is_prepared_once_and_executed_by_every_reset() -> None:
    require_pg()

    async def main() -> None:
        async with one_connection_pool(probed=False) as pool:
            async with pool.acquire() as conn:
                pid = conn.get_server_pid()
                assert await probes(conn) == []  # prepared by the first reset, not at connect
                await conn.execute("SET search_path TO pg_catalog")
            async with pool.acquire() as conn:
                [(name, from_sql, runs)] = await probes(conn)
                assert not from_sql  # a protocol-level statement: never reports itself
            for _ in range(5):
                async with pool.acquire() as conn:
                    await conn.execute("SET search_path TO pg_catalog")
            async with pool.acquire() as conn:
                assert conn.get_server_pid() == pid
                assert await conn.fetchval("SHOW search_path") == '"$user", public'
                # The same statement, run by each of the six resets since.
                assert await probes(conn) == [(name, False, runs + 6)]
                user_statements = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
                assert await conn.fetchval(user_statements) == 0

    asyncio.run(main())


def test_preparing_the_probe_leaves_no_transaction_open() -> None:
    """asyncpg prepares without a Sync: the server then sits in an implicit transaction, and
    the next borrower's first statement, a BEGIN with an isolation level, would fail."""
    require_pg()

    async def main() -> None:
        async with one_connection_pool() as pool, pool.acquire() as conn:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            isolation = "SELECT current_setting('transaction_isolation')"
            assert await conn.fetchval(isolation) == "repeatable read"
            await conn.execute("ROLLBACK")

    asyncio.run(main())


def test_the_prepared_probe_finds_a_borrowers_prepared_statement() -> None:
    require_pg()

    async def main() -> None:
        async with one_connection_pool() as pool:
            async with pool.acquire() as conn:
                assert len(await probes(conn)) == 1
                await conn.execute("PREPARE tp_user_stmt AS SELECT 1")
                await conn.execute("SET work_mem TO '9MB'")
            async with pool.acquire() as conn:
                names = await conn.fetch("SELECT name FROM pg_prepared_statements WHERE from_sql")
                assert names == []
                assert await conn.fetchval("SHOW work_mem") != "9MB"
                assert len(await probes(conn)) == 1  # the deallocating reset kept it

    asyncio.run(main())


@pytest.mark.parametrize("how", ["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE {probe}"])
def test_a_borrower_that_deallocates_the_probe_still_gets_a_clean_session(how: str) -> None:
    require_pg()

    async def main() -> None:
        async with one_connection_pool() as pool:
            async with pool.acquire() as conn:
                pid = conn.get_server_pid()
                [(old, _, _)] = await probes(conn)
                await conn.execute(how.format(probe=old))
                await conn.execute("PREPARE tp_user_stmt AS SELECT 1")
                await conn.execute("SET search_path TO pg_catalog")
            async with pool.acquire() as conn:
                assert conn.get_server_pid() == pid  # reset, not closed
                await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE; ROLLBACK")
                # (new statement texts: DEALLOCATE ALL also dropped asyncpg's own cached ones)
                assert await conn.fetchval("SHOW search_path /* after */") == '"$user", public'
                user_statements = "SELECT name FROM pg_prepared_statements WHERE from_sql -- after"
                assert await conn.fetch(user_statements) == []
                [(new, from_sql, _)] = await probes(conn)
                assert new != old  # prepared again, under a new name
                assert not from_sql

    asyncio.run(main())
