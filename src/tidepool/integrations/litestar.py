"""Litestar integration: a plugin that opens and closes the pool with the application, injects
the pool and a connection per request, and answers HTTP 503 when the pool cannot lend; plus a
readiness probe.

    import asyncpg, tidepool
    from litestar import Litestar, get
    from litestar.di import NamedDependency
    from tidepool.integrations.litestar import TidepoolPlugin, readiness_handler

    @get("/users/{user_id:int}")
    async def user(
        user_id: int, db_connection: NamedDependency[asyncpg.Connection]
    ) -> dict[str, Any]:
        return dict(await db_connection.fetchrow("select * from users where id = $1", user_id))

    app = Litestar(
        [user, readiness_handler("/ready")],
        plugins=[TidepoolPlugin(lambda: tidepool.AsyncPool(DB_URL, max_size=10))],
    )

Needs Litestar (``pip install 'tidepool[litestar]'``). Works with :class:`tidepool.AsyncPool`
only: Litestar runs on asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

try:
    from litestar import Litestar, Request, Response, get
    from litestar.config.app import AppConfig
    from litestar.datastructures import State
    from litestar.di import Provide
    from litestar.handlers import HTTPRouteHandler
    from litestar.plugins import InitPluginProtocol
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "tidepool.integrations.litestar needs Litestar: pip install 'tidepool[litestar]'"
    ) from exc

from .._async.pool import AsyncPool
from .._config import validate_timeout
from .._pool_base import _DEFAULT
from .._pool_base import close_timeout as validate_close_timeout
from ..errors import ConfigError
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

__all__ = ["DEFAULT_KEY", "CancelOnDisconnectMiddleware", "TidepoolPlugin", "readiness_handler"]


def _lookup(state: State, key: str) -> AsyncPool[Any]:
    pool = state.get(key)
    if not isinstance(pool, AsyncPool):
        raise RuntimeError(
            f"no tidepool pool at app.state.{key}: add TidepoolPlugin(pool, pool_key={key!r}) "
            "to the application's plugins"
        )
    return pool


def _render(answer: Answer) -> Response[dict[str, str]]:
    return Response(answer.content, status_code=answer.status, headers=answer.headers)


class TidepoolPlugin(InitPluginProtocol):
    """Run a :class:`tidepool.AsyncPool` with a Litestar application:
    ``Litestar(..., plugins=[TidepoolPlugin(pool)])``.

    ``pool`` is an ``AsyncPool``, or a function returning a new one, called at each startup
    (use a function when the same application may start more than once, as in tests: a closed
    pool cannot be reopened).

    What it adds to the application:

    - A lifespan, entered before the application's own: the pool opens eagerly at startup
      (``min_size`` connections, one verified; a database that is down fails the startup
      with :class:`tidepool.PoolTimeout` or :class:`tidepool.ConnectError`) unless
      ``open_on_startup=False``, in which case it opens on its first ``acquire()``. It is
      ``app.state.<pool_key>`` while the application runs, and closes gracefully at shutdown
      (lent connections close as they come back; after ``close_timeout`` seconds the rest
      are closed under their borrowers).
    - Dependencies: ``<pool_key>`` (default ``db_pool``) injects the pool;
      ``<connection_key>`` (default ``db_connection``) lends one connection for the request,
      given back when the handler is done, whether it returned, raised or was cancelled
      (Litestar runs that cleanup before the response is sent);
      ``<transaction_key>`` (default ``db_transaction``) lends one inside a transaction,
      committed when the handler returns and rolled back when it raises.
      ``acquire_timeout`` overrides the pool's own for these requests (``0``: do not wait;
      ``None``: wait forever); a web request rarely wants to wait the default 30 s.
    - Exception handlers (unless the application has its own for these errors, or
      ``handle_pool_errors=False``): :class:`tidepool.PoolTimeout`,
      :class:`tidepool.TooManyWaiters`, :class:`tidepool.PoolClosed` and
      :class:`tidepool.ConnectError` become HTTP 503 with
      ``{"detail": ..., "code": ...}`` (a fixed text per error, never the exception's
      message), ``Cache-Control: no-store`` and ``Retry-After: <retry_after>`` (whole
      seconds; ``None`` leaves the header out), instead of a 500.

    Raises:
        TypeError: ``pool`` is a threaded ``tidepool.Pool`` or not a pool, or a bad option
            type.
        tidepool.ConfigError: a bad key, timeout or ``retry_after``; at ``on_app_init``, a
            dependency key the application already uses.
    """

    __slots__ = (
        "_close_timeout",
        "_connection_key",
        "_handlers",
        "_open_on_startup",
        "_pool_key",
        "_source",
        "_timeout",
        "_transaction_key",
    )

    def __init__(
        self,
        pool: PoolSource,
        /,
        *,
        pool_key: str = DEFAULT_KEY,
        connection_key: str = "db_connection",
        transaction_key: str = "db_transaction",
        acquire_timeout: float | None = _DEFAULT,
        close_timeout: float = 5.0,
        open_on_startup: bool = True,
        retry_after: int | None = 1,
        handle_pool_errors: bool = True,
    ) -> None:
        check_source(pool, "TidepoolPlugin")
        self._source = pool
        self._pool_key = check_key("pool_key", pool_key)
        self._connection_key = check_key("connection_key", connection_key)
        self._transaction_key = check_key("transaction_key", transaction_key)
        keys = (self._pool_key, self._connection_key, self._transaction_key)
        if len(set(keys)) != len(keys):
            raise ConfigError(
                f"pool_key, connection_key and transaction_key must differ, got {keys!r}"
            )
        self._timeout: float | None = (
            _DEFAULT
            if acquire_timeout is _DEFAULT
            else validate_timeout(
                "acquire_timeout", acquire_timeout, allow_none=True, allow_zero=True
            )
        )
        self._close_timeout = validate_close_timeout(close_timeout)
        self._open_on_startup = open_on_startup
        handlers = _exception_handlers(validate_retry_after(retry_after))
        self._handlers = handlers if handle_pool_errors else {}

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the lifespan, the dependencies and the exception handlers to ``app_config``.

        Raises:
            tidepool.ConfigError: the application already has a dependency under one of the
                plugin's keys.
        """
        providers = {
            self._pool_key: Provide(self._provide_pool),
            self._connection_key: Provide(self._provide_connection),
            self._transaction_key: Provide(self._provide_transaction),
        }
        taken = sorted(set(providers) & set(app_config.dependencies))
        if taken:
            raise ConfigError(
                f"TidepoolPlugin: the application already has dependencies named "
                f"{', '.join(map(repr, taken))}; give the plugin other keys (pool_key=, "
                "connection_key=, transaction_key=)"
            )
        app_config.dependencies.update(providers)
        app_config.lifespan.insert(0, self._lifespan)
        for exc_class, handler in self._handlers.items():
            app_config.exception_handlers.setdefault(exc_class, handler)
        app_config.signature_namespace.setdefault("AsyncPool", AsyncPool)
        return app_config

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        pool = build_pool(self._source, "TidepoolPlugin")
        key = self._pool_key
        try:
            if app.state.get(key) is not None:
                raise RuntimeError(
                    f"app.state.{key} is already set: give each TidepoolPlugin its own pool_key="
                )
            if self._open_on_startup:
                await pool.open()
            app.state[key] = pool
            try:
                yield
            finally:
                if app.state.get(key) is pool:
                    del app.state[key]
        finally:
            await pool.aclose(timeout=self._close_timeout)

    async def _provide_pool(self, state: State) -> AsyncPool[Any]:
        return _lookup(state, self._pool_key)

    async def _provide_connection(self, state: State) -> AsyncGenerator[Any, None]:
        pool = _lookup(state, self._pool_key)
        lease = pool.acquire() if self._timeout is _DEFAULT else pool.acquire(self._timeout)
        async with lease as conn:
            yield conn

    async def _provide_transaction(self, state: State) -> AsyncGenerator[Any, None]:
        async with _lookup(state, self._pool_key).transaction() as conn:
            yield conn


def _exception_handlers(
    retry_after: int | None,
) -> dict[type[Exception], Callable[[Request[Any, Any, Any], Exception], Response[Any]]]:
    def pool_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        return _render(error_answer(exc, retry_after))

    return dict.fromkeys(POOL_ERRORS, pool_unavailable)


def readiness_handler(
    path: str = "/ready", *, pool_key: str = DEFAULT_KEY, timeout: float = 1.0
) -> HTTPRouteHandler:
    """A ``GET`` route answering whether the database can be reached through the pool of the
    :class:`TidepoolPlugin` with that ``pool_key``: ``Litestar([..., readiness_handler()])``.

    Each call borrows a connection and runs the adapter's liveness check on it (``SELECT 1``
    for SQL databases, ``PING`` for Redis), all within ``timeout`` seconds (default 1 s,
    Kubernetes' default probe timeout). It answers 200 ``{"status": "ready"}``, or 503
    ``{"status": "unavailable", "reason": ...}`` where the reason says what failed (timeout,
    refused connection, failed query, closed pool) and the exception type, never a URL, host,
    user or driver message. A pool whose every connection stays in use for ``timeout``
    reports 503 too: that instance cannot serve. Left out of the OpenAPI schema.

    Raises:
        TypeError, tidepool.ConfigError: a bad ``pool_key`` or ``timeout``.
    """
    key = check_key("pool_key", pool_key)
    seconds = validate_seconds("timeout", timeout)

    async def readiness(state: State) -> Response[dict[str, str]]:
        return _render(readiness_answer(await probe(_lookup(state, key), seconds)))

    handler: HTTPRouteHandler = get(path, include_in_schema=False, cache=False)(readiness)
    return handler
