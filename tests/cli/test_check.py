"""``tidepool check``, run as the real command (a subprocess)."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from .helpers import assert_one_line_error, tidepool_cmd, unused_port


def fields(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        assert sep, line
        out[key] = value.strip()
    return out


def test_check_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=wal")
    conn.close()
    result = tidepool_cmd("check", f"sqlite:///{db.as_posix()}", "--samples", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    info = fields(result.stdout)
    assert info["server"].startswith(f"SQLite {sqlite3.sqlite_version}")
    assert info["journal mode"] == "wal"
    assert info["file"] == str(db)
    for key in ("open connection", "pooled acquire", "session reset", "pool saves"):
        assert info[key].split()[1] == "ms", key


def test_check_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    line = assert_one_line_error(tidepool_cmd("check", f"sqlite:///{db.as_posix()}"), 7)
    assert "unknown database" in line
    assert not db.exists()


@pytest.mark.parametrize(
    "args", [[], ["mongodb://localhost"], ["sqlite://"], ["x", "--samples", "0"]]
)
def test_check_bad_arguments(args: list[str]) -> None:
    assert_one_line_error(tidepool_cmd("check", *args), 2)


@pytest.mark.parametrize("driver", ["", "+psycopg"])
def test_check_refused_without_showing_the_password(driver: str) -> None:
    url = f"postgresql{driver}://app:s3cret@127.0.0.1:{unused_port()}/app"
    result = tidepool_cmd("check", url)
    line = assert_one_line_error(result, 3)
    assert "connection refused" in line
    assert "s3cret" not in result.stderr


def test_check_timeout_on_a_silent_server() -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"postgresql://app:s3cret@127.0.0.1:{port}/app?sslmode=disable"
        result = tidepool_cmd("check", url, "--timeout", "0.5")
    line = assert_one_line_error(result, 6)
    assert "timed out" in line
    assert "s3cret" not in result.stderr


def test_check_postgres() -> None:
    from pg_helpers import admin, require_pg

    require_pg()
    with admin() as conn:
        version = conn.execute("SHOW server_version").fetchone()
        limit = conn.execute("SHOW max_connections").fetchone()
    conn.close()
    assert version is not None
    assert limit is not None
    result = tidepool_cmd("check", "postgresql://postgres@127.0.0.1:5432/test", "--samples", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    info = fields(result.stdout)
    assert info["server"].startswith(f"PostgreSQL {version[0]}")
    assert f"max_connections {limit[0]}" in info["connections"]
    assert info["tls"].startswith(("in use", "not in use"))
    assert info["pgbouncer"].startswith("not detected")
    for key in ("open connection", "pooled acquire", "session reset", "pool saves"):
        assert info[key].split()[1] == "ms", key


@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [("/nosuchdb_tidepool", 7, "unknown database"), ("/test?user=nosuchrole", 4, "authentication")],
)
def test_check_postgres_failures(path: str, code: int, reason: str) -> None:
    from pg_helpers import require_pg

    require_pg()
    url = "postgresql://postgres:s3cret@127.0.0.1:5432" + path
    result = tidepool_cmd("check", url)
    line = assert_one_line_error(result, code)
    assert reason in line
    assert "s3cret" not in result.stderr
