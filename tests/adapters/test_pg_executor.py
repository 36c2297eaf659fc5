"""The PostgreSQL executor glue (design.md section 2, issue 3 points 2 and 5): executor
methods, transactions, COPY, credentials evaluated per connection and ``on_connect``, on the
three flavours (AsyncPool + asyncpg, AsyncPool + psycopg, Pool + psycopg) against the shared
server. After each scenario the design.md section 7 invariants are checked, including the
server-side session count for the pool's ``application_name``.

The blocking ``Pool`` is driven from the same coroutine-shaped scenarios: its calls simply
block (nothing else runs on the event loop meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import asyncpg
import psycopg
import pytest

import tidepool
from pg_helpers import admin, app_name, pg_url, require_pg, wait_sessions

FLAVORS = ("asyncpg", "psycopg-async", "psycopg-sync")
ASYNC_FLAVORS = ("asyncpg", "psycopg-async")
# Generous bounds for a loaded 2-core machine: they only turn a hang into a failure.
PATIENCE = 20.0


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    require_pg()
    name: str = request.param
    return name


@pytest.fixture(params=ASYNC_FLAVORS)
def async_flavor(request: pytest.FixtureRequest) -> str:
    require_pg()
    name: str = request.param
    return name


@pytest.fixture
def table() -> Iterator[str]:
    """A fresh table ``(id int primary key, name text, note text default 'none')``."""
    require_pg()
    name = f"tp_exec_{uuid.uuid4().hex[:12]}"
    with admin() as conn:
        conn.execute(
            f"CREATE TABLE {name} (id int PRIMARY KEY, name text, note text DEFAULT 'none')"
        )
    yield name
    with admin() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def rows_of(table: str) -> list[tuple[Any, ...]]:
    with admin() as conn:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class PGPool:
    """One pool of one flavour with a unique application_name, closed on exit, with the
    design.md section 7 invariant check. ``sql()`` turns ``$n`` placeholders into the
    flavour's own dialect."""

    def __init__(self, flavor: str, **options: Any) -> None:
        self.flavor = flavor
        self.app = app_name("tp-exec")
        driver = "psycopg" if flavor == "psycopg-async" else ""
        options.setdefault("acquire_timeout", PATIENCE)
        self.is_async = flavor != "psycopg-sync"
        cls = tidepool.AsyncPool if self.is_async else tidepool.Pool
        self.pool: Any = cls(pg_url(self.app, driver=driver), **options)

    def sql(self, text: str) -> str:
        return text if self.flavor == "asyncpg" else re.sub(r"\$\d+", "%s", text)

    async def __aenter__(self) -> PGPool:
        try:
            await maybe_await(self.pool.open())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc_type is None:
            left = await asyncio.to_thread(wait_sessions, self.app, 0, PATIENCE)
            assert left == 0, f"{left} server session(s) of {self.app} outlived the pool"

    async def close(self) -> None:
        await maybe_await(self.pool.aclose() if self.is_async else self.pool.close())

    async def call(self, method: str, *args: Any) -> Any:
        """An executor method of the pool (``sql`` arguments already in the dialect)."""
        return await maybe_await(getattr(self.pool, method)(*args))

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[Any]:
        if self.is_async:
            async with self.pool.acquire() as raw:
                yield raw
        else:
            with self.pool.acquire() as raw:
                yield raw

    @asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[Any]:
        if self.is_async:
            async with self.pool.transaction(**options) as raw:
                yield raw
        else:
            with self.pool.transaction(**options) as raw:
                yield raw

    async def value(self, conn: Any, text: str, *args: Any) -> Any:
        """First column of the first row of ``text`` run on a lent connection."""
        if self.flavor == "asyncpg":
            return await conn.fetchval(text, *args)
        cur = await maybe_await(conn.execute(self.sql(text), args or None))
        row = await maybe_await(cur.fetchone())
        return None if row is None else row[0]

    def in_transaction(self, conn: Any) -> bool:
        if self.flavor == "asyncpg":
            return bool(conn.is_in_transaction())
        return bool(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    async def run(self, conn: Any, text: str, *args: Any) -> None:
        if self.flavor == "asyncpg":
            await conn.execute(text, *args)
        else:
            await maybe_await(conn.execute(self.sql(text), args or None))

    async def check_invariants(self) -> None:
        s = self.pool.stats()
        assert s.size <= s.max_size, s
        assert s.idle + s.in_use + s.connecting == s.size, s
        assert s.waiting == 0, s
        assert s.in_use == 0, s  # every executor call and borrow gave its connection back
        count = await asyncio.to_thread(wait_sessions, self.app, s.size, PATIENCE)
        assert count == self.pool.stats().size, (count, self.pool.stats())


class Boom(Exception):
    pass


# ---------------------------------------------------------------------- executor methods


def test_execute_returns_the_status(flavor: str, table: str) -> None:
    async def main() -> None:
        async with PGPool(flavor, max_size=2) as p:
            insert = p.sql(f"INSERT INTO {table} (id, name) VALUES ($1, $2)")
            assert await p.call("execute", insert, 1, "one") == "INSERT 0 1"
            update = p.sql(f"UPDATE {table} SET note = $1 WHERE id >= $2")
            assert await p.call("execute", update, "seen", 0) == "UPDATE 1"
            assert await p.call("execute", f"DELETE FROM {table} WHERE id < 0") == "DELETE 0"
            assert await p.call("execute", "SELECT 1") == "SELECT 1"
            await p.call("executemany", insert, [(2, "two"), (3, "three")])
            assert rows_of(table) == [(1, "one", "seen"), (2, "two", "none"), (3, "three", "none")]
            await p.check_invariants()

    asyncio.run(main())


def test_fetch_methods(flavor: str, table: str) -> None:
    async def main() -> None:
        async with PGPool(flavor, max_size=2) as p:
            insert = p.sql(f"INSERT INTO {table} (id, name) VALUES ($1, $2)")
            await p.call("executemany", insert, [(1, "a"), (2, "b"), (3, "c")])
            select = p.sql(f"SELECT id, name FROM {table} WHERE id <= $1 ORDER BY id")
            rows = await p.call("fetch_all", select, 2)
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
            row_type = asyncpg.Record if flavor == "asyncpg" else tuple
            assert all(isinstance(r, row_type) for r in rows)
            assert (rows[1][0], rows[1][1], len(rows[1])) == (2, "b", 2)
            assert await p.call("fetch_all", select, 0) == []

            one = await p.call("fetch_one", select, 3)
            assert isinstance(one, row_type)
            assert tuple(one) == (1, "a")
            assert await p.call("fetch_one", select, 0) is None

            count = p.sql(f"SELECT count(*) FROM {table} WHERE name <> $1")
            assert await p.call("fetch_value", count, "b") == 2
            assert await p.call("fetch_value", select, 0) is None
            assert await p.call("fetch_value", "SELECT NULL::int") is None
            await p.check_invariants()

    asyncio.run(main())


def test_driver_errors_pass_through(flavor: str) -> None:
    async def main() -> None:
        async with PGPool(flavor, max_size=1) as p:
            with pytest.raises((asyncpg.PostgresError, psycopg.Error)) as info:
                await p.call("fetch_value", "SELECT 1 / 0")
            assert getattr(info.value, "sqlstate", None) == "22012"
            assert await p.call("fetch_value", "SELECT 2") == 2  # the connection is fine
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- transactions


def test_transaction_commits_on_success(flavor: str, table: str) -> None:
    async def main() -> None:
        async with PGPool(flavor, max_size=1) as p:
            async with p.transaction() as conn:
                await p.run(conn, f"INSERT INTO {table} (id, name) VALUES ($1, $2)", 1, "x")
                await p.run(conn, f"INSERT INTO {table} (id, name) VALUES ($1, $2)", 2, "y")
                assert rows_of(table) == []  # not committed yet: invisible to others
            assert [r[:2] for r in rows_of(table)] == [(1, "x"), (2, "y")]
            await p.check_invariants()

    asyncio.run(main())


def test_transaction_rolls_back_on_exception(flavor: str, table: str) -> None:
    insert = f"INSERT INTO {table} (id, name) VALUES ($1, $2)"

    async def main() -> None:
        async with PGPool(flavor, max_size=1) as p:

            async def fails_in_python() -> None:
                async with p.transaction() as conn:
                    await p.run(conn, insert, 1, "x")
                    raise Boom

            async def fails_on_the_server() -> None:
                async with p.transaction() as conn:
                    await p.run(conn, insert, 2, "y")
                    await p.run(conn, insert, 2, "y")  # duplicate key

            with pytest.raises(Boom):
                await fails_in_python()
            assert rows_of(table) == []
            # A server error inside the block: rolled back too, the error passes through.
            with pytest.raises((asyncpg.PostgresError, psycopg.Error)) as info:
                await fails_on_the_server()
            assert getattr(info.value, "sqlstate", None) == "23505"
            assert rows_of(table) == []
            async with p.borrow() as conn:  # the connection came back clean
                assert not p.in_transaction(conn)
                assert await p.value(conn, "SELECT 1") == 1
            await p.check_invariants()

    asyncio.run(main())


def test_transaction_rolls_back_on_cancellation(async_flavor: str, table: str) -> None:
    async def main() -> None:
        async with PGPool(async_flavor, max_size=1) as p:
            inside = asyncio.Event()

            async def work() -> None:
                async with p.transaction() as conn:
                    await p.run(conn, f"INSERT INTO {table} (id, name) VALUES ($1, $2)", 1, "x")
                    inside.set()
                    await asyncio.sleep(PATIENCE * 10)

            task = asyncio.create_task(work())
            await asyncio.wait_for(inside.wait(), PATIENCE)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert rows_of(table) == []
            async with p.borrow() as conn:
                await p.run(conn, f"INSERT INTO {table} (id, name) VALUES ($1, $2)", 2, "y")
            assert [r[:2] for r in rows_of(table)] == [(2, "y")]
            await p.check_invariants()

    asyncio.run(main())


def test_transaction_characteristics(flavor: str) -> None:
    settings = (
        "SELECT current_setting('transaction_isolation'), "
        "current_setting('transaction_read_only'), current_setting('transaction_deferrable')"
    )

    async def row(p: PGPool, conn: Any) -> tuple[Any, ...]:
        if flavor == "asyncpg":
            return tuple(await conn.fetchrow(settings))
        cur = await maybe_await(conn.execute(settings))
        result: tuple[Any, ...] = await maybe_await(cur.fetchone())
        return result

    async def main() -> None:
        async with PGPool(flavor, max_size=1) as p:
            async with p.transaction(isolation="serializable", readonly=True, deferrable=True) as c:
                assert await row(p, c) == ("serializable", "on", "on")
                with pytest.raises((asyncpg.PostgresError, psycopg.Error)) as info:
                    await p.run(c, "CREATE TEMP TABLE tp_nope (x int)")
                assert getattr(info.value, "sqlstate", None) == "25006"  # read-only transaction
            async with p.transaction(isolation="repeatable_read") as c:
                assert await row(p, c) == ("repeatable read", "off", "off")
            async with p.transaction() as c:
                assert await row(p, c) == ("read committed", "off", "off")
            async with p.borrow() as c:  # nothing carried over to the next borrower
                assert await row(p, c) == ("read committed", "off", "off")
            await p.check_invariants()

    asyncio.run(main())


def test_transaction_bad_isolation(flavor: str) -> None:
    async def main() -> None:
        async with PGPool(flavor, max_size=1) as p:
            with pytest.raises(ValueError, match="isolation"):
                async with p.transaction(isolation="chaos"):
                    pytest.fail("the block must not run")
            assert await p.call("fetch_value", "SELECT 1") == 1
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- COPY


@pytest.mark.parametrize("naming", ["plain", "schema", "mixed-case"])
def test_copy_records(flavor: str, naming: str) -> None:
    require_pg()
    suffix = uuid.uuid4().hex[:12]
    stored = f"TpCopy_{suffix}" if naming == "mixed-case" else f"tp_copy_{suffix}"
    target = {"plain": stored, "schema": f"public.{stored}", "mixed-case": stored}[naming]
    with admin() as conn:
        conn.execute(f"CREATE TABLE \"{stored}\" (id int, name text, note text DEFAULT 'none')")
    try:

        async def main() -> None:
            async with PGPool(flavor, max_size=1) as p:
                records = [(i, f"name {i}") for i in range(1, 501)]
                copied = await p.call("copy_records", target, records, ["id", "name"])
                assert copied == 500
                # Every column, in order, from a generator.
                more = ((i, None, f"note {i}") for i in range(501, 504))
                assert await p.call("copy_records", target, more) == 3
                await p.check_invariants()

        asyncio.run(main())
        rows = rows_of(stored)
        assert len(rows) == 503
        assert rows[0] == (1, "name 1", "none")
        assert rows[499] == (500, "name 500", "none")
        assert rows[-1] == (503, None, "note 503")
    finally:
        with admin() as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{stored}"')


# ---------------------------------------------------------------------- credentials


# Pool takes blocking providers only; AsyncPool takes both.
PROVIDERS = pytest.mark.parametrize(
    ("flavor", "kind"),
    [(f, "sync") for f in FLAVORS] + [(f, "async") for f in ASYNC_FLAVORS],
)


async def hold(p: PGPool, n: int, stack: contextlib.AsyncExitStack) -> list[Any]:
    """Borrow ``n`` connections at once (each needs its own) and keep them lent."""
    return [await stack.enter_async_context(p.borrow()) for _ in range(n)]


async def pids(p: PGPool, conns: list[Any]) -> set[int]:
    return {await p.value(c, "SELECT pg_backend_pid()") for c in conns}


@PROVIDERS
def test_password_provider_called_per_connection(flavor: str, kind: str) -> None:
    require_pg()
    calls: list[int] = []

    def sync_provider() -> str:
        calls.append(1)
        return f"token-{len(calls)}"  # trust auth: any password is accepted

    async def async_provider() -> str:
        await asyncio.sleep(0)
        return sync_provider()

    provider = sync_provider if kind == "sync" else async_provider

    async def main() -> None:
        async with PGPool(flavor, max_size=3, connect_kwargs={"password": provider}) as p:
            opened = len(calls)
            assert opened == p.pool.stats().connects >= 1
            async with contextlib.AsyncExitStack() as stack:
                conns = await hold(p, 3, stack)
                old = await pids(p, conns)
                assert len(old) == 3
                assert len(calls) == 3 == p.pool.stats().connects
                p.pool.expire()  # a rotation: lent ones retire when they come back
            async with p.borrow() as conn:
                assert await p.value(conn, "SELECT pg_backend_pid()") not in old
            assert len(calls) == 4
            await p.check_invariants()

    asyncio.run(main())


@PROVIDERS
def test_connect_kwargs_callable_per_connection(flavor: str, kind: str) -> None:
    require_pg()
    calls: list[int] = []

    def sync_provider() -> dict[str, Any]:
        calls.append(1)
        number = str(len(calls))
        if flavor == "asyncpg":
            return {"password": "x", "server_settings": {"tp.conn_no": number}}
        return {"password": "x", "options": f"-c tp.conn_no={number}"}

    async def async_provider() -> dict[str, Any]:
        await asyncio.sleep(0)
        return sync_provider()

    provider = sync_provider if kind == "sync" else async_provider

    async def numbers(p: PGPool, conns: list[Any]) -> set[str]:
        return {await p.value(c, "SELECT current_setting('tp.conn_no')") for c in conns}

    async def main() -> None:
        async with PGPool(flavor, max_size=3, connect_kwargs=provider) as p:
            async with contextlib.AsyncExitStack() as stack:
                conns = await hold(p, 3, stack)
                # Each connection was opened with the keywords of its own call.
                assert await numbers(p, conns) == {"1", "2", "3"}
                assert len(calls) == 3
                p.pool.expire()
            async with p.borrow() as conn:
                assert await numbers(p, [conn]) == {"4"}
            assert len(calls) == 4
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- on_connect


def test_on_connect_runs_once_per_connection(flavor: str) -> None:
    seen: list[int] = []

    def sync_hook(conn: Any) -> None:
        seen.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])

    async def async_hook(conn: Any) -> None:
        if flavor == "asyncpg":
            seen.append(await conn.fetchval("SELECT pg_backend_pid()"))
        else:
            cur = await conn.execute("SELECT pg_backend_pid()")
            seen.append((await cur.fetchone())[0])

    hook = sync_hook if flavor == "psycopg-sync" else async_hook

    async def main() -> None:
        async with PGPool(flavor, max_size=3, on_connect=hook) as p:
            async with contextlib.AsyncExitStack() as stack:
                conns = await hold(p, 3, stack)
                assert set(seen) == await pids(p, conns)
            for _ in range(5):  # reuse runs no hook
                assert await p.call("fetch_value", "SELECT 1") == 1
            assert len(seen) == 3
            await p.check_invariants()

    asyncio.run(main())


def test_sync_on_connect_in_async_pool(async_flavor: str) -> None:
    calls: list[Any] = []

    async def main() -> None:
        async with PGPool(async_flavor, max_size=2, on_connect=calls.append) as p:
            async with contextlib.AsyncExitStack() as stack:
                conns = await hold(p, 2, stack)
            assert len(calls) == 2
            assert {id(c) for c in calls} == {id(c) for c in conns}
            await p.check_invariants()

    asyncio.run(main())


def test_on_connect_settings_reach_borrowers(flavor: str) -> None:
    """What ``on_connect`` sets on a fresh connection is the session baseline every borrower
    sees (reliability.md STATE-2 and 4.3 step 3: re-apply the configure baseline after the
    reset), also the first borrower of a pool opened with ``async with``."""

    def sync_hook(conn: Any) -> None:
        conn.execute("SET statement_timeout = '12345ms'")

    async def async_hook(conn: Any) -> None:
        await conn.execute("SET statement_timeout = '12345ms'")

    hook = sync_hook if flavor == "psycopg-sync" else async_hook

    async def main() -> None:
        async with PGPool(flavor, max_size=1, on_connect=hook) as p:
            for _ in range(3):
                async with p.borrow() as conn:
                    assert await p.value(conn, "SHOW statement_timeout") == "12345ms"
            await p.check_invariants()

    asyncio.run(main())
