"""The drivers, each with one way to connect, close and run the measured call.

Every contender on a driver (raw connections, the reference pool, tidepool, the driver's own
pool) runs the very same call from here, so the differences measured are the pools'.
The ``null`` drivers hand out plain objects: with them the reference pools cost only their
own bookkeeping. Drivers are imported when a driver object is made, so a child process only
imports what its contender needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
SERVICES = {"pg": 5432, "mysql": 3306, "redis": 6379}
PG_USER, PG_DB = "postgres", "test"
MYSQL_USER, MYSQL_DB = "root", "test"
REDIS_DB = 0


@dataclass(frozen=True)
class Endpoint:
    """Where a driver connects; ``port=None`` is the service's default port."""

    service: str | None
    port: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.service is not None
        return HOST, self.port or SERVICES[self.service]

    def url(self, scheme: str) -> str:
        """The URL tidepool (and SQLAlchemy) take, e.g. ``postgresql+psycopg``."""
        host, port = self.address
        if self.service == "pg":
            return f"{scheme}://{PG_USER}@{host}:{port}/{PG_DB}"
        if self.service == "mysql":
            return f"{scheme}://{MYSQL_USER}@{host}:{port}/{MYSQL_DB}"
        return f"{scheme}://{host}:{port}/{REDIS_DB}"

    @property
    def pg_conninfo(self) -> str:
        host, port = self.address
        return f"host={host} port={port} user={PG_USER} dbname={PG_DB}"


AsyncOp = Callable[[Any], Awaitable[None]]
SyncOp = Callable[[Any], None]


class AsyncDriver:
    """Base of the asyncio drivers: ``connect``, ``close`` and ``op(sql)``."""

    name = ""
    mode = "async"
    service: str | None = None

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def connect(self) -> Any:
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        raise NotImplementedError

    def op(self, sql: str, *, client: bool = False) -> AsyncOp:
        """The measured call on a lent connection (``client``: tidepool's Redis client)."""
        raise NotImplementedError

    async def connect_many(self, n: int) -> list[Any]:
        return list(await asyncio.gather(*(self.connect() for _ in range(n))))

    async def close_many(self, conns: list[Any]) -> None:
        await asyncio.gather(*(self.close(c) for c in conns), return_exceptions=True)


class SyncDriver:
    """Base of the threaded drivers, the same without ``async``."""

    name = ""
    mode = "sync"
    service: str | None = None

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def connect(self) -> Any:
        raise NotImplementedError

    def close(self, conn: Any) -> None:
        raise NotImplementedError

    def op(self, sql: str, *, client: bool = False) -> SyncOp:
        raise NotImplementedError

    def connect_many(self, n: int) -> list[Any]:
        return [self.connect() for _ in range(n)]

    def close_many(self, conns: list[Any]) -> None:
        for conn in conns:
            try:
                self.close(conn)
            except Exception:
                pass


class _Token:
    """What the null drivers hand out."""


class AsyncNull(AsyncDriver):
    name = "null-async"

    async def connect(self) -> Any:
        return _Token()

    async def close(self, conn: Any) -> None:
        return None


class SyncNull(SyncDriver):
    name = "null"

    def connect(self) -> Any:
        return _Token()

    def close(self, conn: Any) -> None:
        return None


class Asyncpg(AsyncDriver):
    name = "asyncpg"
    service = "pg"

    async def connect(self) -> Any:
        import asyncpg

        host, port = self.endpoint.address
        return await asyncpg.connect(host=host, port=port, user=PG_USER, database=PG_DB)

    async def close(self, conn: Any) -> None:
        await conn.close()

    def op(self, sql: str, *, client: bool = False) -> AsyncOp:
        async def run(conn: Any) -> None:
            await conn.fetchval(sql)

        return run


class PsycopgAsync(AsyncDriver):
    name = "psycopg-async"
    service = "pg"

    async def connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(self.endpoint.pg_conninfo, autocommit=True)

    async def close(self, conn: Any) -> None:
        await conn.close()

    def op(self, sql: str, *, client: bool = False) -> AsyncOp:
        async def run(conn: Any) -> None:
            cur = await conn.execute(sql)
            await cur.fetchone()

        return run


class Psycopg(SyncDriver):
    name = "psycopg"
    service = "pg"

    def connect(self) -> Any:
        import psycopg

        return psycopg.Connection.connect(self.endpoint.pg_conninfo, autocommit=True)

    def close(self, conn: Any) -> None:
        conn.close()

    def op(self, sql: str, *, client: bool = False) -> SyncOp:
        def run(conn: Any) -> None:
            conn.execute(sql).fetchone()

        return run


class RedisAsync(AsyncDriver):
    """``PING`` as one command on one ``redis.asyncio.Connection`` (``sql`` is not used)."""

    name = "redis-async"
    service = "redis"

    async def connect(self) -> Any:
        import redis.asyncio

        host, port = self.endpoint.address
        conn = redis.asyncio.Connection(host=host, port=port, db=REDIS_DB)
        await conn.connect()
        return conn

    async def close(self, conn: Any) -> None:
        await conn.disconnect()

    def op(self, sql: str, *, client: bool = False) -> AsyncOp:
        if client:

            async def on_client(r: Any) -> None:
                conn = r.connection
                await conn.send_command("PING")
                await conn.read_response()

            return on_client

        async def run(conn: Any) -> None:
            await conn.send_command("PING")
            await conn.read_response()

        return run


class Redis(SyncDriver):
    name = "redis"
    service = "redis"

    def connect(self) -> Any:
        import redis

        host, port = self.endpoint.address
        conn = redis.Connection(host=host, port=port, db=REDIS_DB)
        conn.connect()
        return conn

    def close(self, conn: Any) -> None:
        conn.disconnect()

    def op(self, sql: str, *, client: bool = False) -> SyncOp:
        if client:

            def on_client(r: Any) -> None:
                conn = r.connection
                conn.send_command("PING")
                conn.read_response()

            return on_client

        def run(conn: Any) -> None:
            conn.send_command("PING")
            conn.read_response()

        return run


class Aiomysql(AsyncDriver):
    name = "aiomysql"
    service = "mysql"

    async def connect(self) -> Any:
        import aiomysql

        host, port = self.endpoint.address
        return await aiomysql.connect(
            host=host, port=port, user=MYSQL_USER, db=MYSQL_DB, autocommit=True
        )

    async def close(self, conn: Any) -> None:
        conn.close()

    def op(self, sql: str, *, client: bool = False) -> AsyncOp:
        async def run(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute(sql)
                await cur.fetchone()

        return run


class Pymysql(SyncDriver):
    name = "pymysql"
    service = "mysql"

    def connect(self) -> Any:
        import pymysql

        host, port = self.endpoint.address
        return pymysql.connect(
            host=host, port=port, user=MYSQL_USER, database=MYSQL_DB, autocommit=True
        )

    def close(self, conn: Any) -> None:
        conn.close()

    def op(self, sql: str, *, client: bool = False) -> SyncOp:
        def run(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.fetchone()

        return run


DRIVERS: dict[str, type[AsyncDriver] | type[SyncDriver]] = {
    cls.name: cls
    for cls in (
        AsyncNull,
        SyncNull,
        Asyncpg,
        PsycopgAsync,
        Psycopg,
        RedisAsync,
        Redis,
        Aiomysql,
        Pymysql,
    )
}


def make_driver(name: str, pg_port: int | None = None) -> Any:
    """The driver ``name``; ``pg_port`` redirects PostgreSQL (the spike's delaying proxy)."""
    cls = DRIVERS[name]
    port = pg_port if cls.service == "pg" else None
    return cls(Endpoint(cls.service, port))
