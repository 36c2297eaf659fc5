"""SQLAlchemy Core and ORM on tidepool connections.

    import tidepool
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool
    from tidepool.integrations.sqlalchemy import async_creator, creator

    pool = tidepool.Pool("postgresql://app@db/app", max_size=10)
    engine = create_engine(
        "postgresql+psycopg://", creator=creator(pool), poolclass=NullPool
    )

    apool = tidepool.AsyncPool("postgresql://app@db/app", max_size=10)
    aengine = create_async_engine(
        "postgresql+asyncpg://", async_creator=async_creator(apool), poolclass=NullPool
    )

or, with the pool class and the URL checked for you, ``engine = create_engine(pool)`` and
``aengine = create_async_engine(apool)`` from this module.

Always use ``poolclass=NullPool``: SQLAlchemy then "closes" its connection at every checkin,
which gives it back to tidepool. Any other SQLAlchemy pool keeps tidepool's connections lent
while they sit idle in SQLAlchemy's pool (two pools stacked), so tidepool's limits, checks,
resets and stats stop meaning anything.

Supported: ``Pool`` lending psycopg 3 (``postgresql+psycopg://``) or sqlite3 (``sqlite://``);
``AsyncPool`` lending asyncpg (``postgresql+asyncpg://``) or psycopg 3
(``postgresql+psycopg://``). Needs SQLAlchemy 2.0 (2.0.16 for ``async_creator``): ``pip
install 'tidepool[sqlalchemy]'``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

try:
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.engine import URL, AdaptedConnection, Engine, make_url
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import NullPool
    from sqlalchemy.pool import Pool as SQLAlchemyPool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "tidepool.integrations.sqlalchemy needs SQLAlchemy 2.0 and greenlet: "
        "pip install 'tidepool[sqlalchemy]'"
    ) from exc

from .._async.pool import AsyncPool
from .._sync.pool import Pool
from ..errors import ConfigError

__all__ = ["async_creator", "create_async_engine", "create_engine", "creator"]

log = logging.getLogger("tidepool.integrations.sqlalchemy")

# The tidepool adapters SQLAlchemy can drive: manager class -> (dialect, driver) as SQLAlchemy
# names them. Other adapters are refused when the bridge is made; connections of a custom
# manager are checked when lent.
_SYNC_ADAPTERS = {
    "tidepool.adapters.pg_psycopg.PsycopgManager": ("postgresql", "psycopg"),
    "tidepool.adapters.sqlite.SQLiteManager": ("sqlite", "pysqlite"),
}
_ASYNC_ADAPTERS = {
    "tidepool.adapters.pg_asyncpg.AsyncpgManager": ("postgresql", "asyncpg"),
    "tidepool.adapters.pg_psycopg.AsyncPsycopgManager": ("postgresql", "psycopg"),
}
_ASYNC_SQLITE_HINT = (
    "SQLAlchemy's async SQLite dialect drives aiosqlite connections, not tidepool's "
    "AsyncSQLiteConnection; use a tidepool.Pool with creator() and a sync engine"
)
_SUPPORTED = (
    "the SQLAlchemy bridge supports tidepool.Pool lending psycopg or sqlite3 connections "
    "(creator) and tidepool.AsyncPool lending asyncpg or psycopg connections (async_creator)"
)


# ---------------------------------------------------------------------- the lent proxies


class _Bridged:
    """The DBAPI connection SQLAlchemy sees: the driver's connection lent by a tidepool pool,
    with ``close()`` giving it back instead of closing it.

    Everything else is the driver's own: attribute reads and writes pass through, and
    ``isinstance`` sees the driver's class (psycopg's type lookups require it). What the
    bridge or SQLAlchemy changes on the connection is undone when it goes back: each subclass
    saves the driver's settings when it is lent and records what is registered through it.
    After ``close()`` every use raises the driver's own "connection is closed" error, as a
    closed connection would: the pool may have lent the connection to someone else by then.
    """

    __slots__ = (
        "__weakref__",
        "_tp_class",
        "_tp_conn",
        "_tp_invalidated",
        "_tp_pool",
        "_tp_saved",
        "_tp_undo",
    )
    _tp_driver: ClassVar[str]  # for error messages: the driver...
    _tp_url: ClassVar[str]  # ...and the SQLAlchemy URL that selects its dialect
    _tp_class: type[Any]
    _tp_conn: Any
    _tp_pool: Any
    _tp_saved: tuple[Any, ...]
    _tp_undo: list[Callable[[], Any]]
    _tp_invalidated: bool

    def __init__(self, pool: Any, conn: Any) -> None:
        init = object.__setattr__
        init(self, "_tp_class", type(conn))
        init(self, "_tp_pool", pool)
        init(self, "_tp_conn", conn)
        init(self, "_tp_saved", ())
        init(self, "_tp_undo", [])
        init(self, "_tp_invalidated", False)

    @staticmethod
    def _tp_closed_error() -> Exception:
        """The driver's error for a closed connection."""
        raise NotImplementedError

    def _tp_live(self) -> Any:
        conn = self._tp_conn
        if conn is None:
            raise self._tp_closed_error()
        return conn

    def _tp_take(self) -> Any:
        """Detach the driver connection for its return; ``None`` if already returned."""
        conn = self._tp_conn
        object.__setattr__(self, "_tp_conn", None)
        return conn

    def _tp_invalidate(self) -> None:
        object.__setattr__(self, "_tp_invalidated", True)

    def __getattr__(self, name: str) -> Any:
        conn = self._tp_live()
        try:
            return getattr(conn, name)
        except AttributeError:
            raise AttributeError(
                f"the {self._tp_driver} connection lent by tidepool pool "
                f"{self._tp_pool.name!r} has no attribute {name!r}: the engine's dialect "
                f"expects another driver (with this pool, use a {self._tp_url!r} URL)"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tp_live(), name, value)

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:  # what isinstance() sees: the driver's class
        return self._tp_class

    def __repr__(self) -> str:
        conn = self._tp_conn
        state = "returned" if conn is None else repr(conn)
        return f"<tidepool SQLAlchemy bridge, pool {self._tp_pool.name!r}: {state}>"


def _is_bridged(obj: object) -> bool:
    return issubclass(type(obj), _Bridged)  # type(), not isinstance(): see __class__


def _on_invalidate(dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
    """SQLAlchemy invalidated a connection (a disconnect, a failed rollback,
    ``invalidate()``): when it is closed, the pool must retire it, not lend it again."""
    target = dbapi_connection
    if isinstance(target, AdaptedConnection):  # the asyncio dialects wrap the bridge
        target = target.driver_connection
    if _is_bridged(target):
        target._tp_invalidate()


_listening = False
_listen_lock = threading.Lock()


def _listen_for_invalidation() -> None:
    """Watch every SQLAlchemy pool's invalidations, once per process: SQLAlchemy calls the
    same ``close()`` to check a connection in and to throw it away, and only this event tells
    the two apart. The listener ignores connections that are not the bridge's."""
    global _listening
    if _listening:
        return
    with _listen_lock:
        if not _listening:
            event.listen(SQLAlchemyPool, "invalidate", _on_invalidate)
            event.listen(SQLAlchemyPool, "soft_invalidate", _on_invalidate)
            _listening = True


def _forget(remove: Callable[[Any], Any], callback: Any) -> None:
    try:
        remove(callback)
    except ValueError:  # already removed by whoever added it
        pass


def _psycopg_settings(conn: Any) -> tuple[Any, ...]:
    return (conn.autocommit, conn.isolation_level, conn.read_only, conn.deferrable)


def _in_transaction(conn: Any) -> bool:
    from psycopg import pq

    status = conn.info.transaction_status
    return status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class _PsycopgCommon(_Bridged):
    __slots__ = ()
    _tp_driver = "psycopg"
    _tp_url = "postgresql+psycopg://"

    @staticmethod
    def _tp_closed_error() -> Exception:
        import psycopg

        return psycopg.OperationalError("the connection is closed")

    @property
    def closed(self) -> bool:
        conn = self._tp_conn
        return True if conn is None else bool(conn.closed)

    @property
    def broken(self) -> bool:
        conn = self._tp_conn
        return False if conn is None else bool(conn.broken)


# ---------------------------------------------------------------------- Pool


class _SyncBridged(_Bridged):
    __slots__ = ()

    def _tp_prepare(self, conn: Any) -> None:
        """Set the connection up for SQLAlchemy (no I/O)."""
        raise NotImplementedError

    def _tp_restore(self, conn: Any) -> None:
        """Undo what the bridge and SQLAlchemy changed; raise if that is not possible."""
        raise NotImplementedError

    def close(self) -> None:
        """Give the connection back to the pool; close it first (so that the pool retires it)
        if SQLAlchemy invalidated it or its settings cannot be restored. Closing twice does
        nothing."""
        conn = self._tp_take()
        if conn is None:
            return
        failure: BaseException | None = None
        if not self._tp_invalidated:
            try:
                self._tp_restore(conn)
            except BaseException as exc:
                failure = exc
        discard = self._tp_invalidated or failure is not None
        if discard:
            _note_discard(failure)
        # Discarded: the pool closes it in the background and never lends it again.
        self._tp_pool.release(conn, discard=discard)
        if failure is not None and not isinstance(failure, Exception):
            raise failure


def _note_discard(failure: BaseException | None) -> None:
    if failure is None:
        log.debug("retiring a connection SQLAlchemy invalidated")
    else:
        log.info("retiring a connection whose settings could not be restored: %r", failure)


class _PsycopgBridged(_PsycopgCommon, _SyncBridged):
    """psycopg 3 ``Connection``: lent by the pool in autocommit mode, handed to SQLAlchemy
    with ``autocommit = False`` (SQLAlchemy runs its own BEGIN/COMMIT); given back with the
    open transaction rolled back, notice handlers added through it removed and
    ``autocommit``, ``isolation_level``, ``read_only`` and ``deferrable`` as they were."""

    __slots__ = ()

    def add_notice_handler(self, callback: Any) -> None:
        conn = self._tp_live()
        conn.add_notice_handler(callback)
        self._tp_undo.append(functools.partial(_forget, conn.remove_notice_handler, callback))

    def _tp_prepare(self, conn: Any) -> None:
        object.__setattr__(self, "_tp_saved", _psycopg_settings(conn))
        conn.autocommit = False

    def _tp_restore(self, conn: Any) -> None:
        if _in_transaction(conn):
            conn.rollback()
        for undo in reversed(self._tp_undo):
            undo()
        if _psycopg_settings(conn) != self._tp_saved:
            conn.autocommit, conn.isolation_level, conn.read_only, conn.deferrable = self._tp_saved


class _SQLiteBridged(_SyncBridged):
    """sqlite3 ``Connection``: lent by the pool in autocommit mode (``isolation_level =
    None``) with ``sqlite3.Row`` rows, handed to SQLAlchemy as ``sqlite3.connect()`` makes
    it (``isolation_level = ""``, tuple rows): SQLAlchemy's pysqlite dialect relies on the
    driver's implicit BEGIN. Given back with the open transaction rolled back and both
    settings as they were. Functions SQLAlchemy registers on it (``regexp``, ``floor``) stay:
    sqlite3 on Python 3.11 cannot unregister a function."""

    __slots__ = ()
    _tp_driver = "sqlite3"
    _tp_url = "sqlite://"

    @staticmethod
    def _tp_closed_error() -> Exception:
        import sqlite3

        return sqlite3.ProgrammingError("Cannot operate on a closed database.")

    def _tp_prepare(self, conn: Any) -> None:
        object.__setattr__(self, "_tp_saved", (conn.isolation_level, conn.row_factory))
        conn.isolation_level = ""
        conn.row_factory = None

    def _tp_restore(self, conn: Any) -> None:
        if conn.in_transaction:
            # First: setting isolation_level back to None would COMMIT an open transaction.
            conn.rollback()
        conn.isolation_level, conn.row_factory = self._tp_saved


# ---------------------------------------------------------------------- AsyncPool


class _AsyncBridged(_Bridged):
    __slots__ = ()

    async def _tp_prepare(self, conn: Any) -> None:
        """Set the connection up for SQLAlchemy."""

    async def _tp_restore(self, conn: Any) -> None:
        """Undo what the bridge and SQLAlchemy changed; raise if that is not possible."""
        for undo in reversed(self._tp_undo):
            await undo()

    async def close(self, *, timeout: float | None = None) -> None:
        """Give the connection back to the pool; close it first (so that the pool retires it)
        if SQLAlchemy invalidated it, or its settings cannot be restored within the pool's
        ``connect_timeout`` or before a cancellation. Closing twice does nothing.
        ``timeout`` (SQLAlchemy passes one when it terminates a connection) is not used: the
        pool bounds the return."""
        conn = self._tp_take()
        if conn is None:
            return
        pool = self._tp_pool
        failure: BaseException | None = None
        if not self._tp_invalidated:
            try:
                async with asyncio.timeout(pool.options.connect_timeout):
                    await self._tp_restore(conn)
            except BaseException as exc:
                failure = exc
        discard = self._tp_invalidated or failure is not None
        if discard:
            _note_discard(failure)
        # A discarded connection's release waits for nothing (the pool closes it in the
        # background): it completes even in a task that is being cancelled.
        await pool.release(conn, discard=discard)
        if failure is not None and not isinstance(failure, Exception):
            raise failure


class _AsyncpgBridged(_AsyncBridged):
    """asyncpg ``Connection``: SQLAlchemy's asyncpg adapter runs its own transactions, so
    nothing changes when it is lent; the codecs set through it with ``set_type_codec()``
    (SQLAlchemy decodes ``json`` and ``jsonb`` itself) are reset when it goes back."""

    __slots__ = ()
    _tp_driver = "asyncpg"
    _tp_url = "postgresql+asyncpg://"

    @staticmethod
    def _tp_closed_error() -> Exception:
        import asyncpg

        return asyncpg.InterfaceError("connection is closed")  # type: ignore[no-any-return]

    def is_closed(self) -> bool:
        conn = self._tp_conn
        return True if conn is None else bool(conn.is_closed())

    async def set_type_codec(self, typename: str, *, schema: str = "public", **kw: Any) -> None:
        conn = self._tp_live()
        await conn.set_type_codec(typename, schema=schema, **kw)
        self._tp_undo.append(functools.partial(conn.reset_type_codec, typename, schema=schema))

    def terminate(self) -> None:
        """Give the connection back to the pool, which retires it, and abort it (SQLAlchemy's
        last resort, also for a connection garbage-collected without being closed).

        It goes back first, while still open: a connection that is already closed when it
        comes back was lost to a disconnect, which retires every older connection, and an
        abort of our own says nothing about the others."""
        conn = self._tp_take()
        if conn is None:
            return
        pool = self._tp_pool
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and loop is pool._loop:
            # A discard does no I/O: its whole release is this synchronous step.
            entry = pool._state.find_lent(conn)
            if entry is not None:
                pool.release_start(entry, conn, discard=True)
        # Otherwise (a garbage collection outside the pool's loop) the pool reclaims the
        # aborted connection once it is collected, with a ResourceWarning.
        conn.terminate()


class _AsyncPsycopgBridged(_PsycopgCommon, _AsyncBridged):
    """psycopg 3 ``AsyncConnection``: as for ``Connection`` in ``Pool``, through psycopg's
    async setters."""

    __slots__ = ()

    def add_notice_handler(self, callback: Any) -> None:
        conn = self._tp_live()
        conn.add_notice_handler(callback)
        remove = functools.partial(_forget, conn.remove_notice_handler, callback)
        self._tp_undo.append(functools.partial(_call_async, remove))

    async def _tp_prepare(self, conn: Any) -> None:
        object.__setattr__(self, "_tp_saved", _psycopg_settings(conn))
        await conn.set_autocommit(False)

    async def _tp_restore(self, conn: Any) -> None:
        if _in_transaction(conn):
            await conn.rollback()
        await super()._tp_restore(conn)
        if _psycopg_settings(conn) != self._tp_saved:
            autocommit, isolation, read_only, deferrable = self._tp_saved
            await conn.set_autocommit(autocommit)
            await conn.set_isolation_level(isolation)
            await conn.set_read_only(read_only)
            await conn.set_deferrable(deferrable)


async def _call_async(fn: Callable[[], Any]) -> None:
    fn()


# ---------------------------------------------------------------------- lending


def _sync_class(conn: Any) -> type[_SyncBridged] | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.Connection):
        return _PsycopgBridged
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(conn, sqlite3.Connection):
        return _SQLiteBridged
    return None


def _async_class(conn: Any) -> type[_AsyncBridged] | None:
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None and isinstance(conn, asyncpg.Connection):
        return _AsyncpgBridged
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.AsyncConnection):
        return _AsyncPsycopgBridged
    return None


def _unsupported(pool: Any, conn: Any) -> TypeError:
    kind = f"{type(conn).__module__}.{type(conn).__name__}"
    hint = _ASYNC_SQLITE_HINT if type(conn).__name__ == "AsyncSQLiteConnection" else _SUPPORTED
    return TypeError(f"pool {pool.name!r} lends {kind} connections; {hint}")


def _adapter_key(pool: Any) -> str:
    manager = type(pool.manager)
    return f"{manager.__module__}.{manager.__qualname__}"


def _check_pool(pool: object, *, want_async: bool, factory: str) -> None:
    if want_async:
        if isinstance(pool, Pool):
            raise TypeError(
                f"{factory}() needs a tidepool.AsyncPool; for a tidepool.Pool use creator() "
                "with sqlalchemy.create_engine()"
            )
        if not isinstance(pool, AsyncPool):
            raise TypeError(f"{factory}() needs a tidepool.AsyncPool, got {type(pool).__name__}")
    else:
        if isinstance(pool, AsyncPool):
            raise TypeError(
                f"{factory}() needs a tidepool.Pool; for a tidepool.AsyncPool use "
                "async_creator() with sqlalchemy.ext.asyncio.create_async_engine()"
            )
        if not isinstance(pool, Pool):
            raise TypeError(f"{factory}() needs a tidepool.Pool, got {type(pool).__name__}")
    key = _adapter_key(pool)
    known = _ASYNC_ADAPTERS if want_async else _SYNC_ADAPTERS
    if key.startswith("tidepool.") and key not in known:
        hint = _ASYNC_SQLITE_HINT if key.endswith("AsyncSQLiteManager") else _SUPPORTED
        raise TypeError(f"pool {pool.name!r} uses {key.rpartition('.')[2]}; {hint}")


def creator(pool: Pool[Any]) -> Callable[[], Any]:
    """A ``creator`` for :func:`sqlalchemy.create_engine` that borrows from ``pool``.

    Each call lends one connection (``pool.getconn()``, within the pool's
    ``acquire_timeout``) wrapped so that SQLAlchemy's ``close()`` gives it back. Use the URL
    of the pool's driver, ``"postgresql+psycopg://"`` or ``"sqlite://"`` (the rest of the URL
    is ignored: the pool decides where to connect), and always ``poolclass=NullPool``: any
    other SQLAlchemy pool would keep tidepool's connections lent while they sit idle in it
    (two pools stacked), and the bridge cannot tell. :func:`create_engine` sets both.

    While SQLAlchemy holds it, a psycopg connection has ``autocommit = False`` and a sqlite3
    connection ``isolation_level = ""`` with tuple rows, as their SQLAlchemy dialects expect.
    When it goes back, the open transaction is rolled back, those settings (and psycopg's
    ``isolation_level``, ``read_only``, ``deferrable``) are restored and the notice handlers
    added through it removed; then the pool resets it as usual. (The ``regexp()`` and
    ``floor()`` functions SQLAlchemy registers on a SQLite connection stay: sqlite3 cannot
    unregister a function.) A connection SQLAlchemy invalidated (a disconnect, a failed
    rollback, ``Connection.invalidate()``), or whose settings cannot be restored, is closed
    and retired by the pool instead of being lent again.

    Raises:
        TypeError: ``pool`` is not a ``tidepool.Pool`` (an ``AsyncPool`` needs
            :func:`async_creator`), or lends connections SQLAlchemy cannot drive through the
            bridge. The second is raised by the returned callable when the pool's manager
            is your own and lends something else than psycopg or sqlite3 connections.

    The returned callable raises what ``pool.getconn()`` raises (``PoolTimeout``,
    ``PoolClosed``, ...).
    """
    _check_pool(pool, want_async=False, factory="creator")
    _listen_for_invalidation()

    def connect() -> Any:
        conn = pool.getconn()
        cls = _sync_class(conn)
        if cls is None:
            pool.release(conn)
            raise _unsupported(pool, conn)
        bridged = cls(pool, conn)
        try:
            bridged._tp_prepare(conn)
        except BaseException:
            bridged._tp_invalidate()
            bridged.close()
            raise
        return bridged

    return connect


def async_creator(pool: AsyncPool[Any]) -> Callable[[], Awaitable[Any]]:
    """An ``async_creator`` for :func:`sqlalchemy.ext.asyncio.create_async_engine` that
    borrows from ``pool`` (SQLAlchemy 2.0.16 or later).

    As :func:`creator`, for ``AsyncPool``: ``"postgresql+asyncpg://"`` for asyncpg pools,
    ``"postgresql+psycopg://"`` for psycopg ones, and always ``poolclass=NullPool`` (two
    pools stacked otherwise; :func:`create_async_engine` sets it). The engine must be used on
    the event loop the pool runs on. An asyncpg connection is lent
    unchanged (SQLAlchemy's adapter runs its own transactions) and the type codecs
    SQLAlchemy sets on it (``json``, ``jsonb``) are reset when it goes back; a psycopg
    connection is handled as in :func:`creator`. Restoring a connection is bounded by the
    pool's ``connect_timeout``; past it, or if the task is cancelled meanwhile, the
    connection is closed and retired.

    Raises:
        TypeError: ``pool`` is not a ``tidepool.AsyncPool`` (a ``Pool`` needs
            :func:`creator`), it is a SQLite pool (SQLAlchemy's async SQLite dialect needs
            aiosqlite), or, from the returned callable, its own manager lends connections
            other than asyncpg or psycopg ones.
        RuntimeError: SQLAlchemy is older than 2.0.16.
    """
    _check_pool(pool, want_async=True, factory="async_creator")
    _require_sqlalchemy((2, 0, 16), "async_creator")
    _listen_for_invalidation()

    async def connect() -> Any:
        conn = await pool.acquire()
        cls = _async_class(conn)
        if cls is None:
            await pool.release(conn)
            raise _unsupported(pool, conn)
        bridged = cls(pool, conn)
        try:
            await bridged._tp_prepare(conn)
        except BaseException:
            bridged._tp_invalidate()
            await bridged.close()
            raise
        return bridged

    return connect


def _require_sqlalchemy(version: tuple[int, ...], what: str) -> None:
    found = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:3] if p.isdigit())
    if found < version:
        raise RuntimeError(
            f"{what} needs SQLAlchemy {'.'.join(map(str, version))} or later; "
            f"{sqlalchemy.__version__} is installed"
        )


# ---------------------------------------------------------------------- engines


def create_engine(pool: Pool[Any], url: str | URL | None = None, /, **kwargs: Any) -> Engine:
    """:func:`sqlalchemy.create_engine` over ``pool``: ``creator=creator(pool)`` and
    ``poolclass=NullPool``, with the URL checked against the pool's driver.

    ``url`` defaults to the pool's driver (``"postgresql+psycopg://"``, ``"sqlite://"``) and,
    if given, must name only the dialect and driver: where to connect is the pool's business.
    Other keyword arguments go to SQLAlchemy (``echo``, ``isolation_level``, ...).

    Raises:
        TypeError: as :func:`creator`; or ``creator``, ``async_creator`` or ``pool`` passed.
        ConfigError: a ``poolclass`` other than ``NullPool`` (SQLAlchemy must not pool
            tidepool's connections a second time); a ``url`` that names another driver than
            the pool lends, or carries a host, database, user or query; no ``url`` for a pool
            with your own manager.
    """
    _check_engine_kwargs(kwargs, "creator")
    bridge = creator(pool)
    return sqlalchemy.create_engine(
        _engine_url(pool, url, _SYNC_ADAPTERS), creator=bridge, **kwargs
    )


def create_async_engine(
    pool: AsyncPool[Any], url: str | URL | None = None, /, **kwargs: Any
) -> AsyncEngine:
    """:func:`sqlalchemy.ext.asyncio.create_async_engine` over ``pool``:
    ``async_creator=async_creator(pool)`` and ``poolclass=NullPool``, with the URL checked
    against the pool's driver (default ``"postgresql+asyncpg://"`` or
    ``"postgresql+psycopg://"``).

    Raises:
        TypeError, ConfigError: as :func:`create_engine` and :func:`async_creator`.
    """
    _check_engine_kwargs(kwargs, "async_creator")
    bridge = async_creator(pool)
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    return sa_create_async_engine(
        _engine_url(pool, url, _ASYNC_ADAPTERS),
        async_creator=bridge,
        **kwargs,
    )


def _check_engine_kwargs(kwargs: dict[str, Any], bridge: str) -> None:
    for name in ("creator", "async_creator", "pool"):
        if name in kwargs:
            raise TypeError(
                f"{name}= cannot be passed: the engine takes its connections from the "
                f"tidepool pool through {bridge}()"
            )
    poolclass = kwargs.setdefault("poolclass", NullPool)
    if not (isinstance(poolclass, type) and issubclass(poolclass, NullPool)):
        raise ConfigError(
            f"poolclass={getattr(poolclass, '__name__', poolclass)!r} would pool tidepool's "
            "connections a second time, keeping them lent while idle; the engine uses "
            "NullPool (leave poolclass out)"
        )


def _engine_url(pool: Any, url: str | URL | None, adapters: dict[str, tuple[str, str]]) -> URL:
    expected = adapters.get(_adapter_key(pool))
    if url is None:
        if expected is None:
            raise ConfigError(
                f"pool {pool.name!r} uses its own manager: pass the SQLAlchemy URL of its "
                "driver, e.g. 'postgresql+psycopg://'"
            )
        return URL.create(f"{expected[0]}+{expected[1]}")
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    extra = [
        name
        for name in ("username", "password", "host", "port", "database")
        if getattr(parsed, name)
    ]
    if parsed.query:
        extra.append("query")
    if extra:
        raise ConfigError(
            f"engine URL {shown!r} sets {', '.join(extra)}, which the engine would ignore: "
            f"connections come from pool {pool.name!r}; give only the dialect and driver, "
            f"e.g. {parsed.drivername + '://'!r}"
        )
    if expected is not None:
        found = (parsed.get_backend_name(), parsed.get_driver_name())
        if found != expected:
            want = f"{expected[0]}+{expected[1]}://"
            if expected == ("sqlite", "pysqlite"):
                want = "sqlite://"
            raise ConfigError(
                f"engine URL {shown!r} selects SQLAlchemy's {found[0]}+{found[1]} dialect, but "
                f"pool {pool.name!r} lends {expected[1]} connections: use {want!r}"
            )
    return parsed
