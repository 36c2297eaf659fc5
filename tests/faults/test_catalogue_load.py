"""Load and storm scenarios of the reliability catalogue on real PostgreSQL servers:
waiters during an outage (LOAD-2, LOAD-3), the connect storm when the server comes back
(NET-13) and connections of the same age reaching ``max_lifetime`` together (NET-14).

Each scenario runs for AsyncPool + asyncpg, AsyncPool + psycopg and Pool + psycopg on a private
cluster (behind the chaos proxy where the network is at fault) and ends with the invariant
check of design.md section 7 (``settle``), including the server-side session count for the
pool's ``application_name``. Bounds are generous: nothing here asserts speed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import tidepool
from pg_helpers import app_name

from .pgcluster import Driver, Flavour, PrivateCluster, settle
from .proxy import ChaosProxy
from .test_pg_network import proxied_url, sessions_of, wait_until

# ---------------------------------------------------------------- LOAD-2


async def _timed_out_acquires(driver: Driver, count: int, timeout: float) -> int:
    """``count`` acquires that should all time out (``timeout`` each), many at once; return
    how many got a connection anyway."""
    pool = driver.pool
    lent = 0
    if not driver.flavour.sync:

        async def one() -> None:
            nonlocal lent
            try:
                async with pool.acquire(timeout=timeout):
                    lent += 1
            except tidepool.PoolTimeout:
                pass

        for start in range(0, count, 250):
            await asyncio.gather(*(one() for _ in range(min(250, count - start))))
        return lent

    def worker(n: int) -> int:
        got = 0
        for _ in range(n):
            try:
                conn = pool.getconn(timeout=timeout)
            except tidepool.PoolTimeout:
                continue
            got += 1
            pool.release(conn)
        return got

    threads = 5
    results = await asyncio.gather(
        *(asyncio.to_thread(worker, count // threads) for _ in range(threads))
    )
    return sum(results)


def test_load2_outage_timed_out_waiters_leave_no_trace(
    pg_cluster: PrivateCluster,
    chaos_proxy: ChaosProxy,
    flavour: Flavour,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LOAD-2: the server refuses connections; 2000 acquires with a 2 ms timeout, many queued
    at once, all time out: none is left queued (``stats().waiting`` back to 0), the traced
    memory is flat between 500 and 2000 of them, and the pool serves again once the server
    is back."""
    # The outage's connect warnings are expected; keep log records out of the measurement.
    caplog.set_level(logging.CRITICAL, logger="tidepool")
    app = app_name("load2")

    async def main() -> None:
        chaos_proxy.set_mode("refuse")
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=0,
            max_size=2,
            check="never",
            connect_timeout=1,
        )
        try:
            tracemalloc.start()
            try:
                lent = await _timed_out_acquires(driver, 500, 0.002)
                assert driver.stats().waiting == 0
                gc.collect()
                after_500 = tracemalloc.get_traced_memory()[0]
                lent += await _timed_out_acquires(driver, 1500, 0.002)
                assert driver.stats().waiting == 0
                gc.collect()
                after_2000 = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            assert lent == 0, "a connection was lent while the server refused connections"
            stats = driver.stats()
            assert stats.timeouts == 2000, stats
            assert stats.waiting == 0, stats
            assert stats.connect_errors >= 1, stats  # the pool did try the server
            growth = after_2000 - after_500
            # psycopg_pool keeps ~2.7 kB per dead waiter: 1500 of them would be ~4 MB.
            assert growth < 512 * 1024, f"memory grew by {growth} bytes over 1500 timeouts"

            chaos_proxy.set_mode("pass")
            async with driver.acquire(timeout=15) as conn:
                assert await driver.value(conn, "SELECT 1") == 1
            await settle(driver, sessions_of(pg_cluster, app))
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- LOAD-3


def test_load3_max_waiting_counts_live_waiters_only_during_an_outage(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """LOAD-3: ``max_waiting=5`` while the server refuses connections. Five timed-out
    waiters do not count: the sixth acquire waits out its own timeout. Five live waiters do:
    the sixth is refused at once with ``TooManyWaiters`` naming the pool and the limit. When
    the server is back, the five live waiters are served."""
    app = app_name("load3")

    async def main() -> None:
        chaos_proxy.set_mode("refuse")
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=0,
            max_size=1,
            max_waiting=5,
            check="never",
            connect_timeout=1,
            name=app,
        )
        try:
            for _ in range(5):
                with pytest.raises(tidepool.PoolTimeout):
                    async with driver.acquire(timeout=0.05):
                        pass
            assert driver.stats().waiting == 0
            started = time.monotonic()
            with pytest.raises(tidepool.PoolTimeout):
                async with driver.acquire(timeout=0.3):
                    pass
            assert time.monotonic() - started >= 0.3 - 1e-3  # it did wait: not refused

            async def live() -> Any:
                async with driver.acquire(timeout=30) as conn:
                    return await driver.value(conn, "SELECT 42")

            waiters = [asyncio.create_task(live()) for _ in range(5)]
            try:
                await wait_until("five live waiters", lambda: driver.stats().waiting == 5)
                started = time.monotonic()
                with pytest.raises(tidepool.TooManyWaiters) as info:
                    async with driver.acquire(timeout=20):
                        pass
                assert time.monotonic() - started < 5.0  # at once, not after its timeout
                assert app in str(info.value)
                assert re.search(r"\b5\b", str(info.value)), str(info.value)
                assert driver.stats().waiting == 5
                chaos_proxy.set_mode("pass")
                assert await asyncio.gather(*waiters) == [42] * 5
            finally:
                for task in waiters:
                    task.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            await settle(driver, sessions_of(pg_cluster, app))
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- NET-13


class _Sampler:
    """Samples ``stats()`` every millisecond from a thread of its own (so it also sees the
    pool while the event loop is busy): the most connection attempts in flight at once and
    the largest size."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._stop = threading.Event()
        self.max_connecting = 0
        self.max_size = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="catalogue-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self._driver.stats()
            self.max_connecting = max(self.max_connecting, stats.connecting)
            self.max_size = max(self.max_size, stats.size)
            self.samples += 1
            time.sleep(0.001)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_net13_connect_storm_after_an_outage_is_rate_limited(
    pg_cluster: PrivateCluster,
    chaos_proxy: ChaosProxy,
    flavour: Flavour,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NET-13: a warm pool loses its server (every connection reset, new ones refused) while
    50 callers arrive. The pool retries with backoff (no busy loop) and, when the server is
    back (slow connects through proxy latency), never has more than ``max_connecting`` (2)
    connection attempts in flight, opens no more connections than ``max_size`` and makes no
    wasted attempt; every caller is served."""
    caplog.set_level(logging.CRITICAL, logger="tidepool")
    app = app_name("net13")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=4,
            max_size=10,
            check="always",
            acquire_timeout=40,
            connect_timeout=5,
        )
        try:
            await driver.open()
            await settle(driver, sessions, size=4)
            chaos_proxy.set_mode("reset")
            chaos_proxy.set_mode("refuse")
            await wait_until("the reset sessions ended", lambda: sessions() == 0)

            threads = ThreadPoolExecutor(max_workers=50, thread_name_prefix="net13-caller")

            def sync_caller() -> Any:
                with driver.pool.acquire() as conn:
                    return conn.execute("SELECT 7 FROM pg_sleep(0.01)").fetchone()[0]

            async def caller() -> Any:
                if flavour.sync:  # a thread each: all 50 wait at once
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(threads, sync_caller)
                async with driver.acquire() as conn:
                    return await driver.value(conn, "SELECT 7 FROM pg_sleep(0.01)")

            with _Sampler(driver) as sampler:
                callers = [asyncio.create_task(caller()) for _ in range(50)]
                try:
                    await wait_until(
                        "every caller queued", lambda: driver.stats().waiting == 50, 20
                    )
                    down = driver.stats()
                    await asyncio.sleep(1.0)  # the outage goes on
                    outage = driver.stats()
                    # Backoff, not a busy loop: a few attempts per worker per second.
                    assert outage.connect_errors - down.connect_errors <= 40, outage
                    assert outage.size == outage.connecting <= 2, outage
                    before = driver.stats()
                    accepted_before = chaos_proxy.accepted
                    chaos_proxy.set_mode("latency", delay=0.02)  # back, with slow connects
                    results = await asyncio.gather(*callers)
                finally:
                    for task in callers:
                        task.cancel()
                    await asyncio.gather(*callers, return_exceptions=True)
                    threads.shutdown(wait=True)
            assert results == [7] * 50
            after = await settle(driver, sessions)
            new_connects = after.connects - before.connects
            assert sampler.samples > 100
            assert sampler.max_connecting <= 2, sampler.max_connecting
            assert sampler.max_size <= 10, sampler.max_size
            assert 1 <= new_connects <= 10, after
            # Every connection attempt after the outage became a pooled connection.
            assert chaos_proxy.accepted - accepted_before == new_connects
            assert after.connect_errors == before.connect_errors, after
            assert after.timeouts == 0, after
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- NET-14


async def _stats_after_yield(driver: Driver) -> Any:
    """``stats()`` once the tasks the pool just started had their first step: a connect
    worker claims its slot (and shows in ``size``) in that step, so a sample taken before it
    would count a replacement already decided as missing."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return driver.stats()


async def _same_age_pool(flavour: Flavour, url: str, lifetime: float) -> Driver:
    """A pool of 10 connections opened together with a short ``max_lifetime``."""
    driver = Driver(
        flavour,
        url,
        min_size=10,
        max_size=10,
        max_lifetime=lifetime,
        idle_timeout=None,
        check="never",
        connect_timeout=5,
    )
    await driver.open()
    return driver


def test_net14_same_age_connections_are_replaced_a_few_at_a_time(
    pg_cluster: PrivateCluster, flavour: Flavour
) -> None:
    """NET-14 with the maintenance driven finely (``pool.maintain()`` every 10 ms, as the
    pool's own 1 s tick looks at a lifetime of half an hour): 10 connections of the same age
    reach ``max_lifetime`` (3 s, up to 5 % jitter) and are replaced: spread over time, never
    more than ``max_connecting`` attempts in flight, and the size (counting connections being
    opened) never below ``min_size - max_connecting``."""
    app = app_name("net14")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        driver = await _same_age_pool(
            flavour, pg_cluster.url(flavour.scheme, application_name=app), 3.0
        )
        try:
            first = await settle(driver, sessions, size=10)
            assert first.connects == 10
            floor, most_connecting = 10, 0
            retire_times: list[float] = []
            closed = first.closed
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                driver.pool.maintain()
                stats = await _stats_after_yield(driver)
                floor = min(floor, stats.size)
                most_connecting = max(most_connecting, stats.connecting)
                retire_times += [time.monotonic()] * (stats.closed - closed)
                closed = stats.closed
                if stats.connects >= 20 and stats.size == 10 and not stats.connecting:
                    break
                await asyncio.sleep(0.01)
            after = await settle(driver, sessions, size=10)
            assert after.connects >= 20, after  # every one of the first 10 was replaced
            assert most_connecting <= 2, most_connecting
            assert floor >= 10 - 2, f"size fell to {floor} while replacing expired connections"
            assert len(retire_times) >= 10
            first_ten = retire_times[:10]
            assert first_ten[-1] - first_ten[0] >= 0.02, "all 10 retired in the same instant"
        finally:
            await driver.close()

    asyncio.run(main())


def test_net14_own_maintenance_keeps_the_pool_near_min_size(
    pg_cluster: PrivateCluster, flavour: Flavour
) -> None:
    """NET-14 with the pool's own maintenance only (nobody calls ``maintain()``): 10
    connections of the same age and ``max_lifetime=2``. Their expiry must not take the pool
    far below ``min_size`` at once: the size (counting connections being opened) never falls
    below ``min_size - max_connecting``, and never more than ``max_connecting`` attempts are
    in flight."""
    app = app_name("net14own")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        driver = await _same_age_pool(
            flavour, pg_cluster.url(flavour.scheme, application_name=app), 2.0
        )
        try:
            first = await settle(driver, sessions, size=10)
            assert first.connects == 10
            with _Sampler(driver) as sampler:
                floor = 10
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    stats = await _stats_after_yield(driver)
                    floor = min(floor, stats.size)
                    if stats.connects >= 20 and stats.size == 10 and not stats.connecting:
                        break
                    await asyncio.sleep(0.001)
            after = await settle(driver, sessions, size=10)
            assert after.connects >= 20, after
            assert sampler.max_connecting <= 2, sampler.max_connecting
            assert floor >= 10 - 2, (
                f"size fell to {floor} of min_size 10: the expired connections were retired "
                "together"
            )
        finally:
            await driver.close()

    asyncio.run(main())
