"""PostgreSQL through psycopg 3: ``Pool`` by default, ``AsyncPool`` with
``postgresql+psycopg://``.

Lends ``psycopg.Connection`` / ``psycopg.AsyncConnection`` objects in autocommit mode (a
statement outside a transaction commits at once; use ``pool.transaction()``). On return an
open transaction is rolled back and the session reset in one round trip, keeping psycopg's
prepared statements. A connection returned mid-query (ACTIVE) is closed, never lent again.
In ``Pool`` the check and the reset are bounded by ``connect_timeout`` even against a stalled
server: they drive libpq directly with a deadline.
"""

from __future__ import annotations

import asyncio
import math
import select
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import pq, sql

from ..errors import ConnectError
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
    resolve_credentials_sync,
    wants_deallocate,
)

__all__ = ["AsyncPsycopgManager", "PsycopgManager"]

_IDLE = pq.TransactionStatus.IDLE
_PROBE = PROBE_QUERY.encode()
_BAD = int(pq.ConnStatus.BAD)
_IN_TRANSACTION = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class _PsycopgCommon:
    """Connection arguments, error classes and checks shared by both flavours."""

    def __init__(
        self,
        target: PGTarget | str,
        *,
        connect_timeout: float = 10.0,
        pgbouncer: bool | None = None,
        connect_kwargs: Any = None,
    ) -> None:
        self.target = PGTarget.from_url(target) if isinstance(target, str) else target
        self.pgbouncer = self.target.pgbouncer if pgbouncer is None else pgbouncer
        self._timeout = connect_timeout
        self._connect_kwargs = connect_kwargs if connect_kwargs is not None else {}
        base: dict[str, Any] = dict(self.target.params)
        # libpq's connect_timeout is whole seconds per host, at least 2.
        base.setdefault("connect_timeout", str(max(2, math.ceil(connect_timeout))))
        if self.target.password is not None:
            base["password"] = self.target.password.value
        base["autocommit"] = True
        if self.pgbouncer:
            base["prepare_threshold"] = None  # no server-side prepared statements
        self._base = base
        self._reset_sql = "" if self.pgbouncer else RESET_SQL
        # Per connection: what on_connect set up, re-applied by every reset.
        self._baselines: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        # Per connection: the name under which its reset probe is prepared (see _next_probe).
        self._probes: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        # Per connection: a libpq cancel connection prepared at connect (no I/O yet), so that
        # a query can still be cancelled after psycopg itself closed the connection under it.
        self._cancels: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def _prepare_cancel(self, conn: Any) -> None:
        try:
            self._cancels[conn] = conn.pgconn.cancel_conn()
        except (psycopg.Error, AttributeError):  # libpq < 17: no non-blocking cancel
            pass

    def _orphan_cancel(self, conn: Any) -> Any:
        """The prepared cancel connection of ``conn`` if ``conn`` is already closed, else
        ``None``. psycopg closes the socket itself when its own cancellation is interrupted
        (a task cancelled twice), and a sleeping backend does not notice: the query keeps
        running, holding a session the pool no longer counts. When the backend is already
        gone (the server closed the connection) the request is harmless."""
        if not conn.closed:
            return None
        return self._cancels.pop(conn, None)

    def _full_reset(self, conn: Any, *, deallocating: bool = False) -> str:
        if not self._reset_sql:
            return ""
        if deallocating:
            reset = RESET_DEALLOCATING_SQL
        else:
            probe = self._probes.get(conn)
            reset = self._reset_sql if probe is None else probe_reset_sql(probe)
        return reset_script(reset, self._baselines.get(conn))

    def _recovery_script(self, conn: Any, error: psycopg.OperationalError) -> str:
        """The reset to run after the full reset failed with ``error``: the deallocating one,
        when the probe found the borrower's prepared statements or the borrower deallocated
        the probe (``DEALLOCATE ALL``, ``DISCARD ALL``; it is prepared again afterwards).

        Raises:
            psycopg.OperationalError: ``error``, for any other failure.
        """
        probe = self._probes.get(conn)
        # (By the name the message quotes: the rest of it follows the server's lc_messages,
        # and only a missing statement makes the script name the probe in an error.)
        if probe is not None and probe in str(error):
            del self._probes[conn]
        elif not wants_deallocate(error):
            raise error
        return self._full_reset(conn, deallocating=True)

    def _next_probe(self, conn: Any) -> bytes | None:
        """After a successful reset: the name under which to prepare the reset's probe on
        ``conn``, if it has none yet (``None`` otherwise, and behind PgBouncer). The probe is
        then planned once per connection instead of on every reset (see probe_reset_sql);
        libpq prepares at the protocol level, so it is not ``from_sql``."""
        if not self._reset_sql or conn in self._probes:
            return None
        name = next_probe_name()
        self._probes[conn] = name
        return name.encode()

    def _kwargs(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {**self._base, **resolved}

    def is_broken(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
        # What ``conn.closed or conn.broken`` says (a broken connection is always closed),
        # read from libpq directly: the two properties cost 0.6 us, twice per checkout.
        return bool(conn.pgconn.status == _BAD)

    def is_disconnect(
        self,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        error: BaseException | None,
    ) -> bool:
        if error is None:
            return bool(conn.broken)
        if isinstance(error, OSError):
            return True
        if isinstance(error, psycopg.OperationalError) and conn.broken:
            return True
        return is_disconnect_sqlstate(getattr(error, "sqlstate", None))

    @staticmethod
    def _forget_notifications(
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    ) -> None:
        # UNLISTEN * stops new notifications; drop those already received and the Python-level
        # handlers, so the next borrower hears nothing meant for the last one.
        while conn.pgconn.notifies() is not None:
            pass
        # psycopg keeps handlers and not-yet-read notifications on private attributes; clear
        # them where they exist (they have since psycopg 3.0 / 3.2).
        handlers = getattr(conn, "_notify_handlers", None)
        if isinstance(handlers, list):
            handlers.clear()
        backlog = getattr(conn, "_notifies_backlog", None)
        if backlog is not None and hasattr(backlog, "clear"):
            backlog.clear()

    @staticmethod
    def _copy_statement(table: str, columns: Sequence[str] | None) -> sql.Composed:
        target = sql.Identifier(*table.split("."))
        if columns is None:
            return sql.SQL("COPY {} FROM STDIN").format(target)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        return sql.SQL("COPY {} ({}) FROM STDIN").format(target, cols)


def _cancel_within(cancel: Any, timeout: float) -> None:
    """Send a query cancel request through a prepared libpq cancel connection, within
    ``timeout`` (non-blocking polling: libpq's blocking cancel has no deadline and psycopg
    runs it holding the GIL). Best effort: failures are ignored."""
    deadline = time.monotonic() + timeout
    try:
        cancel.start()
        while (status := cancel.poll()) not in (pq.PollingStatus.OK, pq.PollingStatus.FAILED):
            _wait(cancel.socket, status == pq.PollingStatus.READING, deadline)
    except (psycopg.Error, OSError, TimeoutError):
        pass
    finally:
        cancel.finish()


async def _cancel_within_async(cancel: Any, timeout: float) -> None:
    """The event-loop counterpart of :func:`_cancel_within`."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            cancel.start()
            while (status := cancel.poll()) not in (
                pq.PollingStatus.OK,
                pq.PollingStatus.FAILED,
            ):
                await _ready(loop, cancel.socket, status == pq.PollingStatus.READING)
    except (psycopg.Error, OSError, TimeoutError):
        pass
    finally:
        cancel.finish()


def _classify(exc: Exception) -> Exception:
    """Permanent connect failures become ``ConnectError``; the rest are retried."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.Error) and sqlstate is not None:
        if sqlstate in TRANSIENT_CONNECT_SQLSTATES:
            return exc
        return ConnectError(f"PostgreSQL refused the connection: {exc}")
    if isinstance(exc, psycopg.ProgrammingError):
        return ConnectError(f"invalid PostgreSQL connection parameters: {exc}")
    text = str(exc)
    if isinstance(exc, psycopg.OperationalError) and (
        "password authentication failed" in text
        or "does not exist" in text
        or "certificate" in text
        or ("SSL" in text and "unexpectedly" not in text)
    ):
        return ConnectError(f"cannot connect to PostgreSQL: {exc}")
    return exc


# ---------------------------------------------------------------------- Pool


class PsycopgManager(_PsycopgCommon):
    """Blocking manager and executor for psycopg 3 (``Pool``).

    Args:
        target: a ``postgresql://`` URL or a parsed :class:`PGTarget`.
        connect_timeout: bound (s) on one connect, check, reset or close.
        pgbouncer: work behind PgBouncer in transaction mode (also ``?pgbouncer=true``).
        connect_kwargs: passed to ``psycopg.Connection.connect``; ``password`` may be a
            callable, and the whole set may be one callable returning it.
    """

    def connect(self) -> psycopg.Connection[Any]:
        # The password lives in _open()'s frame only; see AsyncpgManager.connect.
        failure: Exception
        try:
            conn = self._open()
        except Exception as exc:
            failure = exc
        else:
            self._prepare_cancel(conn)
            return conn
        raise scrubbed(failure, _classify)

    def _open(self) -> psycopg.Connection[Any]:
        return psycopg.Connection.connect(
            **self._kwargs(resolve_credentials_sync(self._connect_kwargs))
        )

    def check(self, conn: psycopg.Connection[Any]) -> None:
        _run_bounded(conn, b"SELECT 1", self._timeout)

    def remember_session(self, conn: psycopg.Connection[Any]) -> None:
        """After ``on_connect``: remember its session settings for the reset to restore."""
        row = conn.execute(BASELINE_SQL).fetchone()
        if row and row[0]:
            self._baselines[conn] = row[0]

    def reset(self, conn: psycopg.Connection[Any]) -> None:
        status = conn.info.transaction_status
        if status in _IN_TRANSACTION:
            _run_bounded(conn, b"ROLLBACK", self._timeout)
        elif status != _IDLE:
            raise psycopg.OperationalError(f"connection returned in state {status.name}")
        script = self._full_reset(conn)
        if script:
            try:
                _run_bounded(conn, script.encode(), self._timeout)
            except psycopg.OperationalError as exc:
                _run_bounded(conn, self._recovery_script(conn, exc).encode(), self._timeout)
            probe = self._next_probe(conn)
            if probe is not None:
                _run_bounded(conn, _PROBE, self._timeout, prepare_as=probe)
        self._forget_notifications(conn)
        _require_idle(conn.info.transaction_status)

    def close(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed:
            orphan = self._orphan_cancel(conn)
            if orphan is not None:
                _cancel_within(orphan, min(self._timeout, 5.0))
            return
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            # A query is still running: closing the socket alone leaves it running on the
            # server (psycopg's close() does not cancel), holding a session the pool no
            # longer counts.
            try:
                conn.cancel_safe(timeout=min(self._timeout / 2, 5.0))
            except Exception:  # the close below still happens; the cancel was best effort
                pass
        conn.close()

    def execute(self, conn: psycopg.Connection[Any], query: str, args: Sequence[Any]) -> str:
        return conn.execute(query, args or None).statusmessage or ""

    def executemany(
        self, conn: psycopg.Connection[Any], query: str, rows: Iterable[Sequence[Any]]
    ) -> int:
        with conn.cursor() as cur:
            cur.executemany(query, rows)
            return cur.rowcount

    def fetch_all(
        self, conn: psycopg.Connection[Any], query: str, args: Sequence[Any]
    ) -> list[Any]:
        return conn.execute(query, args or None).fetchall()

    def fetch_one(self, conn: psycopg.Connection[Any], query: str, args: Sequence[Any]) -> Any:
        return conn.execute(query, args or None).fetchone()

    def fetch_value(self, conn: psycopg.Connection[Any], query: str, args: Sequence[Any]) -> Any:
        row = conn.execute(query, args or None).fetchone()
        return None if row is None else row[0]

    def begin(
        self,
        conn: psycopg.Connection[Any],
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> None:
        conn.execute(begin_sql(isolation, readonly, deferrable))

    def commit(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("ROLLBACK")

    def copy_records(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> int:
        with conn.cursor() as cur:
            with cur.copy(self._copy_statement(table, columns)) as copy:
                for record in records:
                    copy.write_row(record)
            return cur.rowcount


def _run_bounded(
    conn: psycopg.Connection[Any], query: bytes, timeout: float, prepare_as: bytes | None = None
) -> None:
    """Run ``query`` (simple protocol, no results wanted) within ``timeout`` seconds; or,
    with ``prepare_as``, prepare it under that name.

    psycopg's blocking calls wait on the socket without a deadline; this drives libpq itself
    so that a stalled or black-holed server costs at most ``timeout``.

    Raises:
        TimeoutError: the deadline passed (the connection is then unusable: close it).
        psycopg.OperationalError: the server reported an error, or the connection broke.
    """
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    _send(pgconn, query, prepare_as)
    while pgconn.flush():
        _wait(pgconn.socket, False, deadline)
    error: str | None = None
    while True:
        # get_result() blocks (holding the GIL) until the next result is complete: call it
        # only once libpq says it is, for every result of a multi-statement script.
        pgconn.consume_input()
        while pgconn.is_busy():
            _wait(pgconn.socket, True, deadline)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        error = error or _error_of(result)
    _finish(pgconn, error)


def _send(pgconn: pq.abc.PGconn, query: bytes, prepare_as: bytes | None = None) -> None:
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("connection is closed")
    if prepare_as is None:
        pgconn.send_query(query)
    else:  # (Parse and Sync: no implicit transaction is left open, unlike asyncpg's prepare)
        pgconn.send_prepare(prepare_as, query)


def _require_idle(status: pq.TransactionStatus) -> None:
    """A reset must leave the session outside any transaction; if a late statement of the
    last borrower slipped in, the connection is closed rather than lent."""
    if status != _IDLE:
        raise psycopg.OperationalError(f"connection still {status.name} after the reset")


def _error_of(result: pq.abc.PGresult) -> str | None:
    if result.status == pq.ExecStatus.FATAL_ERROR:
        return (result.error_message or b"").decode(errors="replace").strip()
    return None


def _finish(pgconn: pq.abc.PGconn, error: str | None) -> None:
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("the connection was lost")
    if error is not None:
        raise psycopg.OperationalError(error)


def _wait(fd: int, read: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the server did not answer in time")
    ready = select.select([fd], [], [], left) if read else select.select([], [fd], [], left)
    if not any(ready):
        raise TimeoutError("the server did not answer in time")


async def _run_async(
    conn: psycopg.AsyncConnection[Any], query: bytes, prepare_as: bytes | None = None
) -> None:
    """The event-loop counterpart of :func:`_run_bounded`. The bound is the pool's: AsyncPool
    cancels a manager call at ``connect_timeout``, and a second timeout scope here would
    only cost a release more.

    A cancelled psycopg call first tries to cancel the query on the server and waits for that
    (seconds, against a silent server); driving libpq here makes cancellation and the deadline
    immediate, and the pool then closes the connection.
    """
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    error: str | None = None
    _send(pgconn, query, prepare_as)
    while pgconn.flush():
        await _ready(loop, pgconn.socket, False)
    while True:  # as in _run_bounded: never call get_result() before it is complete
        pgconn.consume_input()
        while pgconn.is_busy():
            await _ready(loop, pgconn.socket, True)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        error = error or _error_of(result)
    _finish(pgconn, error)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, read: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not future.done():
            future.set_result(None)

    (loop.add_reader if read else loop.add_writer)(fd, done)
    try:
        await future
    finally:
        (loop.remove_reader if read else loop.remove_writer)(fd)


# ---------------------------------------------------------------------- AsyncPool


class AsyncPsycopgManager(_PsycopgCommon):
    """Async manager and executor for psycopg 3 (``AsyncPool`` with
    ``postgresql+psycopg://``). Arguments as :class:`PsycopgManager`."""

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        # The password lives in _open()'s frame only; see AsyncpgManager.connect.
        failure: Exception
        try:
            conn = await self._open()
        except Exception as exc:
            failure = exc
        else:
            self._prepare_cancel(conn)
            return conn
        raise scrubbed(failure, _classify)

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            **self._kwargs(await resolve_credentials(self._connect_kwargs))
        )

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await _run_async(conn, b"SELECT 1")

    async def remember_session(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """After ``on_connect``: remember its session settings for the reset to restore."""
        cur = await conn.execute(BASELINE_SQL)
        row = await cur.fetchone()
        if row and row[0]:
            self._baselines[conn] = row[0]

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        status = conn.info.transaction_status
        if status in _IN_TRANSACTION:
            await _run_async(conn, b"ROLLBACK")
        elif status != _IDLE:
            raise psycopg.OperationalError(f"connection returned in state {status.name}")
        script = self._full_reset(conn)
        if script:
            try:
                await _run_async(conn, script.encode())
            except psycopg.OperationalError as exc:
                await _run_async(conn, self._recovery_script(conn, exc).encode())
            probe = self._next_probe(conn)
            if probe is not None:
                await _run_async(conn, _PROBE, prepare_as=probe)
        self._forget_notifications(conn)
        _require_idle(conn.info.transaction_status)

    async def close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.closed:
            orphan = self._orphan_cancel(conn)
            if orphan is not None:
                await _cancel_within_async(orphan, min(self._timeout, 5.0))
            return
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            # As in PsycopgManager.close: cancel a running query before closing.
            try:
                await conn.cancel_safe(timeout=min(self._timeout / 2, 5.0))
            except BaseException:  # best effort (even if cancelled): the close below happens
                await conn.close()
                raise
        await conn.close()

    async def execute(
        self, conn: psycopg.AsyncConnection[Any], query: str, args: Sequence[Any]
    ) -> str:
        cur = await conn.execute(query, args or None)
        return cur.statusmessage or ""

    async def executemany(
        self, conn: psycopg.AsyncConnection[Any], query: str, rows: Iterable[Sequence[Any]]
    ) -> int:
        async with conn.cursor() as cur:
            await cur.executemany(query, rows)
            return cur.rowcount

    async def fetch_all(
        self, conn: psycopg.AsyncConnection[Any], query: str, args: Sequence[Any]
    ) -> list[Any]:
        cur = await conn.execute(query, args or None)
        return await cur.fetchall()

    async def fetch_one(
        self, conn: psycopg.AsyncConnection[Any], query: str, args: Sequence[Any]
    ) -> Any:
        cur = await conn.execute(query, args or None)
        return await cur.fetchone()

    async def fetch_value(
        self, conn: psycopg.AsyncConnection[Any], query: str, args: Sequence[Any]
    ) -> Any:
        cur = await conn.execute(query, args or None)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def begin(
        self,
        conn: psycopg.AsyncConnection[Any],
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> None:
        await conn.execute(begin_sql(isolation, readonly, deferrable))

    async def commit(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("COMMIT")

    async def rollback(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("ROLLBACK")

    async def copy_records(
        self,
        conn: psycopg.AsyncConnection[Any],
        table: str,
        records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> int:
        async with conn.cursor() as cur:
            async with cur.copy(self._copy_statement(table, columns)) as copy:
                for record in records:
                    await copy.write_row(record)
            return cur.rowcount
