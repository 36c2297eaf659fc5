"""Litestar integration, served by real uvicorn on loopback (issue 8 point 6a): the plugin's
injections, 503 with Retry-After from a saturated pool, readiness, cancellation of a handler
whose client left, and a clean shutdown. PostgreSQL through asyncpg, each pool with its own
``application_name``; bounds are generous and never measure speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import httpx
import pytest
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.params import FromQuery

import tidepool
from integrations.http_helpers import (
    Pools,
    activity,
    advisory_lock,
    blocked_import,
    client,
    closed,
    pg_pools,
    refused_port,
    serve,
    stats_consistent,
    wait_until,
)
from pg_helpers import admin, app_name, require_pg, session_count, wait_sessions
from tidepool.integrations.litestar import (
    CancelOnDisconnectMiddleware,
    TidepoolPlugin,
    readiness_handler,
)

BOUND = 20.0


@get("/value")
async def value(n: FromQuery[int], db_connection: NamedDependency[Any]) -> dict[str, Any]:
    return {"n": await db_connection.fetchval("SELECT $1::int", n)}


@get("/block")
async def block(key: FromQuery[int], db_connection: NamedDependency[Any]) -> dict[str, Any]:
    # Waits for an advisory lock the test holds: the connection stays lent until then.
    await db_connection.execute("SELECT pg_advisory_xact_lock($1)", key)
    return {"unblocked": key}


@get("/sleep")
async def sleep(seconds: FromQuery[float], db_connection: NamedDependency[Any]) -> dict[str, Any]:
    await db_connection.execute("SELECT pg_sleep($1)", seconds)
    return {"slept": seconds}


@post("/note")
async def note(
    text: FromQuery[str], state: State, db_transaction: NamedDependency[Any]
) -> dict[str, Any]:
    table = state.notes_table  # one table per test: parallel runs share the server
    await db_transaction.execute(f"INSERT INTO {table} (text) VALUES ($1)", text)
    if text == "refused":
        raise HTTPException(status_code=409, detail="refused")  # rolls the insert back
    return {"noted": text}


@get("/stats")
async def stats(db_pool: NamedDependency[tidepool.AsyncPool[Any]]) -> dict[str, Any]:
    return dataclasses.asdict(db_pool.stats())


def litestar_app(pools: Pools, *, notes_table: str = "", **plugin_options: Any) -> Litestar:
    return Litestar(
        [value, block, sleep, note, stats, readiness_handler("/ready")],
        plugins=[TidepoolPlugin(pools, **plugin_options)],
        middleware=[CancelOnDisconnectMiddleware],
        state=State({"notes_table": notes_table}),
        logging_config=None,
    )


async def get_stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/stats")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    stats_consistent(result)
    return result


async def _stat(http: httpx.AsyncClient, field: str, expected: int) -> bool:
    return (await get_stats(http))[field] == expected


# ---------------------------------------------------------------------- no server needed


def test_import_error_names_the_extra() -> None:
    result = blocked_import("litestar", "import tidepool.integrations.litestar")
    assert result.returncode != 0
    assert "pip install 'tidepool[litestar]'" in result.stderr


def test_bad_configuration_is_refused(tmp_path: Any) -> None:
    pool = tidepool.AsyncPool(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(TypeError, match=r"threaded tidepool\.Pool"):
        TidepoolPlugin(tidepool.Pool(f"sqlite:///{tmp_path / 'x.db'}"))
    with pytest.raises(tidepool.ConfigError, match=r"must differ, got \('db', 'db', 'db_tx'\)"):
        TidepoolPlugin(pool, pool_key="db", connection_key="db", transaction_key="db_tx")
    with pytest.raises(tidepool.ConfigError, match=r"connection_key must be a Python identifier"):
        TidepoolPlugin(pool, connection_key="db connection")
    with pytest.raises(tidepool.ConfigError, match=r"acquire_timeout must be >= 0 or None"):
        TidepoolPlugin(pool, acquire_timeout=-1)
    with pytest.raises(TypeError, match=r"retry_after must be an int, got str '5'"):
        TidepoolPlugin(pool, retry_after="5")  # type: ignore[arg-type]
    with pytest.raises(tidepool.ConfigError, match=r"timeout must be > 0"):
        readiness_handler(timeout=-1.0)

    async def taken() -> int:
        return 1

    with pytest.raises(tidepool.ConfigError, match=r"already has dependencies named 'db_pool'"):
        Litestar(
            [stats],
            plugins=[TidepoolPlugin(pool)],
            dependencies={"db_pool": Provide(taken)},
            logging_config=None,
        )


# ---------------------------------------------------------------------- PostgreSQL


def test_injections_and_clean_shutdown() -> None:
    require_pg()
    app = app_name("ls-inject")
    pools = pg_pools(app, min_size=2, max_size=4)
    table = app.replace("-", "_")
    with admin() as conn:
        conn.execute(f"CREATE TABLE {table} (text text)")

    async def scenario(url: str) -> None:
        async with client(url) as http:
            answers = await asyncio.gather(
                *(http.get("/value", params={"n": i}) for i in range(40))
            )
            assert [a.json() for a in answers] == [{"n": i} for i in range(40)]
            assert (await http.post("/note", params={"text": "kept"})).status_code == 201
            assert (await http.post("/note", params={"text": "refused"})).status_code == 409
            ready = await http.get("/ready")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})

            async def settled() -> bool:
                s = await get_stats(http)
                return s["in_use"] == 0 and s["waiting"] == 0 and s["connecting"] == 0

            await wait_until(settled, timeout=BOUND, what="the pool to settle")
            size = (await get_stats(http))["size"]
            assert 2 <= size <= 4
            assert wait_sessions(app, size, timeout=BOUND) == size

    try:
        with serve(litestar_app(pools, notes_table=table)) as served:
            assert wait_sessions(app, 2, timeout=BOUND) == 2  # min_size, opened at startup
            asyncio.run(scenario(served.url))
        assert closed(pools.last)
        assert wait_sessions(app, 0, timeout=BOUND) == 0
        with admin() as conn:
            rows = conn.execute(f"SELECT text FROM {table}").fetchall()
        assert [r[0] for r in rows] == ["kept"]  # "refused" was rolled back
    finally:
        with admin() as conn:
            conn.execute(f"DROP TABLE {table}")


def test_saturated_pool_answers_503_and_a_cancelled_request_comes_back_clean() -> None:
    require_pg()
    app = app_name("ls-sat")
    pools = pg_pools(app, max_size=1)

    async def scenario(url: str) -> None:
        async with client(url) as http:
            with advisory_lock() as key:
                holder = asyncio.create_task(http.get("/block", params={"key": key}))
                await wait_until(lambda: _stat(http, "in_use", 1), timeout=BOUND, what="a hold")
                started = time.monotonic()
                busy = await http.get("/value", params={"n": 1})
                assert time.monotonic() - started < BOUND
                assert busy.status_code == 503, busy.text
                assert busy.headers["retry-after"] == "4"
                assert busy.json() == {
                    "detail": "no database connection became available in time",
                    "code": "pool_timeout",
                }
                not_ready = await http.get("/ready")
                assert not_ready.status_code == 503
                assert not_ready.json()["reason"].startswith("no connection became free")
            assert (await holder).json() == {"unblocked": key}

            # The client leaves mid-query: the middleware cancels the handler, the pool
            # cancels the query and resets the session.
            request = asyncio.create_task(http.get("/sleep", params={"seconds": 60}))

            async def running() -> bool:
                return any(s == "active" and "pg_sleep" in q for s, q in activity(app))

            await wait_until(running, timeout=BOUND, what="the query to run")
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request

            async def clean() -> bool:
                states = [s for s, _ in activity(app)]
                return states == ["idle"] and await _stat(http, "in_use", 0)

            await wait_until(clean, timeout=BOUND, what="the connection to come back clean")
            assert (await http.get("/value", params={"n": 2})).json() == {"n": 2}
            assert session_count(app) == 1

    plugin_options = {"acquire_timeout": 0.5, "retry_after": 4}
    with serve(litestar_app(pools, **plugin_options)) as served:
        asyncio.run(scenario(served.url))
    assert wait_sessions(app, 0, timeout=BOUND) == 0


def test_readiness_when_the_database_is_unreachable() -> None:
    async def scenario(url: str) -> None:
        async with client(url) as http:
            response = await http.get("/ready")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert response.json()["reason"].startswith("could not connect within 1 s (")
            assert "127.0.0.1" not in response.text
            failed = await http.get("/value", params={"n": 1})
            assert (failed.status_code, failed.json()["code"]) == (503, "pool_timeout")

    with refused_port() as port:
        pools = Pools(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test", acquire_timeout=1.0)
        with serve(litestar_app(pools, open_on_startup=False)) as served:
            asyncio.run(scenario(served.url))
    assert closed(pools.last)
