"""``tidepool.otel`` (issue 8, point 2): the OpenTelemetry semantic-convention metrics of
database connection pools, read with the real SDK (``MeterProvider`` +
``InMemoryMetricReader``) after known sequences of acquires, releases, connects and timeouts,
on ``AsyncPool`` and ``Pool`` with fake managers, and on PostgreSQL through asyncpg."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)

import tidepool
import tidepool.otel
from fakes import (
    AsyncFakeManager,
    FakeManager,
    new_apool,
    new_spool,
    run,
    settle,
    settle_sync,
    until,
    until_sync,
)
from pg_helpers import app_name, pg_url, require_pg, wait_sessions
from tidepool._metrics import TIME_BUCKETS

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
SRC = str(Path(__file__).resolve().parents[2] / "src")

EXPECTED = {
    # name: (kind, unit, monotonic)
    "db.client.connection.count": ("sum", "{connection}", False),
    "db.client.connection.max": ("sum", "{connection}", False),
    "db.client.connection.idle.min": ("sum", "{connection}", False),
    "db.client.connection.pending_requests": ("sum", "{request}", False),
    "db.client.connection.timeouts": ("sum", "{timeout}", True),
    "db.client.connection.create_time": ("histogram", "s", None),
    "db.client.connection.wait_time": ("histogram", "s", None),
    "db.client.connection.use_time": ("histogram", "s", None),
}


class Reading:
    """One collection of the reader: metrics by name, data points by attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.metrics: dict[str, Metric] = {}
        self.scopes: set[str] = set()
        data = reader.get_metrics_data()  # None when there is nothing to report
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                self.scopes.add(scope_metrics.scope.name)
                for metric in scope_metrics.metrics:
                    assert metric.name not in self.metrics, f"{metric.name} reported twice"
                    self.metrics[metric.name] = metric

    def points(self, name: str) -> list[Any]:
        metric = self.metrics.get(name)
        return [] if metric is None else list(metric.data.data_points)

    def pools(self, name: str) -> set[str]:
        return {str(p.attributes[POOL]) for p in self.points(name)}

    def value(self, name: str, pool: str, state: str | None = None) -> int | float | None:
        for p in self.points(name):
            attrs = dict(p.attributes)
            if attrs.get(POOL) == pool and attrs.get(STATE) == state:
                assert isinstance(p, NumberDataPoint)
                return p.value
        return None

    def hist(self, name: str, pool: str) -> HistogramDataPoint | None:
        for p in self.points(name):
            if p.attributes[POOL] == pool:
                assert isinstance(p, HistogramDataPoint)
                return p
        return None

    def count(self, name: str, pool: str) -> int:
        p = self.hist(name, pool)
        return 0 if p is None else p.count


class Otel:
    """A real SDK provider with an in-memory reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)

    def read(self) -> Reading:
        return Reading(self.reader)


@pytest.fixture
def otel() -> Iterator[Otel]:
    otel = Otel()
    yield otel
    otel.provider.shutdown()


# ---------------------------------------------------------------- names, units, values


def test_instruments_have_the_semantic_convention_names_units_and_kinds(
    otel: Otel,
) -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=3, name="orders")
        instrumentation = tidepool.otel.instrument(pool, meter_provider=otel.provider)
        await pool.open()
        # a timeout, so that the counter has a point too
        async with pool.acquire(), pool.acquire(), pool.acquire():
            with pytest.raises(tidepool.PoolTimeout):
                await pool.acquire(timeout=0)
        reading = otel.read()
        assert reading.scopes == {"tidepool"}
        assert set(reading.metrics) == set(EXPECTED)
        for name, (kind, unit, monotonic) in EXPECTED.items():
            metric = reading.metrics[name]
            assert metric.unit == unit, name
            assert metric.description, name
            if kind == "histogram":
                assert isinstance(metric.data, Histogram), name
                point = reading.hist(name, "orders")
                assert point is not None, name
                assert tuple(point.explicit_bounds) == TIME_BUCKETS, name
            else:
                assert isinstance(metric.data, Sum), name
                assert metric.data.is_monotonic is monotonic, name
            for point in metric.data.data_points:
                assert point.attributes[POOL] == "orders", name
        states = {p.attributes[STATE] for p in reading.points("db.client.connection.count")}
        assert states == {"idle", "used"}
        instrumentation.close()

    run(main)


def test_values_after_a_known_sequence(otel: Otel) -> None:
    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=3, min_size=1, check="never", name="orders")
        tidepool.otel.instrument(pool, meter_provider=otel.provider)
        await pool.open()  # one connect, one acquire + release to verify it
        await settle(pool, manager)
        r = otel.read()
        assert r.count("db.client.connection.create_time", "orders") == 1
        assert r.count("db.client.connection.wait_time", "orders") == 1
        assert r.count("db.client.connection.use_time", "orders") == 1
        assert r.value("db.client.connection.count", "orders", "idle") == 1
        assert r.value("db.client.connection.count", "orders", "used") == 0
        assert r.value("db.client.connection.max", "orders") == 3
        assert r.value("db.client.connection.idle.min", "orders") == 1
        assert r.value("db.client.connection.pending_requests", "orders") == 0

        manager.behaviour.connect_delay = 0.02
        first = await pool.acquire()  # the idle one: no wait
        second = await pool.acquire()  # waits for a new connection
        r = otel.read()
        assert r.value("db.client.connection.count", "orders", "idle") == 0
        assert r.value("db.client.connection.count", "orders", "used") == 2
        wait = r.hist("db.client.connection.wait_time", "orders")
        assert wait is not None
        assert wait.count == 3
        assert wait.max >= 0.015  # the second acquire waited for the 20 ms connect
        create = r.hist("db.client.connection.create_time", "orders")
        assert create is not None
        assert create.count == 2
        assert create.max >= 0.015

        await asyncio.sleep(0.03)
        await pool.release(first)
        await pool.release(second)
        await settle(pool, manager)
        r = otel.read()
        use = r.hist("db.client.connection.use_time", "orders")
        assert use is not None
        assert use.count == 3
        assert use.max >= 0.025
        assert r.value("db.client.connection.count", "orders", "idle") == 2
        assert r.value("db.client.connection.count", "orders", "used") == 0

        pool.resize(max_size=5, min_size=2)
        r = otel.read()
        assert r.value("db.client.connection.max", "orders") == 5
        assert r.value("db.client.connection.idle.min", "orders") == 2
        s = pool.stats()
        assert r.count("db.client.connection.wait_time", "orders") == s.acquired
        assert r.count("db.client.connection.create_time", "orders") == s.connects

    run(main)


def test_timeouts_and_pending_requests(otel: Otel) -> None:
    async def main() -> None:
        pool = new_apool(AsyncFakeManager(), max_size=1, name="tiny")
        tidepool.otel.instrument(pool, meter_provider=otel.provider)
        held = await pool.acquire()
        for timeout in (0, 0.02):
            with pytest.raises(tidepool.PoolTimeout):
                await pool.acquire(timeout=timeout)
        r = otel.read()
        assert r.value("db.client.connection.timeouts", "tiny") == 2
        assert r.value("db.client.connection.pending_requests", "tiny") == 0

        async def borrow() -> None:
            async with pool.acquire(timeout=20):
                pass

        waiters = [asyncio.create_task(borrow()) for _ in range(2)]
        await until(lambda: pool.stats().waiting == 2)
        r = otel.read()
        assert r.value("db.client.connection.pending_requests", "tiny") == 2
        assert r.value("db.client.connection.count", "tiny", "used") == 1
        await pool.release(held)
        await asyncio.gather(*waiters)
        r = otel.read()
        assert r.value("db.client.connection.pending_requests", "tiny") == 0
        assert r.value("db.client.connection.timeouts", "tiny") == 2
        assert r.value("db.client.connection.timeouts", "tiny") == pool.stats().timeouts

    run(main)


# ---------------------------------------------------------------- several pools, uninstrument


def test_two_pools_share_one_provider_with_distinct_names(otel: Otel) -> None:
    async def main() -> None:
        provider = otel.provider
        a = new_apool(AsyncFakeManager(), max_size=2, name="a")
        b = new_apool(AsyncFakeManager(), max_size=7, min_size=2, name="b")
        tidepool.otel.instrument(a, meter_provider=provider)
        tidepool.otel.instrument(b, meter_provider=provider)
        await a.open()
        await b.open()
        async with a.acquire(), a.acquire():
            r = otel.read()  # every instrument reported once, with one point per pool
        for name in EXPECTED:
            if name != "db.client.connection.timeouts":
                assert r.pools(name) == {"a", "b"}, name
        assert r.value("db.client.connection.max", "a") == 2
        assert r.value("db.client.connection.max", "b") == 7
        assert r.value("db.client.connection.idle.min", "b") == 2
        assert r.value("db.client.connection.count", "a", "used") == 2
        assert r.value("db.client.connection.count", "b", "used") == 0
        assert r.count("db.client.connection.wait_time", "a") == a.stats().acquired
        assert r.count("db.client.connection.wait_time", "b") == b.stats().acquired

    run(main)


def test_a_pool_name_is_reported_once_per_provider(otel: Otel) -> None:
    provider = otel.provider
    first = tidepool.AsyncPool(AsyncFakeManager(), name="same")  # never opened
    other = tidepool.AsyncPool(AsyncFakeManager(), name="same")
    instrumentation = tidepool.otel.instrument(first, meter_provider=provider)
    with pytest.raises(ValueError, match="already instrumented"):
        tidepool.otel.instrument(first, meter_provider=provider)
    with pytest.raises(ValueError, match=r"another pool named 'same'.*name="):
        tidepool.otel.instrument(other, meter_provider=provider)
    instrumentation.close()
    # once the first is uninstrumented, the name is free again
    tidepool.otel.instrument(other, meter_provider=provider).close()
    # another provider is another namespace
    with MeterProviderScope() as second:
        tidepool.otel.instrument(first, meter_provider=second).close()


class MeterProviderScope:
    """A throw-away SDK provider, shut down on exit."""

    def __enter__(self) -> MeterProvider:
        self.provider = MeterProvider(
            metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False
        )
        return self.provider

    def __exit__(self, *exc: object) -> None:
        self.provider.shutdown()


def test_uninstrument_stops_reporting_the_pool(otel: Otel) -> None:
    async def main() -> None:
        provider = otel.provider
        kept = new_apool(AsyncFakeManager(), name="kept")
        dropped = new_apool(AsyncFakeManager(), name="dropped")
        tidepool.otel.instrument(kept, meter_provider=provider)
        with tidepool.otel.instrument(dropped, meter_provider=provider) as instrumentation:
            assert instrumentation.pool_name == "dropped"
            async with dropped.acquire():
                pass
            async with kept.acquire():
                pass
        assert instrumentation.closed
        assert "closed" in repr(instrumentation)
        instrumentation.close()  # idempotent
        r = otel.read()
        before = r.count("db.client.connection.use_time", "dropped")
        assert before == 1
        async with dropped.acquire():
            pass
        with pytest.raises(tidepool.PoolTimeout):
            async with dropped.acquire(), dropped.acquire(timeout=0):
                pass
        async with kept.acquire():
            pass
        r = otel.read()
        for name in (
            "db.client.connection.count",
            "db.client.connection.max",
            "db.client.connection.idle.min",
            "db.client.connection.pending_requests",
        ):
            assert r.pools(name) == {"kept"}, name
        # cumulative histograms keep their last value, and no longer grow
        assert r.count("db.client.connection.use_time", "dropped") == before
        assert r.count("db.client.connection.wait_time", "dropped") == 1
        assert r.value("db.client.connection.timeouts", "dropped") is None
        assert r.count("db.client.connection.use_time", "kept") == 2
        assert dropped.stats().acquired == 3

        # instrumenting again resumes the same series
        again = tidepool.otel.instrument(dropped, meter_provider=provider)
        async with dropped.acquire():
            pass
        r = otel.read()
        assert r.count("db.client.connection.use_time", "dropped") == before + 1
        assert "dropped" in r.pools("db.client.connection.count")
        again.close()

    run(main)


def test_a_garbage_collected_pool_is_no_longer_reported(otel: Otel) -> None:
    pool = tidepool.Pool(FakeManager(), name="ephemeral")  # never opened: no warning
    instrumentation = tidepool.otel.instrument(pool, meter_provider=otel.provider)
    assert otel.read().pools("db.client.connection.max") == {"ephemeral"}
    del pool
    gc.collect()
    assert otel.read().pools("db.client.connection.max") == set()
    instrumentation.close()  # nothing left to detach from: still fine
    # the name is free again
    other = new_spool(FakeManager(), name="ephemeral")
    tidepool.otel.instrument(other, meter_provider=otel.provider).close()


# ---------------------------------------------------------------- a broken exporter


class _Exploding:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the meter is broken")

    add = record


class BrokenMeter(NoOpMeter):
    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _Exploding()

    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return _Exploding()


class BrokenProvider(NoOpMeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return BrokenMeter("broken")


def test_a_broken_meter_never_breaks_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tidepool")

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=1, name="sturdy")
        instrumentation = tidepool.otel.instrument(pool, meter_provider=BrokenProvider())
        await pool.open()
        for _ in range(3):
            async with pool.acquire() as conn:
                assert conn is not None
        async with pool.acquire():
            with pytest.raises(tidepool.PoolTimeout):
                await pool.acquire(timeout=0)
        await settle(pool, manager)
        assert pool.stats().acquired == 5
        instrumentation.close()

    run(main)
    failures = [r for r in caplog.records if "the pool is unaffected" in r.getMessage()]
    assert len(failures) == 1, caplog.text  # logged once, not once per acquire
    assert "sturdy" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert not [r for r in caplog.records if "listener" in r.getMessage()], caplog.text


def test_a_pool_whose_stats_fail_is_skipped_not_fatal(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    good = new_spool(FakeManager(), max_size=4, name="good")
    bad = new_spool(FakeManager(), name="bad")
    provider = otel.provider
    tidepool.otel.instrument(good, meter_provider=provider)
    tidepool.otel.instrument(bad, meter_provider=provider)

    def broken_stats() -> tidepool.PoolStats:
        raise RuntimeError("stats are broken")

    bad.stats = broken_stats  # type: ignore[method-assign]
    r = otel.read()
    assert r.pools("db.client.connection.max") == {"good"}
    assert r.value("db.client.connection.max", "good") == 4
    assert "stats are broken" in caplog.text


# ---------------------------------------------------------------- the threaded Pool


def test_threaded_pool_under_concurrent_use(otel: Otel) -> None:
    manager = FakeManager()
    pool = new_spool(manager, max_size=3, check="never", name="threads")
    tidepool.otel.instrument(pool, meter_provider=otel.provider)
    pool.open()
    per_thread, threads = 25, 6
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                with pool.acquire(timeout=30):
                    pass
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not errors
    settle_sync(pool, manager)
    s = pool.stats()
    assert s.acquired == per_thread * threads + 1  # + the open's verification
    until_sync(lambda: otel.read().count("db.client.connection.use_time", "threads") == s.acquired)
    r = otel.read()
    assert r.count("db.client.connection.wait_time", "threads") == s.acquired
    assert r.count("db.client.connection.create_time", "threads") == s.connects
    assert r.value("db.client.connection.count", "threads", "idle") == s.idle
    assert r.value("db.client.connection.count", "threads", "used") == 0
    assert r.value("db.client.connection.max", "threads") == 3


# ---------------------------------------------------------------- PostgreSQL


def test_asyncpg_pool_on_postgresql(otel: Otel) -> None:
    require_pg()
    app = app_name("otel")

    async def main() -> None:
        pool = tidepool.AsyncPool(
            pg_url(app, driver="asyncpg"), max_size=4, min_size=1, name="pg-orders"
        )
        tidepool.otel.instrument(pool, meter_provider=otel.provider)
        async with pool:
            results = await asyncio.gather(
                *(pool.fetch_value("SELECT $1::int FROM pg_sleep(0.05)", i) for i in range(8))
            )
            assert sorted(results) == list(range(8))
            async with pool.acquire() as conn:
                r = otel.read()
                assert r.value("db.client.connection.count", "pg-orders", "used") == 1
                assert await conn.fetchval("SELECT 1") == 1
            s = pool.stats()
            assert await asyncio.to_thread(wait_sessions, app, s.size) == s.size
            r = otel.read()
            assert r.count("db.client.connection.create_time", "pg-orders") == s.connects
            assert 1 < s.connects <= 4
            assert r.count("db.client.connection.wait_time", "pg-orders") == s.acquired
            assert r.count("db.client.connection.use_time", "pg-orders") == s.acquired
            create = r.hist("db.client.connection.create_time", "pg-orders")
            assert create is not None
            assert create.min > 0
            assert r.value("db.client.connection.count", "pg-orders", "idle") == s.idle
            assert r.value("db.client.connection.count", "pg-orders", "used") == 0
            assert r.value("db.client.connection.max", "pg-orders") == 4
            assert r.value("db.client.connection.idle.min", "pg-orders") == 1
        assert await asyncio.to_thread(wait_sessions, app, 0) == 0

    asyncio.run(main())


# ---------------------------------------------------------------- the global provider, imports


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    tests = str(Path(__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{SRC}:{tests}", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_the_global_provider_set_after_instrumenting() -> None:
    """``meter_provider=None`` before the application sets its provider, then after, then
    the same provider passed explicitly: one set of instruments, every pool reported."""
    done = run_python(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import tidepool, tidepool.otel
        from fakes import FakeManager

        early = tidepool.Pool(FakeManager(), max_size=2, name="early")
        tidepool.otel.instrument(early)
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        metrics.set_meter_provider(provider)
        late = tidepool.Pool(FakeManager(), max_size=3, name="late")
        tidepool.otel.instrument(late)
        explicit = tidepool.Pool(FakeManager(), max_size=4, name="explicit")
        tidepool.otel.instrument(explicit, meter_provider=provider)
        found = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "db.client.connection.max":
                        for p in m.data.data_points:
                            found[p.attributes["db.client.connection.pool.name"]] = p.value
        print(sorted(found.items()))
        provider.shutdown()
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('early', 2), ('explicit', 4), ('late', 3)]", done.stderr


def test_import_without_opentelemetry_names_the_extra() -> None:
    done = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None
        try:
            import tidepool.otel
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
        import tidepool
        print(tidepool.AsyncPool.__name__)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'tidepool[otel]'" in done.stdout
    assert done.stdout.strip().endswith("AsyncPool")


def test_bad_arguments_are_refused(otel: Otel) -> None:
    with pytest.raises(TypeError, match=r"tidepool\.AsyncPool or tidepool\.Pool, got str"):
        tidepool.otel.instrument("postgresql://db/app")  # type: ignore[arg-type]
    pool = tidepool.Pool(FakeManager())  # never opened
    with pytest.raises(TypeError, match="meter_provider must be"):
        tidepool.otel.instrument(pool, meter_provider=object())  # type: ignore[arg-type]
