"""``tidepool.prometheus`` (issue 8, point 3): a collector per registry reading ``stats()`` at
scrape time, histograms and close reasons fed by events. Every check scrapes a real HTTP
endpoint (``prometheus_client.make_wsgi_app`` in a wsgiref server thread on a free loopback
port) and parses the exposition with ``prometheus_client``'s own parsers."""

from __future__ import annotations

import asyncio
import gc
import math
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, make_wsgi_app
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import tidepool
import tidepool.prometheus
from fakes import (
    AsyncFakeManager,
    FakeManager,
    new_apool,
    new_spool,
    run,
    settle,
    settle_sync,
    until,
)
from pg_helpers import app_name, pg_url, require_pg, wait_sessions
from tidepool._metrics import TIME_BUCKETS

SRC = str(Path(__file__).resolve().parents[2] / "src")
PATIENCE = 20.0


class Scrape:
    """One parsed scrape: families by name, samples by sample name and labels."""

    def __init__(self, text: str, *, openmetrics: bool = False) -> None:
        parse = openmetrics_families if openmetrics else text_string_to_metric_families
        self.families = {f.name: f for f in parse(text)}
        self.text = text

    def value(self, sample: str, **labels: str) -> float | None:
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return float(s.value)
        return None

    def series(self, sample: str) -> list[dict[str, str]]:
        return [
            dict(s.labels)
            for family in self.families.values()
            for s in family.samples
            if s.name == sample
        ]

    def pools(self) -> set[str]:
        return {
            s.labels["pool"]
            for family in self.families.values()
            for s in family.samples
            if "pool" in s.labels
        }

    def closed(self, pool: str) -> dict[str, float]:
        return {
            labels["reason"]: self.value("tidepool_connections_closed_total", **labels) or 0.0
            for labels in self.series("tidepool_connections_closed_total")
            if labels["pool"] == pool
        }


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[CollectorRegistry], Callable[..., Scrape]]]:
    """``serve(registry)`` starts an HTTP endpoint for ``registry`` and returns a function
    that scrapes and parses it; every server is shut down after the test."""
    servers: list[tuple[WSGIServer, threading.Thread]] = []

    def start(registry: CollectorRegistry) -> Callable[..., Scrape]:
        server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_Quiet)
        thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="metrics", daemon=True
        )
        thread.start()
        servers.append((server, thread))
        url = f"http://127.0.0.1:{server.server_port}/metrics"

        def scrape(*, openmetrics: bool = False) -> Scrape:
            request = urllib.request.Request(url)
            if openmetrics:
                request.add_header("Accept", "application/openmetrics-text; version=1.0.0")
            with urllib.request.urlopen(request, timeout=PATIENCE) as response:
                assert response.status == 200
                kind = response.headers["Content-Type"]
                assert ("openmetrics" in kind) is openmetrics, kind
                return Scrape(response.read().decode(), openmetrics=openmetrics)

        return scrape

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(PATIENCE)


# ---------------------------------------------------------------- values


def test_series_after_a_known_sequence(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)

    async def main() -> None:
        manager = AsyncFakeManager()
        pool = new_apool(manager, max_size=3, min_size=1, check="always", name="orders")
        tidepool.prometheus.instrument(pool, registry=registry)
        await pool.open()
        await settle(pool, manager)
        manager.behaviour.connect_delay = 0.02
        first = await pool.acquire()
        second = await pool.acquire()  # waits for a new connection
        s = await asyncio.to_thread(scrape)
        assert s.value("tidepool_connections", pool="orders", state="idle") == 0
        assert s.value("tidepool_connections", pool="orders", state="used") == 2
        assert s.value("tidepool_connections", pool="orders", state="connecting") == 0
        assert s.value("tidepool_connections_max", pool="orders") == 3
        assert s.value("tidepool_connections_min", pool="orders") == 1
        assert s.value("tidepool_pending_requests", pool="orders") == 0
        assert s.value("tidepool_acquires_total", pool="orders") == 3  # with open()'s
        assert s.value("tidepool_connects_total", pool="orders") == 2
        assert s.value("tidepool_connect_seconds_count", pool="orders") == 2
        assert s.value("tidepool_acquire_wait_seconds_count", pool="orders") == 3
        waited_over = s.value("tidepool_acquire_wait_seconds_bucket", pool="orders", le="0.01")
        assert waited_over is not None
        assert waited_over <= 2  # the second acquire waited >= 20 ms
        buckets = [
            float(labels["le"])
            for labels in s.series("tidepool_acquire_wait_seconds_bucket")
            if labels["pool"] == "orders"
        ]
        assert buckets == [*TIME_BUCKETS, math.inf]

        async def borrow() -> None:
            async with pool.acquire(timeout=PATIENCE):
                pass

        third = await pool.acquire()
        waiters = [asyncio.create_task(borrow()) for _ in range(2)]
        await until(lambda: pool.stats().waiting == 2)
        s = await asyncio.to_thread(scrape)
        assert s.value("tidepool_pending_requests", pool="orders") == 2
        for conn in (first, second, third):
            await pool.release(conn)
        await asyncio.gather(*waiters)
        async with pool.acquire(), pool.acquire(), pool.acquire():
            for timeout in (0, 0.02):
                with pytest.raises(tidepool.PoolTimeout):
                    await pool.acquire(timeout=timeout)

        manager.behaviour.fail_next("check")  # the next lend closes one connection
        manager.behaviour.fail_next("reset")  # and the next return another
        async with pool.acquire():
            pass
        manager.behaviour.fail_next("connect")
        manager.behaviour.connect_delay = 0
        async with pool.acquire(), pool.acquire(), pool.acquire():
            pass
        await settle(pool, manager)
        stats = pool.stats()
        s = await asyncio.to_thread(scrape)
        assert s.value("tidepool_acquires_total", pool="orders") == stats.acquired
        assert s.value("tidepool_acquire_waits_total", pool="orders") == stats.waited
        assert s.value("tidepool_acquire_timeouts_total", pool="orders") == 2
        assert s.value("tidepool_check_failures_total", pool="orders") == 1
        assert s.value("tidepool_reset_failures_total", pool="orders") == 1
        assert s.value("tidepool_connect_errors_total", pool="orders") == 1
        assert s.value("tidepool_connects_total", pool="orders") == stats.connects
        assert s.value("tidepool_connections_reclaimed_total", pool="orders") == 0
        assert s.value("tidepool_acquire_wait_seconds_count", pool="orders") == stats.acquired
        assert s.value("tidepool_connection_use_seconds_count", pool="orders") == stats.acquired
        assert s.value("tidepool_connect_seconds_count", pool="orders") == stats.connects
        assert s.closed("orders") == {"check failed": 1, "reset failed": 1}
        assert stats.closed == 2

        pool.expire()
        await settle(pool, manager)
        s = await asyncio.to_thread(scrape)
        closed = s.closed("orders")
        assert closed["expired"] == stats.idle
        assert sum(closed.values()) == pool.stats().closed
        await pool.aclose()
        assert sum((await asyncio.to_thread(scrape)).closed("orders").values()) == (
            pool.stats().closed
        )

    run(main)


def test_metric_types_units_and_help_in_both_formats(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)
    pool = new_spool(FakeManager(), name="typed")
    tidepool.prometheus.instrument(pool, registry=registry)
    with pool.acquire():
        pass
    pool.close()
    expected = {
        "tidepool_connections": "gauge",
        "tidepool_connections_max": "gauge",
        "tidepool_connections_min": "gauge",
        "tidepool_pending_requests": "gauge",
        "tidepool_acquires": "counter",
        "tidepool_acquire_waits": "counter",
        "tidepool_acquire_timeouts": "counter",
        "tidepool_connects": "counter",
        "tidepool_connect_errors": "counter",
        "tidepool_connections_closed": "counter",
        "tidepool_check_failures": "counter",
        "tidepool_reset_failures": "counter",
        "tidepool_connections_reclaimed": "counter",
        "tidepool_acquire_wait_seconds": "histogram",
        "tidepool_connection_use_seconds": "histogram",
        "tidepool_connect_seconds": "histogram",
    }
    for openmetrics in (False, True):
        s = scrape(openmetrics=openmetrics)
        types = {
            name: f.type
            for name, f in s.families.items()
            if f.type != "gauge" or (not name.endswith("_created"))
        }
        assert types == expected, openmetrics
        for name in expected:
            assert s.families[name].documentation, name
        assert s.pools() == {"typed"}
        for labels in s.series("tidepool_connections"):
            assert set(labels) == {"pool", "state"}
        if openmetrics:
            for name in (n for n, kind in expected.items() if kind == "histogram"):
                assert s.families[name].unit == "seconds", name
    s = scrape()
    assert s.closed("typed") == {"pool closed": 1}


# ---------------------------------------------------------------- several pools, uninstrument


def test_several_pools_on_one_registry(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)
    a = new_spool(FakeManager(), max_size=2, name="a")
    b = new_spool(FakeManager(), max_size=9, min_size=1, name="b")
    tidepool.prometheus.instrument(a, registry=registry)
    tidepool.prometheus.instrument(b, registry=registry)
    b.open()
    with a.acquire(), a.acquire():
        s = scrape()
    assert s.pools() == {"a", "b"}
    assert s.value("tidepool_connections", pool="a", state="used") == 2
    assert s.value("tidepool_connections", pool="b", state="used") == 0
    assert s.value("tidepool_connections_max", pool="a") == 2
    assert s.value("tidepool_connections_max", pool="b") == 9
    assert s.value("tidepool_connections_min", pool="b") == 1
    assert s.value("tidepool_acquires_total", pool="a") == 2
    assert s.value("tidepool_acquires_total", pool="b") == 1

    # a pool name is reported once per registry and namespace
    twin = new_spool(FakeManager(), name="a")
    with pytest.raises(ValueError, match="already instrumented"):
        tidepool.prometheus.instrument(a, registry=registry)
    with pytest.raises(ValueError, match=r"another pool named 'a'.*name="):
        tidepool.prometheus.instrument(twin, registry=registry)
    # another namespace on the same registry is another set of metrics
    other = tidepool.prometheus.instrument(twin, registry=registry, namespace="app_db")
    s = scrape()
    assert s.value("app_db_connections_max", pool="a") == 10
    assert s.value("tidepool_connections_max", pool="a") == 2
    other.close()
    assert scrape().value("app_db_connections_max", pool="a") is None


def test_uninstrument_removes_the_pools_series(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)
    kept = new_spool(FakeManager(), name="kept")
    dropped = new_spool(FakeManager(), name="dropped")
    tidepool.prometheus.instrument(kept, registry=registry)
    instrumentation = tidepool.prometheus.instrument(dropped, registry=registry)
    for pool in (kept, dropped):
        with pool.acquire():
            pass
        pool.expire()
    settle_sync(dropped)
    s = scrape()
    assert s.pools() == {"kept", "dropped"}
    assert s.closed("dropped") == {"expired": 1}

    instrumentation.close()
    instrumentation.close()  # idempotent
    assert instrumentation.closed
    with dropped.acquire():  # no longer observed
        pass
    s = scrape()
    assert s.pools() == {"kept"}
    assert "dropped" not in s.text

    # instrumenting again starts the event-fed series afresh; stats-fed ones carry on
    again = tidepool.prometheus.instrument(dropped, registry=registry)
    s = scrape()
    assert s.value("tidepool_acquire_wait_seconds_count", pool="dropped") == 0
    assert s.value("tidepool_acquires_total", pool="dropped") == 2
    assert s.closed("dropped") == {}
    again.close()


def test_the_last_close_unregisters_the_collector(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)
    pool = new_spool(FakeManager(), name="only")
    with tidepool.prometheus.instrument(pool, registry=registry):
        assert "tidepool_connections" in scrape().families
    assert scrape().families == {}
    # the registry is as it was: tidepool's names are free for anyone again
    Gauge("tidepool_connections", "someone else's", registry=registry)


def test_the_default_registry(serve: Callable[..., Any]) -> None:
    scrape = serve(REGISTRY)
    pool = new_spool(FakeManager(), name="default-registry")
    instrumentation = tidepool.prometheus.instrument(pool)
    try:
        assert scrape().value("tidepool_connections_max", pool="default-registry") == 10
    finally:
        instrumentation.close()
    assert scrape().value("tidepool_connections_max", pool="default-registry") is None


def test_a_clash_with_existing_metrics_names_the_namespace_option() -> None:
    registry = CollectorRegistry()
    Gauge("tidepool_pending_requests", "an application metric", registry=registry)
    pool = new_spool(FakeManager(), name="clash")
    with pytest.raises(ValueError, match=r"namespace="):
        tidepool.prometheus.instrument(pool, registry=registry)
    tidepool.prometheus.instrument(pool, registry=registry, namespace="db").close()
    # the failed attempt left nothing behind
    with pytest.raises(ValueError, match=r"namespace="):
        tidepool.prometheus.instrument(pool, registry=registry)


def test_a_garbage_collected_pool_leaves_the_scrape(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)
    pool = tidepool.Pool(FakeManager(), name="ephemeral")  # never opened: no warning
    instrumentation = tidepool.prometheus.instrument(pool, registry=registry)
    assert scrape().pools() == {"ephemeral"}
    del pool
    gc.collect()
    assert scrape().pools() == set()
    instrumentation.close()
    assert scrape().families == {}


def test_bad_arguments_are_refused() -> None:
    pool = tidepool.Pool(FakeManager())  # never opened
    for namespace in ("", "1db", "my-db", 3):
        with pytest.raises(tidepool.ConfigError, match="namespace must be"):
            tidepool.prometheus.instrument(pool, namespace=namespace)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry must be"):
        tidepool.prometheus.instrument(pool, registry=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tidepool\.AsyncPool or tidepool\.Pool"):
        tidepool.prometheus.instrument(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------- threads, PostgreSQL


def test_scrapes_during_concurrent_use_of_a_threaded_pool(serve: Callable[..., Any]) -> None:
    registry = CollectorRegistry()
    scrape = serve(registry)
    manager = FakeManager()
    pool = new_spool(manager, max_size=3, check="never", name="busy")
    tidepool.prometheus.instrument(pool, registry=registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not stop.is_set():
                with pool.acquire(timeout=PATIENCE):
                    pass
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(5)]
    for t in workers:
        t.start()
    try:
        for _ in range(10):
            s = scrape()
            used = s.value("tidepool_connections", pool="busy", state="used")
            assert used is not None
            assert 0 <= used <= 3
    finally:
        stop.set()
        for t in workers:
            t.join(PATIENCE)
    assert not errors
    settle_sync(pool, manager)
    stats = pool.stats()
    s = scrape()
    assert s.value("tidepool_acquires_total", pool="busy") == stats.acquired
    assert s.value("tidepool_acquire_wait_seconds_count", pool="busy") == stats.acquired
    assert s.value("tidepool_connection_use_seconds_count", pool="busy") == stats.acquired
    assert s.value("tidepool_connects_total", pool="busy") == stats.connects <= 3


def test_psycopg_pool_on_postgresql(serve: Callable[..., Any]) -> None:
    require_pg()
    registry = CollectorRegistry()
    scrape = serve(registry)
    app = app_name("prom")
    pool: tidepool.Pool[Any] = tidepool.Pool(pg_url(app, driver="psycopg"), max_size=3, name="pg")
    tidepool.prometheus.instrument(pool, registry=registry)
    with pool:
        results: list[int] = []
        lock = threading.Lock()

        def query(i: int) -> None:
            value = pool.fetch_value("SELECT %s::int FROM pg_sleep(0.05)", i)
            with lock:
                results.append(value)

        threads = [threading.Thread(target=query, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PATIENCE)
        assert sorted(results) == list(range(6))
        stats = pool.stats()
        assert wait_sessions(app, stats.size) == stats.size
        s = scrape()
        assert s.value("tidepool_connects_total", pool="pg") == stats.connects
        assert s.value("tidepool_connect_seconds_count", pool="pg") == stats.connects
        connect_sum = s.value("tidepool_connect_seconds_sum", pool="pg")
        assert connect_sum is not None
        assert connect_sum > 0
        assert s.value("tidepool_acquires_total", pool="pg") == stats.acquired
        assert s.value("tidepool_connection_use_seconds_count", pool="pg") == stats.acquired
        assert s.value("tidepool_connections", pool="pg", state="idle") == stats.idle
        assert s.value("tidepool_connections", pool="pg", state="used") == 0
    assert wait_sessions(app, 0) == 0
    s = scrape()
    assert s.closed("pg") == {"pool closed": pool.stats().connects}
    assert s.value("tidepool_connections", pool="pg", state="idle") == 0


# ---------------------------------------------------------------- import


def test_import_without_prometheus_client_names_the_extra() -> None:
    code = """
        import sys
        sys.modules["prometheus_client"] = None
        try:
            import tidepool.prometheus
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
        import tidepool
        print(tidepool.Pool.__name__)
        """
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'tidepool[prometheus]'" in done.stdout
    assert done.stdout.strip().endswith("Pool")
