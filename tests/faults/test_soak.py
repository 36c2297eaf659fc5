"""A short soak run (``tests/faults/soak.py``), so that ``make test`` covers its machinery:
the workload, the fault injector, the invariant checker and the report.

It runs the soak as a subprocess for 8 s (with a fast restart early enough to happen) and
reads its JSON report: operations and faults happened, nothing was violated or leaked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .pgcluster import PG_BIN, require_binary

SOAK = Path(__file__).with_name("soak.py")
SECONDS = 8


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 150)
def test_short_soak_runs_clean(tmp_path: Path) -> None:
    require_binary(PG_BIN / "postgres", "PostgreSQL 15 (postgres)")
    require_binary(PG_BIN / "initdb", "PostgreSQL 15 (initdb)")
    require_binary(PG_BIN / "pg_ctl", "PostgreSQL 15 (pg_ctl)")
    report_path = tmp_path / "soak.json"
    env = {
        **os.environ,
        "SOAK_SECONDS": str(SECONDS),
        "SOAK_RESTART_EVERY": "4",
        "SOAK_SEED": os.environ.get("SOAK_SEED", "4242"),
        "SOAK_JSON": str(report_path),
    }
    done = subprocess.run(
        [sys.executable, str(SOAK)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SECONDS + 140,
        check=False,
    )
    output = done.stdout + done.stderr
    assert report_path.exists(), f"no report written (exit {done.returncode}):\n{output}"
    report = json.loads(report_path.read_text())
    assert done.returncode == 0, output
    assert report["ok"] is True, output
    assert report["operations"]["total"] > 0, output
    for pool in ("asyncpg", "psycopg-async", "psycopg-sync"):
        assert report["operations"][pool] > 0, output
    assert report["faults"]["total"] > 0, output
    assert report["invariant_violations"] == 0, output
    assert report["correctness_violations"] == 0, output
    assert report["connections_leaked"] == 0, output
    assert report["resource_warnings"] == 0, output
