"""What the OpenTelemetry and Prometheus exporters share: the listener base that keeps an
exporter's failure away from the pool, the set of pools one exporter reports (one per name,
held weakly), the handle ``instrument()`` returns, and the histogram buckets."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ._core.stats import PoolStats
from .events import PoolListener

__all__ = [
    "TIME_BUCKETS",
    "ExporterListener",
    "InstrumentedPool",
    "PoolInstrumentation",
    "PoolSet",
    "check_pool",
]

log = logging.getLogger("tidepool.metrics")

TIME_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Histogram bucket bounds (seconds) for waits, uses and connects: an idle checkout takes
microseconds, a connect milliseconds, a starved pool waits up to ``acquire_timeout``."""


class InstrumentedPool(Protocol):
    """What an exporter needs from a pool: ``AsyncPool`` and ``Pool`` both qualify."""

    @property
    def name(self) -> str: ...

    def stats(self) -> PoolStats: ...

    def add_listener(self, listener: Any) -> None: ...

    def remove_listener(self, listener: Any) -> None: ...


def check_pool(pool: object, owner: str) -> None:
    """Raise ``TypeError`` unless ``pool`` looks like a tidepool pool."""
    needed = ("stats", "add_listener", "remove_listener")
    missing = [m for m in needed if not callable(getattr(pool, m, None))]
    if missing or not isinstance(getattr(pool, "name", None), str):
        raise TypeError(
            f"{owner}() needs a tidepool.AsyncPool or tidepool.Pool, got {type(pool).__name__}"
        )


class ExporterListener(PoolListener):
    """Base of an exporter's listener for one pool. It holds the pool weakly (an instrumented
    pool that is dropped without ``close()`` is still garbage-collected, and its pool's
    "unclosed" warning still fires). Subclasses wrap their recording in ``try``/``except
    Exception: self.failed(...)``: a broken exporter is logged once, and the pool's events
    are never slowed by a log line per acquire."""

    def __init__(self, pool: InstrumentedPool) -> None:
        self.name = pool.name
        self.pool_ref: weakref.ref[InstrumentedPool] = weakref.ref(pool)
        self._failed = False

    def failed(self, where: str) -> None:
        """Log the exception being handled, the first time only."""
        if self._failed:
            return
        self._failed = True
        log.warning(
            "pool %r: %s failed in %s; the pool is unaffected, its metrics may be incomplete "
            "(further failures of this exporter are not logged)",
            self.name,
            type(self).__name__,
            where,
            exc_info=True,
        )

    def forget(self) -> None:
        """Drop what the exporter keeps for this pool (subclasses override)."""


L = TypeVar("L", bound=ExporterListener)


class PoolSet(Generic[L]):
    """The pools one exporter target (a meter provider, a Prometheus registry) reports, by
    name: two pools under one name would merge into one series, so that is refused."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._members: dict[str, L] = {}

    def add(self, pool: InstrumentedPool, make: Callable[[], L]) -> L:
        """Start reporting ``pool``: ``make()`` builds its listener, which is returned.

        Raises:
            ValueError: a live pool of the same name is already reported here.
        """
        name = pool.name
        # forget() and make() run under the lock: a listener's series are keyed by the pool
        # name, so the old pool's must be gone before the new one's exist.
        with self._lock:
            current = self._members.get(name)
            if current is not None:
                owner = current.pool_ref()
                if owner is not None:
                    raise ValueError(
                        f"pool {name!r} is already instrumented on this {self._target}"
                        if owner is pool
                        else f"another pool named {name!r} is already instrumented on this "
                        f"{self._target}; give the pools distinct names (the name= option) "
                        "or close the other instrumentation first"
                    )
                current.forget()  # its pool was garbage-collected without close()
            listener = make()
            self._members[name] = listener
        return listener

    def remove(self, listener: L) -> None:
        """Stop reporting ``listener``'s pool and forget its series (no-op if it is not
        reported)."""
        with self._lock:
            if self._members.get(listener.name) is listener:
                del self._members[listener.name]
                listener.forget()

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    def snapshots(self) -> list[tuple[L, PoolStats]]:
        """Each reported pool's listener and current stats; pools garbage-collected
        meanwhile are dropped, a pool whose ``stats()`` fails is skipped (logged once)."""
        with self._lock:
            members = list(self._members.values())
        found: list[tuple[L, PoolStats]] = []
        for listener in members:
            pool = listener.pool_ref()
            if pool is None:
                self.remove(listener)
                continue
            try:
                found.append((listener, pool.stats()))
            except Exception:
                listener.failed("stats()")
        return found


class PoolInstrumentation:
    """What ``instrument()`` returns: :meth:`close` stops reporting the pool. Also a
    context manager (``with tidepool.otel.instrument(pool): ...``)."""

    def __init__(self, listener: ExporterListener, detach: Callable[[], object]) -> None:
        self._listener = listener
        self._detach = detach
        self._closed = False

    @property
    def pool_name(self) -> str:
        """The instrumented pool's name (the ``pool`` label / pool-name attribute)."""
        return self._listener.name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Remove the listener from the pool and stop reporting it; idempotent. The pool
        itself is untouched (it stays open)."""
        if self._closed:
            return
        self._closed = True
        pool = self._listener.pool_ref()
        if pool is not None:
            pool.remove_listener(self._listener)
        self._detach()

    uninstrument = close

    def __enter__(self) -> PoolInstrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "active"
        return f"<{type(self).__name__} pool={self.pool_name!r} {state}>"
