"""``tidepool bench`` and ``tidepool check`` on MySQL/MariaDB and Redis, run as the real
command (a subprocess) against the shared servers.

No assertion here is about speed: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from .helpers import (
    assert_clean_stderr,
    assert_one_line_error,
    bench_schema,
    tidepool_cmd,
    unused_port,
)
from .schema_check import validate
from .test_check import fields

QUICK = ["--duration", "0.3", "--warmup", "0.1", "--sizes", "1,2", "--concurrency", "4"]
ROW = re.compile(r"^(no pool|\d+)\s+(\d+)\s")


def _mysql_url() -> str:
    from mysql_helpers import MY_DB, MY_HOST, MY_PORT, require_mysql

    require_mysql()
    return f"mysql://root@{MY_HOST}:{MY_PORT}/{MY_DB}"


def _redis_url() -> str:
    from redis_helpers import redis_url, require_redis

    require_redis()
    return redis_url(0)


def _leftovers(kind: str, table: str) -> int:
    """Tables (MySQL) or keys (Redis) the benchmark left behind."""
    if kind == "mysql":
        from mysql_helpers import admin_query

        return len(admin_query("SHOW TABLES LIKE %s", table.split("_history")[0] + "%"))
    from redis_helpers import admin

    with admin() as conn:
        return len(list(conn.scan_iter(match=table, count=1000)))


@pytest.mark.parametrize("kind", ["mysql", "redis"])
def test_bench_table(kind: str) -> None:
    url = _mysql_url() if kind == "mysql" else _redis_url()
    result = tidepool_cmd("bench", url, *QUICK, "--workload", "read-write")
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    rows = {m.group(1): int(m.group(2)) for m in map(ROW.match, result.stdout.splitlines()) if m}
    assert set(rows) == {"no pool", "1", "2"}, result.stdout
    assert all(count > 0 for count in rows.values()), result.stdout
    assert re.search(r"^recommended: max_size=[12]$", result.stdout, re.M), result.stdout
    server = "MariaDB|MySQL" if kind == "mysql" else "Redis"
    assert re.search(rf"({server}) \S+, max_connections \d+", result.stdout), result.stdout


@pytest.mark.parametrize("kind", ["mysql", "redis"])
def test_bench_json_cleans_up(kind: str) -> None:
    url = _mysql_url() if kind == "mysql" else _redis_url()
    result = tidepool_cmd("bench", url, *QUICK, "--workload", "point-select", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    doc = json.loads(result.stdout)
    validate(doc, bench_schema())
    assert doc["config"]["kind"] == kind
    assert [r["label"] for r in doc["results"]] == ["no pool", "1", "2"]
    for r in doc["results"]:
        assert r["requests"] > 0
        assert r["errors"] == 0
    # the pools' own sessions, picked out server-side (thread ids / client names)
    assert [r["server_connections"] for r in doc["results"][1:]] == [1, 2]
    assert doc["recommendation"]["size"] in (1, 2)
    server = doc["environment"]["server"]
    assert server["version"]
    assert server["max_connections"] >= 1
    table = doc["config"]["table"]
    assert table
    assert _leftovers(kind, table) == 0


def test_bench_redis_query() -> None:
    url = _redis_url()
    result = tidepool_cmd("bench", url, *QUICK, "--query", "PING", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, bench_schema())
    assert doc["config"]["table"] is None
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in doc["results"])


def test_check_mysql() -> None:
    from mysql_helpers import admin_query

    url = _mysql_url()
    version = admin_query("SELECT VERSION()")[0][0]
    result = tidepool_cmd("check", url, "--samples", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    info = fields(result.stdout)
    assert version in info["server"]
    assert "max_connections" in info["connections"]
    assert info["tls"].startswith(("in use", "not in use"))
    for key in ("open connection", "pooled acquire", "session reset", "pool saves"):
        assert info[key].split()[1] == "ms", key


def test_check_redis() -> None:
    from redis_helpers import admin

    url = _redis_url()
    with admin() as conn:
        version = conn.info("server")["redis_version"]
    result = tidepool_cmd("check", url, "--samples", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    info = fields(result.stdout)
    assert info["server"] == f"Redis {version}"
    assert "maxclients" in info["connections"]
    assert info["tls"] == "not in use (redis:// URL)"
    for key in ("open connection", "pooled acquire", "session reset", "pool saves"):
        assert info[key].split()[1] == "ms", key


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "redis"])
@pytest.mark.parametrize("command", ["check", "bench"])
def test_refused_without_showing_the_password(scheme: str, command: str) -> None:
    url = f"{scheme}://app:s3cret@127.0.0.1:{unused_port()}/0"
    result = tidepool_cmd(command, url, *(QUICK if command == "bench" else []))
    line = assert_one_line_error(result, 3)
    assert "connection refused" in line
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("scheme", ["mysql", "redis"])
def test_check_timeout_on_a_silent_server(scheme: str) -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = tidepool_cmd(
            "check", f"{scheme}://app:s3cret@127.0.0.1:{port}/0", "--timeout", "0.5"
        )
    line = assert_one_line_error(result, 6)
    assert "timed out" in line
    assert "s3cret" not in result.stderr


def test_mysql_failures_without_showing_the_password() -> None:
    from mysql_helpers import MY_HOST, MY_PORT

    _mysql_url()
    base = f"mysql://tp_nosuchuser:s3cret@{MY_HOST}:{MY_PORT}"
    result = tidepool_cmd("check", f"{base}/test")
    assert "authentication failed" in assert_one_line_error(result, 4)
    assert "s3cret" not in result.stderr
    result = tidepool_cmd("check", f"mysql://root@{MY_HOST}:{MY_PORT}/nosuchdb_tidepool")
    assert "unknown database" in assert_one_line_error(result, 7)


def test_redis_failures_without_showing_the_password() -> None:
    from redis_helpers import REDIS_HOST, REDIS_PORT

    _redis_url()
    result = tidepool_cmd("check", f"redis://nosuchuser:s3cret@{REDIS_HOST}:{REDIS_PORT}/0")
    assert "authentication failed" in assert_one_line_error(result, 4)
    assert "s3cret" not in result.stderr
    result = tidepool_cmd("check", f"redis://{REDIS_HOST}:{REDIS_PORT}/99")
    assert "unknown database" in assert_one_line_error(result, 7)


def test_unsupported_url_lists_the_schemes() -> None:
    line = assert_one_line_error(tidepool_cmd("check", "mongodb://app:s3cret@h/db"), 2)
    assert "mysql://" in line
    assert "redis://" in line
    assert "s3cret" not in line
