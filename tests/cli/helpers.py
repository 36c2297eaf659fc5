"""Running the real ``tidepool`` command in a subprocess, and what its output must satisfy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from tidepool.cli.render import SCHEMA_PATH


def tidepool_cmd(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # -W default: any warning the command emits is printed, so the tests can see it.
    return subprocess.run(
        [sys.executable, "-W", "default", "-m", "tidepool.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "Warning" not in stderr
    assert "measuring" not in stderr  # progress only when stderr is a terminal
    assert "\x1b[" not in stderr


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    return lines[0]


def bench_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def unused_port() -> int:
    """A localhost TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
