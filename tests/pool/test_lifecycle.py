"""A pool's life: lazy construction, open, idle and lifetime retirement, check policies,
``try_acquire``, ``stats()``/``repr``, events and logging (LEAK-9, LEAK-10, NET-14)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from fakes import (
    AsyncFakeManager,
    FakeConnection,
    FakeManager,
    settle,
    settle_sync,
    until,
    until_sync,
)
from tidepool import AsyncLease, AsyncPool, Lease, Pool, PoolListener, PoolStats, PoolTimeout

# ---------------------------------------------------------------- helpers


class Recorder(PoolListener):
    """Records every event with its arguments and the time it arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...], float]] = []
        self.lock = threading.Lock()

    def _add(self, kind: str, *args: Any) -> None:
        with self.lock:
            self.events.append((kind, args, time.monotonic()))

    def on_connect(self, pool: str, connection_id: int, seconds: float) -> None:
        self._add("connect", pool, connection_id, seconds)

    def on_connect_failed(self, pool: str, error: BaseException) -> None:
        self._add("connect_failed", pool, error)

    def on_acquire(self, pool: str, connection_id: int, wait_seconds: float) -> None:
        self._add("acquire", pool, connection_id, wait_seconds)

    def on_release(self, pool: str, connection_id: int, use_seconds: float) -> None:
        self._add("release", pool, connection_id, use_seconds)

    def on_timeout(self, pool: str, phase: str) -> None:
        self._add("timeout", pool, phase)

    def on_close(self, pool: str, connection_id: int, reason: str) -> None:
        self._add("close", pool, connection_id, reason)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [args for k, args, _t in self.events if k == kind]

    def closes(self, reason: str) -> list[tuple[int, float]]:
        with self.lock:
            return [(a[1], t) for k, a, t in self.events if k == "close" and a[2] == reason]


class Exploding(PoolListener):
    """A listener whose every callback raises."""

    def __init__(self) -> None:
        self.calls = 0

    def _boom(self, *args: Any) -> None:
        self.calls += 1
        raise RuntimeError("listener exploded (fake)")

    on_connect = on_acquire = on_release = on_timeout = on_close = _boom  # type: ignore[assignment]


# ---------------------------------------------------------------- lazy construction, open


def test_construction_is_lazy_async() -> None:
    manager = AsyncFakeManager()
    pool = AsyncPool(manager, max_size=4, min_size=2)  # outside any event loop: no I/O
    time.sleep(0.05)
    assert manager.calls == {"connect": 0, "check": 0, "reset": 0, "close": 0}
    assert pool.stats().size == 0
    assert "not opened" in repr(pool)

    async def main() -> None:
        try:
            await asyncio.sleep(0.05)
            assert manager.calls["connect"] == 0
            async with pool.acquire() as conn:  # opens itself on first use
                assert isinstance(conn, FakeConnection)
            await until(lambda: pool.stats().size == 2)  # and keeps min_size
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_construction_is_lazy_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=4, min_size=2)
    try:
        time.sleep(0.05)
        assert manager.calls == {"connect": 0, "check": 0, "reset": 0, "close": 0}
        assert pool.stats().size == 0
        assert "not opened" in repr(pool)
        with pool.acquire() as conn:
            assert isinstance(conn, FakeConnection)
        until_sync(lambda: pool.stats().size == 2)
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_open_fills_to_min_size_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=5, min_size=3)
        try:
            await pool.open()
            s = pool.stats()
            assert s.size == 3
            assert s.idle == 3
            assert s.connects == 3
            assert manager.opened == 3
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_open_verifies_one_connection_with_min_size_zero_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=5)
        try:
            await pool.open()
            s = pool.stats()
            assert s.size == 1
            assert manager.opened == 1
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_open_fills_to_min_size_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=5, min_size=3)
    try:
        pool.open()
        s = pool.stats()
        assert s.size == 3
        assert s.idle == 3
        assert s.connects == 3
        settle_sync(pool, manager)
        pool2 = Pool(FakeManager(), max_size=5)
        try:
            pool2.open()
            assert pool2.stats().size == 1  # min_size 0: one connection verifies the target
        finally:
            pool2.close()
    finally:
        pool.close()


# ---------------------------------------------------------------- idle_timeout


def test_idle_timeout_shrinks_to_min_size_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        rec = Recorder()
        pool = AsyncPool(manager, max_size=4, min_size=1, idle_timeout=0.2, listeners=[rec])
        try:
            conns = [await pool.acquire() for _ in range(4)]
            for conn in conns:
                await pool.release(conn)
            assert pool.stats().size == 4
            await until(lambda: pool.stats().size == 1)
            await settle(pool, manager)
            assert len(rec.closes("idle")) == 3
            await asyncio.sleep(0.4)  # never below min_size
            assert pool.stats().size == 1
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_idle_timeout_shrinks_to_min_size_sync() -> None:
    manager = FakeManager()
    rec = Recorder()
    pool = Pool(manager, max_size=4, min_size=1, idle_timeout=0.2, listeners=[rec])
    try:
        conns = [pool.getconn() for _ in range(4)]
        for conn in conns:
            pool.release(conn)
        assert pool.stats().size == 4
        until_sync(lambda: pool.stats().size == 1)
        settle_sync(pool, manager)
        assert len(rec.closes("idle")) == 3
        time.sleep(0.4)
        assert pool.stats().size == 1
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_idle_timeout_spares_lent_connections_sync() -> None:
    """LEAK-9: a borrow longer than idle_timeout survives; the idle clock starts at release."""
    manager = FakeManager()
    pool = Pool(manager, max_size=2, idle_timeout=0.15)
    try:
        with pool.acquire() as conn:
            time.sleep(0.5)
            assert not conn.closed
        assert not conn.closed
        assert pool.stats().idle == 1
        until_sync(lambda: conn.closed)  # ...and then it idles out
        settle_sync(pool, manager)
        assert pool.stats().size == 0
    finally:
        pool.close()


# ---------------------------------------------------------------- max_lifetime


def test_max_lifetime_retires_connections_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        rec = Recorder()
        pool = AsyncPool(
            manager, max_size=2, min_size=2, max_lifetime=0.4, idle_timeout=None, listeners=[rec]
        )
        try:
            await pool.open()
            first = set(manager.live)
            await until(lambda: all(c.closed for c in first))
            await until(lambda: pool.stats().size == 2)  # replaced in the background
            await settle(pool, manager)
            assert not first & manager.live
            assert len(rec.closes("lifetime")) >= 2
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_max_lifetime_enforced_at_acquire_sync() -> None:
    """LEAK-10: a connection past its lifetime is not lent, even straight from the idle list."""
    manager = FakeManager()
    pool = Pool(manager, max_size=1, max_lifetime=0.3, idle_timeout=None)
    try:
        with pool.acquire() as first:
            pass
        time.sleep(0.45)
        with pool.acquire(timeout=5) as second:
            assert second is not first
        settle_sync(pool, manager)
        assert first.closed
    finally:
        pool.close()


def lifetime_scenario_checks(
    rec: Recorder, drops: list[int], lifetime: float, min_size: int, born: dict[int, float]
) -> None:
    retired = rec.closes("lifetime")
    assert len(retired) == min_size, retired
    # Never retired before 95 % of the lifetime (the jitter is negative, at most 5 %).
    for cid, at in retired:
        assert at - born[cid] >= 0.95 * lifetime - 0.02, (cid, at - born[cid])
    times = sorted(at for _cid, at in retired)
    assert times[-1] - times[0] >= 0.01, times  # spread out, not one instant
    batches = [d for d in drops if d > 0]
    assert len(batches) >= 3, batches  # retired over several sweeps...
    assert max(batches) <= min_size // 2, batches  # ...so the pool never drops by half


def test_max_lifetime_jitter_spreads_retirement_async() -> None:
    """NET-14: ten connections born together are not all retired (and reopened) at once.

    The automatic maintenance tick is lifetime/4, coarser than the 5 % jitter window at test
    sizes, so this test drives ``maintain()`` itself every few milliseconds to observe when each
    connection becomes due.
    """
    lifetime = 2.5

    async def main() -> None:
        manager = AsyncFakeManager()
        rec = Recorder()
        pool = AsyncPool(
            manager,
            max_size=10,
            min_size=10,
            max_lifetime=lifetime,
            idle_timeout=None,
            check="never",
            listeners=[rec],
        )
        try:
            await pool.open()
            born = {args[1]: t for k, args, t in rec.events if k == "connect"}
            assert len(born) == 10
            drops: list[int] = []
            deadline = time.monotonic() + lifetime + 5
            while len(rec.closes("lifetime")) < 10:
                assert time.monotonic() < deadline, rec.closes("lifetime")
                before = pool.stats().size
                pool.maintain()
                drops.append(before - pool.stats().size)
                await asyncio.sleep(0.004)
            lifetime_scenario_checks(rec, drops, lifetime, 10, born)
            await until(lambda: pool.stats().size == 10)  # refilled in the background
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_max_lifetime_jitter_spreads_retirement_sync() -> None:
    lifetime = 2.5
    manager = FakeManager()
    rec = Recorder()
    pool = Pool(
        manager,
        max_size=10,
        min_size=10,
        max_lifetime=lifetime,
        idle_timeout=None,
        check="never",
        listeners=[rec],
    )
    try:
        pool.open()
        born = {args[1]: t for k, args, t in rec.events if k == "connect"}
        assert len(born) == 10
        drops: list[int] = []
        deadline = time.monotonic() + lifetime + 5
        while len(rec.closes("lifetime")) < 10:
            assert time.monotonic() < deadline, rec.closes("lifetime")
            before = pool.stats()
            pool.maintain()
            after = pool.stats()
            # count only retirements (connects finishing meanwhile add to size)
            drops.append(max(0, before.size - after.size + (after.connects - before.connects)))
            time.sleep(0.004)
        lifetime_scenario_checks(rec, drops, lifetime, 10, born)
        until_sync(lambda: pool.stats().size == 10)
        settle_sync(pool, manager)
    finally:
        pool.close()


# ---------------------------------------------------------------- check policies


async def _checks_async(policy: str) -> list[int]:
    """Check calls after: first acquire, an immediate reacquire, a reacquire after 0.7 s idle."""
    manager = AsyncFakeManager()
    pool = AsyncPool(manager, max_size=1, check=policy, check_idle_after=0.5)  # type: ignore[arg-type]
    counts = []
    try:
        async with pool.acquire() as first:
            pass
        counts.append(manager.calls["check"])
        async with pool.acquire() as again:
            assert again is first
        counts.append(manager.calls["check"])
        await asyncio.sleep(0.7)
        async with pool.acquire() as later:
            assert later is first
        counts.append(manager.calls["check"])
        await settle(pool, manager)
    finally:
        await pool.aclose()
    return counts


def _checks_sync(policy: str) -> list[int]:
    manager = FakeManager()
    pool = Pool(manager, max_size=1, check=policy, check_idle_after=0.5)  # type: ignore[arg-type]
    counts = []
    try:
        with pool.acquire() as first:
            pass
        counts.append(manager.calls["check"])
        with pool.acquire() as again:
            assert again is first
        counts.append(manager.calls["check"])
        time.sleep(0.7)
        with pool.acquire() as later:
            assert later is first
        counts.append(manager.calls["check"])
        settle_sync(pool, manager)
    finally:
        pool.close()
    return counts


def test_check_policies_async() -> None:
    async def main() -> None:
        results = await asyncio.gather(*(_checks_async(p) for p in ("never", "always", "idle")))
        never, always, idle = results
        assert never == [0, 0, 0]
        assert always == [1, 2, 3]
        assert idle == [0, 0, 1]

    asyncio.run(main())


def test_check_policies_sync() -> None:
    results: dict[str, list[int]] = {}

    def run(policy: str) -> None:
        results[policy] = _checks_sync(policy)

    threads = [threading.Thread(target=run, args=(p,)) for p in ("never", "always", "idle")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"never": [0, 0, 0], "always": [1, 2, 3], "idle": [0, 0, 1]}


# ---------------------------------------------------------------- try_acquire


def test_try_acquire_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, check="never")
        try:
            assert pool.try_acquire() is None  # empty, never opened: no connect
            assert manager.calls["connect"] == 0
            await pool.open()
            resets = manager.calls["reset"]
            lease = pool.try_acquire()
            assert isinstance(lease, AsyncLease)
            async with lease as conn:
                assert isinstance(conn, FakeConnection)
                assert pool.stats().in_use == 1
                assert pool.try_acquire() is None  # nothing idle: no wait, no connect
                assert manager.calls["connect"] == 1
            assert pool.stats().idle == 1
            assert manager.calls["reset"] == resets + 1  # returned like any other lease
            await settle(pool, manager)
        finally:
            await pool.aclose()
        assert pool.try_acquire() is None

    asyncio.run(main())


def test_try_acquire_refuses_connection_needing_check_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, check="always")
        try:
            await pool.open()
            assert pool.stats().idle == 1
            assert pool.try_acquire() is None  # a check is I/O
            assert manager.calls["check"] == 1  # only the one open() did
            await settle(pool, manager)
        finally:
            await pool.aclose()

    asyncio.run(main())


def test_try_acquire_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, check="never")
    try:
        assert pool.try_acquire() is None
        assert manager.calls["connect"] == 0
        pool.open()
        lease = pool.try_acquire()
        assert isinstance(lease, Lease)
        with lease as conn:
            assert isinstance(conn, FakeConnection)
            assert pool.stats().in_use == 1
            assert pool.try_acquire() is None
            assert manager.calls["connect"] == 1
        assert pool.stats().idle == 1
        settle_sync(pool, manager)
    finally:
        pool.close()
    assert pool.try_acquire() is None


# ---------------------------------------------------------------- stats and repr


def test_stats_and_repr_async() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = AsyncPool(manager, max_size=2, min_size=1, name="stats-pool")
        try:
            await pool.open()
            a = await pool.acquire()
            b = await pool.acquire()
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=0.05)
            s = pool.stats()
            assert isinstance(s, PoolStats)
            assert s.name == "stats-pool"
            assert (s.size, s.idle, s.in_use, s.connecting, s.waiting) == (2, 0, 2, 0, 0)
            assert (s.max_size, s.min_size) == (2, 1)
            assert s.acquired == 3  # open() borrowed one to verify it
            assert s.timeouts == 1
            assert s.waited >= 2
            assert s.connects == 2
            assert s.connect_errors == 0
            assert s.closed == 0
            text = repr(pool)
            assert "stats-pool" in text
            assert "size=2/2" in text
            assert "in_use=2" in text
            assert "open" in text
            await pool.release(a)
            b.broken = True
            await pool.release(b)
            await settle(pool, manager)
            s = pool.stats()
            assert (s.size, s.idle, s.in_use) == (1, 1, 0)
            assert s.closed == 1
            assert "idle=1" in repr(pool)
            with pytest.raises(AttributeError):
                s.size = 5  # type: ignore[misc]
        finally:
            await pool.aclose()
        assert "closed" in repr(pool)

    asyncio.run(main())


def test_stats_and_repr_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=2, min_size=1, name="stats-pool")
    try:
        pool.open()
        a = pool.getconn()
        b = pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        s = pool.stats()
        assert s.name == "stats-pool"
        assert (s.size, s.idle, s.in_use, s.connecting, s.waiting) == (2, 0, 2, 0, 0)
        assert (s.max_size, s.min_size) == (2, 1)
        assert s.acquired == 3
        assert s.timeouts == 1
        assert s.connects == 2
        assert s.closed == 0
        text = repr(pool)
        assert "stats-pool" in text
        assert "size=2/2" in text
        pool.release(a)
        b.broken = True
        pool.release(b)
        settle_sync(pool, manager)
        s = pool.stats()
        assert (s.size, s.idle, s.in_use) == (1, 1, 0)
        assert s.closed == 1
    finally:
        pool.close()
    assert "closed" in repr(pool)


def test_stats_counts_waiting_callers_sync() -> None:
    manager = FakeManager()
    pool = Pool(manager, max_size=1)
    try:
        held = pool.getconn()
        threads = [threading.Thread(target=lambda: pool.release(pool.getconn())) for _ in range(3)]
        for t in threads:
            t.start()
        until_sync(lambda: pool.stats().waiting == 3)
        assert "waiting=3" in repr(pool)
        pool.release(held)
        for t in threads:
            t.join(10)
        s = pool.stats()
        assert s.waiting == 0
        assert s.acquired == 4
        settle_sync(pool, manager)
    finally:
        pool.close()


# ---------------------------------------------------------------- events


def _assert_events(rec: Recorder, name: str) -> None:
    for kind in ("connect", "acquire", "release", "timeout", "close"):
        assert rec.of(kind), kind
        assert all(args[0] == name for args in rec.of(kind)), kind
    connected = {args[1] for args in rec.of("connect")}
    assert {args[1] for args in rec.of("acquire")} <= connected
    assert {args[1] for args in rec.of("release")} <= connected
    assert [args[1] for args in rec.of("timeout")] == ["wait"]
    reasons = {args[2] for args in rec.of("close")}
    assert {"idle", "pool closed"} <= reasons, reasons
    assert all(args[2] >= 0 for args in rec.of("acquire"))  # wait seconds
    assert any(args[2] >= 0.05 for args in rec.of("release"))  # the long borrow was measured


def test_listener_events_async(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        rec, bad = Recorder(), Exploding()
        pool = AsyncPool(
            manager, max_size=1, idle_timeout=0.2, name="events-pool", listeners=[bad, rec]
        )
        try:
            async with pool.acquire():
                with pytest.raises(PoolTimeout):
                    await pool.acquire(timeout=0)
                await asyncio.sleep(0.06)
            await until(lambda: bool(rec.closes("idle")))
            async with pool.acquire() as conn:
                assert not conn.closed
            await settle(pool, manager)
        finally:
            await pool.aclose()
        _assert_events(rec, "events-pool")
        assert bad.calls >= 6  # it was called, raised every time, and changed nothing
        assert manager.live == set()

    asyncio.run(main())
    assert any("listener" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_listener_events_sync(caplog: pytest.LogCaptureFixture) -> None:
    manager = FakeManager()
    rec, bad = Recorder(), Exploding()
    pool = Pool(manager, max_size=1, idle_timeout=0.2, name="events-pool", listeners=[bad, rec])
    try:
        with pool.acquire():
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0)
            time.sleep(0.06)
        until_sync(lambda: bool(rec.closes("idle")))
        with pool.acquire() as conn:
            assert not conn.closed
        settle_sync(pool, manager)
    finally:
        pool.close()
    _assert_events(rec, "events-pool")
    assert bad.calls >= 6
    assert manager.live == set()
    assert any("listener" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


# ---------------------------------------------------------------- logging


def test_lifecycle_logged_at_info_async(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")

    async def main() -> None:
        async with AsyncPool(AsyncFakeManager(), max_size=1, name="logged-async"):
            pass

    asyncio.run(main())
    mine = [
        r
        for r in caplog.records
        if r.name.startswith("tidepool") and "logged-async" in r.getMessage()
    ]
    infos = [r.getMessage() for r in mine if r.levelno == logging.INFO]
    assert any("opened" in m for m in infos), infos
    assert any("closed" in m for m in infos), infos


def test_lifecycle_logged_at_info_sync(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidepool")
    with Pool(FakeManager(), max_size=1, name="logged-sync"):
        pass
    mine = [
        r
        for r in caplog.records
        if r.name.startswith("tidepool") and "logged-sync" in r.getMessage()
    ]
    infos = [r.getMessage() for r in mine if r.levelno == logging.INFO]
    assert any("opened" in m for m in infos), infos
    assert any("closed" in m for m in infos), infos
