"""Pool overhead: acquire+release cycles per second beside 20-line reference pools.

Every contender runs in a fresh process, after a warm-up, interleaved (A B C D A B C D ...)
and repeated; the report gives medians with min-max spread, the ratio to the reference pool
of the same kind measured in the same run, Jain's fairness index over per-worker operation
counts, and the longest single acquire wait.

Scenarios:
  tight  concurrency 1: acquire + release in a loop, nothing else
  c64    concurrency 64 on a pool of 10: acquire, yield once to the scheduler, release

The managers do no I/O, so the numbers are the pool's own cost.

    python benchmarks/checkout.py [--reps 3] [--seconds 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

POOL_SIZE = 10
CONTENDERS = ("tidepool-async", "ref-asyncio-queue", "tidepool-sync", "ref-lifoqueue")
SCENARIOS = ("tight", "c64")


class NullConn:
    """A connection object that does nothing (weak-referenceable, like driver objects)."""


class AsyncNullManager:
    async def connect(self) -> NullConn:
        return NullConn()

    async def check(self, conn: NullConn) -> None:
        pass

    async def reset(self, conn: NullConn) -> None:
        pass

    async def close(self, conn: NullConn) -> None:
        pass

    def is_broken(self, conn: NullConn) -> bool:
        return False


class NullManager:
    def connect(self) -> NullConn:
        return NullConn()

    def check(self, conn: NullConn) -> None:
        pass

    def reset(self, conn: NullConn) -> None:
        pass

    def close(self, conn: NullConn) -> None:
        pass

    def is_broken(self, conn: NullConn) -> bool:
        return False


# ---------------------------------------------------------------- the 20-line references


class RefAsyncQueuePool:
    """The floor of what an asyncio pool can cost: an asyncio.Queue of connections."""

    def __init__(self, size: int) -> None:
        self.q: asyncio.Queue[NullConn] = asyncio.Queue()
        for _ in range(size):
            self.q.put_nowait(NullConn())

    async def acquire(self) -> NullConn:
        return await self.q.get()

    def release(self, conn: NullConn) -> None:
        self.q.put_nowait(conn)


class RefLifoQueuePool:
    """The floor of what a threaded pool can cost: a queue.LifoQueue of connections."""

    def __init__(self, size: int) -> None:
        self.q: queue.LifoQueue[NullConn] = queue.LifoQueue()
        for _ in range(size):
            self.q.put_nowait(NullConn())

    def acquire(self) -> NullConn:
        return self.q.get()

    def release(self, conn: NullConn) -> None:
        self.q.put_nowait(conn)


# ---------------------------------------------------------------- one measurement (child)


def jain(counts: list[int]) -> float:
    total = sum(counts)
    squares = sum(c * c for c in counts)
    return (total * total) / (len(counts) * squares) if squares else 1.0


async def run_async(contender: str, scenario: str, seconds: float) -> dict[str, Any]:
    import tidepool

    if contender == "tidepool-async":
        pool = tidepool.AsyncPool(AsyncNullManager(), max_size=POOL_SIZE, min_size=POOL_SIZE)
        await pool.open()

        async def cycle(hold: bool) -> None:
            async with pool.acquire():
                if hold:
                    await asyncio.sleep(0)
    else:
        ref = RefAsyncQueuePool(POOL_SIZE)

        async def cycle(hold: bool) -> None:
            conn = await ref.acquire()
            try:
                if hold:
                    await asyncio.sleep(0)
            finally:
                ref.release(conn)

    result: dict[str, Any]
    if scenario == "tight":
        for _ in range(20_000):  # warm-up
            await cycle(False)
        n = 0
        start = time.perf_counter()
        end = start + seconds
        while True:
            for _ in range(1000):
                await cycle(False)
            n += 1000
            if time.perf_counter() >= end:
                break
        elapsed = time.perf_counter() - start
        result = {"ops_per_s": n / elapsed, "us_per_op": elapsed / n * 1e6}
    else:
        counts = [0] * 64
        max_wait = 0.0
        stop = False

        async def worker(i: int) -> None:
            nonlocal max_wait
            while not stop:
                t0 = time.perf_counter()
                await cycle(True)
                wait = time.perf_counter() - t0
                if wait > max_wait:
                    max_wait = wait
                counts[i] += 1

        tasks = [asyncio.create_task(worker(i)) for i in range(64)]
        await asyncio.sleep(0.3)  # warm-up
        counts[:] = [0] * 64
        max_wait = 0.0
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        snapshot = list(counts)
        elapsed = time.perf_counter() - start
        stop = True
        await asyncio.gather(*tasks)
        result = {
            "ops_per_s": sum(snapshot) / elapsed,
            "jain": jain(snapshot),
            "max_cycle_ms": max_wait * 1e3,
        }
    if contender == "tidepool-async":
        await pool.aclose()
    return result


def run_sync(contender: str, scenario: str, seconds: float) -> dict[str, Any]:
    import tidepool

    if contender == "tidepool-sync":
        pool = tidepool.Pool(NullManager(), max_size=POOL_SIZE, min_size=POOL_SIZE)
        pool.open()

        def cycle(hold: bool) -> None:
            with pool.acquire():
                if hold:
                    time.sleep(0)
    else:
        ref = RefLifoQueuePool(POOL_SIZE)

        def cycle(hold: bool) -> None:
            conn = ref.acquire()
            try:
                if hold:
                    time.sleep(0)
            finally:
                ref.release(conn)

    result: dict[str, Any]
    if scenario == "tight":
        for _ in range(20_000):
            cycle(False)
        n = 0
        start = time.perf_counter()
        end = start + seconds
        while True:
            for _ in range(1000):
                cycle(False)
            n += 1000
            if time.perf_counter() >= end:
                break
        elapsed = time.perf_counter() - start
        result = {"ops_per_s": n / elapsed, "us_per_op": elapsed / n * 1e6}
    else:
        counts = [0] * 64
        waits = [0.0] * 64
        stop = threading.Event()
        measuring = threading.Event()

        def worker(i: int) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                cycle(True)
                if measuring.is_set():
                    counts[i] += 1
                    waits[i] = max(waits[i], time.perf_counter() - t0)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        measuring.set()
        start = time.perf_counter()
        time.sleep(seconds)
        measuring.clear()
        elapsed = time.perf_counter() - start
        snapshot = list(counts)
        stop.set()
        for t in threads:
            t.join()
        result = {
            "ops_per_s": sum(snapshot) / elapsed,
            "jain": jain(snapshot),
            "max_cycle_ms": max(waits) * 1e3,
        }
    if contender == "tidepool-sync":
        pool.close()
    return result


def child(contender: str, scenario: str, seconds: float) -> None:
    if contender in ("tidepool-async", "ref-asyncio-queue"):
        result = asyncio.run(run_async(contender, scenario, seconds))
    else:
        result = run_sync(contender, scenario, seconds)
    print(json.dumps(result))


# ---------------------------------------------------------------- the run (parent)

REFERENCE = {"tidepool-async": "ref-asyncio-queue", "tidepool-sync": "ref-lifoqueue"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--child", nargs=2, metavar=("CONTENDER", "SCENARIO"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.seconds)
        return
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for scenario in SCENARIOS:
            for contender in CONTENDERS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--seconds",
                        str(args.seconds),
                        "--child",
                        contender,
                        scenario,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs.setdefault((contender, scenario), []).append(json.loads(out.stdout))
                print(
                    f"rep {rep + 1}/{args.reps} {scenario:5} {contender:18} done", file=sys.stderr
                )
    print(
        f"\nacquire+release, pool of {POOL_SIZE}, medians of {args.reps} interleaved runs (min-max)"
    )
    header = ("scenario", "contender", "cycles/s", "us/cycle", "vs ref", "jain", "max ms")
    print("{:8} {:18} {:>22} {:>9} {:>7} {:>6} {:>7}".format(*header))
    summary: dict[str, Any] = {}
    for scenario in SCENARIOS:
        for contender in CONTENDERS:
            results = runs[(contender, scenario)]
            ops = [r["ops_per_s"] for r in results]
            med = statistics.median(ops)
            ref = REFERENCE.get(contender)
            ratio = (
                med / statistics.median(r["ops_per_s"] for r in runs[(ref, scenario)])
                if ref
                else 1.0
            )
            jains = [r.get("jain", 1.0) for r in results]
            max_ms = max(r.get("max_cycle_ms", 0.0) for r in results)
            spread = f"{med:,.0f} ({min(ops):,.0f}-{max(ops):,.0f})"
            print(
                f"{scenario:8} {contender:18} {spread:>22} {1e6 / med:9.2f} {ratio:7.2f} "
                f"{min(jains):6.3f} {max_ms:7.2f}"
            )
            summary[f"{scenario}/{contender}"] = {
                "median_ops_per_s": med,
                "runs": results,
                "ratio_to_reference": ratio,
            }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
