"""TLS with a self-signed CA on a private cluster: sslmode=verify-full accepted with the CA
and refused without it or with a wrong one (a permanent ConnectError, not a timeout);
sslmode=require against a server without TLS; an ``ssl.SSLContext`` for asyncpg."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

import tidepool
from pg_helpers import PG_DB, PG_HOST, PG_PORT, PG_USER, app_name, require_pg, session_count

from .pgcluster import Driver, Flavour, PrivateCluster, settle

SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def tls_url(cluster: PrivateCluster, flavour: Flavour, app: str, **params: Any) -> str:
    return cluster.url(flavour.scheme, host="localhost", application_name=app, **params)


def test_verify_full_with_the_ca_connects_over_tls(
    tls_cluster: PrivateCluster, flavour: Flavour
) -> None:
    app = app_name("tls")
    url = tls_url(
        tls_cluster, flavour, app, sslmode="verify-full", sslrootcert=str(tls_cluster.ca_cert)
    )

    async def main() -> None:
        driver = Driver(flavour, url, min_size=2, max_size=3, acquire_timeout=10)
        try:
            await driver.open()
            assert await driver.fetch_value(SSL_IN_USE) is True
            results = await asyncio.gather(*(driver.fetch_value(SSL_IN_USE) for _ in range(3)))
            assert results == [True] * 3
            rows = await asyncio.to_thread(
                tls_cluster.sql,
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.application_name = %s AND NOT s.ssl",
                (app,),
            )
            assert rows == [(0,)]  # every session of the pool is encrypted
            await settle(driver, lambda: tls_cluster.session_count(app))
        finally:
            await driver.close()

    asyncio.run(main())


@pytest.mark.parametrize("ca", ["none", "wrong", "no-such-file"])
def test_verify_full_without_the_right_ca_fails_fast(
    tls_cluster: PrivateCluster,
    flavour: Flavour,
    ca: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No CA to verify against (none given, so the default ~/.postgresql/root.crt, which
    does not exist; a wrong CA; a CA path naming no file) is a permanent failure:
    ConnectError at once with the driver's error as cause, not retries until PoolTimeout."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    app = app_name("tlsbad")
    params = {"sslmode": "verify-full"}
    if ca == "wrong":
        params["sslrootcert"] = str(tls_cluster.other_ca_cert)
    elif ca == "no-such-file":
        params["sslrootcert"] = str(tmp_path / "no-such-root.crt")
    url = tls_url(tls_cluster, flavour, app, **params)

    async def main() -> None:
        driver = Driver(flavour, url, acquire_timeout=4, connect_timeout=2)
        try:
            started = time.monotonic()
            with pytest.raises(tidepool.ConnectError) as info:  # not PoolTimeout after 4 s
                await driver.open()
            assert time.monotonic() - started < 3.5
            assert info.value.__cause__ is not None
            await settle(driver, lambda: tls_cluster.session_count(app), size=0)
        finally:
            await driver.close()

    asyncio.run(main())


def test_sslmode_require_against_a_server_without_tls(flavour: Flavour) -> None:
    """The shared server has no TLS: sslmode=require fails, and the error says SSL. psycopg's
    adapter classifies it as a permanent ConnectError; asyncpg raises a plain
    ConnectionError, which the asyncpg adapter retries until PoolTimeout (phase connect)
    with that error as cause. Either way: within the deadline, with an SSL cause."""
    require_pg()
    app = app_name("tlsreq")
    scheme = flavour.scheme
    url = f"{scheme}://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}?sslmode=require&application_name={app}"

    async def main() -> None:
        driver = Driver(flavour, url, acquire_timeout=2, connect_timeout=2)
        try:
            started = time.monotonic()
            with pytest.raises((tidepool.ConnectError, tidepool.PoolTimeout)) as info:
                await driver.open()
            assert time.monotonic() - started < 5.0
            if isinstance(info.value, tidepool.PoolTimeout):
                assert info.value.phase == "connect"
            cause = info.value.__cause__
            assert cause is not None
            assert "SSL" in str(cause), repr(cause)
            await settle(driver, lambda: session_count(app), size=0)
        finally:
            await driver.close()

    asyncio.run(main())


def test_asyncpg_ssl_context_in_connect_kwargs(tls_cluster: PrivateCluster) -> None:
    """connect_kwargs={"ssl": SSLContext} reaches asyncpg: a context trusting the CA
    connects (verifying the host name); one trusting another CA is refused at once."""
    app = app_name("tlsctx")
    url = tls_cluster.url("postgresql", host="localhost", application_name=app)
    good = ssl.create_default_context(cafile=str(tls_cluster.ca_cert))
    wrong = ssl.create_default_context(cafile=str(tls_cluster.other_ca_cert))

    async def main() -> None:
        async with tidepool.AsyncPool(
            url, max_size=2, acquire_timeout=10, connect_kwargs={"ssl": good}
        ) as pool:
            assert await pool.fetch_value(SSL_IN_USE) is True
            stats = pool.stats()
            assert await asyncio.to_thread(tls_cluster.session_count, app) == stats.size
        pool = tidepool.AsyncPool(
            url, max_size=2, acquire_timeout=10, connect_kwargs={"ssl": wrong}
        )
        try:
            started = time.monotonic()
            with pytest.raises(tidepool.ConnectError) as info:
                await pool.open()
            assert time.monotonic() - started < 5.0
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        finally:
            await pool.aclose()
        assert await asyncio.to_thread(tls_cluster.session_count, app) == 0

    asyncio.run(main())
