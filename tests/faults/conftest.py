"""Fixtures of the fault tests: private PostgreSQL clusters, chaos proxies, PgBouncer.

Every server a fixture starts is stopped by its own pid in the fixture's finalizer, also when
the test fails. A missing binary skips locally and fails with ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pg_helpers import PG_HOST, PG_PORT, require_pg

from .pgcluster import (
    FLAVOURS,
    OPENSSL,
    PG_BIN,
    PGBOUNCER,
    Flavour,
    PgBouncer,
    PrivateCluster,
    require_binary,
)
from .proxy import ChaosProxy

PASSWORD_ROLE = "rotor"


def _require_postgres() -> None:
    require_binary(PG_BIN / "postgres", "PostgreSQL 15 (postgres)")
    require_binary(PG_BIN / "initdb", "PostgreSQL 15 (initdb)")
    require_binary(PG_BIN / "pg_ctl", "PostgreSQL 15 (pg_ctl)")


@pytest.fixture(params=FLAVOURS, ids=str)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    """AsyncPool + asyncpg, AsyncPool + psycopg, Pool + psycopg."""
    flavour: Flavour = request.param
    return flavour


@pytest.fixture(scope="module")
def _module_cluster() -> Iterator[PrivateCluster]:
    _require_postgres()
    with PrivateCluster(password_role=PASSWORD_ROLE) as cluster:
        yield cluster


@pytest.fixture
def pg_cluster(_module_cluster: PrivateCluster) -> PrivateCluster:
    """A private cluster shared by the tests of one module (trust auth for ``postgres``, a
    scram-sha-256 role ``rotor``); started again if a test left it stopped."""
    if not _module_cluster.running:
        _module_cluster.start()
    return _module_cluster


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[PrivateCluster]:
    """A private cluster with ssl=on and a certificate for localhost signed by ``ca_cert``."""
    _require_postgres()
    require_binary(OPENSSL, "openssl")
    with PrivateCluster(tls=True) as cluster:
        yield cluster


@pytest.fixture
def make_proxy() -> Iterator[Callable[[str, int], ChaosProxy]]:
    """A factory of chaos proxies (``make_proxy(host, port)``), all closed after the test."""
    proxies: list[ChaosProxy] = []

    def make(host: str, port: int) -> ChaosProxy:
        proxy = ChaosProxy(host, port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def chaos_proxy(
    pg_cluster: PrivateCluster, make_proxy: Callable[[str, int], ChaosProxy]
) -> ChaosProxy:
    """A chaos proxy in front of the module's private cluster, in ``pass`` mode."""
    return make_proxy(pg_cluster.host, pg_cluster.port)


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the shared server (read-only use of it)."""
    require_pg()
    require_binary(PGBOUNCER, "PgBouncer")
    with PgBouncer(PG_HOST, PG_PORT, pool_size=4) as bouncer:
        yield bouncer
