"""``tidepool check URL``: can this database be reached, and what does a pool save here?

It connects through the adapter a pool would use and reports the server kind and version,
the connection limit and its current use, the median time to open a connection against the
median time to acquire a pooled one, TLS, PgBouncer, and what the session reset costs.

PgBouncer detection (PostgreSQL): the tool asks the server which port it listens on
(``inet_server_port()``) and compares it with the port it connected to. A query always runs
on the real server, so a different port means a proxy sits in between (PgBouncer
conventionally on 6432 in front of 5432). The tool then tries PgBouncer's admin console
(database ``pgbouncer``, ``SHOW VERSION``) on the same address to name it; that needs the
user to be in PgBouncer's ``admin_users`` or ``stats_users``, so without it the report says
"a proxy, likely PgBouncer". ``?pgbouncer=true`` in the URL is reported as declared. A proxy on
the same port number on another host is not detected.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .._async.pool import AsyncPool
from .._url import redact_url
from ..errors import ConfigError
from .common import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNKNOWN_DATABASE,
    EXIT_USAGE,
    CommandError,
    connect_failure,
    scrub,
)
from .targets import LOCAL_HOSTS, failure, redis_info

__all__ = ["add_parser", "run"]


def _samples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 1000, got {text!r}")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value <= 3600.0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``check`` subcommand to ``sub`` (what ``add_subparsers()`` returned)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="connect to a database and report what a pool saves there",
        description=(
            "Connect to URL and report the server kind and version, connection limit and "
            "current use, the median time to open a connection against acquiring a pooled "
            "one, TLS, PgBouncer (detected by comparing the port connected to with the "
            "server's inet_server_port(), then PgBouncer's admin console), and what the "
            "session reset costs. SQLite: version, journal mode and file. Failures are one "
            "line; the password is never shown."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "url",
        metavar="URL",
        help="sqlite:///path.db, postgresql://..., mysql:// or mariadb://..., "
        "redis:// or rediss://...",
    )
    parser.add_argument(
        "--samples",
        type=_samples,
        default=20,
        metavar="N",
        help="connections opened and pooled acquires/releases timed (default: 20)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=5.0,
        metavar="SECONDS",
        help="bound on connecting and on each step (default: 5)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``tidepool check``; return the exit code."""
    url: str = args.url
    try:
        lines = asyncio.run(_check(url, args.samples, args.timeout))
    except CommandError as exc:
        print(f"tidepool check: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("tidepool check: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    width = max(len(key) for key, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}")
    return EXIT_OK


Lines = list[tuple[str, str]]


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000.0


async def _time(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return times


async def _pool_costs(manager_factory: Callable[[], Any], n: int, timeout: float) -> Lines:
    """Median pooled acquire, and median release with and without the session reset."""
    medians: dict[bool, tuple[float, float]] = {}
    for reset in (True, False):
        pool: AsyncPool[Any] = AsyncPool(
            manager_factory(),
            max_size=1,
            min_size=1,
            reset=reset,
            acquire_timeout=timeout,
            name=f"check-{'reset' if reset else 'noreset'}",
        )
        async with pool:
            acquires, releases = [], []
            for _ in range(n + 1):
                t0 = time.perf_counter()
                conn = await pool.acquire()
                t1 = time.perf_counter()
                await pool.release(conn)
                t2 = time.perf_counter()
                acquires.append(t1 - t0)
                releases.append(t2 - t1)
            # the first round may include the pool's own warm-up
            medians[reset] = (_median_ms(acquires[1:]), _median_ms(releases[1:]))
    acquire_ms = medians[True][0]
    with_reset, without = medians[True][1], medians[False][1]
    return [
        ("pooled acquire", f"{acquire_ms:.3f} ms (median of {n})"),
        (
            "session reset",
            f"{max(0.0, with_reset - without):.3f} ms per release (median release "
            f"{with_reset:.3f} ms with reset, {without:.3f} ms with reset=False)",
        ),
    ]


async def _check(url: str, n: int, timeout: float) -> Lines:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    base = scheme.partition("+")[0]
    if base == "sqlite":
        return await _check_sqlite(url, n, timeout)
    if base in ("postgresql", "postgres"):
        return await _check_pg(url, n, timeout)
    if base in ("mysql", "mariadb"):
        return await _check_mysql(url, n, timeout)
    if base in ("redis", "rediss", "unix"):
        return await _check_redis(url, n, timeout)
    kind = f"a {scheme}:// URL" if scheme else "a URL without a scheme"
    raise CommandError(
        f"unsupported database URL: {kind} ({redact_url(url)!r}); "
        "use sqlite:///path.db, postgresql://user@host:5432/db, "
        "mysql:// or mariadb://user@host:3306/db, or redis:// or rediss://host:6379/0",
        EXIT_USAGE,
    )


def _tax(open_ms: float, lines: Lines) -> Lines:
    acquire = next(value for key, value in lines if key == "pooled acquire")
    acquire_ms = float(acquire.split()[0])
    saved = open_ms - acquire_ms
    ratio = f", {open_ms / acquire_ms:,.0f}x faster" if acquire_ms > 0 else ""
    return [("pool saves", f"{saved:.3f} ms per request{ratio}")]


# ---------------------------------------------------------------------- SQLite


async def _check_sqlite(url: str, n: int, timeout: float) -> Lines:
    from ..adapters.sqlite import AsyncSQLiteManager, SQLiteTarget

    try:
        target = SQLiteTarget.from_url(url)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    shown = redact_url(url)
    if not target.memory and not await asyncio.to_thread(os.path.exists, target.database):
        raise CommandError(
            f"cannot open {shown}: unknown database (no file {target.database!r}; "
            "check does not create it)",
            EXIT_UNKNOWN_DATABASE,
        )
    manager = AsyncSQLiteManager(target)
    try:
        try:
            async with asyncio.timeout(timeout):
                conn = await manager.connect()
        except Exception as exc:
            raise connect_failure(exc, shown, ()) from None
        try:
            journal = await conn.fetch_value("PRAGMA journal_mode")
            version = await conn.fetch_value("SELECT sqlite_version()")
        except sqlite3.Error as exc:
            raise CommandError(f"cannot read {shown}: {exc}") from None
        finally:
            await manager.close(conn)

        async def open_close() -> None:
            await manager.close(await manager.connect())

        open_ms = _median_ms(await _time(open_close, n))
    finally:
        await manager.dispose()
    costs = await _pool_costs(lambda: AsyncSQLiteManager(target), n, timeout)
    where = "in memory (one database per pool)" if target.memory else target.database
    return [
        ("server", f"SQLite {version} (embedded, Python's sqlite3)"),
        ("file", where),
        ("journal mode", str(journal)),
        ("connections", "no server-side limit (SQLite is embedded)"),
        ("open connection", f"{open_ms:.3f} ms (median of {n})"),
        *costs,
        *_tax(open_ms, costs),
        ("tls", "not applicable (embedded)"),
        ("pgbouncer", "not applicable (embedded)"),
    ]


# ---------------------------------------------------------------------- PostgreSQL


async def _check_pg(url: str, n: int, timeout: float) -> Lines:
    from ..adapters._pg import PGTarget

    try:
        parsed = PGTarget.from_url(url)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    app = f"tidepool-check-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    target = dataclasses.replace(parsed, params={**parsed.params, "application_name": app})
    driver = target.driver or "asyncpg"
    password = None if target.password is None else target.password.value
    secrets = (password,)

    def manager() -> Any:
        try:
            if driver == "asyncpg":
                from ..adapters.pg_asyncpg import AsyncpgManager

                return AsyncpgManager(target, connect_timeout=timeout)
            from ..adapters.pg_psycopg import AsyncPsycopgManager

            return AsyncPsycopgManager(target, connect_timeout=timeout)
        except ImportError:
            raise CommandError(
                f"the PostgreSQL driver {driver} is not installed: "
                "pip install 'tidepool[postgres]'",
                EXIT_USAGE,
            ) from None
        except ConfigError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None

    m = manager()

    async def connect() -> Any:
        async with asyncio.timeout(timeout):
            return await m.connect()

    try:
        conn = await connect()
    except Exception as exc:
        raise connect_failure(exc, target.display, secrets) from None
    try:
        async with asyncio.timeout(timeout):
            row = await m.fetch_one(
                conn,
                "SELECT version(), current_setting('server_version'), "
                "current_setting('max_connections')::int, "
                "current_setting('superuser_reserved_connections')::int "
                "+ coalesce(current_setting('reserved_connections', true)::int, 0), "
                "(SELECT count(*)::int FROM pg_stat_activity "
                " WHERE backend_type = 'client backend'), "
                "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), "
                "(SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()), "
                "(SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()), "
                "inet_server_port()",
                (),
            )
    except Exception as exc:
        raise CommandError(
            scrub(f"connected to {target.display}, but the server did not answer: {exc}", secrets)
        ) from None
    finally:
        try:
            await m.close(conn)
        except Exception:
            pass
    full, _version, max_conn, reserved, in_use, tls, tls_version, cipher, server_port = row
    try:
        open_ms = _median_ms(await _time(lambda: _open_close(m, connect), n))
        costs = await _pool_costs(manager, n, timeout)
    except CommandError:
        raise
    except Exception as exc:
        raise connect_failure(exc, target.display, secrets) from None
    free = max(0, max_conn - reserved - in_use)
    tls_text = (
        f"in use ({tls_version}, {cipher})" if tls else "not in use (pg_stat_ssl: ssl = false)"
    )
    bouncer = await _pgbouncer(target, server_port, timeout)
    return [
        ("server", str(full).split(", compiled")[0]),
        ("target", f"{target.display} via {driver}"),
        (
            "connections",
            f"{in_use} in use of max_connections {max_conn} ({reserved} reserved for "
            f"superusers): {free} free",
        ),
        ("open connection", f"{open_ms:.3f} ms (median of {n})"),
        *costs,
        *_tax(open_ms, costs),
        ("tls", tls_text),
        ("pgbouncer", bouncer),
    ]


async def _open_close(m: Any, connect: Callable[[], Awaitable[Any]]) -> None:
    await m.close(await connect())


async def _pgbouncer(target: Any, server_port: int | None, timeout: float) -> str:
    declared = " (declared with ?pgbouncer=true)" if target.pgbouncer else ""
    ports = target.ports
    port = ports[0] if ports else int(os.environ.get("PGPORT", "5432") or 5432)
    host = target.hosts[0] if target.hosts else ""
    if server_port is None:
        return f"unknown: connected over a Unix socket{declared}"
    if int(server_port) == port:
        return (
            f"not detected: the server listens on port {server_port}, the port connected to"
            f"{declared}"
        )
    name = await asyncio.to_thread(_bouncer_version, target, timeout)
    what = f"detected: {name}" if name else "detected: a proxy, likely PgBouncer"
    return (
        f"{what} (port {port} answers for a server listening on {server_port}"
        f"{', ' + host if host and host not in LOCAL_HOSTS else ''}){declared}"
    )


def _bouncer_version(target: Any, timeout: float) -> str | None:
    """PgBouncer's ``SHOW VERSION`` on its admin console, or ``None`` (not allowed / absent)."""
    try:
        import psycopg
    except ImportError:
        return None
    params = {k: v for k, v in target.params.items() if k != "application_name"}
    params["dbname"] = "pgbouncer"
    params["connect_timeout"] = str(max(2, int(timeout)))
    if target.password is not None:
        params["password"] = target.password.value
    try:
        with psycopg.connect(**params, autocommit=True) as conn:
            result = conn.pgconn.exec_(b"SHOW VERSION")  # the console speaks simple queries
            if result.ntuples and result.nfields:
                value = result.get_value(0, 0)
                return None if value is None else bytes(value).decode()
    except Exception:
        return None
    return None


# ---------------------------------------------------------------------- MySQL / MariaDB


async def _timings(
    m: Any,
    connect: Callable[[], Awaitable[Any]],
    manager: Callable[[], Any],
    n: int,
    timeout: float,
    where: str,
    secrets: tuple[str | None, ...],
) -> tuple[float, Lines]:
    """The median time to open a connection, and what a pool's acquire and reset cost."""
    try:
        open_ms = _median_ms(await _time(lambda: _open_close(m, connect), n))
        costs = await _pool_costs(manager, n, timeout)
    except CommandError:
        raise
    except Exception as exc:
        raise failure(exc, where, secrets) from None
    return open_ms, costs


async def _check_mysql(url: str, n: int, timeout: float) -> Lines:
    from ..adapters.mysql import AsyncMySQLManager, MySQLTarget

    try:
        target = MySQLTarget.from_url(url)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if target.driver == "pymysql":
        raise CommandError(
            f"PyMySQL is blocking: check measures AsyncPool, use mysql:// or mysql+aiomysql:// "
            f"for {target.display}",
            EXIT_USAGE,
        )
    secrets = (None if target.password is None else target.password.value,)

    def manager() -> Any:
        return AsyncMySQLManager(target, connect_timeout=timeout)

    m = manager()

    async def connect() -> Any:
        async with asyncio.timeout(timeout):
            return await m.connect()

    try:
        conn = await connect()
    except Exception as exc:
        raise failure(exc, target.display, secrets) from None
    try:
        async with asyncio.timeout(timeout):
            version = await m.fetch_value(conn, "SELECT VERSION()", ())
            max_row = await m.fetch_one(conn, "SHOW VARIABLES LIKE 'max_connections'", ())
            used_row = await m.fetch_one(conn, "SHOW GLOBAL STATUS LIKE 'Threads_connected'", ())
            cipher_row = await m.fetch_one(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'", ())
            tls_row = await m.fetch_one(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'", ())
    except Exception as exc:
        raise CommandError(
            scrub(f"connected to {target.display}, but the server did not answer: {exc}", secrets)
        ) from None
    finally:
        try:
            await m.close(conn)
        except Exception:
            pass
    open_ms, costs = await _timings(m, connect, manager, n, timeout, target.display, secrets)
    max_conn, in_use = int(max_row[1]), int(used_row[1])
    cipher = str(cipher_row[1]) if cipher_row else ""
    tls_version = str(tls_row[1]) if tls_row else ""
    tls_text = f"in use ({tls_version}, {cipher})" if cipher else "not in use (Ssl_cipher is empty)"
    kind = "MariaDB" if "mariadb" in str(version).lower() else "MySQL"
    return [
        ("server", f"{kind} {version}"),
        ("target", f"{target.display} via aiomysql"),
        (
            "connections",
            f"{in_use} in use of max_connections {max_conn}: {max(0, max_conn - in_use)} free",
        ),
        ("open connection", f"{open_ms:.3f} ms (median of {n})"),
        *costs,
        *_tax(open_ms, costs),
        ("tls", tls_text),
        ("pgbouncer", "not applicable (MySQL/MariaDB)"),
    ]


# ---------------------------------------------------------------------- Redis


async def _check_redis(url: str, n: int, timeout: float) -> Lines:
    from ..adapters.redis import AsyncRedisManager, RedisTarget

    try:
        target = RedisTarget.from_url(url)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    secrets = (None if target.password is None else target.password.value,)
    name = f"tidepool-check-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def manager() -> Any:
        return AsyncRedisManager(
            target, connect_timeout=timeout, connect_kwargs={"client_name": name}
        )

    m = manager()

    async def connect() -> Any:
        async with asyncio.timeout(timeout):
            return await m.connect()

    try:
        conn = await connect()
    except Exception as exc:
        raise failure(exc, target.display, secrets) from None
    try:
        async with asyncio.timeout(timeout):
            version, max_clients, in_use = await redis_info(conn)
    except Exception as exc:
        raise CommandError(
            scrub(f"connected to {target.display}, but the server did not answer: {exc}", secrets)
        ) from None
    finally:
        try:
            await m.close(conn)
        except Exception:
            pass
    open_ms, costs = await _timings(m, connect, manager, n, timeout, target.display, secrets)
    if max_clients is None:
        connections = f"{in_use} connected clients; maxclients unknown (CONFIG GET not allowed)"
    else:
        connections = (
            f"{in_use} in use of maxclients {max_clients}: {max(0, max_clients - in_use)} free"
        )
    tls = url.partition("://")[0].lower() == "rediss"
    return [
        ("server", f"Redis {version}"),
        ("target", f"{target.display} via redis-py"),
        ("connections", connections),
        ("open connection", f"{open_ms:.3f} ms (median of {n})"),
        *costs,
        *_tax(open_ms, costs),
        ("tls", "in use (rediss:// URL)" if tls else "not in use (redis:// URL)"),
        ("pgbouncer", "not applicable (Redis)"),
    ]
