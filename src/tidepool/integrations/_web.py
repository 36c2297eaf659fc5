"""What the web-framework integrations share, free of any framework: where the pool comes from
(a pool, or a function building one at startup), the readiness probe, and the HTTP 503 answer
given when the pool cannot lend a connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .._async.pool import AsyncPool
from .._config import _require_int, validate_timeout
from .._sync.pool import Pool
from ..errors import ConfigError, ConnectError, PoolClosed, PoolError, PoolTimeout, TooManyWaiters

__all__ = [
    "DEFAULT_KEY",
    "POOL_ERRORS",
    "Answer",
    "PoolSource",
    "build_pool",
    "check_key",
    "check_source",
    "error_answer",
    "probe",
    "readiness_answer",
    "validate_retry_after",
    "validate_seconds",
]

DEFAULT_KEY = "db_pool"
"""Where the integrations keep the pool in the application's state by default."""

PoolSource: TypeAlias = "AsyncPool[Any] | Callable[[], AsyncPool[Any]]"
"""A pool, or a function returning a new one (called once per application startup)."""

POOL_ERRORS: tuple[type[PoolError], ...] = (PoolTimeout, TooManyWaiters, PoolClosed, ConnectError)
"""The pool errors answered with HTTP 503: the service cannot reach its database right now."""

_NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer for a framework to render as JSON."""

    status: int
    content: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)


def check_source(source: object, owner: str) -> None:
    """Refuse at construction what cannot give an ``AsyncPool``.

    Raises:
        TypeError: ``source`` is a threaded ``tidepool.Pool``, or neither an ``AsyncPool`` nor
            a callable.
    """
    if isinstance(source, AsyncPool):
        return
    if isinstance(source, Pool):
        raise TypeError(
            f"{owner} needs a tidepool.AsyncPool (the framework runs on asyncio); got the "
            f"threaded tidepool.Pool {source.name!r}"
        )
    if not callable(source):
        raise TypeError(
            f"{owner} takes a tidepool.AsyncPool or a function returning one, got "
            f"{type(source).__name__}"
        )


def build_pool(source: PoolSource, owner: str) -> AsyncPool[Any]:
    """The pool for one application startup: ``source`` itself, or what it returns.

    Raises:
        TypeError: the factory returned something other than an ``AsyncPool``.
    """
    if isinstance(source, AsyncPool):
        return source
    pool = source()
    if not isinstance(pool, AsyncPool):
        raise TypeError(
            f"{owner}: the pool factory returned {type(pool).__name__}, not a tidepool.AsyncPool"
        )
    return pool


def check_key(name: str, value: object) -> str:
    """Validate a state or dependency key.

    Raises:
        TypeError: not a string.
        tidepool.ConfigError: not a Python identifier.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    if not value.isidentifier():
        raise ConfigError(f"{name} must be a Python identifier, got {value!r}")
    return value


def validate_retry_after(value: object) -> int | None:
    """Validate ``retry_after``: whole seconds ``>= 0`` (HTTP's delay-seconds), or ``None``
    for no ``Retry-After`` header.

    Raises:
        TypeError: not an int (a bool or a float is refused too).
        tidepool.ConfigError: negative.
    """
    if value is None:
        return None
    return _require_int("retry_after", value, 0)


def validate_seconds(name: str, value: object) -> float:
    """Validate a duration that must be a finite number of seconds ``> 0``.

    Raises:
        TypeError: not a number.
        tidepool.ConfigError: zero, negative, NaN or infinite.
    """
    seconds = validate_timeout(name, value, allow_none=False, allow_zero=False)
    assert seconds is not None
    return seconds


_ERRORS: dict[type[PoolError], tuple[str, str]] = {
    PoolTimeout: ("pool_timeout", "no database connection became available in time"),
    TooManyWaiters: (
        "pool_overloaded",
        "too many requests are already waiting for a database connection",
    ),
    PoolClosed: ("pool_closed", "the database connection pool is closed"),
    ConnectError: ("database_unavailable", "the database refused the connection"),
}


def error_answer(exc: BaseException, retry_after: int | None) -> Answer:
    """The 503 answer for one of :data:`POOL_ERRORS`: a fixed message per error type (never
    the exception's text) and ``Retry-After`` unless ``retry_after`` is ``None``."""
    code, detail = next(
        (described for cls, described in _ERRORS.items() if isinstance(exc, cls)),
        ("database_unavailable", "the database is unavailable"),
    )
    headers = dict(_NO_STORE)
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return Answer(503, {"detail": detail, "code": code}, headers)


def readiness_answer(reason: str | None) -> Answer:
    """200 ``{"status": "ready"}``, or 503 ``{"status": "unavailable", "reason": reason}``."""
    if reason is None:
        return Answer(200, {"status": "ready"}, dict(_NO_STORE))
    return Answer(503, {"status": "unavailable", "reason": reason}, dict(_NO_STORE))


async def probe(pool: AsyncPool[Any], timeout: float) -> str | None:
    """Borrow one connection and run the adapter's liveness check on it (PostgreSQL and MySQL:
    ``SELECT 1``; Redis: ``PING``; SQLite: a trivial query), all within ``timeout`` seconds.

    Returns ``None`` when the database answered, else a short reason that names the failure's
    kind and the exception type only: never a URL, host, user or driver message. A pool whose
    every connection stays in use for ``timeout`` is reported unavailable too: an instance that
    cannot lend a connection cannot serve. Cancellation propagates.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with pool.acquire(timeout=timeout) as conn:
            async with asyncio.timeout_at(deadline):
                await pool.manager.check(conn)
    except PoolTimeout as exc:
        if exc.phase == "wait":
            return f"no connection became free within {timeout:g} s (every connection is in use)"
        if exc.phase == "check":
            return f"the pool's liveness check did not finish within {timeout:g} s"
        return f"could not connect within {timeout:g} s{_cause(exc)}"
    except TooManyWaiters:
        return "too many callers are already waiting for a connection"
    except PoolClosed:
        return "the pool is closed"
    except ConnectError as exc:
        return f"the database refused the connection{_cause(exc)}"
    except TimeoutError:
        return f"the check query did not answer within {timeout:g} s"
    except Exception as exc:
        return f"the check query failed ({type(exc).__name__})"
    return None


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return f" ({type(cause).__name__})" if cause is not None else ""
