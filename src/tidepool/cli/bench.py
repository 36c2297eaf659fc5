"""``tidepool bench``: size a pool from measurements, not guesswork.

The first version measures the embedded default: a temporary SQLite database seeded with a
table of 20,000 accounts (or a ``sqlite://`` URL the user names). For each pool size in ``--sizes``,
and for a baseline that opens a new connection per request, ``--concurrency`` asyncio tasks
run the workload through :class:`tidepool.AsyncPool` for ``--warmup`` + ``--duration``
seconds. Only requests that finish inside the measured window count. The output is a table
(or one JSON document) and the recommended ``max_size``: the smallest size whose throughput is
within 5 % of the best and whose p99 latency is at most 10 % worse than that of the size with
the best throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TextIO

from .. import __version__
from .._async.pool import AsyncPool
from .._url import redact_url
from ..adapters.sqlite import AsyncSQLiteConnection, AsyncSQLiteManager, SQLiteTarget
from ..errors import ConfigError, PoolError, PoolTimeout

__all__ = [
    "BenchConfig",
    "Recommendation",
    "SizeResult",
    "add_parser",
    "percentile",
    "recommend",
    "run",
]

Workload = Literal["point-select", "read-write"]
OutputFormat = Literal["table", "json"]

SCHEMA_VERSION = 1
TABLE = "tidepool_bench_accounts"
ROWS = 20_000
WRITE_SHARE = 0.2  # read-write: share of requests that are write transactions
THROUGHPUT_TOLERANCE = 0.05  # a recommended size is within 5 % of the best throughput ...
P99_TOLERANCE = 0.10  # ... and its p99 at most 10 % worse than the best size's p99
DEFAULT_SIZES = (1, 2, 4, 8, 16)
MAX_SIZE_LIMIT = 1024
MAX_CONCURRENCY = 10_000
DRAIN_GRACE = 1.0  # seconds the tasks get to finish their last request before being cancelled


# ---------------------------------------------------------------------- arguments


def _sizes(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",")]
    sizes: set[int] = set()
    for item in items:
        try:
            size = int(item)
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_SIZE_LIMIT:
            hint = " ('auto' is not supported yet)" if text.strip() == "auto" else ""
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of pool sizes from 1 to {MAX_SIZE_LIMIT} "
                f"such as 1,2,4,8, got {text!r}{hint}"
            )
        sizes.add(size)
    return tuple(sorted(sizes))


def _number(text: str, *, minimum: float, inclusive: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    return _number(text, minimum=0.0, inclusive=False, what="a number of seconds")


def _seconds(text: str) -> float:
    return _number(text, minimum=0.0, inclusive=True, what="a number of seconds")


def _milliseconds(text: str) -> float:
    return _number(text, minimum=0.0, inclusive=True, what="a number of milliseconds")


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(
            f"expected a number of tasks from 1 to {MAX_CONCURRENCY}, got {text!r}"
        )
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``sub`` (what ``add_subparsers()`` returned)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="load-test a database through pools of several sizes and recommend one",
        description=(
            "Run a concurrent workload through tidepool.AsyncPool for each pool size, and "
            "once with a new connection per request, then print throughput, latency and "
            "acquire wait per size and the size to use. With no URL: a temporary SQLite "
            "database seeded with 20,000 rows."
        ),
    )
    parser.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="database to measure; only sqlite:// so far (default: a temporary SQLite file)",
    )
    parser.add_argument(
        "--workload",
        choices=("point-select", "read-write"),
        default="read-write",
        help="point-select: primary-key lookups; read-write: 80%% lookups, 20%% short "
        "write transactions (default: read-write)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=DEFAULT_SIZES,
        metavar="N,N,...",
        help="pool sizes to measure (default: 1,2,4,8,16)",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=64,
        metavar="N",
        help="concurrent asyncio tasks issuing requests (default: 64)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="measured time per size (default: 2.0)",
    )
    parser.add_argument(
        "--warmup",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="unmeasured time before each measurement (default: 0.5)",
    )
    parser.add_argument(
        "--work-ms",
        type=_milliseconds,
        default=0.0,
        metavar="MS",
        help="simulated application time per request (default: 0)",
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="hold the connection during --work-ms (default: work before acquiring)",
    )
    parser.add_argument(
        "--acquire-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="acquire deadline; requests that miss it count as timeouts (default: 10)",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: plain text; json: one JSON document on stdout (default: table)",
    )
    return parser


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure, validated."""

    url: str | None
    workload: Workload
    sizes: tuple[int, ...]
    concurrency: int
    duration: float
    warmup: float
    work_ms: float
    hold: bool
    acquire_timeout: float
    format: OutputFormat

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        return cls(
            url=args.url,
            workload=args.workload,
            sizes=tuple(args.sizes),
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            work_ms=args.work_ms,
            hold=args.hold,
            acquire_timeout=args.acquire_timeout,
            format=args.format,
        )


# ---------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``; ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class _Samples:
    latencies: list[float] = field(default_factory=list)  # seconds, whole request
    waits: list[float] = field(default_factory=list)  # seconds, getting the connection
    timeouts: int = 0
    errors: int = 0
    first_error: str | None = None

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}".splitlines()[0]


@dataclass(frozen=True, slots=True)
class SizeResult:
    """The measurement of one pool size (``size`` is ``None`` for the no-pool baseline)."""

    label: str
    size: int | None
    requests: int
    req_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    p99_wait_ms: float | None
    timeouts: int
    errors: int
    first_error: str | None

    @classmethod
    def of(cls, size: int | None, samples: _Samples, duration: float) -> SizeResult:
        def ms(p: float, values: list[float]) -> float | None:
            value = percentile(values, p)
            return None if value is None else round(value * 1000.0, 3)

        lat = samples.latencies
        return cls(
            label="no pool" if size is None else str(size),
            size=size,
            requests=len(lat),
            req_per_s=round(len(lat) / duration, 1),
            p50_ms=ms(50, lat),
            p95_ms=ms(95, lat),
            p99_ms=ms(99, lat),
            p99_wait_ms=ms(99, samples.waits),
            timeouts=samples.timeouts,
            errors=samples.errors,
            first_error=samples.first_error,
        )


@dataclass(frozen=True, slots=True)
class Recommendation:
    size: int
    best_size: int
    reason: str


class _Candidate(NamedTuple):
    size: int
    req_per_s: float
    p99_ms: float


def recommend(results: Sequence[SizeResult]) -> Recommendation | None:
    """The smallest size within 5 % of the best throughput whose p99 is at most 10 % worse
    than the best-throughput size's p99. Sizes with timeouts or errors are left out unless
    every size had some. ``None`` when no size completed a request."""
    measured = [r for r in results if r.size is not None and r.p99_ms is not None]
    usable = [r for r in measured if r.timeouts == 0 and r.errors == 0] or measured
    pool = [
        _Candidate(r.size, r.req_per_s, r.p99_ms)
        for r in usable
        if r.size is not None and r.p99_ms is not None
    ]
    if not pool:
        return None
    best = max(pool, key=lambda c: (c.req_per_s, -c.size))
    min_rps = (1.0 - THROUGHPUT_TOLERANCE) * best.req_per_s
    max_p99 = (1.0 + P99_TOLERANCE) * best.p99_ms
    ok = [c for c in pool if c.req_per_s >= min_rps and c.p99_ms <= max_p99]
    chosen = min(ok, key=lambda c: c.size)
    if chosen == best:
        smaller = [c for c in pool if c.size < best.size]
        why = f"the best throughput ({best.req_per_s:,.0f} req/s)"
        if not smaller:
            why += ", at the smallest size measured"
        else:
            below = max(smaller, key=lambda c: c.size)
            if below.req_per_s < min_rps:
                share = math.floor(below.req_per_s / best.req_per_s * 100)
                why += f"; size {below.size} reached only {share}% of it"
            else:
                worse = math.ceil((below.p99_ms / best.p99_ms - 1.0) * 100)
                why += f"; size {below.size} had a p99 {worse}% worse"
    else:
        share = math.floor(chosen.req_per_s / best.req_per_s * 100)
        lowest = min(c.p99_ms for c in ok)
        p99 = (
            "the lowest p99"
            if chosen.p99_ms <= lowest
            else f"a p99 within {P99_TOLERANCE:.0%} of size {best.size}'s"
        )
        why = (
            f"{share}% of the best throughput (size {best.size}) with {p99} "
            f"({chosen.p99_ms:.2f} ms vs {best.p99_ms:.2f} ms)"
        )
    if chosen == best and len(pool) > 1 and best.size == max(c.size for c in pool):
        why += "; the largest size measured: try larger --sizes"
    baseline = next((r for r in results if r.size is None and r.req_per_s > 0), None)
    if baseline is not None:
        why += f"; {chosen.req_per_s / baseline.req_per_s:.1f}x the no-pool throughput"
    return Recommendation(size=chosen.size, best_size=best.size, reason=why)


# ---------------------------------------------------------------------- the workload
# Plain functions of the raw sqlite3 connection, each run in one hop on the connection's
# own thread (so a write transaction holds SQLite's write lock as briefly as possible).


def _point_select(raw: sqlite3.Connection, key: int) -> Any:
    return raw.execute(
        f"SELECT id, name, balance, updated_at FROM {TABLE} WHERE id = ?", (key,)
    ).fetchone()


def _update_balance(raw: sqlite3.Connection, key: int, delta: int, now: float) -> Any:
    raw.execute("BEGIN IMMEDIATE")
    try:
        raw.execute(
            f"UPDATE {TABLE} SET balance = balance + ?, updated_at = ? WHERE id = ?",
            (delta, now, key),
        )
        row = raw.execute(f"SELECT balance FROM {TABLE} WHERE id = ?", (key,)).fetchone()
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    return row


def _seed(raw: sqlite3.Connection, rows: int) -> None:
    raw.execute(f"DROP TABLE IF EXISTS {TABLE}")
    raw.execute(
        f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "balance INTEGER NOT NULL, updated_at REAL NOT NULL)"
    )
    rng = random.Random(42)
    now = time.time()
    raw.execute("BEGIN")
    raw.executemany(
        f"INSERT INTO {TABLE} (id, name, balance, updated_at) VALUES (?, ?, ?, ?)",
        (
            (i, f"account-{i:06d}", rng.randrange(0, 1_000_000), now - rng.random() * 86_400)
            for i in range(1, rows + 1)
        ),
    )
    raw.execute("COMMIT")


class _Workload:
    """One request's database work, chosen at random per the workload's mix."""

    def __init__(self, config: BenchConfig, rows: int) -> None:
        self._rows = rows
        self._write_share = WRITE_SHARE if config.workload == "read-write" else 0.0
        self._rng = random.Random(7)

    async def __call__(self, conn: AsyncSQLiteConnection) -> None:
        rng = self._rng
        key = rng.randint(1, self._rows)
        if rng.random() < self._write_share:
            await conn.run(_update_balance, key, rng.randint(-100, 100), time.time())
        else:
            await conn.run(_point_select, key)


# ---------------------------------------------------------------------- the measurement

# One request: returns the seconds spent getting the connection; raises on failure.
_Request = Callable[[], Awaitable[float]]


@dataclass(slots=True)
class _Window:
    begin: float
    end: float
    stop: bool = False


async def _worker(request: _Request, window: _Window, samples: _Samples) -> None:
    clock = time.perf_counter
    while not window.stop:
        t0 = clock()
        try:
            wait = await request()
        except (PoolTimeout, TimeoutError):
            if window.begin <= clock() <= window.end:
                samples.timeouts += 1
            continue
        except Exception as exc:
            if window.begin <= clock() <= window.end:
                samples.failed(exc)
            await asyncio.sleep(0)  # a failing request must not starve the event loop
            continue
        t1 = clock()
        if window.begin <= t1 <= window.end:
            samples.latencies.append(t1 - t0)
            samples.waits.append(wait)


async def _measure(config: BenchConfig, request: _Request) -> _Samples:
    """Run ``config.concurrency`` tasks issuing requests for warmup + duration; keep the
    samples of the requests that finished inside the measured window."""
    samples = _Samples()
    now = time.perf_counter()
    window = _Window(begin=now + config.warmup, end=now + config.warmup + config.duration)
    tasks = [
        asyncio.create_task(_worker(request, window, samples), name=f"bench-{i}")
        for i in range(config.concurrency)
    ]
    try:
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    finally:
        window.stop = True
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def _pooled(
    pool: AsyncPool[AsyncSQLiteConnection], work: _Workload, config: BenchConfig
) -> _Request:
    clock = time.perf_counter
    app_s = config.work_ms / 1000.0
    hold = config.hold

    async def request() -> float:
        if app_s and not hold:
            await asyncio.sleep(app_s)
        t0 = clock()
        async with pool.acquire() as conn:
            wait = clock() - t0
            await work(conn)
            if app_s and hold:
                await asyncio.sleep(app_s)
        return wait

    return request


def _unpooled(manager: AsyncSQLiteManager, work: _Workload, config: BenchConfig) -> _Request:
    clock = time.perf_counter
    app_s = config.work_ms / 1000.0
    hold = config.hold
    timeout = config.acquire_timeout

    async def request() -> float:
        if app_s and not hold:
            await asyncio.sleep(app_s)
        t0 = clock()
        async with asyncio.timeout(timeout):
            conn = await manager.connect()
        wait = clock() - t0
        try:
            await work(conn)
            if app_s and hold:
                await asyncio.sleep(app_s)
        finally:
            await manager.close(conn)
        return wait

    return request


class _BenchFailure(Exception):
    """The benchmark could not run (exit code 1); the message is one line for the user."""


class _UsageError(Exception):
    """The arguments cannot be used (exit code 2); the message is one line for the user."""


class _Progress:
    """Progress lines on stderr, only when it is a terminal (stdout stays clean)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False

    def start(self, text: str) -> None:
        if self.enabled:
            self._stream.write(f"{text} ...")
            self._stream.flush()

    def done(self, text: str = "done") -> None:
        if self.enabled:
            self._stream.write(f" {text}\n")
            self._stream.flush()


async def _measure_all(
    config: BenchConfig, target: SQLiteTarget, progress: _Progress
) -> list[SizeResult]:
    work = _Workload(config, ROWS)
    results: list[SizeResult] = []

    def finish(result: SizeResult) -> None:
        results.append(result)
        extra = f", {result.timeouts} timeouts" if result.timeouts else ""
        extra += f", {result.errors} errors" if result.errors else ""
        progress.done(f"{result.req_per_s:,.0f} req/s{extra}")

    progress.start("measuring no pool (a new connection per request)")
    baseline = AsyncSQLiteManager(target)
    try:
        samples = await _measure(config, _unpooled(baseline, work, config))
    finally:
        await baseline.dispose()
    finish(SizeResult.of(None, samples, config.duration))

    for size in config.sizes:
        progress.start(f"measuring size {size}")
        pool = AsyncPool(
            AsyncSQLiteManager(target),
            max_size=size,
            min_size=size,
            acquire_timeout=config.acquire_timeout,
            name=f"bench-{size}",
        )
        try:
            try:
                await pool.open()
            except Exception as exc:
                progress.done("failed")
                raise _BenchFailure(f"cannot open a pool of size {size}: {exc}") from exc
            samples = await _measure(config, _pooled(pool, work, config))
        finally:
            await pool.aclose()
        finish(SizeResult.of(size, samples, config.duration))
    return results


# ---------------------------------------------------------------------- running it


def run(args: argparse.Namespace) -> int:
    """Run ``tidepool bench`` with parsed arguments; return the exit code."""
    config = BenchConfig.from_args(args)
    try:
        return _run(config)
    except _UsageError as exc:
        print(f"tidepool bench: error: {exc}", file=sys.stderr)
        return 2
    except _BenchFailure as exc:
        print(f"tidepool bench: {exc}", file=sys.stderr)
        return 1
    except (PoolError, sqlite3.Error, OSError) as exc:
        print(f"tidepool bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tidepool bench: interrupted", file=sys.stderr)
        return 130


def _target(url: str) -> SQLiteTarget:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme.partition("+")[0] != "sqlite":
        shown = redact_url(url)
        kind = f"a {scheme}:// URL" if scheme else "a URL without a scheme"
        raise _UsageError(
            f"only SQLite is supported so far, got {kind} ({shown!r}); run without a URL "
            "for a temporary SQLite database, or pass sqlite:///path/to/file.db"
        )
    try:
        return SQLiteTarget.from_url(url)
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None


def _run(config: BenchConfig) -> int:
    progress = _Progress(sys.stderr)
    if config.url is not None:
        return _bench(config, _target(config.url), redact_url(config.url), progress)
    with tempfile.TemporaryDirectory(prefix="tidepool-bench-") as tmp:
        path = Path(tmp, "bench.db").resolve().as_posix()
        target = SQLiteTarget.from_url(f"sqlite:///{path}")
        return _bench(config, target, "a temporary SQLite file", progress)


def _bench(config: BenchConfig, target: SQLiteTarget, database: str, progress: _Progress) -> int:
    progress.start(f"seeding {ROWS:,} rows into {TABLE} in {database}")
    try:
        # Kept open for the whole run: the database (and its WAL) lives on between sizes,
        # as a server would, and a shared in-memory database is not dropped.
        keeper = target.open({})
    except (sqlite3.Error, PoolError, OSError) as exc:
        progress.done("failed")
        raise _BenchFailure(f"cannot open {database}: {exc}") from exc
    try:
        try:
            _seed(keeper, ROWS)
        except sqlite3.Error as exc:
            progress.done("failed")
            raise _BenchFailure(f"cannot create the table {TABLE} in {database}: {exc}") from exc
        progress.done()
        results = asyncio.run(_measure_all(config, target, progress))
    finally:
        try:
            if keeper.in_transaction:
                keeper.rollback()
            keeper.execute(f"DROP TABLE IF EXISTS {TABLE}")
        except sqlite3.Error:
            pass
        keeper.close()
    recommendation = recommend(results)
    env = environment()
    if config.format == "json":
        document = report(config, database, env, results, recommendation)
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render_table(config, database, env, results, recommendation))
    sys.stdout.flush()
    return 0 if recommendation is not None else 1


# ---------------------------------------------------------------------- output


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tidepool": __version__,
    }


def report(
    config: BenchConfig,
    database: str,
    env: dict[str, Any],
    results: Sequence[SizeResult],
    recommendation: Recommendation | None,
) -> dict[str, Any]:
    """The JSON document: config, environment, per-size results and the recommendation."""
    settings = asdict(config)
    settings["url"] = None if config.url is None else redact_url(config.url)
    settings["sizes"] = list(config.sizes)
    settings.update(database=database, table=TABLE, rows=ROWS)
    settings["write_share"] = WRITE_SHARE if config.workload == "read-write" else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "config": settings,
        "environment": env,
        "results": [asdict(r) for r in results],
        "recommendation": None if recommendation is None else asdict(recommendation),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(
    config: BenchConfig,
    database: str,
    env: dict[str, Any],
    results: Sequence[SizeResult],
    recommendation: Recommendation | None,
) -> str:
    """The plain-text report: what was measured, the table, the recommendation."""
    work = ""
    if config.work_ms:
        where = "holding the connection" if config.hold else "not holding the connection"
        work = f", {config.work_ms:g} ms of app work per request ({where})"
    lines = [
        f"tidepool bench: {config.workload} on {database} ({ROWS:,} rows), "
        f"concurrency {config.concurrency}, {config.duration:g} s per size "
        f"after {config.warmup:g} s warmup{work}",
        f"python {env['python']}, SQLite {env['sqlite']}, {env['cpu_count']} CPUs, "
        f"tidepool {env['tidepool']}",
        "",
    ]
    header = ("size", "req/s", "p50 ms", "p99 ms", "p99 wait ms", "timeouts")
    rows = [
        (
            r.label,
            f"{r.req_per_s:.0f}",
            _ms(r.p50_ms),
            _ms(r.p99_ms),
            _ms(r.p99_wait_ms),
            str(r.timeouts),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    lines.append(line(header))
    lines.extend(line(row) for row in rows)
    lines.append("")
    for r in results:
        if r.errors:
            what = "no pool" if r.size is None else f"size {r.size}"
            lines.append(f"note: {what}: {r.errors} requests failed ({r.first_error})")
    if recommendation is None:
        lines.append("recommended: none (no pool size completed a request)")
    else:
        lines.append(f"recommended: max_size={recommendation.size}")
        lines.append(f"why: size {recommendation.size}: {recommendation.reason}")
    return "\n".join(lines) + "\n"
