"""Starlette and FastAPI integration: the pool's lifespan, a connection per request, HTTP 503
for a pool that cannot lend, and a readiness probe.

    from typing import Annotated
    import asyncpg, tidepool
    from fastapi import Depends, FastAPI
    from tidepool.integrations.starlette import (
        add_exception_handlers, get_connection, pool_lifespan, readiness_endpoint,
    )

    app = FastAPI(lifespan=pool_lifespan(lambda: tidepool.AsyncPool(DB_URL, max_size=10)))
    add_exception_handlers(app, retry_after=1)           # PoolTimeout & co: 503, not 500
    app.add_route("/ready", readiness_endpoint(), include_in_schema=False)
    Connection = Annotated[asyncpg.Connection, Depends(get_connection)]

    @app.get("/users/{user_id}")
    async def user(user_id: int, conn: Connection):
        return dict(await conn.fetchrow("select * from users where id = $1", user_id))

FastAPI is built on Starlette, so everything here works for both; the dependencies take a
Starlette ``HTTPConnection``, which FastAPI injects. Needs Starlette (``pip install
'tidepool[starlette]'``, or ``'tidepool[fastapi]'``). Works with :class:`tidepool.AsyncPool`
only: Starlette and FastAPI run on asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "tidepool.integrations.starlette needs Starlette: pip install 'tidepool[starlette]' "
        "(or pip install 'tidepool[fastapi]' for FastAPI)"
    ) from exc

from .._async.pool import AsyncPool
from .._config import validate_timeout
from .._pool_base import _DEFAULT
from .._pool_base import close_timeout as validate_close_timeout
from ._disconnect import CancelOnDisconnectMiddleware
from ._web import (
    DEFAULT_KEY,
    POOL_ERRORS,
    Answer,
    PoolSource,
    build_pool,
    check_key,
    check_source,
    error_answer,
    probe,
    readiness_answer,
    validate_retry_after,
    validate_seconds,
)

__all__ = [
    "DEFAULT_KEY",
    "CancelOnDisconnectMiddleware",
    "add_exception_handlers",
    "connection_dependency",
    "exception_handlers",
    "get_connection",
    "get_pool",
    "pool_dependency",
    "pool_lifespan",
    "readiness_endpoint",
    "transaction_dependency",
]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]
ExceptionHandler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]


def pool_lifespan(
    pool: PoolSource,
    /,
    *,
    lifespan: Lifespan | None = None,
    key: str = DEFAULT_KEY,
    close_timeout: float = 5.0,
    open_on_startup: bool = True,
) -> Lifespan:
    """A lifespan that opens the pool when the application starts and closes it when the
    application shuts down; pass it as ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)``.

    ``pool`` is a :class:`tidepool.AsyncPool`, or a function returning a new one, called at
    each startup (use a function when the same application object may start more than once,
    as in tests: a closed pool cannot be reopened). While the application runs, the pool is
    ``app.state.<key>`` (``request.app.state.db_pool`` by default), which is where
    :func:`get_pool`, :func:`get_connection` and :func:`readiness_endpoint` find it.

    ``lifespan`` is your own lifespan, run inside this one: the pool is open (and in
    ``app.state``) when it starts and still open while it shuts down, and whatever state it
    yields is passed on. To nest the other way round, enter this one from yours: ``async with
    pool_lifespan(pool)(app): ...``.

    At startup the pool is opened eagerly (``await pool.open()``: ``min_size`` connections,
    one of them verified), so a database that is down or misconfigured fails the startup
    with :class:`tidepool.PoolTimeout` or :class:`tidepool.ConnectError`. With
    ``open_on_startup=False`` the application starts anyway and the pool opens on its first
    ``acquire()`` (a readiness probe reports 503 until the database answers). At shutdown
    the pool closes gracefully: connections still lent are closed as they come back, and
    after ``close_timeout`` seconds the rest are closed under their borrowers.

    Raises:
        TypeError: ``pool`` is a threaded ``tidepool.Pool`` or not a pool at all, or a bad
            option type.
        tidepool.ConfigError: a bad ``key`` or ``close_timeout``.
    """
    check_source(pool, "pool_lifespan()")
    key = check_key("key", key)
    timeout = validate_close_timeout(close_timeout)
    if lifespan is not None and not callable(lifespan):
        raise TypeError(
            f"lifespan must be a lifespan function (app -> async context manager), got "
            f"{type(lifespan).__name__}"
        )

    @asynccontextmanager
    async def tidepool_lifespan(app: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        current = build_pool(pool, "pool_lifespan()")
        state = app.state
        try:
            if getattr(state, key, None) is not None:
                raise RuntimeError(
                    f"app.state.{key} is already set: give each pool_lifespan() its own key="
                )
            if open_on_startup:
                await current.open()
            setattr(state, key, current)
            try:
                if lifespan is None:
                    yield None
                else:
                    async with lifespan(app) as inner_state:
                        yield inner_state
            finally:
                if getattr(state, key, None) is current:
                    delattr(state, key)
        finally:
            await current.aclose(timeout=timeout)

    return tidepool_lifespan


def _lookup(conn: HTTPConnection, key: str) -> AsyncPool[Any]:
    pool = getattr(conn.app.state, key, None)
    if not isinstance(pool, AsyncPool):
        raise RuntimeError(
            f"no tidepool pool at app.state.{key}: create the application with "
            f"lifespan=pool_lifespan(pool, key={key!r}) (a mounted sub-application has an "
            "app.state of its own)"
        )
    return pool


def pool_dependency(key: str = DEFAULT_KEY) -> Callable[[HTTPConnection], AsyncPool[Any]]:
    """A dependency giving the pool kept at ``app.state.<key>``: ``pool=Depends(
    pool_dependency("replica"))``. :func:`get_pool` is the one for the default key.

    Raises (when called):
        RuntimeError: no pool there (the application was not given :func:`pool_lifespan`
            with that key, or it has not started).
    """
    key = check_key("key", key)

    def get_pool(request: HTTPConnection) -> AsyncPool[Any]:
        return _lookup(request, key)

    get_pool.__doc__ = f"The tidepool pool at app.state.{key}."
    return get_pool


def connection_dependency(
    key: str = DEFAULT_KEY, *, timeout: float | None = _DEFAULT
) -> Callable[[HTTPConnection], AsyncIterator[Any]]:
    """A dependency lending one connection of the pool at ``app.state.<key>`` per request:
    ``conn=Depends(connection_dependency(timeout=2.0))``. :func:`get_connection` is the one
    for the default key and the pool's own ``acquire_timeout``.

    The connection goes back to the pool when the dependency ends, whether the request
    succeeded, raised or was cancelled. When that is depends on FastAPI: by default after the
    response has been sent (so a streaming response can still read from it); with
    ``Depends(..., scope="function")`` (FastAPI 0.121 and later) as soon as the path function
    returns, which frees the connection sooner. Within one request FastAPI caches a
    dependency's value, so every parameter declared with the same dependency gets the same
    connection.

    ``timeout`` overrides the pool's ``acquire_timeout`` for these requests (``0``: do not
    wait; ``None``: wait forever). A web request rarely wants to wait the default 30 s.

    Raises (when entered): :class:`tidepool.PoolTimeout`, :class:`tidepool.TooManyWaiters`,
    :class:`tidepool.PoolClosed`, :class:`tidepool.ConnectError` (turned into HTTP 503 by
    :func:`add_exception_handlers`); ``RuntimeError`` when there is no pool at that key.
    """
    key = check_key("key", key)
    if timeout is not _DEFAULT:
        timeout = validate_timeout("timeout", timeout, allow_none=True, allow_zero=True)

    async def get_connection(request: HTTPConnection) -> AsyncIterator[Any]:
        pool = _lookup(request, key)
        lease = pool.acquire() if timeout is _DEFAULT else pool.acquire(timeout)
        async with lease as conn:
            yield conn

    get_connection.__doc__ = f"A connection of the tidepool pool at app.state.{key}."
    return get_connection


def transaction_dependency(
    key: str = DEFAULT_KEY, **options: Any
) -> Callable[[HTTPConnection], AsyncIterator[Any]]:
    """A dependency lending one connection inside a transaction (``pool.transaction(
    **options)``): committed when the request's handler succeeds, rolled back when it raises
    (``HTTPException`` included) or is cancelled. ``options`` go to the adapter (PostgreSQL:
    ``isolation``, ``readonly``, ``deferrable``; SQLite: ``mode``).

    With FastAPI declare it with ``Depends(transaction_dependency(), scope="function")``
    (FastAPI 0.121 and later) so that the commit happens before the response is sent: with
    the default scope the client receives its 200 before the commit, and a commit that fails
    then goes unreported.

    Raises (when entered): as :func:`connection_dependency`; ``TypeError`` when the pool has
    no SQL executor (a pool over a custom manager).
    """
    key = check_key("key", key)

    async def get_transaction(request: HTTPConnection) -> AsyncIterator[Any]:
        async with _lookup(request, key).transaction(**options) as conn:
            yield conn

    get_transaction.__doc__ = (
        f"A connection of the tidepool pool at app.state.{key}, inside a transaction."
    )
    return get_transaction


get_pool = pool_dependency()
"""The pool at ``app.state.db_pool``: ``pool=Depends(get_pool)`` in FastAPI, or
``get_pool(request)`` in any Starlette endpoint."""

get_connection = connection_dependency()
"""A connection of the pool at ``app.state.db_pool``, lent for the request:
``conn=Depends(get_connection)``. See :func:`connection_dependency`."""


def _render(answer: Answer) -> JSONResponse:
    return JSONResponse(answer.content, status_code=answer.status, headers=answer.headers)


def exception_handlers(*, retry_after: int | None = 1) -> dict[Any, ExceptionHandler]:
    """Exception handlers answering HTTP 503 instead of 500 when the pool cannot lend a
    connection: for ``Starlette(exception_handlers=...)`` / ``FastAPI(exception_handlers=
    ...)``, or see :func:`add_exception_handlers`.

    Handled: :class:`tidepool.PoolTimeout` (code ``pool_timeout``),
    :class:`tidepool.TooManyWaiters` (``pool_overloaded``), :class:`tidepool.PoolClosed`
    (``pool_closed``) and :class:`tidepool.ConnectError` (``database_unavailable``). The
    answer is ``{"detail": ..., "code": ...}`` with a fixed text per error (never the
    exception's message), ``Cache-Control: no-store`` and ``Retry-After: <retry_after>``
    (whole seconds; ``None`` leaves the header out).

    Raises:
        TypeError, tidepool.ConfigError: ``retry_after`` is not an int ``>= 0`` or ``None``.
    """
    seconds = validate_retry_after(retry_after)

    async def pool_unavailable(request: Request, exc: Exception) -> Response:
        return _render(error_answer(exc, seconds))

    return dict.fromkeys(POOL_ERRORS, pool_unavailable)


def add_exception_handlers(app: Starlette, *, retry_after: int | None = 1) -> None:
    """Register :func:`exception_handlers` on ``app`` (a Starlette or FastAPI application).

    Raises:
        TypeError, tidepool.ConfigError: ``retry_after`` is not an int ``>= 0`` or ``None``.
    """
    for exc_class, handler in exception_handlers(retry_after=retry_after).items():
        app.add_exception_handler(exc_class, handler)


def readiness_endpoint(
    key: str = DEFAULT_KEY, *, timeout: float = 1.0
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint answering whether the database can be reached through the pool at
    ``app.state.<key>``: ``app.add_route("/ready", readiness_endpoint(),
    include_in_schema=False)``, or ``Route("/ready", readiness_endpoint())``.

    Each call borrows a connection and runs the adapter's liveness check on it (``SELECT 1``
    for SQL databases, ``PING`` for Redis), all within ``timeout`` seconds (default 1 s,
    Kubernetes' default probe timeout). It answers 200 ``{"status": "ready"}``, or 503
    ``{"status": "unavailable", "reason": ...}`` where the reason says what failed
    (timeout, refused connection, failed query, closed pool) and the exception type, never a
    URL, host, user or driver message. A pool whose every connection stays in use for
    ``timeout`` reports 503 too: that instance cannot serve.

    Raises:
        TypeError, tidepool.ConfigError: a bad ``key`` or ``timeout``.
        RuntimeError (when called): no pool at that key (a 500: a configuration error).
    """
    key = check_key("key", key)
    seconds = validate_seconds("timeout", timeout)

    async def readiness(request: Request) -> Response:
        return _render(readiness_answer(await probe(_lookup(request, key), seconds)))

    return readiness
