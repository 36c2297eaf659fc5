"""The pool's state and every decision about it, with no I/O.

:class:`PoolState` owns the idle list, the FIFO of waiters, the slot counts and the counters.
Each public method is one atomic step under the state's own lock (a plain ``threading.Lock``:
uncontended it costs less than a no-op Python context manager, so the async shell uses it too).
The steps of every checkout (``try_lend``, ``queue``, ``lend``, ``put_back``) take it with
``acquire()`` / ``release()`` rather than ``with``: compiled by mypyc, a ``with`` looks up
``__enter__`` and ``__exit__`` on the lock's type and calls ``__exit__`` with three arguments
each time, about 1,100 of the 62,000 instructions of a contended checkout.
Methods never call out while holding the lock except :meth:`Waiter.wake`, which only sets a
future or releases a lock.

Accounting (checked by the tests after every step)::

    size == idle + in_use + connecting        in_use = lent + busy (checking / resetting)
    size <= max_size                          except transiently after resize() shrinks it
    waiting == len(waiters)                   every queued waiter is live or about to leave
"""

from __future__ import annotations

import random
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from ..errors import PoolClosed, PoolTimeout, TimeoutPhase, TooManyWaiters
from .entry import Entry, Site, Where
from .stats import PoolStats
from .waiter import Waiter, WaiterQueue

__all__ = ["BACK", "BROKEN", "GONE", "RESET", "Limits", "PoolState"]

C = TypeVar("C")

# What put_back() tells the caller to do next (see there).
BACK: Final = 0
RESET: Final = 1
BROKEN: Final = 2
GONE: Final = 3

LIFETIME_JITTER = 0.05  # retire up to 5 % early so connections born together do not die together


class Limits:
    """The numbers the state decides by (a mutable copy: ``resize()`` changes sizes)."""

    __slots__ = (
        "check",
        "check_idle_after",
        "idle_timeout",
        "leak_timeout",
        "max_connecting",
        "max_lifetime",
        "max_size",
        "max_waiting",
        "min_size",
    )

    def __init__(
        self,
        *,
        max_size: int,
        min_size: int,
        max_waiting: int | None,
        max_connecting: int,
        max_lifetime: float | None,
        idle_timeout: float | None,
        check: str,
        check_idle_after: float,
        leak_timeout: float | None,
    ) -> None:
        self.max_size = max_size
        self.min_size = min_size
        self.max_waiting = max_waiting
        self.max_connecting = max_connecting
        self.max_lifetime = max_lifetime
        self.idle_timeout = idle_timeout
        self.check = check
        self.check_idle_after = check_idle_after
        self.leak_timeout = leak_timeout


class PoolState(Generic[C]):
    """Slots, idle list, waiters and counters of one pool; see the module docstring."""

    def __init__(
        self,
        name: str,
        limits: Limits,
        *,
        rng: random.Random | None = None,
        is_broken: Callable[[Any], bool] | None = None,
    ) -> None:
        self.name = name
        # The manager's is_broken (cheap, no I/O by contract): an idle connection the driver
        # already knows is dead (the server closed it) is retired instead of lent.
        self.is_broken = is_broken
        self.limits = limits
        self.lock = threading.Lock()
        self.rng = rng or random.Random()
        self.idle: deque[Entry[C]] = deque()  # right end = most recently returned (LIFO)
        self.waiters = WaiterQueue()
        self.lent: dict[int, Entry[C]] = {}  # id(conn) -> entry, for release(conn)
        self.size = 0
        self.connecting = 0
        self.workers = 0  # connect workers alive (each runs one attempt at a time)
        self.closing = 0  # retired, close not yet finished
        self.generation = 0
        # Connections created no later than this are suspect (a disconnect was detected then):
        # retired when next seen, like an old generation.
        self.stale_before = float("-inf")
        self.closed = False
        self.retired: list[Entry[C]] = []  # to be closed by the shell
        self.reclaim: deque[Entry[Any]] = deque()  # filled by weak-reference callbacks
        self.drain_waiters: list[Waiter] = []
        # After a permanent connect error, background fill to min_size pauses until the next
        # maintenance tick, so a wrong password is not retried in a hot loop.
        self.fill_paused = False
        self.last_connect_error: BaseException | None = None
        self.last_connect_error_at = 0.0
        self._next_id = 0
        self._weakrefable: bool | None = None
        # counters
        self.acquired = 0
        self.waited = 0
        self.timeouts = 0
        self.connects = 0
        self.connect_errors = 0
        self.closed_count = 0
        self.check_failures = 0
        self.reset_failures = 0
        self.reclaimed = 0

    # ----------------------------------------------------------------- acquire

    def try_lend(self, now: float, site: Site) -> tuple[Entry[C], C] | None:
        """Lend an idle connection that needs no check, or return ``None`` (the fast path).

        Never queues, never connects. Expired idle connections met on the way are retired.
        """
        self.lock.acquire()
        try:
            idle = self.idle
            while idle:
                entry = idle[-1]
                if self._expired(entry, now):
                    idle.pop()
                    self._retire(entry, self._expiry_reason(entry))
                    continue
                if self._broken(entry):
                    idle.pop()
                    self.check_failures += 1  # a liveness check at lend, without I/O
                    self._retire(entry, "broken")
                    continue
                check = self.limits.check
                if check != "never" and (
                    check == "always" or now - entry.idle_since > self.limits.check_idle_after
                ):
                    return None
                idle.pop()
                return entry, self._lend(entry, now, site)
            return None
        finally:
            self.lock.release()

    def lend_or_enqueue(
        self, now: float, make_waiter: Callable[[], Waiter], *, may_wait: bool
    ) -> Entry[C] | Waiter | None:
        """Take an idle connection (the caller checks it if :meth:`needs_check`), else queue.

        Returns the entry (now ``BUSY``), a new queued :class:`Waiter`, or ``None`` when
        nothing is idle and ``may_wait`` is false.

        Raises:
            PoolClosed: the pool is closed.
            TooManyWaiters: ``max_waiting`` live callers are already queued.
        """
        with self.lock:
            self._check_open()
            idle = self.idle
            while idle:
                entry = idle.pop()
                if self._expired(entry, now):
                    self._retire(entry, self._expiry_reason(entry))
                    continue
                if self._broken(entry):
                    self.check_failures += 1  # a liveness check at lend, without I/O
                    self._retire(entry, "broken")
                    continue
                entry.where = Where.BUSY
                return entry
            if not may_wait:
                return None
            self._check_room()
            waiter = make_waiter()
            self._enqueue(now, waiter)
            return waiter

    def queue(self, now: float, waiter: Waiter) -> bool:
        """Queue ``waiter`` if nothing is idle: the contended acquire of a shell that has just
        found nothing to lend with :meth:`try_lend`, without building a procedure. ``False``
        (nothing queued): an idle connection is there, due for a check or to retire, and
        :meth:`lend_or_enqueue` must deal with it.

        Raises:
            PoolClosed: the pool is closed.
            TooManyWaiters: ``max_waiting`` live callers are already queued.
        """
        self.lock.acquire()
        try:
            self._check_open()
            if self.idle:
                return False
            self._check_room()
            self._enqueue(now, waiter)
            return True
        finally:
            self.lock.release()

    def overdue(self, now: float) -> list[Waiter]:
        """The queued waiters whose in-order ``deadline`` (see :class:`Waiter`) is ``<= now``,
        oldest first. Each leaves the in-order set (its ``deadline`` becomes ``None``), so it
        is reported once; it stays queued until its caller withdraws it. Waiters without an
        in-order deadline are passed over: their deadlines, if any, are kept elsewhere."""
        due: list[Waiter] = []
        with self.lock:
            for waiter in self.waiters:
                deadline = waiter.deadline
                if deadline is None:
                    continue
                if deadline > now:
                    break
                waiter.deadline = None
                due.append(waiter)
        return due

    def next_deadline(self) -> float | None:
        """The earliest in-order deadline of a queued waiter (see :class:`Waiter`), or
        ``None``."""
        with self.lock:
            for waiter in self.waiters:
                if waiter.deadline is not None:
                    return waiter.deadline
        return None

    def _check_open(self) -> None:
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")

    def _check_room(self) -> None:
        max_waiting = self.limits.max_waiting
        if max_waiting is not None and len(self.waiters) >= max_waiting:
            raise TooManyWaiters(
                f"pool {self.name!r} already has {len(self.waiters)} callers waiting "
                f"(max_waiting={max_waiting}); {self._counts()}"
            )

    def _enqueue(self, now: float, waiter: Waiter) -> None:
        waiter.enqueued_at = now
        self.waiters[waiter] = None
        self.waited += 1

    def _broken(self, entry: Entry[C]) -> bool:
        is_broken = self.is_broken
        if is_broken is None:
            return False
        try:
            return bool(is_broken(entry.conn))
        except Exception:  # a manager that cannot tell: do not lend what it cannot vouch for
            return True

    def needs_check(self, entry: Entry[C], now: float) -> bool:
        """Whether the ``check`` policy wants a round trip before lending ``entry``."""
        check = self.limits.check
        if check == "idle":
            return now - entry.idle_since > self.limits.check_idle_after
        return check == "always"

    def lend(self, entry: Entry[C], now: float, site: Site) -> C:
        """Hand a ``BUSY`` entry (checked, or fresh from a waiter) to its borrower."""
        self.lock.acquire()
        try:
            return self._lend(entry, now, site)
        finally:
            self.lock.release()

    def _lend(self, entry: Entry[C], now: float, site: Site) -> C:
        conn = entry.conn
        assert conn is not None
        entry.where = Where.LENT
        entry.lent_since = now
        entry.site = site
        entry.leak_reported = False
        weak = self._weakrefable
        if weak is None:
            try:
                weakref.ref(conn)
                weak = self._weakrefable = True
            except TypeError:
                weak = self._weakrefable = False
        if weak:
            entry.ref = weakref.ref(conn, entry)
            entry.conn = None
        self.lent[id(conn)] = entry
        self.acquired += 1
        return conn

    def withdraw(self, waiter: Waiter) -> Entry[C] | None:
        """The waiter gave up (deadline, cancellation). Return what it was handed meanwhile,
        if anything: the caller now owns that entry and must use it or give it back."""
        with self.lock:
            if self.waiters.remove(waiter):
                return None
            entry = waiter.entry
            waiter.entry = None
            return entry

    def timeout_error(
        self, waiter: Waiter | None, timeout: float | None, phase: TimeoutPhase | None = None
    ) -> PoolTimeout:
        """Count a timeout and build its error; the last connect error, if it happened while
        this caller waited, becomes ``__cause__``."""
        with self.lock:
            self.timeouts += 1
            since = waiter.enqueued_at if waiter is not None else float("inf")
            cause = self.last_connect_error if self.last_connect_error_at >= since else None
            if phase is None:
                starved = (
                    cause is not None or self.connecting > 0 or self.size < self.limits.max_size
                )
                phase = "connect" if starved else "wait"
            counts = self._counts()
        limit = "without waiting (timeout=0)" if timeout == 0 else f"within {timeout:.2f} s"
        why = {
            "wait": "every connection stayed in use",
            "connect": "no new connection could be opened in time",
            "check": "the liveness check of a connection did not finish in time",
        }[phase]
        message = f"pool {self.name!r} could not lend a connection {limit}: {why} ({counts})"
        if cause is not None:
            message += f"; last connect error: {type(cause).__name__}: {cause}"
        error = PoolTimeout(message, phase=phase)
        error.__cause__ = cause
        return error

    # ----------------------------------------------------------------- release

    def find_lent(self, conn: object) -> Entry[C] | None:
        """The entry of a connection this pool lent (for ``release(conn)``), or ``None``."""
        with self.lock:
            entry = self.lent.get(id(conn))
            if entry is None or entry.live_conn() is not conn:
                return None
            return entry

    def put_back(
        self, entry: Entry[C], conn: C, now: float, *, reset: bool, discard: bool = False
    ) -> int:
        """A borrower returns ``conn``, in one atomic step. Returns what the caller does next:

        ``BACK``
            done: handed to the oldest live waiter, put in the idle list, or retired because
            the pool no longer wants it (closed, expired, over ``max_size``) or the borrower
            asked (``discard``, reason ``"discarded"``).
        ``RESET``
            ``reset`` was asked and the connection will be kept: it is ``BUSY``; reset it,
            then :meth:`give_back` it (or :meth:`discard` it if the reset fails).
        ``BROKEN``
            the manager's ``is_broken`` says it is dead: retired (the caller may treat it as a
            disconnect).
        ``GONE``
            the pool no longer counts this entry (hard-closed by ``close()``, inherited across
            fork, or released twice): the caller must drop the connection.
        """
        self.lock.acquire()
        try:
            lent = self.lent
            key = id(conn)
            if entry.where is not Where.LENT or lent.get(key) is not entry:
                return GONE
            del lent[key]
            entry.conn = conn
            entry.ref = None
            broken = self._broken(entry)
            if broken or discard:
                self._retire(entry, "discarded" if discard else "broken")
                return BROKEN if broken else BACK
            if not self.keeps(entry, now):
                self._retire(entry, self._unkept_reason(entry))
            elif reset:
                entry.where = Where.BUSY
                return RESET
            else:
                self._put_idle(entry, now)
            return BACK
        finally:
            self.lock.release()

    def keeps(self, entry: Entry[C], now: float) -> bool:
        """Whether ``entry`` would go back to the pool now (so a reset is worth doing)."""
        return not (self.closed or self._expired(entry, now) or self.size > self.limits.max_size)

    def _expired(self, entry: Entry[C], now: float) -> bool:
        """Whether ``entry`` must not be lent again: an old generation (``expire()``), past
        its lifetime (within the age budget of :meth:`_may_age_out`), or created before a
        detected disconnect."""
        return (
            entry.generation != self.generation
            or (entry.expires is not None and entry.expires <= now and self._may_age_out())
            or entry.created <= self.stale_before
        )

    def _may_age_out(self) -> bool:
        """Whether a connection past its lifetime may retire now. Connections born together
        expire together (jitter only spreads them over 5 % of the lifetime, which can be less
        than a maintenance tick), so retirement by age keeps the pool within
        ``max_connecting`` of ``min_size``; the rest serve a little longer while replacements
        open. Retirement for a reason that matters (expire(), a disconnect) is immediate."""
        return self.size > self.limits.min_size - self.limits.max_connecting

    def give_back(self, entry: Entry[C], now: float, *, reusable: bool) -> None:
        """A ``BUSY`` entry is done (reset, or failed): hand it to the oldest live waiter, put
        it in the idle list, or retire it (broken, expired, closed, or over ``max_size``)."""
        with self.lock:
            if not reusable:
                self._retire(entry, "broken")
            elif not self.keeps(entry, now):
                self._retire(entry, self._unkept_reason(entry))
            else:
                self._put_idle(entry, now)

    def _put_idle(self, entry: Entry[C], now: float) -> None:
        entry.idle_since = now  # just reset: as good as a fresh check
        if not (self.waiters and self._hand_to_waiter(entry)):
            entry.where = Where.IDLE
            self.idle.append(entry)

    def _unkept_reason(self, entry: Entry[C]) -> str:
        if self.closed:
            return "pool closed"
        if self.size > self.limits.max_size:
            return "resized"
        return self._expiry_reason(entry)

    def discard(
        self, entry: Entry[C], *, check_failed: bool = False, reset_failed: bool = False
    ) -> None:
        """Retire a ``BUSY`` entry whose state is unknown or bad."""
        with self.lock:
            self.check_failures += check_failed
            self.reset_failures += reset_failed
            reason = (
                "check failed" if check_failed else "reset failed" if reset_failed else "broken"
            )
            self._retire(entry, reason)

    def _hand_to_waiter(self, entry: Entry[C]) -> bool:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popitem(last=False)[0]
            waiter.entry = entry
            entry.where = Where.BUSY
            if waiter.wake():
                return True
            waiter.entry = None
        return False

    def _retire(self, entry: Entry[C], reason: str) -> None:
        entry.where = Where.GONE
        entry.reason = reason
        self.size -= 1
        self.closing += 1
        self.retired.append(entry)

    def _expiry_reason(self, entry: Entry[C]) -> str:
        if entry.created <= self.stale_before:
            return "stale"
        return "expired" if entry.generation != self.generation else "lifetime"

    def take_retired(self) -> list[Entry[C]]:
        """Entries the shell must now close (each then reported with :meth:`close_done`)."""
        with self.lock:
            retired, self.retired = self.retired, []
            return retired

    def close_done(self, entry: Entry[C]) -> None:
        with self.lock:
            self.closing -= 1
            self.closed_count += 1
            entry.conn = None
            self._maybe_drained()

    # ----------------------------------------------------------------- connect

    def may_need_kick(self) -> bool:
        """Cheap, racy: whether the shell's ``kick()`` can have anything to start now
        (connections to close, or room below ``max_size`` for a connect worker). The hot
        paths ask this instead of calling ``kick()`` to find nothing."""
        return bool(self.retired) or self.size < self.limits.max_size

    def wants_worker(self) -> bool:
        """Cheap, racy pre-check for :meth:`begin_worker` (a later state change re-checks)."""
        if not self.waiters and self.size >= self.limits.min_size:
            return False
        return (
            self.workers < self.limits.max_connecting
            and self.size < self.limits.max_size
            and (
                len(self.waiters) > self.connecting
                or (self.size < self.limits.min_size and not self.fill_paused)
            )
        )

    def begin_worker(self) -> bool:
        """Start one more connect worker if the pool needs one and the cap allows."""
        with self.lock:
            if self.workers < self.limits.max_connecting and self._connect_wanted():
                self.workers += 1
                return True
            return False

    def _connect_wanted(self) -> bool:
        limits = self.limits
        return (
            not self.closed
            and self.size < limits.max_size
            and (
                len(self.waiters) > self.connecting
                or (self.size < limits.min_size and not self.fill_paused)
            )
        )

    def claim_connect(self) -> int | None:
        """A worker asks whether to open one more connection. Returns the generation to
        stamp it with, having reserved its slot; or ``None``, and the worker has ended (the
        same atomic step, so a waiter queued just after sees no phantom worker)."""
        with self.lock:
            if self._connect_wanted():
                self.size += 1
                self.connecting += 1
                return self.generation
            self.workers -= 1
            return None

    def end_worker(self) -> None:
        """A worker stops early (permanent error, cancellation)."""
        with self.lock:
            self.workers -= 1

    def connect_failed(self, error: BaseException, now: float, *, permanent: bool) -> None:
        """Release the slot of a failed attempt. A permanent error fails every waiter."""
        with self.lock:
            self.size -= 1
            self.connecting -= 1
            self.connect_errors += 1
            self.last_connect_error = error
            self.last_connect_error_at = now
            if permanent:
                self.fill_paused = True
                for waiter in self.waiters.drain():
                    waiter.error = error
                    waiter.wake()
            self._maybe_drained()

    def connect_succeeded(self, conn: C, now: float, generation: int) -> Entry[C]:
        """Account for a new connection and hand it on: oldest waiter, idle list, or retired
        (pool closed or expired meanwhile). Returns the new entry."""
        with self.lock:
            self.connecting -= 1
            self.connects += 1
            self.fill_paused = False
            self._next_id += 1
            lifetime = self.limits.max_lifetime
            expires = (
                None
                if lifetime is None
                else now + lifetime * (1.0 - LIFETIME_JITTER * self.rng.random())
            )
            entry: Entry[C] = Entry(
                conn,
                id=self._next_id,
                created=now,
                expires=expires,
                generation=generation,
                reclaim=self.reclaim,
            )
            if self.closed or generation != self.generation or self.size > self.limits.max_size:
                self._retire(entry, "pool closed" if self.closed else "expired")
            else:
                self._put_idle(entry, now)
            return entry

    # ----------------------------------------------------------------- maintenance

    def sweep(self, now: float) -> list[Entry[C]]:
        """Retire idle connections past ``idle_timeout`` (down to ``min_size``) or past their
        lifetime, and return lent entries newly past ``leak_timeout`` (to warn about)."""
        limits = self.limits
        with self.lock:
            self.fill_paused = False
            kept: deque[Entry[C]] = deque()
            idle_cut = None if limits.idle_timeout is None else now - limits.idle_timeout
            for entry in self.idle:  # oldest-returned first
                if self._expired(entry, now):
                    self._retire(entry, self._expiry_reason(entry))
                elif (
                    idle_cut is not None
                    and entry.idle_since <= idle_cut
                    and self.size > limits.min_size
                ):
                    self._retire(entry, "idle")
                else:
                    kept.append(entry)
            self.idle = kept
            leaks: list[Entry[C]] = []
            if limits.leak_timeout is not None:
                cut = now - limits.leak_timeout
                for entry in self.lent.values():
                    if not entry.leak_reported and entry.lent_since <= cut:
                        entry.leak_reported = True
                        leaks.append(entry)
            return leaks

    def collect_reclaimed(self) -> list[Entry[C]]:
        """Account for lent connections that were garbage-collected without release: each
        frees its slot (the driver's finalizer closes the connection itself)."""
        found: list[Entry[C]] = []
        reclaim = self.reclaim
        with self.lock:
            while reclaim:
                entry = reclaim.popleft()
                if entry.where is not Where.LENT:
                    continue
                for key, lent in self.lent.items():
                    if lent is entry:
                        del self.lent[key]
                        break
                entry.where = Where.GONE
                entry.ref = None
                self.size -= 1
                self.reclaimed += 1
                self.closed_count += 1
                found.append(entry)
            if found:
                self._maybe_drained()
        return found

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Refuse new acquires, fail every waiter with ``PoolClosed``, retire idle ones."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            error = PoolClosed(f"pool {self.name!r} was closed while this caller waited")
            for waiter in self.waiters.drain():
                waiter.error = error
                waiter.wake()
            while self.idle:
                self._retire(self.idle.pop(), "pool closed")
            self._maybe_drained()

    def add_drain_waiter(self, waiter: Waiter) -> None:
        """Wake ``waiter`` once nothing is open or closing (after :meth:`close`)."""
        with self.lock:
            self.drain_waiters.append(waiter)
            self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.closed and self.size == 0 and self.closing == 0 and self.drain_waiters:
            waiters, self.drain_waiters = self.drain_waiters, []
            for waiter in waiters:
                waiter.wake()

    def take_lent(self) -> list[tuple[Entry[C], C | None]]:
        """After the close grace period: stop counting every lent connection and return them
        (with the connection, if still alive) to be closed under their borrowers."""
        with self.lock:
            taken = [(entry, entry.live_conn()) for entry in self.lent.values()]
            self.lent.clear()
            for entry, _conn in taken:
                entry.where = Where.GONE
                entry.ref = None
                self.size -= 1
                self.closed_count += 1
            self._maybe_drained()
            return taken

    def invalidate_older(self, now: float) -> int:
        """A connection was lost to a server-side disconnect (restart, failover, terminated
        backend) detected at ``now``: every connection created before then is suspect. Idle
        ones are retired now; lent and busy ones when they are next lent or come back.
        Returns how many were retired now."""
        with self.lock:
            self.stale_before = max(self.stale_before, now)
            kept: deque[Entry[C]] = deque()
            retired = 0
            for idle in self.idle:
                if idle.created <= now:
                    self._retire(idle, "stale")
                    retired += 1
                else:
                    kept.append(idle)
            self.idle = kept
            return retired

    def expire(self) -> None:
        """Retire every current connection as soon as it is idle (new generation)."""
        with self.lock:
            self.generation += 1
            while self.idle:
                self._retire(self.idle.pop(), "expired")

    def resize(self, max_size: int, min_size: int) -> None:
        """Change the sizes; idle connections above the new ``max_size`` are retired now,
        lent ones when they come back."""
        with self.lock:
            self.limits.max_size = max_size
            self.limits.min_size = min_size
            while self.size > max_size and self.idle:
                self._retire(self.idle.popleft(), "resized")

    # ----------------------------------------------------------------- reading

    def snapshot(self) -> PoolStats:
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> PoolStats:
        idle = len(self.idle)
        return PoolStats(
            name=self.name,
            size=self.size,
            idle=idle,
            in_use=self.size - idle - self.connecting,
            connecting=self.connecting,
            waiting=len(self.waiters),
            max_size=self.limits.max_size,
            min_size=self.limits.min_size,
            acquired=self.acquired,
            waited=self.waited,
            timeouts=self.timeouts,
            connects=self.connects,
            connect_errors=self.connect_errors,
            closed=self.closed_count,
            check_failures=self.check_failures,
            reset_failures=self.reset_failures,
            reclaimed=self.reclaimed,
        )

    def _counts(self) -> str:
        s = self._snapshot()
        return (
            f"size={s.size}/{s.max_size}, idle={s.idle}, in_use={s.in_use}, "
            f"connecting={s.connecting}, waiting={s.waiting}"
        )

    def counts(self) -> str:
        """The live counts as one short string, for messages and ``repr()``."""
        with self.lock:
            return self._counts()
