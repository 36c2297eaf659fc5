"""What a session reset round trip costs the client and the server, per operation.

64 asyncio tasks share 10 asyncpg connections behind a semaphore (no pool) and run
``SELECT 1``; after each query the connection runs one of the resets below before it is
shared again. The client's CPU comes from ``getrusage``, the server's from ``/proc`` of the
10 backends (the server runs on this machine). Variants run in turn, twice, so that a slow
moment on a shared machine shows as a spread instead of a verdict.

    python benchmarks/probes/reset_cost.py                  # every variant
    python benchmarks/probes/reset_cost.py none one full prepared    # some of them
    python benchmarks/probes/reset_cost.py --cached 99 none full   # a warm statement cache

Needs PostgreSQL on 127.0.0.1:5432 (``TIDEPOOL_BENCH_PG_URL`` to change it) and asyncpg.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

import asyncpg

from tidepool.adapters._pg import _RESET_STEPS, RESET_SQL, probe_reset_sql
from tidepool.adapters.pg_asyncpg import prepare_reset_probe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scenarios import settle_allocator  # (benchmarks/ is not a package)

URL = os.environ.get("TIDEPOOL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PROBE_NAME = "tidepool_reset_probe_bench"
VARIANTS = {
    "none": "",
    "one": "SELECT 1",  # the cheapest second round trip
    "steps": _RESET_STEPS,  # tidepool's reset without the prepared-statement probe
    "probe": RESET_SQL.rsplit(";", 2)[-2] + ";",  # the probe alone
    "full": RESET_SQL,  # tidepool's reset, as the adapters send it at a connection's first
    # and from then on: the probe prepared once per connection, run by name
    "prepared": probe_reset_sql(PROBE_NAME),
}
TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu_s(pids: list[int]) -> float:
    """User + system CPU of the server processes ``pids``, in seconds."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


async def measure(name: str, reset_sql: str, seconds: float, cached: int) -> None:
    conns = [await asyncpg.connect(URL) for _ in range(10)]
    pids = [conn.get_server_pid() for conn in conns]
    for conn in conns:  # fill asyncpg's statement cache, as a long-running service does
        for i in range(cached):
            await conn.fetchval(f"SELECT {i}::int + $1", 1)
    # (kept for the run: asyncpg closes a dropped statement)
    probes = [await prepare_reset_probe(c, PROBE_NAME) for c in conns if name == "prepared"]
    free, gate = list(conns), asyncio.Semaphore(10)
    done, stop = 0, False

    async def worker() -> None:
        nonlocal done
        while not stop:
            async with gate:
                conn = free.pop()
                try:
                    await conn.fetchval("SELECT 1")
                    if reset_sql:
                        await conn.execute(reset_sql)
                finally:
                    free.append(conn)
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(64)]
    await asyncio.sleep(1.0)
    n0, r0, s0 = done, resource.getrusage(resource.RUSAGE_SELF), backend_cpu_s(pids)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    n1, r1, s1 = done, resource.getrusage(resource.RUSAGE_SELF), backend_cpu_s(pids)
    elapsed = time.perf_counter() - t0
    stop = True
    await asyncio.gather(*tasks)
    probes.clear()
    for conn in conns:
        await conn.close()
    ops = n1 - n0
    client = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / ops * 1e6
    server = (s1 - s0) / ops * 1e6
    print(
        f"{name:8s} {ops / elapsed:8,.0f} ops/s   client {client:6.1f} us/op   "
        f"server {server:6.1f} us/op",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (all)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cached", type=int, default=0, help="statements cached per connection")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settle_allocator()  # as every benchmark worker does (see benchmarks/scenarios.py)
    names = args.variants or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    async def run() -> None:
        for _ in range(args.rounds):
            for name in names:
                await measure(name, VARIANTS[name], args.seconds, args.cached)

    asyncio.run(run())


if __name__ == "__main__":
    main()
