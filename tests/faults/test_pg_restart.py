"""Server-side faults on a private cluster: terminated backends, restarts, a server down at
start, rotated credentials (reliability.md NET-1, NET-2, NET-3, NET-4, NET-8).

Each scenario runs for AsyncPool + asyncpg, AsyncPool + psycopg and Pool + psycopg, and ends
with the invariant check of design.md section 7 (``settle``), including the server-side
session count for the pool's ``application_name``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest

import tidepool
from pg_helpers import app_name

from .pgcluster import Driver, Flavour, PrivateCluster, settle


def sessions_of(cluster: PrivateCluster, app: str) -> Callable[[], int]:
    return lambda: cluster.session_count(app)


async def wait_until(what: str, probe: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``probe`` (run in a thread: it may query the server) until true, bounded."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(probe):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- NET-1


def test_terminated_idle_connections_are_replaced_unseen(
    pg_cluster: PrivateCluster, flavour: Flavour
) -> None:
    """NET-1: pg_terminate_backend of every idle pool connection; the next acquires succeed
    (the pre-lend check finds them dead) and stats count the failed checks."""
    app = app_name("net1")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, application_name=app)
        driver = Driver(
            flavour,
            url,
            min_size=3,
            max_size=4,
            check="idle",
            check_idle_after=0.05,
            acquire_timeout=10,
            connect_timeout=5,
        )
        try:
            await driver.open()
            before = await settle(driver, sessions, size=3)
            assert await asyncio.to_thread(pg_cluster.terminate, app) == 3
            await wait_until("terminated sessions gone", lambda: sessions() == 0)
            await asyncio.sleep(0.1)  # idle longer than check_idle_after
            for i in range(6):
                assert await driver.fetch_value(f"SELECT {i}") == i
            values = await asyncio.gather(*(driver.fetch_value("SELECT 7") for _ in range(3)))
            assert values == [7, 7, 7]
            after = await settle(driver, sessions)
            assert after.size >= 3
            assert after.check_failures > before.check_failures
            assert after.closed >= before.closed + 3
            assert after.connects >= before.connects + 3
        finally:
            await driver.close()
        assert await asyncio.to_thread(sessions) == 0

    asyncio.run(main())


# ---------------------------------------------------------------- NET-2


def test_terminated_busy_connection_fails_its_caller_only(
    pg_cluster: PrivateCluster, flavour: Flavour
) -> None:
    """NET-2: a backend terminated mid-query: the caller gets the driver's error, the
    connection is discarded on release without raising, and the size is restored."""
    app = app_name("net2")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, application_name=app)
        driver = Driver(flavour, url, min_size=2, max_size=3, acquire_timeout=10)
        try:
            await driver.open()
            before = await settle(driver, sessions, size=2)

            async def kill_the_busy_one() -> int:
                await wait_until(
                    "the pg_sleep backend is active",
                    lambda: bool(pg_cluster.backend_pids(app, "active")),
                )
                return await asyncio.to_thread(pg_cluster.terminate, app, "active")

            killer = asyncio.create_task(kill_the_busy_one())
            caught: BaseException | None = None
            async with driver.acquire() as conn:
                try:
                    await driver.value(conn, "SELECT pg_sleep(30)")
                except driver.driver_errors() as exc:
                    caught = exc
            assert await killer == 1
            assert caught is not None, "the query survived pg_terminate_backend"
            assert not isinstance(caught, tidepool.PoolError), repr(caught)
            after = await settle(driver, sessions, size=2)
            assert after.closed >= before.closed + 1
            assert await driver.fetch_value("SELECT 1") == 1
            await settle(driver, sessions)
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- NET-3


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_with_warm_pool_costs_at_most_one_request(
    pg_cluster: PrivateCluster, flavour: Flavour, mode: str
) -> None:
    """NET-3: restart the server under a warm pool (every connection used recently, so the
    idle check does not run): of 10 sequential requests after the restart at most one fails,
    because a disconnect retires every connection made before it."""
    app = app_name("net3")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, application_name=app)
        driver = Driver(
            flavour,
            url,
            min_size=5,
            max_size=10,
            check="idle",
            check_idle_after=60,
            acquire_timeout=10,
            connect_timeout=5,
        )
        try:
            await driver.open()
            await settle(driver, sessions, size=5)

            async def use_one() -> None:
                async with driver.acquire() as conn:
                    await driver.value(conn, "SELECT pg_sleep(0.05)")

            # Warm: all five in use at once, returned in the order they finish.
            await asyncio.gather(*(use_one() for _ in range(5)))
            warm = await settle(driver, sessions, size=5)
            assert warm.connects == 5

            await asyncio.to_thread(pg_cluster.restart, mode)
            failures: list[BaseException] = []
            for i in range(10):
                try:
                    assert await driver.fetch_value(f"SELECT {i}") == i
                except Exception as exc:
                    failures.append(exc)
            assert len(failures) <= 1, (
                f"{len(failures)} of 10 requests failed after a {mode} restart: "
                + "; ".join(f"{type(e).__name__}: {e}" for e in failures)
            )
            after = await settle(driver, sessions)
            assert after.size >= 5
            assert after.connects >= 6
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- NET-4


def test_server_down_at_start_then_up(pg_cluster: PrivateCluster, flavour: Flavour) -> None:
    """NET-4: open() against a stopped server raises PoolTimeout (phase connect) at its
    deadline with the connect error as cause; a pool with min_size keeps trying in the
    background and fills itself once the server is back."""
    app = app_name("net4")
    sessions = sessions_of(pg_cluster, app)
    url = pg_cluster.url(flavour.scheme, application_name=app)

    async def main() -> None:
        await asyncio.to_thread(pg_cluster.stop)
        first = Driver(flavour, url, acquire_timeout=1, connect_timeout=1)
        try:
            started = time.monotonic()
            with pytest.raises(tidepool.PoolTimeout) as info:
                await first.open()
            elapsed = time.monotonic() - started
            assert info.value.phase == "connect"
            assert isinstance(info.value.__cause__, (OSError, psycopg.Error)), repr(
                info.value.__cause__
            )
            assert 0.9 <= elapsed < 4.0, elapsed
        finally:
            await first.close()

        driver = Driver(flavour, url, min_size=2, max_size=4, acquire_timeout=1, connect_timeout=1)
        try:
            with pytest.raises(tidepool.PoolTimeout):
                await driver.open()
            await asyncio.sleep(1.0)  # still down: the background keeps failing
            down = driver.stats()
            assert down.connect_errors >= 2
            assert down.size == down.connecting
            await asyncio.to_thread(pg_cluster.start)
            # No acquire needed: the background fill brings it back to min_size.
            await wait_until("the pool refilled", lambda: driver.stats().idle == 2, 15)
            assert await driver.fetch_value("SELECT 1") == 1
            await settle(driver, sessions, size=2)
        finally:
            await driver.close()

    try:
        asyncio.run(main())
    finally:
        if not pg_cluster.running:
            pg_cluster.start()


# ---------------------------------------------------------------- NET-8


def test_credential_rotation(pg_cluster: PrivateCluster, flavour: Flavour) -> None:
    """NET-8: the password comes from a provider; after ALTER ROLE ... PASSWORD, old
    connections keep working; once the provider has the new password, expire() rolls the
    pool onto it; no request fails throughout."""
    role = pg_cluster.password_role
    assert role is not None
    app = app_name("net8")
    sessions = sessions_of(pg_cluster, app)
    current = {"password": f"old-{uuid.uuid4().hex}"}
    pg_cluster.set_password(current["password"])

    def provider() -> str:
        return current["password"]

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, user=role, application_name=app)
        driver = Driver(
            flavour,
            url,
            min_size=2,
            max_size=3,
            acquire_timeout=10,
            connect_kwargs={"password": provider},
        )
        done = asyncio.Event()
        errors: list[BaseException] = []
        served = [0]

        async def load() -> None:
            while not done.is_set():
                try:
                    assert await driver.fetch_value("SELECT current_user") == role
                    served[0] += 1
                except Exception as exc:
                    errors.append(exc)
                await asyncio.sleep(0.005)

        try:
            await driver.open()
            await settle(driver, sessions, size=2)
            old_pids = set(await asyncio.to_thread(pg_cluster.backend_pids, app))
            workers = [asyncio.create_task(load()) for _ in range(2)]
            try:
                await asyncio.sleep(0.2)
                new_password = f"new-{uuid.uuid4().hex}"
                await asyncio.to_thread(pg_cluster.set_password, new_password)
                mark = served[0]
                await asyncio.sleep(0.3)  # old connections still serve
                assert served[0] > mark
                assert set(await asyncio.to_thread(pg_cluster.backend_pids, app)) == old_pids
                current["password"] = new_password
                driver.expire()
                await wait_until(
                    "every session rolled onto the new password",
                    lambda: (
                        not set(pg_cluster.backend_pids(app)) & old_pids
                        and bool(pg_cluster.backend_pids(app))
                    ),
                )
                mark = served[0]
                await asyncio.sleep(0.2)
                assert served[0] > mark
            finally:
                done.set()
                await asyncio.gather(*workers)
            assert errors == [], errors[:3]
            await settle(driver, sessions)
        finally:
            await driver.close()

        wrong = Driver(
            flavour,
            url,
            acquire_timeout=10,
            connect_kwargs={"password": "not-the-password"},
        )
        try:
            started = time.monotonic()
            with pytest.raises(tidepool.ConnectError) as info:
                await wrong.open()
            assert time.monotonic() - started < 5.0  # fails fast, no retry loop
            assert isinstance(info.value.__cause__, Exception)
            assert "not-the-password" not in str(info.value)
            await settle(wrong, sessions, size=0)
        finally:
            await wrong.close()

    asyncio.run(main())
