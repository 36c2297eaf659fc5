"""SQLite, from the standard library: the embedded default.

URLs::

    sqlite:///relative/path.db      sqlite:////absolute/path.db
    sqlite://:memory:               one in-memory database shared by every connection of the pool
    ...?busy_timeout=5&journal_mode=wal&synchronous=normal&foreign_keys=on&mode=rwc

``Pool`` lends ``sqlite3.Connection`` objects (a subclass, so the pool can notice one that is
dropped without release). ``AsyncPool`` lends :class:`AsyncSQLiteConnection`: each connection
lives on a worker thread of its own and every call runs there, so the event loop never blocks.

Connections are in autocommit mode (``isolation_level=None``): a statement outside
``BEGIN``/``transaction()`` commits at once. File databases use WAL and a busy timeout (5 s) so
readers never block the writer. On return the pool rolls back an open transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import itertools
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._url import redact_url
from ..errors import ConfigError, ConnectError

__all__ = [
    "AsyncSQLiteConnection",
    "AsyncSQLiteManager",
    "SQLiteConnection",
    "SQLiteManager",
    "SQLiteTarget",
]

T = TypeVar("T")

_PARAMS = ("busy_timeout", "journal_mode", "synchronous", "foreign_keys", "mode")
_JOURNAL_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")
_SYNCHRONOUS = ("off", "normal", "full", "extra")
_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
_MODES = ("ro", "rw", "rwc")
_TRANSACTION_MODES = ("deferred", "immediate", "exclusive")
_memory_names = itertools.count(1)


class SQLiteConnection(sqlite3.Connection):
    """``sqlite3.Connection`` as the pool lends it (weak-referenceable, nothing else added)."""


@dataclass(frozen=True, slots=True)
class SQLiteTarget:
    """What a ``sqlite://`` URL says: which database and how to open it."""

    database: str  # a path, or a 'file:' URI for the shared in-memory database
    memory: bool
    busy_timeout: float = 5.0
    journal_mode: str | None = None
    synchronous: str | None = None
    foreign_keys: bool | None = None
    mode: str | None = None
    display: str = ""

    @classmethod
    def from_url(cls, url: str) -> SQLiteTarget:
        """Parse a ``sqlite://`` URL.

        Raises:
            ConfigError: no database path, an unknown parameter or a bad value.
        """
        redacted = redact_url(url)
        rest = url.split("://", 1)[1]
        path, _, query = rest.partition("?")
        params: dict[str, str] = {}
        for item in filter(None, query.split("&")):
            key, _, value = item.partition("=")
            if key not in _PARAMS:
                close = difflib.get_close_matches(key, _PARAMS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown SQLite URL parameter {key!r} in {redacted!r}{hint} "
                    f"(known: {', '.join(_PARAMS)})"
                )
            params[key] = value.lower()
        memory = path in (":memory:", "/:memory:")
        if memory:
            # A named database in SQLite's memdb VFS is shared by every connection of this
            # process that opens the same name, with ordinary locking (unlike shared cache).
            database = f"file:/tidepool-{os.getpid()}-{next(_memory_names)}?vfs=memdb"
        else:
            if not path.startswith("/") or path == "/":
                raise ConfigError(
                    f"invalid SQLite URL {redacted!r}: expected sqlite:///relative.db, "
                    "sqlite:////absolute.db or sqlite://:memory:"
                )
            database = path[1:]
        busy = params.get("busy_timeout", "5")
        try:
            busy_timeout = float(busy)
        except ValueError:
            busy_timeout = -1.0
        if not 0 <= busy_timeout < float("inf"):
            raise ConfigError(
                f"SQLite URL parameter busy_timeout must be a number of seconds >= 0, got {busy!r}"
            )
        journal = _choice(params, "journal_mode", _JOURNAL_MODES, redacted)
        if journal is None and not memory:
            journal = "wal"
        foreign = params.get("foreign_keys")
        if foreign is not None and foreign not in _ON_OFF:
            raise ConfigError(
                f"SQLite URL parameter foreign_keys must be on or off, got {foreign!r}"
            )
        return cls(
            database=database,
            memory=memory,
            busy_timeout=busy_timeout,
            journal_mode=journal,
            synchronous=_choice(params, "synchronous", _SYNCHRONOUS, redacted),
            foreign_keys=None if foreign is None else _ON_OFF[foreign],
            mode=_choice(params, "mode", _MODES, redacted),
            display="sqlite::memory:" if memory else f"sqlite:{database}",
        )

    def open(self, connect_kwargs: dict[str, Any]) -> SQLiteConnection:
        """Open one connection (blocking).

        Raises:
            ConnectError: the database cannot be opened (missing directory, permissions,
                not a database); the sqlite3 error is ``__cause__``.
            sqlite3.OperationalError: the database is busy or locked (transient).
        """
        database, uri = self.database, self.memory
        if self.mode is not None:
            database, uri = f"file:{_quote_path(self.database)}?mode={self.mode}", True
        kwargs: dict[str, Any] = {
            "timeout": self.busy_timeout,
            "check_same_thread": False,
            "isolation_level": None,
            "factory": SQLiteConnection,
            "uri": uri,
            **connect_kwargs,
        }
        try:
            conn = sqlite3.connect(database, **kwargs)
        except sqlite3.Error as exc:
            raise _classify(exc, self) from exc
        try:
            conn.row_factory = sqlite3.Row
            if self.journal_mode is not None:
                conn.execute(f"PRAGMA journal_mode={self.journal_mode}")
            if self.synchronous is not None:
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if self.foreign_keys is not None:
                conn.execute(f"PRAGMA foreign_keys={'on' if self.foreign_keys else 'off'}")
        except sqlite3.Error as exc:
            conn.close()
            raise _classify(exc, self) from exc
        assert isinstance(conn, SQLiteConnection)
        return conn


def _choice(params: dict[str, str], key: str, allowed: Sequence[str], redacted: str) -> str | None:
    value = params.get(key)
    if value is not None and value not in allowed:
        raise ConfigError(
            f"SQLite URL parameter {key} must be one of {', '.join(allowed)}, got {value!r} "
            f"in {redacted!r}"
        )
    return value


def _quote_path(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _classify(exc: sqlite3.Error, target: SQLiteTarget) -> Exception:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return exc  # another connection holds a lock: worth retrying
    return ConnectError(f"cannot open SQLite database {target.display!r}: {exc}")


# ---------------------------------------------------------------------- executor glue
# Plain functions of a raw connection: the sync manager calls them directly, the async
# connection runs them on its own thread.


def _execute(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
    return conn.execute(sql, args).rowcount


def _executemany(conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> int:
    return conn.executemany(sql, rows).rowcount


def _fetch_all(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    return conn.execute(sql, args).fetchall()


def _fetch_one(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Any | None:
    return conn.execute(sql, args).fetchone()


def _fetch_value(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _begin_sql(mode: str = "deferred") -> str:
    if mode not in _TRANSACTION_MODES:
        raise ValueError(
            f"SQLite transaction mode must be one of {', '.join(_TRANSACTION_MODES)}, got {mode!r}"
        )
    return f"BEGIN {mode.upper()}"


def _check(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.rollback()


def _is_closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.in_transaction  # noqa: B018 - raises ProgrammingError once closed
    except sqlite3.ProgrammingError:
        return True
    return False


class _MemoryKeeper:
    """Holds one connection to a shared in-memory database so that it outlives idle
    periods in which the pool has no connection open."""

    def __init__(self, target: SQLiteTarget) -> None:
        self._target = target
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self._target.memory and self._conn is None:
            with self._lock:
                if self._conn is None:
                    self._conn = self._target.open({})

    def dispose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# ---------------------------------------------------------------------- Pool


class SQLiteManager:
    """Blocking manager and executor for ``Pool`` (stdlib ``sqlite3``)."""

    def __init__(self, target: SQLiteTarget | str, **connect_kwargs: Any) -> None:
        self.target = SQLiteTarget.from_url(target) if isinstance(target, str) else target
        self._connect_kwargs = connect_kwargs
        self._keeper = _MemoryKeeper(self.target)

    def connect(self) -> SQLiteConnection:
        self._keeper.ensure()
        return self.target.open(self._connect_kwargs)

    def check(self, conn: sqlite3.Connection) -> None:
        _check(conn)

    def reset(self, conn: sqlite3.Connection) -> None:
        _rollback_if_open(conn)

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def is_broken(self, conn: sqlite3.Connection) -> bool:
        return _is_closed(conn)

    def dispose(self) -> None:
        self._keeper.dispose()

    def execute(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
        return _execute(conn, sql, args)

    def executemany(self, conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return _executemany(conn, sql, rows)

    def fetch_all(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
        return _fetch_all(conn, sql, args)

    def fetch_one(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Any | None:
        return _fetch_one(conn, sql, args)

    def fetch_value(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Any:
        return _fetch_value(conn, sql, args)

    def begin(self, conn: sqlite3.Connection, mode: str = "deferred") -> None:
        conn.execute(_begin_sql(mode))

    def commit(self, conn: sqlite3.Connection) -> None:
        conn.commit()

    def rollback(self, conn: sqlite3.Connection) -> None:
        conn.rollback()


# ---------------------------------------------------------------------- AsyncPool

_STOP = None


class AsyncSQLiteConnection:
    """An sqlite3 connection on a worker thread of its own; each method runs there.

    Calls run one at a time, in order. Cancelling a call interrupts the statement it is
    running (``sqlite3_interrupt``), never a later one. For anything not wrapped here, pass a
    function of the raw ``sqlite3.Connection`` to :meth:`run`.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._raw: sqlite3.Connection | None = None
        self._running: object = None  # the job being run, guarded by _interrupt_lock
        self._interrupt_lock = threading.Lock()
        self._pending = 0
        self._thread = threading.Thread(target=self._work, name="tidepool-sqlite", daemon=True)
        self._thread.start()

    @classmethod
    async def open(
        cls, target: SQLiteTarget, connect_kwargs: dict[str, Any]
    ) -> AsyncSQLiteConnection:
        """Start the thread and open the database on it."""
        self = cls()
        try:
            self._raw = await self.run(lambda _raw: target.open(connect_kwargs))
        except BaseException:
            self._jobs.put(_STOP)
            raise
        return self

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is _STOP:
                break
            fn, args, future, loop = job[:4]
            with self._interrupt_lock:
                skipped = job[4]  # cancelled while queued: never run it
                self._running = None if skipped else job
            if skipped:
                outcome: tuple[bool, Any] = (False, None)
            else:
                try:
                    outcome = (True, fn(self._raw, *args))
                except BaseException as exc:
                    outcome = (False, exc)
                with self._interrupt_lock:
                    self._running = None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, outcome, self)
        if self._raw is not None:
            with contextlib.suppress(sqlite3.Error):
                self._raw.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(raw_connection, *args)`` on this connection's thread and return its
        result. Raises whatever ``fn`` raises. Cancelling the call interrupts it if it is
        running, or drops it if it is still queued."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = [fn, args, future, loop, False]
        self._pending += 1
        self._jobs.put(job)
        try:
            return await future
        except asyncio.CancelledError:
            with self._interrupt_lock:
                if self._running is job:
                    if self._raw is not None:
                        self._raw.interrupt()
                else:
                    job[4] = True
            raise

    @property
    def raw(self) -> sqlite3.Connection:
        """The underlying connection: use it only inside :meth:`run`."""
        if self._raw is None:
            raise RuntimeError("the connection is not open")
        return self._raw

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return self._raw is not None and not _is_closed(self._raw) and self._raw.in_transaction

    @property
    def busy(self) -> bool:
        """Whether calls are queued or running on the thread."""
        return self._pending > 0

    @property
    def closed(self) -> bool:
        return self._raw is None or not self._thread.is_alive() or _is_closed(self._raw)

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return its row count."""
        return await self.run(_execute, sql, args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run a statement once per row of parameters; return the total row count."""
        return await self.run(_executemany, sql, rows)

    async def executescript(self, script: str) -> None:
        """Run several statements separated by ``;``."""
        await self.run(sqlite3.Connection.executescript, script)

    async def fetch_all(self, sql: str, *args: Any) -> list[Any]:
        """Return every row (``sqlite3.Row``)."""
        return await self.run(_fetch_all, sql, args)

    async def fetch_one(self, sql: str, *args: Any) -> Any | None:
        """Return the first row, or ``None``."""
        return await self.run(_fetch_one, sql, args)

    async def fetch_value(self, sql: str, *args: Any) -> Any:
        """Return the first column of the first row, or ``None``."""
        return await self.run(_fetch_value, sql, args)

    async def commit(self) -> None:
        await self.run(sqlite3.Connection.commit)

    async def rollback(self) -> None:
        await self.run(sqlite3.Connection.rollback)

    async def close(self) -> None:
        """Close the connection and stop its thread."""
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def __del__(self) -> None:
        # Dropped without close (e.g. garbage-collected while lent): stop the thread, which
        # closes the database connection on its way out.
        self._jobs.put(_STOP)


def _settle(
    future: asyncio.Future[Any], outcome: tuple[bool, Any], conn: AsyncSQLiteConnection
) -> None:
    conn._pending -= 1
    if future.cancelled():
        return
    ok, value = outcome
    if value is None and not ok:
        future.cancel()
    elif ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class AsyncSQLiteManager:
    """Async manager and executor for ``AsyncPool``."""

    def __init__(self, target: SQLiteTarget | str, **connect_kwargs: Any) -> None:
        self.target = SQLiteTarget.from_url(target) if isinstance(target, str) else target
        self._connect_kwargs = connect_kwargs
        self._keeper = _MemoryKeeper(self.target)

    async def connect(self) -> AsyncSQLiteConnection:
        if self.target.memory:
            await asyncio.get_running_loop().run_in_executor(None, self._keeper.ensure)
        return await AsyncSQLiteConnection.open(self.target, self._connect_kwargs)

    async def check(self, conn: AsyncSQLiteConnection) -> None:
        await conn.run(_check)

    async def reset(self, conn: AsyncSQLiteConnection) -> None:
        # No thread hop when nothing is pending and no transaction is open (the common case).
        if conn.busy or conn.in_transaction:
            await conn.run(_rollback_if_open)

    async def close(self, conn: AsyncSQLiteConnection) -> None:
        await conn.close()

    def is_broken(self, conn: AsyncSQLiteConnection) -> bool:
        return conn.closed

    async def dispose(self) -> None:
        self._keeper.dispose()

    async def execute(self, conn: AsyncSQLiteConnection, sql: str, args: Sequence[Any]) -> int:
        return await conn.run(_execute, sql, args)

    async def executemany(
        self, conn: AsyncSQLiteConnection, sql: str, rows: Iterable[Sequence[Any]]
    ) -> int:
        return await conn.run(_executemany, sql, rows)

    async def fetch_all(
        self, conn: AsyncSQLiteConnection, sql: str, args: Sequence[Any]
    ) -> list[Any]:
        return await conn.run(_fetch_all, sql, args)

    async def fetch_one(
        self, conn: AsyncSQLiteConnection, sql: str, args: Sequence[Any]
    ) -> Any | None:
        return await conn.run(_fetch_one, sql, args)

    async def fetch_value(self, conn: AsyncSQLiteConnection, sql: str, args: Sequence[Any]) -> Any:
        return await conn.run(_fetch_value, sql, args)

    async def begin(self, conn: AsyncSQLiteConnection, mode: str = "deferred") -> None:
        await conn.run(sqlite3.Connection.execute, _begin_sql(mode))

    async def commit(self, conn: AsyncSQLiteConnection) -> None:
        await conn.commit()

    async def rollback(self, conn: AsyncSQLiteConnection) -> None:
        await conn.rollback()
