"""PgBouncer in transaction mode (issue 3, point 6; reliability.md STATE-6): with
``?pgbouncer=true`` the pools keep no server-side statement that could land on another server
connection, and the reset sends no session command.

The PgBouncer instance is private (started by the ``pgbouncer`` fixture on a free port, in
front of the shared server, with only four server connections, so that clients really share
them); the shared server only sees read-only queries and temporary tables.
"""

from __future__ import annotations

import asyncio
import re

from pg_helpers import app_name

from .pgcluster import Driver, Flavour, PgBouncer, settle

PREPARED_ERROR = re.compile(r"prepared statement .* (does not exist|already exists)")


def bouncer_clients(bouncer: PgBouncer, app: str) -> int:
    """Client connections PgBouncer holds for ``app`` (the pool's side of the sessions)."""
    return sum(1 for c in bouncer.show("CLIENTS") if c.get("application_name") == app)


def test_many_concurrent_parameterised_queries(pgbouncer: PgBouncer, flavour: Flavour) -> None:
    """Many tasks (or threads), each repeating parameterised queries through PgBouncer
    transaction mode: every answer right, no prepared-statement error, no failed reset."""
    app = app_name("bouncer")
    url = pgbouncer.url(flavour.scheme, pgbouncer="true", application_name=app)
    p = flavour.placeholder
    errors: list[BaseException] = []

    async def worker(driver: Driver, n: int) -> None:
        for i in range(20):
            try:
                assert await driver.fetch_value(f"SELECT {p}::int + 1", n * 100 + i) == (
                    n * 100 + i + 1
                )
                text = await driver.fetch_value(f"SELECT {p}::text || 'x'", str(i))
                assert text == f"{i}x"
                async with driver.acquire() as conn:
                    total = await driver.value(
                        conn, f"SELECT sum(g)::int FROM generate_series(1, {p}::int) g", i + 1
                    )
                    assert total == (i + 1) * (i + 2) // 2
            except Exception as exc:
                errors.append(exc)

    async def main() -> None:
        driver = Driver(flavour, url, max_size=8, acquire_timeout=30)
        try:
            await driver.open()
            await asyncio.gather(*(worker(driver, n) for n in range(24)))
            prepared = [e for e in errors if PREPARED_ERROR.search(str(e))]
            assert prepared == [], prepared[:3]
            assert errors == [], errors[:3]
            stats = await settle(driver, lambda: bouncer_clients(pgbouncer, app))
            assert stats.reset_failures == 0
            assert stats.check_failures == 0
            assert stats.closed == 0  # no connection had to be thrown away
            assert stats.connects == stats.size <= 8
        finally:
            await driver.close()
        assert await asyncio.to_thread(bouncer_clients, pgbouncer, app) == 0

    asyncio.run(main())


def test_transactions_through_pgbouncer(pgbouncer: PgBouncer, flavour: Flavour) -> None:
    """pool.transaction() pins one server connection for the transaction: a temporary table
    made inside it is visible until commit, and the transaction id stays the same."""
    app = app_name("bouncertx")
    url = pgbouncer.url(flavour.scheme, pgbouncer="true", application_name=app)
    p = flavour.placeholder

    async def one(driver: Driver, n: int) -> None:
        async with driver.transaction() as conn:
            xid = await driver.value(conn, "SELECT txid_current()")
            await driver.value(conn, "CREATE TEMP TABLE tp_bouncer (v int) ON COMMIT DROP")
            await driver.value(conn, f"INSERT INTO tp_bouncer VALUES ({p}::int)", n)
            assert await driver.value(conn, "SELECT sum(v)::int FROM tp_bouncer") == n
            assert await driver.value(conn, "SELECT txid_current()") == xid

    async def main() -> None:
        driver = Driver(flavour, url, max_size=6, acquire_timeout=30)
        try:
            await driver.open()
            for round_ in range(3):
                await asyncio.gather(*(one(driver, round_ * 10 + n) for n in range(8)))
            stats = await settle(driver, lambda: bouncer_clients(pgbouncer, app))
            assert stats.reset_failures == 0
            assert stats.closed == 0
        finally:
            await driver.close()

    asyncio.run(main())
