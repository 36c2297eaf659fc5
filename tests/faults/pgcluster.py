"""Private PostgreSQL clusters and PgBouncer instances for fault tests.

Fault tests stop, restart, freeze and kill servers, so they never touch the shared server on
5432: :class:`PrivateCluster` runs a throw-away cluster on a free loopback port (as the
``postgres`` OS user when the tests run as root, since PostgreSQL refuses root), and
:class:`PgBouncer` a throw-away PgBouncer in transaction mode. Every wait is bounded, and
``close()`` / ``stop()`` end the server by its own pid whatever state it is in.

The module also holds what the fault tests share about pools: :class:`Flavour` (AsyncPool with
asyncpg, AsyncPool with psycopg, Pool with psycopg), :class:`Driver` (one awaitable face over
either pool, so a scenario is written once; ``Pool`` is driven from worker threads) and the
invariant checker of design.md section 7 (:func:`settle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tidepool
from conftest import IN_CI

PG_BIN = Path(os.environ.get("TIDEPOOL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBOUNCER = Path(os.environ.get("TIDEPOOL_TEST_PGBOUNCER", "/usr/sbin/pgbouncer"))
OPENSSL = Path(shutil.which("openssl") or "/usr/bin/openssl")
OS_USER = "postgres"  # who runs the servers when we are root
START_TIMEOUT = 15.0  # seconds; a loaded 2-core machine is slow to initdb and start


def require_binary(path: Path, what: str) -> None:
    """Skip (locally) or fail (with ``CI=true``) unless ``path`` is an executable."""
    if path.is_file() and os.access(path, os.X_OK):
        return
    reason = f"{what} is not installed at {path}"
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", OS_USER, "--", *argv]
    return list(argv)


def _run(argv: Sequence[str], timeout: float = START_TIMEOUT, *, as_server: bool = True) -> str:
    """Run a command to completion (bounded); return its output, raise with it on failure."""
    cmd = _as_server_user(argv) if as_server else list(argv)
    done = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}"
        )
    return done.stdout


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _stop_pid(pid: int, first: signal.Signals, timeout: float) -> None:
    """Signal ``pid`` and wait (bounded) until it is gone; SIGKILL after ``timeout``."""
    for sig, wait in ((first, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.02)


def _wait_until(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.1f} s")
        time.sleep(0.02)


# ---------------------------------------------------------------- PostgreSQL


class PrivateCluster:
    """A throw-away PostgreSQL cluster on ``127.0.0.1:port``, for tests that break servers.

    Local and 127.0.0.1 connections are trusted, except the optional ``password_role``,
    which logs in with scram-sha-256 (password ``password``). ``tls=True`` turns on SSL with
    a server certificate for ``localhost`` / ``127.0.0.1`` signed by a fresh CA
    (``ca_cert``); ``other_ca_cert`` is a CA that signed nothing (a wrong CA).

    Use it as a context manager, or call :meth:`start` and always :meth:`close`.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        password_role: str | None = None,
        password: str = "secret-1",
    ) -> None:
        self.tls = tls
        self.password_role = password_role
        self.password = password
        self.port = free_port()
        self.host = "127.0.0.1"
        self.dir = Path(tempfile.mkdtemp(prefix="tidepool-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.ca_cert = self.dir / "ca.crt"
        self.other_ca_cert = self.dir / "other-ca.crt"
        self._frozen: set[int] = set()
        self._pid: int | None = None
        _give_to_server_user(self.dir)
        self.dir.chmod(0o755)

    def __enter__(self) -> PrivateCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """initdb (first time only), then start the server and wait until it answers."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            ],
            timeout=START_TIMEOUT + 5,
        )
        self._pid = self._read_pid()
        self._wait_ready()

    def _initdb(self) -> None:
        _run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
            timeout=60,
        )
        hba = ["local all all trust"]
        if self.password_role:
            hba.append(f"host all {self.password_role} 127.0.0.1/32 scram-sha-256")
        hba.append("host all all 127.0.0.1/32 trust")
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        conf = [
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 60",
            "shared_buffers = 16MB",
            "log_min_messages = warning",
        ]
        if self.tls:
            self._make_certificates()
            conf += [
                "ssl = on",
                f"ssl_cert_file = '{self.dir / 'server.crt'}'",
                f"ssl_key_file = '{self.dir / 'server.key'}'",
            ]
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# tidepool fault tests\n" + "\n".join(conf) + "\n")
        # The password role is created once the server runs (see _wait_ready).

    def _make_certificates(self) -> None:
        """A CA, a server certificate for localhost/127.0.0.1 signed by it, and a second CA."""
        d = self.dir
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for name, cn in (("ca", "tidepool test CA"), ("other-ca", "tidepool wrong CA")):
            _run(
                [
                    str(OPENSSL), "req", "-x509", *ec, "-days", "2",
                    "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"),
                    "-subj", f"/CN={cn}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                ],
                as_server=False,
            )  # fmt: skip
        _run(
            [
                str(OPENSSL), "req", *ec, "-keyout", str(d / "server.key"),
                "-out", str(d / "server.csr"), "-subj", "/CN=localhost",
            ],
            as_server=False,
        )  # fmt: skip
        ext = d / "server.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "authorityKeyIdentifier=keyid\n"
        )
        _run(
            [
                str(OPENSSL), "x509", "-req", "-in", str(d / "server.csr"),
                "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
                "-days", "2", "-extfile", str(ext), "-out", str(d / "server.crt"),
            ],
            as_server=False,
        )  # fmt: skip
        for name in ("server.key", "server.crt", "ca.crt", "other-ca.crt"):
            _give_to_server_user(d / name)
        (d / "server.key").chmod(0o600)

    def _read_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def _wait_ready(self) -> None:
        def ready() -> bool:
            try:
                with psycopg.connect(**self.conninfo(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        _wait_until(f"PostgreSQL on port {self.port} accepting connections", ready, START_TIMEOUT)
        if self.password_role and not self.sql(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (self.password_role,)
        ):
            self.sql(f"CREATE ROLE {self.password_role} LOGIN")
            self.set_password(self.password)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE`` on the same port ("fast": sessions get 57P01;
        "immediate": a crash, then recovery); returns when it accepts connections again."""
        assert mode in ("smart", "fast", "immediate"), mode
        self.thaw_all()
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "restart",
            ],
            timeout=START_TIMEOUT * 2,
        )
        self._pid = self._read_pid()
        self._wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (by the postmaster's pid), bounded; a no-op if it is not running."""
        self.thaw_all()
        pid = self._pid
        self._pid = None
        if pid is not None:
            sig = signal.SIGQUIT if mode == "immediate" else signal.SIGINT
            _stop_pid(pid, sig, 10.0)

    @property
    def running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    def close(self) -> None:
        """Stop the server whatever its state and remove its directory. Idempotent."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ poking

    def conninfo(self, **overrides: Any) -> dict[str, Any]:
        """psycopg keyword arguments for a trusted superuser connection."""
        info: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": "postgres",
            "dbname": "postgres",
        }
        info.update(overrides)
        return info

    def url(
        self,
        scheme: str = "postgresql",
        *,
        user: str = "postgres",
        host: str | None = None,
        port: int | None = None,
        **params: str,
    ) -> str:
        """A URL for this cluster (or for ``host:port``, e.g. a proxy in front of it)."""
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        where = f"{host or self.host}:{port or self.port}"
        return f"{scheme}://{user}@{where}/postgres" + (f"?{qs}" if qs else "")

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh autocommit superuser connection; return its rows."""
        with psycopg.connect(**self.conninfo(), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def set_password(self, password: str) -> None:
        """``ALTER ROLE <password_role> PASSWORD ...`` (scram-sha-256)."""
        assert self.password_role
        with psycopg.connect(**self.conninfo(), autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    psycopg.sql.Identifier(self.password_role), psycopg.sql.Literal(password)
                )
            )
        self.password = password

    def backend_pids(self, app: str, state: str | None = None) -> list[int]:
        """Backends of ``app`` (optionally only those in ``state``, e.g. "active")."""
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND (%s::text IS NULL OR state = %s)",
            (app, state, state),
        )
        return [int(r[0]) for r in rows]

    def session_count(self, app: str) -> int:
        return len(self.backend_pids(app))

    def terminate(self, app: str, state: str | None = None) -> int:
        """``pg_terminate_backend`` the sessions of ``app`` (in ``state``); how many."""
        rows = self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND (%s::text IS NULL OR state = %s)",
            (app, state, state),
        )
        return len(rows)

    def freeze(self, pid: int) -> None:
        """``kill -STOP`` one backend: its socket stays open, it answers nothing."""
        os.kill(pid, signal.SIGSTOP)
        self._frozen.add(pid)

    def thaw(self, pid: int) -> None:
        """``kill -CONT`` a frozen backend."""
        self._frozen.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def thaw_all(self) -> None:
        for pid in list(self._frozen):
            self.thaw(pid)


# ---------------------------------------------------------------- PgBouncer


class PgBouncer:
    """A throw-away PgBouncer in transaction mode on a free port, trusting every user,
    pointing every database at ``upstream_host:upstream_port``. ``pool_size`` server
    connections per database/user pair (small, so clients share server connections)."""

    def __init__(self, upstream_host: str, upstream_port: int, *, pool_size: int = 4) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tidepool-bouncer-"))
        self.upstream = (upstream_host, upstream_port)
        self.pool_size = pool_size
        self._pid: int | None = None
        _give_to_server_user(self.dir)
        self.dir.chmod(0o755)

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        d = self.dir
        (d / "userlist.txt").write_text('"postgres" ""\n')
        host, port = self.upstream
        (d / "pgbouncer.ini").write_text(
            f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = {self.host}
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {d / "userlist.txt"}
admin_users = postgres
stats_users = postgres
pool_mode = transaction
max_client_conn = 500
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {d / "pgbouncer.log"}
pidfile = {d / "pgbouncer.pid"}
"""
        )
        for name in ("userlist.txt", "pgbouncer.ini"):
            _give_to_server_user(d / name)
        _run([str(PGBOUNCER), "-d", str(d / "pgbouncer.ini")], timeout=START_TIMEOUT)
        pidfile = d / "pgbouncer.pid"
        _wait_until("the PgBouncer pid file", pidfile.exists, START_TIMEOUT)
        self._pid = int(pidfile.read_text().strip())
        _wait_until("PgBouncer answering", self._answers, START_TIMEOUT)

    def _answers(self) -> bool:
        try:
            self.show("VERSION")
            return True
        except psycopg.OperationalError:
            return False

    def url(self, scheme: str = "postgresql", dbname: str = "test", **params: str) -> str:
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{scheme}://postgres@{self.host}:{self.port}/{dbname}" + (f"?{qs}" if qs else "")

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on the admin console (simple query protocol, as it requires)."""
        with psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="pgbouncer", autocommit=True
        ) as conn:
            result = conn.pgconn.exec_(f"SHOW {what}".encode())
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            return [
                {names[c]: (result.get_value(r, c) or b"").decode() for c in range(result.nfields)}
                for r in range(result.ntuples)
            ]

    def stop(self) -> None:
        pid = self._pid
        self._pid = None
        if pid is not None:
            _stop_pid(pid, signal.SIGTERM, 10.0)  # immediate shutdown

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- pools under test


@dataclass(frozen=True)
class Flavour:
    """One way to pool PostgreSQL: which pool class and which driver."""

    id: str
    scheme: str
    sync: bool
    placeholder: str  # the driver's parameter marker

    def __str__(self) -> str:
        return self.id


FLAVOURS = [
    Flavour("asyncpg", "postgresql", sync=False, placeholder="$1"),
    Flavour("psycopg-async", "postgresql+psycopg", sync=False, placeholder="%s"),
    Flavour("psycopg-sync", "postgresql", sync=True, placeholder="%s"),
]


class Driver:
    """One awaitable face over an ``AsyncPool`` or a ``Pool`` (driven from worker threads),
    so that a scenario is written once and runs for every flavour.

    Build it inside the event loop (``asyncio.run``); always ``await driver.close()``.
    """

    def __init__(self, flavour: Flavour, url: str, **options: Any) -> None:
        self.flavour = flavour
        self._executor: ThreadPoolExecutor | None = None
        self.pool: Any
        if flavour.sync:
            self._executor = ThreadPoolExecutor(max_workers=24, thread_name_prefix="fault-test")
            self.pool = tidepool.Pool(url, **options)
        else:
            self.pool = tidepool.AsyncPool(url, **options)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        if self._executor is not None:
            await self._call(self.pool.open)
        else:
            await self.pool.open()

    async def close(self, timeout: float = 5.0, *, final: bool = True) -> None:
        """Close the pool (idempotent); ``final=False`` keeps the worker threads of a ``Pool``
        for calls after the close (always end with a final close)."""
        executor = self._executor
        try:
            if executor is None:
                await self.pool.aclose(timeout=timeout)
            elif not executor._shutdown:
                await self._call(lambda: self.pool.close(timeout=timeout))
        finally:
            if executor is not None and final:
                executor.shutdown(wait=True)

    def stats(self) -> Any:
        return self.pool.stats()

    def expire(self) -> None:
        self.pool.expire()

    async def fetch_value(self, sql: str, *args: Any) -> Any:
        if self._executor is not None:
            return await self._call(self.pool.fetch_value, sql, *args)
        return await self.pool.fetch_value(sql, *args)

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """Borrow a connection (``timeout=None``: the pool's ``acquire_timeout``)."""
        if self._executor is None:
            lease = self.pool.acquire() if timeout is None else self.pool.acquire(timeout)
            async with lease as conn:
                yield conn
            return
        if timeout is None:
            conn = await self._call(self.pool.getconn)
        else:
            conn = await self._call(self.pool.getconn, timeout)
        try:
            yield conn
        finally:
            await self._call(self.pool.release, conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self._executor is None:
            async with self.pool.transaction() as conn:
                yield conn
            return
        manager = self.pool.transaction()
        conn = await self._call(manager.__enter__)
        try:
            yield conn
        except BaseException as exc:
            await self._call(manager.__exit__, type(exc), exc, exc.__traceback__)
            raise
        else:
            await self._call(manager.__exit__, None, None, None)

    async def value(self, conn: Any, sql: str, *args: Any) -> Any:
        """Run ``sql`` on a lent connection; return the first column of the first row."""
        if self.flavour.id == "asyncpg":
            return await conn.fetchval(sql, *args)
        if self._executor is None:
            cur = await conn.execute(sql, args or None)
            row = await cur.fetchone() if cur.description else None
            return None if row is None else row[0]

        def run() -> Any:
            cur = conn.execute(sql, args or None)
            row = cur.fetchone() if cur.description else None
            return None if row is None else row[0]

        return await self._call(run)

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's own error classes (what a caller sees for a query that failed)."""
        if self.flavour.id == "asyncpg":
            import asyncpg

            return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
        return (psycopg.Error,)


async def settle(
    driver: Driver,
    sessions: Callable[[], int] | None,
    *,
    timeout: float = 10.0,
    size: int | None = None,
) -> Any:
    """Wait (bounded) for the pool to settle, then check design.md section 7's invariants:
    size <= max_size, idle + in_use + connecting == size, nobody waiting, nothing connecting,
    and, when ``sessions`` is given, server-side sessions == size (and == ``size`` if given).
    Returns the final stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = driver.stats()
        count = None if sessions is None else await asyncio.to_thread(sessions)
        ok = (
            stats.connecting == 0
            and stats.waiting == 0
            and (size is None or stats.size == size)
            and (count is None or count == stats.size)
        )
        if ok or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert stats.size <= stats.max_size, stats
    assert stats.idle + stats.in_use + stats.connecting == stats.size, stats
    assert stats.waiting == 0, stats
    assert stats.connecting == 0, stats
    if size is not None:
        assert stats.size == size, stats
    if count is not None:
        assert count == stats.size, f"server shows {count} sessions for {stats}"
    return stats
