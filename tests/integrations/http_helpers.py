"""Serve an ASGI application with real uvicorn on a free loopback port, and drive it with
httpx.

:func:`serve` runs uvicorn in a thread with its own event loop (the application's pool lives
in that loop) on a socket bound to ``127.0.0.1:0`` by the test itself, so there is no race for
a port. On exit, even when the test failed, the server is asked to stop gracefully
(``should_exit``), which runs the application's lifespan shutdown, and the thread is joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

import tidepool
from pg_helpers import admin, pg_url

# Generous bounds: a loaded 2-core machine. They turn a hang into a failure, nothing more.
STARTUP_BOUND = 30.0
SHUTDOWN_BOUND = 30.0
_lock_keys = itertools.count((os.getpid() << 16) + 1)  # unique across test processes


@dataclass
class Served:
    """A running server: its base URL and the uvicorn server object."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread


class StartupFailed(RuntimeError):
    """uvicorn stopped before it started serving (the lifespan startup failed)."""


@contextlib.contextmanager
def serve(app: Any, *, graceful_timeout: int = 10) -> Iterator[Served]:
    """Serve ``app`` with uvicorn in a thread until the block ends.

    Raises:
        StartupFailed: the server stopped during startup (e.g. the lifespan raised; uvicorn
            logs the cause on ``uvicorn.error``).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            http="h11",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=graceful_timeout,
        )
        server = uvicorn.Server(config)

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except SystemExit:  # uvicorn's way of reporting a failed startup
                pass

        thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + STARTUP_BOUND
            while not server.started:
                if not thread.is_alive():
                    raise StartupFailed("uvicorn stopped during startup (see uvicorn.error)")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"uvicorn did not start within {STARTUP_BOUND} s")
                time.sleep(0.01)
            yield Served(f"http://127.0.0.1:{port}", server, thread)
        finally:
            server.should_exit = True
            thread.join(SHUTDOWN_BOUND)
            if thread.is_alive():
                server.force_exit = True
                thread.join(SHUTDOWN_BOUND)
            assert not thread.is_alive(), "uvicorn did not shut down"
    finally:
        sock.close()


def client(base_url: str, *, max_connections: int = 50, timeout: float = 30.0) -> httpx.AsyncClient:
    """An httpx client for one server, with up to ``max_connections`` concurrent requests."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections),
    )


async def gather_limited(
    count: int, concurrency: int, request: Callable[[int], Awaitable[httpx.Response]]
) -> list[httpx.Response]:
    """Run ``request(i)`` for ``i in range(count)``, at most ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> httpx.Response:
        async with gate:
            return await request(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str
) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def stats_consistent(stats: dict[str, Any]) -> None:
    """design.md section 7's invariants, on a ``PoolStats`` rendered as JSON."""
    assert stats["size"] == stats["idle"] + stats["in_use"] + stats["connecting"], stats
    assert stats["size"] <= stats["max_size"], stats


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound by us, never listening, so nothing
    else can take it while the block runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def blocked_import(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing ``module`` fails."""
    script = f"import sys\nsys.modules[{module!r}] = None\n{code}\n"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


# ---------------------------------------------------------------------- pools under test


class Pools:
    """Builds the application's pools (one per startup) and remembers them for the test."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.made: list[tidepool.AsyncPool[Any]] = []

    def __call__(self) -> tidepool.AsyncPool[Any]:
        pool: tidepool.AsyncPool[Any] = tidepool.AsyncPool(self.url, **self.options)
        self.made.append(pool)
        return pool

    @property
    def last(self) -> tidepool.AsyncPool[Any]:
        return self.made[-1]


def pg_pools(app: str, **options: Any) -> Pools:
    return Pools(pg_url(app, driver="asyncpg"), name=app, **options)


def activity(app: str) -> list[tuple[str, str]]:
    """(state, query) of every server session of ``app``."""
    with admin() as conn:
        rows = conn.execute(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


@contextlib.contextmanager
def advisory_lock() -> Iterator[int]:
    """Hold a fresh advisory lock in a separate session for the block; yield its key."""
    key = next(_lock_keys)
    with admin() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield key
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def closed(pool: tidepool.AsyncPool[Any]) -> bool:
    return " closed " in repr(pool)
