"""The machine, the versions and the servers a run measured, for the JSON and the page."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "tidepool",
    "asyncpg",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "SQLAlchemy",
    "greenlet",
    "redis",
    "hiredis",
    "aiomysql",
    "PyMySQL",
)


def _first_line(path: str, prefix: str) -> str | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[-1].split("=", 1)[-1].strip().strip('"')
    except OSError:
        pass
    return None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    mem = _first_line("/proc/meminfo", "MemTotal")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "memory": mem,
        "os": _first_line("/etc/os-release", "PRETTY_NAME"),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": "asyncio default (no uvloop)",
        "load_average": load(),
    }


def packages() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def servers() -> dict[str, str | None]:
    """Each server's version, or ``None`` if it cannot be reached (its contenders are skipped)."""
    from contenders.drivers import HOST, MYSQL_DB, MYSQL_USER, PG_DB, PG_USER, SERVICES

    found: dict[str, str | None] = {}
    try:
        import psycopg

        with psycopg.connect(
            host=HOST, port=SERVICES["pg"], user=PG_USER, dbname=PG_DB, connect_timeout=3
        ) as conn:
            row = conn.execute("SELECT version(), current_setting('max_connections')").fetchone()
            assert row is not None
            found["pg"] = f"{row[0].split(' on ')[0]}, max_connections={row[1]}"
    except Exception:
        found["pg"] = None
    try:
        import redis

        info = redis.Redis(host=HOST, port=SERVICES["redis"], socket_timeout=3).info("server")
        found["redis"] = f"Redis {info['redis_version']}"
    except Exception:
        found["redis"] = None
    try:
        import pymysql

        conn = pymysql.connect(
            host=HOST, port=SERVICES["mysql"], user=MYSQL_USER, database=MYSQL_DB, connect_timeout=3
        )
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
        conn.close()
        found["mysql"] = f"MariaDB/MySQL {row[0] if row else '?'}"
    except Exception:
        found["mysql"] = None
    return found


def psycopg_impl() -> str | None:
    env = {**os.environ, "PSYCOPG_IMPL": "binary"}
    code = "import psycopg; print(psycopg.pq.__impl__, psycopg.pq.version())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode:
        return None
    impl, libpq = out.stdout.split()
    return f"{impl} (libpq {int(libpq) // 10000}.{int(libpq) % 10000})"


def tidepool_core() -> str:
    """Which build of tidepool's core the worker processes import (they inherit PYTHONPATH:
    ``make benchmark`` points it at the mypyc-compiled core of ``make compiled``)."""
    code = "import tidepool._core.state as s; print(s.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    path = out.stdout.strip()
    if out.returncode or not path:
        return "unknown"
    return "compiled with mypyc" if not path.endswith(".py") else "pure Python"
