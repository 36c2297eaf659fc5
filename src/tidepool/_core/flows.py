"""The pool's procedures, written once for both shells.

Each procedure is a generator that drives :class:`~tidepool._core.state.PoolState` and *yields*
every operation that may block: wait for a hand-off, call the manager, sleep. ``AsyncPool``
performs those with asyncio, ``Pool`` with threads; the procedures themselves never block, so
the logic of acquiring, releasing, connecting and closing exists exactly once. A shell sends
back each operation's result, or throws its exception (including cancellation) into the
generator at the ``yield``, where the procedure restores the pool's accounting.

Operations (plain tuples, cheap on the hot path):

``(WAIT, waiter, deadline)``
    Block until the core wakes ``waiter`` or the monotonic ``deadline`` (``None``: never)
    passes. Result: ``True`` if woken, ``False`` at the deadline. If the core delivered an
    error (``waiter.error``), the shell raises it instead.
``(CALL, fn, args, timeout)``
    Call ``fn(*args)``; await the result if it is awaitable, bounded by ``timeout`` seconds
    (``TimeoutError``) in the async shell. Result: its return value.
``(SLEEP, seconds)``
    Sleep.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, TypeVar

from ..errors import ConnectError
from .backoff import Backoff
from .entry import Entry, Site, Where
from .state import BROKEN, GONE, RESET, PoolState
from .waiter import Waiter

__all__ = ["CALL", "SLEEP", "WAIT", "Flow", "Flows", "Op"]

C = TypeVar("C")
T = TypeVar("T")

WAIT = 0
CALL = 1
SLEEP = 2
Op = tuple[Any, ...]
Flow = Generator[Op, Any, T]

log = logging.getLogger("tidepool.pool")
monotonic = time.monotonic


class Flows(Generic[C]):
    """The procedures of one pool. A shell subclasses this and supplies :meth:`spawn` and
    :meth:`make_waiter`; everything else here is shared."""

    _state: PoolState[C]
    _connect_timeout: float
    _reset_enabled: bool
    _on_connect: Callable[[Any], Any] | None
    _listeners: Sequence[Any]
    _slow_acquire_after: float | None  # the slow_acquire option
    _observed = False  # see refresh_observed()

    # Set by the shell: the manager's bound methods.
    _m_connect: Callable[[], Any]
    _m_check: Callable[[C], Any]
    _m_reset: Callable[[C], Any]
    _m_close: Callable[[C], Any]
    _m_is_broken: Callable[[C], bool]
    _m_is_disconnect: Callable[[C, BaseException | None], bool] | None
    _m_remember_session: Callable[[C], Any] | None
    _m_needs_reset: Callable[[C], bool] | None

    # ------------------------------------------------------------ shell hooks

    def spawn(self, flow: Flow[Any], what: str) -> None:
        """Run ``flow`` in the background (a task, a thread)."""
        raise NotImplementedError

    def make_waiter(self) -> Waiter:
        """A new waiter the shell knows how to block on."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared, non-blocking

    def kick(self) -> None:
        """Start the background work the state now needs: close retired connections, start
        connect workers. Called after every state change that may need it (the hot paths
        first ask :meth:`PoolState.may_need_kick`)."""
        state = self._state
        if state.retired:
            for entry in state.take_retired():
                self.spawn(self._close_flow(entry), "close")
        # Cheap, racy pre-check (no waiter, and min_size met) before the locked decision;
        # whoever changes the state next kicks again.
        if (state.waiters or state.size < state.limits.min_size) and state.wants_worker():
            while state.begin_worker():
                self.spawn(self._connect_flow(), "connect")

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event`` on every listener; a failing listener is logged, never raised."""
        name = self._state.name
        for listener in self._listeners:
            try:
                getattr(listener, event)(name, *args)
            except Exception:
                log.exception("pool %r: listener %r failed in %s", name, listener, event)

    # ------------------------------------------------------------ acquire

    def acquire_flow(
        self,
        timeout: float | None,
        site: Site,
        queued: Waiter | None = None,
        started: float | None = None,
    ) -> Flow[tuple[Entry[C], C]]:
        """Lend a connection within ``timeout`` seconds (one deadline over waiting,
        connecting and checking), or raise ``PoolTimeout`` / ``PoolClosed`` /
        ``TooManyWaiters`` / ``ConnectError``.

        ``queued``: a waiter the shell already put in line with :meth:`PoolState.queue`
        at ``started`` (and kicked, and whose deadline it watches): the procedure takes over
        from its wait, which is over or ends at once, or is interrupted by the exception
        the shell throws in."""
        state = self._state
        if started is None:
            started = monotonic()
        now = started
        deadline = None if timeout is None else now + timeout
        while True:
            watch = deadline
            if queued is not None:
                got: Entry[C] | Waiter | None = queued
                queued = watch = None
            else:
                got = state.lend_or_enqueue(now, self.make_waiter, may_wait=timeout != 0)
                if isinstance(got, Waiter) and state.may_need_kick():
                    self.kick()
            if isinstance(got, Waiter):
                try:
                    woken = yield (WAIT, got, watch)
                except BaseException:
                    # Cancelled (or the core delivered an error): if a connection was handed
                    # to us in the meantime it is ours, so pass it on before leaving.
                    handed = state.withdraw(got)
                    if handed is not None:
                        state.give_back(handed, monotonic(), reusable=True)
                        self.kick()
                    raise
                handed = got.entry if woken else state.withdraw(got)
                if handed is None:
                    raise self._timed_out(got, timeout, None)
                entry = handed
            elif got is None:
                self.kick()
                raise self._timed_out(None, timeout, "wait")
            else:
                entry = got
            now = monotonic()
            if state.needs_check(entry, now):
                conn = entry.conn
                try:
                    budget = self._connect_timeout
                    if deadline is not None:
                        budget = min(budget, max(deadline - now, 0.0))
                    yield (CALL, self._m_check, (conn,), budget)
                except BaseException as exc:
                    state.discard(entry, check_failed=isinstance(exc, Exception))
                    if isinstance(exc, Exception):
                        self._note_disconnect(entry, conn, exc)
                    self.kick()
                    if not isinstance(exc, Exception):
                        raise
                    log.info(
                        "pool %r: check failed, closing connection #%d: %r",
                        state.name,
                        entry.id,
                        exc,
                    )
                    if self._listeners:
                        self.emit("on_check_failed", entry.id, exc)
                    now = monotonic()
                    if deadline is not None and now >= deadline:
                        raise self._timed_out(None, timeout, "check") from exc
                    continue
                now = monotonic()
            return self._finish_lend(entry, now, started, site)

    def take_handed(self, waiter: Waiter, started: float, site: Site) -> tuple[Entry[C], C] | None:
        """The end of a wait that was handed a connection (woken with ``True``, no error):
        lend it, unless the ``check`` policy wants it checked first (``None``: continue with
        :meth:`acquire_flow` from the wait)."""
        entry = waiter.entry
        assert entry is not None
        now = monotonic()
        if self._state.needs_check(entry, now):
            return None
        return self._finish_lend(entry, now, started, site)

    def _finish_lend(
        self, entry: Entry[C], now: float, started: float, site: Site
    ) -> tuple[Entry[C], C]:
        conn = self._state.lend(entry, now, site)
        waited = now - started
        if self._observed:
            self._note_acquired(entry, waited)
        if self._slow_acquire_after is not None and waited >= self._slow_acquire_after:
            self._note_slow_acquire(entry, waited)
        return entry, conn

    def lend_idle(self, site: Site) -> tuple[Entry[C], C] | None:
        """The fast path of acquire: an idle connection needing no I/O, or ``None``."""
        lent = self._state.try_lend(monotonic(), site)
        if lent is not None and self._observed:
            self._note_acquired(lent[0], 0.0)
        return lent

    def refresh_observed(self) -> None:
        """Re-read whether anyone watches per-acquire events (listeners, or the logger at
        DEBUG): cached because asking the logger on every acquire and release costs more than
        the rest of a checkout. Refreshed on every maintenance tick."""
        self._observed = bool(self._listeners) or log.isEnabledFor(logging.DEBUG)

    # A saturated pool makes every acquire slow: one WARNING per interval says so, with how
    # many more there were, instead of one per acquire flooding the log.
    slow_log_interval = 10.0
    _slow_logged_at = -math.inf
    _slow_unlogged = 0

    def _note_slow_acquire(self, entry: Entry[C], waited: float) -> None:
        now = monotonic()
        if now - self._slow_logged_at < self.slow_log_interval:
            self._slow_unlogged += 1  # (racy across threads: only a count in a log line)
            return
        unlogged, self._slow_unlogged, self._slow_logged_at = self._slow_unlogged, 0, now
        state = self._state
        log.warning(
            "pool %r: acquiring connection #%d took %.3f s (slow_acquire=%s s); now %s. The "
            "pool is saturated (raise max_size, or hold connections for less time) or "
            "connecting is slow%s",
            state.name,
            entry.id,
            waited,
            self._slow_acquire_after,
            state.counts(),
            f" ({unlogged} more slow acquires in the last {self.slow_log_interval:.0f} s)"
            if unlogged
            else "",
        )

    def _note_acquired(self, entry: Entry[C], waited: float) -> None:
        log.debug("pool %r: lent connection #%d after %.6f s", self._state.name, entry.id, waited)
        if self._listeners:
            self.emit("on_acquire", entry.id, waited)

    def _timed_out(self, waiter: Waiter | None, timeout: float | None, phase: Any) -> Exception:
        error = self._state.timeout_error(waiter, timeout, phase)
        log.debug("pool %r: %s", self._state.name, error)
        if self._listeners:
            self.emit("on_timeout", error.phase)
        return error

    # ------------------------------------------------------------ release

    def release_flow(self, entry: Entry[C], conn: C, discard: bool = False) -> Flow[None]:
        """Take ``conn`` back: reset it (bounded) and hand it on, or close it when it is
        broken, cannot be reset, or the reset was interrupted. ``discard``: the borrower
        says it must not be lent again (closed as "discarded", no reset)."""
        if self.release_start(entry, conn, discard):
            yield from self.reset_flow(entry, conn)

    def release_start(self, entry: Entry[C], conn: C, discard: bool = False) -> bool:
        """The part of a release that needs no I/O, and all of it when no reset is due:
        returns ``True`` when ``conn`` must now be reset with :meth:`reset_flow` (the shells
        call this directly, so a release without a reset runs no procedure at all)."""
        state = self._state
        if self._observed and entry.where is Where.LENT:
            used = monotonic() - entry.lent_since
            log.debug("pool %r: connection #%d back after %.6f s", state.name, entry.id, used)
            if self._listeners:
                self.emit("on_release", entry.id, used)
        reset = self._reset_enabled
        if reset and not discard and self._m_needs_reset is not None:
            reset = self._needs_reset(conn)
        outcome = state.put_back(entry, conn, monotonic(), reset=reset, discard=discard)
        if outcome == RESET:
            return True
        if outcome == BROKEN:
            # Not a disconnect unless the connection really is broken: a healthy connection
            # the borrower discarded says nothing about the others.
            self._note_disconnect(entry, conn, None)
        if outcome != GONE and state.may_need_kick():
            self.kick()
        return False

    def _needs_reset(self, conn: C) -> bool:
        """The manager's ``needs_reset``: whether the reset has anything to do (``True`` when
        it cannot tell)."""
        assert self._m_needs_reset is not None
        try:
            return bool(self._m_needs_reset(conn))
        except Exception:
            log.exception("pool %r: needs_reset() failed; resetting", self._state.name)
            return True

    def reset_flow(self, entry: Entry[C], conn: C) -> Flow[None]:
        """Reset a connection :meth:`release_start` took back (bounded by
        ``connect_timeout``), then hand it on; close it if the reset fails or is
        interrupted."""
        state = self._state
        try:
            yield (CALL, self._m_reset, (conn,), self._connect_timeout)
        except BaseException as exc:
            state.discard(entry, reset_failed=isinstance(exc, Exception))
            if isinstance(exc, Exception):
                self._note_disconnect(entry, conn, exc)
            self.kick()
            if not isinstance(exc, Exception):
                raise
            log.warning(
                "pool %r: reset failed, closing connection #%d: %r", state.name, entry.id, exc
            )
            if self._listeners:
                self.emit("on_reset_failed", entry.id, exc)
            return
        state.give_back(entry, monotonic(), reusable=True)
        if state.may_need_kick():
            self.kick()

    def _note_disconnect(self, entry: Entry[C], conn: Any, error: BaseException | None) -> None:
        """If the manager says ``conn`` was lost to a server-side disconnect, retire every
        connection created before it: after a restart they are all dead, and finding that
        out one failed request at a time is what this avoids."""
        is_disconnect = self._m_is_disconnect
        if is_disconnect is None:
            return
        try:
            lost = is_disconnect(conn, error)
        except Exception:
            log.exception("pool %r: is_disconnect() failed", self._state.name)
            return
        if lost:
            retired = self._state.invalidate_older(monotonic())
            log.info(
                "pool %r: connection #%d was lost to a disconnect; retiring %d older idle "
                "connection(s) now and older lent ones on return",
                self._state.name,
                entry.id,
                retired,
            )

    # ------------------------------------------------------------ executor

    def execute_flow(
        self, method: str, args: tuple[Any, ...], timeout: float | None, site: Site
    ) -> Flow[Any]:
        """One checkout for one executor call: lend, run the adapter's ``method(conn,
        *args)`` (not bounded by the pool: the driver's own timeouts apply), give back."""
        fn = self.executor_method(method)
        lent = self.lend_idle(site)
        if lent is None:
            lent = yield from self.acquire_flow(timeout, site)
        entry, conn = lent
        try:
            result = yield (CALL, fn, (conn, *args), None)
        finally:
            yield from self.release_flow(entry, conn)
        return result

    def executor_method(self, method: str) -> Callable[..., Any]:
        """The adapter's executor glue ``method``, or a ``TypeError`` saying there is none."""
        raise NotImplementedError

    # ------------------------------------------------------------ connect

    def _connect_flow(self) -> Flow[None]:
        """A connect worker: opens connections while the state wants them, one at a time,
        backing off after transient failures; stops on a permanent one."""
        state = self._state
        backoff = Backoff(rng=state.rng)
        claimed_exit = False
        try:
            while True:
                generation = state.claim_connect()
                if generation is None:
                    claimed_exit = True  # the claim itself ended this worker
                    return
                started = monotonic()
                conn: Any = None
                try:
                    conn = yield (CALL, self._m_connect, (), self._connect_timeout)
                    if conn is None:
                        raise ConnectError(
                            f"pool {state.name!r}: the manager's connect() returned None; "
                            "it must return a connection"
                        )
                    if self._on_connect is not None:
                        yield (CALL, self._on_connect, (conn,), self._connect_timeout)
                        if self._m_remember_session is not None:
                            # The reset must bring borrowers back to this, not to a bare
                            # session (on_connect's settings would be lost at first return).
                            yield (CALL, self._m_remember_session, (conn,), self._connect_timeout)
                except BaseException as exc:
                    permanent = isinstance(exc, ConnectError)
                    state.connect_failed(exc, monotonic(), permanent=permanent)
                    if conn is not None:  # on_connect failed: the connection is half set up
                        self.spawn(self._close_raw_flow(conn), "close")
                    if not isinstance(exc, Exception):
                        raise
                    self._log_connect_error(exc, permanent, backoff.failures)
                    if permanent:
                        return
                    yield (SLEEP, backoff.next_delay())
                    continue
                now = monotonic()
                entry = state.connect_succeeded(conn, now, generation)
                backoff.reset()
                log.debug(
                    "pool %r: opened connection #%d in %.3f s", state.name, entry.id, now - started
                )
                if self._listeners:
                    self.emit("on_connect", entry.id, now - started)
                self.kick()
        finally:
            if not claimed_exit:
                state.end_worker()
                self.kick()

    def _log_connect_error(self, exc: BaseException, permanent: bool, streak: int) -> None:
        # The first failure of a streak is a WARNING; its retries are DEBUG, so an outage
        # does not flood the log.
        kind = "permanent" if permanent else "transient, will retry"
        level = logging.WARNING if permanent or streak == 0 else logging.DEBUG
        log.log(
            level,
            "pool %r: connect failed (%s): %s: %s",
            self._state.name,
            kind,
            type(exc).__name__,
            exc,
        )
        if self._listeners:
            self.emit("on_connect_failed", exc)

    # ------------------------------------------------------------ close

    def _close_flow(self, entry: Entry[C]) -> Flow[None]:
        """Close one retired connection (bounded), then account for it."""
        conn = entry.conn
        try:
            if conn is not None:
                yield (CALL, self._m_close, (conn,), self._connect_timeout)
        except Exception as exc:
            log.info("pool %r: closing connection #%d failed: %r", self._state.name, entry.id, exc)
        finally:
            self._state.close_done(entry)
            log.debug(
                "pool %r: closed connection #%d (%s)", self._state.name, entry.id, entry.reason
            )
            if self._listeners:
                self.emit("on_close", entry.id, entry.reason)

    def _close_raw_flow(self, conn: C) -> Flow[None]:
        """Close a connection the pool never counted (its setup failed)."""
        try:
            yield (CALL, self._m_close, (conn,), self._connect_timeout)
        except Exception as exc:
            log.info("pool %r: closing a half-opened connection failed: %r", self._state.name, exc)

    def shutdown_flow(self, timeout: float) -> Flow[None]:
        """Graceful close: refuse new acquires, wake waiters with ``PoolClosed``, close idle
        connections, wait up to ``timeout`` for lent ones to come back (they are closed as
        they do), then close the rest under their borrowers."""
        state = self._state
        state.close()
        self.kick()
        drained = self.make_waiter()
        state.add_drain_waiter(drained)
        if (yield (WAIT, drained, monotonic() + timeout)):
            return
        forced = state.take_lent()
        if forced:
            log.warning(
                "pool %r: %d connection(s) still lent after %.1f s; closing them",
                state.name,
                len(forced),
                timeout,
            )
        for entry, conn in forced:
            entry.reason = "forced"
            if conn is not None:
                try:
                    yield (CALL, self._m_close, (conn,), self._connect_timeout)
                except Exception as exc:
                    log.info(
                        "pool %r: closing lent connection #%d failed: %r", state.name, entry.id, exc
                    )
            if self._listeners:
                self.emit("on_close", entry.id, "forced")

    # ------------------------------------------------------------ open

    def open_flow(self, timeout: float | None) -> Flow[None]:
        """Eager open: fill to ``min_size`` (at least one connection, to verify the target)
        within ``timeout``, retrying transient failures; then hand them back. An
        ``acquire_timeout`` of 0 ("never wait") gives opening ``connect_timeout`` instead."""
        if timeout == 0:
            timeout = self._connect_timeout
        wanted = max(1, self._state.limits.min_size)
        deadline = None if timeout is None else monotonic() + timeout
        held: list[tuple[Entry[C], C]] = []
        try:
            for _ in range(wanted):
                left = None if deadline is None else max(deadline - monotonic(), 0.0)
                held.append((yield from self.acquire_flow(left if left != 0 else 1e-9, None)))
        finally:
            for entry, conn in held:
                yield from self.release_flow(entry, conn)
