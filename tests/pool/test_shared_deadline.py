"""AsyncPool keeps one timer for every queued caller's deadline: each caller still times out
on time, whatever the mix of timeouts, and none is woken early or left behind."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import tidepool
from fakes import AsyncFakeManager, check_invariants, new_apool, run


def test_mixed_timeouts_each_fire_on_time() -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1, acquire_timeout=5.0)
        holder = await pool.acquire()
        started = time.monotonic()

        async def timed(timeout: float) -> float:
            with pytest.raises(tidepool.PoolTimeout):
                await pool.acquire(timeout=timeout)
            return time.monotonic() - started

        # Queued longest-first: the shortest deadline is the last in the FIFO, so the
        # shared timer must be re-armed earlier for it.
        results = await asyncio.gather(timed(0.6), timed(0.4), timed(0.2))
        for timeout, took in zip((0.6, 0.4, 0.2), results, strict=True):
            assert timeout <= took < timeout + 0.5, (timeout, took)
        assert pool._deadline_timer is None  # nothing left to watch
        await pool.release(holder)
        check_invariants(pool)

    run(main)


def test_waiters_served_before_their_deadline_leave_no_timer_work() -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=2, acquire_timeout=30.0)
        await pool.open()

        async def worker() -> None:
            for _ in range(200):
                async with pool.acquire():
                    await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(20)))
        # Thousands of waits, one timer: it stays armed for a deadline that is now stale,
        # and the heap holds no more than a bounded number of dead entries.
        assert len(pool._deadlines) <= 2 * 20 + 64 + 1
        stats = pool.stats()
        assert stats.waited > 100
        assert stats.timeouts == 0
        check_invariants(pool)

    run(main)


def test_a_stale_timer_rearms_for_the_next_live_deadline() -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1)
        holder = await pool.acquire()
        # The first waiter is served well before its deadline...
        first = asyncio.ensure_future(pool.acquire(timeout=0.3))
        await asyncio.sleep(0.05)
        await pool.release(holder)
        got = await first
        # ...and a later one, queued with a longer timeout, must still time out on time
        # after the timer armed for the first deadline fires with nothing due.
        started = time.monotonic()
        with pytest.raises(tidepool.PoolTimeout):
            await pool.acquire(timeout=0.5)
        took = time.monotonic() - started
        assert 0.5 <= took < 1.0
        await pool.release(got)
        check_invariants(pool)

    run(main)


def test_cancelled_waiters_are_not_woken_by_the_timer() -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1)
        holder = await pool.acquire()
        tasks = [asyncio.ensure_future(pool.acquire(timeout=0.2)) for _ in range(50)]
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.3)  # the timer fires with only dead entries
        assert pool.stats().waiting == 0
        assert pool.stats().timeouts == 0
        await pool.release(holder)
        check_invariants(pool)

    run(main)


def test_callers_with_the_pool_timeout_are_timed_out_by_the_queue_order() -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1, acquire_timeout=0.3)
        holder = await pool.acquire()
        started = time.monotonic()

        async def timed(timeout: Any = None) -> float:
            lease = pool.acquire() if timeout is None else pool.acquire(timeout=timeout)
            with pytest.raises(tidepool.PoolTimeout):
                await lease
            return time.monotonic() - started

        async def patient() -> None:
            # At the front of the queue with no deadline at all: the timer looks past it.
            async with pool.acquire(timeout=None):
                pass

        waiting = asyncio.ensure_future(patient())
        await asyncio.sleep(0)
        default = [asyncio.ensure_future(timed()) for _ in range(20)]
        await asyncio.sleep(0.1)
        late = asyncio.ensure_future(timed())  # queued 0.1 s later: due 0.1 s later
        shorter = asyncio.ensure_future(timed(0.05))  # a per-call timeout: kept in the heap
        await asyncio.sleep(0)
        # The pool's own timeout leaves no record per wait; the per-call one does.
        assert len(pool._deadlines) == 1
        took = await asyncio.gather(*default)
        assert all(0.3 <= t < 0.3 + 0.25 for t in took), took
        assert 0.15 <= await shorter < 0.15 + 0.25
        assert 0.4 <= await late < 0.4 + 0.25
        assert pool.stats().timeouts == 22
        assert not waiting.done()
        await pool.release(holder)
        await waiting
        assert pool._deadline_timer is None  # nothing left to watch
        check_invariants(pool)

    run(main)


def test_a_caller_cancelled_at_the_front_does_not_hold_back_the_next_deadline() -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1, acquire_timeout=0.3)
        holder = await pool.acquire()
        first = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        second = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(tidepool.PoolTimeout):
            await second
        assert 0.3 <= time.monotonic() - started < 0.3 + 0.25
        assert pool.stats().timeouts == 1
        await pool.release(holder)
        check_invariants(pool)

    run(main)
