"""The built-in SQLite adapter, through ``AsyncPool`` and ``Pool``, on real database files and
on the shared in-memory database (design.md section 4)."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tidepool
from tidepool.adapters.sqlite import AsyncSQLiteConnection, SQLiteConnection

# Counting to a billion takes minutes: only an interrupt ends it in a test's lifetime.
ENDLESS_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT {start} UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 1000000000) SELECT count(*) FROM c"
)
# Generous bounds for a loaded 2-core machine: they only turn a hang into a failure.
PATIENCE = 30.0
MEMORY_URL = "sqlite://:memory:"


def file_url(path: Path, query: str = "") -> str:
    """The absolute form ``sqlite:////abs/path.db`` (str(path) starts with '/')."""
    text = str(path)
    assert text.startswith("/")
    return "sqlite:///" + text + (f"?{query}" if query else "")


@pytest.fixture(params=["file", "memory"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return file_url(tmp_path / "app.db")
    return MEMORY_URL


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def async_wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- executor methods


def test_executor_methods_async(any_url: str) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(any_url, max_size=3) as pool:
            assert await pool.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)") in (
                -1,
                0,
            )
            assert await pool.execute("INSERT INTO item (name) VALUES (?)", "apple") == 1
            assert (
                await pool.executemany(
                    "INSERT INTO item (name) VALUES (?)", [("pear",), ("plum",), ("fig",)]
                )
                == 3
            )
            assert await pool.execute("UPDATE item SET name = upper(name) WHERE id > ?", 1) == 3

            rows = await pool.fetch_all("SELECT id, name FROM item ORDER BY id")
            assert len(rows) == 4
            assert all(isinstance(row, sqlite3.Row) for row in rows)
            assert [tuple(row) for row in rows] == [
                (1, "apple"),
                (2, "PEAR"),
                (3, "PLUM"),
                (4, "FIG"),
            ]
            assert rows[1]["name"] == "PEAR"
            assert rows[1][0] == 2

            row = await pool.fetch_one("SELECT id, name FROM item WHERE name = ?", "FIG")
            assert isinstance(row, sqlite3.Row)
            assert (row["id"], row[1]) == (4, "FIG")
            assert await pool.fetch_one("SELECT id FROM item WHERE name = ?", "kiwi") is None

            assert await pool.fetch_value("SELECT count(*) FROM item") == 4
            assert await pool.fetch_value("SELECT name FROM item WHERE id = ?", 1) == "apple"
            assert await pool.fetch_value("SELECT name FROM item WHERE id = ?", 99) is None
            assert await pool.fetch_value("SELECT ? + ?", 40, 2) == 42
            assert await pool.fetch_all("SELECT * FROM item WHERE id < 0") == []
            assert pool.stats().in_use == 0

            with pytest.raises(sqlite3.OperationalError):
                await pool.execute("SELECT * FROM no_such_table")
            # The driver's error passed through; the pool is fine.
            assert await pool.fetch_value("SELECT 1") == 1

    asyncio.run(main())


def test_executor_methods_sync(any_url: str) -> None:
    with tidepool.Pool(any_url, max_size=3) as pool:
        pool.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        assert pool.execute("INSERT INTO item (name) VALUES (?)", "apple") == 1
        assert (
            pool.executemany("INSERT INTO item (name) VALUES (?)", [("pear",), ("plum",), ("fig",)])
            == 3
        )
        assert pool.execute("DELETE FROM item WHERE name IN (?, ?)", "pear", "plum") == 2

        rows = pool.fetch_all("SELECT id, name FROM item ORDER BY id")
        assert all(isinstance(row, sqlite3.Row) for row in rows)
        assert [tuple(row) for row in rows] == [(1, "apple"), (4, "fig")]
        assert rows[0]["name"] == "apple"

        row = pool.fetch_one("SELECT id, name FROM item WHERE id = ?", 4)
        assert row is not None
        assert tuple(row) == (4, "fig")
        assert pool.fetch_one("SELECT id FROM item WHERE id = ?", 2) is None

        assert pool.fetch_value("SELECT count(*) FROM item") == 2
        assert pool.fetch_value("SELECT name FROM item WHERE id = ?", 99) is None

        with pool.acquire() as conn:
            assert isinstance(conn, sqlite3.Connection)
            assert isinstance(conn, SQLiteConnection)
            assert conn.row_factory is sqlite3.Row
            assert conn.execute("SELECT name FROM item WHERE id = ?", (1,)).fetchone()[0] == (
                "apple"
            )

        with pytest.raises(sqlite3.OperationalError):
            pool.fetch_all("SELECT * FROM no_such_table")
        assert pool.fetch_value("SELECT 1") == 1
        assert pool.stats().in_use == 0


def test_lent_async_connection_methods(any_url: str) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(any_url, max_size=1) as pool, pool.acquire() as conn:
            assert isinstance(conn, AsyncSQLiteConnection)
            await conn.executescript(
                "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER);INSERT INTO kv VALUES ('a', 1);"
            )
            assert await conn.execute("INSERT INTO kv VALUES (?, ?)", "b", 2) == 1
            assert await conn.executemany("INSERT INTO kv VALUES (?, ?)", [("c", 3)]) == 1
            rows = await conn.fetch_all("SELECT k, v FROM kv ORDER BY k")
            assert [tuple(r) for r in rows] == [("a", 1), ("b", 2), ("c", 3)]
            one = await conn.fetch_one("SELECT v FROM kv WHERE k = ?", "b")
            assert one is not None
            assert one["v"] == 2
            assert await conn.fetch_one("SELECT v FROM kv WHERE k = ?", "zz") is None
            assert await conn.fetch_value("SELECT sum(v) FROM kv") == 6
            assert not conn.in_transaction
            await conn.execute("BEGIN")
            await conn.execute("DELETE FROM kv")
            assert conn.in_transaction
            await conn.rollback()
            assert not conn.in_transaction
            assert await conn.fetch_value("SELECT count(*) FROM kv") == 3

    asyncio.run(main())


def test_executor_methods_open_a_never_opened_pool_async() -> None:
    """A pool that was never opened opens itself on first use, executor methods included."""

    async def main() -> None:
        pool = tidepool.AsyncPool(MEMORY_URL, max_size=2)
        try:
            assert await pool.fetch_value("SELECT 1") == 1
            assert await pool.execute("CREATE TABLE t (x INTEGER)") in (-1, 0)
            assert await pool.fetch_all("SELECT * FROM t") == []
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_executor_methods_open_a_never_opened_pool_sync() -> None:
    pool = tidepool.Pool(MEMORY_URL, max_size=2)
    try:
        assert pool.fetch_value("SELECT 1") == 1
        assert pool.fetch_one("SELECT 2") is not None
    finally:
        pool.close()


# ---------------------------------------------------------------------- transactions


def test_transaction_commit_and_rollback_async(any_url: str) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(any_url, max_size=2) as pool:
            await pool.execute("CREATE TABLE t (x INTEGER)")
            async with pool.transaction() as conn:
                assert conn.in_transaction
                await conn.execute("INSERT INTO t VALUES (?)", 1)
                await conn.execute("INSERT INTO t VALUES (?)", 2)
            assert await pool.fetch_value("SELECT count(*) FROM t") == 2

            async def failing_block() -> None:
                async with pool.transaction() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", 3)
                    raise RuntimeError("boom")

            with pytest.raises(RuntimeError, match="boom"):
                await failing_block()
            assert await pool.fetch_value("SELECT count(*) FROM t") == 2
            assert [r[0] for r in await pool.fetch_all("SELECT x FROM t ORDER BY x")] == [1, 2]
            assert pool.stats().in_use == 0

    asyncio.run(main())


def test_transaction_commit_and_rollback_sync(any_url: str) -> None:
    with tidepool.Pool(any_url, max_size=2) as pool:
        pool.execute("CREATE TABLE t (x INTEGER)")
        with pool.transaction() as conn:
            assert conn.in_transaction
            conn.execute("INSERT INTO t VALUES (?)", (1,))
        assert pool.fetch_value("SELECT count(*) FROM t") == 1

        def failing_block() -> None:
            with pool.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (2,))
                raise KeyError("boom")

        with pytest.raises(KeyError):
            failing_block()
        assert pool.fetch_value("SELECT count(*) FROM t") == 1
        with pool.acquire() as conn:
            assert not conn.in_transaction
        assert pool.stats().in_use == 0


def test_transaction_rolls_back_when_task_is_cancelled(any_url: str) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(any_url, max_size=1) as pool:
            await pool.execute("CREATE TABLE t (x INTEGER)")
            inside = asyncio.Event()

            async def worker() -> None:
                async with pool.transaction() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", 1)
                    inside.set()
                    await asyncio.Event().wait()  # until cancelled

            task = asyncio.create_task(worker())
            await asyncio.wait_for(inside.wait(), PATIENCE)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, PATIENCE)
            assert task.cancelled()
            async with pool.acquire(timeout=PATIENCE) as conn:
                assert not conn.in_transaction
                assert await conn.fetch_value("SELECT count(*) FROM t") == 0
            assert pool.stats().in_use == 0

    asyncio.run(main())


def test_transaction_modes_async(tmp_path: Path) -> None:
    # busy_timeout=0: a lock conflict shows at once instead of being waited out.
    url = file_url(tmp_path / "modes.db", "busy_timeout=0")

    async def main() -> None:
        async with tidepool.AsyncPool(url, max_size=2) as pool:
            await pool.execute("CREATE TABLE t (x INTEGER)")
            async with pool.acquire() as other:
                async with pool.transaction(mode="immediate") as conn:
                    assert conn is not other
                    assert conn.in_transaction
                    # IMMEDIATE took the write lock before any write of ours.
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        await other.execute("INSERT INTO t VALUES (0)")
                    await conn.execute("INSERT INTO t VALUES (1)")
                assert await other.execute("INSERT INTO t VALUES (2)") == 1
                async with pool.transaction(mode="deferred") as conn:
                    # DEFERRED takes no lock until the first statement.
                    assert await other.execute("INSERT INTO t VALUES (3)") == 1
                    await conn.execute("INSERT INTO t VALUES (4)")
                async with pool.transaction(mode="exclusive") as conn:
                    await conn.execute("INSERT INTO t VALUES (5)")
            assert await pool.fetch_value("SELECT count(*) FROM t") == 5

            with pytest.raises(ValueError, match="bogus") as info:
                async with pool.transaction(mode="bogus"):
                    pytest.fail("a bad mode must not open a transaction")
            for allowed in ("deferred", "immediate", "exclusive"):
                assert allowed in str(info.value)
            assert pool.stats().in_use == 0
            async with pool.acquire() as conn:
                assert not conn.in_transaction

    asyncio.run(main())


def test_transaction_modes_sync(tmp_path: Path) -> None:
    url = file_url(tmp_path / "modes.db", "busy_timeout=0")
    with tidepool.Pool(url, max_size=2) as pool:
        pool.execute("CREATE TABLE t (x INTEGER)")
        with pool.acquire() as other:
            with pool.transaction(mode="immediate") as conn:
                assert conn.in_transaction
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("INSERT INTO t VALUES (0)")
                conn.execute("INSERT INTO t VALUES (1)")
            other.execute("INSERT INTO t VALUES (2)")
        assert pool.fetch_value("SELECT count(*) FROM t") == 2
        with pytest.raises(ValueError, match="bogus"), pool.transaction(mode="bogus"):
            pytest.fail("a bad mode must not open a transaction")
        assert pool.stats().in_use == 0


def test_open_transaction_is_rolled_back_on_return_async(any_url: str) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(any_url, max_size=1) as pool:
            await pool.execute("CREATE TABLE t (x INTEGER)")
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO t VALUES (1)")
                assert conn.in_transaction
            async with pool.acquire() as conn:
                assert not conn.in_transaction
                assert await conn.fetch_value("SELECT count(*) FROM t") == 0
            assert await pool.fetch_value("SELECT count(*) FROM t") == 0

    asyncio.run(main())


def test_open_transaction_is_rolled_back_on_return_sync(any_url: str) -> None:
    with tidepool.Pool(any_url, max_size=1) as pool:
        pool.execute("CREATE TABLE t (x INTEGER)")
        with pool.acquire() as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.in_transaction
        with pool.acquire() as conn:
            assert not conn.in_transaction
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0


# ---------------------------------------------------------------------- pragmas, URL


def test_file_database_defaults_async(tmp_path: Path) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(file_url(tmp_path / "wal.db"), max_size=2) as pool:
            assert await pool.fetch_value("PRAGMA journal_mode") == "wal"
            assert await pool.fetch_value("PRAGMA busy_timeout") == 5000
            async with pool.acquire() as conn:
                assert not conn.in_transaction
                # Autocommit: a statement outside BEGIN is visible at once to others.
                await conn.execute("CREATE TABLE t (x INTEGER)")
                await conn.execute("INSERT INTO t VALUES (1)")
                async with pool.acquire() as other:
                    assert await other.fetch_value("SELECT count(*) FROM t") == 1
        assert (tmp_path / "wal.db").exists()

    asyncio.run(main())


def test_file_database_defaults_sync(tmp_path: Path) -> None:
    with tidepool.Pool(file_url(tmp_path / "wal.db"), max_size=2) as pool:
        assert pool.fetch_value("PRAGMA journal_mode") == "wal"
        assert pool.fetch_value("PRAGMA busy_timeout") == 5000
        with pool.acquire() as conn:
            assert conn.isolation_level is None
    assert (tmp_path / "wal.db").exists()


@pytest.mark.parametrize(
    ("query", "pragma", "expected"),
    [
        ("busy_timeout=2", "busy_timeout", 2000),
        ("busy_timeout=0.25", "busy_timeout", 250),
        ("busy_timeout=0", "busy_timeout", 0),
        ("journal_mode=delete", "journal_mode", "delete"),
        ("journal_mode=truncate", "journal_mode", "truncate"),
        ("journal_mode=WAL", "journal_mode", "wal"),
        ("synchronous=off", "synchronous", 0),
        ("synchronous=normal", "synchronous", 1),
        ("synchronous=full", "synchronous", 2),
        ("foreign_keys=on", "foreign_keys", 1),
        ("foreign_keys=off", "foreign_keys", 0),
        ("busy_timeout=1&synchronous=normal&foreign_keys=on", "synchronous", 1),
    ],
)
def test_url_parameters_take_effect(
    tmp_path: Path, query: str, pragma: str, expected: object
) -> None:
    url = file_url(tmp_path / "params.db", query)
    # Every connection of the pool gets the setting, not just the first.
    with tidepool.Pool(url, max_size=2) as pool, pool.acquire() as one, pool.acquire() as two:
        for conn in (one, two):
            assert conn.execute(f"PRAGMA {pragma}").fetchone()[0] == expected

    async def main() -> None:
        async with tidepool.AsyncPool(url, max_size=1) as pool:
            assert await pool.fetch_value(f"PRAGMA {pragma}") == expected

    asyncio.run(main())


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    url = file_url(tmp_path / "fk.db", "foreign_keys=on")
    with tidepool.Pool(url, max_size=1) as pool:
        pool.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        pool.execute("CREATE TABLE child (pid INTEGER REFERENCES parent(id))")
        pool.execute("INSERT INTO parent VALUES (1)")
        assert pool.execute("INSERT INTO child VALUES (1)") == 1
        with pytest.raises(sqlite3.IntegrityError):
            pool.execute("INSERT INTO child VALUES (2)")
        assert pool.fetch_value("SELECT count(*) FROM child") == 1


def test_read_only_mode_on_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with tidepool.Pool(file_url(path), max_size=1) as pool:
        pool.execute("CREATE TABLE t (x INTEGER)")
        pool.execute("INSERT INTO t VALUES (7)")

    with tidepool.Pool(file_url(path, "mode=ro"), max_size=2) as pool:
        assert pool.fetch_value("SELECT x FROM t") == 7
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            pool.execute("INSERT INTO t VALUES (8)")
        assert pool.fetch_value("SELECT count(*) FROM t") == 1

    async def main() -> None:
        async with tidepool.AsyncPool(file_url(path, "mode=ro"), max_size=2) as pool:
            assert await pool.fetch_value("SELECT x FROM t") == 7
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await pool.execute("DELETE FROM t")

    asyncio.run(main())
    with tidepool.Pool(file_url(path), max_size=1) as pool:
        assert pool.fetch_value("SELECT count(*) FROM t") == 1


def test_read_only_mode_on_missing_file_is_a_connect_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    pool = tidepool.Pool(file_url(path, "mode=ro"), max_size=1, acquire_timeout=60)
    try:
        with pytest.raises(tidepool.ConnectError):
            pool.open()
    finally:
        pool.close()
    assert not path.exists()


BAD_PARAMETERS = [
    ("busy_timeout=abc", ("busy_timeout", "'abc'", ">= 0")),
    ("busy_timeout=-1", ("busy_timeout", "'-1'", ">= 0")),
    ("busy_timeout=nan", ("busy_timeout", "'nan'")),
    ("busy_timeout=inf", ("busy_timeout", "'inf'")),
    ("journal_mode=bogus", ("journal_mode", "'bogus'", "wal", "delete")),
    ("synchronous=sometimes", ("synchronous", "'sometimes'", "normal", "full")),
    ("foreign_keys=maybe", ("foreign_keys", "'maybe'", "on", "off")),
    ("mode=rx", ("mode", "'rx'", "ro", "rwc")),
    ("journal=wal", ("'journal'", "did you mean 'journal_mode'")),
    ("busy_timout=3", ("'busy_timout'", "did you mean 'busy_timeout'")),
    ("foreign_key=on", ("'foreign_key'", "did you mean 'foreign_keys'")),
    ("cache=shared", ("'cache'", "busy_timeout", "journal_mode")),
]


@pytest.mark.parametrize(("query", "fragments"), BAD_PARAMETERS)
@pytest.mark.parametrize("pool_cls", [tidepool.AsyncPool, tidepool.Pool])
def test_bad_url_parameters(
    tmp_path: Path, pool_cls: Any, query: str, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "bad.db"
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(file_url(path, query))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_parameter_on_memory_url() -> None:
    with pytest.raises(tidepool.ConfigError, match="did you mean 'busy_timeout'"):
        tidepool.Pool(MEMORY_URL + "?busytimeout=1")


# ---------------------------------------------------------------------- :memory:


def test_memory_database_is_shared_by_every_connection_async() -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(MEMORY_URL, max_size=4) as pool:
            async with pool.acquire() as one, pool.acquire() as two, pool.acquire() as three:
                assert len({id(one), id(two), id(three)}) == 3
                await one.execute("CREATE TABLE shared (x INTEGER)")
                await one.execute("INSERT INTO shared VALUES (1)")
                assert await two.fetch_value("SELECT x FROM shared") == 1
                await two.execute("INSERT INTO shared VALUES (2)")
                assert await three.fetch_value("SELECT count(*) FROM shared") == 2
                assert await one.fetch_value("SELECT sum(x) FROM shared") == 3
            assert pool.stats().size >= 3
            assert await pool.fetch_value("SELECT count(*) FROM shared") == 2

    asyncio.run(main())


def test_memory_database_is_shared_by_every_connection_sync() -> None:
    with tidepool.Pool(MEMORY_URL, max_size=4) as pool:
        with pool.acquire() as one, pool.acquire() as two:
            assert one is not two
            one.execute("CREATE TABLE shared (x INTEGER)")
            one.execute("INSERT INTO shared VALUES (1)")
            assert two.execute("SELECT x FROM shared").fetchone()[0] == 1

        def writer(n: int) -> None:
            pool.execute("INSERT INTO shared VALUES (?)", n)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(10, 14)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        assert pool.fetch_value("SELECT count(*) FROM shared") == 5


def test_memory_database_survives_idle_pool_async() -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(MEMORY_URL, max_size=2, idle_timeout=0.2) as pool:
            async with pool.acquire() as one, pool.acquire() as two:
                await one.execute("CREATE TABLE keep (x INTEGER)")
                await two.execute("INSERT INTO keep VALUES (42)")
            # size drops when a connection is retired, closed counts it once really closed.
            await async_wait_until(
                lambda: pool.stats().size == 0 and pool.stats().closed >= 2,
                "connections to idle out and close",
            )
            assert await pool.fetch_value("SELECT x FROM keep") == 42

    asyncio.run(main())


def test_memory_database_survives_idle_pool_sync() -> None:
    with tidepool.Pool(MEMORY_URL, max_size=2, idle_timeout=0.2) as pool:
        pool.execute("CREATE TABLE keep (x INTEGER)")
        pool.execute("INSERT INTO keep VALUES (42)")
        wait_until(
            lambda: pool.stats().size == 0 and pool.stats().closed >= 1,
            "connections to idle out and close",
        )
        assert pool.fetch_value("SELECT x FROM keep") == 42


def test_memory_databases_of_two_pools_are_separate() -> None:
    with tidepool.Pool(MEMORY_URL, max_size=2) as first, tidepool.Pool(MEMORY_URL) as second:
        first.execute("CREATE TABLE only_first (x INTEGER)")
        first.execute("INSERT INTO only_first VALUES (1)")
        assert (
            second.fetch_value("SELECT count(*) FROM sqlite_master WHERE name = 'only_first'") == 0
        )
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            second.fetch_all("SELECT * FROM only_first")
        second.execute("CREATE TABLE only_first (y TEXT)")  # no clash
        assert first.fetch_value("SELECT x FROM only_first") == 1

    async def main() -> None:
        async with (
            tidepool.AsyncPool(MEMORY_URL) as one,
            tidepool.AsyncPool(MEMORY_URL) as two,
        ):
            await one.execute("CREATE TABLE t (x INTEGER)")
            assert await two.fetch_value("SELECT count(*) FROM sqlite_master") == 0

    asyncio.run(main())


def test_memory_database_is_gone_after_close() -> None:
    with tidepool.Pool(MEMORY_URL) as pool:
        pool.execute("CREATE TABLE t (x INTEGER)")
    with tidepool.Pool(MEMORY_URL) as pool:
        assert pool.fetch_value("SELECT count(*) FROM sqlite_master") == 0


# ---------------------------------------------------------------------- connect failures


def test_missing_directory_is_a_permanent_connect_error_sync(tmp_path: Path) -> None:
    url = file_url(tmp_path / "no" / "such" / "dir" / "app.db")
    pool = tidepool.Pool(url, max_size=2, acquire_timeout=60)
    try:
        started = time.monotonic()
        with pytest.raises(tidepool.ConnectError) as info:
            pool.open()
        # A permanent failure fails fast: well before the 60 s acquire deadline.
        assert time.monotonic() - started < PATIENCE
        assert not isinstance(info.value, tidepool.PoolTimeout)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert "app.db" in str(info.value)
        started = time.monotonic()
        with pytest.raises(tidepool.ConnectError):
            pool.fetch_value("SELECT 1")
        assert time.monotonic() - started < PATIENCE
    finally:
        pool.close()
    assert not (tmp_path / "no").exists()


def test_missing_directory_is_a_permanent_connect_error_async(tmp_path: Path) -> None:
    url = file_url(tmp_path / "no" / "such" / "dir" / "app.db")

    async def main() -> None:
        pool = tidepool.AsyncPool(url, max_size=2, acquire_timeout=60)
        try:
            started = time.monotonic()
            with pytest.raises(tidepool.ConnectError) as info:
                await pool.open()
            assert time.monotonic() - started < PATIENCE
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(tidepool.ConnectError):
                async with pool.acquire():
                    pass
            assert time.monotonic() - started < PATIENCE
        finally:
            await pool.aclose()

    asyncio.run(main())


def _failed_with_block(url: str) -> str:
    """Enter ``with Pool(url)``, expecting open() to fail; keep no reference to anything."""
    try:
        with tidepool.Pool(url, acquire_timeout=60):
            pass
    except tidepool.ConnectError as exc:
        return type(exc).__name__
    return "no error"


async def _failed_async_with_block(url: str) -> str:
    try:
        async with tidepool.AsyncPool(url, acquire_timeout=60):
            pass
    except tidepool.ConnectError as exc:
        return type(exc).__name__
    return "no error"


def test_failed_open_in_with_block_leaves_nothing_unclosed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``with Pool(...)`` whose open fails gives the caller no pool to close: the pool must
    not later warn that it was never closed (with filterwarnings=error that warning becomes
    an unraisable-exception error far from its cause)."""
    url = file_url(tmp_path / "missing" / "app.db")
    # pytest keeps log records (and through their arguments the connect error, its traceback
    # and the pool) until the test ends: create none, so the pools can be collected here.
    monkeypatch.setattr(logging.getLogger("tidepool"), "disabled", True)
    monkeypatch.setattr(logging.getLogger("tidepool.pool"), "disabled", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _failed_with_block(url) == "ConnectError"
        assert asyncio.run(_failed_async_with_block(url)) == "ConnectError"
        for _ in range(3):
            gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


# ---------------------------------------------------------------------- AsyncSQLiteConnection


def test_calls_run_on_the_connections_own_thread() -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        async with (
            tidepool.AsyncPool(MEMORY_URL, max_size=2) as pool,
            pool.acquire() as one,
            pool.acquire() as two,
        ):
            first = await one.run(lambda raw: threading.get_ident())
            again = await one.run(lambda raw: threading.get_ident())
            other = await two.run(lambda raw: threading.get_ident())
            assert first == again
            assert first != loop_thread
            assert other not in (first, loop_thread)
            assert await one.run(lambda raw, a, b: a * b, 6, 7) == 42
            assert await one.run(lambda raw: raw.execute("SELECT 5").fetchone()[0]) == 5
            assert isinstance(one.raw, sqlite3.Connection)
            with pytest.raises(ZeroDivisionError):
                await one.run(lambda raw: 1 / 0)
            assert await one.fetch_value("SELECT 'still fine'") == "still fine"

    asyncio.run(main())


def test_slow_query_does_not_block_the_event_loop() -> None:
    calls: list[int] = []

    def slow(value: int) -> int:
        calls.append(threading.get_ident())
        time.sleep(0.05)
        return value

    async def main() -> None:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async with tidepool.AsyncPool(MEMORY_URL, max_size=1) as pool:
            async with pool.acquire() as conn:
                await conn.run(lambda raw: raw.create_function("slow", 1, slow))
                ticking = asyncio.create_task(ticker())
                await asyncio.sleep(0)
                before = ticks
                total = await conn.fetch_value(
                    "WITH RECURSIVE c(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM c "
                    "WHERE v < 20) SELECT sum(slow(v)) FROM c"
                )
                during = ticks - before
                stop.set()
                await ticking
            assert total == 210
            # About 1 s of sleeping in SQL: a loop that kept running ticked many times;
            # a blocked loop would not have ticked at all.
            assert during >= 3
            assert len(calls) == 20
            assert threading.get_ident() not in set(calls)

    asyncio.run(main())


def test_cancelling_a_long_query_interrupts_it() -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(MEMORY_URL, max_size=1) as pool:
            started = threading.Event()

            def mark() -> int:
                started.set()
                return 1

            async def long_query() -> Any:
                async with pool.acquire() as conn:
                    await conn.run(lambda raw: raw.create_function("mark", 0, mark))
                    return await conn.fetch_value(ENDLESS_QUERY.format(start="mark()"))

            task = asyncio.create_task(long_query())
            assert await asyncio.to_thread(started.wait, PATIENCE)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, PATIENCE)
            assert task.cancelled()

            # The next borrower gets a working connection and its own results only.
            async with pool.acquire(timeout=PATIENCE) as conn:
                assert await conn.fetch_value("SELECT ?", 12345) == 12345
                rows = await conn.fetch_all(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < 3) SELECT x FROM c"
                )
                assert [r[0] for r in rows] == [1, 2, 3]
                assert not conn.in_transaction
            assert await pool.fetch_value("SELECT ? * 2", 21) == 42
            stats = pool.stats()
            assert stats.in_use == 0
            assert stats.size <= 1

    asyncio.run(main())


def test_cancelling_a_query_on_a_file_database_keeps_data_intact(tmp_path: Path) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool(file_url(tmp_path / "c.db"), max_size=1) as pool:
            await pool.execute("CREATE TABLE t (x INTEGER)")
            await pool.execute("INSERT INTO t VALUES (1)")
            started = threading.Event()

            def mark() -> int:
                started.set()
                return 1

            async def long_write() -> None:
                async with pool.transaction() as conn:
                    await conn.run(lambda raw: raw.create_function("mark", 0, mark))
                    await conn.execute("INSERT INTO t VALUES (2)")
                    await conn.fetch_value(ENDLESS_QUERY.format(start="mark()"))

            task = asyncio.create_task(long_write())
            assert await asyncio.to_thread(started.wait, PATIENCE)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, PATIENCE)
            assert await pool.fetch_value("SELECT count(*) FROM t") == 1
            assert await pool.execute("INSERT INTO t VALUES (3)") == 1
            assert [r[0] for r in await pool.fetch_all("SELECT x FROM t ORDER BY x")] == [1, 3]

    asyncio.run(main())


def test_call_cancelled_while_queued_never_runs(tmp_path: Path) -> None:
    """A call cancelled before the connection's thread started it must not run later: the
    caller was told it was cancelled, so its INSERT must not be committed behind its back."""

    async def main() -> None:
        async with tidepool.AsyncPool(file_url(tmp_path / "q.db"), max_size=1) as pool:
            await pool.execute("CREATE TABLE t (x INTEGER)")
            async with pool.acquire() as conn:
                gate = threading.Event()
                entered = threading.Event()

                def hold(raw: sqlite3.Connection) -> None:
                    entered.set()
                    gate.wait(PATIENCE)

                blocker = asyncio.create_task(conn.run(hold))
                assert await asyncio.to_thread(entered.wait, PATIENCE)
                queued = asyncio.create_task(conn.execute("INSERT INTO t VALUES (1)"))
                await asyncio.sleep(0.05)  # the INSERT is now queued behind hold()
                assert not queued.done()
                queued.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await queued
                gate.set()
                await asyncio.wait_for(blocker, PATIENCE)
                assert await conn.fetch_value("SELECT count(*) FROM t") == 0
            assert await pool.fetch_value("SELECT count(*) FROM t") == 0

    asyncio.run(main())


# ---------------------------------------------------------------------- concurrency


def test_concurrent_writers_async(tmp_path: Path) -> None:
    url = file_url(tmp_path / "busy.db", "synchronous=normal")

    async def main() -> None:
        async with tidepool.AsyncPool(url, max_size=4) as pool:
            await pool.execute("CREATE TABLE log (task INTEGER, i INTEGER)")

            async def writer(task: int) -> None:
                for i in range(50):
                    assert await pool.execute("INSERT INTO log VALUES (?, ?)", task, i) == 1
                    if i % 10 == 0:
                        await asyncio.sleep(0)

            await asyncio.wait_for(asyncio.gather(*(writer(t) for t in range(8))), 60)
            assert await pool.fetch_value("SELECT count(*) FROM log") == 400
            per_task = await pool.fetch_all(
                "SELECT task, count(DISTINCT i) FROM log GROUP BY task ORDER BY task"
            )
            assert [tuple(r) for r in per_task] == [(t, 50) for t in range(8)]
            stats = pool.stats()
            assert stats.size <= 4
            assert stats.in_use == 0

    asyncio.run(main())


def test_threads_reading_and_writing_sync(tmp_path: Path) -> None:
    url = file_url(tmp_path / "threads.db", "synchronous=normal")
    errors: list[BaseException] = []
    with tidepool.Pool(url, max_size=4) as pool:
        pool.execute("CREATE TABLE counter (thread INTEGER, i INTEGER)")
        pool.execute("CREATE TABLE total (n INTEGER)")
        pool.execute("INSERT INTO total VALUES (0)")

        def work(thread: int) -> None:
            try:
                for i in range(20):
                    pool.execute("INSERT INTO counter VALUES (?, ?)", thread, i)
                    seen = pool.fetch_value("SELECT count(*) FROM counter WHERE thread = ?", thread)
                    assert seen == i + 1
                    # Read-then-write: IMMEDIATE takes the write lock up front, so no upgrade
                    # conflict between the threads.
                    with pool.transaction(mode="immediate") as conn:
                        n = conn.execute("SELECT n FROM total").fetchone()[0]
                        conn.execute("UPDATE total SET n = ?", (n + 1,))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert pool.fetch_value("SELECT count(*) FROM counter") == 160
        assert pool.fetch_value("SELECT n FROM total") == 160
        stats = pool.stats()
        assert stats.size <= 4
        assert stats.in_use == 0
