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
