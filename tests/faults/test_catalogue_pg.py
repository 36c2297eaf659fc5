"""PostgreSQL scenarios of the reliability catalogue not covered elsewhere: a role at its
connection limit (NET-7), sessions ended by the server's ``idle_session_timeout`` (NET-10),
wall-clock jumps (NET-15), ``fork()`` with connections idle and lent (PROC-1), a canary
password swept through every error, repr, stats and log record (SEC, section 4.1) and a pool
garbage-collected without close (LEAK-13).

They run on a private cluster (never on the shared server), for AsyncPool + asyncpg,
AsyncPool + psycopg and Pool + psycopg where the scenario applies, and end with the invariant
check of design.md section 7 (``settle``), including the server-side session count for the
pool's ``application_name``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tidepool
from pg_helpers import app_name
from pool.test_fork import run_in_child

from .pgcluster import Driver, Flavour, PrivateCluster, settle
from .proxy import ChaosProxy
from .test_pg_network import sessions_of, wait_until


@pytest.fixture
def make_role(pg_cluster: PrivateCluster) -> Iterator[Callable[..., str]]:
    """A factory of throw-away login roles on the private cluster (trusted from 127.0.0.1):
    ``make_role("SET idle_session_timeout = '1s'", "CONNECTION LIMIT 2")``. Each role is
    dropped after the test, once its sessions are gone."""
    roles: list[str] = []

    def make(*alter: str) -> str:
        role = f"cat_{uuid.uuid4().hex[:10]}"
        pg_cluster.sql(f"CREATE ROLE {role} LOGIN")
        roles.append(role)
        for clause in alter:
            pg_cluster.sql(f"ALTER ROLE {role} {clause}")
        return role

    yield make
    for role in roles:
        pg_cluster.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        deadline = time.monotonic() + 10
        while pg_cluster.sql("SELECT 1 FROM pg_stat_activity WHERE usename = %s", (role,)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        pg_cluster.sql(f"DROP ROLE IF EXISTS {role}")


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` / ``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


# ---------------------------------------------------------------- NET-7


def test_net7_role_connection_limit(
    pg_cluster: PrivateCluster,
    flavour: Flavour,
    make_role: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NET-7: the role may open 2 connections, the pool 5. The pool keeps working with the
    2 it has: 8 busy callers are all served by returned connections, failed growth backs off
    instead of hammering the server, and a caller that times out gets the server's "too many
    connections" message in its cause chain."""
    caplog.set_level(logging.CRITICAL, logger="tidepool")
    role = make_role("CONNECTION LIMIT 2")
    app = app_name("net7")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, user=role, application_name=app)
        driver = Driver(flavour, url, max_size=5, acquire_timeout=30, connect_timeout=3)
        served: list[Any] = []

        async def busy() -> None:
            for _ in range(4):
                async with driver.acquire() as conn:
                    served.append(await driver.value(conn, "SELECT current_user"))
                    await driver.value(conn, "SELECT pg_sleep(0.02)")

        try:
            await asyncio.gather(*(busy() for _ in range(8)))
            assert served == [role] * 32
            stats = driver.stats()
            assert stats.connects <= 2 + stats.closed, stats  # never more than 2 at once
            assert stats.connect_errors >= 1, stats  # it did try to grow
            assert await asyncio.to_thread(sessions) <= 2

            # Both connections lent: a caller times out with the server's message.
            leases = [driver.acquire(), driver.acquire()]
            for lease in leases:
                await lease.__aenter__()
            try:
                before = driver.stats()
                with pytest.raises(tidepool.PoolTimeout) as info:
                    async with driver.acquire(timeout=1.5):
                        pass
                texts = " | ".join(str(e) for e in error_chain(info.value))
                assert "too many connections" in texts, texts
                during = driver.stats()
                # Backoff: a handful of attempts in 1.5 s, not a loop hammering the server.
                assert during.connect_errors - before.connect_errors <= 30, during

                # A waiter is served by a returned connection.
                async def wait_for_one() -> Any:
                    async with driver.acquire(timeout=20) as conn:
                        return await driver.value(conn, "SELECT 5")

                waiter = asyncio.create_task(wait_for_one())
                await wait_until("the waiter queued", lambda: driver.stats().waiting == 1)
                await leases.pop().__aexit__(None, None, None)
                assert await waiter == 5
            finally:
                for lease in leases:
                    await lease.__aexit__(None, None, None)
            stats = await settle(driver, sessions)
            assert stats.size <= 2
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- NET-10


def test_net10_server_idle_kill_is_invisible_to_callers(
    pg_cluster: PrivateCluster, flavour: Flavour, make_role: Callable[..., str]
) -> None:
    """NET-10: the server ends sessions idle for 1 s (``idle_session_timeout`` on the role).
    After the pool idles 2 s, every next request succeeds: the idle check (check="idle",
    check_idle_after=0.2) finds the dead connections and replaces them unseen."""
    role = make_role("SET idle_session_timeout = '1s'")
    app = app_name("net10")
    sessions = sessions_of(pg_cluster, app)

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, user=role, application_name=app)
        driver = Driver(
            flavour,
            url,
            min_size=2,
            max_size=4,
            check="idle",
            check_idle_after=0.2,
            acquire_timeout=10,
            connect_timeout=3,
        )
        try:
            await driver.open()
            assert driver.stats().size == 2
            await wait_until("the server ended the idle sessions", lambda: sessions() == 0)
            await asyncio.sleep(0.5)  # idle 2 s in all
            errors: list[BaseException] = []
            values: list[Any] = []
            for i in range(5):
                try:
                    values.append(await driver.fetch_value(f"SELECT {i}"))
                except Exception as exc:
                    errors.append(exc)
            try:
                values += await asyncio.gather(*(driver.fetch_value("SELECT 9") for _ in range(4)))
            except Exception as exc:
                errors.append(exc)
            assert errors == [], errors
            assert values == [0, 1, 2, 3, 4, 9, 9, 9, 9]
            # Compare with the server before the new connections idle long enough to be
            # ended in turn.
            stats = await settle(driver, sessions, timeout=0.8)
            assert stats.check_failures >= 1, stats
            assert stats.connects >= 3, stats
        finally:
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- NET-15


def test_net15_wall_clock_jumps_change_nothing(
    pg_cluster: PrivateCluster, flavour: Flavour, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NET-15: ``time.time()`` jumps one hour forward, then one hour back, while the pool is
    in use (with an idle timeout, a lifetime and an idle check): no connection is retired or
    checked because of it, no request fails, and an acquire deadline still holds."""
    app = app_name("net15")
    sessions = sessions_of(pg_cluster, app)
    real_time = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])

    async def main() -> None:
        url = pg_cluster.url(flavour.scheme, application_name=app)
        driver = Driver(
            flavour,
            url,
            min_size=2,
            max_size=2,
            idle_timeout=60,
            max_lifetime=120,
            check="idle",
            check_idle_after=30,
            acquire_timeout=10,
        )
        try:
            await driver.open()
            before = await settle(driver, sessions, size=2)

            async def burst() -> None:
                values = await asyncio.gather(*(driver.fetch_value("SELECT 3") for _ in range(6)))
                assert values == [3] * 6
                driver.pool.maintain()
                await asyncio.sleep(0.05)

            await burst()
            for jump in (3600.0, -3600.0, -7200.0):
                offset[0] = jump
                await burst()
                await burst()
            # A deadline is measured on the monotonic clock: not shortened by a jump back.
            async with driver.acquire() as _a, driver.acquire() as _b:
                started = time.monotonic()
                offset[0] = 3600.0
                with pytest.raises(tidepool.PoolTimeout):
                    async with driver.acquire(timeout=0.5):
                        pass
                elapsed = time.monotonic() - started
                assert elapsed >= 0.5 - 1e-3, elapsed
                assert elapsed < 5.0, elapsed
            after = await settle(driver, sessions, size=2)
            assert after.connects == before.connects, after
            assert after.closed == before.closed, after
            assert after.check_failures == 0, after
            assert after.timeouts == before.timeouts + 1, after
        finally:
            offset[0] = 0.0
            await driver.close()

    asyncio.run(main())


# ---------------------------------------------------------------- PROC-1


def test_proc1_fork_with_pg_connections_idle_and_lent(pg_cluster: PrivateCluster) -> None:
    """PROC-1 (Pool + psycopg): fork while the pool holds idle connections and one is lent.
    The child gets its own connections (other backend pids) and closes only those; the
    parent's sessions, idle and lent, keep working after the child exits."""
    app = app_name("proc1")
    url = pg_cluster.url("postgresql", application_name=app)
    pool: tidepool.Pool[Any] = tidepool.Pool(url, min_size=3, max_size=4, check="always")
    try:
        pool.open()
        deadline = time.monotonic() + 10
        while pool.stats().idle < 3 or pg_cluster.session_count(app) != 3:
            assert time.monotonic() < deadline, pool.stats()
            time.sleep(0.02)
        lent = pool.getconn()
        lent_pid = lent.execute("SELECT pg_backend_pid()").fetchone()[0]
        parent_pids = set(pg_cluster.backend_pids(app))
        assert lent_pid in parent_pids
        assert len(parent_pids) == 3
        before = pool.stats()

        def child() -> dict[str, Any]:
            pids = []
            for _ in range(2):
                with pool.acquire(timeout=10) as conn:
                    pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            both = [pool.getconn(timeout=10), pool.getconn(timeout=10)]
            pids += [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in both]
            for conn in both:
                pool.release(conn)
            size = pool.stats().size
            pool.close(timeout=2)
            return {"pids": pids, "size": size, "after_close": pool.stats().size}

        report = run_in_child(child, timeout=30)
        assert "error" not in report, report
        assert not set(report["pids"]) & parent_pids, (report, parent_pids)
        assert report["size"] >= 2
        assert report["after_close"] == 0

        # The parent: same stats, same sessions, every one of them still answering.
        assert pool.stats() == before
        deadline = time.monotonic() + 10
        while set(pg_cluster.backend_pids(app)) != parent_pids:  # the child's are gone
            assert time.monotonic() < deadline, pg_cluster.backend_pids(app)
            time.sleep(0.02)
        assert lent.execute("SELECT pg_backend_pid()").fetchone()[0] == lent_pid
        idle = [pool.getconn(timeout=5) for _ in range(2)]
        idle_pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in idle}
        assert idle_pids == parent_pids - {lent_pid}
        for conn in [*idle, lent]:
            pool.release(conn)
        after = pool.stats()
        assert after.check_failures == 0, after
        assert after.connects == before.connects, after
        assert after.idle + after.in_use + after.connecting == after.size == 3, after
        assert after.waiting == 0
        assert pg_cluster.session_count(app) == after.size
    finally:
        pool.close()
    assert pg_cluster.session_count(app) == 0


# ---------------------------------------------------------------- SEC (4.1)


def _texts_of_error(exc: BaseException, *, with_locals: bool) -> list[str]:
    """Everything a user, a logger or an error tracker may render of ``exc`` (with the
    frames' local variables too, as Sentry, debuggers and ``pytest --showlocals`` do)."""
    texts: list[str] = []
    for item in error_chain(exc):
        texts += [str(item), repr(item), repr(item.args)]
        texts += [str(note) for note in getattr(item, "__notes__", [])]
    texts.append("".join(traceback.format_exception(exc)))
    if with_locals:
        formatted = traceback.TracebackException.from_exception(exc, capture_locals=True)
        texts.append("".join(formatted.format()))
    return texts


def _texts_of_records(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts: list[str] = []
    for record in records:
        texts += [record.getMessage(), repr(record.args), formatter.format(record)]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return texts


class _Vault:
    """Holds the canary passwords and builds what carries them, so that no frame of the test
    has a secret in a local variable (tracebacks are formatted with their locals below, and a
    canary found in the test's own frame would say nothing about tidepool)."""

    def __init__(self, cluster: PrivateCluster, flavour: Flavour, app: str) -> None:
        self._cluster = cluster
        self._flavour = flavour
        self._app = app
        self._passwords = {
            "right": f"Canary-{uuid.uuid4().hex[:16]}",
            "wrong": f"WrongCanary-{uuid.uuid4().hex[:16]}",
        }

    def __repr__(self) -> str:
        return "<vault>"

    def install(self) -> None:
        """Make the right canary the role's password."""
        self._cluster.set_password(self._passwords["right"])

    def url(self, which: str | None, **where: Any) -> str:
        """A URL with the ``which`` password in it (``None``: without a password)."""
        role = self._cluster.password_role
        user = role if which is None else f"{role}:{self._passwords[which]}"
        return self._cluster.url(
            self._flavour.scheme, user=user, application_name=self._app, **where
        )

    def kwargs(self, which: str | None) -> dict[str, Any]:
        return {} if which is None else {"password": self._passwords[which]}

    def where(self, text: str) -> str:
        """The lines of ``text`` that show a canary, masked (for the failure message)."""
        lines = text.splitlines()
        for password in self._passwords.values():
            lines = [line.replace(password, "<CANARY>") for line in lines]
        found = [i for i, line in enumerate(lines) if "<CANARY>" in line]
        shown = sorted({j for i in found for j in range(max(0, i - 4), i + 1)})
        return "the canary leaked here:\n" + "\n".join(lines[j][:400] for j in shown)

    def leaks(self, texts: list[str]) -> list[str]:
        """The texts that show a canary."""
        return [t for t in texts if any(p in t for p in self._passwords.values())]


@pytest.mark.parametrize("with_locals", [False, True], ids=["messages", "locals"])
def test_sec_canary_password_never_shows(
    pg_cluster: PrivateCluster,
    chaos_proxy: ChaosProxy,
    flavour: Flavour,
    caplog: pytest.LogCaptureFixture,
    with_locals: bool,
) -> None:
    """SEC 4.1: the scram-sha-256 role's password is a canary. Used right (in the URL and
    through ``connect_kwargs``), wrong (ConnectError) and against a refused port (PoolTimeout),
    neither the canary nor the wrong password appears in any exception message, repr, cause
    chain or traceback, in ``repr(pool)``, ``pool.stats()``, or in a log record of the
    "tidepool" logger at DEBUG; the "locals" variant also formats every traceback with its
    frames' local variables."""
    caplog.set_level(logging.DEBUG, logger="tidepool")
    role = pg_cluster.password_role
    assert role is not None
    app = app_name("sec")
    vault = _Vault(pg_cluster, flavour, app)
    vault.install()
    sessions = sessions_of(pg_cluster, app)
    seen: list[str] = []
    errors: list[BaseException] = []

    def look_at(driver: Driver) -> None:
        seen.extend([repr(driver.pool), str(driver.pool), repr(driver.stats())])
        seen.extend([str(driver.stats()), repr(driver.pool.options), driver.pool.name])

    async def main() -> None:
        for in_url, in_kwargs in (("right", None), (None, "right")):
            driver = Driver(
                flavour,
                vault.url(in_url),
                min_size=1,
                max_size=2,
                connect_kwargs=vault.kwargs(in_kwargs),
            )
            try:
                await driver.open()
                assert await driver.fetch_value("SELECT current_user") == role
                try:
                    await driver.fetch_value("SELECT 1/0")  # a driver error, passed through
                except Exception as exc:
                    errors.append(exc)
                look_at(driver)
                await settle(driver, sessions, size=1)
            finally:
                await driver.close()

        for in_url, in_kwargs in (("wrong", None), (None, "wrong")):
            driver = Driver(
                flavour,
                vault.url(in_url),
                acquire_timeout=10,
                connect_kwargs=vault.kwargs(in_kwargs),
            )
            try:
                with pytest.raises(tidepool.ConnectError) as info:
                    await driver.open()
                errors.append(info.value)
                with pytest.raises(tidepool.ConnectError) as info:
                    await driver.fetch_value("SELECT 1")
                errors.append(info.value)
                look_at(driver)
                await settle(driver, sessions, size=0)
            finally:
                await driver.close()

        chaos_proxy.set_mode("refuse")
        driver = Driver(
            flavour,
            vault.url("right", host=chaos_proxy.host, port=chaos_proxy.port, sslmode="disable"),
            acquire_timeout=0.5,
            connect_timeout=1,
        )
        try:
            with pytest.raises(tidepool.PoolTimeout) as timeout_info:
                await driver.open()
            errors.append(timeout_info.value)
            look_at(driver)
        finally:
            await driver.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    seen.extend(str(w.message) for w in caught)
    assert len(errors) == 7
    assert isinstance(errors[-1].__cause__, Exception)  # the refused connect, chained
    for exc in errors:
        seen.extend(_texts_of_error(exc, with_locals=with_locals))
    assert caplog.records, "nothing was logged"
    seen.extend(_texts_of_records(caplog.records))
    leaks = vault.leaks(seen)
    assert leaks == [], vault.where(leaks[0])


# ---------------------------------------------------------------- LEAK-13


def test_leak13_pool_garbage_collected_with_idle_connections(
    pg_cluster: PrivateCluster, flavour: Flavour
) -> None:
    """LEAK-13: an opened pool with idle PostgreSQL connections is dropped without close:
    collecting it emits a ResourceWarning naming the pool, returns at once (nothing hangs,
    no background task or thread left) and the server sessions end."""
    app = app_name("leak13")
    url = pg_cluster.url(flavour.scheme, application_name=app)
    caught: list[warnings.WarningMessage] = []

    def drop(box: list[Any]) -> float:
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            box.clear()
            gc.collect()
            gc.collect()
        caught.extend(got)
        return time.monotonic() - started

    if flavour.sync:
        pool: Any = tidepool.Pool(url, min_size=2, max_size=3, name=app)
        pool.open()
        deadline = time.monotonic() + 10
        while pool.stats().idle < 2 or pg_cluster.session_count(app) != 2:
            assert time.monotonic() < deadline, pool.stats()
            time.sleep(0.02)
        ref = weakref.ref(pool)
        box = [pool]
        del pool
        elapsed = drop(box)
        deadline = time.monotonic() + 10
        while [t for t in threading.enumerate() if app in t.name]:
            assert time.monotonic() < deadline, "a pool thread outlived the pool"
            time.sleep(0.02)
    else:

        async def main() -> tuple[weakref.ref[Any], float]:
            pool = tidepool.AsyncPool(url, min_size=2, max_size=3, name=app)
            await pool.open()
            await wait_until(
                "two idle connections on the server",
                lambda: pool.stats().idle == 2 and pg_cluster.session_count(app) == 2,
            )
            await asyncio.sleep(0.05)  # the finished connect tasks' callbacks ran
            ref = weakref.ref(pool)
            box = [pool]
            del pool
            elapsed = drop(box)
            assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("tidepool-")]
            return ref, elapsed

        ref, elapsed = asyncio.run(main())
    assert ref() is None, "the pool was not collected"
    assert elapsed < 5.0, elapsed
    pool_warnings = [
        w for w in caught if issubclass(w.category, ResourceWarning) and app in str(w.message)
    ]
    assert pool_warnings, [str(w.message) for w in caught]
    deadline = time.monotonic() + 10
    while pg_cluster.session_count(app):
        if time.monotonic() > deadline:
            pg_cluster.terminate(app)  # clean up before failing
            raise AssertionError("the collected pool's sessions stayed open on the server")
        time.sleep(0.05)
