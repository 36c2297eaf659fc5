"""MySQL/MariaDB test helpers: where the shared server is, and how to count a pool's sessions.

Tests that need the server call :func:`require_mysql` (skip on a laptop without it, fail with
``CI=true``). MariaDB ships with ``performance_schema`` off, so connection attributes such as
``program_name`` are not visible server-side; instead every pool under test logs in as a
**user of its own** (:func:`mysql_user`: ``CREATE USER tp_<random>`` with rights on the test
database only, dropped afterwards), and its server-side session count is the number of
``information_schema.PROCESSLIST`` rows for that user (:func:`session_count`). The shared
server's global settings are never changed.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pymysql

from conftest import require_server

MY_HOST = os.environ.get("TIDEPOOL_TEST_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("TIDEPOOL_TEST_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("TIDEPOOL_TEST_MYSQL_USER", "root")
MY_PASSWORD = os.environ.get("TIDEPOOL_TEST_MYSQL_PASSWORD", "")
MY_DB = os.environ.get("TIDEPOOL_TEST_MYSQL_DB", "test")
_names = itertools.count(1)


def require_mysql() -> None:
    """Skip (locally) or fail (CI) unless the shared MariaDB accepts connections."""
    require_server("MariaDB", MY_HOST, MY_PORT)


def unique(prefix: str = "tp") -> str:
    """A unique SQL-safe name (tables, users, locks): ``prefix_<pid>_<n>_<hex>``."""
    return f"{prefix}_{os.getpid()}_{next(_names)}_{uuid.uuid4().hex[:8]}"


def admin() -> Any:
    """A separate autocommit root connection for inspecting and poking the server."""
    return pymysql.connect(
        host=MY_HOST,
        port=MY_PORT,
        user=MY_USER,
        password=MY_PASSWORD,
        database=MY_DB,
        autocommit=True,
        connect_timeout=5,
        read_timeout=30,
    )


def admin_query(sql: str, *args: Any) -> list[Any]:
    with admin() as conn, conn.cursor() as cur:
        cur.execute(sql, args or None)
        return list(cur.fetchall())


@contextmanager
def mysql_user(
    *, password: str | None = None, max_user_connections: int | None = None
) -> Iterator[str]:
    """Create a user of its own for one pool (all rights on the test database), yield its
    name; afterwards kill its remaining sessions and drop it."""
    name = unique("tp")[:80]
    ident = f"'{name}'@'%'"
    clauses = f" IDENTIFIED BY '{password}'" if password is not None else ""
    limits = (
        f" WITH MAX_USER_CONNECTIONS {max_user_connections}"
        if max_user_connections is not None
        else ""
    )
    with admin() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER {ident}{clauses}{limits}")
        cur.execute(f"GRANT ALL PRIVILEGES ON `{MY_DB}`.* TO {ident}")
    try:
        yield name
    finally:
        with admin() as conn, conn.cursor() as cur:
            for thread in thread_ids(name):
                try:
                    cur.execute(f"KILL CONNECTION {thread:d}")
                except pymysql.err.MySQLError:
                    pass  # it ended meanwhile
            cur.execute(f"DROP USER {ident}")


def mysql_url(
    user: str,
    password: str | None = None,
    *,
    scheme: str = "mysql",
    database: str | None = None,
    **params: str,
) -> str:
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    db = MY_DB if database is None else database
    return f"{scheme}://{auth}@{MY_HOST}:{MY_PORT}/{db}" + (f"?{query}" if query else "")


def thread_ids(user: str) -> list[int]:
    """Server thread ids of ``user``'s sessions."""
    rows = admin_query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", user)
    return sorted(int(r[0]) for r in rows)


def session_count(user: str) -> int:
    """Server-side sessions of ``user``."""
    return len(thread_ids(user))


def wait_sessions(user: str, expected: int, timeout: float = 10.0) -> int:
    """Wait until the server shows ``expected`` sessions for ``user``; return the last count."""
    deadline = time.monotonic() + timeout
    count = session_count(user)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = session_count(user)
    return count


def kill(thread_id: int) -> None:
    """``KILL CONNECTION`` one session from the admin connection."""
    admin_query(f"KILL CONNECTION {thread_id:d}")


def wait_gone(thread_id: int, timeout: float = 10.0) -> bool:
    """Wait until the server no longer lists ``thread_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = admin_query("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", thread_id)
        if not rows:
            return True
        time.sleep(0.02)
    return False
