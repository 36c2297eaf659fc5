"""Every contender by name: what it is, its mode and driver, and how to build it.

Kinds: ``ref`` (the 20-line pool), ``raw`` (one dedicated connection per worker), ``raw-sem``
(``max_size`` connections behind a semaphore), ``tidepool`` and ``pool`` (a peer's pool).
Building imports only what the contender needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .drivers import DRIVERS, make_driver

# How the drivers appear in contender names.
LABELS = {
    "asyncpg": "asyncpg",
    "psycopg-async": "psycopg-async",
    "psycopg": "psycopg",
    "redis-async": "redis",
    "redis": "redis-sync",
    "aiomysql": "aiomysql",
    "pymysql": "pymysql",
}


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    driver: str
    about: str
    peer: str = ""  # peers.py class name, for kind "pool"
    reset: bool = True
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def mode(self) -> str:
        return DRIVERS[self.driver].mode

    @property
    def service(self) -> str | None:
        return DRIVERS[self.driver].service


def _specs() -> list[Spec]:
    specs = [
        Spec("ref-asyncio-queue", "ref", "null-async", "20-line pool: asyncio.Queue of objects"),
        Spec("ref-thread-lifoqueue", "ref", "null", "20-line pool: queue.LifoQueue of objects"),
    ]
    for driver, label in LABELS.items():
        specs += [
            Spec(f"{label}-raw", "raw", driver, "no pool: one dedicated connection per worker"),
            Spec(f"{label}-raw-sem", "raw-sem", driver, "no pool: max_size connections, semaphore"),
            Spec(f"{label}-ref-queue", "ref", driver, "20-line queue pool of max_size connections"),
            Spec(f"tidepool-{label}", "tidepool", driver, "tidepool, default (safe) reset"),
            Spec(
                f"tidepool-{label}-noreset",
                "tidepool",
                driver,
                "tidepool, reset=False",
                reset=False,
            ),
        ]
    specs += [
        Spec("asyncpg-pool", "pool", "asyncpg", "asyncpg.create_pool, its reset", "AsyncpgPool"),
        Spec(
            "asyncpg-pool-noreset",
            "pool",
            "asyncpg",
            "asyncpg.create_pool(reset=no-op coroutine)",
            "AsyncpgPool",
            reset=False,
        ),
        Spec(
            "psycopg-async-pool",
            "pool",
            "psycopg-async",
            "psycopg_pool.AsyncConnectionPool",
            "PsycopgAsyncPool",
        ),
        Spec("psycopg-pool", "pool", "psycopg", "psycopg_pool.ConnectionPool", "PsycopgPool"),
        Spec(
            "sqla-async-pool",
            "pool",
            "asyncpg",
            "SQLAlchemy AsyncAdaptedQueuePool, AsyncEngine.raw_connection()",
            "SqlaAsyncPool",
        ),
        Spec(
            "sqla-queuepool",
            "pool",
            "psycopg",
            "SQLAlchemy QueuePool (psycopg), Engine.raw_connection()",
            "SqlaQueuePool",
        ),
        Spec(
            "redis-blocking-pool",
            "pool",
            "redis-async",
            "redis.asyncio.BlockingConnectionPool",
            "RedisAsyncPool",
        ),
        Spec(
            "redis-pool",
            "pool",
            "redis-async",
            "redis.asyncio.ConnectionPool (raises past max_connections: C <= 10 only)",
            "RedisAsyncPool",
            options=(("blocking", False),),
        ),
        Spec(
            "redis-sync-blocking-pool",
            "pool",
            "redis",
            "redis.BlockingConnectionPool",
            "RedisSyncPool",
        ),
        Spec("aiomysql-pool", "pool", "aiomysql", "aiomysql.create_pool", "AiomysqlPool"),
    ]
    return specs


SPECS = {spec.name: spec for spec in _specs()}


def build(
    spec: Spec, *, workers: int, max_size: int, min_size: int, pg_port: int | None = None
) -> tuple[Any, Any]:
    """The contender (not opened yet) and its driver."""
    from . import reference

    driver = make_driver(spec.driver, pg_port)
    sync = spec.mode == "sync"
    contender: Any
    cls: Any
    if spec.kind == "raw":
        contender = (reference.SyncRaw if sync else reference.AsyncRaw)(driver, workers)
    elif spec.kind == "raw-sem":
        cls = reference.SyncSemaphore if sync else reference.AsyncSemaphore
        contender = cls(driver, max_size)
    elif spec.kind == "ref":
        contender = (reference.SyncQueue if sync else reference.AsyncQueue)(driver, max_size)
    elif spec.kind == "tidepool":
        from .tidepool_pools import TidepoolAsync, TidepoolSync

        cls = TidepoolSync if sync else TidepoolAsync
        contender = cls(driver, max_size, min_size, spec.reset)
    else:
        from . import peers

        cls = getattr(peers, spec.peer)
        contender = cls(driver, max_size, min_size, spec.reset, **dict(spec.options))
    return contender, driver
