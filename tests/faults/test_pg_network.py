"""Network faults through the chaos proxy: a deaf or black-holed server during connect,
check, reset and close; connections reset under the pool; a frozen backend; multi-host
failover (reliability.md TMO-1, NET-5, NET-9, and the deadlines of design.md section 2).

Each scenario runs for AsyncPool + asyncpg, AsyncPool + psycopg and Pool + psycopg and ends
with the invariant check of design.md section 7, including the server-side session count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import tidepool
from pg_helpers import app_name

from .pgcluster import Driver, Flavour, PrivateCluster, settle
from .proxy import ChaosProxy

MakeProxy = Callable[[str, int], ChaosProxy]


def sessions_of(cluster: PrivateCluster, app: str) -> Callable[[], int]:
    return lambda: cluster.session_count(app)


async def wait_until(what: str, probe: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(probe):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        await asyncio.sleep(0.05)


def proxied_url(cluster: PrivateCluster, proxy: ChaosProxy, flavour: Flavour, app: str) -> str:
    return cluster.url(
        flavour.scheme, host=proxy.host, port=proxy.port, application_name=app, sslmode="disable"
    )


# ---------------------------------------------------------------- connect


def test_stalled_server_during_connect_meets_the_deadline(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """TMO-1: the server accepts TCP and then says nothing: acquire(timeout=1) raises
    PoolTimeout at its deadline; once the server answers again, acquiring works."""
    app = app_name("tmo1")

    async def main() -> None:
        chaos_proxy.set_mode("stall")
        driver = Driver(
            flavour, proxied_url(pg_cluster, chaos_proxy, flavour, app), connect_timeout=2
        )
        try:
            started = time.monotonic()
            with pytest.raises(tidepool.PoolTimeout) as info:
                async with driver.acquire(timeout=1):
                    pass
            elapsed = time.monotonic() - started
            assert 1.0 <= elapsed <= 1.6, elapsed
            assert info.value.phase == "connect"
            chaos_proxy.set_mode("pass")
            async with driver.acquire(timeout=10) as conn:
                assert await driver.value(conn, "SELECT 1") == 1
            stats = await settle(driver, sessions_of(pg_cluster, app))
            assert stats.timeouts == 1
            assert stats.connect_errors >= 1  # the stalled attempt hit connect_timeout
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- check


def test_black_holed_check_meets_the_acquire_deadline(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """NET-5: the idle connection is black-holed and check="always": the check cannot outlast
    the acquire deadline (PoolTimeout, phase check), and the zombie is discarded."""
    app = app_name("net5")

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=1,
            max_size=2,
            check="always",
            connect_timeout=1,
        )
        try:
            await driver.open()
            await settle(driver, sessions_of(pg_cluster, app), size=1)
            chaos_proxy.set_mode("stall")
            started = time.monotonic()
            with pytest.raises(tidepool.PoolTimeout) as info:
                async with driver.acquire(timeout=1):
                    pass
            elapsed = time.monotonic() - started
            assert 1.0 <= elapsed <= 2.5, elapsed
            assert info.value.phase == "check"
            assert driver.stats().check_failures == 1
            chaos_proxy.set_mode("pass")
            assert await driver.fetch_value("SELECT 1") == 1
            await settle(driver, sessions_of(pg_cluster, app))
        finally:
            await driver.close()

    asyncio.run(main())


def test_black_holed_check_then_server_back_lends_a_fresh_connection(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """NET-5: the check of a black-holed connection times out after connect_timeout; the
    network is back meanwhile, so the caller gets a fresh connection well within its
    deadline instead of an error."""
    app = app_name("net5b")

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=1,
            max_size=2,
            check="always",
            connect_timeout=1,
        )
        try:
            await driver.open()
            before = await settle(driver, sessions_of(pg_cluster, app), size=1)
            chaos_proxy.set_mode("stall")
            loop = asyncio.get_running_loop()
            back = loop.call_later(0.3, chaos_proxy.set_mode, "pass")
            try:
                started = time.monotonic()
                async with driver.acquire(timeout=8) as conn:
                    assert await driver.value(conn, "SELECT 2") == 2
                assert time.monotonic() - started < 8
            finally:
                back.cancel()
            after = await settle(driver, sessions_of(pg_cluster, app))
            assert after.check_failures == before.check_failures + 1
            assert after.connects == before.connects + 1
        finally:
            await driver.close()

    asyncio.run(main())


def test_frozen_backend_during_check(pg_cluster: PrivateCluster, flavour: Flavour) -> None:
    """NET-5 without a proxy: kill -STOP the backend of an idle connection; the check is
    bounded, the zombie is replaced, and after kill -CONT its session ends."""
    app = app_name("frozen")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, application_name=app)
        driver = Driver(flavour, url, min_size=1, max_size=2, check="always", connect_timeout=1)
        frozen: list[int] = []
        try:
            await driver.open()
            await settle(driver, sessions, size=1)
            frozen = await asyncio.to_thread(pg_cluster.backend_pids, app)
            assert len(frozen) == 1
            pg_cluster.freeze(frozen[0])
            started = time.monotonic()
            async with driver.acquire(timeout=8) as conn:
                pid = await driver.value(conn, "SELECT pg_backend_pid()")
            assert pid != frozen[0]
            assert time.monotonic() - started < 8
            assert driver.stats().check_failures == 1
            pg_cluster.thaw(frozen[0])
            await settle(driver, sessions)
            assert frozen[0] not in await asyncio.to_thread(pg_cluster.backend_pids, app)
        finally:
            if frozen:
                pg_cluster.thaw(frozen[0])
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- reset and close


def test_black_holed_reset_is_bounded_and_closes_the_connection(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """STATE-10: the server goes silent while a connection is lent; its release (the reset)
    returns within about connect_timeout and the connection is closed, not pooled."""
    app = app_name("reset")

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=0,  # no refill through the stalled proxy
            max_size=2,
            connect_timeout=1,
        )
        try:
            await driver.open()
            before = await settle(driver, sessions_of(pg_cluster, app), size=1)
            lease = driver.acquire()
            conn = await lease.__aenter__()
            assert await driver.value(conn, "SELECT 1") == 1
            chaos_proxy.set_mode("stall")
            started = time.monotonic()
            await lease.__aexit__(None, None, None)
            elapsed = time.monotonic() - started
            assert elapsed < 3.5, elapsed
            stats = driver.stats()
            assert stats.reset_failures == before.reset_failures + 1
            assert stats.idle == 0
            await wait_until(
                "the connection was closed (its proxied pair ended)",
                lambda: chaos_proxy.connections == 0,
            )
            chaos_proxy.set_mode("pass")
            assert await driver.fetch_value("SELECT 3") == 3
            after = await settle(driver, sessions_of(pg_cluster, app))
            assert after.closed >= before.closed + 1
        finally:
            await driver.close()

    asyncio.run(main())


def test_close_with_a_stalled_server_is_bounded(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """LEAK-7: close(timeout=1) with idle connections and a lent one, the server silent:
    returns within a few seconds and leaves no session behind."""
    app = app_name("close")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=3,
            max_size=4,
            connect_timeout=1,
        )
        try:
            await driver.open()
            await settle(driver, sessions, size=3)
            lease = driver.acquire()
            await lease.__aenter__()
            chaos_proxy.set_mode("stall")
            started = time.monotonic()
            await driver.close(timeout=1, final=False)
            elapsed = time.monotonic() - started
            assert elapsed < 6.0, elapsed
            stats = driver.stats()
            assert stats.size == 0, stats
            with pytest.raises(tidepool.PoolClosed):
                await driver.fetch_value("SELECT 1")
            await lease.__aexit__(None, None, None)  # late return: closed, no error
            await wait_until(
                "the proxy dropped every connection", lambda: not chaos_proxy.connections
            )
            await wait_until("no session left", lambda: sessions() == 0)
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- reset (RST)


def test_reset_idle_connections_are_replaced(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """NET-1 over the network: every idle connection is cut with an RST; the next acquires
    succeed on fresh connections."""
    app = app_name("rst")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=3,
            max_size=4,
            check="idle",
            check_idle_after=0.05,
            connect_timeout=2,
        )
        try:
            await driver.open()
            before = await settle(driver, sessions, size=3)
            chaos_proxy.set_mode("reset")
            chaos_proxy.set_mode("pass")
            await wait_until("the reset sessions ended", lambda: sessions() == 0)
            await asyncio.sleep(0.1)
            for i in range(5):
                assert await driver.fetch_value(f"SELECT {i}") == i
            values = await asyncio.gather(*(driver.fetch_value("SELECT 9") for _ in range(4)))
            assert values == [9] * 4
            after = await settle(driver, sessions)
            assert after.check_failures > before.check_failures
            assert after.connects >= before.connects + 3
            assert chaos_proxy.connections == after.size
        finally:
            await driver.close()

    asyncio.run(main())


def test_cut_mid_message_fails_one_request_only(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """A connection cut in the middle of a reply: that request fails with the driver's
    error; the connection is discarded and the next request succeeds."""
    app = app_name("cut")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            min_size=1,
            max_size=2,
            check="never",
            connect_timeout=2,
        )
        try:
            await driver.open()
            await settle(driver, sessions, size=1)
            chaos_proxy.set_mode("cut_after", nbytes=200)
            with pytest.raises(driver.driver_errors()):
                await driver.fetch_value("SELECT repeat('x', 100000)")
            chaos_proxy.set_mode("pass")
            assert await driver.fetch_value("SELECT length(repeat('y', 100000))") == 100000
            await settle(driver, sessions)
        finally:
            await driver.close()

    asyncio.run(main())


def test_connection_reset_during_connect_is_transient(
    pg_cluster: PrivateCluster, chaos_proxy: ChaosProxy, flavour: Flavour
) -> None:
    """NET-6: a connection reset in the middle of the startup handshake (a flapping network
    or load balancer) is a transient failure: retried within the caller's deadline, so the
    acquire succeeds once the network is back, instead of failing with ConnectError."""
    app = app_name("rstconnect")

    async def main() -> None:
        driver = Driver(
            flavour,
            proxied_url(pg_cluster, chaos_proxy, flavour, app),
            connect_timeout=2,
            acquire_timeout=8,
        )
        chaos_proxy.set_mode("reset")
        back = asyncio.get_running_loop().call_later(0.5, chaos_proxy.set_mode, "pass")
        try:
            async with driver.acquire() as conn:
                assert await driver.value(conn, "SELECT 1") == 1
            stats = await settle(driver, sessions_of(pg_cluster, app))
            assert stats.connect_errors >= 1
        finally:
            back.cancel()
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- multi-host failover


@pytest.mark.parametrize("fault", ["refuse", "reset"])
def test_multi_host_failover(
    pg_cluster: PrivateCluster, make_proxy: MakeProxy, flavour: Flavour, fault: str
) -> None:
    """NET-9: host1,host2 with target_session_attrs=read-write; host1 goes away (refuses
    new connections; or crashes: every connection reset, then refused): new connections go
    to host2 and, after expire(), requests keep succeeding."""
    app = app_name("failover")
    sessions = sessions_of(pg_cluster, app)
    first = make_proxy(pg_cluster.host, pg_cluster.port)
    second = make_proxy(pg_cluster.host, pg_cluster.port)

    async def main() -> None:
        hosts = f"{first.host}:{first.port},{second.host}:{second.port}"
        url = (
            f"{flavour.scheme}://postgres@{hosts}/postgres?application_name={app}"
            "&target_session_attrs=read-write&sslmode=disable"
        )
        driver = Driver(
            flavour,
            url,
            min_size=2,
            max_size=4,
            check="idle",
            check_idle_after=0.05,
            connect_timeout=2,
            acquire_timeout=10,
        )
        done = asyncio.Event()
        errors: list[BaseException] = []

        async def load() -> None:
            while not done.is_set():
                try:
                    assert await driver.fetch_value("SELECT 1") == 1
                except Exception as exc:
                    errors.append(exc)
                await asyncio.sleep(0.01)

        try:
            await driver.open()
            await settle(driver, sessions, size=2)
            assert (first.connections, second.connections) == (2, 0)
            if fault == "refuse":
                workers = [asyncio.create_task(load()) for _ in range(2)]
                try:
                    await asyncio.sleep(0.1)
                    first.set_mode("refuse")
                    await asyncio.sleep(0.1)
                    driver.expire()
                    await wait_until(
                        "every connection moved to the second host",
                        lambda: first.connections == 0 and second.connections >= 2,
                    )
                    await asyncio.sleep(0.1)
                finally:
                    done.set()
                    await asyncio.gather(*workers)
                assert errors == [], errors[:3]
            else:  # the first host crashes: its connections are reset, then it refuses
                first.set_mode("reset")
                first.set_mode("refuse")
                await wait_until("the reset sessions ended", lambda: sessions() == 0)
                await asyncio.sleep(0.1)
                driver.expire()
                for i in range(10):
                    assert await driver.fetch_value(f"SELECT {i}") == i
                assert first.connections == 0
            stats = await settle(driver, sessions)
            assert second.connections == stats.size >= 2
        finally:
            done.set()
            await driver.close()

    asyncio.run(main())
