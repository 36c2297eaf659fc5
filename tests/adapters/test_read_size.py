"""The asyncio adapters read at most ``READ_SIZE`` bytes per ``recv()`` on their connections,
so that glibc serves each read's buffer from the heap whatever the process freed before
(issue 5: a process whose malloc had not raised its mmap threshold paid ``mmap``, ``mremap``
and ``munmap`` for every small reply). Tested on the real servers: the setting, a large reply
that now takes several reads, and the page faults themselves in a process whose allocator is
held in the unsettled state."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import textwrap
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


# Run in a child process: mallopt() fixes malloc's mmap and trim thresholds at glibc's
# defaults for good (the unsettled state of a process that never freed a large block), which
# must not leak into the test run. The child counts minor page faults per small round trip
# on one pooled connection, first as the adapter set it up, then with asyncio's default
# read size.
_CHILD = textwrap.dedent(
    """
    import asyncio, ctypes, json, resource, sys
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    import tidepool

    driver, url = sys.argv[1], sys.argv[2]

    async def round_trip(conn):
        if driver == "asyncpg":
            await conn.fetchval("SELECT 1")
        elif driver == "redis":
            await conn.ping()
        else:
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.fetchone()

    async def faults(conn, n=400):
        for _ in range(50):
            await round_trip(conn)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            await round_trip(conn)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    async def main():
        async with tidepool.AsyncPool(url, max_size=1) as pool:
            async with pool.acquire() as conn:
                limited = await faults(conn)
                transport = (
                    conn._transport if driver == "asyncpg"
                    else conn.connection._writer.transport if driver == "redis"
                    else conn._writer.transport
                )
                transport.max_size = 256 * 1024  # asyncio's default
                default = await faults(conn)
        print(json.dumps({"limited": limited, "default": default}))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the mmap threshold is glibc malloc's",
)
# (aiomysql reads through the same transport, set the same way above; in its child process
# the heap happens to hold a free block large enough for asyncio's default buffer, so the
# default read costs no fault there and the comparison would show nothing.)
@pytest.mark.parametrize("driver", ["asyncpg", "redis"])
def test_small_replies_cost_no_page_faults_in_an_unsettled_process(driver: str) -> None:
    url = url_for(driver)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, driver, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    faults = json.loads(child.stdout)
    # asyncio's 256 KiB read is mmap()ed, touched and unmapped on every reply: a fault or more
    # each. The adapter's reads come from the heap.
    assert faults["default"] >= 0.9, faults
    assert faults["limited"] <= 0.2, faults
