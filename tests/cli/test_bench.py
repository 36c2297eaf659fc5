"""``tidepool bench`` and ``tidepool version``, run as the real command (a subprocess).

No assertion here is about speed: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tidepool
from tidepool.cli.bench import SizeResult, percentile, recommend

QUICK = ["--duration", "0.3", "--warmup", "0.1", "--sizes", "1,2", "--concurrency", "8"]
ROW = re.compile(r"^(no pool|\d+)\s+(\d+)\s+([\d.]+|-)\s+([\d.]+|-)\s+([\d.]+|-)\s+(\d+)$")


def tidepool_cmd(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    # -W default: any warning the command emits is printed, so the tests can see it.
    return subprocess.run(
        [sys.executable, "-W", "default", "-m", "tidepool.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "Warning" not in stderr
    assert "measuring" not in stderr  # progress only when stderr is a terminal


def table_rows(stdout: str) -> dict[str, tuple[str, ...]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.groups()
    return rows


# ---------------------------------------------------------------------- the command


def test_bench_table() -> None:
    result = tidepool_cmd("bench", *QUICK)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("size"))
    assert header.split() == ["size", "req/s", "p50", "ms", "p99", "ms", "p99", "wait", "ms",
                              "timeouts"]  # fmt: skip
    rows = table_rows(result.stdout)
    assert set(rows) == {"no pool", "1", "2"}
    for label, cells in rows.items():
        assert int(cells[1]) > 0, f"{label}: no request completed"
        assert cells[2] != "-"
    recommended = [line for line in lines if line.startswith("recommended")]
    assert len(recommended) == 1
    match = re.fullmatch(r"recommended: max_size=(\d+)", recommended[0])
    assert match is not None, recommended[0]
    assert match.group(1) in {"1", "2"}
    why = lines[lines.index(recommended[0]) + 1]
    assert why.startswith(f"why: size {match.group(1)}: ")


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
    assert set(doc) >= {"schema_version", "config", "environment", "results", "recommendation"}
    config = doc["config"]
    assert config["url"] == url
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
    assert isinstance(env["cpu_count"], int)
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
    assert isinstance(rec["reason"], str)
    assert rec["reason"]
    # The user's database keeps its own tables and loses the benchmark's.
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"mine"}


@pytest.mark.parametrize(
    "args",
    [
        ["--sizes", "0,x"],
        ["--sizes", "1,,2"],
        ["--sizes", "auto"],
        ["--sizes"],
        ["--duration", "-1"],
        ["--duration", "0"],
        ["--duration", "nan"],
        ["--warmup", "-0.5"],
        ["--concurrency", "0"],
        ["--concurrency", "many"],
        ["--work-ms", "-1"],
        ["--workload", "nope"],
        ["--format", "xml"],
        ["--nope"],
    ],
)
def test_bench_bad_arguments(args: list[str]) -> None:
    result = tidepool_cmd("bench", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]


@pytest.mark.parametrize(
    "url",
    ["postgresql://app:s3cret@localhost:5432/app", "redis://localhost", "app.db"],
)
def test_bench_unsupported_url(url: str) -> None:
    result = tidepool_cmd("bench", url, *QUICK)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "only SQLite is supported" in lines[0]
    assert "s3cret" not in result.stderr


def test_bench_unopenable_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'missing' / 'dir' / 'app.db').as_posix()}"
    result = tidepool_cmd("bench", url, *QUICK)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_version() -> None:
    result = tidepool_cmd("version")
    assert result.returncode == 0
    assert result.stdout.strip() == tidepool.__version__


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
