"""OpenTelemetry metrics for tidepool pools, with the semantic-convention names of database
client connection pools (``db.client.connection.*``).

    import tidepool.otel

    instrumentation = tidepool.otel.instrument(pool)   # the global MeterProvider
    ...
    instrumentation.close()                            # stop reporting the pool

Needs ``opentelemetry-api`` only (``pip install 'tidepool[otel]'``); the application brings
the SDK and its exporter. Gauge-like counts are read from ``pool.stats()`` when the SDK
collects; times and timeouts are recorded from the pool's events as they happen.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from functools import partial

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "tidepool.otel needs the OpenTelemetry API: pip install 'tidepool[otel]'"
    ) from exc

from . import __version__
from ._metrics import (
    TIME_BUCKETS,
    ExporterListener,
    InstrumentedPool,
    PoolInstrumentation,
    PoolSet,
    check_pool,
)

__all__ = ["POOL_NAME", "STATE", "PoolInstrumentation", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
"""The attribute naming the pool on every observation (the pool's ``name``)."""
STATE = "db.client.connection.state"
"""The attribute of ``db.client.connection.count``: ``idle`` or ``used``."""


class _Instruments:
    """The instruments of one meter provider, created once, and the pools they report."""

    def __init__(self, provider: MeterProvider) -> None:
        self.pools: PoolSet[_Listener] = PoolSet("meter provider")
        meter = provider.get_meter("tidepool", __version__)
        updown = meter.create_observable_up_down_counter
        updown(
            "db.client.connection.count",
            [self._count],
            unit="{connection}",
            description="The number of connections that are currently in the state described "
            "by the state attribute.",
        )
        updown(
            "db.client.connection.max",
            [self._max],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        updown(
            "db.client.connection.idle.min",
            [self._idle_min],
            unit="{connection}",
            description="The minimum number of idle open connections allowed.",
        )
        updown(
            "db.client.connection.pending_requests",
            [self._pending],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to "
            "obtain a connection from the pool.",
        )
        self.create_time = _histogram(
            meter,
            "db.client.connection.create_time",
            "The time it took to create a new connection.",
        )
        self.wait_time = _histogram(
            meter,
            "db.client.connection.wait_time",
            "The time it took to obtain an open connection from the pool.",
        )
        self.use_time = _histogram(
            meter,
            "db.client.connection.use_time",
            "The time between borrowing a connection and returning it to the pool.",
        )

    # Observable callbacks: the SDK calls them at collection time, from its own thread.

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        for listener, s in self.pools.snapshots():
            yield Observation(s.idle, listener.idle_attrs)
            yield Observation(s.in_use, listener.used_attrs)

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        for listener, s in self.pools.snapshots():
            yield Observation(s.max_size, listener.attrs)

    def _idle_min(self, options: CallbackOptions) -> Iterable[Observation]:
        for listener, s in self.pools.snapshots():
            yield Observation(s.min_size, listener.attrs)

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for listener, s in self.pools.snapshots():
            yield Observation(s.waiting, listener.attrs)


def _histogram(meter: Meter, name: str, description: str) -> Histogram:
    try:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=TIME_BUCKETS,
        )
    except TypeError:  # opentelemetry-api < 1.30: no bucket advice, the SDK's defaults apply
        return meter.create_histogram(name, unit="s", description=description)


class _Listener(ExporterListener):
    """Records one pool's events on the shared instruments."""

    def __init__(self, pool: InstrumentedPool, instruments: _Instruments) -> None:
        super().__init__(pool)
        self.attrs = {POOL_NAME: self.name}
        self.idle_attrs = {POOL_NAME: self.name, STATE: "idle"}
        self.used_attrs = {POOL_NAME: self.name, STATE: "used"}
        self._timeouts = instruments.timeouts
        self._create_time = instruments.create_time
        self._wait_time = instruments.wait_time
        self._use_time = instruments.use_time

    def on_connect(self, pool: str, connection_id: int, seconds: float) -> None:
        try:
            self._create_time.record(seconds, self.attrs)
        except Exception:
            self.failed("on_connect")

    def on_acquire(self, pool: str, connection_id: int, wait_seconds: float) -> None:
        try:
            self._wait_time.record(wait_seconds, self.attrs)
        except Exception:
            self.failed("on_acquire")

    def on_release(self, pool: str, connection_id: int, use_seconds: float) -> None:
        try:
            self._use_time.record(use_seconds, self.attrs)
        except Exception:
            self.failed("on_release")

    def on_timeout(self, pool: str, phase: str) -> None:
        try:
            self._timeouts.add(1, self.attrs)
        except Exception:
            self.failed("on_timeout")


_lock = threading.Lock()
# An SDK meter hands back the existing instrument when one is created twice (and drops the
# second one's callbacks), so each provider gets its instruments exactly once.
_by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
# The global provider is a proxy until the application sets the real one, after which
# get_meter_provider() returns that one: both must map to the same instruments.
_global: _Instruments | None = None


def _instruments_for(meter_provider: MeterProvider | None) -> _Instruments:
    global _global
    with _lock:
        if meter_provider is None:
            if _global is None:
                _global = _instruments_of(metrics.get_meter_provider())
            return _global
        if _global is not None and meter_provider is metrics.get_meter_provider():
            return _global
        return _instruments_of(meter_provider)


def _instruments_of(provider: MeterProvider) -> _Instruments:
    found = _by_provider.get(provider)
    if found is None:
        found = _by_provider[provider] = _Instruments(provider)
    return found


def instrument(
    pool: InstrumentedPool, *, meter_provider: MeterProvider | None = None
) -> PoolInstrumentation:
    """Report ``pool``'s metrics through ``meter_provider`` (default: the global one, as set
    by ``opentelemetry.metrics.set_meter_provider``, also when it is set later).

    Every observation carries ``db.client.connection.pool.name`` = ``pool.name``; several
    pools may share one provider. Recording costs the pool one histogram update per acquire,
    release and connect; an exporter failure is logged once and never reaches the pool.
    ``close()`` on the result stops reporting: the pool's observable series end, and its
    histograms and counter keep their last values (as cumulative instruments do).

    Raises:
        TypeError: ``pool`` is not a tidepool pool, or ``meter_provider`` is not a
            ``MeterProvider``.
        ValueError: a pool with this name is already instrumented on this provider (give
            pools distinct ``name=`` options).
    """
    check_pool(pool, "tidepool.otel.instrument")
    if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
        raise TypeError(
            "tidepool.otel.instrument(): meter_provider must be an OpenTelemetry "
            f"MeterProvider or None, got {type(meter_provider).__name__}"
        )
    instruments = _instruments_for(meter_provider)
    listener = instruments.pools.add(pool, lambda: _Listener(pool, instruments))
    try:
        pool.add_listener(listener)
    except BaseException:
        instruments.pools.remove(listener)
        raise
    return PoolInstrumentation(listener, partial(instruments.pools.remove, listener))
