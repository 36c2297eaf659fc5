"""FastAPI (and so Starlette) integration, served by real uvicorn on loopback (issue 8 point 5).

A SQLite scenario needs no server; the rest run against the shared PostgreSQL through asyncpg,
each pool with its own ``application_name`` so that the server-side sessions can be compared
with the pool's size. Bounds are generous: they turn a hang or a leak into a failure and never
measure speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.requests import Request

import tidepool
from integrations.http_helpers import (
    Pools,
    StartupFailed,
    activity,
    advisory_lock,
    blocked_import,
    client,
    closed,
    gather_limited,
    pg_pools,
    refused_port,
    serve,
    stats_consistent,
    wait_until,
)
from pg_helpers import app_name, require_pg, session_count, wait_sessions
from tidepool.integrations.starlette import (
    CancelOnDisconnectMiddleware,
    add_exception_handlers,
    connection_dependency,
    exception_handlers,
    get_connection,
    get_pool,
    pool_dependency,
    pool_lifespan,
    readiness_endpoint,
    transaction_dependency,
)

BOUND = 20.0  # for anything that should be quick: a cancel, a drain, a 503

# The FastAPI way of declaring dependencies once and reusing them.
Connection = Annotated[Any, Depends(get_connection)]
PoolDep = Annotated[tidepool.AsyncPool[Any], Depends(get_pool)]
# Committed before the response is sent (scope="function"), rolled back on an exception.
InTransaction = Annotated[Any, Depends(transaction_dependency(mode="immediate"), scope="function")]
# A second pool, kept at app.state.audit.
AuditConnection = Annotated[Any, Depends(connection_dependency("audit", timeout=5.0))]


# ---------------------------------------------------------------------- the application


def pg_app(
    pools: Pools,
    *,
    retry_after: int | None = 1,
    cancel_on_disconnect: bool = False,
    lifespan: Any = None,
    open_on_startup: bool = True,
) -> FastAPI:
    """A FastAPI application over an asyncpg pool, the way the documentation shows it."""
    app = FastAPI(lifespan=pool_lifespan(pools, lifespan=lifespan, open_on_startup=open_on_startup))
    add_exception_handlers(app, retry_after=retry_after)
    app.add_route("/ready", readiness_endpoint(timeout=1.0), include_in_schema=False)
    if cancel_on_disconnect:
        app.add_middleware(CancelOnDisconnectMiddleware)

    @app.get("/value")
    async def value(n: int, conn: Connection) -> dict[str, Any]:
        got = await conn.fetchval("SELECT $1::int FROM pg_sleep(0.005)", n)
        return {"n": got}

    @app.get("/sleep")
    async def sleep(seconds: float, conn: Connection) -> dict[str, Any]:
        async with conn.transaction():
            await conn.execute("SELECT pg_sleep($1)", seconds)
        return {"slept": seconds}

    @app.get("/block")
    async def block(key: int, conn: Connection) -> dict[str, Any]:
        # Waits for an advisory lock the test holds: the connection stays lent until then.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
        return {"unblocked": key}

    @app.get("/boom")
    async def boom(conn: Connection) -> dict[str, Any]:
        await conn.execute("SELECT 1/0")  # a driver error: not the pool's, so a 500
        return {}

    @app.get("/stats")
    async def stats(pool: PoolDep) -> dict[str, Any]:
        return dataclasses.asdict(pool.stats())

    return app


async def get_stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/stats")
    assert response.status_code == 200, response.text
    stats: dict[str, Any] = response.json()
    stats_consistent(stats)
    return stats


async def settled(http: httpx.AsyncClient) -> dict[str, Any]:
    """Wait until nothing is lent, queued or connecting; return those stats."""
    last: dict[str, Any] = {}

    async def quiet() -> bool:
        nonlocal last
        last = await get_stats(http)
        return last["in_use"] == 0 and last["waiting"] == 0 and last["connecting"] == 0

    await wait_until(quiet, timeout=BOUND, what="the pool to settle")
    return last


# ---------------------------------------------------------------------- no server needed


def test_import_error_names_the_extra() -> None:
    result = blocked_import("starlette", "import tidepool.integrations.starlette")
    assert result.returncode != 0
    assert "pip install 'tidepool[starlette]'" in result.stderr
    assert "pip install 'tidepool[fastapi]'" in result.stderr
    assert blocked_import("starlette", "import tidepool.integrations").returncode == 0


def test_bad_arguments_are_refused_at_construction(tmp_path: Any) -> None:
    threaded = tidepool.Pool(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(TypeError, match=r"needs a tidepool\.AsyncPool .*threaded tidepool\.Pool"):
        pool_lifespan(threaded)
    with pytest.raises(TypeError, match=r"AsyncPool or a function returning one, got str"):
        pool_lifespan("sqlite:///x.db")  # type: ignore[arg-type]
    apool = tidepool.AsyncPool(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(tidepool.ConfigError, match=r"key must be a Python identifier, got 'a-b'"):
        pool_lifespan(apool, key="a-b")
    with pytest.raises(tidepool.ConfigError, match=r"timeout must be >= 0 \(got -1\)"):
        pool_lifespan(apool, close_timeout=-1)
    with pytest.raises(tidepool.ConfigError, match=r"retry_after must be >= 0 \(got -1\)"):
        exception_handlers(retry_after=-1)
    with pytest.raises(TypeError, match=r"retry_after must be an int, got bool True"):
        exception_handlers(retry_after=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"retry_after must be an int, got float 1\.5"):
        exception_handlers(retry_after=1.5)  # type: ignore[arg-type]
    with pytest.raises(tidepool.ConfigError, match=r"timeout must be > 0 \(got 0\)"):
        readiness_endpoint(timeout=0)
    with pytest.raises(tidepool.ConfigError, match=r"timeout must be >= 0 or None \(got -2\)"):
        connection_dependency(timeout=-2)
    with pytest.raises(TypeError, match=r"key must be a str, got int 3"):
        pool_dependency(3)  # type: ignore[arg-type]


def test_missing_pool_is_a_clear_error() -> None:
    request = Request({"type": "http", "app": FastAPI(), "headers": []})
    with pytest.raises(RuntimeError, match=r"app\.state\.db_pool: .*lifespan=pool_lifespan"):
        get_pool(request)
    with pytest.raises(RuntimeError, match=r"app\.state\.replica: .*key='replica'"):
        pool_dependency("replica")(request)


def test_sqlite_application(tmp_path: Any) -> None:
    """Everything on SQLite, no server: two pools and the user's own lifespan composed, the
    connection and transaction dependencies, TooManyWaiters as 503, readiness, request bodies
    through CancelOnDisconnectMiddleware, shutdown."""
    main = Pools(f"sqlite:///{tmp_path / 'app.db'}", max_size=1, max_waiting=1)
    audit = Pools(f"sqlite:///{tmp_path / 'audit.db'}", max_size=2)
    seen_at_shutdown: list[int] = []

    @contextlib.asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Both pools are open here: the user's startup and shutdown may use them.
        await app.state.db_pool.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        await app.state.audit.execute("CREATE TABLE log (what TEXT)")
        app.state.release = asyncio.Event()
        yield
        seen_at_shutdown.append(await app.state.db_pool.fetch_value("SELECT count(*) FROM items"))

    app = FastAPI(
        lifespan=pool_lifespan(
            main, lifespan=pool_lifespan(audit, key="audit", lifespan=own_lifespan)
        ),
        exception_handlers=exception_handlers(retry_after=3),
    )
    app.add_route("/ready", readiness_endpoint(), include_in_schema=False)
    app.add_middleware(CancelOnDisconnectMiddleware)

    @app.post("/items")
    async def add(item: dict[str, str], conn: InTransaction, log: AuditConnection) -> Any:
        name = item["name"]
        await conn.execute("INSERT INTO items (name) VALUES (?)", name)
        await log.execute("INSERT INTO log VALUES (?)", f"add {name}")
        if name == "refused":
            raise HTTPException(409, "refused")  # rolls the insert back
        return {"added": name}

    @app.get("/items")
    async def items(conn: Connection, again: Connection):
        assert conn is again  # one connection per request, however often it is declared
        return [row[0] for row in await conn.fetch_all("SELECT name FROM items ORDER BY id")]

    @app.get("/hold")
    async def hold(request: Request, conn: Connection) -> Any:
        await request.app.state.release.wait()  # holds the only connection until /release
        return {"held": True}

    @app.post("/release")
    async def release(request: Request) -> Any:
        request.app.state.release.set()
        return {}

    @app.get("/stats")
    async def stats(pool: PoolDep) -> Any:
        return dataclasses.asdict(pool.stats())

    async def scenario(url: str) -> None:
        async with client(url) as http:
            assert (await http.post("/items", json={"name": "a"})).json() == {"added": "a"}
            refused = await http.post("/items", json={"name": "refused"})
            assert refused.status_code == 409
            assert (await http.post("/items", json={"name": "b" * 100_000})).status_code == 200
            assert (await http.get("/items")).json() == ["a", "b" * 100_000]
            ready = await http.get("/ready")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
            assert ready.headers["cache-control"] == "no-store"

            holder = asyncio.create_task(http.get("/hold"))
            await wait_until(
                lambda: _stat(http, "in_use", 1), timeout=BOUND, what="/hold to hold it"
            )
            queued = asyncio.create_task(http.get("/items"))  # the one caller allowed to wait
            await wait_until(lambda: _stat(http, "waiting", 1), timeout=BOUND, what="a waiter")
            started = time.monotonic()
            busy = await http.get("/items")
            assert time.monotonic() - started < BOUND
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "3"
            assert busy.json() == {
                "detail": "too many requests are already waiting for a database connection",
                "code": "pool_overloaded",
            }
            assert (await http.post("/release")).status_code == 200
            assert (await holder).json() == {"held": True}
            assert (await queued).json() == ["a", "b" * 100_000]
            stats = await settled(http)
            assert stats["size"] == 1

    with serve(app) as served:
        asyncio.run(scenario(served.url))
    assert seen_at_shutdown == [2]
    assert closed(main.last)
    assert closed(audit.last)
    assert audit.last.stats().size == 0


async def _stat(http: httpx.AsyncClient, field: str, value: int) -> bool:
    return (await get_stats(http))[field] == value


# ---------------------------------------------------------------------- the middleware alone


class FakeServer:
    """The server side of one ASGI HTTP request: messages to receive, messages sent."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in messages:
            self.incoming.put_nowait(message)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def disconnect(self) -> None:
        self.incoming.put_nowait({"type": "http.disconnect"})


HTTP_SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/"}
REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def respond(send: Any, body: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def test_middleware_passes_the_body_through_in_order() -> None:
    chunks = [b"one ", b"two ", b"three"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            if not message["more_body"]:
                break
        await respond(send, body)

    async def main() -> None:
        server = FakeServer(
            *({"type": "http.request", "body": c, "more_body": i < 2} for i, c in enumerate(chunks))
        )
        await CancelOnDisconnectMiddleware(app)(HTTP_SCOPE, server.receive, server.send)
        assert server.sent[-1]["body"] == b"one two three"

    asyncio.run(main())


def test_middleware_cancels_the_handler_when_the_client_leaves() -> None:
    steps: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(60)
        finally:
            steps.append("handler unwound")

    async def request(server: FakeServer) -> None:
        await CancelOnDisconnectMiddleware(app)(HTTP_SCOPE, server.receive, server.send)
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0  # the middleware took back its own cancellation
        steps.append("returned")

    async def main() -> None:
        server = FakeServer(REQUEST)
        task = asyncio.create_task(request(server))
        await asyncio.sleep(0.05)
        server.disconnect()
        await asyncio.wait_for(task, BOUND)
        assert server.sent == []  # nobody to answer

    asyncio.run(main())
    assert steps == ["handler unwound", "returned"]


def test_middleware_leaves_work_after_the_response_alone() -> None:
    steps: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await respond(send)
        await asyncio.sleep(0.3)  # background work after the response
        steps.append("background done")

    async def main() -> None:
        server = FakeServer(REQUEST)
        task = asyncio.create_task(
            CancelOnDisconnectMiddleware(app)(HTTP_SCOPE, server.receive, server.send)
        )
        while len(server.sent) < 2:
            await asyncio.sleep(0.01)
        server.disconnect()  # what a server reports once the response is complete
        await asyncio.wait_for(task, BOUND)

    asyncio.run(main())
    assert steps == ["background done"]


def test_middleware_lets_other_cancellations_through() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(60)

    async def main() -> None:
        server = FakeServer(REQUEST)
        task = asyncio.create_task(
            CancelOnDisconnectMiddleware(app)(HTTP_SCOPE, server.receive, server.send)
        )
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_middleware_balances_a_cancellation_the_app_swallowed() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)

    async def request(server: FakeServer) -> int:
        await CancelOnDisconnectMiddleware(app)(HTTP_SCOPE, server.receive, server.send)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    async def main() -> None:
        server = FakeServer(REQUEST)
        task = asyncio.create_task(request(server))
        await asyncio.sleep(0.05)
        server.disconnect()
        assert await asyncio.wait_for(task, BOUND) == 0

    asyncio.run(main())


def test_middleware_passes_other_scopes_untouched() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((receive, send))

    server = FakeServer()

    async def main() -> None:
        for kind in ("websocket", "lifespan"):
            await CancelOnDisconnectMiddleware(app)({"type": kind}, server.receive, server.send)

    asyncio.run(main())
    assert seen == [(server.receive, server.send)] * 2


# ---------------------------------------------------------------------- PostgreSQL


def test_lifespan_opens_and_closes_the_pool() -> None:
    require_pg()
    app = app_name("fa-life")
    pools = pg_pools(app, min_size=3, max_size=5)

    async def scenario(url: str) -> None:
        async with client(url) as http:
            stats = await settled(http)
            assert stats["size"] >= 3
            assert (await http.get("/value", params={"n": 7})).json() == {"n": 7}
            assert (await http.get("/boom")).status_code == 500
            stats = await settled(http)  # the failed request's connection came back
            assert stats["closed"] == 0  # clean after its error: kept
            assert (await http.get("/value", params={"n": 8})).json() == {"n": 8}

    with serve(pg_app(pools)) as served:
        assert wait_sessions(app, 3, timeout=BOUND) == 3  # min_size, opened at startup
        asyncio.run(scenario(served.url))
    assert len(pools.made) == 1
    assert closed(pools.last)
    assert wait_sessions(app, 0, timeout=BOUND) == 0


def test_concurrent_load_shares_five_connections() -> None:
    require_pg()
    app = app_name("fa-load")
    pools = pg_pools(app, max_size=5, acquire_timeout=60.0)

    async def scenario(url: str) -> None:
        async with client(url, max_connections=50, timeout=60.0) as http:
            responses = await gather_limited(200, 50, lambda i: http.get("/value", params={"n": i}))
            assert [r.status_code for r in responses] == [200] * 200
            assert [r.json()["n"] for r in responses] == list(range(200))
            stats = await settled(http)
            assert stats["in_use"] == 0
            assert stats["waiting"] == 0
            assert 1 <= stats["size"] <= 5
            assert stats["acquired"] >= 200
            assert stats["timeouts"] == 0
            assert wait_sessions(app, stats["size"], timeout=BOUND) == stats["size"]

    with serve(pg_app(pools)) as served:
        asyncio.run(scenario(served.url))
    assert wait_sessions(app, 0, timeout=BOUND) == 0


def test_saturated_pool_answers_503_with_retry_after() -> None:
    require_pg()
    app = app_name("fa-sat")
    pools = pg_pools(app, max_size=1, acquire_timeout=0.5)

    async def scenario(url: str) -> None:
        async with client(url) as http:
            with advisory_lock() as key:
                holder = asyncio.create_task(http.get("/block", params={"key": key}))
                await wait_until(
                    lambda: _stat(http, "in_use", 1), timeout=BOUND, what="/block to hold it"
                )
                started = time.monotonic()
                answers = await asyncio.gather(
                    *(http.get("/value", params={"n": i}) for i in range(5))
                )
                elapsed = time.monotonic() - started
                for answer in answers:
                    assert answer.status_code == 503, answer.text
                    assert answer.headers["retry-after"] == "2"
                    assert answer.headers["content-type"] == "application/json"
                    assert answer.json() == {
                        "detail": "no database connection became available in time",
                        "code": "pool_timeout",
                    }
                assert elapsed < BOUND  # each gave up after acquire_timeout, not a hang
                ready = await http.get("/ready")
                assert ready.status_code == 503
                assert ready.json() == {
                    "status": "unavailable",
                    "reason": "no connection became free within 1 s (every connection is in use)",
                }
            unblocked = await holder
            assert (unblocked.status_code, unblocked.json()) == (200, {"unblocked": key})
            stats = await settled(http)
            assert stats["timeouts"] >= 6
            assert stats["size"] == 1
            assert (await http.get("/value", params={"n": 3})).json() == {"n": 3}

    with serve(pg_app(pools, retry_after=2)) as served:
        asyncio.run(scenario(served.url))
    assert wait_sessions(app, 0, timeout=BOUND) == 0


def test_readiness_follows_the_database() -> None:
    require_pg()
    app = app_name("fa-ready")

    async def ready_up(url: str) -> None:
        async with client(url) as http:
            for _ in range(3):
                response = await http.get("/ready")
                assert (response.status_code, response.json()) == (200, {"status": "ready"})
            assert (await settled(http))["in_use"] == 0

    with serve(pg_app(pg_pools(app, max_size=2))) as served:
        asyncio.run(ready_up(served.url))

    async def ready_down(url: str) -> None:
        async with client(url) as http:
            started = time.monotonic()
            response = await http.get("/ready")
            assert time.monotonic() - started < BOUND
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["reason"].startswith("could not connect within 1 s ("), body
            assert not re.search(r"127\.0\.0\.1|postgres|\d{4,}", response.text), response.text
            # A request that needs the database gets 503 too, not 500.
            failed = await http.get("/value", params={"n": 1})
            assert failed.status_code == 503
            assert failed.json()["code"] == "pool_timeout"

    with refused_port() as port:
        down = Pools(
            f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test",
            name="down",
            acquire_timeout=1.0,
        )
        with serve(pg_app(down, open_on_startup=False)) as served:
            asyncio.run(ready_down(served.url))
        assert closed(down.last)


def test_startup_fails_when_the_database_is_down() -> None:
    with refused_port() as port:
        pools = Pools(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test", acquire_timeout=0.5)
        with pytest.raises(StartupFailed), serve(pg_app(pools)):
            pass
    assert len(pools.made) == 1
    assert closed(pools.last)


@pytest.mark.parametrize("cancel_on_disconnect", [True, False], ids=["cancelled", "runs-out"])
def test_client_gone_mid_query(cancel_on_disconnect: bool) -> None:
    """The client closes its connection while the handler's query runs inside a transaction.
    With CancelOnDisconnectMiddleware the handler is cancelled at once (the query would run
    for 60 s); without it the handler runs out its 2 s. Either way the connection comes back
    clean: no transaction, no query, nothing lent, and the next request works."""
    require_pg()
    app = app_name("fa-gone")
    pools = pg_pools(app, max_size=1, min_size=1)
    seconds = 60 if cancel_on_disconnect else 2

    async def scenario(url: str) -> None:
        async with client(url) as http:
            request = asyncio.create_task(http.get("/sleep", params={"seconds": seconds}))

            async def running() -> bool:
                return any(
                    state == "active" and "pg_sleep" in query for state, query in activity(app)
                )

            await wait_until(running, timeout=BOUND, what="the query to run")
            request.cancel()  # the client gives up: httpx closes the connection
            with contextlib.suppress(asyncio.CancelledError):
                await request

            async def clean() -> bool:
                states = [state for state, _ in activity(app)]
                return states == ["idle"] and (await get_stats(http))["in_use"] == 0

            await wait_until(clean, timeout=BOUND, what="the connection to come back clean")
            assert (await http.get("/value", params={"n": 5})).json() == {"n": 5}
            assert session_count(app) == 1

    started = time.monotonic()
    with serve(pg_app(pools, cancel_on_disconnect=cancel_on_disconnect)) as served:
        asyncio.run(scenario(served.url))
    if cancel_on_disconnect:
        assert time.monotonic() - started < seconds / 2  # the 60 s query was cancelled
    assert wait_sessions(app, 0, timeout=BOUND) == 0


def test_metrics_endpoint() -> None:
    """/metrics: prometheus_client's ASGI app mounted beside the API, reporting the pool."""
    import tidepool.prometheus

    require_pg()
    app = app_name("fa-metrics")
    pools = pg_pools(app, max_size=3)
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def instrumented(fastapi_app: FastAPI) -> AsyncIterator[None]:
        instrumentation = tidepool.prometheus.instrument(
            fastapi_app.state.db_pool, registry=registry
        )
        try:
            yield
        finally:
            instrumentation.close()

    api = pg_app(pools, lifespan=instrumented)
    api.mount("/metrics", make_asgi_app(registry=registry))

    def sample(text: str, series: str) -> float:
        match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
        assert match, f"{series} not in:\n{text}"
        return float(match.group(1))

    async def scenario(url: str) -> None:
        async with client(url) as http:
            for i in range(20):
                assert (await http.get("/value", params={"n": i})).status_code == 200
            stats = await settled(http)
            metrics = await http.get("/metrics/")
            assert metrics.status_code == 200
            text = metrics.text
            label = f'pool="{app}"'
            assert sample(text, f"tidepool_acquires_total{{{label}}}") >= 20
            assert sample(text, f'tidepool_connections{{{label},state="used"}}') == 0
            idle = sample(text, f'tidepool_connections{{{label},state="idle"}}')
            assert idle == stats["size"] - stats["connecting"]
            assert sample(text, f"tidepool_connections_max{{{label}}}") == 3
            assert sample(text, f"tidepool_acquire_timeouts_total{{{label}}}") == 0

    with serve(api) as served:
        asyncio.run(scenario(served.url))
    assert registry.get_sample_value("tidepool_connections_max", {"pool": app}) is None
    assert wait_sessions(app, 0, timeout=BOUND) == 0
