"""Fake managers for pool tests: no database, every behaviour switchable at run time.

``AsyncFakeManager`` (for ``AsyncPool``) and ``FakeManager`` (for ``Pool``) share one
:class:`Behaviour`. Each of ``connect``, ``check``, ``reset`` and ``close`` can be told to:

- ``"ok"``: succeed (after ``delay`` seconds, if set);
- ``"fail"``: raise ``FakeError`` (transient for connect);
- ``"permanent"``: (connect only) raise ``tidepool.ConnectError``;
- ``"hang"``: block until ``release_hangs()`` (async: an Event; sync: a threading.Event);
- ``"none"``: (connect only) return ``None``.

Set ``behaviour.connect = "fail"`` etc.; ``fail_next(op, n)`` makes only the next ``n`` calls
fail. The manager keeps the set of *live* connections (opened, not closed), the analogue of the
server-side session count that the invariant checker compares with ``pool.stats().size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import tidepool
from tidepool import ConnectError

_ids = itertools.count(1)


class FakeError(Exception):
    """A transient failure of the fake database."""


class FakeConnection:
    """A fake connection: an id, a closed flag and a 'dirty' flag (an open transaction)."""

    def __init__(self) -> None:
        self.id = next(_ids)
        self.closed = False
        self.dirty = False
        self.broken = False
        self.uses = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<FakeConnection #{self.id} {state}>"


@dataclass
class Behaviour:
    connect: str = "ok"
    check: str = "ok"
    reset: str = "ok"
    close: str = "ok"
    connect_delay: float = 0.0
    check_delay: float = 0.0
    reset_delay: float = 0.0
    close_delay: float = 0.0
    fail_counts: dict[str, int] = field(default_factory=dict)

    def fail_next(self, op: str, n: int = 1) -> None:
        self.fail_counts[op] = self.fail_counts.get(op, 0) + n

    def mode(self, op: str) -> str:
        left = self.fail_counts.get(op, 0)
        if left > 0:
            self.fail_counts[op] = left - 1
            return "fail"
        mode: str = getattr(self, op)
        return mode


class _Books:
    """What happened: counts per operation and the live connections."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.live: set[FakeConnection] = set()
        self.calls: dict[str, int] = {"connect": 0, "check": 0, "reset": 0, "close": 0}
        self.opened = 0
        self.lock = threading.Lock()

    def count(self, op: str) -> None:
        with self.lock:
            self.calls[op] += 1

    def opened_conn(self) -> FakeConnection:
        conn = FakeConnection()
        with self.lock:
            self.live.add(conn)
            self.opened += 1
        return conn

    def closed_conn(self, conn: FakeConnection) -> None:
        conn.closed = True
        with self.lock:
            self.live.discard(conn)

    def is_broken(self, conn: FakeConnection) -> bool:
        return conn.closed or conn.broken


class AsyncFakeManager(_Books):
    """Async fake manager for ``AsyncPool``."""

    def __init__(self) -> None:
        super().__init__()
        self._unhang = asyncio.Event()

    def release_hangs(self) -> None:
        self._unhang.set()

    async def _act(self, op: str, delay: float) -> str:
        self.count(op)
        mode = self.behaviour.mode(op)
        if delay:
            await asyncio.sleep(delay)
        if mode == "hang":
            await self._unhang.wait()
        return mode

    async def connect(self) -> FakeConnection:
        mode = await self._act("connect", self.behaviour.connect_delay)
        if mode == "fail":
            raise FakeError("connection refused (fake)")
        if mode == "permanent":
            raise ConnectError("password authentication failed (fake)") from FakeError("28P01")
        if mode == "none":
            return None  # type: ignore[return-value]
        return self.opened_conn()

    async def check(self, conn: FakeConnection) -> None:
        if await self._act("check", self.behaviour.check_delay) == "fail":
            raise FakeError("check failed (fake)")

    async def reset(self, conn: FakeConnection) -> None:
        if await self._act("reset", self.behaviour.reset_delay) == "fail":
            raise FakeError("reset failed (fake)")
        conn.dirty = False

    async def close(self, conn: FakeConnection) -> None:
        try:
            if await self._act("close", self.behaviour.close_delay) == "fail":
                raise FakeError("close failed (fake)")
        finally:
            self.closed_conn(conn)


class FakeManager(_Books):
    """Blocking fake manager for ``Pool``."""

    def __init__(self) -> None:
        super().__init__()
        self._unhang = threading.Event()

    def release_hangs(self) -> None:
        self._unhang.set()

    def _act(self, op: str, delay: float) -> str:
        self.count(op)
        mode = self.behaviour.mode(op)
        if delay:
            time.sleep(delay)
        if mode == "hang":
            self._unhang.wait()
        return mode

    def connect(self) -> FakeConnection:
        mode = self._act("connect", self.behaviour.connect_delay)
        if mode == "fail":
            raise FakeError("connection refused (fake)")
        if mode == "permanent":
            raise ConnectError("password authentication failed (fake)") from FakeError("28P01")
        if mode == "none":
            return None  # type: ignore[return-value]
        return self.opened_conn()

    def check(self, conn: FakeConnection) -> None:
        if self._act("check", self.behaviour.check_delay) == "fail":
            raise FakeError("check failed (fake)")

    def reset(self, conn: FakeConnection) -> None:
        if self._act("reset", self.behaviour.reset_delay) == "fail":
            raise FakeError("reset failed (fake)")
        conn.dirty = False

    def close(self, conn: FakeConnection) -> None:
        try:
            if self._act("close", self.behaviour.close_delay) == "fail":
                raise FakeError("close failed (fake)")
        finally:
            self.closed_conn(conn)


def check_invariants(pool: Any, manager: _Books | None = None, *, quiet: bool = True) -> None:
    """design.md section 7, for a fake-manager pool.

    Always: ``size <= max_size`` and ``idle + in_use + connecting == size``. With
    ``quiet=True`` (nothing in flight: call it after the scenario settled) also: no waiter is
    queued, and the manager's live connections equal the pool's size (no leaked, no
    double-counted connection).
    """
    s = pool.stats()
    assert s.size <= s.max_size, s
    assert s.idle + s.in_use + s.connecting == s.size, s
    assert min(s.size, s.idle, s.in_use, s.connecting, s.waiting) >= 0, s
    if quiet:
        assert s.waiting == 0, s
        assert s.connecting == 0, s
        if manager is not None:
            live = len(manager.live)
            assert live == s.size, f"manager has {live} live connections, pool counts {s}"


async def settle(pool: Any, manager: _Books | None = None, timeout: float = 5.0) -> None:
    """Wait until background connects/closes finished (async), then check invariants."""
    deadline = time.monotonic() + timeout
    while True:
        s = pool.stats()
        live_ok = manager is None or len(manager.live) == s.size
        if s.connecting == 0 and s.waiting == 0 and live_ok:
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    check_invariants(pool, manager)


def settle_sync(pool: Any, manager: _Books | None = None, timeout: float = 5.0) -> None:
    """Wait until background connects/closes finished (threads), then check invariants."""
    deadline = time.monotonic() + timeout
    while True:
        s = pool.stats()
        live_ok = manager is None or len(manager.live) == s.size
        if s.connecting == 0 and s.waiting == 0 and live_ok:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    check_invariants(pool, manager)


# ---------------------------------------------------------------- test harness helpers


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``pred`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def until_sync(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``pred`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


_tracked_async: list[tidepool.AsyncPool[Any]] = []
_tracked_sync: list[tidepool.Pool[Any]] = []


def new_apool(manager: AsyncFakeManager, **options: Any) -> tidepool.AsyncPool[FakeConnection]:
    """An ``AsyncPool`` that :func:`run` closes even when the scenario fails half-way (an
    unclosed pool would raise a ResourceWarning in whichever later test collects it)."""
    pool: tidepool.AsyncPool[FakeConnection] = tidepool.AsyncPool(manager, **options)
    _tracked_async.append(pool)
    return pool


def new_spool(manager: FakeManager, **options: Any) -> tidepool.Pool[FakeConnection]:
    """A ``Pool`` that the autouse fixture in conftest closes after each test."""
    pool: tidepool.Pool[FakeConnection] = tidepool.Pool(manager, **options)
    _tracked_sync.append(pool)
    return pool


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, closing every pool made by :func:`new_apool` at the end."""

    async def scenario() -> None:
        try:
            await main()
        finally:
            pools = list(_tracked_async)
            _tracked_async.clear()
            for pool in pools:
                with contextlib.suppress(Exception):
                    await pool.aclose(timeout=1)

    asyncio.run(scenario())


def close_tracked_sync_pools() -> None:
    pools = list(_tracked_sync)
    _tracked_sync.clear()
    for pool in pools:
        with contextlib.suppress(Exception):
            pool.close(timeout=1)
