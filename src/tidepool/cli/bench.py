"""``tidepool bench``: size a pool from measurements, not guesswork.

With no URL the tool measures the embedded default: a temporary SQLite database seeded with a
table of 20,000 accounts. With a ``sqlite://`` or ``postgresql://`` URL it measures that
database through the adapter users run (SQLite's, asyncpg, or psycopg with
``postgresql+psycopg://``), seeding its own tables under a unique name and dropping them at the
end. For each pool size in ``--sizes`` (or a doubling sweep with ``auto``), and for a baseline
that opens a new connection per request, ``--concurrency`` asyncio tasks per instance run the
workload through :class:`tidepool.AsyncPool` for ``--warmup`` + ``--duration`` seconds. Only
requests that finish inside the measured window count. The output is a table, one JSON
document or CSV, and the recommended ``max_size``: the smallest size whose throughput is
within 5 % of the best and whose p99 latency is at most 10 % worse than that of the size with
the best throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .._async.pool import AsyncPool
from ..errors import PoolError, PoolTimeout
from .common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandError,
    Progress,
    connect_failure,
    scrub,
)
from .targets import ROWS, WRITE_SHARE, ServerInfo, Target, Work, open_target

__all__ = [
    "BenchConfig",
    "Recommendation",
    "SizeResult",
    "add_parser",
    "auto_next",
    "percentile",
    "recommend",
    "run",
]

Workload = Literal["point-select", "read-write", "query"]
OutputFormat = Literal["table", "json", "csv"]

THROUGHPUT_TOLERANCE = 0.05  # a recommended size is within 5 % of the best throughput ...
P99_TOLERANCE = 0.10  # ... and its p99 at most 10 % worse than the best size's p99
DEFAULT_SIZES = (1, 2, 4, 8, 16)
MAX_SIZE_LIMIT = 1024
AUTO_MAX_SIZE = 256  # the auto sweep never goes past this size ...
AUTO_MAX_STEPS = 9  # ... nor measures more sizes than this
MAX_CONCURRENCY = 10_000
MAX_INSTANCES = 64
DRAIN_GRACE = 1.0  # seconds the tasks get to finish their last request before being cancelled
SAMPLE_EVERY = 0.2  # seconds between two looks at the server's session count
SPINDLES = 1  # HikariCP's formula: one "spindle" for an SSD-backed server


# ---------------------------------------------------------------------- arguments


def _sizes(text: str) -> tuple[int, ...] | Literal["auto"]:
    if text.strip().lower() == "auto":
        return "auto"
    items = [item.strip() for item in text.split(",")]
    sizes: set[int] = set()
    for item in items:
        try:
            size = int(item)
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_SIZE_LIMIT:
            raise argparse.ArgumentTypeError(
                f"expected 'auto' or a comma-separated list of pool sizes from 1 to "
                f"{MAX_SIZE_LIMIT} such as 1,2,4,8, got {text!r}"
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


def _int_range(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what} from {low} to {high}, got {text!r}")
    return value


def _concurrency(text: str) -> int:
    return _int_range(text, 1, MAX_CONCURRENCY, "a number of tasks")


def _instances(text: str) -> int:
    return _int_range(text, 1, MAX_INSTANCES, "a number of instances")


def _query(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected an SQL statement, got an empty string")
    return text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``sub`` (what ``add_subparsers()`` returned)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="load-test a database through pools of several sizes and recommend one",
        description=(
            "Run a concurrent workload through tidepool.AsyncPool for each pool size, and "
            "once with a new connection per request, then print throughput, latency, acquire "
            "wait and server-side connections per size, and the size to use. With no URL: a "
            "temporary SQLite database seeded with 20,000 rows. With a URL, the tool creates "
            "its tables under a unique name and drops them at the end."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="database to measure: sqlite:///path.db, postgresql://user@host:5432/db "
        "(+asyncpg or +psycopg to choose the driver), mysql:// or mariadb://..., redis:// or "
        "rediss://...; default: a temporary SQLite file",
    )
    parser.add_argument(
        "--workload",
        choices=("point-select", "read-write"),
        default="read-write",
        help="point-select: primary-key lookups; read-write: 80%% lookups, 20%% write "
        "transactions (update, select, insert into a history table), like pgbench "
        "(default: read-write)",
    )
    parser.add_argument(
        "--query",
        type=_query,
        metavar="SQL",
        help="run this statement per request instead of a workload (no parameters; on a "
        "URL nothing is seeded)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=DEFAULT_SIZES,
        metavar="N,N,...|auto",
        help="pool sizes to measure, or auto: 1, 2, 4, ... until throughput falls more than "
        f"5%% below the best or stops improving twice (at most {AUTO_MAX_STEPS} sizes, "
        "up to --concurrency and the server's free connections) (default: 1,2,4,8,16)",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=64,
        metavar="N",
        help="concurrent asyncio tasks issuing requests, per instance (default: 64)",
    )
    parser.add_argument(
        "--instances",
        type=_instances,
        default=1,
        metavar="K",
        help="application instances that will share the server: K pools of each size run "
        "side by side (in this process) and the connection limit is checked for "
        "size * K (default: 1)",
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
        choices=("table", "json", "csv"),
        default="table",
        help="table: plain text; json: one JSON document on stdout (schema: "
        "tidepool/cli/schema/bench.schema.json); csv: one row per size (default: table)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw throughput and p99 latency against pool size into FILE.png "
        "(needs matplotlib: pip install 'tidepool[cli]')",
    )
    return parser


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure, validated."""

    url: str | None
    workload: Workload
    query: str | None
    sizes: tuple[int, ...] | Literal["auto"]
    concurrency: int
    instances: int
    duration: float
    warmup: float
    work_ms: float
    hold: bool
    acquire_timeout: float
    format: OutputFormat
    plot: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        return cls(
            url=args.url,
            workload="query" if args.query is not None else args.workload,
            query=args.query,
            sizes=args.sizes,
            concurrency=args.concurrency,
            instances=args.instances,
            duration=args.duration,
            warmup=args.warmup,
            work_ms=args.work_ms,
            hold=args.hold,
            acquire_timeout=args.acquire_timeout,
            format=args.format,
            plot=args.plot,
        )

    @property
    def write_share(self) -> float:
        return WRITE_SHARE if self.workload == "read-write" else 0.0


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
    server_connections: int | None = None  # most server-side sessions seen (PostgreSQL)

    @classmethod
    def of(
        cls,
        size: int | None,
        samples: _Samples,
        duration: float,
        server_connections: int | None = None,
    ) -> SizeResult:
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
            server_connections=server_connections,
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


# ---------------------------------------------------------------------- sizing advice


def auto_next(measured: Sequence[SizeResult], cap: int) -> int | None:
    """The next size of the ``auto`` sweep after ``measured`` (in order), or ``None`` to stop.

    The sweep doubles from 1 and stops once a size's throughput falls more than 5 % below the
    best so far, or the last two sizes both failed to beat the best before them by 5 % (a
    plateau), or after ``AUTO_MAX_STEPS`` sizes, or at ``cap``.
    """
    pooled = [r for r in measured if r.size is not None]
    if not pooled:
        return 1 if cap >= 1 else None
    last = pooled[-1]
    assert last.size is not None
    if len(pooled) >= AUTO_MAX_STEPS or last.size >= cap:
        return None
    best = max(r.req_per_s for r in pooled)
    if last.req_per_s < (1.0 - THROUGHPUT_TOLERANCE) * best:
        return None
    if len(pooled) >= 3:
        before = max(r.req_per_s for r in pooled[:-2])
        if all(r.req_per_s < (1.0 + THROUGHPUT_TOLERANCE) * before for r in pooled[-2:]):
            return None
    return min(last.size * 2, cap)


@dataclass(frozen=True, slots=True)
class Hikari:
    """HikariCP's starting point ``cores * 2 + spindles`` (``size`` is ``None``: unknown)."""

    cores: int | None
    spindles: int
    size: int | None
    note: str


def hikari(info: ServerInfo) -> Hikari:
    if info.cores is None:
        return Hikari(None, SPINDLES, None, "server cores unknown (not a local server)")
    size = info.cores * 2 + SPINDLES
    where = "this machine's: the server is local" if info.local else "reported"
    return Hikari(
        info.cores,
        SPINDLES,
        size,
        f"cores * 2 + spindles = {info.cores} * 2 + {SPINDLES} "
        f"({info.cores} cores, {where}; {SPINDLES} spindle assumed)",
    )


def limit_warning(size: int, instances: int, info: ServerInfo) -> str | None:
    """A warning when ``size * instances`` connections would not fit on the server."""
    if info.max_connections is None or info.connections_available is None:
        return None
    need = size * instances
    reserved = info.reserved_connections or 0
    usable = info.max_connections - reserved
    # The tool's own admin connection counts in connections_in_use and leaves with it.
    others = max(0, (info.connections_in_use or 0) - 1)
    free = max(0, usable - others)
    if need <= free:
        return None
    what = f"max_size={size}" + (f" x {instances} instances" if instances > 1 else "")
    return (
        f"{what} = {need} connections, but the server allows {usable} "
        f"(max_connections {info.max_connections} minus {reserved} reserved) and {others} are "
        f"in use by others: {free} free"
    )


@dataclass(slots=True)
class Outcome:
    """Everything one run measured and concluded (what the renderers show)."""

    config: BenchConfig
    database: str
    kind: str
    driver: str
    table: str | None
    rows: int | None
    server: ServerInfo
    results: list[SizeResult] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    recommendation: Recommendation | None = None
    hikari: Hikari | None = None
    warnings: list[str] = field(default_factory=list)


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
            await asyncio.sleep(0.001)  # a failing request must not starve the event loop
            continue
        t1 = clock()
        if window.begin <= t1 <= window.end:
            samples.latencies.append(t1 - t0)
            samples.waits.append(wait)


async def _measure(
    config: BenchConfig,
    requests: Sequence[_Request],
    target: Target,
    progress: Progress,
) -> tuple[_Samples, int | None]:
    """Run ``concurrency * instances`` tasks issuing requests for warmup + duration; keep
    the samples of the requests that finished inside the measured window, and the most
    server-side sessions seen during it."""
    samples = _Samples()
    start = time.perf_counter()
    window = _Window(begin=start + config.warmup, end=start + config.warmup + config.duration)
    tasks = [
        asyncio.create_task(_worker(requests[i % len(requests)], window, samples), name=f"b-{i}")
        for i in range(config.concurrency * config.instances)
    ]
    peak: int | None = None
    total = config.warmup + config.duration
    try:
        while (now := time.perf_counter()) < window.end:
            if now >= window.begin:
                try:
                    seen = await target.sessions()
                except Exception:
                    seen = None
                if seen is not None:
                    peak = seen if peak is None else max(peak, seen)
            phase = "warmup" if now < window.begin else f"{len(samples.latencies):,} requests"
            progress.update(f"{now - start:.1f}/{total:.1f} s, {phase}")
            await asyncio.sleep(max(0.0, min(SAMPLE_EVERY, window.end - time.perf_counter())))
    finally:
        window.stop = True
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples, peak


def _pooled(pool: AsyncPool[Any], work: Work, config: BenchConfig) -> _Request:
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


def _unpooled(manager: Any, work: Work, config: BenchConfig) -> _Request:
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


def _finish(progress: Progress, result: SizeResult) -> None:
    extra = f", {result.timeouts} timeouts" if result.timeouts else ""
    extra += f", {result.errors} errors" if result.errors else ""
    progress.done(f"{result.req_per_s:,.0f} req/s{extra}")


async def _measure_size(
    config: BenchConfig, target: Target, work: Work, size: int, progress: Progress
) -> SizeResult:
    progress.start(
        f"measuring size {size}" + (f" x {config.instances}" if config.instances > 1 else "")
    )
    pools: list[AsyncPool[Any]] = [
        AsyncPool(
            target.manager(),
            max_size=size,
            min_size=size,
            acquire_timeout=config.acquire_timeout,
            name=f"bench-{size}-{i}",
        )
        for i in range(config.instances)
    ]
    try:
        try:
            await asyncio.gather(*(pool.open() for pool in pools))
        except (PoolError, OSError) as exc:
            progress.done("failed")
            failure = connect_failure(exc, target.display, target.secrets)
            raise CommandError(f"size {size}: {failure}", failure.code) from None
        requests = [_pooled(pool, work, config) for pool in pools]
        samples, peak = await _measure(config, requests, target, progress)
    finally:
        for pool in pools:
            await pool.aclose()
    result = SizeResult.of(size, samples, config.duration, peak)
    _finish(progress, result)
    return result


async def _measure_baseline(
    config: BenchConfig, target: Target, work: Work, progress: Progress
) -> SizeResult:
    progress.start("measuring no pool (a new connection per request)")
    manager = target.manager()
    try:
        samples, peak = await _measure(config, [_unpooled(manager, work, config)], target, progress)
    finally:
        await target.dispose(manager)
    result = SizeResult.of(None, samples, config.duration, peak)
    _finish(progress, result)
    return result


async def _measure_all(
    config: BenchConfig, target: Target, outcome: Outcome, progress: Progress
) -> None:
    rows = outcome.rows or ROWS
    work = target.work(config.workload, config.query, rows, seed=7)
    outcome.results.append(await _measure_baseline(config, target, work, progress))
    info = target.info
    free = None
    if info.connections_available is not None:
        free = info.connections_available // config.instances
    if config.sizes == "auto":
        cap = min(AUTO_MAX_SIZE, max(1, config.concurrency))
        if free is not None:
            cap = min(cap, free)
        size = auto_next([], cap)
        while size is not None:
            outcome.results.append(await _measure_size(config, target, work, size, progress))
            size = auto_next(outcome.results, cap)
        return
    for size in config.sizes:
        if free is not None and size > free:
            outcome.skipped.append(
                (
                    size,
                    f"needs {size * config.instances} connections; the server has "
                    f"{info.connections_available} free",
                )
            )
            continue
        outcome.results.append(await _measure_size(config, target, work, size, progress))


async def _bench(config: BenchConfig, target: Target, progress: Progress) -> Outcome:
    progress.start(f"connecting to {target.display}")
    await target.open_admin()
    progress.done(f"{target.info.kind} {target.info.version}")
    try:
        seeded = config.query is None or config.url is None
        if seeded:
            progress.start(f"seeding {ROWS:,} rows")
            await target.seed(ROWS)
            progress.done()
        outcome = Outcome(
            config=config,
            database=target.display,
            kind=target.kind,
            driver=target.driver,
            table=target.table if seeded else None,
            rows=ROWS if seeded else None,
            server=target.info,
        )
        try:
            await _measure_all(config, target, outcome, progress)
        finally:
            await target.drop()
    finally:
        await target.close_admin()
    outcome.recommendation = recommend(outcome.results)
    outcome.hikari = hikari(target.info)
    for size, why in outcome.skipped:
        outcome.warnings.append(f"size {size} not measured: {why}")
    for r in outcome.results:
        if r.errors:
            what = "no pool" if r.size is None else f"size {r.size}"
            outcome.warnings.append(f"{what}: {r.errors} requests failed ({r.first_error})")
    if outcome.recommendation is not None:
        warning = limit_warning(outcome.recommendation.size, config.instances, target.info)
        if warning is not None:
            outcome.warnings.append(warning)
    return outcome


# ---------------------------------------------------------------------- running it


def run(args: argparse.Namespace) -> int:
    """Run ``tidepool bench`` with parsed arguments; return the exit code."""
    config = BenchConfig.from_args(args)
    try:
        return _run(config)
    except CommandError as exc:
        print(f"tidepool bench: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("tidepool bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(config: BenchConfig) -> int:
    from . import render

    if config.plot is not None:
        render.require_matplotlib()
    progress = Progress(sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tidepool-bench-") as tmp:
        path = Path(tmp, "bench.db").resolve().as_posix()
        target = open_target(config.url, path)
        try:
            outcome = asyncio.run(_bench(config, target, progress))
        except (PoolError, OSError) as exc:
            progress.done("failed")
            message = scrub(f"failed: {type(exc).__name__}: {exc}", target.secrets)
            raise CommandError(message) from None
    render.write(outcome, sys.stdout)
    if config.plot is not None:
        render.plot(outcome, config.plot)
    return EXIT_OK if outcome.recommendation is not None else EXIT_FAILURE
