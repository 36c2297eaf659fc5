"""The databases ``tidepool bench`` and ``tidepool check`` talk to, through the adapters
users run: SQLite (``AsyncSQLiteManager``), PostgreSQL (``AsyncpgManager`` or
``AsyncPsycopgManager``), MySQL/MariaDB (``AsyncMySQLManager``) and Redis
(``AsyncRedisManager``).

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
from .common import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_UNKNOWN_DATABASE,
    EXIT_USAGE,
    CommandError,
    connect_failure,
    scrub,
)

__all__ = [
    "MySQLBench",
    "PGBench",
    "RedisBench",
    "SQLiteBench",
    "ServerInfo",
    "Target",
    "failure",
    "open_target",
]

ROWS = 20_000
WRITE_SHARE = 0.2  # read-write: share of requests that are write transactions
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")

# One request's database work on a lent connection.
Work = Callable[[Any], Awaitable[None]]


@dataclass(slots=True)
class ServerInfo:
    """What the tool knows about the server (``None``: unknown or not applicable)."""

    kind: str  # "SQLite" | "PostgreSQL" | "MySQL" | "MariaDB" | "Redis"
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
        if base in ("mysql", "mariadb"):
            return MySQLBench(url)
        if base in ("redis", "rediss", "unix"):
            return RedisBench(url)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    shown = redact_url(url)
    kind = f"a {scheme}:// URL" if scheme else "a URL without a scheme"
    raise CommandError(
        f"unsupported database URL: {kind} ({shown!r}); use sqlite:///path/to/file.db, "
        "postgresql://user@host:5432/db, mysql:// or mariadb://user@host:3306/db, "
        "redis:// or rediss://host:6379/0, or no URL for a temporary SQLite database",
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


# ---------------------------------------------------------------------- failures

# MySQL/MariaDB server error codes: access denied (user, database, no password, plugin).
_MYSQL_AUTH_CODES = frozenset({1044, 1045, 1698, 1251, 1862})
_MYSQL_UNKNOWN_DB = 1049
_MYSQL_TOO_MANY = frozenset({1040, 1203})


def failure(exc: BaseException, where: str, secrets: tuple[str | None, ...]) -> CommandError:
    """:func:`connect_failure` that also knows MySQL error codes and Redis replies."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = " | ".join(str(e) for e in chain)
    outcome: tuple[int, str] | None = None
    for error in chain:
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if type(error).__module__.startswith("pymysql") and code is not None:
            if code in _MYSQL_AUTH_CODES:
                outcome = (EXIT_AUTH, "authentication failed")
            elif code == _MYSQL_UNKNOWN_DB:
                outcome = (EXIT_UNKNOWN_DATABASE, "unknown database")
            elif code in _MYSQL_TOO_MANY:
                outcome = (EXIT_FAILURE, "too many connections")
            if outcome is not None:
                break
    if outcome is None:
        if "Redis refused the login" in texts or "WRONGPASS" in texts or "NOAUTH" in texts:
            outcome = (EXIT_AUTH, "authentication failed")
        elif "DB index is out of range" in texts:
            outcome = (EXIT_UNKNOWN_DATABASE, "unknown database")
        elif "max number of clients" in texts:
            outcome = (EXIT_FAILURE, "too many connections")
    if outcome is None:
        return connect_failure(exc, where, secrets)
    exit_code, reason = outcome
    detail = str(exc) or type(exc).__name__
    return CommandError(
        scrub(f"cannot connect to {where}: {reason} ({detail})", secrets), exit_code
    )


# ---------------------------------------------------------------------- MySQL / MariaDB


def _mysql_manager_class() -> Any:
    from ..adapters.mysql import AsyncMySQLManager

    class TrackedMySQLManager(AsyncMySQLManager):
        """Remembers the server thread id of every connection it has open, so that the
        tool's sessions can be picked out of ``information_schema.PROCESSLIST`` (MariaDB
        ships with ``performance_schema`` off: connection attributes are not visible)."""

        def __init__(self, *args: Any, threads: set[int], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.threads = threads

        async def connect(self) -> Any:
            conn = await super().connect()
            self.threads.add(int(conn.thread_id()))
            return conn

        async def close(self, conn: Any) -> None:
            try:
                await super().close(conn)
            finally:
                self.threads.discard(int(conn.thread_id()))

    return TrackedMySQLManager


class MySQLBench(Target):
    """MySQL or MariaDB through ``AsyncMySQLManager`` (aiomysql).

    The sessions of the tool's pools are the ``PROCESSLIST`` rows whose thread ids the
    tool's managers opened and have not closed yet.
    """

    kind = "mysql"
    driver = "aiomysql"

    def __init__(self, url: str) -> None:
        from ..adapters.mysql import MySQLTarget

        target = MySQLTarget.from_url(url)
        if target.driver == "pymysql":
            raise CommandError(
                f"PyMySQL is blocking: the benchmark runs AsyncPool, use mysql:// or "
                f"mysql+aiomysql:// for {target.display}",
                EXIT_USAGE,
            )
        self.target = target
        self.display = target.display
        self.secrets = (None if target.password is None else target.password.value,)
        self.local = target.unix_socket is not None or target.host in LOCAL_HOSTS
        self.threads: set[int] = set()
        self._admin: Any = None
        self._admin_manager: Any = None
        self.info = ServerInfo(kind="MySQL", version="unknown", local=self.local, cores=None)

    def manager(self, timeout: float = 10.0) -> Any:
        return _mysql_manager_class()(self.target, connect_timeout=timeout, threads=self.threads)

    async def _admin_rows(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._admin_manager.fetch_all(self._admin, sql, args)
        return rows

    async def open_admin(self) -> None:
        from ..adapters.mysql import AsyncMySQLManager

        self._admin_manager = AsyncMySQLManager(self.target, connect_timeout=10.0)
        try:
            self._admin = await self._admin_manager.connect()
        except Exception as exc:
            raise failure(exc, self.display, self.secrets) from None
        version = str((await self._admin_rows("SELECT VERSION()"))[0][0])
        max_conn = int((await self._admin_rows("SHOW VARIABLES LIKE 'max_connections'"))[0][1])
        in_use = int((await self._admin_rows("SHOW GLOBAL STATUS LIKE 'Threads_connected'"))[0][1])
        self.info = ServerInfo(
            kind="MariaDB" if "mariadb" in version.lower() else "MySQL",
            version=version,
            local=self.local,
            cores=os.cpu_count() if self.local else None,
            max_connections=max_conn,
            reserved_connections=0,
            connections_in_use=in_use,
            connections_available=max(0, max_conn - in_use),
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
        m, conn = self._admin_manager, self._admin
        rng = random.Random(42)
        try:
            await m.execute(
                conn,
                f"CREATE TABLE {self.table} (id INT PRIMARY KEY, name VARCHAR(32) NOT NULL, "
                "balance BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL) ENGINE=InnoDB",
                (),
            )
            await m.execute(
                conn,
                f"CREATE TABLE {self.history} (account_id INT NOT NULL, delta INT NOT NULL, "
                "at DATETIME(6) NOT NULL) ENGINE=InnoDB",
                (),
            )
            chunk = 2000
            for start in range(1, rows + 1, chunk):
                await m.executemany(
                    conn,
                    f"INSERT INTO {self.table} (id, name, balance, updated_at) "
                    "VALUES (%s, %s, %s, NOW(6))",
                    [
                        (i, f"account-{i:06d}", rng.randrange(0, 1_000_000))
                        for i in range(start, min(rows, start + chunk - 1) + 1)
                    ],
                )
            await m.execute(conn, f"ANALYZE TABLE {self.table}", ())
        except Exception as exc:
            await self.drop()
            raise CommandError(
                scrub(
                    f"cannot create the table {self.table} in {self.display}: {exc}", self.secrets
                )
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
        ids = sorted(self.threads)
        if not ids:
            return 0
        rows = await self._admin_rows(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            f"WHERE ID IN ({', '.join(str(int(i)) for i in ids)})"
        )
        return int(rows[0][0])

    def work(self, workload: str, query: str | None, rows: int, seed: int) -> Work:
        rng = random.Random(seed)
        manager = self.manager()  # stateless executor glue, shared by every request
        table, history = self.table, self.history
        select = f"SELECT id, name, balance, updated_at FROM {table} WHERE id = %s"
        update = f"UPDATE {table} SET balance = balance + %s, updated_at = NOW(6) WHERE id = %s"
        balance = f"SELECT balance FROM {table} WHERE id = %s"
        insert = f"INSERT INTO {history} (account_id, delta, at) VALUES (%s, %s, NOW(6))"
        write_share = WRITE_SHARE if workload == "read-write" else 0.0

        async def run(conn: Any) -> None:
            if query is not None:
                await manager.fetch_all(conn, query, ())
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


# ---------------------------------------------------------------------- Redis


async def redis_info(client: Any) -> tuple[str, int | None, int]:
    """``(redis_version, maxclients or None if CONFIG is not allowed, connected_clients)``."""
    server = await client.info("server")
    clients = await client.info("clients")
    try:
        reply = await client.config_get("maxclients")
        value = reply.get("maxclients", reply.get(b"maxclients"))
        max_clients: int | None = None if value is None else int(value)
    except Exception:  # managed services often disable CONFIG
        max_clients = None
    return (
        str(server.get("redis_version", "unknown")),
        max_clients,
        int(clients["connected_clients"]),
    )


class RedisBench(Target):
    """Redis through ``AsyncRedisManager`` (redis.asyncio).

    Every connection of the tool's pools carries a unique client name
    (``tidepool-bench-<pid>-<random>``, replacing one given in the URL), so the sessions seen
    in ``CLIENT LIST`` are exactly the tool's; the admin connection has another. The keys
    are ``<name>:k:<n>`` (seeded) and ``<name>:n:<n>`` (counters), deleted at the end.
    """

    kind = "redis"
    driver = "redis-py"

    def __init__(self, url: str) -> None:
        from ..adapters.redis import RedisTarget

        target = RedisTarget.from_url(url)
        self.target = target
        self.display = target.display
        self.secrets = (None if target.password is None else target.password.value,)
        host = str(target.kwargs.get("host", ""))
        self.local = "path" in target.kwargs or host in LOCAL_HOSTS
        self.app = f"tidepool-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.prefix = self.app
        self._admin: Any = None
        self._admin_manager: Any = None
        self.info = ServerInfo(kind="Redis", version="unknown", local=self.local, cores=None)

    def manager(self, name: str | None = None) -> Any:
        from ..adapters.redis import AsyncRedisManager

        return AsyncRedisManager(
            self.target, connect_timeout=10.0, connect_kwargs={"client_name": name or self.app}
        )

    async def open_admin(self) -> None:
        self._admin_manager = self.manager(f"{self.app}-admin")
        try:
            self._admin = await self._admin_manager.connect()
        except Exception as exc:
            raise failure(exc, self.display, self.secrets) from None
        version, max_clients, in_use = await redis_info(self._admin)
        self.info = ServerInfo(
            kind="Redis",
            version=version,
            local=self.local,
            cores=os.cpu_count() if self.local else None,
            max_connections=max_clients,
            reserved_connections=0 if max_clients is not None else None,
            connections_in_use=in_use if max_clients is not None else None,
            connections_available=None if max_clients is None else max(0, max_clients - in_use),
        )

    async def close_admin(self) -> None:
        if self._admin is not None:
            try:
                await self._admin_manager.close(self._admin)
            finally:
                self._admin = None

    async def seed(self, rows: int) -> None:
        self.table = f"{self.prefix}:*"
        client = self._admin
        rng = random.Random(42)
        try:
            chunk = 1000
            for start in range(1, rows + 1, chunk):
                await client.mset(
                    {
                        f"{self.prefix}:k:{i}": f"account-{i:06d}:{rng.randrange(0, 1_000_000)}"
                        for i in range(start, min(rows, start + chunk - 1) + 1)
                    }
                )
        except Exception as exc:
            await self.drop()
            raise CommandError(
                scrub(f"cannot create the keys {self.table} in {self.display}: {exc}", self.secrets)
            ) from None

    async def drop(self) -> None:
        if self._admin is None or self.table is None:
            return
        try:
            batch: list[Any] = []
            async for key in self._admin.scan_iter(match=f"{self.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await self._admin.unlink(*batch)
                    batch = []
            if batch:
                await self._admin.unlink(*batch)
        except Exception:
            pass

    async def sessions(self) -> int | None:
        if self._admin is None:
            return None
        listed = await self._admin.client_list()
        name = self.app.encode()
        count = 0
        for entry in listed:
            value = entry.get("name")
            if value == self.app or value == name:
                count += 1
        return count

    def work(self, workload: str, query: str | None, rows: int, seed: int) -> Work:
        rng = random.Random(seed)
        prefix = self.prefix
        write_share = WRITE_SHARE if workload == "read-write" else 0.0
        command = query.split() if query is not None else []

        async def run(conn: Any) -> None:
            if command:
                await conn.execute_command(*command)
                return
            key = rng.randint(1, rows)
            if rng.random() >= write_share:
                await conn.get(f"{prefix}:k:{key}")
                return
            await conn.set(f"{prefix}:k:{key}", f"account-{key:06d}:{rng.randrange(0, 1_000_000)}")
            await conn.incr(f"{prefix}:n:{key}")

        return run
