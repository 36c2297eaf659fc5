"""What ``AsyncPool`` and ``Pool`` share besides the procedures: construction and validation,
stats, ``repr``, resizing, expiry, the maintenance tick and fork safety."""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypedDict, TypeVar

from ._churn import churn_watch
from ._config import CheckPolicy, Options, reject_unknown_options, validate_timeout
from ._core.entry import Entry, Site, site_location
from ._core.flows import Flow, Flows
from ._core.state import Limits, PoolState
from ._core.stats import PoolStats
from ._url import redact_url
from .errors import ConfigError

__all__ = ["LeaseBase", "PoolBase", "PoolOptions"]

C = TypeVar("C")
log = logging.getLogger("tidepool.pool")

_MANAGER_METHODS = ("connect", "check", "reset", "close", "is_broken")
_DEFAULT: Any = object()  # "use the pool's acquire_timeout"


class PoolOptions(TypedDict, total=False):
    """The keyword options of ``AsyncPool`` and ``Pool`` (see :class:`tidepool.Options`)."""

    max_size: int
    min_size: int
    acquire_timeout: float | None
    connect_timeout: float
    idle_timeout: float | None
    max_lifetime: float | None
    check: CheckPolicy
    check_idle_after: float
    reset: bool
    max_waiting: int | None
    max_connecting: int
    leak_timeout: float | None
    slow_acquire: float | None
    name: str | None
    on_connect: Callable[[Any], Any] | None
    connect_kwargs: Mapping[str, Any] | Callable[[], Any]
    listeners: Sequence[Any]


_live_pools: weakref.WeakSet[PoolBase[Any]] = weakref.WeakSet()
# Connections inherited across fork(): the child must neither use nor close them (closing
# would end the parent's sessions), so their states are kept here, untouched, for good.
_inherited_states: list[PoolState[Any]] = []


def _forget_pools_in_child() -> None:
    churn_watch.forget()
    for pool in list(_live_pools):
        pool._forget_after_fork()


os.register_at_fork(after_in_child=_forget_pools_in_child)


class _Sealed:
    """Holds constructor arguments without showing them in ``repr()``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<sealed pool arguments>"


def fresh_error(error: BaseException) -> BaseException:
    """A copy of ``error`` to raise in one more caller (several waiters may receive the same
    error; raising one instance in many places would chain their tracebacks together)."""
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    clone.__traceback__ = None
    return clone


class LeaseBase(Generic[C]):
    """What ``acquire()`` returns: holds the lent connection between enter and exit.

    The shells add ``__aenter__``/``__aexit__`` (``AsyncLease``) or ``__enter__``/``__exit__``
    (``Lease``); ``try_acquire()`` builds one that already holds its connection.
    """

    __slots__ = ("_conn", "_entry", "_pool", "_site", "_timeout")

    def __init__(
        self,
        pool: Any,
        timeout: float | None,
        site: Site,
        lent: tuple[Entry[C], C] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._site = site
        self._entry: Entry[C] | None = None
        self._conn: C | None = None
        if lent is not None:
            self._entry, self._conn = lent


class PoolBase(Flows[C]):
    """Shared part of the two pool shells."""

    # Which manager protocol and adapters the shell drives.
    _flavor: Literal["async", "sync"] = "async"

    def __init__(self, target: Any, /, **options: Any) -> None:
        # The target URL and the options (connect_kwargs may hold a password) must not sit in
        # any frame of a construction error's traceback, where Sentry, debuggers and
        # "traceback with locals" would show them: keep them sealed here, build in _setup,
        # and re-raise a fresh error from this frame only.
        sealed = _Sealed((target, options))
        del target, options
        error: BaseException | None = None
        try:
            self._setup(*sealed.value)
        except (ConfigError, TypeError) as exc:
            error = type(exc)(*exc.args)
        if error is not None:
            raise error
        self._init_shell()

    def _init_shell(self) -> None:
        """Set up the shell's own attributes (the shell overrides)."""

    def _setup(self, target: Any, options: Mapping[str, Any]) -> None:
        owner = type(self).__name__
        known = {k: v for k, v in options.items() if k in PoolOptions.__annotations__}
        reject_unknown_options(owner, {k: v for k, v in options.items() if k not in known})
        connect_kwargs = known.get("connect_kwargs")
        if connect_kwargs is None:
            known.pop("connect_kwargs", None)
        opts = Options(**known)
        if isinstance(target, str):
            from .adapters import resolve

            manager, default_name = resolve(target, self._flavor, opts)
        else:
            manager = target
            missing = [m for m in _MANAGER_METHODS if not callable(getattr(manager, m, None))]
            if missing:
                raise TypeError(
                    f"{owner} target must be a database URL or a manager with "
                    f"{', '.join(_MANAGER_METHODS)}; {type(manager).__name__} lacks "
                    f"{', '.join(missing)}"
                )
            self._check_manager_flavor(manager)
            if opts.connect_kwargs:
                raise ConfigError(
                    "connect_kwargs only applies to a URL target; a manager opens its own "
                    "connections (pass the keyword arguments to the manager instead)"
                )
            default_name = type(manager).__name__
        self.options = opts
        self.manager = manager
        name = opts.name or default_name
        self._state: PoolState[C] = PoolState(name, _limits(opts), is_broken=manager.is_broken)
        self._connect_timeout = opts.connect_timeout
        self._default_timeout = opts.acquire_timeout
        self._leak_watch = opts.leak_timeout is not None
        self._slow_acquire_after = opts.slow_acquire
        self._target_key = redact_url(target) if isinstance(target, str) else None
        self._reset_enabled = opts.reset
        self._on_connect = opts.on_connect
        self._listeners = opts.listeners
        self._m_connect = manager.connect
        self._m_check = manager.check
        self._m_reset = manager.reset
        self._m_close = manager.close
        self._m_is_broken = manager.is_broken
        self._m_is_disconnect = getattr(manager, "is_disconnect", None)
        self._m_remember_session = getattr(manager, "remember_session", None)
        self._m_needs_reset = getattr(manager, "needs_reset", None)
        self._opened = False
        self._pid = os.getpid()
        self.refresh_observed()
        _live_pools.add(self)

    def _check_manager_flavor(self, manager: object) -> None:
        """Refuse a sync manager in ``AsyncPool`` and the reverse (the shell overrides)."""

    @property
    def name(self) -> str:
        """The pool's name, as it appears in logs, metrics and errors."""
        return self._state.name

    # ------------------------------------------------------------ reading

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's counts and counters."""
        if self._state.reclaim:
            self._collect_reclaimed()
        return self._state.snapshot()

    def __repr__(self) -> str:
        state = getattr(self, "_state", None)
        if state is None:  # construction failed
            return f"<{type(self).__name__} (not constructed)>"
        status = "closed" if state.closed else "open" if self._opened else "not opened"
        return f"<{type(self).__name__} {state.name!r} {status} ({state.counts()})>"

    # ------------------------------------------------------------ listeners

    def add_listener(self, listener: Any) -> None:
        """Start sending this pool's events to ``listener`` (a :class:`tidepool.PoolListener`),
        as if it had been passed in ``listeners=``. Metrics exporters attach themselves this
        way. Adding the same listener twice has no effect."""
        if any(existing is listener for existing in self._listeners):
            return
        self._listeners = (*self._listeners, listener)
        self.refresh_observed()

    def remove_listener(self, listener: Any) -> None:
        """Stop sending events to ``listener``; a listener that was never added is ignored."""
        self._listeners = tuple(x for x in self._listeners if x is not listener)
        self.refresh_observed()

    # ------------------------------------------------------------ control

    def resize(self, max_size: int | None = None, min_size: int | None = None) -> None:
        """Change ``max_size`` and/or ``min_size``. Idle connections above the new
        ``max_size`` close now, lent ones as they come back; a larger pool grows on demand
        (and to ``min_size`` in the background).

        Raises:
            ConfigError, TypeError: the same checks as at construction.
        """
        limits = self._state.limits
        new = Options(
            max_size=limits.max_size if max_size is None else max_size,
            min_size=limits.min_size if min_size is None else min_size,
        )
        self._state.resize(new.max_size, new.min_size)
        log.info(
            "pool %r: resized to min_size=%d, max_size=%d", self.name, new.min_size, new.max_size
        )
        if self._opened:
            self.kick()

    def expire(self) -> None:
        """Retire every current connection as soon as it is idle (idle ones now, lent ones
        when they come back); new connections replace them on demand. Use it after a
        failover or a credential rotation."""
        self._state.expire()
        log.info("pool %r: expired every current connection", self.name)
        if self._opened:
            self.kick()

    # ------------------------------------------------------------ shared helpers

    _lease_class: type[LeaseBase[Any]]

    def acquire(self, timeout: float | None = _DEFAULT) -> LeaseBase[C]:
        """Borrow a connection: ``async with pool.acquire() as conn:`` (``AsyncPool``) or
        ``with pool.acquire() as conn:`` (``Pool``). It goes back on exit, also on an error
        or a cancellation.

        ``timeout`` overrides ``acquire_timeout`` for this call (``0``: do not wait;
        ``None``: wait forever). With ``AsyncPool``, ``conn = await pool.acquire()`` also
        works; give it back with ``await pool.release(conn)``. The errors below are raised on
        entering the block (or awaiting the lease), not by this call.

        Raises:
            PoolTimeout: nothing could be lent before the deadline.
            PoolClosed: the pool is closed.
            TooManyWaiters: ``max_waiting`` callers are already queued.
            ConnectError: a permanent connect failure.
        """
        # The hot path: no helper calls unless a timeout or leak watching was asked for.
        timeout = self._default_timeout if timeout is _DEFAULT else self._acquire_timeout(timeout)
        if self._leak_watch:
            site = self._site(1)
        else:
            frame = sys._getframe(1)
            site = (frame.f_code, frame.f_lasti, None, None)
        return self._lease_class(self, timeout, site)

    def _acquire_timeout(self, timeout: Any) -> float | None:
        """A per-call ``timeout`` (``_DEFAULT``: the pool's ``acquire_timeout``), validated."""
        if timeout is _DEFAULT:
            return self._default_timeout
        return validate_timeout("timeout", timeout, allow_none=True, allow_zero=True)

    def _site(self, depth: int) -> Site:
        frame = sys._getframe(depth + 1)
        if self.options.leak_timeout is None:
            return (frame.f_code, frame.f_lasti, None, None)
        stack = "".join(traceback.format_stack(frame))
        return (frame.f_code, frame.f_lasti, stack, self._borrower_name())

    def _borrower_name(self) -> str | None:
        """The current task's or thread's name (the shell overrides)."""
        return None

    def _maintenance_interval(self) -> float:
        o = self.options
        spans = [s for s in (o.idle_timeout, o.max_lifetime, o.leak_timeout) if s is not None]
        return max(0.01, min([1.0, *(s / 4 for s in spans)]))

    def maintain(self) -> None:
        """One maintenance tick: account for garbage-collected connections, retire idle and
        expired ones, report leaks, refill to ``min_size``."""
        state = self._state
        self.refresh_observed()
        if state.reclaim:
            self._collect_reclaimed()
        for entry in state.sweep(time.monotonic()):
            self._report_leak(entry)
        self.kick()

    def _collect_reclaimed(self) -> None:
        for entry in self._state.collect_reclaimed():
            file, line = site_location(entry.site)
            warnings.warn_explicit(
                f"pool {self.name!r}: connection #{entry.id} acquired here was "
                "garbage-collected without being released; its slot was reclaimed (release "
                "connections with 'async with pool.acquire()' / 'with pool.acquire()')",
                ResourceWarning,
                filename=file,
                lineno=line,
                module="tidepool",
            )
            if self._listeners:
                self.emit("on_close", entry.id, "reclaimed")

    def _report_leak(self, entry: Entry[C]) -> None:
        held = time.monotonic() - entry.lent_since
        file, line = site_location(entry.site)
        stack, borrower = (entry.site[2], entry.site[3]) if entry.site else (None, None)
        log.warning(
            "pool %r: connection #%d has been lent for %.1f s (leak_timeout=%s) to %s, "
            "acquired at %s:%d\n%s",
            self.name,
            entry.id,
            held,
            self.options.leak_timeout,
            borrower or "<unknown>",
            file,
            line,
            stack or "",
        )

    def _forget_after_fork(self) -> None:
        """In a forked child: drop (never use, never close) the parent's connections and
        start afresh; the shell restarts its background work lazily."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        old = self._state
        _inherited_states.append(old)
        fresh: PoolState[C] = PoolState(
            old.name, _limits(self.options, old.limits), is_broken=old.is_broken
        )
        fresh.closed = old.closed
        self._state = fresh
        self._opened = False
        self._reset_shell_after_fork()

    def _reset_shell_after_fork(self) -> None:
        """Forget background workers that did not survive fork (the shell overrides)."""

    def _start(self) -> None:
        """Open lazily: bind to the running loop, start maintenance (the shell implements)."""
        raise NotImplementedError

    def _slow_acquire(self, timeout: float | None, site: Site) -> Flow[tuple[Entry[C], C]]:
        """The acquire procedure, for when the fast path found nothing idle (the shells'
        callers have checked the event loop already)."""
        if not self._opened:
            self._start()
        if self._state.reclaim:
            self._collect_reclaimed()
        return self.acquire_flow(timeout, site)

    def _note_opened(self) -> None:
        """Called by the shell once, when the pool first opens."""
        if self._target_key is not None:
            churn_watch.note_opened(self._target_key, self.name)

    def _execute(self, method: str, args: tuple[Any, ...]) -> Flow[Any]:
        """The procedure behind ``pool.fetch_all(...)`` etc., called by the shell's method."""
        self._start()
        return self.execute_flow(method, args, self.options.acquire_timeout, self._site(2))

    def executor_method(self, method: str) -> Callable[..., Any]:
        fn = getattr(self.manager, method, None)
        if not callable(fn):
            raise TypeError(
                f"pool {self.name!r} has no SQL executor: its manager "
                f"{type(self.manager).__name__} does not implement {method}(); acquire a "
                "connection and use the driver directly, or use a URL target"
            )
        return fn  # type: ignore[no-any-return]

    def _entry_to_release(self, conn: C) -> Entry[C] | None:
        """The entry of ``conn`` for ``release(conn)``; ``None`` if the pool already closed
        it (a forced close), so there is nothing to do.

        Raises:
            ValueError: ``conn`` is not lent by this pool (released twice, or foreign).
        """
        entry = self._state.find_lent(conn)
        if entry is None and not self._state.closed:
            raise ValueError(
                f"connection {type(conn).__name__} is not lent by pool {self.name!r} "
                "(already released, or acquired from another pool)"
            )
        return entry


def close_timeout(timeout: object) -> float:
    """Validate the ``timeout`` of ``close()`` / ``aclose()``."""
    value = validate_timeout("timeout", timeout, allow_none=False, allow_zero=True)
    assert value is not None
    return value


def warn_unclosed(pool: PoolBase[Any]) -> None:
    """Warn that an opened pool was garbage-collected without being closed."""
    warnings.warn(
        f"{type(pool).__name__} {pool.name!r} was garbage-collected without being closed; "
        "use 'async with pool' / 'with pool' or call aclose() / close()",
        ResourceWarning,
        stacklevel=2,
    )


def _limits(opts: Options, current: Limits | None = None) -> Limits:
    return Limits(
        max_size=current.max_size if current else opts.max_size,
        min_size=current.min_size if current else opts.min_size,
        max_waiting=opts.max_waiting,
        max_connecting=opts.max_connecting,
        max_lifetime=opts.max_lifetime,
        idle_timeout=opts.idle_timeout,
        check=opts.check,
        check_idle_after=opts.check_idle_after,
        leak_timeout=opts.leak_timeout,
    )
