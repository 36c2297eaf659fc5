"""Adapters: a manager (plus executor glue) per database, chosen by the URL's scheme."""

from __future__ import annotations

from typing import Any, Literal

from .._config import Options
from .._url import redact_url
from ..errors import ConfigError

__all__ = ["resolve"]

_SUPPORTED = "sqlite:// (built in)"


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
            manager = sqlite.AsyncSQLiteManager(target, **options.connect_kwargs)
        else:
            manager = sqlite.SQLiteManager(target, **options.connect_kwargs)
        return manager, target.display
    raise ConfigError(
        f"unsupported database URL scheme {scheme or '(none)'!r} in {redact_url(url)!r}; "
        f"supported: {_SUPPORTED}"
    )
