"""SQLAlchemy Core and ORM on tidepool connections (issue 8, point 6b).

Real SQLAlchemy engines over real pools: ``Pool`` + psycopg and ``AsyncPool`` + asyncpg /
psycopg against the shared PostgreSQL (each pool with its own ``application_name``, so that
the server-side sessions can be compared with the pool's size), and ``Pool`` + sqlite3 on a
file. Every test ends with the pool's books checked: ``size == idle + in_use + connecting``,
nothing lent once the engines are disposed, and for PostgreSQL as many server sessions as the
pool counts. Async SQLite through SQLAlchemy needs aiosqlite, which tidepool does not use: not
tested (the bridge refuses an ``AsyncPool`` on SQLite).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg import pq
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, insert, select, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool, QueuePool

import tidepool
from fakes import FakeManager, new_spool, until
from pg_helpers import admin, app_name, pg_url, require_pg, session_count, wait_sessions
from tidepool.integrations.sqlalchemy import (
    async_creator,
    create_async_engine,
    create_engine,
    creator,
)

PATIENCE = 20.0  # only turns a hang into a failure; never a speed assertion
ASYNC_DRIVERS = ("asyncpg", "psycopg")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def make_model(table: str) -> tuple[type[DeclarativeBase], type[Any]]:
    """A fresh declarative base with one mapped class on ``table``."""

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    return Base, Item


def items_table(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(50)),
    )


def check_books(pool: Any) -> None:
    """Nothing lent or in flight, and the counts add up."""
    s = pool.stats()
    assert s.size <= s.max_size, s
    assert s.idle + s.in_use + s.connecting == s.size, s
    assert s.in_use == 0, s
    assert s.waiting == 0, s


def settle_sync(pool: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while (s := pool.stats()).in_use or s.connecting:
        assert time.monotonic() < deadline, s
        time.sleep(0.01)
    check_books(pool)


async def settle(pool: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while (s := pool.stats()).in_use or s.connecting:
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.01)
    check_books(pool)


def check_sessions(app: str, pool: Any) -> None:
    """The server shows as many sessions for the pool as the pool counts (closes of retired
    connections may still be on their way)."""
    size = pool.stats().size
    assert wait_sessions(app, size, PATIENCE) == size, (session_count(app), pool.stats())


@pytest.fixture
def tables() -> Iterator[list[str]]:
    """PostgreSQL tables a test creates, dropped afterwards."""
    names: list[str] = []
    yield names
    if names:
        with admin() as conn:
            for name in names:
                conn.execute(f"DROP TABLE IF EXISTS {name}")


@contextmanager
def pg_pool(max_size: int = 2, **options: Any) -> Iterator[tuple[tidepool.Pool[Any], str]]:
    require_pg()
    app = app_name("tp-sa")
    options.setdefault("acquire_timeout", PATIENCE)
    with tidepool.Pool(pg_url(app), max_size=max_size, **options) as pool:
        yield pool, app
        settle_sync(pool)
        check_sessions(app, pool)


@asynccontextmanager
async def pg_apool(
    driver: str, max_size: int = 2, acquire_timeout: float = PATIENCE
) -> AsyncIterator[tuple[Any, str]]:
    require_pg()
    app = app_name("tp-sa")
    url = pg_url(app, driver=driver)
    async with tidepool.AsyncPool(url, max_size=max_size, acquire_timeout=acquire_timeout) as pool:
        yield pool, app
        await settle(pool)
        await asyncio.to_thread(check_sessions, app, pool)


@contextmanager
def sqlite_pool(tmp_path: Any, max_size: int = 2) -> Iterator[tidepool.Pool[Any]]:
    with tidepool.Pool(f"sqlite:///{tmp_path / 'db.sqlite'}", max_size=max_size) as pool:
        yield pool
        settle_sync(pool)


def row_count(table: str) -> int:
    with admin() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


def wait_for(pred: Any, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


# ---------------------------------------------------------------------- PostgreSQL, Pool


def test_pg_core(tables: list[str]) -> None:
    name = unique("tp_sa_core")
    tables.append(name)
    table = items_table(name)
    with pg_pool() as (pool, _app):
        engine = sa_create_engine(
            "postgresql+psycopg://", creator=creator(pool), poolclass=NullPool
        )
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": i, "name": f"n{i}"} for i in range(5)])
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 5
            got = conn.execute(text(f"SELECT name FROM {name} WHERE id = :id"), {"id": 3})
            assert got.scalar_one() == "n3"
        engine.dispose()
        assert pool.stats().connects == 1


def test_pg_orm_commit_and_rollback(tables: list[str]) -> None:
    name = unique("tp_sa_orm")
    tables.append(name)
    base, item = make_model(name)
    with pg_pool() as (pool, _app):
        engine = create_engine(pool)
        base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all([item(id=1, name="kept"), item(id=2, name="kept too")])
            session.commit()
            session.add(item(id=3, name="dropped"))
            session.flush()
            session.rollback()
            session.add(item(id=1, name="duplicate"))
            with pytest.raises(IntegrityError):
                session.commit()
            session.rollback()
        with Session(engine) as session:
            names = session.scalars(select(item.name).order_by(item.id)).all()
            assert names == ["kept", "kept too"]
        engine.dispose()
        assert row_count(name) == 2


def test_pg_connections_are_reused() -> None:
    with pg_pool(max_size=2) as (pool, app):
        engine = create_engine(pool)
        pids: set[int] = set()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(15):
                    with engine.connect() as conn:
                        pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PATIENCE)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        engine.dispose()
        s = pool.stats()
        assert s.acquired >= 60, s
        assert s.connects <= 2, s
        assert len(pids) <= 2, pids
        assert session_count(app) == s.size


def test_pg_failed_and_rolled_back_transactions_leave_nothing(tables: list[str]) -> None:
    name = unique("tp_sa_tx")
    tables.append(name)
    table = items_table(name)
    with pg_pool(max_size=1) as (pool, _app):
        engine = create_engine(pool)
        table.metadata.create_all(engine)
        pids: list[int] = []

        def failing_statement() -> None:
            with engine.begin() as conn:
                pids.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                conn.execute(insert(table), {"id": 1, "name": "x"})
                conn.execute(text("SELECT 1 / 0"))

        def failing_block() -> None:
            with Session(engine) as session, session.begin():
                session.execute(insert(table), {"id": 3, "name": "z"})
                raise RuntimeError("boom")

        with pytest.raises(DBAPIError, match="division by zero"):
            failing_statement()
        with engine.connect() as conn:  # never committed: rolled back at close
            conn.execute(insert(table), {"id": 2, "name": "y"})
        with pytest.raises(RuntimeError, match="boom"):
            failing_block()
        assert row_count(name) == 0
        # The very same backend, reused: an error inside a transaction is no reason to retire
        # a connection.
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pids[0]
        engine.dispose()
        assert pool.stats().connects == 1


def test_pg_connection_goes_back_as_the_pool_lent_it() -> None:
    with pg_pool(max_size=1) as (pool, _app):
        with pool.acquire() as raw:
            handlers = len(raw._notice_handlers)
            lent_as = (raw.autocommit, raw.isolation_level, raw.read_only, raw.deferrable)
        assert lent_as == (True, None, None, None)
        engine = create_engine(pool, isolation_level="REPEATABLE READ")
        with engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is False
            assert conn.get_isolation_level() == "REPEATABLE READ"
            conn.execute(text("SET work_mem = '77MB'"))
            conn.commit()
        with engine.connect().execution_options(
            isolation_level="SERIALIZABLE", postgresql_readonly=True, postgresql_deferrable=True
        ) as conn:
            assert conn.execute(text("SHOW transaction_isolation")).scalar_one() == "serializable"
            assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "on"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            assert conn.connection.driver_connection.autocommit is True
        engine.dispose()
        with pool.acquire() as raw:
            assert (raw.autocommit, raw.isolation_level, raw.read_only, raw.deferrable) == lent_as
            assert len(raw._notice_handlers) == handlers
            assert raw.info.transaction_status == pq.TransactionStatus.IDLE
            assert raw.execute("SHOW work_mem").fetchone() != ("77MB",)


def test_pg_disconnect_retires_the_connection() -> None:
    with pg_pool(max_size=1) as (pool, app):
        engine = create_engine(pool)
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            conn.commit()
            with admin() as a:
                a.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert wait_sessions(app, 0, PATIENCE) == 0
            with pytest.raises(DBAPIError) as info:
                conn.execute(text("SELECT 1"))
            assert info.value.connection_invalidated
        wait_for(lambda: pool.stats().closed == 1, "the broken connection is retired")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        engine.dispose()
        s = pool.stats()
        assert s.connects == 2, s


class CloseReasons(tidepool.PoolListener):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def on_close(self, pool: str, connection_id: int, reason: str) -> None:
        self.reasons.append(reason)


@pytest.mark.parametrize("soft", [False, True])
def test_pg_invalidated_connection_is_not_lent_again(soft: bool) -> None:
    closes = CloseReasons()
    with pg_pool(max_size=1, listeners=[closes]) as (pool, app):
        engine = create_engine(pool)
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            conn.connection.invalidate(soft=soft)
        wait_for(lambda: closes.reasons == ["discarded"], "the invalidated connection is retired")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        engine.dispose()
        assert pool.stats().connects == 2
        check_sessions(app, pool)


def test_pg_raw_connection_and_use_after_close() -> None:
    with pg_pool(max_size=1) as (pool, _app):
        engine = create_engine(pool)
        fairy = engine.raw_connection()
        bridged = fairy.driver_connection
        assert isinstance(bridged, psycopg.Connection)  # psycopg's own type checks pass
        assert "tidepool SQLAlchemy bridge" in repr(bridged)
        with bridged.cursor() as cur:
            cur.execute("SELECT 41 + 1")
            assert cur.fetchone() == (42,)
        fairy.close()
        assert pool.stats().in_use == 0
        assert bridged.closed
        assert not bridged.broken
        assert "returned" in repr(bridged)
        with pytest.raises(psycopg.OperationalError, match="closed"):
            bridged.cursor()
        with pytest.raises(psycopg.OperationalError, match="closed"):
            bridged.autocommit = True
        bridged.close()  # a second close does nothing
        engine.dispose()


def test_pool_timeout_passes_through_the_engine() -> None:
    with pg_pool(max_size=1, acquire_timeout=0.2) as (pool, _app):
        engine = create_engine(pool)
        with engine.connect(), pytest.raises(tidepool.PoolTimeout):
            engine.connect()
        engine.dispose()
        assert pool.stats().timeouts == 1

    async def main() -> None:
        async with pg_apool("asyncpg", max_size=1, acquire_timeout=0.2) as (apool, _app):
            aengine = create_async_engine(apool)
            async with aengine.connect():
                with pytest.raises(tidepool.PoolTimeout):
                    await aengine.connect().start()
            await aengine.dispose()
            assert apool.stats().timeouts == 1

    asyncio.run(main())


def test_pg_closed_pool_fails_the_engine() -> None:
    require_pg()
    pool: tidepool.Pool[Any] = tidepool.Pool(pg_url(app_name("tp-sa")), max_size=1)
    engine = create_engine(pool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    pool.close()
    with pytest.raises(tidepool.PoolClosed):
        engine.connect()
    check_books(pool)


# ---------------------------------------------------------------------- PostgreSQL, AsyncPool


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_core_and_orm(driver: str, tables: list[str]) -> None:
    name = unique("tp_sa_async")
    tables.append(name)
    base, item = make_model(name)

    async def main() -> None:
        async with pg_apool(driver) as (pool, app):
            engine = sa_create_async_engine(
                f"postgresql+{driver}://", async_creator=async_creator(pool), poolclass=NullPool
            )
            async with engine.begin() as conn:
                await conn.run_sync(base.metadata.create_all)
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            async with sessions() as session:
                session.add_all([item(id=1, name="kept"), item(id=2, name="kept too")])
                await session.commit()
                session.add(item(id=3, name="dropped"))
                await session.flush()
                await session.rollback()
                session.add(item(id=1, name="duplicate"))
                with pytest.raises(IntegrityError):
                    await session.commit()
                await session.rollback()
            for _ in range(20):
                async with AsyncSession(engine) as session:
                    names = (await session.scalars(select(item.name).order_by(item.id))).all()
                    assert names == ["kept", "kept too"]
            async with engine.connect() as conn:
                got = await conn.execute(text("SELECT CAST(:x AS integer) + 1"), {"x": 41})
                assert got.scalar_one() == 42
            await engine.dispose()
            s = pool.stats()
            assert s.acquired >= 24, s
            assert s.connects == 1, s
            assert await asyncio.to_thread(session_count, app) == 1

    asyncio.run(main())
    assert row_count(name) == 2


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_connection_goes_back_as_the_pool_lent_it(driver: str) -> None:
    doc = '{"a": 1}'

    async def main() -> None:
        async with pg_apool(driver, max_size=1) as (pool, _app):
            engine = create_async_engine(pool)
            if driver == "asyncpg":
                # A codec of your own, set the way SQLAlchemy's documentation shows.
                @event.listens_for(engine.sync_engine, "connect")
                def tagged_ints(dbapi_connection: Any, record: Any) -> None:
                    dbapi_connection.run_async(
                        lambda raw: raw.set_type_codec(
                            "int4",
                            schema="pg_catalog",
                            encoder=str,
                            decoder=lambda value: f"int:{value}",
                            format="text",
                        )
                    )

            async with engine.connect() as conn:
                got = await conn.execute(text(f"SELECT '{doc}'::json, '{doc}'::jsonb"))
                assert got.one() == ({"a": 1}, {"a": 1})  # SQLAlchemy's JSON decoding
                if driver == "asyncpg":
                    assert (await conn.execute(text("SELECT 7"))).scalar_one() == "int:7"
                await conn.execute(text("SET work_mem = '77MB'"))
                await conn.commit()
            await engine.dispose()
            async with pool.acquire() as raw:
                if driver == "asyncpg":
                    # The codecs were reset: asyncpg's default for json is text.
                    assert await raw.fetchval(f"SELECT '{doc}'::json") == doc
                    assert await raw.fetchval("SELECT 7") == 7
                    assert await raw.fetchval("SHOW work_mem") != "77MB"
                else:
                    assert raw.autocommit is True
                    assert raw.info.transaction_status == pq.TransactionStatus.IDLE
                    cur = await raw.execute("SHOW work_mem")
                    assert await cur.fetchone() != ("77MB",)

    asyncio.run(main())


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_disconnect_and_invalidation_retire_the_connection(driver: str) -> None:
    async def pid_of(conn: Any) -> int:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    async def main() -> None:
        async with pg_apool(driver, max_size=1) as (pool, app):
            engine = create_async_engine(pool)
            async with engine.connect() as conn:
                pid = await pid_of(conn)
                await conn.commit()
                with admin() as a:
                    a.execute("SELECT pg_terminate_backend(%s)", (pid,))
                assert await asyncio.to_thread(wait_sessions, app, 0, PATIENCE) == 0
                with pytest.raises(DBAPIError) as info:
                    await conn.execute(text("SELECT 1"))
                assert info.value.connection_invalidated
            async with engine.connect() as conn:
                second = await pid_of(conn)
                await conn.invalidate()
            async with engine.connect() as conn:
                third = await pid_of(conn)
            assert len({pid, second, third}) == 3
            await engine.dispose()
            await settle(pool)
            assert pool.stats().connects == 3

    asyncio.run(main())


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_cancelled_query_gives_the_connection_back(driver: str) -> None:
    async def main() -> None:
        async with pg_apool(driver, max_size=1) as (pool, _app):
            engine = create_async_engine(pool)
            started = asyncio.Event()

            async def slow() -> None:
                async with engine.connect() as conn:
                    started.set()
                    await conn.execute(text("SELECT pg_sleep(30)"))

            task = asyncio.create_task(slow())
            await asyncio.wait_for(started.wait(), PATIENCE)
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            await engine.dispose()

    asyncio.run(main())


def test_asyncpg_terminate_returns_the_connection() -> None:
    async def main() -> None:
        async with pg_apool("asyncpg", max_size=1) as (pool, _app):
            bridged = await async_creator(pool)()
            assert pool.stats().in_use == 1
            bridged.terminate()
            assert bridged.is_closed()
            bridged.terminate()  # twice: nothing more
            await settle(pool)
            await until(lambda: pool.stats().closed == 1)
            assert await pool.fetch_value("SELECT 1") == 1

    asyncio.run(main())


def test_asyncpg_terminate_retires_only_that_connection() -> None:
    # An abort of the bridge's own is not a disconnect: the idle connection stays in service.
    async def main() -> None:
        async with pg_apool("asyncpg", max_size=2) as (pool, _app):
            async with pool.acquire() as first, pool.acquire() as second:
                pids = {first.get_server_pid(), second.get_server_pid()}
            bridged = await async_creator(pool)()
            bridged.terminate()
            await settle(pool)
            await until(lambda: pool.stats().closed == 1)
            assert (pool.stats().idle, pool.stats().connects) == (1, 2)
            async with pool.acquire(timeout=0) as conn:
                assert conn.get_server_pid() in pids

    asyncio.run(main())


# ---------------------------------------------------------------------- SQLite


def test_sqlite_core_and_orm(tmp_path: Any) -> None:
    base, item = make_model("items")
    with sqlite_pool(tmp_path) as pool:
        engine = sa_create_engine("sqlite://", creator=creator(pool), poolclass=NullPool)
        base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all([item(id=1, name="kept"), item(id=2, name="kept too")])
            session.commit()
            session.add(item(id=3, name="dropped"))
            session.flush()
            session.rollback()  # really rolled back: the bridge turned the driver's BEGIN on
            session.add(item(id=1, name="duplicate"))
            with pytest.raises(IntegrityError):
                session.commit()
            session.rollback()
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO items (id, name) VALUES (9, 'uncommitted')"))
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, name FROM items ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, "kept"), (2, "kept too")]
            assert conn.execute(text("SELECT 'tidepool' REGEXP 'de.o'")).scalar_one() == 1
        engine.dispose()
        with pool.acquire() as raw:
            assert raw.isolation_level is None
            assert raw.row_factory is sqlite3.Row
            assert not raw.in_transaction
        assert pool.stats().connects == 1


def test_sqlite_threads_share_the_pool(tmp_path: Any) -> None:
    table = items_table("items")
    with sqlite_pool(tmp_path, max_size=2) as pool:
        engine = create_engine(pool)
        table.metadata.create_all(engine)
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(10):
                    with engine.begin() as conn:
                        conn.execute(insert(table), {"id": n * 100 + i, "name": "w"})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PATIENCE)
        assert not errors, errors
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 30
        engine.dispose()
        assert pool.stats().connects <= 2


def test_sqlite_invalidated_connection_is_closed(tmp_path: Any) -> None:
    with sqlite_pool(tmp_path, max_size=1) as pool:
        engine = create_engine(pool)
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            conn.invalidate()
        wait_for(lambda: pool.stats().closed == 1, "the invalidated connection is retired")
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            raw.execute("SELECT 1")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        engine.dispose()


# ---------------------------------------------------------------------- misuse


def test_pool_kind_is_checked(tmp_path: Any) -> None:
    apool: tidepool.AsyncPool[Any] = tidepool.AsyncPool(f"sqlite:///{tmp_path / 'a.db'}")
    spool: tidepool.Pool[Any] = tidepool.Pool(f"sqlite:///{tmp_path / 's.db'}")
    mysql: tidepool.Pool[Any] = tidepool.Pool("mysql://root@127.0.0.1:3306/test")
    with pytest.raises(TypeError, match=r"creator\(\) needs a tidepool.Pool.*async_creator"):
        creator(apool)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"async_creator\(\) needs a tidepool.AsyncPool"):
        async_creator(spool)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got str"):
        creator("sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aiosqlite"):
        async_creator(apool)
    with pytest.raises(TypeError, match=r"MySQLManager.*supports"):
        creator(mysql)
    spool.close()
    mysql.close()


def test_wrong_dialect_for_the_driver_names_the_right_url(tmp_path: Any) -> None:
    with sqlite_pool(tmp_path) as pool:
        engine = sa_create_engine(
            "postgresql+psycopg://", creator=creator(pool), poolclass=NullPool
        )
        with pytest.raises(AttributeError, match=r"sqlite3 connection .* 'sqlite://' URL"):
            engine.connect()
        engine.dispose()
        # The connection went back and is fine.
        assert pool.fetch_value("SELECT 1") == 1


def test_custom_manager_connections_are_checked_when_lent() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1)
    engine = sa_create_engine("sqlite://", creator=creator(pool), poolclass=NullPool)
    with pytest.raises(TypeError, match=r"lends fakes\.FakeConnection connections"):
        engine.connect()
    engine.dispose()
    check_books(pool)
    with pytest.raises(tidepool.ConfigError, match="own manager"):
        create_engine(pool)


def test_engine_helpers_check_their_arguments(tmp_path: Any) -> None:
    with sqlite_pool(tmp_path) as pool:
        assert create_engine(pool).dialect.driver == "pysqlite"
        assert create_engine(pool, "sqlite://").dialect.driver == "pysqlite"
        with pytest.raises(tidepool.ConfigError, match=r"lends pysqlite .* 'sqlite://'"):
            create_engine(pool, "postgresql+psycopg://")
        with pytest.raises(tidepool.ConfigError, match="sets database"):
            create_engine(pool, "sqlite:///other.db")
        with pytest.raises(tidepool.ConfigError, match="QueuePool"):
            create_engine(pool, poolclass=QueuePool)
        with pytest.raises(TypeError, match="creator= cannot be passed"):
            create_engine(pool, creator=lambda: None)
        engine = create_engine(pool, poolclass=NullPool, echo=False)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        engine.dispose()


def test_engine_url_errors_hide_the_password() -> None:
    require_pg()
    with pg_pool() as (pool, _app):
        with pytest.raises(tidepool.ConfigError) as info:
            create_engine(pool, "postgresql+psycopg://app:s3cret@db/app")
        assert "s3cret" not in str(info.value)
        assert "***" in str(info.value)
        with pytest.raises(tidepool.ConfigError, match=r"asyncpg dialect.*psycopg connections"):
            create_engine(pool, "postgresql+asyncpg://")

    async def main() -> None:
        async with pg_apool("asyncpg") as (apool, _app):
            engine = create_async_engine(apool)
            assert engine.dialect.driver == "asyncpg"
            await engine.dispose()
            with pytest.raises(tidepool.ConfigError, match="'postgresql\\+asyncpg://'"):
                create_async_engine(apool, "postgresql+psycopg://")

    asyncio.run(main())


def test_async_creator_needs_sqlalchemy_2_0_16(monkeypatch: pytest.MonkeyPatch) -> None:
    apool: tidepool.AsyncPool[Any] = tidepool.AsyncPool("postgresql://app@db.invalid/app")
    monkeypatch.setattr(sqlalchemy, "__version__", "2.0.15")
    with pytest.raises(RuntimeError, match=r"2\.0\.16 or later; 2\.0\.15 is installed"):
        async_creator(apool)


def test_import_error_names_the_extra() -> None:
    script = (
        "import sys\nsys.modules['sqlalchemy'] = None\nimport tidepool.integrations.sqlalchemy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "pip install 'tidepool[sqlalchemy]'" in result.stderr


def test_asyncpg_explicit_invalidate_retires_only_that_connection() -> None:
    require_pg()

    async def main() -> None:
        async with pg_apool("asyncpg", max_size=3) as (pool, _app):
            held = [await pool.acquire() for _ in range(3)]
            for conn in held:
                await pool.release(conn)
            engine = create_async_engine(pool)
            try:
                async with engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
                    await conn.invalidate()
            finally:
                await engine.dispose()
            await settle(pool)
            deadline = time.monotonic() + PATIENCE
            while pool.stats().closed < 1:  # the pool closes it in the background
                assert time.monotonic() < deadline, pool.stats()
                await asyncio.sleep(0.01)
            stats = pool.stats()
            assert stats.closed == 1  # a healthy connection given up on says nothing of others
            assert stats.size == 2
            assert stats.idle == 2

    asyncio.run(main())
