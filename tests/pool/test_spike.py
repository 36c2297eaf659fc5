"""Bursts of demand: HikariCP's spike test, LOAD-1 (25,000 waiters) and LOAD-4 (FIFO
fairness, no barging).

design.md section 2: "Connections are created in the background, at most two at a time, and
only while waiters outnumber the connects in flight; a returned connection goes to the oldest
waiter even while a connect is in flight. A burst of waiters therefore does not open a burst of
connections."
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable

from fakes import (
    AsyncFakeManager,
    FakeConnection,
    FakeManager,
    new_apool,
    new_spool,
    run,
    settle,
    settle_sync,
    until,
)
from tidepool import AsyncPool, Pool

APool = AsyncPool[FakeConnection]
SPool = Pool[FakeConnection]


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


class CountingAsyncManager(AsyncFakeManager):
    """Also records the most connects in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.max_in_flight = 0

    async def connect(self) -> FakeConnection:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super().connect()
        finally:
            self.in_flight -= 1


class CountingManager(FakeManager):
    """Also records the most connects in flight at once (threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.max_in_flight = 0
        self._count_lock = threading.Lock()

    def connect(self) -> FakeConnection:
        with self._count_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return super().connect()
        finally:
            with self._count_lock:
                self.in_flight -= 1


# ---------------------------------------------------------------------------- spike


def test_async_spike_of_50_opens_few_connections() -> None:
    """50 callers at once on an empty pool whose connects take 150 ms, each holding 2 ms.

    Two connects start at once (the cap); when they land ~150 ms later, the waiters still
    outnumber the connects in flight, so each worker opens one more. The 48 remaining 2 ms
    holds take ~50 ms on two connections, so by the time the second pair lands (~300 ms) no
    one is waiting and no third pair starts: at most 4 connections, never 10.
    """

    async def main() -> None:
        manager = CountingAsyncManager()
        manager.behaviour.connect_delay = 0.15
        pool = new_apool(manager, max_size=10, check="never", acquire_timeout=20)
        served: list[int] = []

        async def burst(i: int) -> None:
            async with pool.acquire() as conn:
                assert not conn.closed
                await asyncio.sleep(0.002)
                served.append(i)

        await asyncio.gather(*(burst(i) for i in range(50)))
        assert sorted(served) == list(range(50))
        assert manager.max_in_flight <= 2
        assert manager.opened <= 4, f"a burst of 50 opened {manager.opened} connections"
        await settle(pool, manager)
        s = pool.stats()
        assert s.acquired == 50
        assert s.connects == manager.opened
        await pool.aclose()
        assert not manager.live

    run(main)


def test_sync_spike_of_50_threads_opens_few_connections() -> None:
    """The same burst with 50 threads on ``Pool``.

    The bound is 6, not 4: thread wake-ups are slower and less regular than tasks (GIL
    hand-offs), so the first two connections may take longer to drain the queue. Each round
    of connects takes 150 ms and opens at most 2 (the cap); a fourth round would need callers
    still queued 450 ms into the burst, after 2 connections served for 150 ms and 4 more for
    another 150 ms: 900 connection-ms of capacity for 100 ms of work.
    """
    manager = CountingManager()
    manager.behaviour.connect_delay = 0.15
    pool = new_spool(manager, max_size=10, check="never", acquire_timeout=20)
    barrier = threading.Barrier(50)
    served: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def burst(i: int) -> None:
        try:
            barrier.wait()
            with pool.acquire() as conn:
                assert not conn.closed
                time.sleep(0.002)
            with lock:
                served.append(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(served) == list(range(50))
    assert manager.max_in_flight <= 2
    assert manager.opened <= 6, f"a burst of 50 threads opened {manager.opened} connections"
    settle_sync(pool, manager)
    assert pool.stats().acquired == 50
    pool.close()
    assert not manager.live


# ---------------------------------------------------------------------------- LOAD-1


def test_async_load1_25000_waiters_on_a_pool_of_3() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=3, check="never", acquire_timeout=120)
        served = 0
        peak_waiting = 0
        in_use: set[int] = set()

        async def one() -> None:
            nonlocal served, peak_waiting
            async with pool.acquire() as conn:
                assert conn.id not in in_use, "one connection lent twice"
                in_use.add(conn.id)
                peak_waiting = max(peak_waiting, pool.stats().waiting)
                await asyncio.sleep(0)
                in_use.discard(conn.id)
                served += 1

        await asyncio.gather(*(one() for _ in range(25_000)))
        assert served == 25_000
        assert peak_waiting > 20_000, "the waiters should really have queued"
        s = pool.stats()
        assert (s.waiting, s.acquired) == (0, 25_000)
        assert manager.opened <= 3
        await settle(pool, manager)
        await pool.aclose()
        assert not manager.live

    run(main)


# ---------------------------------------------------------------------------- LOAD-4


def test_async_load4_fifo_fairness_100_tasks_on_10_connections() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=10, check="never", acquire_timeout=30)
        # Warm up so that connects do not skew the waits.
        conns = [await pool.acquire() for _ in range(10)]
        for conn in conns:
            await pool.release(conn)
        waits: list[float] = []
        hold = 0.01

        async def worker() -> None:
            for _ in range(5):
                started = time.monotonic()
                async with pool.acquire():
                    waits.append(time.monotonic() - started)
                    await asyncio.sleep(hold)

        await asyncio.gather(*(worker() for _ in range(100)))
        assert len(waits) == 500
        median = statistics.median(waits)
        # Steady state: each acquire waits for ~90 others on 10 connections (~9 holds).
        assert median > 2 * hold, f"median wait {median:.3f} s: the pool was not saturated"
        worst = max(waits)
        assert worst <= 4 * median + 0.1, f"starvation: worst {worst:.3f} s, median {median:.3f}"
        await settle(pool, manager)
        assert manager.opened == 10
        await pool.aclose()

    run(main)


def test_async_load4_no_barging_past_queued_waiters() -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, check="never", acquire_timeout=30)
        held = await pool.acquire()
        order: list[str] = []

        async def waiter(name: str) -> None:
            async with pool.acquire():
                order.append(name)
                await asyncio.sleep(0.002)

        tasks = []
        for i, name in enumerate("ABC"):
            tasks.append(asyncio.create_task(waiter(name)))
            await until(lambda i=i: pool.stats().waiting == i + 1)  # type: ignore[misc]

        await pool.release(held)
        # Released while A, B, C wait: it went to A, not to whoever asks next.
        lease = pool.try_acquire()
        barged = lease is not None
        if lease is not None:
            async with lease:
                pass
        assert not barged, "try_acquire() took a connection owed to a queued waiter"
        tasks.append(asyncio.create_task(waiter("D")))  # arrives after the release
        await asyncio.gather(*tasks)
        assert order == ["A", "B", "C", "D"]
        await settle(pool, manager)
        await pool.aclose()

    run(main)


def test_sync_load4_no_barging_past_queued_waiters() -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=1, check="never", acquire_timeout=30)
    held = pool.getconn()
    order: list[str] = []
    lock = threading.Lock()

    def waiter(name: str) -> None:
        with pool.acquire():
            with lock:
                order.append(name)
            time.sleep(0.002)

    threads = []
    for i, name in enumerate("ABC"):
        thread = threading.Thread(target=waiter, args=(name,))
        thread.start()
        threads.append(thread)
        wait_until_sync(lambda i=i: pool.stats().waiting == i + 1)  # type: ignore[misc]

    pool.release(held)
    lease = pool.try_acquire()
    barged = lease is not None
    if lease is not None:
        with lease:
            pass
    assert not barged, "try_acquire() took a connection owed to a queued waiter"
    late = threading.Thread(target=waiter, args=("D",))
    late.start()
    threads.append(late)
    for thread in threads:
        thread.join(10)
    assert order == ["A", "B", "C", "D"]
    settle_sync(pool, manager)
    pool.close()
