"""The soak run: a mixed workload against a private PostgreSQL, with faults injected at random,
invariants checked continuously, and one report at the end (issue 4, item 4).

Run it with ``python tests/faults/soak.py``. Environment:

``SOAK_SECONDS``        how long the workload runs (default 120)
``SOAK_SEED``           seed of the random choices (default: from the clock; the report says it)
``SOAK_JSON``           also write the report as JSON to this path
``SOAK_RESTART_EVERY``  seconds between fast restarts of the cluster (default 20)

Three pools run at once in one process, each with its own ``application_name``, all reaching a
private cluster (never the shared server) through one chaos proxy: ``AsyncPool`` on asyncpg and
on psycopg (32 tasks each) and ``Pool`` on psycopg (8 threads). The tasks and threads borrow
connections for probes (a unique value plus the session's state: each caller checks it got its
own value back and a clean session), executor calls, transactions (some rolled back on
purpose; every outcome is checked against the table at the end), session dirtying (settings,
temp table, advisory lock, prepared statement, LISTEN, an abandoned transaction) and slow
queries; async callers are also cancelled at random and run under short deadlines.

Every 1-4 s one fault: ``pg_terminate_backend`` of one or all sessions of a pool, a proxy stall,
reset, refusal or latency, a frozen backend, a storm of cancellations, and now and then a fast
restart of the cluster. A stall swallows bytes, so a connection that talked during it is
silently dead afterwards: like TCP keepalive would, the proxy resets such connections a few
seconds after the stall (a blocking ``Pool`` caller has no other way out of a dead socket).

Every 100 ms each pool's ``stats()`` is checked (size <= max_size, idle + in_use + connecting ==
size, no negative count, counters never go back, waiting <= callers, connecting <=
max_connecting), and every acquire and release is timed against its bound. At the end the
faults stop, each pool must lend ``max_size`` distinct sessions at once, settle (nobody waiting
or connecting, server sessions == size) and close without leaving a session, thread or task.

Exit status 0 only when there are no invariant violations, no wrong rows or dirty sessions and
no leaked connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE), str(_HERE.parent)):  # tests/ first (its conftest), then the toolkit
    while _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

from pgcluster import PG_BIN, PrivateCluster, _run  # noqa: E402
from proxy import ChaosProxy  # noqa: E402
from psycopg import pq  # noqa: E402

import tidepool  # noqa: E402

T = TypeVar("T")
monotonic = time.monotonic

# ---------------------------------------------------------------- knobs

OP_BOUND = 5.0  # every async operation runs under this deadline (a real app's request bound)
HANG_AFTER = 15.0  # an operation still running this long after its start is a hang
REAP_AFTER = 6.0  # "keepalive": reset connections that lost bytes in a stall this much later
CHECK_EVERY = 0.1  # the invariant checker's period
ACQUIRE_SLACK = 2.0  # scheduling slack over acquire_timeout on a loaded machine
ACQUIRE_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0
RELEASE_BOUND = 2 * CONNECT_TIMEOUT + 3.0  # reset (bounded) then close (bounded), plus slack
CANCEL_RATE = 0.05  # share of async operations cancelled at a random point
LOGGERS = ("tidepool", "psycopg", "asyncpg")  # counted in the report, not printed


@dataclass(frozen=True)
class Spec:
    """One pool under soak."""

    id: str
    scheme: str
    sync: bool
    asyncpg: bool
    callers: int
    max_size: int


SPECS = (
    Spec("asyncpg", "postgresql+asyncpg", sync=False, asyncpg=True, callers=32, max_size=8),
    Spec("psycopg-async", "postgresql+psycopg", sync=False, asyncpg=False, callers=32, max_size=8),
    Spec("psycopg-sync", "postgresql", sync=True, asyncpg=False, callers=8, max_size=6),
)
POOL_OPTIONS: dict[str, Any] = {
    "min_size": 2,
    "acquire_timeout": ACQUIRE_TIMEOUT,
    "connect_timeout": CONNECT_TIMEOUT,
    "idle_timeout": 15.0,
    "max_lifetime": 30.0,
}
COUNTERS = (
    "acquired",
    "waited",
    "timeouts",
    "connects",
    "connect_errors",
    "closed",
    "check_failures",
    "reset_failures",
    "reclaimed",
)

# Violations: CORRECTNESS kinds are a caller seeing what is not its own; the rest break the
# pool's invariants or bounds. Both must stay at 0.
CORRECTNESS = frozenset(
    {"wrong_rows", "dirty_session", "lost_commit", "phantom_rows", "foreign_cancel"}
)


@dataclass(frozen=True)
class Config:
    seconds: float
    seed: int
    json_path: str | None
    restart_every: float

    @classmethod
    def from_env(cls) -> Config:
        seed_text = os.environ.get("SOAK_SEED", "")
        seed = int(seed_text) if seed_text else int(time.time() * 1000) % 1_000_000
        return cls(
            seconds=float(os.environ.get("SOAK_SECONDS", "120")),
            seed=seed,
            json_path=os.environ.get("SOAK_JSON") or None,
            restart_every=float(os.environ.get("SOAK_RESTART_EVERY", "20")),
        )


# ---------------------------------------------------------------- SQL

PROBE_SQL = (
    "SELECT $1::bigint, current_setting('search_path'), current_setting('work_mem'),"
    " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),"
    " (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),"
    " (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),"
    " (SELECT count(*) FROM pg_listening_channels())"
)
SERIES_SQL = "SELECT $1::bigint + g FROM generate_series(1, $2::int) AS g ORDER BY g"
VALUE_SQL = "SELECT $1::bigint"
SLOW_SQL = "SELECT $1::bigint FROM pg_sleep($2::float8)"
INSERT_SQL = "INSERT INTO soak_rows (tag, pool, i) SELECT $1::bigint, $2::text, g FROM generate_series(1, $3::int) AS g"  # noqa: E501
COUNT_SQL = "SELECT count(*) FROM soak_rows WHERE tag = $1::bigint"
DIRTY_SQL = (
    "SET search_path = soak_dirty, public",
    "SET work_mem = '1234kB'",
    "CREATE TEMP TABLE soak_tmp (x int)",
    "PREPARE soak_stmt AS SELECT 1",
    "LISTEN soak_chan",
)
LOCK_SQL = "SELECT pg_advisory_lock($1::bigint)"
TABLE_SQL = (
    "CREATE TABLE soak_rows (tag bigint NOT NULL, pool text NOT NULL, i int NOT NULL);"
    " CREATE INDEX ON soak_rows (tag)"
)


@lru_cache(maxsize=64)
def pg_format(sql: str) -> str:
    """``$n`` placeholders (asyncpg) as ``%s`` (psycopg); parameters appear in order."""
    return re.sub(r"\$\d+", "%s", sql)


class Rollback(Exception):
    """Raised inside a transaction on purpose: the pool must roll it back."""


class DirtyBorrowerError(Exception):
    """Raised by a borrower that dirtied its session, to return it on the error path."""


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, tidepool.PoolTimeout):
        return f"PoolTimeout[{exc.phase}]"
    return type(exc).__name__


def is_query_canceled(exc: BaseException) -> bool:
    """A query cancel request (SQLSTATE 57014) reached this caller."""
    return getattr(exc, "sqlstate", None) == "57014"


# ---------------------------------------------------------------- the proxy


class _SpyReader:
    """A stream reader that marks its proxy pair when bytes arrive during a stall."""

    def __init__(self, reader: asyncio.StreamReader, proxy: SoakProxy, pair: Any) -> None:
        self._reader = reader
        self._proxy = proxy
        self._pair = pair

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        if data and self._proxy.mode == "stall":  # the pump swallows it: the pair is dead
            self._proxy.swallowed.add(self._pair)
        return data


class SoakProxy(ChaosProxy):
    """The toolkit's chaos proxy, plus :meth:`reap`: reset the connections that lost bytes in
    a stall (what TCP keepalive would end up doing to a half-open connection)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.swallowed: set[Any] = set()  # touched in the proxy's loop only
        super().__init__(upstream_host, upstream_port)

    async def _pump(self, pair: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        await super()._pump(pair, _SpyReader(reader, self, pair), writer)  # type: ignore[arg-type]

    def reap(self) -> int:
        """Reset every live connection that lost bytes in a stall; how many."""
        reaped: int = self._call(self._reap())
        return reaped

    async def _reap(self) -> int:
        dead = [pair for pair in self.swallowed if pair in self._pairs]
        self.swallowed.clear()
        for pair in dead:
            pair.reset()
        return len(dead)


def _proxy_process(pipe: Connection, upstream: tuple[str, int], data_dir: str) -> None:
    """The chaos proxy's own process, serving :class:`RemoteProxy`'s calls over ``pipe``.

    It also guards the cluster: if the soak process dies without saying goodbye (killed, or
    ended by the hang watchdog), the pipe breaks and this process stops the cluster at once
    and removes its directory, so nothing outlives the run."""
    proxy = SoakProxy(*upstream)
    pipe.send(proxy.port)
    orphaned = True
    try:
        while True:
            name, args, kwargs = pipe.recv()
            if name == "close":
                orphaned = False
                break
            try:
                pipe.send(("ok", getattr(proxy, name)(*args, **kwargs)))
            except Exception as exc:
                pipe.send(("error", repr(exc)))
    except (EOFError, OSError):
        pass
    finally:
        proxy.close()
        if orphaned and Path(data_dir, "PG_VERSION").exists():
            with contextlib.suppress(Exception):
                _run([str(PG_BIN / "pg_ctl"), "-D", data_dir, "-m", "immediate", "stop"])
            shutil.rmtree(Path(data_dir).parent, ignore_errors=True)
        if not orphaned:
            pipe.send(("ok", None))


class RemoteProxy:
    """A :class:`SoakProxy` in a process of its own, driven like a ``ChaosProxy``.

    Out of process because a driver call that blocks in C holding the GIL (see the report's
    notes) must not freeze the network too: in production the network is not inside the
    client's interpreter, and an in-process proxy would turn a short block into a deadlock."""

    def __init__(self, cluster: PrivateCluster) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_proxy_process,
            args=(child, (cluster.host, cluster.port), str(cluster.data)),
            name="soak-proxy",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self.host = "127.0.0.1"
        self.mode = "pass"
        if not self._pipe.poll(30):
            self._process.kill()
            raise TimeoutError("the proxy process did not start within 30 s")
        self.port: int = self._pipe.recv()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._pipe.send((name, args, kwargs))
            if not self._pipe.poll(30):
                raise TimeoutError(f"the proxy process did not answer {name} within 30 s")
            status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"proxy {name}: {value}")
        return value

    def set_mode(self, mode: str, *, delay: float = 0.1) -> None:
        self._call("set_mode", mode, delay=delay)
        self.mode = mode

    def reap(self) -> int:
        reaped: int = self._call("reap")
        return reaped

    def close(self) -> None:
        """Stop the proxy process (bounded). Idempotent."""
        if self._process.is_alive():
            with contextlib.suppress(Exception):
                self._call("close")
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._pipe.close()


# ---------------------------------------------------------------- bookkeeping


@dataclass
class Run:
    """One pool under soak and what its callers saw."""

    spec: Spec
    app: str
    pool: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    cancelled: int = 0
    deliberate_timeouts: int = 0
    max_acquire: float = 0.0
    max_release: float = 0.0
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    last: dict[str, int] = field(default_factory=dict)
    peak: Counter[str] = field(default_factory=Counter)
    sync_started: dict[int, float] = field(default_factory=dict)  # thread id -> op start
    sync_flagged: set[tuple[int, float]] = field(default_factory=set)

    def ok(self, kind: str) -> None:
        with self.lock:
            self.ops[kind] += 1

    def error(self, exc: BaseException) -> None:
        kind = error_kind(exc)
        with self.lock:
            self.errors[kind] += 1
            if kind not in self.error_examples:
                self.error_examples[kind] = str(exc).strip().replace("\n", " ")[:160]

    def timing(self, what: str, seconds: float) -> None:
        with self.lock:
            if what == "acquire":
                self.max_acquire = max(self.max_acquire, seconds)
            else:
                self.max_release = max(self.max_release, seconds)


class Soak:
    """Everything one soak run shares: the cluster, the proxy, the pools, the tallies."""

    def __init__(self, config: Config, cluster: PrivateCluster, proxy: RemoteProxy) -> None:
        self.config = config
        self.cluster = cluster
        self.proxy = proxy
        self.rng = random.Random(config.seed)
        self.started = monotonic()
        self.runs: list[Run] = []
        self.lock = threading.Lock()
        self.violations: Counter[str] = Counter()
        self.examples: list[str] = []
        self.faults: Counter[str] = Counter()
        self.fault_errors: Counter[str] = Counter()
        self.last_fault = "none yet"
        self.reaped = 0
        self.committed: dict[int, int] = {}  # tag -> rows, for commits that returned
        self.rolled_back: set[int] = set()  # tags that must never be in the table
        self.unique = itertools.count(random.Random(config.seed).randrange(1 << 40, 1 << 50))
        self.stop = asyncio.Event()
        self.stop_threads = threading.Event()
        self.baseline: tuple[str, str] = ("", "")
        self.loop_errors: Counter[str] = Counter()
        self.log_records: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.workload_seconds = 0.0
        self.end_notes: list[str] = []

    def now(self) -> float:
        return monotonic() - self.started

    def violate(self, kind: str, message: str) -> None:
        with self.lock:
            self.violations[kind] += 1
            if len(self.examples) < 30:
                self.examples.append(
                    f"[{self.now():7.2f} s] {kind}: {message} (last fault: {self.last_fault})"
                )

    def next_value(self) -> int:
        with self.lock:
            return next(self.unique)

    def note_commit(self, tag: int, rows: int) -> None:
        with self.lock:
            self.committed[tag] = rows

    def note_rollback(self, tag: int) -> None:
        with self.lock:
            self.rolled_back.add(tag)

    def verify_probe(self, run: Run, sent: int, row: Sequence[Any] | None) -> None:
        """A probe's row: the caller's own value, and the session as if freshly connected."""
        if row is None or int(row[0]) != sent:
            got = None if row is None else row[0]
            self.violate("wrong_rows", f"{run.spec.id}: sent {sent}, got {got!r}")
            return
        search_path, work_mem, locks, temps, prepared, channels = row[1:7]
        dirt = []
        if (search_path, work_mem) != self.baseline:
            dirt.append(f"settings {search_path!r}/{work_mem!r}")
        for name, count in (
            ("advisory locks", locks),
            ("temp tables", temps),
            ("prepared statements", prepared),
            ("LISTEN channels", channels),
        ):
            if int(count):
                dirt.append(f"{count} {name}")
        if dirt:
            self.violate("dirty_session", f"{run.spec.id}: lent with {', '.join(dirt)}")

    def verify_series(self, run: Run, first: int, count: int, values: list[int]) -> None:
        if values != [first + i for i in range(1, count + 1)]:
            head = values[:3]
            self.violate(
                "wrong_rows", f"{run.spec.id}: series from {first} x{count}, got {head}..."
            )

    def caller_error(self, run: Run, exc: BaseException, *, cancelled_self: bool) -> None:
        """An error a caller saw: expected under faults, counted by kind; a query cancel the
        caller did not ask for was meant for someone else (a late cancel)."""
        run.error(exc)
        if is_query_canceled(exc) and not cancelled_self:
            self.violate("foreign_cancel", f"{run.spec.id}: {exc!r}")


# ---------------------------------------------------------------- async callers


class AsyncCaller:
    """One asyncio task borrowing from an ``AsyncPool`` in a loop."""

    def __init__(self, soak: Soak, run: Run, index: int) -> None:
        self.soak = soak
        self.run = run
        self.pool = run.pool
        self.rng = random.Random(soak.config.seed * 1_000_003 + index)
        self.must_probe = False
        self.asyncpg = run.spec.asyncpg

    # driver glue: asyncpg and psycopg's AsyncConnection
    async def rows(self, conn: Any, sql: str, *args: Any) -> list[Any]:
        if self.asyncpg:
            return list(await conn.fetch(sql, *args))
        cur = await conn.execute(pg_format(sql), args or None)
        return list(await cur.fetchall()) if cur.description else []

    async def value(self, conn: Any, sql: str, *args: Any) -> Any:
        rows = await self.rows(conn, sql, *args)
        return rows[0][0] if rows else None

    async def run_sql(self, conn: Any, sql: str, *args: Any) -> None:
        if self.asyncpg:
            await conn.execute(sql, *args)
        else:
            await conn.execute(pg_format(sql), args or None)

    def in_transaction(self, conn: Any) -> bool:
        if self.asyncpg:
            return bool(conn.is_in_transaction())
        return bool(conn.info.transaction_status != pq.TransactionStatus.IDLE)

    def q(self, sql: str) -> str:
        return sql if self.asyncpg else pg_format(sql)

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[Any]:
        """``pool.acquire()``, timing the acquire and the release against their bounds."""
        started = monotonic()
        lent_at: float | None = None
        body_end = 0.0
        try:
            async with self.pool.acquire() as conn:
                lent_at = monotonic()
                try:
                    if self.in_transaction(conn):
                        self.soak.violate("dirty_session", f"{self.run.spec.id}: lent in a tx")
                    yield conn
                finally:
                    body_end = monotonic()
        finally:
            done = monotonic()
            self.timed("acquire", (lent_at or done) - started, ACQUIRE_TIMEOUT + ACQUIRE_SLACK)
            if lent_at is not None:
                self.timed("release", done - body_end, RELEASE_BOUND)

    def timed(self, what: str, seconds: float, bound: float) -> None:
        self.run.timing(what, seconds)
        if seconds > bound:
            self.soak.violate(f"{what}_overrun", f"{self.run.spec.id}: {what} took {seconds:.2f} s")

    # operations
    async def op_probe(self) -> None:
        sent = self.soak.next_value()
        async with self.borrow() as conn:
            rows = await self.rows(conn, PROBE_SQL, sent)
        self.soak.verify_probe(self.run, sent, rows[0] if rows else None)
        self.must_probe = False

    async def op_executor(self) -> None:
        first = self.soak.next_value()
        if self.rng.random() < 0.5:
            got = await self.pool.fetch_value(self.q(VALUE_SQL), first)
            if got != first:
                self.soak.violate("wrong_rows", f"{self.run.spec.id}: sent {first}, got {got!r}")
            return
        count = self.rng.randint(1, 20)
        rows = await self.pool.fetch_all(self.q(SERIES_SQL), first, count)
        self.soak.verify_series(self.run, first, count, [int(r[0]) for r in rows])

    async def op_transaction(self) -> None:
        tag = self.soak.next_value()
        rows = self.rng.randint(1, 3)
        fail = self.rng.random() < 0.3
        slow = self.rng.random() < 0.1
        reached_commit = False
        try:
            async with self.pool.transaction() as conn:
                await self.run_sql(conn, INSERT_SQL, tag, self.run.spec.id, rows)
                if slow:
                    await self.run_sql(conn, "SELECT pg_sleep($1::float8)", 0.1)
                got = await self.value(conn, COUNT_SQL, tag)
                if got != rows:
                    self.soak.violate(
                        "wrong_rows", f"{self.run.spec.id}: tx {tag} sees {got} of its {rows}"
                    )
                if fail:
                    raise Rollback
                reached_commit = True
        except Rollback:
            self.soak.note_rollback(tag)
            return
        except BaseException:
            if not reached_commit:  # the commit was never sent: nothing may have stayed
                self.soak.note_rollback(tag)
            raise
        self.soak.note_commit(tag, rows)

    async def op_dirty(self) -> None:
        """Dirty every kind of session state, sometimes leave a transaction open, and give the
        connection back (normally or on an exception); the next borrow must find it clean."""
        sent = self.soak.next_value()
        abandon = self.rng.random() < 0.3
        raise_out = self.rng.random() < 0.3
        async with self.borrow() as conn:
            rows = await self.rows(conn, PROBE_SQL, sent)
            self.soak.verify_probe(self.run, sent, rows[0] if rows else None)
            for sql in DIRTY_SQL:
                await self.run_sql(conn, sql)
            await self.run_sql(conn, LOCK_SQL, self.rng.randrange(1 << 62))
            if abandon:
                tag = self.soak.next_value()
                self.soak.note_rollback(tag)  # never committed: must not be in the table
                await self.run_sql(conn, "BEGIN")
                await self.run_sql(conn, INSERT_SQL, tag, self.run.spec.id, 1)
            self.must_probe = True
            if raise_out:
                raise DirtyBorrowerError
        self.must_probe = True

    async def op_slow(self) -> None:
        sent = self.soak.next_value()
        pause = self.rng.uniform(0.05, 0.3)
        deadline = pause * self.rng.uniform(0.3, 1.5) if self.rng.random() < 0.3 else None
        whole = self.rng.random() < 0.5  # the deadline covers acquire + release too
        try:
            async with asyncio.timeout(deadline if whole else None):
                async with self.borrow() as conn:
                    async with asyncio.timeout(None if whole else deadline):
                        got = await self.value(conn, SLOW_SQL, sent, pause)
        except TimeoutError as exc:
            if isinstance(exc, tidepool.PoolTimeout) or deadline is None:
                raise
            with self.run.lock:
                self.run.deliberate_timeouts += 1
            self.must_probe = True
            return
        if got != sent:
            self.soak.violate("wrong_rows", f"{self.run.spec.id}: sent {sent}, got {got!r}")

    def pick(self) -> Callable[[], Any]:
        if self.must_probe:
            return self.op_probe
        roll = self.rng.random()
        if roll < 0.35:
            return self.op_probe
        if roll < 0.50:
            return self.op_executor
        if roll < 0.75:
            return self.op_transaction
        if roll < 0.85:
            return self.op_dirty
        return self.op_slow

    async def one(self, op: Callable[[], Any], cancel_me: list[bool]) -> None:
        try:
            async with asyncio.timeout(OP_BOUND):
                await op()
        except asyncio.CancelledError:
            with self.run.lock:
                self.run.cancelled += 1
            self.must_probe = True
        except TimeoutError as exc:
            if isinstance(exc, tidepool.PoolTimeout):
                self.run.error(exc)
            else:
                with self.run.lock:
                    self.run.errors["OpBoundExceeded"] += 1
            self.must_probe = True
        except DirtyBorrowerError:
            self.run.ok(op.__name__)
        except Exception as exc:
            self.soak.caller_error(self.run, exc, cancelled_self=cancel_me[0])
            self.must_probe = True
        else:
            self.run.ok(op.__name__)

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.soak.stop.is_set():
            op = self.pick()
            cancel_me = [False]
            task = asyncio.create_task(self.one(op, cancel_me), name=f"soak-{self.run.spec.id}")
            self.run.inflight.add(task)
            handle = None
            if self.rng.random() < CANCEL_RATE:
                cancel_me[0] = True
                handle = loop.call_later(self.rng.uniform(0.0, 0.03), task.cancel)
            try:
                done, _ = await asyncio.wait({task}, timeout=HANG_AFTER)
                if not done:
                    self.soak.violate(
                        "hang",
                        f"{self.run.spec.id}: {op.__name__} still running after "
                        f"{HANG_AFTER:.0f} s despite its {OP_BOUND:.0f} s deadline",
                    )
                    task.cancel()
                    await asyncio.wait({task}, timeout=HANG_AFTER)
            finally:
                if handle is not None:
                    handle.cancel()
                self.run.inflight.discard(task)


# ---------------------------------------------------------------- thread callers


class SyncCaller:
    """One thread borrowing from a ``Pool`` in a loop."""

    def __init__(self, soak: Soak, run: Run, index: int) -> None:
        self.soak = soak
        self.run = run
        self.pool = run.pool
        self.rng = random.Random(soak.config.seed * 1_000_003 + 500 + index)
        self.must_probe = False

    @staticmethod
    def rows(conn: Any, sql: str, *args: Any) -> list[Any]:
        cur = conn.execute(pg_format(sql), args or None)
        return list(cur.fetchall()) if cur.description else []

    def value(self, conn: Any, sql: str, *args: Any) -> Any:
        rows = self.rows(conn, sql, *args)
        return rows[0][0] if rows else None

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        started = monotonic()
        lent_at: float | None = None
        body_end = 0.0
        try:
            with self.pool.acquire() as conn:
                lent_at = monotonic()
                try:
                    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                        self.soak.violate("dirty_session", f"{self.run.spec.id}: lent in a tx")
                    yield conn
                finally:
                    body_end = monotonic()
        finally:
            done = monotonic()
            acquire = (lent_at or done) - started
            self.run.timing("acquire", acquire)
            if acquire > ACQUIRE_TIMEOUT + ACQUIRE_SLACK:
                self.soak.violate(
                    "acquire_overrun", f"{self.run.spec.id}: acquire took {acquire:.2f} s"
                )
            if lent_at is not None:
                release = done - body_end
                self.run.timing("release", release)
                if release > RELEASE_BOUND:
                    self.soak.violate(
                        "release_overrun", f"{self.run.spec.id}: release took {release:.2f} s"
                    )

    def op_probe(self) -> None:
        sent = self.soak.next_value()
        with self.borrow() as conn:
            rows = self.rows(conn, PROBE_SQL, sent)
        self.soak.verify_probe(self.run, sent, rows[0] if rows else None)
        self.must_probe = False

    def op_executor(self) -> None:
        first = self.soak.next_value()
        if self.rng.random() < 0.5:
            got = self.pool.fetch_value(pg_format(VALUE_SQL), first)
            if got != first:
                self.soak.violate("wrong_rows", f"{self.run.spec.id}: sent {first}, got {got!r}")
            return
        count = self.rng.randint(1, 20)
        rows = self.pool.fetch_all(pg_format(SERIES_SQL), first, count)
        self.soak.verify_series(self.run, first, count, [int(r[0]) for r in rows])

    def op_transaction(self) -> None:
        tag = self.soak.next_value()
        rows = self.rng.randint(1, 3)
        fail = self.rng.random() < 0.3
        reached_commit = False
        try:
            with self.pool.transaction() as conn:
                conn.execute(pg_format(INSERT_SQL), (tag, self.run.spec.id, rows))
                got = self.value(conn, COUNT_SQL, tag)
                if got != rows:
                    self.soak.violate(
                        "wrong_rows", f"{self.run.spec.id}: tx {tag} sees {got} of its {rows}"
                    )
                if fail:
                    raise Rollback
                reached_commit = True
        except Rollback:
            self.soak.note_rollback(tag)
            return
        except BaseException:
            if not reached_commit:
                self.soak.note_rollback(tag)
            raise
        self.soak.note_commit(tag, rows)

    def op_dirty(self) -> None:
        sent = self.soak.next_value()
        abandon = self.rng.random() < 0.3
        raise_out = self.rng.random() < 0.3
        with self.borrow() as conn:
            rows = self.rows(conn, PROBE_SQL, sent)
            self.soak.verify_probe(self.run, sent, rows[0] if rows else None)
            for sql in DIRTY_SQL:
                conn.execute(sql)
            conn.execute(pg_format(LOCK_SQL), (self.rng.randrange(1 << 62),))
            if abandon:
                tag = self.soak.next_value()
                self.soak.note_rollback(tag)
                conn.execute("BEGIN")
                conn.execute(pg_format(INSERT_SQL), (tag, self.run.spec.id, 1))
            self.must_probe = True
            if raise_out:
                raise DirtyBorrowerError
        self.must_probe = True

    def op_slow(self) -> None:
        sent = self.soak.next_value()
        with self.borrow() as conn:
            got = self.value(conn, SLOW_SQL, sent, self.rng.uniform(0.05, 0.3))
        if got != sent:
            self.soak.violate("wrong_rows", f"{self.run.spec.id}: sent {sent}, got {got!r}")

    def pick(self) -> Callable[[], None]:
        if self.must_probe:
            return self.op_probe
        roll = self.rng.random()
        if roll < 0.35:
            return self.op_probe
        if roll < 0.50:
            return self.op_executor
        if roll < 0.75:
            return self.op_transaction
        if roll < 0.85:
            return self.op_dirty
        return self.op_slow

    def loop(self) -> None:
        me = threading.get_ident()
        while not self.soak.stop_threads.is_set():
            op = self.pick()
            self.run.sync_started[me] = monotonic()
            try:
                op()
            except DirtyBorrowerError:
                self.run.ok(op.__name__)
            except Exception as exc:
                self.soak.caller_error(self.run, exc, cancelled_self=False)
                self.must_probe = True
            else:
                self.run.ok(op.__name__)
            finally:
                self.run.sync_started.pop(me, None)


# ---------------------------------------------------------------- invariants


def check_stats(soak: Soak, run: Run) -> None:
    """design.md section 7's invariants on one ``stats()`` snapshot, plus monotonic
    counters, waiting <= callers and connecting <= max_connecting."""
    s = run.pool.stats()
    bad = []
    if s.size > s.max_size:
        bad.append("size > max_size")
    if s.idle + s.in_use + s.connecting != s.size:
        bad.append("idle + in_use + connecting != size")
    for name in ("size", "idle", "in_use", "connecting", "waiting", *COUNTERS):
        if getattr(s, name) < 0:
            bad.append(f"{name} < 0")
    if s.waiting > run.spec.callers:
        bad.append(f"waiting > {run.spec.callers} callers")
    if s.connecting > run.pool.options.max_connecting:
        bad.append("connecting > max_connecting")
    for name in COUNTERS:
        value = getattr(s, name)
        if value < run.last.get(name, 0):
            bad.append(f"counter {name} went back")
        run.last[name] = value
    for name in ("size", "in_use", "connecting", "waiting"):
        run.peak[name] = max(run.peak[name], getattr(s, name))
    if bad:
        soak.violate("invariant", f"{run.spec.id}: {'; '.join(bad)}: {s}")


def check_sync_hangs(soak: Soak, run: Run) -> None:
    now = monotonic()
    for ident, started in list(run.sync_started.items()):
        if now - started > HANG_AFTER and (ident, started) not in run.sync_flagged:
            run.sync_flagged.add((ident, started))
            soak.violate("hang", f"{run.spec.id}: a thread's operation runs for {HANG_AFTER} s")


async def checker(soak: Soak, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for run in soak.runs:
            check_stats(soak, run)
            if run.spec.sync:
                check_sync_hangs(soak, run)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHECK_EVERY)


# ---------------------------------------------------------------- faults


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


class Faults:
    """One fault at a time, every 1-4 s, chosen with the run's seeded RNG."""

    WEIGHTS = {
        "terminate_one": 3.0,
        "terminate_all": 2.0,
        "stall": 2.0,
        "reset": 2.0,
        "refuse": 1.5,
        "latency": 1.5,
        "freeze": 1.0,
        "cancel_storm": 2.0,
    }

    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.rng = random.Random(soak.config.seed ^ 0x5EED)
        self.reapers: set[asyncio.Task[Any]] = set()

    async def pause(self, seconds: float) -> bool:
        """Sleep, waking early when the run stops; whether it is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.soak.stop.wait(), seconds)
        return self.soak.stop.is_set()

    async def run(self) -> None:
        soak = self.soak
        next_restart = monotonic() + soak.config.restart_every
        wait = 1.0
        kinds = list(self.WEIGHTS)
        weights = list(self.WEIGHTS.values())
        while not await self.pause(wait):
            wait = self.rng.uniform(1.0, 4.0)
            if monotonic() >= next_restart:
                kind = "restart"
                next_restart = monotonic() + soak.config.restart_every
            else:
                kind = self.rng.choices(kinds, weights)[0]
            soak.last_fault = f"{kind} at {soak.now():.2f} s"
            soak.faults[kind] += 1
            try:
                await getattr(self, kind)()
            except Exception as exc:
                soak.fault_errors[f"{kind}: {type(exc).__name__}"] += 1
            finally:
                await self.restore()

    async def restore(self) -> None:
        """Back to normal: proxy passing, no frozen backend, the server running."""
        cluster = self.soak.cluster
        await blocking(cluster.thaw_all)
        if self.soak.proxy.mode != "pass":
            await blocking(self.soak.proxy.set_mode, "pass")
        if not cluster.running:
            await blocking(cluster.start)

    def victim(self) -> Run:
        return self.rng.choice(self.soak.runs)

    async def terminate_one(self) -> None:
        await blocking(
            self.soak.cluster.sql,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s ORDER BY random() LIMIT 1",
            (self.victim().app,),
        )

    async def terminate_all(self) -> None:
        await blocking(self.soak.cluster.terminate, self.victim().app)

    async def stall(self) -> None:
        await blocking(self.soak.proxy.set_mode, "stall")
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await blocking(self.soak.proxy.set_mode, "pass")
        reaper = asyncio.create_task(self.reap_later(), name="soak-reaper")
        self.reapers.add(reaper)
        reaper.add_done_callback(self.reapers.discard)

    async def reap_later(self) -> None:
        await asyncio.sleep(REAP_AFTER)
        self.soak.reaped += await blocking(self.soak.proxy.reap)

    async def reset(self) -> None:
        await blocking(self.soak.proxy.set_mode, "reset")
        await asyncio.sleep(self.rng.uniform(0.0, 0.3))

    async def refuse(self) -> None:
        await blocking(self.soak.proxy.set_mode, "refuse")
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))

    async def latency(self) -> None:
        await blocking(self.soak.proxy.set_mode, "latency", delay=self.rng.uniform(0.01, 0.1))
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))

    async def freeze(self) -> None:
        cluster = self.soak.cluster
        pids = await blocking(cluster.backend_pids, self.victim().app)
        if pids:
            pid = self.rng.choice(pids)
            cluster.freeze(pid)
            try:
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            finally:
                cluster.thaw(pid)

    async def cancel_storm(self) -> None:
        for run in self.soak.runs:
            for task in list(run.inflight):
                if self.rng.random() < 0.7:
                    task.cancel()

    async def restart(self) -> None:
        await blocking(self.soak.cluster.restart, "fast")


# ---------------------------------------------------------------- the end checks


async def server_sessions(soak: Soak) -> dict[str, int]:
    rows = await blocking(
        soak.cluster.sql,
        "SELECT application_name, count(*) FROM pg_stat_activity"
        " WHERE application_name = ANY(%s) GROUP BY 1",
        ([run.app for run in soak.runs],),
    )
    return {str(app): int(n) for app, n in rows}


async def lend_max(soak: Soak, run: Run) -> str | None:
    """Borrow ``max_size`` connections at once; they must be distinct live sessions."""
    n = run.spec.max_size
    if run.spec.sync:

        def hold_all() -> list[int]:
            conns: list[Any] = []
            try:
                for _ in range(n):
                    conns.append(run.pool.getconn(10.0))
                return [int(c.execute("SELECT pg_backend_pid()").fetchone()[0]) for c in conns]
            finally:
                for conn in conns:
                    run.pool.release(conn)

        pids = await blocking(hold_all)
    else:
        leases = [run.pool.acquire(10.0) for _ in range(n)]
        got = await asyncio.gather(
            *(lease.__aenter__() for lease in leases), return_exceptions=True
        )
        try:
            for item in got:
                if isinstance(item, BaseException):
                    raise item
            caller = AsyncCaller(soak, run, 0)
            pids = [int(await caller.value(conn, "SELECT pg_backend_pid()")) for conn in got]
        finally:
            for lease, item in zip(leases, got, strict=True):
                if not isinstance(item, BaseException):
                    await lease.__aexit__(None, None, None)
    if len(set(pids)) != n:
        return f"lent {n} connections with only {len(set(pids))} distinct sessions"
    return None


async def settle_one(soak: Soak, run: Run, timeout: float) -> None:
    """Wait (bounded) for nobody waiting or connecting and server sessions == size."""
    deadline = monotonic() + timeout
    while True:
        stats = run.pool.stats()
        count = (await server_sessions(soak)).get(run.app, 0)
        settled = stats.waiting == 0 and stats.connecting == 0 and count == stats.size
        if settled or monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if not settled:
        soak.violate("settle", f"{run.spec.id}: server shows {count} sessions for {stats}")


async def finish(soak: Soak) -> int:
    """Faults stopped and callers gone: lend, settle, close; the connections leaked."""
    await asyncio.sleep(POOL_OPTIONS.get("check_idle_after", 0.5) + 0.2)
    for run in soak.runs:
        problem: str | None = "not tried"
        for _ in range(3):
            try:
                problem = await asyncio.wait_for(lend_max(soak, run), 15.0)
            except Exception as exc:
                problem = f"{error_kind(exc)}: {exc}"
            if problem is None:
                break
            soak.end_notes.append(f"{run.spec.id}: lending max_size failed once: {problem}")
            await asyncio.sleep(0.5)
        if problem is not None:
            soak.violate("lend_max", f"{run.spec.id}: {problem}")
    await asyncio.gather(*(settle_one(soak, run, 10.0) for run in soak.runs))
    return await close_all(soak)


async def close_all(soak: Soak) -> int:
    """Close every pool; then no session, tidepool thread or task may remain."""
    for run in soak.runs:
        try:
            if run.spec.sync:
                await asyncio.wait_for(blocking(run.pool.close, 5.0), 15.0)
            else:
                await asyncio.wait_for(run.pool.aclose(5.0), 15.0)
        except Exception as exc:
            soak.violate("close", f"{run.spec.id}: close raised {exc!r}")
    deadline = monotonic() + 5.0
    while True:
        sessions = await server_sessions(soak)
        threads = [t.name for t in threading.enumerate() if t.name.startswith("tidepool-")]
        tasks = [
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name().startswith("tidepool-") and not t.done()
        ]
        if (not sessions and not threads and not tasks) or monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if threads:
        soak.violate("leftover", f"threads after close: {threads}")
    if tasks:
        soak.violate("leftover", f"tasks after close: {tasks}")
    return sum(sessions.values())


async def check_table(soak: Soak) -> None:
    """Every commit that returned is in the table, whole; nothing rolled back is."""
    rows = await blocking(soak.cluster.sql, "SELECT tag, count(*) FROM soak_rows GROUP BY tag")
    found = {int(tag): int(n) for tag, n in rows}
    for tag, n in soak.committed.items():
        if found.get(tag) != n:
            soak.violate(
                "lost_commit", f"tag {tag}: committed {n} rows, table has {found.get(tag)}"
            )
    for tag in soak.rolled_back:
        if tag in found:
            soak.violate("phantom_rows", f"tag {tag}: rolled back, table has {found[tag]} rows")


# ---------------------------------------------------------------- the run


async def soak_run(soak: Soak) -> int:
    """The workload, the faults and the checks; returns the connections leaked (or -1)."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    loop.set_exception_handler(
        lambda _loop, context: soak.loop_errors.update([str(context.get("message"))[:100]])
    )
    proxy = soak.proxy
    for spec in SPECS:
        app = f"soak-{spec.id}-{os.getpid()}"
        url = soak.cluster.url(spec.scheme, host=proxy.host, port=proxy.port, application_name=app)
        options = dict(POOL_OPTIONS, max_size=spec.max_size, name=f"soak-{spec.id}")
        pool: Any = (
            tidepool.Pool(url, **options) if spec.sync else tidepool.AsyncPool(url, **options)
        )
        soak.runs.append(Run(spec, app, pool))
    check_stop = asyncio.Event()
    check_task = asyncio.create_task(checker(soak, check_stop), name="soak-checker")
    faults = Faults(soak)
    fault_task: asyncio.Task[None] | None = None
    tasks: list[asyncio.Task[None]] = []
    threads: list[threading.Thread] = []
    leaked = -1
    try:
        for run in soak.runs:
            if run.spec.sync:
                await blocking(run.pool.open)
            else:
                await run.pool.open()
        soak.started = monotonic()
        fault_task = asyncio.create_task(faults.run(), name="soak-faults")
        for run in soak.runs:
            for i in range(run.spec.callers):
                if run.spec.sync:
                    caller = SyncCaller(soak, run, i)
                    thread = threading.Thread(
                        target=caller.loop, name=f"soak-{run.spec.id}-{i}", daemon=True
                    )
                    thread.start()
                    threads.append(thread)
                else:
                    tasks.append(
                        asyncio.create_task(
                            AsyncCaller(soak, run, len(tasks)).loop(), name=f"soak-{run.spec.id}"
                        )
                    )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), soak.config.seconds)
        soak.workload_seconds = monotonic() - soak.started
        soak.stop.set()
        soak.stop_threads.set()
        # The faults end (a restart in progress completes), then everything back to normal.
        done, _ = await asyncio.wait({fault_task}, timeout=40.0)
        if not done:
            soak.end_notes.append("the fault injector did not stop within 40 s")
            fault_task.cancel()
        await faults.restore()
        for reaper in list(faults.reapers):
            reaper.cancel()
        soak.reaped += await blocking(proxy.reap)
        # The callers finish their current operation (each is bounded).
        _, pending = await asyncio.wait(tasks, timeout=HANG_AFTER) if tasks else (set(), set())
        for task in pending:
            soak.violate("hang", f"a caller task did not stop: {task.get_name()}")
            task.cancel()
        deadline = monotonic() + HANG_AFTER
        for thread in threads:
            await blocking(thread.join, max(0.0, deadline - monotonic()))
            if thread.is_alive():
                soak.violate("hang", f"a caller thread did not stop: {thread.name}")
        leaked = await finish(soak)
        await check_table(soak)
    finally:
        soak.stop.set()
        soak.stop_threads.set()
        if fault_task is not None and not fault_task.done():
            fault_task.cancel()
        for task in tasks:
            task.cancel()
        for run in soak.runs:  # after an interruption: close what is still open
            with contextlib.suppress(Exception):
                if run.spec.sync:
                    await asyncio.wait_for(blocking(run.pool.close, 2.0), 10.0)
                else:
                    await asyncio.wait_for(run.pool.aclose(2.0), 10.0)
        check_stop.set()
        await check_task
    return leaked


# ---------------------------------------------------------------- the report


def rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def report(soak: Soak, leaked: int, total_seconds: float, rss_start: float) -> dict[str, Any]:
    ops = {run.spec.id: sum(run.ops.values()) for run in soak.runs}
    errors: Counter[str] = Counter()
    for run in soak.runs:
        errors.update(run.errors)
    correctness = sum(n for k, n in soak.violations.items() if k in CORRECTNESS)
    invariant = sum(n for k, n in soak.violations.items() if k not in CORRECTNESS)
    warned = sum(soak.warnings.values())
    ok = invariant == 0 and correctness == 0 and leaked == 0 and warned == 0
    return {
        "ok": ok,
        "seed": soak.config.seed,
        "seconds_requested": soak.config.seconds,
        "workload_seconds": round(soak.workload_seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "operations": {**ops, "total": sum(ops.values())},
        "operations_by_kind": {run.spec.id: dict(sorted(run.ops.items())) for run in soak.runs},
        "cancelled": {run.spec.id: run.cancelled for run in soak.runs},
        "deliberate_timeouts": {run.spec.id: run.deliberate_timeouts for run in soak.runs},
        "faults": {**dict(sorted(soak.faults.items())), "total": sum(soak.faults.values())},
        "fault_errors": dict(soak.fault_errors),
        "half_open_reaped": soak.reaped,
        "errors": {**dict(errors.most_common()), "total": sum(errors.values())},
        "errors_by_pool": {run.spec.id: dict(run.errors.most_common()) for run in soak.runs},
        "error_examples": {
            f"{run.spec.id} {kind}": text
            for run in soak.runs
            for kind, text in sorted(run.error_examples.items())
        },
        "invariant_violations": invariant,
        "correctness_violations": correctness,
        "violations_by_kind": dict(soak.violations),
        "violation_examples": soak.examples,
        "connections_leaked": leaked,
        "resource_warnings": warned,
        "warnings": dict(soak.warnings),
        "loop_errors": dict(soak.loop_errors),
        "tidepool_log": dict(soak.log_records),
        "max_acquire_seconds": {run.spec.id: round(run.max_acquire, 3) for run in soak.runs},
        "max_release_seconds": {run.spec.id: round(run.max_release, 3) for run in soak.runs},
        "peaks": {run.spec.id: dict(run.peak) for run in soak.runs},
        "final_stats": {run.spec.id: dataclasses.asdict(run.pool.stats()) for run in soak.runs},
        "end_notes": soak.end_notes,
        "rss_mb": {
            "start": round(rss_start, 1),
            "end": round(rss_mb(), 1),
            "peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }


def _counts(mapping: dict[str, Any], skip: str = "total") -> str:
    items = [f"{k} {v}" for k, v in mapping.items() if k != skip]
    return ", ".join(items) if items else "none"


def render(data: dict[str, Any]) -> str:
    ops = data["operations"]
    lines = [
        "=" * 78,
        f"tidepool soak: {'PASS' if data['ok'] else 'FAIL'}   seed {data['seed']}, "
        f"workload {data['workload_seconds']} s of {data['seconds_requested']:g} s requested, "
        f"{data['total_seconds']} s in all",
        f"operations          {ops['total']}: {_counts(ops)}",
    ]
    for pool, kinds in data["operations_by_kind"].items():
        lines.append(
            f"  {pool:<17} {_counts({k.removeprefix('op_'): v for k, v in kinds.items()})}; "
            f"cancelled {data['cancelled'][pool]}, "
            f"deadline hit {data['deliberate_timeouts'][pool]}"
        )
    lines += [
        f"faults injected     {data['faults']['total']}: {_counts(data['faults'])}",
        f"  fault errors      {_counts(data['fault_errors'])}; half-open connections reaped "
        f"{data['half_open_reaped']}",
        f"errors seen by callers {data['errors']['total']}: {_counts(data['errors'])}",
    ]
    for pool in data["errors_by_pool"]:
        lines.append(
            f"  {pool:<17} max acquire {data['max_acquire_seconds'][pool]} s, "
            f"max release {data['max_release_seconds'][pool]} s, peaks {data['peaks'][pool]}"
        )
    lines += [
        f"invariant violations          {data['invariant_violations']}",
        f"wrong rows / dirty sessions   {data['correctness_violations']}",
        f"connections leaked            {data['connections_leaked']}",
        f"ResourceWarnings              {data['resource_warnings']}",
    ]
    if data["violations_by_kind"]:
        lines.append(f"violations by kind  {_counts(data['violations_by_kind'])}")
        lines += [f"  {example}" for example in data["violation_examples"][:15]]
    if data["warnings"]:
        lines.append(f"warnings            {_counts(data['warnings'])}")
    if data["loop_errors"]:
        lines.append(f"event loop errors   {_counts(data['loop_errors'])}")
    if data["tidepool_log"]:
        lines.append(f"log >= WARNING      {_counts(data['tidepool_log'])}")
    if data["error_examples"]:
        lines.append("first error of each kind:")
        lines += [f"  {k}: {v}" for k, v in data["error_examples"].items()]
    lines += [f"note: {note}" for note in data["end_notes"]]
    rss = data["rss_mb"]
    lines += [
        f"peak RSS            {rss['peak']} MB (start {rss['start']} MB, end {rss['end']} MB)",
        "=" * 78,
    ]
    return "\n".join(lines)


class _LogTally(logging.Handler):
    """Counts log records at WARNING and above, by message: the ``tidepool`` logger's (an
    ERROR there is a violation) and the drivers' (expected under faults)."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(logging.WARNING)
        self.soak = soak

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name} {record.levelname}: {record.msg}"[:90]
        self.soak.log_records[key] += 1
        if record.name.startswith("tidepool") and record.levelno >= logging.ERROR:
            self.soak.violate("pool_error_log", self.format(record)[:300])


def main() -> int:
    """Start a private cluster and a proxy, run the soak, print the report; 0 when clean."""
    config = Config.from_env()
    if not (PG_BIN / "postgres").is_file():
        print(f"soak: PostgreSQL is not installed at {PG_BIN}", file=sys.stderr)
        return 2
    # The hang watchdog: stacks and exit; the proxy process then stops the cluster.
    faulthandler.dump_traceback_later(config.seconds + 90, exit=True)
    began = monotonic()
    rss_start = rss_mb()
    warnings.simplefilter("always")
    cluster = PrivateCluster()
    try:
        cluster.start()
        cluster.sql(TABLE_SQL)
        baseline = cluster.sql("SELECT current_setting('search_path'), current_setting('work_mem')")
        proxy = RemoteProxy(cluster)
        try:
            soak = Soak(config, cluster, proxy)
            soak.baseline = (str(baseline[0][0]), str(baseline[0][1]))

            def tally_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
                soak.warnings[f"{category.__name__}: {str(message)[:80]}"] += 1

            warnings.showwarning = tally_warning
            handler = _LogTally(soak)
            for name in LOGGERS:
                logging.getLogger(name).addHandler(handler)
                logging.getLogger(name).propagate = False
            interrupted = False
            leaked = -1
            try:
                leaked = asyncio.run(soak_run(soak))
            except (KeyboardInterrupt, asyncio.CancelledError):
                interrupted = True
            finally:
                for name in LOGGERS:
                    logging.getLogger(name).removeHandler(handler)
            data = report(soak, leaked, monotonic() - began, rss_start)
            if interrupted:
                data["ok"] = False
                data["end_notes"].append("interrupted")
        finally:
            proxy.close()
    finally:
        cluster.close()
        faulthandler.cancel_dump_traceback_later()
    print(render(data), flush=True)
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if interrupted:
        return 130
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
