"""The asyncio adapters read at most ``READ_SIZE`` bytes per ``recv()`` on their connections,
so that glibc serves each read's buffer from the heap whatever the process freed before
(issue 5: a process whose malloc had not raised its mmap threshold paid ``mmap``, ``mremap``
and ``munmap`` for every small reply). Tested on the real servers: the setting, and a large
reply that now takes several reads. What it saves is measured, not tested (whether a given
process starts in the slow state depends on its heap's layout):
``benchmarks/probes/contention.py --asyncpg URL --unsettled`` prints page faults per
operation."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

import tidepool
from mysql_helpers import MY_PASSWORD, MY_USER, mysql_url, require_mysql
from pg_helpers import app_name, pg_url, require_pg
from redis_helpers import redis_url, require_redis
from tidepool.adapters._transport import READ_SIZE, limit_reads

DRIVERS = ("asyncpg", "redis", "aiomysql")
BIG = 3 * 1024 * 1024  # a reply of many reads


def url_for(driver: str) -> str:
    if driver == "asyncpg":
        require_pg()
        return pg_url(app_name(), driver="asyncpg")
    if driver == "redis":
        require_redis()
        return redis_url(15)
    require_mysql()
    return mysql_url(MY_USER, MY_PASSWORD or None)


def transport_of(driver: str, conn: Any) -> Any:
    """The asyncio transport under a connection the pool lent."""
    if driver == "asyncpg":
        return conn._transport
    if driver == "redis":
        return conn.connection._writer.transport
    return conn._writer.transport


async def big_reply(driver: str, conn: Any) -> bytes:
    """A ``BIG``-byte reply from the server, through the driver's own calls."""
    if driver == "asyncpg":
        text: str = await conn.fetchval("SELECT repeat('x', $1)", BIG)
        return text.encode()
    if driver == "redis":
        key = f"tidepool-read-size-{app_name()}"
        await conn.set(key, b"x" * BIG, ex=60)
        try:
            value: bytes = await conn.get(key)
            return value
        finally:
            await conn.delete(key)
    async with conn.cursor() as cur:
        await cur.execute("SELECT REPEAT('x', %s)", (BIG,))
        (text,) = await cur.fetchone()
        return str(text).encode()


class _Transport:
    max_size = 256 * 1024


class _Frozen:
    @property
    def max_size(self) -> int:
        return 256 * 1024


def test_limit_reads_lowers_only_a_larger_read_size() -> None:
    big, small = _Transport(), _Transport()
    small.max_size = 4096
    limit_reads(big)
    limit_reads(small)
    assert (big.max_size, small.max_size) == (READ_SIZE, 4096)
    # The buffer of one read (the bytes object, malloc's header, rounding) stays under glibc's
    # starting mmap threshold, 128 KiB.
    assert READ_SIZE + sys.getsizeof(b"") + 16 < 128 * 1024
    # A transport with no read size (TLS, uvloop), a read-only one, or none at all: untouched.
    limit_reads(object())
    limit_reads(_Frozen())
    limit_reads(None)


@pytest.mark.parametrize("driver", DRIVERS)
def test_pooled_connections_read_at_most_read_size(driver: str) -> None:
    url = url_for(driver)

    async def main() -> None:
        async with tidepool.AsyncPool(url, max_size=1) as pool, pool.acquire() as conn:
            assert transport_of(driver, conn).max_size == READ_SIZE
            assert await big_reply(driver, conn) == b"x" * BIG

    asyncio.run(main())
