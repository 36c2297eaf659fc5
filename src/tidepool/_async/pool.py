"""``AsyncPool``: drives the shared procedures with asyncio."""

from __future__ import annotations

import asyncio
import inspect
import logging
import operator
import threading
import time
import weakref
from collections.abc import Generator, Iterable, Sequence
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack, overload

from .._core.deadlines import DeadlineHeap
from .._core.entry import Entry, Site
from .._core.flows import CALL, WAIT, Flow
from .._core.waiter import Waiter
from .._pool_base import (
    LeaseBase,
    PoolBase,
    PoolOptions,
    close_timeout,
    fresh_error,
    warn_unclosed,
)
from ..manager import AsyncManager

__all__ = ["AsyncLease", "AsyncPool", "AsyncTransaction"]

_get_ident = threading.get_ident

C = TypeVar("C")
T = TypeVar("T")
log = logging.getLogger("tidepool.pool")
monotonic = time.monotonic


class _FutureWaiter(Waiter):
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bool], deadline: float | None = None) -> None:
        # (Waiter.__init__, inlined: one of these is made per contended acquire.)
        self.entry = None
        self.error = None
        self.enqueued_at = 0.0
        self.deadline = deadline
        self.future = future

    def wake(self) -> bool:
        future = self.future
        if future.done():  # cancelled, or its deadline passed
            return False
        future.set_result(True)
        return True


# Whether a queued caller's future no longer waits (served, cancelled, or timed out): a
# C-level call, made once or twice per contended acquire by the deadline list. The same
# question, asked of a _CallBound, is whether its call has ended.
_finished = operator.methodcaller("done")


class _CallBound:
    """The deadline of one manager call that suspended (a reset, a check, a connect, a
    close), on the pool's shared timer: what ``asyncio.timeout()`` does, without an
    event-loop timer and a context manager per call, which cost more than the rest of a
    release's bookkeeping (4.4 us against under 1 us here).

    At the deadline the timer cancels the task; :meth:`end` then says whether that
    cancellation is the one the task received, which the caller turns into ``TimeoutError``.
    A cancellation from elsewhere, or one requested since, stays a cancellation (the
    bookkeeping of ``Task.cancelling()`` / ``uncancel()``, as ``asyncio.timeout()`` keeps it).
    """

    __slots__ = ("_cancelling", "_ended", "_expired", "_task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        self._ended = False

    def done(self) -> bool:
        """Whether the call has ended (the deadline list drops it then)."""
        return self._ended

    def expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def end(self) -> bool:
        """The call ended: whether the deadline had cancelled it (then it timed out)."""
        self._ended = True
        return self._expired and self._task.uncancel() <= self._cancelling


def _deadline_tick(ref: weakref.ref[AsyncPool[Any]]) -> None:
    pool = ref()
    if pool is not None:
        pool._deadline_passed()


class _Resume(Generic[T]):
    """Await the rest of a coroutine whose first step already ran (see ``_advance``)."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: CoroutineType[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, T]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


_DONE: Any = object()  # _advance: the procedure finished
_AWAITABLE: Any = object()  # _advance: a call returned an awaitable that is not a coroutine


def _advance(flow: Flow[Any], send: Any, error: BaseException | None) -> tuple[Any, Any]:
    """Run ``flow`` synchronously until it finishes or must really suspend.

    Returns ``(_DONE, value)`` when the procedure returned ``value``; otherwise the operation
    to await and, for a call, ``(started_coroutine, first_yield)``. The first step of every
    coroutine a call returns runs here at once, without a timer: most resets and many checks
    finish without suspending, and arming a timer (or creating a coroutine) per release would
    cost more than the rest of the release. Only a call that really waits gets its deadline.
    """
    while True:
        try:
            op = flow.send(send) if error is None else flow.throw(error)
        except StopIteration as stop:
            return _DONE, stop.value
        send = error = None
        if op[0] != CALL:
            return op, None
        try:
            result = op[1](*op[2])
            if type(result) is CoroutineType:
                try:
                    return op, (result, result.send(None))
                except StopIteration as stop:
                    send = stop.value
            elif inspect.isawaitable(result):
                return op, (result, _AWAITABLE)
            else:
                send = result
        except BaseException as exc:
            error = exc


class AsyncLease(LeaseBase[C]):
    """What ``AsyncPool.acquire()`` returns: ``async with`` it to borrow a connection (it
    goes back on exit, also on error or cancellation), or ``await`` it to get the connection
    and give it back yourself with ``await pool.release(conn)``."""

    __slots__ = ()
    _pool: AsyncPool[C]

    def __await__(self) -> Generator[Any, Any, C]:
        return self._pool._acquire(self._timeout, self._site).__await__()

    async def __aenter__(self) -> C:
        if self._entry is None:  # (try_acquire() built it holding its connection)
            pool = self._pool
            # The pool's loop is running in this thread, so it is the running loop: cheaper
            # than asking asyncio, whose lookup makes a getpid() system call.
            if getattr(pool._loop, "_thread_id", None) != _get_ident():
                pool._check_loop_or_unopened()
            # lend_idle(), inlined: this is the whole fast path of a checkout.
            now = monotonic()
            lent = pool._state.try_lend(now, self._site)
            if lent is not None and pool._observed:
                pool._note_acquired(lent[0], 0.0)
            elif lent is None:
                lent = await pool._wait_turn(self._timeout, self._site, now)
            self._entry, self._conn = lent
        return self._conn  # type: ignore[return-value]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry is None:
            return
        conn, self._entry, self._conn = self._conn, None, None
        pool = self._pool
        if pool.release_start(entry, conn):  # type: ignore[arg-type]
            await pool._reset(entry, conn)  # type: ignore[arg-type]


class AsyncTransaction(Generic[C]):
    """What ``AsyncPool.transaction()`` returns. A class rather than an async generator: the
    event loop finalises async generators itself at shutdown, and one borrowed from inside a
    user's generator would be closed twice ("asynchronous generator is already running")."""

    __slots__ = ("_lease", "_options", "_pool")

    def __init__(self, pool: AsyncPool[C], options: dict[str, Any], lease: AsyncLease[C]) -> None:
        self._pool = pool
        self._options = options
        self._lease = lease

    async def __aenter__(self) -> C:
        conn = await self._lease.__aenter__()
        try:
            await self._pool.executor_method("begin")(conn, **self._options)
        except BaseException:
            await self._lease.__aexit__(None, None, None)
            raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, conn = self._pool, self._lease._conn
        try:
            if exc_type is None:
                await pool.executor_method("commit")(conn)
            else:
                await _rollback_quietly(pool.executor_method("rollback"), conn, pool.name)
        finally:
            await self._lease.__aexit__(exc_type, exc, tb)


class AsyncPool(PoolBase[C]):
    """A pool of connections for asyncio.

    ``target`` is a database URL (``sqlite:///app.db``, ...) or an :class:`AsyncManager`.
    Construction validates every option and does no I/O; the pool opens on ``await
    pool.open()``, ``async with pool``, or its first ``acquire()``, and is bound to the event
    loop it opened in. The options are those of :class:`tidepool.Options`.
    """

    if TYPE_CHECKING:

        @overload
        def __init__(
            self: AsyncPool[Any], target: str, /, **options: Unpack[PoolOptions]
        ) -> None: ...

        @overload
        def __init__(self, target: AsyncManager[C], /, **options: Unpack[PoolOptions]) -> None: ...

        def __init__(
            self, target: str | AsyncManager[C], /, **options: Unpack[PoolOptions]
        ) -> None: ...

    def _init_shell(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.TimerHandle | None = None
        self._closed_done = False
        # One timer for every queued caller's deadline (see _core/deadlines.py).
        self._deadlines: DeadlineHeap[asyncio.Future[bool]] = DeadlineHeap(_finished)
        # ... and for every manager call in flight (see _CallBound).
        self._call_deadlines: DeadlineHeap[_CallBound] = DeadlineHeap(_finished)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_at = 0.0

    def _check_manager_flavor(self, manager: object) -> None:
        if not inspect.iscoroutinefunction(manager.connect):  # type: ignore[attr-defined]
            raise TypeError(
                f"AsyncPool needs an async manager (async def connect/check/reset/close); "
                f"{type(manager).__name__}.connect is not a coroutine function: use "
                "tidepool.Pool for a blocking manager"
            )

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open eagerly: fill to ``min_size`` and verify at least one connection, retrying
        transient failures within ``acquire_timeout``.

        Raises:
            ConnectError: a permanent failure (bad password, unknown database).
            PoolTimeout: the target did not answer in time; the last error is ``__cause__``.
            PoolClosed: the pool was closed.
        """
        self._start()
        await self._drive(self.open_flow(self.options.acquire_timeout))
        log.info("pool %r: opened (%s)", self.name, self._state.counts())

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close gracefully; idempotent.

        New acquires raise ``PoolClosed`` and queued callers are woken with it; idle
        connections close now, lent ones as they come back; after ``timeout`` seconds the
        rest are closed under their borrowers.
        """
        timeout = close_timeout(timeout)
        if self._closed_done:
            return
        if self._loop is None:
            self._state.close()
            self._closed_done = True
            return
        self._check_loop()
        await self._drive(self.shutdown_flow(timeout))
        self._closed_done = True
        if self._maintenance is not None:
            self._maintenance.cancel()
        self._disarm_deadlines()
        self._rearm_deadlines()  # a borrower's reset, or a slow close, keeps its bound
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._connect_timeout)
        dispose = getattr(self.manager, "dispose", None)
        if dispose is not None:
            result = dispose()
            if inspect.isawaitable(result):
                await result
        log.info("pool %r: closed", self.name)

    async def __aenter__(self) -> AsyncPool[C]:
        try:
            await self.open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _start(self) -> None:
        if self._opened:
            self._check_loop()
            return
        self._loop = asyncio.get_running_loop()
        self._opened = True
        self._schedule_maintenance(self._loop, weakref.ref(self))
        self._note_opened()
        self.kick()

    def _schedule_maintenance(
        self, loop: asyncio.AbstractEventLoop, ref: weakref.ref[AsyncPool[Any]]
    ) -> None:
        self._maintenance = loop.call_later(self._maintenance_interval(), _maintenance_tick, ref)

    def _check_loop_or_unopened(self) -> None:
        if self._loop is not None:
            self._check_loop()

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError(
                f"pool {self.name!r} is bound to the event loop it opened in ({self._loop!r}) "
                f"and cannot be used from another ({loop!r}); create one pool per event loop"
            )

    def __del__(self) -> None:
        if getattr(self, "_opened", False) and not self._closed_done and not self._state.closed:
            if self._maintenance is not None:
                self._maintenance.cancel()
            self._disarm_deadlines()
            warn_unclosed(self)

    def _reset_shell_after_fork(self) -> None:
        self._loop = None
        self._tasks = set()
        self._maintenance = None
        self._deadlines = DeadlineHeap(_finished)
        self._call_deadlines = DeadlineHeap(_finished)
        self._deadline_timer = None

    # ------------------------------------------------------------ acquire / release

    _lease_class = AsyncLease

    if TYPE_CHECKING:

        def acquire(self, timeout: float | None = ...) -> AsyncLease[C]: ...

    def try_acquire(self) -> AsyncLease[C] | None:
        """Lend an idle connection if one needs no I/O (no connect, no check), else ``None``.
        Never waits. Use the result with ``async with``."""
        lent = self.lend_idle(self._site(1))
        if lent is None:
            return None
        return AsyncLease(self, 0.0, None, lent)

    async def release(self, conn: C, *, discard: bool = False) -> None:
        """Give back a connection obtained with ``conn = await pool.acquire()``.

        ``discard=True`` retires it instead of lending it again (no reset; closed in the
        background with the reason ``"discarded"``): for a connection whose state you no
        longer trust. It does not, unlike a lost connection, retire the older ones.

        Raises:
            ValueError: ``conn`` is not currently lent by this pool (released twice, or
                from another pool).
        """
        entry = self._entry_to_release(conn)
        if entry is not None:
            await self._give_back(entry, conn, discard)

    async def _give_back(self, entry: Entry[C], conn: C, discard: bool = False) -> None:
        if self.release_start(entry, conn, discard):
            await self._reset(entry, conn)

    async def _reset(self, entry: Entry[C], conn: C) -> None:
        flow = self.reset_flow(entry, conn)
        op, pending = _advance(flow, None, None)
        if op is not _DONE:  # the reset really waits: finish it within its bound
            await self._drive(flow, op, pending)

    async def _acquire(self, timeout: float | None, site: Site) -> C:
        if getattr(self._loop, "_thread_id", None) != _get_ident():  # see AsyncLease
            self._check_loop_or_unopened()
        now = monotonic()
        lent = self.lend_idle(site)
        if lent is None:
            lent = await self._wait_turn(timeout, site, now)
        return lent[1]

    async def _wait_turn(
        self, timeout: float | None, site: Site, started: float
    ) -> tuple[Entry[C], C]:
        """An acquire that found nothing to lend at ``started``: wait in line, then take the
        connection handed over. Every other case (nothing may wait, a check or a connect is
        due, the wait ended without a connection or was interrupted) is the acquire
        procedure's, which takes over from the wait; only the common contended acquire, a
        wait and a hand-off, runs here without one."""
        state = self._state
        if timeout != 0 and self._opened and not state.reclaim:
            assert self._loop is not None
            deadline = None if timeout is None else started + timeout
            # Callers waiting with the pool's one acquire_timeout (the common case) queue in
            # deadline order, so the queue keeps their deadlines (see Waiter.deadline): no
            # record per wait, and the shared timer is re-armed only for an earlier deadline.
            in_order = timeout == self._default_timeout
            waiter = _FutureWaiter(self._loop.create_future(), deadline if in_order else None)
            if state.queue(started, waiter):
                if state.may_need_kick():
                    self.kick()
                if deadline is not None:
                    if not in_order:
                        self._watch(waiter.future, deadline)
                    # (_arm_by, inlined: this is the contended acquire's only deadline work)
                    elif self._deadline_timer is None or deadline < self._deadline_timer_at:
                        self._arm_deadlines(deadline)
                try:
                    woken = await waiter.future
                except BaseException as exc:
                    # The procedure withdraws the waiter, or passes on what it was handed.
                    flow = self.acquire_flow(timeout, site, waiter, started)
                    _advance(flow, None, None)
                    op, pending = _advance(flow, None, exc)
                    return await self._drive(flow, op, pending)
                if woken and waiter.error is None:
                    lent = self.take_handed(waiter, started, site)
                    if lent is not None:
                        return lent
                return await self._drive(self.acquire_flow(timeout, site, waiter, started))
        return await self._drive(self._slow_acquire(timeout, site))

    def _borrower_name(self) -> str | None:
        task = asyncio.current_task()
        return task.get_name() if task is not None else None

    # ------------------------------------------------------------ executor

    async def execute(self, sql: str, *args: Any) -> Any:
        """Run one statement on a connection of its own; return the driver's status."""
        return await self._drive(self._execute("execute", (sql, args)))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        """Run one statement once per row of parameters, on one connection."""
        return await self._drive(self._execute("executemany", (sql, rows)))

    async def fetch_all(self, sql: str, *args: Any) -> list[Any]:
        """Run a query; return every row (the driver's row objects)."""
        return await self._drive(self._execute("fetch_all", (sql, args)))

    async def fetch_one(self, sql: str, *args: Any) -> Any | None:
        """Run a query; return its first row, or ``None``."""
        return await self._drive(self._execute("fetch_one", (sql, args)))

    async def fetch_value(self, sql: str, *args: Any) -> Any:
        """Run a query; return the first column of its first row, or ``None``."""
        return await self._drive(self._execute("fetch_value", (sql, args)))

    async def copy_records(
        self,
        table: str,
        records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> int:
        """Bulk-load ``records`` into ``table`` (``name`` or ``schema.name``) with
        PostgreSQL's ``COPY``, on one connection; return the number of rows copied.
        ``columns`` names the columns the records fill (default: all, in order)."""
        copied: int = await self._drive(self._execute("copy_records", (table, records, columns)))
        return copied

    def transaction(self, **options: Any) -> AsyncTransaction[C]:
        """Borrow a connection inside a transaction: ``async with pool.transaction() as
        conn:`` commits when the block succeeds and rolls back on an exception or
        cancellation. ``options`` go to the adapter (PostgreSQL: ``isolation``,
        ``readonly``, ``deferrable``; SQLite: ``mode="deferred"|"immediate"|"exclusive"``).

        Raises:
            TypeError: the pool's manager has no SQL executor.
        """
        self.executor_method("begin")
        lease: AsyncLease[C] = AsyncLease(self, self._default_timeout, self._site(1))
        return AsyncTransaction(self, options, lease)

    # ------------------------------------------------------------ the shell

    def make_waiter(self) -> Waiter:
        assert self._loop is not None
        return _FutureWaiter(self._loop.create_future())

    def spawn(self, flow: Flow[Any], what: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            flow.close()
            return
        task = loop.create_task(self._drive(flow), name=f"tidepool-{what}-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "pool %r: background task %s failed", self.name, task.get_name(), exc_info=exc
            )

    async def _drive(self, flow: Flow[T], op: Any = None, pending: Any = None) -> T:
        """Run a procedure: perform each operation it yields, send back the result or throw
        back the exception (cancellation included). ``op``/``pending`` continue a procedure
        that :func:`_advance` already started."""
        if op is None:
            op, pending = _advance(flow, None, None)
        while op is not _DONE:
            send: Any = None
            try:
                if pending is not None:  # a call that suspended: finish it within its bound
                    coro, first = pending
                    send = await self._bounded(
                        coro if first is _AWAITABLE else _Resume(coro, first), op[3]
                    )
                elif op[0] == WAIT:
                    waiter = op[1]
                    future = waiter.future
                    if op[2] is not None:
                        self._watch(future, op[2])
                    # True: handed a connection (or the error the core delivered); False:
                    # its deadline passed.
                    send = await future
                    if send and waiter.error is not None:
                        raise fresh_error(waiter.error)
                else:
                    await asyncio.sleep(op[1])
            except BaseException as exc:
                op, pending = _advance(flow, None, exc)
            else:
                op, pending = _advance(flow, send, None)
        return pending  # type: ignore[no-any-return]

    async def _bounded(self, call: Any, timeout: float | None) -> Any:
        """Await ``call`` (the rest of a manager call); raise ``TimeoutError`` if it takes
        more than ``timeout`` seconds (``None``: no bound)."""
        if timeout is None:
            return await call
        task = asyncio.current_task(self._loop)
        assert task is not None
        bound = _CallBound(task)
        deadline = monotonic() + timeout
        self._call_deadlines.push(deadline, bound, 0)
        self._arm_by(deadline)
        try:
            result = await call
        except BaseException as exc:
            if bound.end() and isinstance(exc, asyncio.CancelledError):
                raise TimeoutError from exc
            raise
        bound.end()
        return result

    def _watch(self, future: asyncio.Future[bool], deadline: float) -> None:
        """Have the shared timer end the wait on ``future`` (with ``False``) at
        ``deadline``."""
        self._deadlines.push(deadline, future, len(self._state.waiters))
        self._arm_by(deadline)

    def _arm_by(self, deadline: float) -> None:
        """Make the shared timer fire no later than ``deadline``."""
        if self._deadline_timer is None or deadline < self._deadline_timer_at:
            self._arm_deadlines(deadline)

    def _arm_deadlines(self, when: float) -> None:
        assert self._loop is not None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        # Relative to now: a custom loop's clock need not be time.monotonic().
        self._deadline_timer = self._loop.call_later(
            max(0.0, when - monotonic()), _deadline_tick, weakref.ref(self)
        )
        self._deadline_timer_at = when

    def _deadline_passed(self) -> None:
        """The shared timer fired: wake every caller whose deadline has passed (with
        ``False``: it gives up and raises ``PoolTimeout``), and cancel every manager call
        past its bound, then re-arm for the next deadline."""
        self._deadline_timer = None
        # The loop runs a timer up to its clock resolution early; never wake a caller early.
        now = monotonic() + 1e-6
        for waiter in self._state.overdue(now):
            future = waiter.future  # type: ignore[attr-defined]
            if not future.done():  # (cancelled, not yet withdrawn)
                future.set_result(False)
        for future in self._deadlines.pop_due(now):
            future.set_result(False)
        for bound in self._call_deadlines.pop_due(now):
            bound.expire()
        self._rearm_deadlines()

    def _rearm_deadlines(self) -> None:
        """Arm the shared timer for the earliest deadline left, if any."""
        deadlines = (
            self._state.next_deadline(),
            self._deadlines.earliest(),
            self._call_deadlines.earliest(),
        )
        earliest = min((t for t in deadlines if t is not None), default=None)
        if earliest is not None and self._loop is not None and not self._loop.is_closed():
            self._arm_deadlines(earliest)

    def _disarm_deadlines(self) -> None:
        """Forget the queued callers' deadlines (the pool is closed: none is queued) and stop
        the timer; a closing pool re-arms it for the manager calls still running."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()


def _maintenance_tick(ref: weakref.ref[AsyncPool[Any]]) -> None:
    pool = ref()
    if pool is None or pool._state.closed or pool._loop is None:
        return
    try:
        pool.maintain()
    except Exception:
        log.exception("pool %r: maintenance failed", pool.name)
    pool._schedule_maintenance(pool._loop, ref)


async def _rollback_quietly(rollback: Any, conn: Any, name: str) -> None:
    # The original error matters more; if this rollback fails, the reset on release rolls
    # back again or closes the connection, so nothing dirty is lent.
    try:
        await rollback(conn)
    except Exception as exc:
        log.info("pool %r: rollback after an error failed: %r", name, exc)
