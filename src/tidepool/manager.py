"""Managers: how a pool opens, checks, resets and closes one kind of connection.

A manager is any object with these methods; no base class is needed. ``AsyncPool`` takes an
:class:`AsyncManager`, ``Pool`` a :class:`Manager`. The pool calls them from its own workers and
bounds every call (``connect_timeout`` in ``AsyncPool``; in ``Pool`` a blocking call is bounded
by the driver's own timeouts, which adapters set from ``connect_timeout``).

Contract of each method:

``connect()``
    Open one connection and return it. Raise :class:`tidepool.ConnectError` (with the driver's
    error as ``__cause__``) when retrying cannot help (bad password, unknown database); any
    other exception is a transient failure that the pool retries with jittered backoff.
``check(conn)``
    A real round trip; raise if the connection must not be lent. Used by the ``check`` policy.
``reset(conn)``
    Make the session clean for the next borrower (roll back, undo session state); raise if it
    cannot be made clean, and the pool closes it instead of lending it again.
``close(conn)``
    Close the connection. Errors are logged and otherwise ignored.
``is_broken(conn)``
    Cheap and free of I/O: ``True`` when the connection is known to be unusable (closed socket,
    desynchronised protocol). Called when a connection comes back.

Optional methods a manager may add:

``is_disconnect(conn, error)``
    Cheap, no I/O: ``True`` when ``conn`` was lost to a server-side disconnect (server
    restart, failover, terminated backend); ``error`` is the exception of a failed check or
    reset, or ``None`` when the connection came back broken. The pool then retires every
    connection created before it, so a restart costs one failed request, not one per stale
    connection.
``remember_session(conn)``
    Called after ``on_connect`` set up a new connection: remember what it made of the session
    so that ``reset()`` restores that baseline rather than a bare session.
``needs_reset(conn)``
    Cheap and free of I/O: ``False`` when ``reset(conn)`` would provably have nothing to do,
    so that a release skips it altogether (no procedure, no call). Answer ``True`` whenever in
    doubt: a wrong ``False`` lends a dirty session. An exception counts as ``True``.
``dispose()``
    Called once after the pool has closed every connection (release manager-wide resources).

SQL adapters also implement the executor glue (:class:`AsyncExecutor` / :class:`Executor`)
that backs ``pool.execute()``, ``pool.fetch_all()`` and ``pool.transaction()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["AsyncExecutor", "AsyncManager", "Executor", "Manager"]

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


@runtime_checkable
class AsyncManager(Protocol[C]):
    """Opens, checks, resets and closes connections for :class:`tidepool.AsyncPool`."""

    async def connect(self) -> C:
        """Open one connection. Raise ``ConnectError`` for a permanent failure."""
        ...

    async def check(self, conn: C, /) -> None:
        """Raise if ``conn`` must not be lent (a real round trip)."""
        ...

    async def reset(self, conn: C, /) -> None:
        """Make ``conn`` clean for the next borrower; raise if that is impossible."""
        ...

    async def close(self, conn: C, /) -> None:
        """Close ``conn``."""
        ...

    def is_broken(self, conn: C, /) -> bool:
        """Cheap, no I/O: is ``conn`` known to be unusable?"""
        ...


@runtime_checkable
class Manager(Protocol[C]):
    """Opens, checks, resets and closes connections for :class:`tidepool.Pool`."""

    def connect(self) -> C:
        """Open one connection. Raise ``ConnectError`` for a permanent failure."""
        ...

    def check(self, conn: C, /) -> None:
        """Raise if ``conn`` must not be lent (a real round trip)."""
        ...

    def reset(self, conn: C, /) -> None:
        """Make ``conn`` clean for the next borrower; raise if that is impossible."""
        ...

    def close(self, conn: C, /) -> None:
        """Close ``conn``."""
        ...

    def is_broken(self, conn: C, /) -> bool:
        """Cheap, no I/O: is ``conn`` known to be unusable?"""
        ...


@runtime_checkable
class AsyncExecutor(Protocol[C_contra]):
    """Executor glue of an async SQL adapter: runs one statement on a lent connection."""

    async def execute(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> Any:
        """Run a statement; return the driver's status (row count for SQLite)."""
        ...

    async def executemany(self, conn: C_contra, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        """Run a statement once per row of parameters."""
        ...

    async def fetch_all(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> list[Any]:
        """Return every row."""
        ...

    async def fetch_one(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> Any | None:
        """Return the first row, or ``None``."""
        ...

    async def fetch_value(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> Any:
        """Return the first column of the first row, or ``None``."""
        ...

    async def begin(self, conn: C_contra, /, **options: Any) -> None:
        """Start a transaction; ``options`` are the adapter's (isolation, mode, ...)."""
        ...

    async def commit(self, conn: C_contra, /) -> None:
        """Commit the open transaction."""
        ...

    async def rollback(self, conn: C_contra, /) -> None:
        """Roll back the open transaction."""
        ...


@runtime_checkable
class Executor(Protocol[C_contra]):
    """Executor glue of a threaded SQL adapter: runs one statement on a lent connection."""

    def execute(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> Any:
        """Run a statement; return the driver's status (row count for SQLite)."""
        ...

    def executemany(self, conn: C_contra, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        """Run a statement once per row of parameters."""
        ...

    def fetch_all(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> list[Any]:
        """Return every row."""
        ...

    def fetch_one(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> Any | None:
        """Return the first row, or ``None``."""
        ...

    def fetch_value(self, conn: C_contra, sql: str, args: Sequence[Any], /) -> Any:
        """Return the first column of the first row, or ``None``."""
        ...

    def begin(self, conn: C_contra, /, **options: Any) -> None:
        """Start a transaction; ``options`` are the adapter's (isolation, mode, ...)."""
        ...

    def commit(self, conn: C_contra, /) -> None:
        """Commit the open transaction."""
        ...

    def rollback(self, conn: C_contra, /) -> None:
        """Roll back the open transaction."""
        ...
