"""Adapters: a manager (plus executor glue) per database, chosen by the URL's scheme."""

from __future__ import annotations

from typing import Any, Literal

from .._config import Options
from .._url import redact_url
from ..errors import ConfigError

__all__ = ["resolve"]

_SUPPORTED = (
    "sqlite:// (built in), postgresql:// and postgres:// (tidepool[postgres]), "
    "mysql:// and mariadb:// (tidepool[mysql]), redis://, rediss:// and unix:// (tidepool[redis])"
)


def resolve(url: str, flavor: Literal["async", "sync"], options: Options) -> tuple[Any, str]:
    """Build the manager for ``url``; return it with the pool's default name.

    Raises:
        ConfigError: unknown scheme, or a URL the adapter rejects (redacted in the message).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    base = scheme.partition("+")[0]
    if base == "sqlite":
        from . import sqlite

        target = sqlite.SQLiteTarget.from_url(url)
        manager: Any
        if flavor == "async":
            manager = sqlite.AsyncSQLiteManager(target, **_mapping(options))
        else:
            manager = sqlite.SQLiteManager(target, **_mapping(options))
        return manager, target.display
    if base in ("postgresql", "postgres"):
        return _postgres(url, flavor, options)
    if base in ("mysql", "mariadb"):
        return _extra("mysql", url, flavor, options)
    if base in ("redis", "rediss", "unix"):
        return _extra("redis", url, flavor, options)
    raise ConfigError(
        f"unsupported database URL scheme {scheme or '(none)'!r} in {redact_url(url)!r}; "
        f"supported: {_SUPPORTED}"
    )


def _mapping(options: Options) -> dict[str, Any]:
    kwargs = options.connect_kwargs
    if callable(kwargs):
        raise ConfigError("SQLite takes connect_kwargs as a mapping, not a callable")
    return dict(kwargs)


def _postgres(url: str, flavor: Literal["async", "sync"], options: Options) -> tuple[Any, str]:
    from ._pg import PGTarget

    target = PGTarget.from_url(url)
    driver = target.driver or ("asyncpg" if flavor == "async" else "psycopg")
    if driver == "asyncpg" and flavor == "sync":
        raise ConfigError(
            f"asyncpg is async-only: use AsyncPool for {target.display!r}, or "
            "postgresql+psycopg:// with Pool"
        )
    kwargs: dict[str, Any] = {
        "connect_timeout": options.connect_timeout,
        "connect_kwargs": options.connect_kwargs,
    }
    try:
        if driver == "asyncpg":
            from .pg_asyncpg import AsyncpgManager

            return AsyncpgManager(target, **kwargs), target.display
        from .pg_psycopg import AsyncPsycopgManager, PsycopgManager

        manager_class = AsyncPsycopgManager if flavor == "async" else PsycopgManager
        return manager_class(target, **kwargs), target.display
    except ImportError as exc:
        raise ConfigError(
            f"the PostgreSQL driver {driver} is not installed: pip install 'tidepool[postgres]'"
        ) from exc


def _extra(
    name: Literal["mysql", "redis"], url: str, flavor: Literal["async", "sync"], options: Options
) -> tuple[Any, str]:
    """Build through ``tidepool.adapters.<name>.build(url, flavor, options)``; a missing
    driver is a ``ConfigError`` naming the extra to install."""
    import importlib

    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise ConfigError(
            f"the {name} adapter needs its driver: pip install 'tidepool[{name}]' ({exc})"
        ) from None
    built: tuple[Any, str] = module.build(url, flavor, options)
    return built
