"""The databases ``tidepool bench`` and ``tidepool check`` talk to, through the adapters
users run: SQLite (``AsyncSQLiteManager``) and PostgreSQL (``AsyncpgManager`` or
``AsyncPsycopgManager``).

A :class:`Target` makes managers for pools and for the no-pool baseline, runs the workloads
on a lent connection, seeds and drops the benchmark's tables, and answers questions about the
server over one separate admin connection (version, connection limit, sessions seen).
"""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .._url import redact_url
from ..adapters.sqlite import AsyncSQLiteConnection, AsyncSQLiteManager, SQLiteTarget
from ..errors import ConfigError
from .common import EXIT_USAGE, CommandError, connect_failure

__all__ = ["PGBench", "SQLiteBench", "ServerInfo", "Target", "open_target"]

ROWS = 20_000
WRITE_SHARE = 0.2  # read-write: share of requests that are write transactions
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")

# One request's database work on a lent connection.
Work = Callable[[Any], Awaitable[None]]


@dataclass(slots=True)
class ServerInfo:
    """What the tool knows about the server (``None``: unknown or not applicable)."""

    kind: str  # "SQLite" | "PostgreSQL"
    version: str
    local: bool
    cores: int | None
    max_connections: int | None = None
    reserved_connections: int | None = None  # kept for superusers (and pg_use_reserved)
    connections_in_use: int | None = None  # client sessions when the tool looked
    connections_available: int | None = None  # max - reserved - in use

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Target:
    """A database to measure; subclasses implement the hooks."""

    kind = ""
    driver = ""
    display = ""  # redacted
    table: str | None = None
    history: str | None = None
    secrets: tuple[str | None, ...] = ()
    info: ServerInfo

    async def open_admin(self) -> None:
        raise NotImplementedError

    async def close_admin(self) -> None:
        raise NotImplementedError

    async def seed(self, rows: int) -> None:
        raise NotImplementedError

    async def drop(self) -> None:
        raise NotImplementedError

    def manager(self) -> Any:
        raise NotImplementedError

    async def dispose(self, manager: Any) -> None:
        dispose = getattr(manager, "dispose", None)
        if dispose is not None:
            await dispose()

    def work(self, workload: str, query: str | None, rows: int, seed: int) -> Work:
        raise NotImplementedError

    async def sessions(self) -> int | None:
        """Server-side sessions of the tool's pools now (``None``: not applicable)."""
        return None


def open_target(url: str | None, tmp_path: str | None = None) -> Target:
    """The target for ``url`` (``None``: a SQLite file at ``tmp_path``).

    Raises:
        CommandError: an unsupported or invalid URL (exit code 2).
    """
    if url is None:
        assert tmp_path is not None
        return SQLiteBench(
            SQLiteTarget.from_url(f"sqlite:///{tmp_path}"), "a temporary SQLite file"
        )
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    base = scheme.partition("+")[0]
    try:
        if base == "sqlite":
            return SQLiteBench(SQLiteTarget.from_url(url), redact_url(url))
        if base in ("postgresql", "postgres"):
            return PGBench(url)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    shown = redact_url(url)
    kind = f"a {scheme}:// URL" if scheme else "a URL without a scheme"
    raise CommandError(
        f"unsupported database URL: {kind} ({shown!r}); use sqlite:///path/to/file.db or "
        "postgresql://user@host:5432/db, or no URL for a temporary SQLite database",
        EXIT_USAGE,
    )


# ---------------------------------------------------------------------- SQLite
# Plain functions of the raw sqlite3 connection, each run in one hop on the connection's own
# thread (so a write transaction holds SQLite's write lock as briefly as possible).


def _sqlite_point_select(raw: sqlite3.Connection, table: str, key: int) -> Any:
    return raw.execute(
        f"SELECT id, name, balance, updated_at FROM {table} WHERE id = ?", (key,)
    ).fetchone()


def _sqlite_write(
    raw: sqlite3.Connection, table: str, history: str, key: int, delta: int, now: float
) -> Any:
    raw.execute("BEGIN IMMEDIATE")
    try:
        raw.execute(
            f"UPDATE {table} SET balance = balance + ?, updated_at = ? WHERE id = ?",
            (delta, now, key),
        )
        row = raw.execute(f"SELECT balance FROM {table} WHERE id = ?", (key,)).fetchone()
        raw.execute(
            f"INSERT INTO {history} (account_id, delta, at) VALUES (?, ?, ?)", (key, delta, now)
        )
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    return row


def _sqlite_query(raw: sqlite3.Connection, query: str) -> Any:
    return raw.execute(query).fetchall()


def _sqlite_seed(raw: sqlite3.Connection, table: str, history: str, rows: int) -> None:
    raw.execute(f"DROP TABLE IF EXISTS {table}")
    raw.execute(f"DROP TABLE IF EXISTS {history}")
    raw.execute(
        f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "balance INTEGER NOT NULL, updated_at REAL NOT NULL)"
    )
    raw.execute(
        f"CREATE TABLE {history} (account_id INTEGER NOT NULL, delta INTEGER NOT NULL, "
        "at REAL NOT NULL)"
    )
    rng = random.Random(42)
    now = time.time()
    raw.execute("BEGIN")
    raw.executemany(
        f"INSERT INTO {table} (id, name, balance, updated_at) VALUES (?, ?, ?, ?)",
        (
            (i, f"account-{i:06d}", rng.randrange(0, 1_000_000), now - rng.random() * 86_400)
            for i in range(1, rows + 1)
        ),
    )
    raw.execute("COMMIT")


class SQLiteBench(Target):
    kind = "sqlite"
    driver = "sqlite3"

    def __init__(self, target: SQLiteTarget, display: str) -> None:
        self.target = target
        self.display = display
        self._keeper: sqlite3.Connection | None = None
        self.info = ServerInfo(
            kind="SQLite", version=sqlite3.sqlite_version, local=True, cores=os.cpu_count()
        )

    async def open_admin(self) -> None:
        # Kept open for the whole run: the database (and its WAL) lives on between sizes, as
        # a server would, and a shared in-memory database is not dropped.
        try:
            self._keeper = self.target.open({})
        except Exception as exc:
            raise connect_failure(exc, self.display, ()) from None

    async def close_admin(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    async def seed(self, rows: int) -> None:
        assert self._keeper is not None
        self.table = "tidepool_bench_accounts"
        self.history = "tidepool_bench_history"
        try:
            _sqlite_seed(self._keeper, self.table, self.history, rows)
        except sqlite3.Error as exc:
            raise CommandError(
                f"cannot create the table {self.table} in {self.display}: {exc}"
            ) from None

    async def drop(self) -> None:
        keeper = self._keeper
        if keeper is None or self.table is None:
            return
        try:
            if keeper.in_transaction:
                keeper.rollback()
            keeper.execute(f"DROP TABLE IF EXISTS {self.table}")
            keeper.execute(f"DROP TABLE IF EXISTS {self.history}")
        except sqlite3.Error:
            pass

    def manager(self) -> AsyncSQLiteManager:
        return AsyncSQLiteManager(self.target)

    def work(self, workload: str, query: str | None, rows: int, seed: int) -> Work:
        rng = random.Random(seed)
        table, history = self.table or "", self.history or ""
        write_share = WRITE_SHARE if workload == "read-write" else 0.0

        async def run(conn: AsyncSQLiteConnection) -> None:
            if query is not None:
                await conn.run(_sqlite_query, query)
                return
            key = rng.randint(1, rows)
            if rng.random() < write_share:
                delta = rng.randint(-100, 100)
                await conn.run(_sqlite_write, table, history, key, delta, time.time())
            else:
                await conn.run(_sqlite_point_select, table, key)

        return run


# ---------------------------------------------------------------------- PostgreSQL


class PGBench(Target):
    """PostgreSQL through the adapter the URL chooses (asyncpg unless ``+psycopg``).

    Every connection the tool's pools open carries a unique ``application_name``
    (``tidepool-bench-<pid>-<random>``, replacing one given in the URL) so that the sessions
    seen in ``pg_stat_activity`` are exactly the tool's; the admin connection has another.
    """

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        from ..adapters._pg import PGTarget

        target = PGTarget.from_url(url)
        self.driver = target.driver or "asyncpg"
        self.app = f"tidepool-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._target = dataclasses.replace(
            target, params={**target.params, "application_name": self.app}
        )
        self._admin_target = dataclasses.replace(
            target, params={**target.params, "application_name": f"{self.app}-admin"}
        )
        self.pgbouncer = target.pgbouncer
        self.display = target.display
        self.secrets = (None if target.password is None else target.password.value,)
        host = target.hosts[0] if target.hosts else ""
        self.local = host in LOCAL_HOSTS or host.startswith("/")
        self._admin: Any = None
        self._admin_manager: Any = None
        self.info = ServerInfo(kind="PostgreSQL", version="unknown", local=self.local, cores=None)
        try:
            self.manager()  # validates driver-specific parameters now
        except ConfigError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None

    def _manager_for(self, target: Any) -> Any:
        try:
            if self.driver == "asyncpg":
                from ..adapters.pg_asyncpg import AsyncpgManager

                return AsyncpgManager(target, connect_timeout=10.0)
            from ..adapters.pg_psycopg import AsyncPsycopgManager

            return AsyncPsycopgManager(target, connect_timeout=10.0)
        except ImportError:
            raise CommandError(
                f"the PostgreSQL driver {self.driver} is not installed: "
                "pip install 'tidepool[postgres]'",
                EXIT_USAGE,
            ) from None

    def manager(self) -> Any:
        return self._manager_for(self._target)

    def p(self, n: int) -> str:
        """The driver's placeholder for parameter ``n`` (1-based)."""
        return f"${n}" if self.driver == "asyncpg" else "%s"

    async def admin_value(self, sql: str, *args: Any) -> Any:
        return await self._admin_manager.fetch_value(self._admin, sql, args)

    async def admin_row(self, sql: str, *args: Any) -> Any:
        return await self._admin_manager.fetch_one(self._admin, sql, args)

    async def open_admin(self) -> None:
        self._admin_manager = self._manager_for(self._admin_target)
        try:
            self._admin = await self._admin_manager.connect()
        except Exception as exc:
            raise connect_failure(exc, self.display, self.secrets) from None
        row = await self.admin_row(
            "SELECT current_setting('server_version'), "
            "current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int "
            "+ coalesce(current_setting('reserved_connections', true)::int, 0), "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
        )
        version, max_conn, reserved, in_use = row[0], row[1], row[2], row[3]
        self.info = ServerInfo(
            kind="PostgreSQL",
            version=str(version),
            local=self.local,
            cores=os.cpu_count() if self.local else None,
            max_connections=int(max_conn),
            reserved_connections=int(reserved),
            connections_in_use=int(in_use),
            connections_available=max(0, int(max_conn) - int(reserved) - int(in_use)),
        )

    async def close_admin(self) -> None:
        if self._admin is not None:
            try:
                await self._admin_manager.close(self._admin)
            finally:
                self._admin = None

    async def seed(self, rows: int) -> None:
        name = f"tidepool_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.table, self.history = name, f"{name}_history"
        statements = [
            f"CREATE TABLE {self.table} (id integer PRIMARY KEY, name text NOT NULL, "
            "balance bigint NOT NULL, updated_at timestamptz NOT NULL)",
            f"CREATE TABLE {self.history} (account_id integer NOT NULL, delta integer NOT NULL, "
            "at timestamptz NOT NULL)",
            f"INSERT INTO {self.table} SELECT g, 'account-' || lpad(g::text, 6, '0'), "
            "(random() * 1000000)::bigint, now() - random() * interval '1 day' "
            f"FROM generate_series(1, {int(rows)}) AS g",
            f"ANALYZE {self.table}",
        ]
        try:
            for sql in statements:
                await self._admin_manager.execute(self._admin, sql, ())
        except Exception as exc:
            await self.drop()
            raise CommandError(
                f"cannot create the table {self.table} in {self.display}: "
                f"{' '.join(str(exc).split())}"
            ) from None

    async def drop(self) -> None:
        if self._admin is None or self.table is None:
            return
        try:
            await self._admin_manager.execute(
                self._admin, f"DROP TABLE IF EXISTS {self.table}, {self.history}", ()
            )
        except Exception:
            pass

    async def sessions(self) -> int | None:
        if self._admin is None:
            return None
        count = await self.admin_value(
            f"SELECT count(*)::int FROM pg_stat_activity WHERE application_name = {self.p(1)}",
            self.app,
        )
        return int(count)

    def work(self, workload: str, query: str | None, rows: int, seed: int) -> Work:
        rng = random.Random(seed)
        manager = self.manager()  # stateless executor glue, shared by every request
        p = self.p
        table, history = self.table, self.history
        select = f"SELECT id, name, balance, updated_at FROM {table} WHERE id = {p(1)}"
        update = (
            f"UPDATE {table} SET balance = balance + {p(1)}, updated_at = now() WHERE id = {p(2)}"
        )
        balance = f"SELECT balance FROM {table} WHERE id = {p(1)}"
        insert = f"INSERT INTO {history} (account_id, delta, at) VALUES ({p(1)}, {p(2)}, now())"
        write_share = WRITE_SHARE if workload == "read-write" else 0.0
        # asyncpg: fetch (a prepared statement, cached); psycopg: execute reads every row.
        run_query = manager.fetch_all if self.driver == "asyncpg" else manager.execute

        async def run(conn: Any) -> None:
            if query is not None:
                await run_query(conn, query, ())
                return
            key = rng.randint(1, rows)
            if rng.random() >= write_share:
                await manager.fetch_one(conn, select, (key,))
                return
            delta = rng.randint(-100, 100)
            await manager.begin(conn)
            try:
                await manager.execute(conn, update, (delta, key))
                await manager.fetch_value(conn, balance, (key,))
                await manager.execute(conn, insert, (key, delta))
            except Exception:
                try:  # best effort: the pool's reset rolls back anyway
                    await manager.rollback(conn)
                except Exception:
                    pass
                raise
            await manager.commit(conn)

        return run
