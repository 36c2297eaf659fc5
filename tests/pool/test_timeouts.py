"""Acquire deadlines on ``AsyncPool`` and ``Pool``.

design.md sections 2 and 5 (``acquire_timeout``, ``PoolTimeout.phase``, ``ConnectError``,
``TooManyWaiters``) and reliability.md: TMO-1 (one deadline over wait + connect + check),
LOAD-2 (timed-out waiters leave no trace), LOAD-3 (``max_waiting`` counts live waiters),
LOAD-7 (timeouts never fire early). Elapsed times have a generous upper bound; no assertion
here is about speed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from fakes import (
    AsyncFakeManager,
    FakeConnection,
    FakeError,
    FakeManager,
    new_apool,
    new_spool,
    run,
    settle,
    settle_sync,
    until,
)
from tidepool import (
    AsyncPool,
    ConfigError,
    ConnectError,
    Pool,
    PoolTimeout,
    TooManyWaiters,
)

APool = AsyncPool[FakeConnection]
SPool = Pool[FakeConnection]

SLACK = 0.15  # the most a deadline may be late, per the brief (TMO-1 asks for 0.1 s)


def assert_on_time(elapsed: float, timeout: float, slack: float = SLACK) -> None:
    """Never early (the measured span encloses the pool's own), and at most ``slack`` late."""
    assert elapsed >= timeout - 1e-6, f"fired early: {elapsed:.4f} s < {timeout} s"
    assert elapsed <= timeout + slack, f"fired late: {elapsed:.4f} s > {timeout} + {slack} s"


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


async def aclose(pool: APool, manager: AsyncFakeManager) -> None:
    await settle(pool, manager)
    await pool.aclose()
    assert not manager.live


def close_sync(pool: SPool, manager: FakeManager) -> None:
    settle_sync(pool, manager)
    pool.close()
    assert not manager.live


async def timed_async(pool: APool, **kwargs: Any) -> tuple[BaseException, float]:
    """Try one acquire; return the error it raised and the elapsed time."""
    started = time.monotonic()
    try:
        async with pool.acquire(**kwargs):
            pass
    except Exception as exc:
        return exc, time.monotonic() - started
    raise AssertionError("acquire unexpectedly succeeded")


def timed_sync(pool: SPool, **kwargs: Any) -> tuple[BaseException, float]:
    started = time.monotonic()
    try:
        with pool.acquire(**kwargs):
            pass
    except Exception as exc:
        return exc, time.monotonic() - started
    raise AssertionError("acquire unexpectedly succeeded")


def assert_counts_in_message(error: BaseException, **counts: int) -> None:
    message = str(error)
    for key, value in counts.items():
        assert re.search(rf"\b{key}={value}\b", message), (key, value, message)


# ---------------------------------------------------------------------------- saturated pool


def test_async_saturated_pool_times_out_at_its_deadline() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=2, check="never", acquire_timeout=0.3, name="sat")
        held = [await pool.acquire() for _ in range(2)]
        error, elapsed = await timed_async(pool)
        assert isinstance(error, PoolTimeout)
        assert isinstance(error, TimeoutError)
        assert error.phase == "wait"
        assert_on_time(elapsed, 0.3)
        assert "sat" in str(error)
        assert_counts_in_message(error, in_use=2, idle=0)
        assert_counts_in_message(error, size=2)
        s = pool.stats()
        assert (s.waiting, s.timeouts) == (0, 1)
        for conn in held:
            await pool.release(conn)
        await aclose(pool, manager)

    run(main)


def test_sync_saturated_pool_times_out_at_its_deadline() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=2, check="never", acquire_timeout=0.3, name="sat")
    held = [pool.getconn() for _ in range(2)]
    error, elapsed = timed_sync(pool)
    assert isinstance(error, PoolTimeout)
    assert error.phase == "wait"
    assert_on_time(elapsed, 0.3)
    assert "sat" in str(error)
    assert_counts_in_message(error, in_use=2, idle=0)
    assert_counts_in_message(error, size=2)
    assert pool.stats().waiting == 0
    for conn in held:
        pool.release(conn)
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- timeout=0


def test_async_zero_timeout_fails_at_once_or_lends_an_idle_connection() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never", acquire_timeout=0)
        # Nothing idle (the pool is empty): fail at once, and open nothing.
        error, elapsed = await timed_async(pool)
        assert isinstance(error, PoolTimeout)
        assert elapsed < 1.0
        assert pool.stats().waiting == 0
        # Something idle: lent without waiting.
        async with pool.acquire(timeout=5) as conn:
            held = conn
        async with pool.acquire() as conn:
            assert conn is held
            # Saturated: fail at once.
            error, elapsed = await timed_async(pool)
            assert isinstance(error, PoolTimeout)
            assert error.phase == "wait"
            assert elapsed < 1.0
        await aclose(pool, manager)

    run(main)


def test_sync_zero_timeout_fails_at_once_or_lends_an_idle_connection() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1, check="never")
    error, elapsed = timed_sync(pool, timeout=0)
    assert isinstance(error, PoolTimeout)
    assert elapsed < 1.0
    with pool.acquire(timeout=5) as conn:
        held = conn
    with pool.acquire(timeout=0) as conn:
        assert conn is held
        error, elapsed = timed_sync(pool, timeout=0)
        assert isinstance(error, PoolTimeout)
        assert error.phase == "wait"
        assert elapsed < 1.0
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- per call


def test_async_per_call_timeout_overrides_the_pool_option() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never", acquire_timeout=30)
        held = await pool.acquire()
        error, elapsed = await timed_async(pool, timeout=0.2)
        assert isinstance(error, PoolTimeout)
        assert_on_time(elapsed, 0.2)
        await pool.release(held)

        await aclose(pool, manager)

        manager = AsyncFakeManager()
        short = new_apool(manager, max_size=1, check="never", acquire_timeout=0.05)
        held = await short.acquire()

        async def give_back_later() -> None:
            await asyncio.sleep(0.3)
            await short.release(held)

        releaser = asyncio.create_task(give_back_later())
        started = time.monotonic()
        async with short.acquire(timeout=5) as conn:
            assert conn is held
        assert time.monotonic() - started >= 0.29
        await releaser
        await aclose(short, manager)

    run(main)


def test_sync_per_call_timeout_overrides_the_pool_option() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1, check="never", acquire_timeout=30)
    held = pool.getconn()
    error, elapsed = timed_sync(pool, timeout=0.2)
    assert isinstance(error, PoolTimeout)
    assert_on_time(elapsed, 0.2)
    error, elapsed = timed_sync(pool, timeout=0)
    assert isinstance(error, PoolTimeout)
    pool.release(held)
    close_sync(pool, manager)

    manager = FakeManager()
    short = new_spool(manager, max_size=1, check="never", acquire_timeout=0.05)
    held = short.getconn()
    timer = threading.Timer(0.3, short.release, (held,))
    timer.start()
    started = time.monotonic()
    with short.acquire(timeout=5) as conn:
        assert conn is held
    assert time.monotonic() - started >= 0.29
    timer.join()
    close_sync(short, manager)


def test_async_timeout_none_waits_until_a_connection_comes_back() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never", acquire_timeout=0.05)
        held = await pool.acquire()

        async def give_back_later() -> None:
            await asyncio.sleep(0.4)
            await pool.release(held)

        releaser = asyncio.create_task(give_back_later())
        started = time.monotonic()
        async with pool.acquire(timeout=None) as conn:
            assert conn is held
        assert time.monotonic() - started >= 0.39  # far past acquire_timeout=0.05
        await releaser
        assert pool.stats().timeouts == 0
        await aclose(pool, manager)

    run(main)


def test_sync_timeout_none_waits_until_a_connection_comes_back() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1, check="never", acquire_timeout=0.05)
    held = pool.getconn()
    timer = threading.Timer(0.4, pool.release, (held,))
    timer.start()
    started = time.monotonic()
    conn = pool.getconn(timeout=None)
    assert conn is held
    assert time.monotonic() - started >= 0.39
    pool.release(conn)
    timer.join()
    assert pool.stats().timeouts == 0
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- TMO-1


def test_async_tmo1_transient_connect_failures_time_out_with_cause() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "fail"
        pool = new_apool(manager, max_size=2, check="never")
        error, elapsed = await timed_async(pool, timeout=0.5)
        assert isinstance(error, PoolTimeout)
        assert error.phase == "connect"
        assert_on_time(elapsed, 0.5)
        assert isinstance(error.__cause__, FakeError)
        assert manager.calls["connect"] >= 2, "transient failures must be retried"
        manager.behaviour.connect = "ok"
        await aclose(pool, manager)

    run(main)


def test_sync_tmo1_transient_connect_failures_time_out_with_cause() -> None:
    manager = FakeManager()
    manager.behaviour.connect = "fail"
    pool = new_spool(manager, max_size=2, check="never")
    error, elapsed = timed_sync(pool, timeout=0.5)
    assert isinstance(error, PoolTimeout)
    assert error.phase == "connect"
    assert_on_time(elapsed, 0.5)
    assert isinstance(error.__cause__, FakeError)
    assert manager.calls["connect"] >= 2
    manager.behaviour.connect = "ok"
    close_sync(pool, manager)


def test_async_tmo1_slow_connect_is_bounded_by_the_acquire_deadline() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect_delay = 1.0
        pool = new_apool(manager, max_size=1, check="never")
        error, elapsed = await timed_async(pool, timeout=0.3)
        assert isinstance(error, PoolTimeout)
        assert error.phase == "connect"
        assert_on_time(elapsed, 0.3)
        await aclose(pool, manager)  # settle waits for the connect to finish

    run(main)


def test_async_tmo1_hanging_check_times_out_with_phase_check() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="always")
        async with pool.acquire(timeout=5):
            pass
        manager.behaviour.check = "hang"
        error, elapsed = await timed_async(pool, timeout=0.3)
        assert isinstance(error, PoolTimeout)
        assert error.phase == "check"
        assert_on_time(elapsed, 0.3)
        manager.release_hangs()
        manager.behaviour.check = "ok"
        await aclose(pool, manager)

    run(main)


def test_async_tmo1_one_deadline_over_wait_and_check() -> None:
    """Time spent queued counts: the check gets only what is left, never a fresh budget."""

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="always")
        held = await pool.acquire(timeout=5)
        manager.behaviour.check = "hang"

        async def give_back_later() -> None:
            await asyncio.sleep(0.25)
            await pool.release(held)

        releaser = asyncio.create_task(give_back_later())
        error, elapsed = await timed_async(pool, timeout=0.5)
        await releaser
        assert isinstance(error, PoolTimeout)
        assert error.phase == "check"
        assert_on_time(elapsed, 0.5)
        manager.release_hangs()
        manager.behaviour.check = "ok"
        await aclose(pool, manager)

    run(main)


# ---------------------------------------------------------------------------- permanent


def test_async_permanent_connect_failure_fails_every_waiter_at_once() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "permanent"
        manager.behaviour.connect_delay = 0.05
        pool = new_apool(manager, max_size=4, check="never")
        started = time.monotonic()
        results = await asyncio.gather(
            *(timed_async(pool, timeout=10) for _ in range(6)), return_exceptions=True
        )
        assert time.monotonic() - started < 5.0, "permanent errors must not wait the deadline"
        for result in results:
            assert isinstance(result, tuple), result
            error, _elapsed = result
            assert isinstance(error, ConnectError), error
            assert isinstance(error.__cause__, FakeError)
        assert pool.stats().waiting == 0
        assert manager.calls["connect"] <= 4, "no retry loop on a permanent failure"
        await aclose(pool, manager)

    run(main)


def test_sync_permanent_connect_failure_fails_every_waiter_at_once() -> None:
    manager = FakeManager()
    manager.behaviour.connect = "permanent"
    manager.behaviour.connect_delay = 0.05
    pool = new_spool(manager, max_size=4, check="never")
    results: list[tuple[BaseException, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        outcome = timed_sync(pool, timeout=10)
        with lock:
            results.append(outcome)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert time.monotonic() - started < 5.0
    assert len(results) == 6
    for error, _elapsed in results:
        assert isinstance(error, ConnectError), error
        assert isinstance(error.__cause__, FakeError)
    assert pool.stats().waiting == 0
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- LOAD-2


def test_async_load2_timed_out_waiters_leave_no_trace(caplog: pytest.LogCaptureFixture) -> None:
    # The outage's connect warnings are expected; keep them out of the memory measurement.
    caplog.set_level(logging.CRITICAL, logger="tidepool")

    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "fail"
        pool = new_apool(manager, max_size=1, min_size=0, check="never")
        errors: list[str] = []

        async def one() -> None:
            try:
                async with pool.acquire(timeout=0.001):
                    errors.append("lent during an outage")
            except PoolTimeout:
                pass

        async def batch() -> None:
            await asyncio.gather(*(one() for _ in range(250)))
            assert pool.stats().waiting == 0

        tracemalloc.start()
        try:
            for _ in range(4):
                await batch()
            gc.collect()
            after_1000 = tracemalloc.get_traced_memory()[0]
            for _ in range(16):
                await batch()
            gc.collect()
            after_5000 = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert errors == []
        s = pool.stats()
        assert s.waiting == 0
        assert s.timeouts == 5000
        # psycopg_pool kept ~2.7 kB per dead waiter; 4000 of those would be ~10 MB.
        growth = after_5000 - after_1000
        assert growth < 256 * 1024, f"memory grew by {growth} bytes over 4000 timeouts"

        # Then 1000 cancelled waiters.
        tasks = [asyncio.create_task(one()) for _ in range(1000)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pool.stats().waiting == 0
        manager.behaviour.connect = "ok"
        await aclose(pool, manager)

    run(main)


def test_sync_load2_timed_out_waiters_leave_no_trace(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="tidepool")
    manager = FakeManager()
    manager.behaviour.connect = "fail"
    pool = new_spool(manager, max_size=1, check="never")
    for _ in range(300):
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.001)
    s = pool.stats()
    assert s.waiting == 0
    assert s.timeouts == 300
    manager.behaviour.connect = "ok"
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- LOAD-3


def test_async_load3_max_waiting_counts_live_waiters_only() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        manager.behaviour.connect = "fail"
        pool = new_apool(manager, max_size=1, check="never", max_waiting=5, name="load3")
        for _ in range(5):
            error, _ = await timed_async(pool, timeout=0.02)
            assert isinstance(error, PoolTimeout)
        # The 6th waits its own timeout: the 5 dead ones do not count.
        error, elapsed = await timed_async(pool, timeout=0.1)
        assert isinstance(error, PoolTimeout), error
        assert elapsed >= 0.1 - 1e-6

        # 5 live waiters: the 6th is refused at once.
        live = [asyncio.create_task(timed_async(pool, timeout=10)) for _ in range(5)]
        await until(lambda: pool.stats().waiting == 5)
        error, elapsed = await timed_async(pool, timeout=10)
        assert isinstance(error, TooManyWaiters), error
        assert elapsed < 1.0
        assert "load3" in str(error)
        assert re.search(r"\b5\b", str(error)), str(error)
        assert pool.stats().waiting == 5
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)
        assert pool.stats().waiting == 0
        # Room again.
        error, _ = await timed_async(pool, timeout=0.02)
        assert isinstance(error, PoolTimeout)
        manager.behaviour.connect = "ok"
        await aclose(pool, manager)

    run(main)


def test_sync_load3_max_waiting_counts_live_waiters_only() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1, check="never", max_waiting=5, name="load3")
    held = pool.getconn()
    for _ in range(5):
        error, _ = timed_sync(pool, timeout=0.02)
        assert isinstance(error, PoolTimeout)
    error, elapsed = timed_sync(pool, timeout=0.1)
    assert isinstance(error, PoolTimeout), error
    assert elapsed >= 0.1 - 1e-6

    served: list[FakeConnection] = []

    def waiter() -> None:
        with pool.acquire(timeout=10) as conn:
            served.append(conn)

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for t in threads:
        t.start()
    wait_until_sync(lambda: pool.stats().waiting == 5)
    error, elapsed = timed_sync(pool, timeout=10)
    assert isinstance(error, TooManyWaiters), error
    assert elapsed < 1.0
    assert "load3" in str(error)
    assert re.search(r"\b5\b", str(error)), str(error)
    pool.release(held)
    for t in threads:
        t.join(10)
    assert served == [held] * 5
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- LOAD-7


def test_async_load7_timeouts_never_fire_early() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never")
        held = await pool.acquire()
        timeout = 0.35
        results = await asyncio.gather(*(timed_async(pool, timeout=timeout) for _ in range(10)))
        for error, elapsed in results:
            assert isinstance(error, PoolTimeout)
            assert error.phase == "wait"
            assert_on_time(elapsed, timeout, slack=0.5)
        assert pool.stats().waiting == 0
        await pool.release(held)
        await aclose(pool, manager)

    run(main)


def test_sync_load7_timeouts_never_fire_early() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1, check="never")
    held = pool.getconn()
    timeout = 0.35
    barrier = threading.Barrier(10)
    results: list[tuple[BaseException, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        outcome = timed_sync(pool, timeout=timeout)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 10
    for error, elapsed in results:
        assert isinstance(error, PoolTimeout)
        assert_on_time(elapsed, timeout, slack=0.5)
    pool.release(held)
    close_sync(pool, manager)


# ---------------------------------------------------------------------------- bad values


BAD_TIMEOUTS: list[tuple[Any, type[Exception]]] = [
    (-1, ConfigError),
    (-0.001, ConfigError),
    (math.nan, ConfigError),
    (math.inf, ConfigError),
    (True, TypeError),
    (False, TypeError),
    ("1", TypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS)
def test_async_bad_per_call_timeout(value: Any, error: type[Exception]) -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1)
        with pytest.raises(error, match="timeout"):
            pool.acquire(timeout=value)
        assert pool.stats().size == 0
        await pool.aclose()

    run(main)


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS)
def test_sync_bad_per_call_timeout(value: Any, error: type[Exception]) -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1)
    with pytest.raises(error, match="timeout"):
        pool.acquire(timeout=value)
    with pytest.raises(error, match="timeout"):
        pool.getconn(timeout=value)
    assert pool.stats().size == 0
    pool.close()


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="acquire_timeout"):
        APool(AsyncFakeManager(), acquire_timeout=-1)
    with pytest.raises(TypeError, match="acquire_timeout"):
        SPool(FakeManager(), acquire_timeout=True)
