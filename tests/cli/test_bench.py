"""``tidepool bench`` and ``tidepool version``, run as the real command (a subprocess).

No assertion here is about speed: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest

import tidepool
from tidepool.cli.bench import SizeResult, auto_next, limit_warning, percentile, recommend
from tidepool.cli.common import classify_connect_error
from tidepool.cli.targets import ServerInfo

from .helpers import (
    assert_clean_stderr,
    assert_one_line_error,
    bench_schema,
    tidepool_cmd,
    unused_port,
)
from .schema_check import errors, validate

QUICK = ["--duration", "0.3", "--warmup", "0.1", "--sizes", "1,2", "--concurrency", "8"]
NUM = r"([\d.]+|-)"
ROW = re.compile(rf"^(no pool|\d+)\s+(\d+)\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+(\d+)\s+(\d+|-)$")
HEADER = ["size", "req/s", "p50", "ms", "p95", "ms", "p99", "ms", "p99", "wait", "ms",
          "timeouts", "server", "conns"]  # fmt: skip


def table_rows(stdout: str) -> dict[str, tuple[str | None, ...]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.groups()
    return rows


# ---------------------------------------------------------------------- SQLite


def test_bench_table() -> None:
    result = tidepool_cmd("bench", *QUICK)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    assert "\x1b[" not in result.stdout  # piped: plain text
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("size"))
    assert header.split() == HEADER
    rows = table_rows(result.stdout)
    assert set(rows) == {"no pool", "1", "2"}
    for label, cells in rows.items():
        assert int(cells[1] or 0) > 0, f"{label}: no request completed"
        assert cells[2] != "-"
        assert cells[7] == "-"  # no server-side sessions for SQLite
    recommended = [line for line in lines if line.startswith("recommended")]
    assert len(recommended) == 1
    match = re.fullmatch(r"recommended: max_size=(\d+)", recommended[0])
    assert match is not None, recommended[0]
    assert match.group(1) in {"1", "2"}
    why = lines[lines.index(recommended[0]) + 1]
    assert why.startswith(f"why: size {match.group(1)}: ")
    hikari = next(line for line in lines if line.startswith("HikariCP starting point: "))
    assert "cores * 2 + spindles" in hikari


def test_bench_json_on_a_sqlite_url(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE mine (x INTEGER)")
    conn.close()
    url = f"sqlite:///{db.as_posix()}"
    args = ["--workload", "point-select", "--work-ms", "1", "--hold", "--format", "json"]
    result = tidepool_cmd("bench", url, *QUICK, *args)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    doc = json.loads(result.stdout)  # one document, nothing else on stdout
    validate(doc, bench_schema())
    config = doc["config"]
    assert config["url"] == url
    assert config["kind"] == "sqlite"
    assert config["workload"] == "point-select"
    assert config["sizes"] == [1, 2]
    assert config["concurrency"] == 8
    assert config["duration"] == 0.3
    assert config["warmup"] == 0.1
    assert config["work_ms"] == 1.0
    assert config["hold"] is True
    env = doc["environment"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["sqlite"] == sqlite3.sqlite_version
    assert env["server"]["kind"] == "SQLite"
    assert [r["label"] for r in doc["results"]] == ["no pool", "1", "2"]
    assert [r["size"] for r in doc["results"]] == [None, 1, 2]
    for r in doc["results"]:
        for key in ("req_per_s", "p50_ms", "p95_ms", "p99_ms", "p99_wait_ms"):
            assert isinstance(r[key], float), (key, r)
        assert r["requests"] > 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["timeouts"] == 0
        assert r["errors"] == 0
    rec = doc["recommendation"]
    assert rec["size"] in (1, 2)
    assert rec["best_size"] in (1, 2)
    assert rec["reason"]
    assert doc["hikari"]["size"] == doc["hikari"]["cores"] * 2 + doc["hikari"]["spindles"]
    # The user's database keeps its own tables and loses the benchmark's.
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"mine"}


def test_bench_csv_auto_sizes_and_query() -> None:
    args = ["--sizes", "auto", "--concurrency", "4", "--duration", "0.2", "--warmup", "0"]
    query = ["--query", "SELECT count(*) FROM tidepool_bench_accounts WHERE id < 100"]
    result = tidepool_cmd("bench", *args, *query, "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["label"] == "no pool"
    assert rows[0]["size"] == ""
    sizes = [int(r["size"]) for r in rows[1:]]
    assert sizes[0] == 1
    assert sizes == [2**i for i in range(len(sizes))]
    assert max(sizes) <= 4  # auto stops at --concurrency
    assert sum(r["recommended"] == "True" for r in rows) == 1
    assert all(int(r["requests"]) > 0 for r in rows)


def test_bench_plot(tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    result = tidepool_cmd("bench", *QUICK, "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:
        line = assert_one_line_error(result, 2)
        assert "pip install 'tidepool[cli]'" in line
        assert not png.exists()
    else:  # pragma: no cover - matplotlib is not installed here
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--sizes", "0,x"],
        ["--sizes", "1,,2"],
        ["--sizes", "autox"],
        ["--sizes"],
        ["--duration", "-1"],
        ["--duration", "0"],
        ["--duration", "nan"],
        ["--warmup", "-0.5"],
        ["--concurrency", "0"],
        ["--concurrency", "many"],
        ["--instances", "0"],
        ["--work-ms", "-1"],
        ["--workload", "nope"],
        ["--query", " "],
        ["--format", "xml"],
        ["--nope"],
    ],
)
def test_bench_bad_arguments(args: list[str]) -> None:
    assert_one_line_error(tidepool_cmd("bench", *args), 2)


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://:s3cret@localhost",
        "app.db",
        "postgresql://app:s3cret@localhost:5432/app?sslmod=x",
    ],
)
def test_bench_unusable_url(url: str) -> None:
    result = tidepool_cmd("bench", url, *QUICK)
    assert_one_line_error(result, 2)
    assert "s3cret" not in result.stderr


def test_bench_unopenable_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'missing' / 'dir' / 'app.db').as_posix()}"
    result = tidepool_cmd("bench", url, *QUICK)
    assert result.returncode not in (0, 2)
    assert_one_line_error(result, result.returncode)


def test_bench_unreachable_postgres() -> None:
    url = f"postgresql://app:s3cret@127.0.0.1:{unused_port()}/app"
    result = tidepool_cmd("bench", url, *QUICK)
    line = assert_one_line_error(result, 3)
    assert "connection refused" in line
    assert "s3cret" not in result.stderr


def test_version() -> None:
    result = tidepool_cmd("version")
    assert result.returncode == 0
    assert result.stdout.strip() == tidepool.__version__


def test_help_documents_exit_codes() -> None:
    for command in ("bench", "check"):
        result = tidepool_cmd(command, "--help")
        assert result.returncode == 0
        assert "exit codes:" in result.stdout
        for code in ("0", "2", "3", "4", "5", "6", "7"):
            assert re.search(rf"^\s+{code}\s+\w", result.stdout, re.M), (command, code)


# ---------------------------------------------------------------------- PostgreSQL


def test_bench_postgres_json() -> None:
    from pg_helpers import admin, require_pg

    require_pg()
    url = "postgresql://postgres@127.0.0.1:5432/test"
    args = ["--workload", "point-select", "--format", "json"]
    result = tidepool_cmd("bench", url, *QUICK, *args)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    doc = json.loads(result.stdout)
    validate(doc, bench_schema())
    assert doc["config"]["driver"] == "asyncpg"
    server = doc["environment"]["server"]
    assert server["kind"] == "PostgreSQL"
    with admin() as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        assert row is not None
        assert server["max_connections"] == int(row[0])
        table = doc["config"]["table"]
        assert table.startswith("tidepool_bench_")
        left = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE %s", (f"{table}%",)
        ).fetchone()
        assert left == (0,)  # dropped at the end
    conn.close()
    by_size = {r["size"]: r for r in doc["results"]}
    assert set(by_size) == {None, 1, 2}
    for size in (1, 2):
        assert by_size[size]["requests"] > 0
        assert by_size[size]["errors"] == 0
        assert 1 <= by_size[size]["server_connections"] <= size


def test_bench_postgres_psycopg_read_write_table() -> None:
    from pg_helpers import require_pg

    require_pg()
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/test"
    result = tidepool_cmd("bench", url, *QUICK, "--workload", "read-write", "--instances", "2")
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    assert "s3cret" not in result.stdout
    assert "via psycopg" in result.stdout
    rows = table_rows(result.stdout)
    assert set(rows) == {"no pool", "1", "2"}
    assert rows["2"][7] != "-"
    assert int(rows["2"][7] or 0) <= 4  # 2 instances x size 2
    assert "errors" not in result.stdout


# ---------------------------------------------------------------------- the helpers


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([], 50) is None


def result(size: int | None, rps: float, p99: float, timeouts: int = 0) -> SizeResult:
    return SizeResult(
        label="no pool" if size is None else str(size),
        size=size,
        requests=int(rps),
        req_per_s=rps,
        p50_ms=p99 / 2,
        p95_ms=p99,
        p99_ms=p99,
        p99_wait_ms=p99 / 2,
        timeouts=timeouts,
        errors=0,
        first_error=None,
    )


def test_recommend_smallest_size_close_to_the_best() -> None:
    results = [
        result(None, 100, 90),
        result(1, 500, 30),
        result(2, 900, 12),
        result(4, 980, 10.5),
        result(8, 1000, 10),
        result(16, 990, 14),
    ]
    rec = recommend(results)
    assert rec is not None
    assert (rec.size, rec.best_size) == (4, 8)
    assert "98% of the best throughput (size 8)" in rec.reason
    assert "9.8x the no-pool throughput" in rec.reason
    assert "p99 within 10% of size 8's (10.50 ms vs 10.00 ms)" in rec.reason


def test_recommend_rejects_a_much_worse_p99() -> None:
    rec = recommend([result(1, 990, 20), result(2, 1000, 10)])
    assert rec is not None
    assert rec.size == 2
    assert "size 1 had a p99" in rec.reason


def test_recommend_skips_sizes_with_timeouts() -> None:
    rec = recommend([result(1, 1000, 10, timeouts=3), result(2, 990, 10)])
    assert rec is not None
    assert rec.size == 2


def test_recommend_lowest_p99_and_largest_size_hints() -> None:
    rec = recommend([result(1, 970, 9), result(2, 1000, 10)])
    assert rec is not None
    assert rec.size == 1
    assert "with the lowest p99" in rec.reason
    rec = recommend([result(1, 500, 9), result(2, 1000, 10)])
    assert rec is not None
    assert rec.size == 2
    assert "size 1 reached only 50% of it" in rec.reason
    assert "try larger --sizes" in rec.reason


def test_recommend_nothing_measured() -> None:
    assert recommend([]) is None
    empty = SizeResult("1", 1, 0, 0.0, None, None, None, None, 0, 5, "OperationalError: x")
    assert recommend([empty]) is None


def test_auto_sweep_doubles_until_throughput_falls_or_plateaus() -> None:
    assert auto_next([], 64) == 1
    assert auto_next([result(None, 10, 1), result(1, 100, 1)], 64) == 2
    rising = [result(1, 100, 1), result(2, 190, 1), result(4, 300, 1)]
    assert auto_next(rising, 64) == 8
    assert auto_next([*rising, result(8, 250, 1)], 64) is None  # fell
    plateau = [*rising, result(8, 305, 1), result(16, 310, 1)]
    assert auto_next(plateau, 64) is None
    assert auto_next(rising, 4) is None  # the cap
    assert auto_next([result(1, 100, 1), result(2, 190, 1)], 3) == 3


def test_limit_warning() -> None:
    info = ServerInfo("PostgreSQL", "15", True, 2, 100, 3, 11, 86)
    assert limit_warning(10, 8, info) is None  # 80 <= 87
    warning = limit_warning(10, 9, info)
    assert warning is not None
    assert "max_size=10 x 9 instances = 90 connections" in warning
    assert "87 free" in warning
    assert limit_warning(1000, 1, ServerInfo("SQLite", "3", True, 2)) is None


def test_classify_connect_errors() -> None:
    assert classify_connect_error(ConnectionRefusedError(111, "refused")) == (
        3,
        "connection refused",
    )
    assert classify_connect_error(TimeoutError())[0] == 6
    exc = OSError("x")
    exc.__cause__ = type("E", (Exception,), {"sqlstate": "28P01"})("bad password")
    assert classify_connect_error(exc)[0] == 4


def test_schema_validator_catches_mistakes() -> None:
    schema = bench_schema()
    assert errors({"schema_version": 2}, schema)
    doc = {"schema_version": 3}
    assert any("!= 2" in e for e in errors(doc, schema))
