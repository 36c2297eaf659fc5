"""PostgreSQL through tidepool beside the drivers' own pools, in one run.

Every contender runs in a fresh process after a warm-up, interleaved and repeated; the report
gives medians with min-max spread and ratios to asyncpg's own pool measured in the same run.

Scenarios:
  select1   concurrency 16 on a pool of 10: acquire, SELECT 1, release (autocommit)
  copy      rows per second loading 50,000 rows: COPY (copy_records) vs INSERT (executemany)

    python benchmarks/postgres.py [--url postgresql://postgres@127.0.0.1/test] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = 16
POOL = 10
SELECT_CONTENDERS = (
    "tidepool-asyncpg",
    "tidepool-asyncpg-noreset",
    "asyncpg-pool",
    "asyncpg-pool-noreset",
    "tidepool-psycopg-async",
    "psycopg-pool-async",
)
COPY_ROWS = 50_000


async def _noop_reset(conn: Any) -> None:
    return None


async def select1(contender: str, url: str, seconds: float) -> dict[str, Any]:
    import asyncpg

    import tidepool

    counts = [0] * CONCURRENCY
    stop = False
    closer: Any
    if contender.startswith("tidepool"):
        target = (
            url.replace("postgresql://", "postgresql+psycopg://") if "psycopg" in contender else url
        )
        pool = tidepool.AsyncPool(
            target, max_size=POOL, min_size=POOL, reset="noreset" not in contender
        )
        await pool.open()
        query = "SELECT 1"

        async def one() -> None:
            async with pool.acquire() as conn:
                await conn.execute(query)

        closer = pool.aclose
    elif contender.startswith("asyncpg"):
        kwargs: dict[str, Any] = {"reset": _noop_reset} if "noreset" in contender else {}
        apool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL, **kwargs)

        async def one() -> None:
            async with apool.acquire() as conn:
                await conn.execute("SELECT 1")

        closer = apool.close
    else:
        import psycopg_pool

        conninfo = url.replace("postgresql+psycopg://", "postgresql://")
        ppool = psycopg_pool.AsyncConnectionPool(
            conninfo, min_size=POOL, max_size=POOL, kwargs={"autocommit": True}, open=False
        )
        await ppool.open(wait=True)

        async def one() -> None:
            async with ppool.connection() as conn:
                await conn.execute("SELECT 1")

        closer = ppool.close

    async def worker(i: int) -> None:
        while not stop:
            await one()
            counts[i] += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(CONCURRENCY)]
    await asyncio.sleep(0.5)
    counts[:] = [0] * CONCURRENCY
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    done = list(counts)
    elapsed = time.perf_counter() - start
    stop = True
    await asyncio.gather(*tasks)
    await closer()
    total = sum(done)
    jain = total * total / (len(done) * sum(c * c for c in done)) if total else 0.0
    return {"ops_per_s": total / elapsed, "jain": jain}


async def copy_vs_insert(mode: str, url: str) -> dict[str, Any]:
    import tidepool

    table = f"tp_bench_{mode}"
    rows = [(i, f"name {i}", i * 0.5) for i in range(COPY_ROWS)]
    async with tidepool.AsyncPool(url, max_size=1) as pool:
        await pool.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.execute(f"CREATE UNLOGGED TABLE {table} (id int, name text, score float8)")
        start = time.perf_counter()
        if mode == "copy":
            await pool.copy_records(table, rows, columns=["id", "name", "score"])
        else:
            await pool.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", rows)
        elapsed = time.perf_counter() - start
        count = await pool.fetch_value(f"SELECT count(*) FROM {table}")
        await pool.execute(f"DROP TABLE {table}")
    assert count == COPY_ROWS
    return {"rows_per_s": COPY_ROWS / elapsed}


def child(kind: str, contender: str, url: str, seconds: float) -> None:
    if kind == "select1":
        result = asyncio.run(select1(contender, url, seconds))
    else:
        result = asyncio.run(copy_vs_insert(contender, url))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.url, args.seconds)
        return
    plan = [("select1", c) for c in SELECT_CONTENDERS] + [("copy", "copy"), ("copy", "insert")]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for kind, contender in plan:
            cmd = [sys.executable, __file__, "--url", args.url, "--seconds", str(args.seconds)]
            out = subprocess.run(
                [*cmd, "--child", kind, contender], check=True, capture_output=True, text=True
            )
            runs.setdefault((kind, contender), []).append(json.loads(out.stdout))
            print(f"rep {rep + 1}/{args.reps} {kind} {contender} done", file=sys.stderr)
    ref = statistics.median(r["ops_per_s"] for r in runs[("select1", "asyncpg-pool")])
    print(
        f"\nselect1, concurrency {CONCURRENCY}, pool of {POOL}, "
        f"medians of {args.reps} interleaved runs (min-max)"
    )
    print("{:26} {:>26} {:>14} {:>6}".format("contender", "ops/s", "vs asyncpg", "jain"))
    for contender in SELECT_CONTENDERS:
        ops = [r["ops_per_s"] for r in runs[("select1", contender)]]
        med = statistics.median(ops)
        jain = min(r["jain"] for r in runs[("select1", contender)])
        spread = f"{med:,.0f} ({min(ops):,.0f}-{max(ops):,.0f})"
        print(f"{contender:26} {spread:>26} {med / ref:14.2f} {jain:6.3f}")
    print(f"\nbulk load of {COPY_ROWS:,} rows through AsyncPool (asyncpg), rows/s")
    for mode in ("copy", "insert"):
        rates = [r["rows_per_s"] for r in runs[("copy", mode)]]
        label = "copy_records (COPY)" if mode == "copy" else "executemany (INSERT)"
        print(
            f"{label:26} {statistics.median(rates):>14,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{k[0]}/{k[1]}": v for k, v in runs.items()}, fh, indent=2)


if __name__ == "__main__":
    main()
