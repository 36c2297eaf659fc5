"""asyncpg: a borrower that sent no statement costs no reset round trip, and one that sent
anything, however it sent it, still gets the full reset (issue 5: reset cost without
trading the clean-session guarantee)."""

from __future__ import annotations

import asyncio
from typing import Any

import tidepool
from pg_helpers import app_name, pg_url, require_pg


def queries_sent(conn: Any) -> int:
    return int(conn._protocol.queries_count)


async def one_connection_pool(**options: Any) -> tidepool.AsyncPool[Any]:
    pool: tidepool.AsyncPool[Any] = tidepool.AsyncPool(
        pg_url(app_name(), driver="asyncpg"), max_size=1, min_size=1, check="never", **options
    )
    await pool.open()
    return pool


def test_a_borrower_that_ran_nothing_costs_no_round_trip() -> None:
    require_pg()

    async def main() -> None:
        pool = await one_connection_pool()
        try:
            async with pool.acquire() as conn:
                await conn.execute("SET application_name TO 'dirty'")  # the first reset is full
            async with pool.acquire() as conn:
                before = queries_sent(conn)
            for _ in range(50):
                async with pool.acquire() as conn:
                    pass
            assert queries_sent(conn) == before  # 50 releases, not one statement sent
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_any_statement_still_gets_the_full_reset() -> None:
    require_pg()

    async def main() -> None:
        pool = await one_connection_pool()
        try:
            dirtiers = [
                lambda c: c.execute("SET search_path TO pg_catalog"),
                lambda c: c.fetchval("SELECT set_config('search_path', 'pg_catalog', false)"),
                lambda c: c.fetch("SELECT set_config('search_path', 'pg_catalog', false)"),
                lambda c: c.executemany(
                    "SELECT set_config('search_path', $1, false)", [("pg_catalog",)]
                ),
            ]
            for dirty in dirtiers:
                async with pool.acquire() as conn:
                    await dirty(conn)
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SHOW search_path") == '"$user", public'
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_a_prepared_statement_executed_later_counts() -> None:
    require_pg()

    async def main() -> None:
        pool = await one_connection_pool()
        try:
            async with pool.acquire() as conn:
                stmt = await conn.prepare("SELECT set_config('search_path', 'pg_catalog', false)")
                await stmt.fetchval()
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW search_path") == '"$user", public'
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_client_side_listeners_are_dropped_even_without_a_statement() -> None:
    require_pg()

    async def main() -> None:
        pool = await one_connection_pool()
        try:
            async with pool.acquire() as conn:
                conn.add_log_listener(lambda *args: None)
            async with pool.acquire() as conn:
                assert not conn._log_listeners
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_an_open_transaction_is_rolled_back_even_when_counted_clean() -> None:
    require_pg()

    async def main() -> None:
        pool = await one_connection_pool()
        try:
            async with pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                await conn.execute("CREATE TEMP TABLE tp_skip (x int)")
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                missing = await conn.fetchval("SELECT to_regclass('pg_temp.tp_skip') IS NULL")
                assert missing
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_reset_off_is_unaffected() -> None:
    require_pg()

    async def main() -> None:
        pool = await one_connection_pool(reset=False)
        try:
            async with pool.acquire() as conn:
                await conn.execute("SET search_path TO pg_catalog")
            async with pool.acquire() as conn:  # reset=False: the caller asked for no reset
                assert await conn.fetchval("SHOW search_path") == "pg_catalog"
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_sql_prepared_statement_takes_the_deallocating_reset_with_the_baseline() -> None:
    require_pg()

    async def on_connect(conn: Any) -> None:
        await conn.execute("SET statement_timeout TO '42s'")

    async def main() -> None:
        pool = await one_connection_pool(on_connect=on_connect)
        try:
            async with pool.acquire() as conn:
                await conn.execute("PREPARE tp_user_stmt AS SELECT 1")
                await conn.execute("SET statement_timeout TO '1s'")
            async with pool.acquire() as conn:
                names = await conn.fetch("SELECT name FROM pg_prepared_statements WHERE from_sql")
                assert names == []
                assert await conn.fetchval("SHOW statement_timeout") == "42s"
                # The next reset is the cheap one again, and the session stays clean.
                await conn.execute("SET statement_timeout TO '2s'")
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW statement_timeout") == "42s"
            assert pool.stats().reset_failures == 0
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_psycopg_sql_prepared_statement_takes_the_deallocating_reset() -> None:
    require_pg()
    with tidepool.Pool(pg_url(app_name()), max_size=1, min_size=1, check="never") as pool:
        with pool.acquire() as conn:
            conn.execute("PREPARE tp_user_stmt AS SELECT 1")
            conn.execute("SET work_mem TO '7MB'")
        with pool.acquire() as conn:
            rows = conn.execute("SELECT name FROM pg_prepared_statements WHERE from_sql")
            assert rows.fetchall() == []
            assert conn.execute("SHOW work_mem").fetchone() != ("7MB",)
        assert pool.stats().reset_failures == 0
