"""PostgreSQL targets: URL and ``PG*`` environment parsing (issue 3 point 1), validation at
construction with messages naming their source and never the password, the choice of driver,
and how connect failures surface (design.md section 5): a permanent one fails fast with
``ConnectError``, a refused port times out in the ``"connect"`` phase.

Most tests need no server; those that do call ``require_pg()`` and check the design.md
section 7 invariants, including the server-side session count.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import uuid
from types import TracebackType
from typing import Any

import asyncpg
import psycopg
import pytest

import tidepool
from pg_helpers import PG_DB, PG_HOST, PG_PORT, PG_USER, app_name, pg_url, require_pg, wait_sessions
from tidepool import ConfigError
from tidepool._url import Secret
from tidepool.adapters._pg import PGTarget

FLAVORS = ("asyncpg", "psycopg-async", "psycopg-sync")
CANARY = "Canary-S3cret-pw"
# Generous bounds for a loaded 2-core machine: they only turn a hang into a failure.
PATIENCE = 20.0


def target(url: str, **env: str) -> PGTarget:
    """Parse ``url`` with exactly ``env`` as the environment (never the real one)."""
    return PGTarget.from_url(url, env=env)


# ---------------------------------------------------------------------- URL parsing


def test_host_list_and_ports() -> None:
    t = target("postgresql://app@db1:5433,db2,[::1]:6000/appdb")
    assert t.hosts == ["db1", "db2", "::1"]
    assert t.ports == [5433, 5432, 6000]  # a missing port in a list is the default
    assert t.params["dbname"] == "appdb"
    assert t.params["user"] == "app"
    assert t.driver is None


def test_single_host_without_port() -> None:
    t = target("postgres://db.example.com/appdb")
    assert t.hosts == ["db.example.com"]
    assert t.ports in ([], [5432])  # libpq's default either way
    assert t.params["dbname"] == "appdb"
    assert "user" not in t.params


def test_driver_choice() -> None:
    assert target("postgresql+asyncpg://h/db").driver == "asyncpg"
    assert target("postgresql+psycopg://h/db").driver == "psycopg"
    assert target("postgres://h/db").driver is None


def test_percent_decoding() -> None:
    t = target(
        f"postgresql://us%40er:{CANARY}%2F%3A%40x@db/my%20db"
        "?application_name=my%20app&options=-c%20search_path%3Dtp_x"
    )
    assert t.params["user"] == "us@er"
    assert t.password is not None
    assert t.password.value == f"{CANARY}/:@x"
    assert t.params["dbname"] == "my db"
    assert t.params["application_name"] == "my app"
    assert t.params["options"] == "-c search_path=tp_x"


def test_query_parameters_are_kept_as_libpq_parameters() -> None:
    t = target(
        "postgresql://u@db/app?sslmode=verify-full&application_name=svc"
        "&target_session_attrs=read-write&options=-c%20statement_timeout%3D5s"
        "&connect_timeout=7&sslrootcert=/etc/ca.pem"
    )
    assert t.params["sslmode"] == "verify-full"
    assert t.params["application_name"] == "svc"
    assert t.params["target_session_attrs"] == "read-write"
    assert t.params["options"] == "-c statement_timeout=5s"
    assert t.params["connect_timeout"] == "7"
    assert t.params["sslrootcert"] == "/etc/ca.pem"
    assert t.pgbouncer is False
    assert target("postgresql://u@db/app?pgbouncer=true").pgbouncer is True
    assert "pgbouncer" not in target("postgresql://u@db/app?pgbouncer=1").params


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{CANARY}@db:5432/appdb",
        f"postgresql://app@db/appdb?password={CANARY}",
    ],
    ids=["userinfo", "query"],
)
def test_password_is_a_secret(url: str) -> None:
    t = target(url)
    assert isinstance(t.password, Secret)
    assert t.password.value == CANARY
    assert "password" not in t.params
    for text in (repr(t), str(t), t.display, repr(t.params), repr(t.password), str(t.password)):
        assert CANARY not in text


def test_pool_repr_never_shows_the_password() -> None:
    pool = tidepool.AsyncPool(f"postgresql://app:{CANARY}@db/appdb")
    sync_pool = tidepool.Pool(f"postgresql://app:{CANARY}@db/appdb")
    for text in (repr(pool), pool.name, repr(sync_pool), sync_pool.name):
        assert CANARY not in text


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        (f"postgresql://u:{CANARY}@db/app?sslmode=bogus", "sslmode"),
        (f"postgresql://u:{CANARY}@db/app?target_session_attrs=bogus", "target_session_attrs"),
        (f"postgresql://u:{CANARY}@db/app?connect_timeout=abc", "connect_timeout"),
        (f"postgresql://u:{CANARY}@db:99999/app", "99999"),
        (f"postgresql://u:{CANARY}@db:port/app", "port"),
        (f"postgresql://u:{CANARY}@db/app?sslmod=require", "did you mean 'sslmode'"),
        (f"postgresql+foo://u:{CANARY}@db/app", "foo"),
        (f"postgresql://u:{CANARY}@db/app?pgbouncer=maybe", "pgbouncer"),
        (f"postgresql://u:{CANARY}@db/app?sslmode=require&sslmode=disable", "sslmode"),
        (f"postgresql://u@db/app?password={CANARY}&sslmode=bogus", "sslmode"),
    ],
)
def test_bad_url_values(url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        target(url)
    message = str(info.value)
    assert needle in message
    assert CANARY not in message
    assert isinstance(info.value, ValueError)
    # The pools say the same at construction, and no password leaks from there either.
    for cls in (tidepool.AsyncPool, tidepool.Pool):
        with pytest.raises(ConfigError) as pool_info:
            cls(url)
        assert needle in str(pool_info.value)
        assert CANARY not in str(pool_info.value)


def test_url_errors_name_the_url() -> None:
    with pytest.raises(ConfigError, match="URL") as info:
        target(f"postgresql://u:{CANARY}@db/app?sslmode=bogus")
    assert "bogus" in str(info.value)
    assert "environment" not in str(info.value)


# ---------------------------------------------------------------------- environment


def test_environment_fills_what_the_url_lacks() -> None:
    t = target(
        "postgresql://",
        PGHOST="envhost",
        PGPORT="6543",
        PGDATABASE="envdb",
        PGUSER="envuser",
        PGPASSWORD=CANARY,
        PGSSLMODE="require",
        PGAPPNAME="envapp",
        PGCONNECT_TIMEOUT="9",
        PGTARGETSESSIONATTRS="read-only",
        PGOPTIONS="-c work_mem=64MB",
    )
    assert t.hosts == ["envhost"]
    assert t.ports == [6543]
    assert t.params["dbname"] == "envdb"
    assert t.params["user"] == "envuser"
    assert t.password is not None
    assert t.password.value == CANARY
    assert t.params["sslmode"] == "require"
    assert t.params["application_name"] == "envapp"
    assert t.params["connect_timeout"] == "9"
    assert t.params["target_session_attrs"] == "read-only"
    assert t.params["options"] == "-c work_mem=64MB"
    assert CANARY not in repr(t)


def test_url_wins_over_environment() -> None:
    t = target(
        "postgresql://urluser:urlpw@urlhost:5555/urldb?sslmode=disable&application_name=urlapp",
        PGHOST="envhost",
        PGPORT="6543",
        PGDATABASE="envdb",
        PGUSER="envuser",
        PGPASSWORD="envpw",
        PGSSLMODE="require",
        PGAPPNAME="envapp",
    )
    assert t.hosts == ["urlhost"]
    assert t.ports == [5555]
    assert t.params["dbname"] == "urldb"
    assert t.params["user"] == "urluser"
    assert t.password is not None
    assert t.password.value == "urlpw"
    assert t.params["sslmode"] == "disable"
    assert t.params["application_name"] == "urlapp"


def test_environment_port_applies_to_url_host() -> None:
    t = target("postgresql://urlhost/db", PGPORT="6543")
    assert t.hosts == ["urlhost"]
    assert t.ports == [6543]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PGPORT", "abc"),
        ("PGPORT", "99999"),
        ("PGSSLMODE", "bogus"),
        ("PGCONNECT_TIMEOUT", "abc"),
        ("PGTARGETSESSIONATTRS", "bogus"),
    ],
)
def test_bad_environment_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        target(f"postgresql://u:{CANARY}@db/app", **{var: value})
    assert var in str(info.value)
    assert value in str(info.value)
    assert CANARY not in str(info.value)


@pytest.mark.parametrize(
    ("var", "query"),
    [("PGSSLMODE", "sslmode=disable"), ("PGCONNECT_TIMEOUT", "connect_timeout=5")],
)
def test_url_value_makes_a_bad_environment_value_irrelevant(var: str, query: str) -> None:
    """libpq reads a ``PG*`` variable only for a parameter nothing else set, so a bad value
    in one the URL sets is never used (``PGSSLMODE=bogus psql 'postgresql://...?sslmode=
    disable'`` connects): the URL wins, without an error about the unused variable."""
    t = target(f"postgresql://u@db/app?{query}", **{var: "bogus"})
    key, _, value = query.partition("=")
    assert t.params[key] == value


# ---------------------------------------------------------------------- driver choice


def test_asyncpg_rejects_parameters_it_cannot_honour() -> None:
    url = "postgresql://u@db/app?keepalives=1&keepalives_idle=30"
    for asyncpg_url in (url, url.replace("postgresql:", "postgresql+asyncpg:")):
        with pytest.raises(ConfigError) as info:
            tidepool.AsyncPool(asyncpg_url)
        assert "keepalives" in str(info.value)
        assert "postgresql+psycopg://" in str(info.value)
    # psycopg (libpq) takes them: construction does no I/O and succeeds.
    tidepool.AsyncPool(url.replace("postgresql:", "postgresql+psycopg:"))
    tidepool.Pool(url)


def test_pool_refuses_asyncpg() -> None:
    with pytest.raises(ConfigError, match="async-only") as info:
        tidepool.Pool(f"postgresql+asyncpg://u:{CANARY}@db/app")
    assert "postgresql+psycopg://" in str(info.value)
    assert CANARY not in str(info.value)


def test_default_drivers() -> None:
    async_pool: Any = tidepool.AsyncPool("postgresql://u@db/app")
    assert type(async_pool.manager).__module__ == "tidepool.adapters.pg_asyncpg"
    async_psycopg: Any = tidepool.AsyncPool("postgres+psycopg://u@db/app")
    assert type(async_psycopg.manager).__name__ == "AsyncPsycopgManager"
    sync_pool: Any = tidepool.Pool("postgres://u@db/app")
    assert type(sync_pool.manager).__name__ == "PsycopgManager"


# ---------------------------------------------------------------------- with the server


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class PGPool:
    """A pool of one flavour on ``url``, closed on exit (opened only when asked)."""

    def __init__(self, flavor: str, url: str, **options: Any) -> None:
        self.flavor = flavor
        self.is_async = flavor != "psycopg-sync"
        if flavor == "psycopg-async":
            url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        cls = tidepool.AsyncPool if self.is_async else tidepool.Pool
        self.pool: Any = cls(url, **options)

    async def open(self) -> None:
        await maybe_await(self.pool.open())

    async def __aenter__(self) -> PGPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await maybe_await(self.pool.aclose() if self.is_async else self.pool.close())

    async def value(self, sql: str) -> Any:
        return await maybe_await(self.pool.fetch_value(sql))

    async def check_invariants(self, app: str) -> None:
        s = self.pool.stats()
        assert s.size <= s.max_size, s
        assert s.idle + s.in_use + s.connecting == s.size, s
        assert s.waiting == 0, s
        count = await asyncio.to_thread(wait_sessions, app, s.size, PATIENCE)
        assert count == self.pool.stats().size, (count, self.pool.stats())


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    require_pg()
    name: str = request.param
    return name


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unknown_database_is_a_permanent_failure(flavor: str) -> None:
    app = app_name("tp-cfg")
    database = f"tp_missing_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}?application_name={app}"

    async def main() -> None:
        async with PGPool(flavor, url, acquire_timeout=60.0) as p:
            started = time.monotonic()
            with pytest.raises(tidepool.ConnectError) as info:
                await p.open()
            # No retry loop up to the deadline: the server's answer is final.
            assert time.monotonic() - started < 30.0
            assert isinstance(info.value.__cause__, (asyncpg.PostgresError, psycopg.Error))
            assert database in str(info.value)
            await p.check_invariants(app)
            assert p.pool.stats().size == 0

    asyncio.run(main())


def test_refused_port_times_out_in_the_connect_phase(flavor: str) -> None:
    port = unused_port()
    url = f"postgresql://{PG_USER}:{CANARY}@127.0.0.1:{port}/{PG_DB}"

    async def main() -> None:
        async with PGPool(flavor, url, acquire_timeout=0.5) as p:
            started = time.monotonic()
            with pytest.raises(tidepool.PoolTimeout) as info:
                await p.open()
            elapsed = time.monotonic() - started
            assert elapsed >= 0.45  # retried until the deadline, not given up at once
            assert elapsed < PATIENCE
            assert info.value.phase == "connect"
            assert isinstance(info.value, TimeoutError)
            cause = info.value.__cause__
            assert cause is not None
            if flavor == "asyncpg":
                assert isinstance(cause, ConnectionRefusedError)
            else:  # libpq reports the OS error in its own exception
                assert isinstance(cause, psycopg.OperationalError)
                assert "refused" in str(cause).lower()
            assert CANARY not in str(info.value)
            s = p.pool.stats()
            assert s.size <= s.max_size, s
            assert s.idle + s.in_use + s.connecting == s.size, s
            assert (s.waiting, s.idle, s.in_use) == (0, 0, 0), s

    asyncio.run(main())


def test_host_list_fails_over_to_the_next_host(flavor: str) -> None:
    app = app_name("tp-cfg")
    hosts = f"127.0.0.1:{unused_port()},{PG_HOST}:{PG_PORT}"
    url = f"postgresql://{PG_USER}@{hosts}/{PG_DB}?application_name={app}"

    async def main() -> None:
        async with PGPool(flavor, url, acquire_timeout=PATIENCE) as p:
            await p.open()
            assert await p.value("SELECT current_setting('port')") == str(PG_PORT)
            await p.check_invariants(app)

    asyncio.run(main())


def test_url_parameters_reach_the_server(flavor: str) -> None:
    app = app_name("tp-cfg")
    url = pg_url(
        app,
        options="-c%20search_path%3Dtp_from_url,public%20-c%20statement_timeout%3D7s",
        connect_timeout="5",
        target_session_attrs="any",
        sslmode="disable",
    )

    async def main() -> None:
        async with PGPool(flavor, url, acquire_timeout=PATIENCE) as p:
            await p.open()
            assert await p.value("SHOW search_path") == "tp_from_url,public"
            assert await p.value("SHOW statement_timeout") == "7s"
            assert await p.value("SHOW application_name") == app
            assert (
                await p.value("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
            )
            # Each executor call is one checkout: the reset in between keeps what the URL
            # set (it is the session's default), and the next call sees it again.
            assert await p.value("SHOW search_path") == "tp_from_url,public"
            await p.check_invariants(app)

    asyncio.run(main())


def test_environment_parameters_reach_the_server(
    flavor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_name("tp-cfg")
    monkeypatch.setenv("PGOPTIONS", "-c tp.from_env=yes")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "5")
    monkeypatch.setenv("PGDATABASE", PG_DB)
    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}?application_name={app}"

    async def main() -> None:
        async with PGPool(flavor, url, acquire_timeout=PATIENCE) as p:
            await p.open()
            assert await p.value("SELECT current_setting('tp.from_env')") == "yes"
            assert await p.value("SELECT current_database()") == PG_DB
            await p.check_invariants(app)

    asyncio.run(main())
