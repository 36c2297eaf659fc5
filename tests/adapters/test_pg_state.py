"""A clean session for every borrower (issue 3, point 3; reliability.md 3.5 and 4.3).

Each scenario runs on the three PostgreSQL flavours (AsyncPool + asyncpg, AsyncPool + psycopg,
Pool + psycopg) against the shared server, with ``max_size=1`` so that the next borrower gets
the very same backend (checked with ``pg_backend_pid()``): borrower A leaves one kind of
session state behind, borrower B must find the session as if freshly connected. After each
scenario the invariants of design.md section 7 are checked, including the server-side session
count for the pool's ``application_name``.

The blocking ``Pool`` is driven from the same coroutine-shaped scenarios: its calls simply
block (nothing else runs on the event loop meanwhile), which keeps one scenario per state kind.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import asyncpg
import psycopg
import pytest

import tidepool
from pg_helpers import admin, app_name, pg_url, require_pg, wait_sessions

FLAVORS = ("asyncpg", "psycopg-async", "psycopg-sync")
# Generous bounds for a loaded 2-core machine: they only turn a hang into a failure.
PATIENCE = 20.0


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    require_pg()
    name: str = request.param
    return name


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """SQL statements run on the admin connection after the test (drop what it created)."""
    statements: list[str] = []
    yield statements
    with admin() as conn:
        for statement in reversed(statements):
            conn.execute(statement)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def sqlstate_of(exc: BaseException) -> str | None:
    state: str | None = getattr(exc, "sqlstate", None)
    return state


class Lent:
    """A borrowed connection, driven alike for the three flavours. SQL is written with
    asyncpg's ``$n`` placeholders; for psycopg they become ``%s`` (only when there are
    arguments, so that ``PREPARE ... $1`` text passes through untouched)."""

    def __init__(self, flavor: str, raw: Any) -> None:
        self.flavor = flavor
        self.raw = raw

    @property
    def is_asyncpg(self) -> bool:
        return self.flavor == "asyncpg"

    async def _cursor(self, sql: str, args: tuple[Any, ...], prepare: bool | None = None) -> Any:
        if args:
            sql = re.sub(r"\$\d+", "%s", sql)
        return await maybe_await(self.raw.execute(sql, args or None, prepare=prepare))

    async def run(self, sql: str, *args: Any) -> None:
        if self.is_asyncpg:
            await self.raw.execute(sql, *args)
        else:
            await self._cursor(sql, args)

    async def value(self, sql: str, *args: Any) -> Any:
        if self.is_asyncpg:
            return await self.raw.fetchval(sql, *args)
        cur = await self._cursor(sql, args)
        row = await maybe_await(cur.fetchone())
        return None if row is None else row[0]

    async def prepared_value(self, sql: str, *args: Any) -> Any:
        """Run a parameterised query through the driver's own (protocol-level) prepared
        statements: asyncpg's statement cache; psycopg's, forced with ``prepare=True``."""
        if self.is_asyncpg:
            return await self.raw.fetchval(sql, *args)
        cur = await self._cursor(sql, args, prepare=True)
        row = await maybe_await(cur.fetchone())
        return None if row is None else row[0]

    async def pid(self) -> int:
        pid: int = await self.value("SELECT pg_backend_pid()")
        return pid

    async def error(self, sql: str, *args: Any) -> str | None:
        """Run ``sql``, which must fail with a server error; return its SQLSTATE."""
        with pytest.raises((asyncpg.PostgresError, psycopg.Error)) as info:
            await self.run(sql, *args)
        return sqlstate_of(info.value)

    def in_transaction(self) -> bool:
        if self.is_asyncpg:
            return bool(self.raw.is_in_transaction())
        status = self.raw.info.transaction_status
        return bool(status != psycopg.pq.TransactionStatus.IDLE)

    async def listen(self, channel: str, sink: list[str]) -> None:
        """LISTEN on ``channel``; append each payload received to ``sink``."""
        if self.is_asyncpg:
            await self.raw.add_listener(channel, lambda *args: sink.append(args[3]))
        else:
            self.raw.add_notify_handler(lambda n: sink.append(n.payload))
            await self.run(f"LISTEN {channel}")

    async def poll_until(self, predicate: Callable[[], bool]) -> None:
        """Talk to the server (psycopg delivers notifications while it reads) until
        ``predicate`` holds."""
        deadline = time.monotonic() + PATIENCE
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            await self.run("SELECT 1")
            await asyncio.sleep(0.02)


class PGPool:
    """One pool of one flavour with a unique application_name, closed on exit, with the
    design.md section 7 invariant check."""

    def __init__(self, flavor: str, *, url_params: dict[str, str] | None = None, **options: Any):
        self.flavor = flavor
        self.app = app_name("tp-state")
        driver = "psycopg" if flavor == "psycopg-async" else ""
        url = pg_url(self.app, driver=driver, **(url_params or {}))
        options.setdefault("acquire_timeout", PATIENCE)
        self.is_async = flavor != "psycopg-sync"
        self.pool: Any = (tidepool.AsyncPool if self.is_async else tidepool.Pool)(url, **options)

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
        if exc_type is None:  # nothing may outlive the pool on the server
            left = await asyncio.to_thread(wait_sessions, self.app, 0, PATIENCE)
            assert left == 0, f"{left} server session(s) of {self.app} outlived the pool"

    async def close(self) -> None:
        if self.is_async:
            await self.pool.aclose()
        else:
            self.pool.close()

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[Lent]:
        if self.is_async:
            async with self.pool.acquire() as raw:
                yield Lent(self.flavor, raw)
        else:
            with self.pool.acquire() as raw:
                yield Lent(self.flavor, raw)

    async def check_invariants(self) -> None:
        s = self.pool.stats()
        assert s.size <= s.max_size, s
        assert s.idle + s.in_use + s.connecting == s.size, s
        assert s.waiting == 0, s
        # Closes may still be in flight (on the event loop for AsyncPool: keep it running).
        count = await asyncio.to_thread(wait_sessions, self.app, s.size, PATIENCE)
        assert count == self.pool.stats().size, (count, self.pool.stats())


def scenario(flavor: str, **options: Any) -> PGPool:
    options.setdefault("max_size", 1)
    return PGPool(flavor, **options)


# ---------------------------------------------------------------------- transactions


def test_open_transaction_is_rolled_back(flavor: str, cleanup: list[str]) -> None:
    table = unique("tp_state_tx")
    with admin() as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    cleanup.append(f"DROP TABLE IF EXISTS {table}")

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("BEGIN")
                await a.run(f"INSERT INTO {table} VALUES (1)")
                assert a.in_transaction()
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert not b.in_transaction()
                assert await b.value(f"SELECT count(*) FROM {table}") == 0
                # B's own work is not swallowed by a transaction left open by A.
                await b.run(f"INSERT INTO {table} VALUES (2)")
            with admin() as conn:
                assert conn.execute(f"SELECT x FROM {table}").fetchall() == [(2,)]
            await p.check_invariants()

    asyncio.run(main())


def test_failed_transaction_is_cleared(flavor: str) -> None:
    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("BEGIN")
                assert await a.error("SELECT 1 / 0") == "22012"
                # INERROR: every statement now fails until the transaction ends.
                assert await a.error("SELECT 1") == "25P02"
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert not b.in_transaction()
                assert await b.value("SELECT 41 + 1") == 42
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- identity


def test_set_role_is_undone(flavor: str, cleanup: list[str]) -> None:
    role = unique("tp_low")
    with admin() as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    cleanup.append(f"DROP ROLE IF EXISTS {role}")

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                login = await a.value("SELECT session_user")
                await a.run(f"SET ROLE {role}")
                assert await a.value("SELECT current_user") == role
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value("SELECT current_user") == login
                assert await b.value("SELECT session_user") == login
                assert await b.value("SELECT current_setting('role')") == "none"
            await p.check_invariants()

    asyncio.run(main())


def test_session_authorization_is_undone(flavor: str, cleanup: list[str]) -> None:
    role = unique("tp_low")
    with admin() as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    cleanup.append(f"DROP ROLE IF EXISTS {role}")

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                login = await a.value("SELECT session_user")
                await a.run(f"SET SESSION AUTHORIZATION {role}")
                assert await a.value("SELECT session_user") == role
                assert await a.value("SELECT current_user") == role
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value("SELECT session_user") == login
                assert await b.value("SELECT current_user") == login
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- settings


def test_settings_are_reset(flavor: str) -> None:
    names = ("search_path", "statement_timeout", "timezone")

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                baseline = {n: await a.value(f"SELECT current_setting('{n}')") for n in names}
                await a.run("SET search_path = tp_evil, public")
                await a.run("SET statement_timeout = '4321ms'")
                await a.run("SET timezone = 'Pacific/Chatham'")
                assert await a.value("SELECT set_config('app.tenant', '42', false)") == "42"
                changed = {n: await a.value(f"SELECT current_setting('{n}')") for n in names}
                assert all(changed[n] != baseline[n] for n in names), (changed, baseline)
            async with p.borrow() as b:
                assert await b.pid() == pid
                now = {n: await b.value(f"SELECT current_setting('{n}')") for n in names}
                assert now == baseline
                tenant = await b.value("SELECT current_setting('app.tenant', true)")
                assert tenant in (None, ""), tenant
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- session objects


def test_temp_tables_are_dropped(flavor: str) -> None:
    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("CREATE TEMP TABLE tp_scratch (x int)")
                await a.run("INSERT INTO tp_scratch VALUES (1)")
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value("SELECT to_regclass('pg_temp.tp_scratch')") is None
                await b.run("CREATE TEMP TABLE tp_scratch (x int)")
                assert await b.value("SELECT count(*) FROM tp_scratch") == 0
            await p.check_invariants()

    asyncio.run(main())


def test_advisory_locks_are_released(flavor: str) -> None:
    key = uuid.uuid4().int >> 66  # a positive bigint no other test will pick

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("SELECT pg_advisory_lock($1::bigint)", key)
                await a.run("SELECT pg_advisory_lock_shared($1::bigint + 1)", key)
                held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1"
                assert await a.value(held, pid) == 2
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value(held, pid) == 0
                with admin() as other:
                    row = other.execute("SELECT pg_try_advisory_lock(%s::bigint)", (key,))
                    assert row.fetchone() == (True,)
                    other.execute("SELECT pg_advisory_unlock(%s::bigint)", (key,))
            await p.check_invariants()

    asyncio.run(main())


def notify(channel: str, payload: str) -> None:
    with admin() as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def test_listen_is_dropped(flavor: str) -> None:
    channel = unique("tp_chan")

    async def main() -> None:
        heard_a: list[str] = []
        heard_b: list[str] = []
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.listen(channel, heard_a)
                notify(channel, "while-lent")
                await a.poll_until(lambda: "while-lent" in heard_a)
                notify(channel, "before-release")  # may still be unread when A gives back
            notify(channel, "after-release")
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value("SELECT count(*) FROM pg_listening_channels()") == 0
                await b.listen(channel, heard_b)
                for _ in range(5):
                    await b.run("SELECT 1")
                    await asyncio.sleep(0.05)
                notify(channel, "for-b")  # B's handler works: the silence above means nothing
                await b.poll_until(lambda: "for-b" in heard_b)  # reached it
            assert heard_b == ["for-b"]
            assert "after-release" not in heard_a
            assert "for-b" not in heard_a  # A's handler was dropped with the reset
            await p.check_invariants()

    asyncio.run(main())


def test_with_hold_cursors_are_closed(flavor: str) -> None:
    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("DECLARE tp_held CURSOR WITH HOLD FOR SELECT generate_series(1, 10)")
                assert await a.value("FETCH 1 FROM tp_held") == 1
                assert await a.value("SELECT count(*) FROM pg_cursors WHERE is_holdable") == 1
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value("SELECT count(*) FROM pg_cursors WHERE is_holdable") == 0
                await b.run("DECLARE tp_held CURSOR WITH HOLD FOR SELECT 7")
                assert await b.value("FETCH 1 FROM tp_held") == 7
            await p.check_invariants()

    asyncio.run(main())


def test_sql_prepared_statements_go_driver_statements_stay(flavor: str) -> None:
    query = "SELECT $1::int * 2"
    protocol = "SELECT name FROM pg_prepared_statements WHERE NOT from_sql"
    from_sql = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"

    async def names(lent: Lent) -> set[str]:
        if lent.is_asyncpg:
            return {r[0] for r in await lent.raw.fetch(protocol)}
        cur = await maybe_await(lent.raw.execute(protocol))
        return {r[0] for r in await maybe_await(cur.fetchall())}

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("PREPARE tp_sql_stmt (int) AS SELECT $1 + 1")
                assert await a.value("EXECUTE tp_sql_stmt(41)") == 42
                assert await a.value(from_sql) == 1
                assert await a.prepared_value(query, 21) == 42
                driver_statements = await names(a)
                assert driver_statements, "the driver prepared nothing: the test proves nothing"
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert await b.value(from_sql) == 0
                # The driver's statements survive, and its cache still agrees with the server.
                assert driver_statements <= await names(b)
                assert await b.prepared_value(query, 50) == 100
                await b.run("PREPARE tp_sql_stmt (int) AS SELECT $1 + 2")
                assert await b.value("EXECUTE tp_sql_stmt(40)") == 42
            async with p.borrow() as c:  # and once more after a second reset
                assert await c.pid() == pid
                assert await c.prepared_value(query, 4) == 8
                assert await c.value(from_sql) == 0
            await p.check_invariants()

    asyncio.run(main())


def test_the_reset_probe_is_prepared_once_and_outlives_deallocate_all(flavor: str) -> None:
    """The reset's check for SQL-level prepared statements is prepared by the first reset
    (at the protocol level: not ``from_sql``) and run by name from then on; a borrower's
    ``DEALLOCATE ALL`` costs the next reset a second round trip, not the connection."""

    async def probes(lent: Lent, tag: int) -> str | None:
        # (a new text each time: DEALLOCATE ALL also drops the drivers' cached statements)
        return await lent.value(  # type: ignore[no-any-return]
            "SELECT string_agg(name || ':' || from_sql || ':' || (generic_plans + custom_plans),"
            f" ',') FROM pg_prepared_statements WHERE name LIKE 'tidepool_reset_probe_%' -- {tag}"
        )

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("SET search_path TO pg_catalog")  # a reset is due: probe prepared
            async with p.borrow() as b:
                name, from_sql, runs = str(await probes(b, 2)).split(":")
                assert from_sql == "false"
                await b.run("SET work_mem TO '9MB'")
            async with p.borrow() as c:
                assert await probes(c, 3) == f"{name}:false:{int(runs) + 1}"  # run by name
                await c.run("DEALLOCATE ALL")
                await c.run("PREPARE tp_user_stmt AS SELECT 1")
                await c.run("SET search_path TO pg_catalog")
            async with p.borrow() as d:
                assert await d.value("SELECT pg_backend_pid() -- 4") == pid  # reset, not closed
                assert await d.value("SHOW search_path -- 4") == '"$user", public'
                user_statements = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql -- 4"
                assert await d.value(user_statements) == 0
                new_name, from_sql, _ = str(await probes(d, 4)).split(":")
                assert new_name != name  # prepared again
                assert from_sql == "false"
            assert p.pool.stats().reset_failures == 0
            await p.check_invariants()

    asyncio.run(main())


def test_sequence_state_is_discarded(flavor: str, cleanup: list[str]) -> None:
    sequence = unique("tp_seq")
    with admin() as conn:
        conn.execute(f"CREATE SEQUENCE {sequence}")
    cleanup.append(f"DROP SEQUENCE IF EXISTS {sequence}")

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                value = await a.value(f"SELECT nextval('{sequence}')")
                assert await a.value(f"SELECT currval('{sequence}')") == value
            async with p.borrow() as b:
                assert await b.pid() == pid
                # "currval of sequence ... is not yet defined in this session"
                assert await b.error(f"SELECT currval('{sequence}')") == "55000"
            await p.check_invariants()

    asyncio.run(main())


def test_everything_at_once(flavor: str, cleanup: list[str]) -> None:
    """All kinds of state left by one borrower, cleaned by one reset."""
    role = unique("tp_low")
    with admin() as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    cleanup.append(f"DROP ROLE IF EXISTS {role}")

    key = uuid.uuid4().int >> 66

    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                login = await a.value("SELECT session_user")
                path = await a.value("SHOW search_path")
                for sql in (
                    "DECLARE tp_c CURSOR WITH HOLD FOR SELECT 1",
                    "CREATE TEMP TABLE tp_t (x int)",
                    f"SELECT pg_advisory_lock({key})",
                    "LISTEN tp_everything",
                    "PREPARE tp_p AS SELECT 1",
                    "SET search_path = tp_nowhere",
                    f"SET SESSION AUTHORIZATION {role}",
                    "BEGIN",
                    "SET LOCAL statement_timeout = '1s'",
                ):
                    await a.run(sql)
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert not b.in_transaction()
                assert await b.value("SELECT session_user") == login
                assert await b.value("SELECT current_user") == login
                assert await b.value("SHOW search_path") == path
                state = (
                    "SELECT (SELECT count(*) FROM pg_cursors WHERE is_holdable)"
                    " + (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)"
                    " + (SELECT count(*) FROM pg_listening_channels())"
                    " + (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    "    AND pid = pg_backend_pid())"
                    " + (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())"
                )
                assert await b.value(state) == 0
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- reset failure


def test_failed_reset_closes_the_connection(flavor: str) -> None:
    async def main() -> None:
        async with scenario(flavor) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("SET search_path = tp_dirty")  # something for the reset to do
                with admin() as conn:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    deadline = time.monotonic() + PATIENCE
                    while conn.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                    ).fetchone():
                        assert time.monotonic() < deadline, "the backend did not go away"
                        time.sleep(0.02)
            # The reset failed (or the driver saw the socket close): closed, not kept.
            s = p.pool.stats()
            assert s.idle == 0, s
            async with p.borrow() as b:
                assert await b.pid() != pid
                assert await b.value("SHOW search_path") != "tp_dirty"
            assert p.pool.stats().size == 1
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- PgBouncer mode


def test_pgbouncer_mode_resets_by_rollback_only(flavor: str, cleanup: list[str]) -> None:
    table = unique("tp_state_bouncer")
    with admin() as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    cleanup.append(f"DROP TABLE IF EXISTS {table}")

    async def main() -> None:
        async with scenario(flavor, url_params={"pgbouncer": "true"}) as p:
            async with p.borrow() as a:
                pid = await a.pid()
                await a.run("SET search_path = tp_bouncer, public")
                await a.run("BEGIN")
                await a.run(f"INSERT INTO {table} VALUES (1)")
            async with p.borrow() as b:
                assert await b.pid() == pid
                assert not b.in_transaction()
                assert await b.value(f"SELECT count(*) FROM public.{table}") == 0
                # Session state is not reset behind PgBouncer (it would not survive anyway).
                assert await b.value("SHOW search_path") == "tp_bouncer, public"
            await p.check_invariants()

    asyncio.run(main())


@pytest.mark.parametrize("pgbouncer", [False, True], ids=["direct", "pgbouncer"])
def test_pgbouncer_mode_uses_no_named_statements(flavor: str, pgbouncer: bool) -> None:
    url_params = {"pgbouncer": "true"} if pgbouncer else {}

    async def main() -> None:
        async with scenario(flavor, url_params=url_params) as p:
            async with p.borrow() as a:
                for i in range(10):  # past psycopg's prepare_threshold (5)
                    assert await a.value("SELECT $1::int + 0", i) == i
                count = await a.value("SELECT count(*) FROM pg_prepared_statements")
            if pgbouncer:
                assert count == 0
            else:  # the control: the drivers do prepare these without the option
                assert count > 0
            await p.check_invariants()

    asyncio.run(main())
