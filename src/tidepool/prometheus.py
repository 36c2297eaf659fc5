"""Prometheus metrics for tidepool pools.

    import tidepool.prometheus

    instrumentation = tidepool.prometheus.instrument(pool)   # prometheus_client.REGISTRY
    ...
    instrumentation.close()                                  # the pool's series disappear

Needs ``prometheus-client`` (``pip install 'tidepool[prometheus]'``). One collector per
registry (and namespace) reports every instrumented pool under a ``pool`` label: counts and
counters are read from ``pool.stats()`` at scrape time, the histograms and the per-reason
close counter are fed by the pool's events.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from functools import partial

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "tidepool.prometheus needs prometheus-client: pip install 'tidepool[prometheus]'"
    ) from exc

from ._core.stats import PoolStats
from ._metrics import (
    TIME_BUCKETS,
    ExporterListener,
    InstrumentedPool,
    PoolInstrumentation,
    PoolSet,
    check_pool,
)
from .errors import ConfigError

__all__ = ["PoolInstrumentation", "instrument"]

_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# Counters read from stats() at scrape: (name after the namespace, PoolStats field, help).
# The exposition adds "_total".
_STATS_COUNTERS = (
    ("acquires", "acquired", "Acquires that got a connection."),
    ("acquire_waits", "waited", "Acquires that had to queue for a connection first."),
    ("acquire_timeouts", "timeouts", "Acquires that ended in PoolTimeout."),
    ("connects", "connects", "Connections opened."),
    ("connect_errors", "connect_errors", "Connection attempts that failed."),
    (
        "check_failures",
        "check_failures",
        "Liveness checks that failed when lending an idle connection (it was closed).",
    ),
    ("reset_failures", "reset_failures", "Resets that failed on return (it was closed)."),
    (
        "connections_reclaimed",
        "reclaimed",
        "Lent connections garbage-collected without being released.",
    ),
)


class _Collector:
    """Reports every pool instrumented on one registry under one namespace."""

    def __init__(self, namespace: str) -> None:
        self.pools: PoolSet[_Listener] = PoolSet("registry")
        self._ns = namespace
        # Not registered themselves: collect() yields them, so the registry sees one
        # collector whose names it checks once.
        self.wait_seconds = self._histogram(
            "acquire_wait_seconds",
            "Time from asking for a connection to getting one (0 for an idle one).",
        )
        self.use_seconds = self._histogram(
            "connection_use_seconds", "Time a connection stayed lent, acquire to release."
        )
        self.connect_seconds = self._histogram(
            "connect_seconds", "Time to open a new connection (with the on_connect hook)."
        )

    def _histogram(self, name: str, documentation: str) -> Histogram:
        return Histogram(
            f"{self._ns}_{name}",
            documentation,
            labelnames=("pool",),
            unit="seconds",
            registry=None,
            buckets=TIME_BUCKETS,
        )

    def describe(self) -> Iterable[Metric]:
        """The names this collector exports, for the registry's clash check."""
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        """Read each pool's stats now."""
        return self._families(self.pools.snapshots())

    def _families(self, pools: list[tuple[_Listener, PoolStats]]) -> Iterator[Metric]:
        ns = self._ns
        connections = GaugeMetricFamily(
            f"{ns}_connections",
            "Open connections by state: idle (ready to lend), used (lent, or being checked "
            "or reset), connecting (being opened).",
            labels=("pool", "state"),
        )
        maximum = GaugeMetricFamily(
            f"{ns}_connections_max",
            "Cap on open connections (max_size).",
            labels=("pool",),
        )
        minimum = GaugeMetricFamily(
            f"{ns}_connections_min",
            "Floor of open connections kept in the background (min_size).",
            labels=("pool",),
        )
        pending = GaugeMetricFamily(
            f"{ns}_pending_requests",
            "Callers queued for a connection.",
            labels=("pool",),
        )
        closed = CounterMetricFamily(
            f"{ns}_connections_closed",
            "Connections closed, by reason (counted from instrumentation on).",
            labels=("pool", "reason"),
        )
        counters = [
            (CounterMetricFamily(f"{ns}_{name}", doc, labels=("pool",)), field)
            for name, field, doc in _STATS_COUNTERS
        ]
        for listener, s in pools:
            name = listener.name
            connections.add_metric((name, "idle"), s.idle)
            connections.add_metric((name, "used"), s.in_use)
            connections.add_metric((name, "connecting"), s.connecting)
            maximum.add_metric((name,), s.max_size)
            minimum.add_metric((name,), s.min_size)
            pending.add_metric((name,), s.waiting)
            for family, field in counters:
                family.add_metric((name,), getattr(s, field))
            for reason, count in listener.closed_by_reason():
                closed.add_metric((name, reason), count)
        yield from (connections, maximum, minimum, pending)
        for family, _ in counters:
            yield family
        yield closed
        for histogram in (self.wait_seconds, self.use_seconds, self.connect_seconds):
            yield from histogram.collect()


class _Listener(ExporterListener):
    """Feeds one pool's events into the collector's histograms and close counts."""

    def __init__(self, pool: InstrumentedPool, collector: _Collector) -> None:
        super().__init__(pool)
        self._histograms = (
            collector.wait_seconds,
            collector.use_seconds,
            collector.connect_seconds,
        )
        self._wait = collector.wait_seconds.labels(self.name)
        self._use = collector.use_seconds.labels(self.name)
        self._connect = collector.connect_seconds.labels(self.name)
        self._closed: dict[str, int] = {}
        self._closed_lock = threading.Lock()

    def on_connect(self, pool: str, connection_id: int, seconds: float) -> None:
        try:
            self._connect.observe(seconds)
        except Exception:
            self.failed("on_connect")

    def on_acquire(self, pool: str, connection_id: int, wait_seconds: float) -> None:
        try:
            self._wait.observe(wait_seconds)
        except Exception:
            self.failed("on_acquire")

    def on_release(self, pool: str, connection_id: int, use_seconds: float) -> None:
        try:
            self._use.observe(use_seconds)
        except Exception:
            self.failed("on_release")

    def on_close(self, pool: str, connection_id: int, reason: str) -> None:
        with self._closed_lock:
            self._closed[reason] = self._closed.get(reason, 0) + 1

    def closed_by_reason(self) -> list[tuple[str, int]]:
        with self._closed_lock:
            return sorted(self._closed.items())

    def forget(self) -> None:
        for histogram in self._histograms:
            try:
                histogram.remove(self.name)
            except KeyError:
                pass


_lock = threading.Lock()
# One collector per (registry, namespace) while it reports at least one pool; the last
# close() unregisters it, leaving the registry as it was.
_collectors: dict[tuple[CollectorRegistry, str], _Collector] = {}


def instrument(
    pool: InstrumentedPool,
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "tidepool",
) -> PoolInstrumentation:
    """Report ``pool``'s metrics on ``registry`` (default ``prometheus_client.REGISTRY``),
    every series labelled ``pool`` = ``pool.name``, names prefixed with ``namespace``.

    Several pools may share a registry; ``close()`` on the result removes this pool's
    series (and the collector, with the last pool). Recording costs the pool one histogram
    update per acquire, release and connect; an exporter failure is logged once and never
    reaches the pool.

    Raises:
        TypeError: ``pool`` is not a tidepool pool, or ``registry`` is not a
            ``CollectorRegistry``.
        ConfigError: ``namespace`` is not a valid metric-name prefix.
        ValueError: a pool with this name is already instrumented on this registry and
            namespace (give pools distinct ``name=`` options), or the registry already has
            another collector exporting these metric names.
    """
    check_pool(pool, "tidepool.prometheus.instrument")
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ConfigError(
            f"namespace must be a metric name prefix (letters, digits and underscores, not "
            f"starting with a digit), got {namespace!r}"
        )
    if registry is None:
        registry = REGISTRY
    elif not isinstance(registry, CollectorRegistry):
        raise TypeError(
            "tidepool.prometheus.instrument(): registry must be a "
            f"prometheus_client.CollectorRegistry or None, got {type(registry).__name__}"
        )
    key = (registry, namespace)
    with _lock:
        collector = _collectors.get(key)
        if collector is None:
            collector = _Collector(namespace)
            try:
                registry.register(collector)
            except ValueError as exc:
                raise ValueError(
                    f"tidepool.prometheus.instrument(): the registry already has metrics "
                    f"named like tidepool's ({exc}); pass another namespace="
                ) from None
            _collectors[key] = collector
        registered = collector
        listener: _Listener | None = None
        try:
            listener = registered.pools.add(pool, lambda: _Listener(pool, registered))
            pool.add_listener(listener)
        except BaseException:
            _detach_locked(key, registered, listener)
            raise
    return PoolInstrumentation(listener, partial(_detach, key, registered, listener))


def _detach(key: tuple[CollectorRegistry, str], collector: _Collector, listener: _Listener) -> None:
    with _lock:
        _detach_locked(key, collector, listener)


def _detach_locked(
    key: tuple[CollectorRegistry, str], collector: _Collector, listener: _Listener | None
) -> None:
    if listener is not None:
        collector.pools.remove(listener)
    if not collector.pools and _collectors.get(key) is collector:
        del _collectors[key]
        key[0].unregister(collector)
