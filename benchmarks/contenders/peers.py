"""The pools Python users pick today, configured as in ``peer_baseline.md``.

All PostgreSQL connections are in autocommit, so no pool adds BEGIN/COMMIT. Pools with a
``min_size`` are opened prewarmed to it; the others (SQLAlchemy, redis-py) are prewarmed by
checking ``min_size`` connections out at once and returning them. The measured call runs on the
driver's own connection object, the same call as on a raw connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any


async def _no_reset(conn: Any) -> None:
    return None


class AsyncpgPool:
    """``asyncpg.create_pool``; ``reset=False`` passes a no-op ``reset`` coroutine."""

    lends_client = False

    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        self.driver, self.max_size, self.min_size, self.reset = driver, max_size, min_size, reset

    async def open(self) -> None:
        import asyncpg

        from .drivers import PG_DB, PG_USER

        host, port = self.driver.endpoint.address
        extra: dict[str, Any] = {} if self.reset else {"reset": _no_reset}
        self.pool = await asyncpg.create_pool(
            host=host,
            port=port,
            user=PG_USER,
            database=PG_DB,
            min_size=self.min_size,
            max_size=self.max_size,
            **extra,
        )

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return self.pool.acquire  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.pool.close()

    def stats(self) -> dict[str, Any]:
        return {"size": self.pool.get_size(), "idle": self.pool.get_idle_size()}


class _PsycopgPool:
    lends_client = False

    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        import psycopg_pool

        cls = (
            psycopg_pool.AsyncConnectionPool
            if driver.mode == "async"
            else psycopg_pool.ConnectionPool
        )
        self.pool: Any = cls(
            driver.endpoint.pg_conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
        )

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return self.pool.connection  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return dict(self.pool.get_stats())


class PsycopgAsyncPool(_PsycopgPool):
    """``psycopg_pool.AsyncConnectionPool``."""

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()


class PsycopgPool(_PsycopgPool):
    """``psycopg_pool.ConnectionPool`` (threads)."""

    def open(self) -> None:
        self.pool.open(wait=True)

    def close(self) -> None:
        self.pool.close()


# ------------------------------------------------------------------ get / put pools


class _AsyncGetPut:
    """A lease over a pool that has only ``get()`` and ``put(conn)`` coroutines."""

    __slots__ = ("conn", "get", "put")

    def __init__(
        self, get: Callable[[], Awaitable[Any]], put: Callable[[Any], Awaitable[Any]]
    ) -> None:
        self.get, self.put = get, put

    async def __aenter__(self) -> Any:
        self.conn = await self.get()
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        await self.put(self.conn)


class _SyncGetPut:
    __slots__ = ("conn", "get", "put")

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], Any]) -> None:
        self.get, self.put = get, put

    def __enter__(self) -> Any:
        self.conn = self.get()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.put(self.conn)


class _AsyncGetPutPool:
    """Prewarm, lease and stats for the asyncio pools with get/put (set ``get``/``put``)."""

    lends_client = False
    get: Callable[[], Awaitable[Any]]
    put: Callable[[Any], Awaitable[Any]]

    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        self.driver, self.max_size, self.min_size = driver, max_size, min_size

    async def prewarm(self) -> None:
        held = [await self.get() for _ in range(self.min_size)]
        for conn in held:
            await self.put(conn)

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_AsyncGetPut, self.get, self.put)


class _SyncGetPutPool:
    lends_client = False
    get: Callable[[], Any]
    put: Callable[[Any], Any]

    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        self.driver, self.max_size, self.min_size = driver, max_size, min_size

    def prewarm(self) -> None:
        held = [self.get() for _ in range(self.min_size)]
        for conn in held:
            self.put(conn)

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_SyncGetPut, self.get, self.put)


class _SqlaMixin:
    """``raw_connection()`` checkout; the query runs on ``driver_connection``."""

    engine: Any

    def stats(self) -> dict[str, Any]:
        pool = self.engine.pool
        return {"size": pool.size(), "checkedout": pool.checkedout(), "overflow": pool.overflow()}


def _engine_kwargs(max_size: int) -> dict[str, Any]:
    return {"pool_size": max_size, "max_overflow": 0, "isolation_level": "AUTOCOMMIT"}


class SqlaAsyncPool(_SqlaMixin, _AsyncGetPutPool):
    """SQLAlchemy ``AsyncAdaptedQueuePool`` through ``AsyncEngine.raw_connection()``."""

    async def open(self) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.util import greenlet_spawn

        url = self.driver.endpoint.url("postgresql+asyncpg")
        self.engine = create_async_engine(url, **_engine_kwargs(self.max_size))

        async def get() -> Any:
            return await self.engine.raw_connection()

        async def put(raw: Any) -> None:
            await greenlet_spawn(raw.close)

        self.get, self.put = get, put
        await self.prewarm()

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_SqlaAsyncLease, self.get, self.put)

    async def close(self) -> None:
        await self.engine.dispose()


class _SqlaAsyncLease(_AsyncGetPut):
    __slots__ = ()

    async def __aenter__(self) -> Any:
        self.conn = await self.get()
        return self.conn.driver_connection


class SqlaQueuePool(_SqlaMixin, _SyncGetPutPool):
    """SQLAlchemy ``QueuePool`` through ``Engine.raw_connection()`` (psycopg, threads)."""

    def open(self) -> None:
        from sqlalchemy import create_engine

        url = self.driver.endpoint.url("postgresql+psycopg")
        self.engine = create_engine(url, **_engine_kwargs(self.max_size))
        self.get = self.engine.raw_connection
        self.put = _close_raw
        self.prewarm()

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_SqlaSyncLease, self.get, self.put)

    def close(self) -> None:
        self.engine.dispose()


def _close_raw(raw: Any) -> None:
    raw.close()


class _SqlaSyncLease(_SyncGetPut):
    __slots__ = ()

    def __enter__(self) -> Any:
        self.conn = self.get()
        return self.conn.driver_connection


class _RedisMixin:
    pool: Any

    def stats(self) -> dict[str, Any]:
        # Private attributes, read once after the run: the sync BlockingConnectionPool keeps
        # every connection in _connections, the others split them into available / in use.
        pool = self.pool
        made = getattr(pool, "_connections", None)
        if made is None:
            made = [*pool._available_connections, *pool._in_use_connections]
        return {"size": len(made), "max_connections": pool.max_connections}


class RedisAsyncPool(_RedisMixin, _AsyncGetPutPool):
    """``redis.asyncio.BlockingConnectionPool`` (``blocking=True``) or ``ConnectionPool``,
    which raises past ``max_connections`` instead of waiting."""

    def __init__(
        self, driver: Any, max_size: int, min_size: int, reset: bool, blocking: bool = True
    ) -> None:
        import redis.asyncio

        super().__init__(driver, max_size, min_size, reset)
        host, port = driver.endpoint.address
        if blocking:
            self.pool = redis.asyncio.BlockingConnectionPool(
                host=host, port=port, max_connections=max_size, timeout=20
            )
        else:
            self.pool = redis.asyncio.ConnectionPool(host=host, port=port, max_connections=max_size)
        self.get, self.put = self.pool.get_connection, self.pool.release

    async def open(self) -> None:
        await self.prewarm()

    async def close(self) -> None:
        await self.pool.aclose()


class RedisSyncPool(_RedisMixin, _SyncGetPutPool):
    """``redis.BlockingConnectionPool`` (threads)."""

    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        import redis

        super().__init__(driver, max_size, min_size, reset)
        host, port = driver.endpoint.address
        self.pool = redis.BlockingConnectionPool(
            host=host, port=port, max_connections=max_size, timeout=20
        )
        self.get, self.put = self.pool.get_connection, self.pool.release

    def open(self) -> None:
        self.prewarm()

    def close(self) -> None:
        self.pool.disconnect()


class AiomysqlPool:
    """``aiomysql.create_pool`` (autocommit)."""

    lends_client = False

    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        self.driver, self.max_size, self.min_size = driver, max_size, min_size

    async def open(self) -> None:
        import aiomysql

        from .drivers import MYSQL_DB, MYSQL_USER

        host, port = self.driver.endpoint.address
        self.pool = await aiomysql.create_pool(
            host=host,
            port=port,
            user=MYSQL_USER,
            db=MYSQL_DB,
            minsize=self.min_size,
            maxsize=self.max_size,
            autocommit=True,
        )

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return self.pool.acquire  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    def stats(self) -> dict[str, Any]:
        return {"size": self.pool.size, "free": self.pool.freesize}
