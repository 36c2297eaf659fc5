"""``Pool``: drives the shared procedures with threads."""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

from .._core.flows import CALL, WAIT, Flow
from .._core.waiter import Waiter
from .._pool_base import (
    _DEFAULT,
    LeaseBase,
    PoolBase,
    PoolOptions,
    close_timeout,
    fresh_error,
    warn_unclosed,
)
from ..manager import Manager

__all__ = ["Lease", "Pool"]

C = TypeVar("C")
T = TypeVar("T")
log = logging.getLogger("tidepool.pool")
monotonic = time.monotonic


class _LockWaiter(Waiter):
    """Blocks on a lock taken at creation; :meth:`wake` releases it. A thread that timed
    out withdraws under the core's lock, so a late hand-off is never lost."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> bool:
        self.lock.release()
        return True


class Lease(LeaseBase[C]):
    """What ``Pool.acquire()`` returns: ``with`` it to borrow a connection (it goes back on
    exit, also on error)."""

    __slots__ = ()
    _pool: Pool[C]

    def __enter__(self) -> C:
        if self._entry is None:  # (try_acquire() built it holding its connection)
            pool = self._pool
            # lend_idle(), inlined: this is the whole fast path of a checkout.
            lent = pool._state.try_lend(monotonic(), self._site)
            if lent is not None and pool._observed:
                pool._note_acquired(lent[0], 0.0)
            elif lent is None:
                lent = pool._drive(pool._slow_acquire(self._timeout, self._site))
            self._entry, self._conn = lent
        return self._conn  # type: ignore[return-value]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry is not None:
            conn, self._entry, self._conn = self._conn, None, None
            pool = self._pool
            if pool.release_start(entry, conn):  # type: ignore[arg-type]
                pool._drive(pool.reset_flow(entry, conn))  # type: ignore[arg-type]


class Pool(PoolBase[C]):
    """A pool of connections for threads.

    ``target`` is a database URL (``sqlite:///app.db``, ...) or a :class:`Manager`.
    Construction validates every option and does no I/O; the pool opens on ``pool.open()``,
    ``with pool``, or its first ``acquire()``. Safe across ``os.fork()``: a child process
    never uses or closes its parent's connections. Manager calls run in the calling or a
    background thread and are bounded by the driver's own timeouts.
    """

    _flavor: Literal["async", "sync"] = "sync"

    if TYPE_CHECKING:

        @overload
        def __init__(self: Pool[Any], target: str, /, **options: Unpack[PoolOptions]) -> None: ...

        @overload
        def __init__(self, target: Manager[C], /, **options: Unpack[PoolOptions]) -> None: ...

        def __init__(self, target: str | Manager[C], /, **options: Unpack[PoolOptions]) -> None: ...

    def _init_shell(self) -> None:
        self._start_lock = threading.Lock()
        self._spawn_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self._closed_done = False

    def _check_manager_flavor(self, manager: object) -> None:
        if inspect.iscoroutinefunction(manager.connect):  # type: ignore[attr-defined]
            raise TypeError(
                f"Pool needs a blocking manager; {type(manager).__name__}.connect is a "
                "coroutine function: use tidepool.AsyncPool for an async manager"
            )

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open eagerly: fill to ``min_size`` and verify at least one connection, retrying
        transient failures within ``acquire_timeout``.

        Raises:
            ConnectError: a permanent failure (bad password, unknown database).
            PoolTimeout: the target did not answer in time; the last error is ``__cause__``.
            PoolClosed: the pool was closed.
        """
        self._start()
        self._drive(self.open_flow(self.options.acquire_timeout))
        log.info("pool %r: opened (%s)", self.name, self._state.counts())

    def close(self, timeout: float = 5.0) -> None:
        """Close gracefully; idempotent.

        New acquires raise ``PoolClosed`` and queued callers are woken with it; idle
        connections close now, lent ones as they come back; after ``timeout`` seconds the
        rest are closed under their borrowers.
        """
        timeout = close_timeout(timeout)
        if self._closed_done:
            return
        self._drive(self.shutdown_flow(timeout))
        self._closed_done = True
        self._stop.set()
        deadline = monotonic() + self._connect_timeout
        current = threading.current_thread()
        while monotonic() < deadline:
            with self._spawn_lock:
                pending = [t for t in self._threads if t is not current and t.is_alive()]
            if not pending:
                break
            for thread in pending:
                thread.join(max(0.0, deadline - monotonic()))
        dispose = getattr(self.manager, "dispose", None)
        if dispose is not None:
            dispose()
        log.info("pool %r: closed", self.name)

    def __enter__(self) -> Pool[C]:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        if self._opened or self._state.closed:
            return
        with self._start_lock:
            if self._opened or self._state.closed:
                return
            self._opened = True
            self._stop = threading.Event()
            thread = threading.Thread(
                target=_maintenance_loop,
                args=(weakref.ref(self), self._stop, self._maintenance_interval()),
                name=f"tidepool-maintenance-{self.name}",
                daemon=True,
            )
            thread.start()
        self._note_opened()
        self.kick()

    def __del__(self) -> None:
        if getattr(self, "_opened", False) and not self._closed_done and not self._state.closed:
            self._stop.set()
            warn_unclosed(self)

    def _reset_shell_after_fork(self) -> None:
        self._start_lock = threading.Lock()
        self._spawn_lock = threading.Lock()
        self._threads = set()
        self._stop = threading.Event()

    # ------------------------------------------------------------ acquire / release

    _lease_class = Lease

    if TYPE_CHECKING:

        def acquire(self, timeout: float | None = ...) -> Lease[C]: ...

    def getconn(self, timeout: float | None = _DEFAULT) -> C:
        """Borrow a connection without a ``with`` block; give it back with
        :meth:`release`. Raises as :meth:`acquire`."""
        site = self._site(1)
        timeout = self._acquire_timeout(timeout)
        lent = self.lend_idle(site)
        if lent is None:
            lent = self._drive(self._slow_acquire(timeout, site))
        return lent[1]

    def try_acquire(self) -> Lease[C] | None:
        """Lend an idle connection if one needs no I/O (no connect, no check), else ``None``.
        Never waits. Use the result with ``with``."""
        lent = self.lend_idle(self._site(1))
        if lent is None:
            return None
        return Lease(self, 0.0, None, lent)

    def release(self, conn: C, *, discard: bool = False) -> None:
        """Give back a connection obtained with :meth:`getconn`.

        ``discard=True`` retires it instead of lending it again (no reset; closed in the
        background with the reason ``"discarded"``): for a connection whose state you no
        longer trust. It does not, unlike a lost connection, retire the older ones.

        Raises:
            ValueError: ``conn`` is not currently lent by this pool (released twice, or
                from another pool).
        """
        entry = self._entry_to_release(conn)
        if entry is not None:
            self._drive(self.release_flow(entry, conn, discard))

    def _borrower_name(self) -> str | None:
        return threading.current_thread().name

    # ------------------------------------------------------------ executor

    def execute(self, sql: str, *args: Any) -> Any:
        """Run one statement on a connection of its own; return the driver's status."""
        return self._drive(self._execute("execute", (sql, args)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        """Run one statement once per row of parameters, on one connection."""
        return self._drive(self._execute("executemany", (sql, rows)))

    def fetch_all(self, sql: str, *args: Any) -> list[Any]:
        """Run a query; return every row (the driver's row objects)."""
        return self._drive(self._execute("fetch_all", (sql, args)))

    def fetch_one(self, sql: str, *args: Any) -> Any | None:
        """Run a query; return its first row, or ``None``."""
        return self._drive(self._execute("fetch_one", (sql, args)))

    def fetch_value(self, sql: str, *args: Any) -> Any:
        """Run a query; return the first column of its first row, or ``None``."""
        return self._drive(self._execute("fetch_value", (sql, args)))

    def copy_records(
        self,
        table: str,
        records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> int:
        """Bulk-load ``records`` into ``table`` (``name`` or ``schema.name``) with
        PostgreSQL's ``COPY``, on one connection; return the number of rows copied.
        ``columns`` names the columns the records fill (default: all, in order)."""
        copied: int = self._drive(self._execute("copy_records", (table, records, columns)))
        return copied

    @contextmanager
    def transaction(self, **options: Any) -> Iterator[C]:
        """Borrow a connection inside a transaction: committed when the block succeeds,
        rolled back on an exception. ``options`` go to the adapter (PostgreSQL:
        ``isolation``, ``readonly``, ``deferrable``; SQLite:
        ``mode="deferred"|"immediate"|"exclusive"``)."""
        begin = self.executor_method("begin")
        commit = self.executor_method("commit")
        rollback = self.executor_method("rollback")
        with self.acquire() as conn:
            begin(conn, **options)
            try:
                yield conn
            except BaseException:
                try:
                    rollback(conn)
                except Exception as exc:  # the reset on release retries, or closes it
                    log.info("pool %r: rollback after an error failed: %r", self.name, exc)
                raise
            commit(conn)

    # ------------------------------------------------------------ the shell

    def make_waiter(self) -> Waiter:
        return _LockWaiter()

    def spawn(self, flow: Flow[Any], what: str) -> None:
        thread = threading.Thread(
            target=self._run_background,
            args=(flow,),
            name=f"tidepool-{what}-{self.name}",
            daemon=True,
        )
        # Registered and started in one step, so close() never sees an unstarted thread.
        with self._spawn_lock:
            self._threads.add(thread)
            thread.start()

    def _run_background(self, flow: Flow[Any]) -> None:
        try:
            self._drive(flow)
        except Exception:
            log.exception("pool %r: background work failed", self.name)
        finally:
            self._threads.discard(threading.current_thread())

    def _drive(self, flow: Flow[T]) -> T:
        """Run a procedure: perform each operation it yields, send back the result or throw
        back the exception."""
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.send(send) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            send = error = None
            try:
                kind = op[0]
                if kind == CALL:
                    send = op[1](*op[2])
                    if hasattr(send, "__await__"):
                        close = getattr(send, "close", None)
                        if close is not None:
                            close()
                        raise TypeError(
                            f"Pool got an awaitable from {op[1]!r}: use tidepool.AsyncPool "
                            "for an async manager or on_connect callback"
                        )
                elif kind == WAIT:
                    send = self._wait(op[1], op[2])
                else:
                    self._stop.wait(op[1])
            except BaseException as exc:
                error = exc

    def _wait(self, waiter: _LockWaiter, deadline: float | None) -> bool:
        if deadline is None:
            waiter.lock.acquire()
        elif not waiter.lock.acquire(timeout=max(deadline - monotonic(), 0.0)):
            return False
        if waiter.error is not None:
            raise fresh_error(waiter.error)
        return True


def _maintenance_loop(ref: weakref.ref[Pool[Any]], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        pool = ref()
        if pool is None or pool._state.closed:
            return
        try:
            pool.maintain()
        except Exception:
            log.exception("pool %r: maintenance failed", pool.name)
        del pool
