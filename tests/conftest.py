"""Shared test configuration.

Tests that need a real database server call :func:`require_server`: on a laptop without the
server they skip with a clear reason; with ``CI=true`` a missing server is a failure.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import close_tracked_sync_pools

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_server(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (in CI) unless ``host:port`` accepts TCP connections."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc})"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _close_tracked_pools() -> Iterator[None]:
    """Close pools made by ``fakes.new_spool`` even when a test fails half-way."""
    yield
    close_tracked_sync_pools()
