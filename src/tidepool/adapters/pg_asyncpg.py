"""PostgreSQL through asyncpg, for ``AsyncPool`` (the default for ``postgresql://``).

Lends ``asyncpg.Connection`` objects. On return the session is reset in one round trip
(rollback, then role, settings, temp tables, advisory locks, LISTEN, cursors, SQL-level
prepared statements), keeping asyncpg's own statement cache. Behind PgBouncer in transaction
mode (``?pgbouncer=true``) the statement cache is off and the reset is a rollback only.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg

from ..errors import ConfigError, ConnectError
from ._errors import scrubbed
from ._pg import (
    BASELINE_SQL,
    PROBE_QUERY,
    RESET_DEALLOCATING_SQL,
    RESET_SQL,
    TRANSIENT_CONNECT_SQLSTATES,
    PGTarget,
    begin_sql,
    is_disconnect_sqlstate,
    next_probe_name,
    probe_reset_sql,
    reset_script,
    resolve_credentials,
    wants_deallocate,
)
from ._transport import limit_reads

__all__ = ["AsyncpgManager"]

# libpq parameters asyncpg does not understand (it would send them to the server as settings).
_UNSUPPORTED = (
    "hostaddr",
    "channel_binding",
    "client_encoding",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslcompression",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "gssencmode",
    "service",
    "load_balance_hosts",
)
_DSN_PARAMS = (
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
    "passfile",
)


class _ResettingConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection whose ``reset()`` (rollback, listeners dropped) also runs
    tidepool's full session reset."""

    _tidepool_reset_sql = RESET_SQL
    _tidepool_baseline = ""  # per connection, set by AsyncpgManager.remember_session()
    # The protocol's statement count when the session was last known clean (after connect,
    # on_connect or a reset); -1: unknown. See AsyncpgManager.reset().
    _tidepool_clean_at = -1
    # The reset's probe for SQL-level prepared statements, prepared on this connection after
    # its first reset (None until then, and again once the borrower deallocated it).
    _tidepool_probe: Any = None

    def get_reset_query(self) -> str:
        return self._tidepool_script(self._tidepool_reset_sql)

    def _tidepool_script(self, reset_sql: str) -> str:
        return reset_script(reset_sql, self._tidepool_baseline)

    async def _tidepool_prepare_probe(self) -> None:
        """Prepare the reset's probe (see ``probe_reset_sql``) and use it from the next reset.
        Each gets a new name: asyncpg closes a dropped statement by name, later."""
        name = next_probe_name()
        self._tidepool_probe = await prepare_reset_probe(self, name)
        self._tidepool_reset_sql = probe_reset_sql(name)

    def _tidepool_forget_probe(self) -> None:
        self._tidepool_probe = None
        self._tidepool_reset_sql = RESET_SQL


async def prepare_reset_probe(conn: asyncpg.Connection, name: str) -> Any:
    """Prepare :data:`PROBE_QUERY` on ``conn`` as ``name`` (run by ``probe_reset_sql(name)``)
    and return the statement, which must be kept alive: asyncpg closes a dropped one."""
    probe = await conn.prepare(PROBE_QUERY, name=name)
    # asyncpg prepares without a Sync, which leaves the server inside an implicit transaction
    # until the next extended-protocol message: a borrower's BEGIN ISOLATION LEVEL would then
    # fail. Running the probe once ends it (and finds nothing: the reset just ran).
    await probe.fetch()
    return probe


class _BouncerConnection(_ResettingConnection):
    # Transaction mode: session state does not survive a transaction anyway, and session
    # commands would land on whichever server connection PgBouncer picks.
    _tidepool_reset_sql = ""


def _mark_clean(conn: asyncpg.Connection) -> None:
    """Remember that the session of ``conn`` is clean as of the statements sent so far."""
    protocol = conn._protocol
    if isinstance(conn, _ResettingConnection) and protocol is not None:
        conn._tidepool_clean_at = protocol.queries_count


def _untouched(conn: asyncpg.Connection) -> bool:
    """Whether no statement was sent on ``conn`` since its session was last known clean."""
    protocol = conn._protocol
    return (
        isinstance(conn, _ResettingConnection)
        and protocol is not None
        and protocol.queries_count == conn._tidepool_clean_at
        and conn._top_xact is None
        and not protocol.is_in_transaction()
    )


class AsyncpgManager:
    """Async manager and executor for asyncpg.

    Args:
        target: a ``postgresql://`` URL or a parsed :class:`PGTarget`.
        connect_timeout: bound (s) on one connect, and on closing a connection.
        pgbouncer: work behind PgBouncer in transaction mode (also ``?pgbouncer=true``).
        **connect_kwargs: passed to ``asyncpg.connect`` (``ssl=SSLContext``,
            ``server_settings``, ...); ``password`` may be a sync or async callable, and the
            whole set may be given as one callable returning it (evaluated per connection).
    """

    def __init__(
        self,
        target: PGTarget | str,
        *,
        connect_timeout: float = 10.0,
        pgbouncer: bool | None = None,
        connect_kwargs: Any = None,
    ) -> None:
        self.target = PGTarget.from_url(target) if isinstance(target, str) else target
        unsupported = sorted(set(self.target.params) & set(_UNSUPPORTED))
        if unsupported:
            raise ConfigError(
                f"asyncpg does not support the connection parameter(s) "
                f"{', '.join(unsupported)} (in {self.target.display!r}); use "
                "postgresql+psycopg:// or drop them"
            )
        self.pgbouncer = self.target.pgbouncer if pgbouncer is None else pgbouncer
        self._connect_timeout = connect_timeout
        self._close_timeout = min(connect_timeout, 5.0)
        self._connect_kwargs = connect_kwargs if connect_kwargs is not None else {}
        params = self.target.params
        query = {k: params[k] for k in _DSN_PARAMS if k in params}
        settings = {k: params[k] for k in ("application_name", "options") if k in params}
        self._dsn = "postgresql://" + (f"?{urlencode(query, quote_via=quote)}" if query else "")
        self._base: dict[str, Any] = {}
        if self.target.hosts:
            self._base["host"] = self.target.hosts
        if self.target.ports:
            self._base["port"] = self.target.ports
        if "user" in params:
            self._base["user"] = params["user"]
        if "dbname" in params:
            self._base["database"] = params["dbname"]
        if settings:
            self._base["server_settings"] = settings
        if "connect_timeout" in params and int(params["connect_timeout"]) > 0:
            self._connect_timeout = min(connect_timeout, float(params["connect_timeout"]))

    async def connect(self) -> asyncpg.Connection:
        # Opened in _open(), whose frame holds the password: on failure its locals (and the
        # driver's) are cleared before the error leaves this frame, which holds none.
        failure: Exception
        try:
            return await self._open()
        except Exception as exc:
            failure = exc
        raise scrubbed(failure, _classify)

    async def _open(self) -> asyncpg.Connection:
        kwargs: dict[str, Any] = dict(self._base)
        if self.target.password is not None:
            kwargs["password"] = self.target.password.value
        user_kwargs = await resolve_credentials(self._connect_kwargs)
        settings = {**kwargs.get("server_settings", {}), **user_kwargs.pop("server_settings", {})}
        kwargs.update(user_kwargs)
        if settings:
            kwargs["server_settings"] = settings
        base_class = kwargs.pop("connection_class", asyncpg.Connection)
        reset_class: type[Any] = _BouncerConnection if self.pgbouncer else _ResettingConnection
        if base_class is not asyncpg.Connection:
            reset_class = type(f"Tidepool{base_class.__name__}", (reset_class, base_class), {})
        if self.pgbouncer:
            kwargs.setdefault("statement_cache_size", 0)
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            connection_class=reset_class,
            **kwargs,
        )
        limit_reads(getattr(conn, "_transport", None))
        _mark_clean(conn)
        return conn

    async def check(self, conn: asyncpg.Connection) -> None:
        was_clean = _untouched(conn)
        await conn.execute("SELECT 1")
        if was_clean:
            _mark_clean(conn)

    async def remember_session(self, conn: asyncpg.Connection) -> None:
        """After ``on_connect``: remember its session settings for the reset to restore."""
        baseline = await conn.fetchval(BASELINE_SQL)
        if baseline and isinstance(conn, _ResettingConnection):
            conn._tidepool_baseline = baseline
        _mark_clean(conn)

    async def reset(self, conn: asyncpg.Connection) -> None:
        # What asyncpg's reset() does on the client, for every borrower: drop the listener
        # callbacks it may have added. (The rest of asyncpg's reset() is the rollback and
        # the script below; calling it would also open a timeout scope, even without a
        # timeout, which cost 2 us a release: the pool bounds the reset.)
        conn._listeners.clear()
        conn._log_listeners.clear()
        protocol = getattr(conn, "_protocol", None)
        if protocol is not None and getattr(protocol, "_is_cancelling", lambda: False)():
            # A cancelled borrower's statement is still being cancelled on the server; until
            # that is acknowledged the connection is busy ("another operation is in
            # progress"). asyncpg's own pool waits the same way, through the same private
            # call; the pool bounds the wait.
            await protocol._wait_for_cancellation()
        elif _untouched(conn):
            # The borrower sent no statement at all (asyncpg counts every one it sends): the
            # session is as the last reset left it.
            return
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        # A transaction object the borrower started and never finished (cancelled between
        # start() and commit()) is now rolled back: forget it, or asyncpg would take the next
        # borrower's transaction for a nested one. asyncpg keeps it on a private attribute.
        if getattr(conn, "_top_xact", None) is not None:
            conn._top_xact = None
        resetting = isinstance(conn, _ResettingConnection) and bool(conn._tidepool_reset_sql)
        reset_query = conn.get_reset_query()
        try:
            if reset_query:
                await conn.execute(reset_query)
        except asyncpg.InvalidTextRepresentationError as exc:
            if not (resetting and wants_deallocate(exc)):
                raise
            await conn.execute(conn._tidepool_script(RESET_DEALLOCATING_SQL))
        except asyncpg.InvalidSQLStatementNameError:
            if not (resetting and conn._tidepool_probe is not None):
                raise
            # The borrower deallocated the probe (DEALLOCATE ALL, DISCARD ALL): the script
            # undid itself. Reset without it, deallocating the borrower's statements too.
            conn._tidepool_forget_probe()
            await conn.execute(conn._tidepool_script(RESET_DEALLOCATING_SQL))
        if conn.is_in_transaction():
            # A cancelled borrower's BEGIN can complete on the server after the check above
            # (asyncpg finishes a cancelled statement behind the scenes): never lend that.
            raise asyncpg.InterfaceError("connection still in a transaction after the reset")
        if resetting and conn._tidepool_probe is None:
            await conn._tidepool_prepare_probe()
        _mark_clean(conn)

    async def close(self, conn: asyncpg.Connection) -> None:
        # A graceful close waits for the server; past the bound asyncpg aborts the socket.
        await conn.close(timeout=self._close_timeout)

    # asyncpg's own test, called directly: the pool asks it at every lend and return.
    is_broken = staticmethod(asyncpg.Connection.is_closed)

    def is_disconnect(self, conn: asyncpg.Connection, error: BaseException | None) -> bool:
        if error is None:
            return bool(conn.is_closed())
        if isinstance(error, (OSError, asyncpg.ConnectionDoesNotExistError)):
            return True
        return is_disconnect_sqlstate(getattr(error, "sqlstate", None))

    # ------------------------------------------------------------ executor

    async def execute(self, conn: asyncpg.Connection, sql: str, args: Sequence[Any]) -> str:
        status: str = await conn.execute(sql, *args)
        return status

    async def executemany(
        self, conn: asyncpg.Connection, sql: str, rows: Iterable[Sequence[Any]]
    ) -> None:
        await conn.executemany(sql, rows)

    async def fetch_all(self, conn: asyncpg.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
        rows: list[Any] = await conn.fetch(sql, *args)
        return rows

    async def fetch_one(self, conn: asyncpg.Connection, sql: str, args: Sequence[Any]) -> Any:
        return await conn.fetchrow(sql, *args)

    async def fetch_value(self, conn: asyncpg.Connection, sql: str, args: Sequence[Any]) -> Any:
        return await conn.fetchval(sql, *args)

    async def begin(
        self,
        conn: asyncpg.Connection,
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> None:
        await conn.execute(begin_sql(isolation, readonly, deferrable))

    async def commit(self, conn: asyncpg.Connection) -> None:
        await conn.execute("COMMIT")

    async def rollback(self, conn: asyncpg.Connection) -> None:
        await conn.execute("ROLLBACK")

    async def copy_records(
        self,
        conn: asyncpg.Connection,
        table: str,
        records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> int:
        schema, _, name = table.rpartition(".")
        status: str = await conn.copy_records_to_table(
            name, schema_name=schema or None, records=records, columns=columns
        )
        return int(status.rsplit(" ", 1)[-1])


def _classify(exc: Exception) -> Exception:
    """Permanent connect failures become ``ConnectError``; the rest are retried."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate
        if sqlstate in TRANSIENT_CONNECT_SQLSTATES or is_disconnect_sqlstate(sqlstate):
            return exc  # type: ignore[no-any-return]  # lost mid-handshake, starting up, full
        return ConnectError(f"PostgreSQL refused the connection: {exc}")
    if isinstance(exc, _PERMANENT_OS_ERRORS) or (
        isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)
    ):
        # A missing certificate file, or a server without TLS when TLS is required: waiting
        # will not fix either.
        return ConnectError(f"cannot connect to PostgreSQL: {exc}")
    if isinstance(exc, (ssl.SSLCertVerificationError, asyncpg.ClientConfigurationError)):
        return ConnectError(f"cannot connect to PostgreSQL: {exc}")
    return exc


_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
