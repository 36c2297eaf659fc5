"""PostgreSQL test helpers: where the shared server is, and how to ask it about sessions.

Tests that need the server call :func:`require_pg` (skip on a laptop without it, fail with
``CI=true``). Every pool under test gets a unique ``application_name`` so that the
server-side session count (``pg_stat_activity``) can be compared with the pool's size.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import Any

import psycopg

from conftest import require_server

PG_HOST = os.environ.get("TIDEPOOL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TIDEPOOL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TIDEPOOL_TEST_PG_USER", "postgres")
PG_DB = os.environ.get("TIDEPOOL_TEST_PG_DB", "test")
_names = itertools.count(1)


def require_pg() -> None:
    """Skip (locally) or fail (CI) unless the shared PostgreSQL accepts connections."""
    require_server("PostgreSQL", PG_HOST, PG_PORT)


def app_name(prefix: str = "tp") -> str:
    """A unique application_name for one pool under test."""
    return f"{prefix}-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


def pg_url(app: str | None = None, *, driver: str = "", **params: str) -> str:
    """URL of the shared server; ``driver`` is "", "asyncpg" or "psycopg"."""
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    query = {"application_name": app} if app else {}
    query.update(params)
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{scheme}://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}" + (f"?{qs}" if qs else "")


def admin() -> psycopg.Connection[Any]:
    """A separate autocommit connection for inspecting and poking the server."""
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DB, autocommit=True)


def session_count(app: str) -> int:
    """Server-side sessions whose application_name is ``app``."""
    with admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
        assert row is not None
        return int(row[0])


def backend_pids(app: str) -> list[int]:
    with admin() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
        return [int(r[0]) for r in rows]


def terminate(app: str) -> int:
    """``pg_terminate_backend`` every session of ``app``; return how many."""
    with admin() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        ).fetchall()
        return len(rows)


def wait_sessions(app: str, expected: int, timeout: float = 5.0) -> int:
    """Wait until the server shows ``expected`` sessions for ``app``; return the last count."""
    deadline = time.monotonic() + timeout
    count = session_count(app)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = session_count(app)
    return count
