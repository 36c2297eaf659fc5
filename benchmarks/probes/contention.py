"""The client CPU one contended checkout costs, with no I/O in the way.

64 asyncio tasks (``--tasks``) share 10 connections of a manager that does no I/O; each task
acquires, yields to the event loop once, and releases. The same loop on an
``asyncio.Semaphore`` and a list is the floor a pool can be compared with; ``fifo`` is the
smallest fair pool in Python (a lock, a list of idle connections, a FIFO of futures, a lease
object), with none of a pool's other duties (deadlines, accounting, liveness, leak watch,
statistics). CPU per operation comes from ``getrusage``.

    python benchmarks/probes/contention.py pool semaphore fifo     # the pure-Python core
    PYTHONPATH=build/compiled python benchmarks/probes/contention.py pool   # make compiled first
    python benchmarks/probes/contention.py pool --profile          # where the time goes (cProfile)
    python benchmarks/probes/contention.py --asyncpg postgresql://postgres@127.0.0.1/test
                                                     # the same with real I/O: SELECT 1
    python benchmarks/probes/contention.py --redis redis://127.0.0.1:6379/15   # or PING
    python benchmarks/probes/contention.py --mysql mysql://root@127.0.0.1:3306/test  # aiomysql
    python benchmarks/probes/contention.py --redis URL adapter semaphore   # "adapter": the
                       # semaphore over connections tidepool's adapter opened, without the pool
    python benchmarks/probes/contention.py --asyncpg URL --reset    # and the session reset
    python benchmarks/probes/contention.py --asyncpg URL --tasks 10000   # the scale scenario
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python benchmarks/probes/contention.py --rounds 1 --ops 30000 pool
                       # instructions: the "Collected" count at 30,000 minus that at 10,000
    valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes --callgrind-out-file=cg.out \
        python benchmarks/probes/contention.py --mysql URL --rounds 1 --ops 12000 pool
                       # beside a driver, with simulated cache misses and mispredicted branches
                       # (one kind per run: minus the same at 4,000, over 8,000)
    python benchmarks/probes/contention.py --asyncpg URL --unsettled   # malloc as the process
                                                     # start left it (see settle_allocator)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import tidepool
import tidepool._core.state as core_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scenarios import settle_allocator  # (benchmarks/ is not a package)

TASKS, CONNECTIONS = 64, 10


class NoIO:
    """A manager whose connections are plain objects."""

    async def connect(self) -> object:
        return object()

    async def check(self, conn: object) -> None:
        pass

    async def reset(self, conn: object) -> None:
        pass

    async def close(self, conn: object) -> None:
        pass

    def is_broken(self, conn: object) -> bool:
        return False


class FifoPool:
    """The smallest fair pool: idle connections, a FIFO of waiting futures, a hand-off."""

    def __init__(self, conns: list[object]) -> None:
        self.lock = threading.Lock()
        self.idle = conns
        self.waiters: OrderedDict[asyncio.Future[object], None] = OrderedDict()
        self.loop = asyncio.get_running_loop()

    def acquire(self) -> FifoLease:
        return FifoLease(self)

    def take(self) -> object | asyncio.Future[object]:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            future = self.loop.create_future()
            self.waiters[future] = None
            return future

    def give(self, conn: object) -> None:
        with self.lock:
            while self.waiters:
                future = self.waiters.popitem(last=False)[0]
                if not future.done():
                    future.set_result(conn)
                    return
            self.idle.append(conn)


class FifoLease:
    __slots__ = ("conn", "pool")

    def __init__(self, pool: FifoPool) -> None:
        self.pool = pool
        self.conn: object = None

    async def __aenter__(self) -> object:
        got = self.pool.take()
        self.conn = await got if isinstance(got, asyncio.Future) else got
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        self.pool.give(self.conn)


async def measure(
    kind: str,
    seconds: float,
    profile: bool,
    url: str | None,
    reset: bool = False,
    tasks: int = TASKS,
    ops: int = 0,
) -> None:
    # The workers stop once `done` reaches `limit`: after `ops` operations (--ops), or when
    # the window ends.
    done, limit = 0, float(ops or "inf")
    pool: Any = None
    conns: list[Any] = []
    kept: list[Any] = []  # prepared statements that must outlive the run
    # semaphore and fifo open the driver's own connections; pool and adapter use the adapter's
    raw = kind in ("semaphore", "fifo")
    if kind == "adapter":
        # The adapter's connections (its own settings, and for Redis its command counting),
        # behind the semaphore: what the adapter costs apart from the pool.
        manager = tidepool.AsyncPool(url).manager
        conns = [await manager.connect() for _ in range(CONNECTIONS)]
    if url is None:
        conns = [object() for _ in range(CONNECTIONS)]

        async def body(conn: Any) -> None:
            await asyncio.sleep(0)

    elif url.startswith("redis"):
        import redis.asyncio

        if raw:
            options = redis.asyncio.connection.parse_url(url)
            conns = [redis.asyncio.Connection(**options) for _ in range(CONNECTIONS)]
            for conn in conns:
                await conn.connect()

        async def body(conn: Any) -> None:
            # tidepool lends a client bound to one connection: the same call on that connection
            conn = conn if raw else conn.connection
            await conn.send_command("PING")
            await conn.read_response()

    elif url.startswith("mysql"):
        import aiomysql

        from tidepool.adapters.mysql import MySQLTarget

        if raw:
            target = MySQLTarget.from_url(url)
            conns = [
                await aiomysql.connect(
                    host=target.host,
                    port=target.port,
                    user=target.user,
                    password=target.password.value if target.password is not None else "",
                    db=target.database,
                    autocommit=True,
                )
                for _ in range(CONNECTIONS)
            ]

        async def body(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.fetchone()

    else:
        import asyncpg

        from tidepool.adapters._pg import probe_reset_sql
        from tidepool.adapters.pg_asyncpg import prepare_reset_probe

        # --reset: the script the adapters send from a connection's second reset on
        probe_name = "tidepool_reset_probe_contention"
        script = probe_reset_sql(probe_name)
        if raw:
            conns = [await asyncpg.connect(url) for _ in range(CONNECTIONS)]
            if reset:
                kept.extend([await prepare_reset_probe(conn, probe_name) for conn in conns])

        async def body(conn: Any) -> None:
            await conn.fetchval("SELECT 1")
            if reset and kind != "pool":  # the pool runs its own reset on release
                await conn.execute(script)

    if kind in ("semaphore", "adapter"):
        free, gate = list(conns), asyncio.Semaphore(CONNECTIONS)

        async def worker() -> None:
            nonlocal done
            while done < limit:
                async with gate:
                    conn = free.pop()
                    try:
                        await body(conn)
                    finally:
                        free.append(conn)
                done += 1
    elif kind == "fifo":
        fifo = FifoPool(list(conns))

        async def worker() -> None:
            nonlocal done
            while done < limit:
                async with fifo.acquire() as conn:
                    await body(conn)
                done += 1
    else:
        target: Any = NoIO() if url is None else url
        pool = tidepool.AsyncPool(target, max_size=CONNECTIONS, min_size=CONNECTIONS, reset=reset)
        await pool.open()
        while pool.stats().idle < CONNECTIONS:  # noqa: ASYNC110 - no event for "filled"
            await asyncio.sleep(0.01)

        async def worker() -> None:
            nonlocal done
            while done < limit:
                async with pool.acquire() as conn:
                    await body(conn)
                done += 1

    running = [asyncio.create_task(worker()) for _ in range(tasks)]
    if not ops:
        await asyncio.sleep(0.5)
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        n0, r0 = done, resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(seconds)
        n1, r1 = done, resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        limit = 0
    await asyncio.gather(*running)
    if pool is not None:
        await pool.aclose()
    for conn in conns if url is not None else []:
        if url.startswith("redis"):
            await (conn.aclose() if kind == "adapter" else conn.disconnect())
        elif url.startswith("mysql"):
            conn.close()
        else:
            await conn.close()
    if ops:
        print(f"{kind:9s} {done:,} operations", flush=True)
        return
    ops = n1 - n0
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    user = r1.ru_utime - r0.ru_utime
    # 1-2 per read while reads mmap their buffer (see settle_allocator), about 0 otherwise
    faults = (r1.ru_minflt - r0.ru_minflt) / ops
    print(
        f"{kind:9s} {ops / seconds:9,.0f} ops/s   CPU {cpu / ops * 1e6:6.2f} us/op"
        f"   (user {user / ops * 1e6:6.2f})   page faults/op {faults:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "kinds",
        nargs="*",
        help="pool, semaphore, fifo (the default: all three) and/or adapter (with a driver URL)",
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--tasks", type=int, default=TASKS, help=f"tasks sharing the connections ({TASKS})"
    )
    parser.add_argument(
        "--ops",
        type=int,
        default=0,
        help="run this many operations, then exit, with no clock (for instruction counts "
        "under valgrind --tool=callgrind); with a driver URL the count includes the driver's "
        "work",
    )
    real = parser.add_mutually_exclusive_group()
    real.add_argument(
        "--asyncpg",
        metavar="URL",
        help="real connections: SELECT 1 through asyncpg on URL instead of a yield",
    )
    real.add_argument(
        "--redis",
        metavar="URL",
        help="real connections: PING through redis-py's asyncio connection on URL",
    )
    real.add_argument(
        "--mysql",
        metavar="URL",
        help="real connections: SELECT 1 through an aiomysql cursor on URL",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="with --asyncpg: tidepool's default reset; the other loops run its script",
    )
    parser.add_argument(
        "--unsettled",
        action="store_true",
        help="leave malloc as the process start left it (by default the probe settles it, as "
        "every benchmark worker does: benchmarks/scenarios.py, settle_allocator)",
    )
    args = parser.parse_args()
    if not args.unsettled:
        settle_allocator()
    url = args.asyncpg or args.redis or args.mysql
    if args.reset and not args.asyncpg:
        parser.error("--reset needs --asyncpg")
    kinds = args.kinds or ["pool", "semaphore", "fifo"]
    if set(kinds) - {"pool", "semaphore", "fifo", "adapter"}:
        parser.error("kinds are: pool, semaphore, fifo, adapter")
    if "adapter" in kinds and not url:
        parser.error("'adapter' needs a driver URL (--asyncpg, --redis or --mysql)")
    if "adapter" in kinds and args.reset:
        parser.error("'adapter' runs no reset: leave out --reset")
    for _ in range(args.rounds):
        for kind in kinds:
            asyncio.run(
                measure(kind, args.seconds, args.profile, url, args.reset, args.tasks, args.ops)
            )
    print(f"core: {core_state.__file__}")


if __name__ == "__main__":
    main()
