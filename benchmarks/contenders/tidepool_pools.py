"""tidepool's ``AsyncPool`` and ``Pool`` on each driver, prewarmed to ``min_size``."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

# The URL scheme that makes tidepool pick each driver.
SCHEMES = {
    "asyncpg": "postgresql+asyncpg",
    "psycopg-async": "postgresql+psycopg",
    "psycopg": "postgresql+psycopg",
    "redis-async": "redis",
    "redis": "redis",
    "aiomysql": "mysql",
    "pymysql": "mysql",
}
FILL_TIMEOUT = 30.0


def _filled(stats: Any) -> bool:
    return bool(stats.idle >= stats.min_size and stats.connecting == 0)


class _Tidepool:
    def __init__(self, driver: Any, max_size: int, min_size: int, reset: bool) -> None:
        import tidepool

        url = driver.endpoint.url(SCHEMES[driver.name])
        cls: Any = tidepool.AsyncPool if driver.mode == "async" else tidepool.Pool
        # Default options otherwise: in ``scale`` every acquire waits about a second, and the
        # default slow_acquire logs that (one rate-limited record every 10 s), as a user's
        # pool would.
        self.pool: Any = cls(url, max_size=max_size, min_size=min_size, reset=reset)
        # tidepool lends a redis-py client bound to one connection; the measured call runs on
        # that connection, as it does for the other contenders.
        self.lends_client = driver.service == "redis"

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return self.pool.acquire  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return dataclasses.asdict(self.pool.stats())


class TidepoolAsync(_Tidepool):
    async def open(self) -> None:
        await self.pool.open()
        deadline = time.monotonic() + FILL_TIMEOUT
        # The pool fills to min_size in the background and has no event for "filled".
        while not _filled(self.pool.stats()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        await self.pool.aclose()


class TidepoolSync(_Tidepool):
    def open(self) -> None:
        self.pool.open()
        deadline = time.monotonic() + FILL_TIMEOUT
        while not _filled(self.pool.stats()) and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self.pool.close()
