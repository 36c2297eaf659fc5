"""Redis and MySQL through tidepool beside redis-py's and aiomysql's own pools, in one run.

Every contender runs in a fresh process after a warm-up, interleaved and repeated; the report
gives medians with min-max spread, ratios to the driver's own pool in the same run, and Jain's
fairness index over per-worker operation counts.

  redis-ping     concurrency 16 on a pool of 10: acquire, PING, release
  mysql-select   concurrency 16 on a pool of 10: acquire, SELECT id FROM t WHERE id = %s, release

    python benchmarks/mysql_redis.py [--reps 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/0"
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
CONCURRENCY = 16
POOL = 10
TABLE = "tp_bench_point"
# The driver's own pool is last: the ratios are against it. Neither peer resets sessions.
CONTENDERS = {
    "redis-ping": ("tidepool-redis", "tidepool-redis-noreset", "redis-py-blocking-pool"),
    "mysql-select": ("tidepool-aiomysql", "tidepool-aiomysql-noreset", "aiomysql-pool"),
}


async def measure(one: Callable[[], Awaitable[None]], seconds: float) -> dict[str, Any]:
    counts = [0] * CONCURRENCY
    stop = False

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
    total = sum(done)
    jain = total * total / (len(done) * sum(c * c for c in done)) if total else 0.0
    return {"ops_per_s": total / elapsed, "jain": jain}


async def run(contender: str, seconds: float) -> dict[str, Any]:
    import tidepool

    reset = not contender.endswith("-noreset")
    if contender.startswith("tidepool-redis"):
        pool: Any = tidepool.AsyncPool(REDIS_URL, max_size=POOL, min_size=POOL, reset=reset)
        await pool.open()

        async def one() -> None:
            async with pool.acquire() as r:
                await r.ping()

        result = await measure(one, seconds)
        await pool.aclose()
    elif contender == "redis-py-blocking-pool":
        import redis.asyncio as aioredis

        rpool = aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=POOL)
        client = aioredis.Redis(connection_pool=rpool)

        async def one() -> None:
            await client.ping()

        result = await measure(one, seconds)
        await client.aclose()
        await rpool.aclose()
    elif contender.startswith("tidepool-aiomysql"):
        pool = tidepool.AsyncPool(MYSQL_URL, max_size=POOL, min_size=POOL, reset=reset)
        await pool.open()

        async def one() -> None:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    f"SELECT id FROM {TABLE} WHERE id = %s", (random.randint(1, 1000),)
                )
                await cur.fetchone()

        result = await measure(one, seconds)
        await pool.aclose()
    else:
        import aiomysql

        apool = await aiomysql.create_pool(
            host="127.0.0.1", user="root", db="test", minsize=POOL, maxsize=POOL, autocommit=True
        )

        async def one() -> None:
            async with apool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    f"SELECT id FROM {TABLE} WHERE id = %s", (random.randint(1, 1000),)
                )
                await cur.fetchone()

        result = await measure(one, seconds)
        apool.close()
        await apool.wait_closed()
    return result


def setup_table(create: bool) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", database="test", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        if create:
            cur.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, v VARCHAR(20))")
            cur.executemany(
                f"INSERT INTO {TABLE} VALUES (%s, %s)", [(i, f"v{i}") for i in range(1, 1001)]
            )
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(run(args.child, args.seconds))))
        return
    setup_table(True)
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for rep in range(args.reps):
            for pair in CONTENDERS.values():
                for contender in pair:
                    cmd = [sys.executable, __file__, "--seconds", str(args.seconds)]
                    out = subprocess.run(
                        [*cmd, "--child", contender], check=True, capture_output=True, text=True
                    )
                    runs.setdefault(contender, []).append(json.loads(out.stdout))
                    print(f"rep {rep + 1}/{args.reps} {contender} done", file=sys.stderr)
    finally:
        setup_table(False)
    print(f"\nconcurrency {CONCURRENCY}, pool of {POOL}, medians of {args.reps} runs (min-max)")
    print(
        "{:14} {:24} {:>26} {:>9} {:>6}".format("scenario", "contender", "ops/s", "vs own", "jain")
    )
    for scenario, names in CONTENDERS.items():
        ref = statistics.median(r["ops_per_s"] for r in runs[names[-1]])
        for contender in names:
            ops = [r["ops_per_s"] for r in runs[contender]]
            med = statistics.median(ops)
            jain = min(r["jain"] for r in runs[contender])
            spread = f"{med:,.0f} ({min(ops):,.0f}-{max(ops):,.0f})"
            print(f"{scenario:14} {contender:24} {spread:>26} {med / ref:9.2f} {jain:6.3f}")


if __name__ == "__main__":
    main()
