"""The measurements, run inside one child process per configuration (see ``worker.py``).

Closed loop: ``workers`` asyncio tasks or threads each repeat ``acquire -> body -> release``.
The phases are read from the clock by the workers themselves (a loop that never yields, as in
``checkout-tight``, never lets a timer run): operations completing before ``start`` are the
warm-up, those completing in ``[start, end)`` are counted, and a worker stops at its first
operation completing after ``end``. Per counted operation we keep the whole latency and the
acquire wait (``perf_counter_ns``); the longest wait also counts each worker's last acquire up
to ``end``, so a worker starved through the window shows as a wait of the whole run. asyncio
workers still queued for a connection just after ``end`` are cancelled rather than each given
one more turn (seconds of draining with 10,000 tasks). Client CPU is ``getrusage`` between the
first worker's crossing of ``start`` and of ``end``.

Spike: ``requests`` simultaneous single operations on a pool whose connects are delayed by a
proxy; what counts is how many connections the pool opened for them.
"""

from __future__ import annotations

import asyncio
import gc
import re
import resource
import sys
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

clock = time.perf_counter_ns
END_GRACE = 0.01  # s after the window before waiters still queued are cancelled
REPO = Path(__file__).resolve().parent.parent


def jain(counts: list[int]) -> float:
    """Jain's fairness index: 1.0 when every worker did the same number of operations."""
    squares = sum(c * c for c in counts)
    return sum(counts) ** 2 / (len(counts) * squares) if squares else 0.0


def _usage() -> tuple[float, int]:
    """Client CPU seconds so far, and minor page faults so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


# asyncio's selector transports read with sock.recv(256 KiB), into a new bytes object each
# time. glibc serves an allocation that size with mmap() until the process has freed one
# mmap()ed block larger than it, which raises malloc's mmap threshold for good. Until then every
# read of a small reply costs mmap, mremap, munmap and page faults (cpython#85451), which
# doubled the client's system time here and made a run fast or slow by the luck of what its
# process freed first. Every worker process therefore starts from the state a long-running
# service reaches: one freed block above the transports' buffer size.
SETTLE_BYTES = 1 << 20


def settle_allocator() -> None:
    """Put malloc's dynamic mmap threshold above asyncio's read buffer (see above)."""
    block = bytearray(SETTLE_BYTES)
    del block


def rss_kb() -> int:
    """The resident set now."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() // 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS high-water mark (Linux >= 4.0); ``False`` where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def peak_rss_kb() -> int:
    with open("/proc/self/status") as fh:
        found = re.search(r"VmHWM:\s+(\d+)", fh.read())
    return int(found.group(1)) if found else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Recorder:
    """What the workers of one run record: per-op latency and wait, per-worker counts."""

    def __init__(self, workers: int, warmup: float, window: float) -> None:
        self.counts = [0] * workers
        self.last_wait = [0] * workers  # each worker's last acquire wait, cut at ``end``
        self.pending = [False] * workers  # that acquire was still waiting at ``end``
        self.lat = array("q")
        self.wait = array("q")
        self.warmup, self.window = warmup, window
        self.start = self.end = 0
        self.cpu: list[float | None] = [None, None]
        self.faults = [0, 0]
        self._lock = threading.Lock()

    def begin(self) -> None:
        """Start the clock: warm-up now, then the window."""
        now = clock()
        self.start = now + int(self.warmup * 1e9)
        self.end = self.start + int(self.window * 1e9)

    def mark(self, which: int) -> None:
        """The first worker to cross ``start`` (0) or ``end`` (1) takes the CPU reading."""
        with self._lock:
            if self.cpu[which] is None:
                self.cpu[which], self.faults[which] = _usage()

    def harness_bytes(self) -> int:
        return (
            sys.getsizeof(self.lat)
            + sys.getsizeof(self.wait)
            + sys.getsizeof(self.counts)
            + sys.getsizeof(self.last_wait)
            + sys.getsizeof(self.pending)
        )


async def closed_loop_async(
    contender: Any, body: Callable[[Any], Any] | None, rec: Recorder
) -> None:
    waiting = [False] * len(rec.counts)

    async def worker(i: int) -> None:
        lease = contender.lease_for(i)
        counts, lat, wait = rec.counts, rec.lat.append, rec.wait.append
        start, end = rec.start, rec.end
        measuring = False
        try:
            while True:
                t0 = clock()
                waiting[i] = True
                async with lease() as conn:
                    t1 = clock()
                    waiting[i] = False
                    if body is not None:
                        await body(conn)
                t2 = clock()
                if t2 < start:
                    continue
                if t2 >= end:
                    break
                if not measuring:
                    measuring = True
                    rec.mark(0)
                counts[i] += 1
                lat(t2 - t0)
                wait(t1 - t0)
        except asyncio.CancelledError:  # still waiting when the window closed: see below
            rec.last_wait[i] = end - t0
            rec.pending[i] = True
            return
        rec.last_wait[i] = min(t1, end) - t0
        rec.pending[i] = t1 >= end
        rec.mark(1)

    tasks = [asyncio.create_task(worker(i)) for i in range(len(rec.counts))]
    rec.begin()
    await asyncio.sleep((rec.end - clock()) / 1e9 + END_GRACE)
    rec.mark(1)
    # Waiters still queued would each need one more turn before they stop: with 10,000 tasks
    # that is seconds of draining, so they are cancelled (their wait is counted up to ``end``).
    for i, task in enumerate(tasks):
        if waiting[i] and not task.done():
            task.cancel()
    await asyncio.gather(*tasks)


def closed_loop_threads(contender: Any, body: Callable[[Any], Any] | None, rec: Recorder) -> None:
    go = threading.Event()

    def worker(i: int) -> None:
        lease = contender.lease_for(i)
        counts, lat, wait = rec.counts, rec.lat.append, rec.wait.append
        go.wait()
        start, end = rec.start, rec.end
        measuring = False
        while True:
            t0 = clock()
            with lease() as conn:
                t1 = clock()
                if body is not None:
                    body(conn)
            t2 = clock()
            if t2 < start:
                continue
            if t2 >= end:
                break
            if not measuring:
                measuring = True
                rec.mark(0)
            counts[i] += 1
            lat(t2 - t0)
            wait(t1 - t0)
        rec.last_wait[i] = min(t1, end) - t0
        rec.pending[i] = t1 >= end
        rec.mark(1)

    threads = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(rec.counts))
    ]
    for thread in threads:
        thread.start()
    rec.begin()
    go.set()
    for thread in threads:
        thread.join()


BATCH = 100  # checkout-tight times batches of this many cycles


async def tight_loop_async(contender: Any, rec: Recorder) -> None:
    """``checkout-tight``: one worker, acquire + release and nothing else, never yielding.
    Batches are timed, not single cycles, so the clock calls do not swell the cost per cycle;
    the latencies recorded are the batches' means."""
    lease = contender.lease_for(0)
    rec.begin()
    start, end, lat = rec.start, rec.end, rec.lat.append
    measuring = False
    cycles = range(BATCH)
    while True:
        t0 = clock()
        for _ in cycles:
            async with lease():
                pass
        t2 = clock()
        if t2 < start:
            continue
        if t2 >= end:
            break
        if not measuring:
            measuring = True
            rec.mark(0)
        rec.counts[0] += BATCH
        lat((t2 - t0) // BATCH)
    rec.mark(1)


def tight_loop_threads(contender: Any, rec: Recorder) -> None:
    lease = contender.lease_for(0)
    rec.begin()
    start, end, lat = rec.start, rec.end, rec.lat.append
    measuring = False
    cycles = range(BATCH)
    while True:
        t0 = clock()
        for _ in cycles:
            with lease():
                pass
        t2 = clock()
        if t2 < start:
            continue
        if t2 >= end:
            break
        if not measuring:
            measuring = True
            rec.mark(0)
        rec.counts[0] += BATCH
        lat((t2 - t0) // BATCH)
    rec.mark(1)


def _quantile(ordered: list[int], q: float) -> float:
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def summarize(rec: Recorder, max_size: int) -> dict[str, Any]:
    """The numbers of one run (times in microseconds unless the name says otherwise)."""
    ops = sum(rec.counts)
    lat = sorted(rec.lat)
    wait = sorted(rec.wait)
    cpu0, cpu1 = rec.cpu
    wait_max_ns = max(max(wait, default=0), *rec.last_wait)
    wait_p50 = _quantile(wait, 0.5)
    workers = len(rec.counts)
    timed_waits = bool(wait)
    result: dict[str, Any] = {
        "ops": ops,
        "window_s": rec.window,
        "ops_per_s": ops / rec.window,
        "lat_p50_us": _quantile(lat, 0.5) / 1e3,
        "lat_p99_us": _quantile(lat, 0.99) / 1e3,
        "wait_p50_us": wait_p50 / 1e3 if timed_waits else None,
        "wait_p99_us": _quantile(wait, 0.99) / 1e3 if timed_waits else None,
        "wait_max_ms": wait_max_ns / 1e6 if timed_waits else None,
        "pending_at_end": sum(rec.pending),
        "cpu_us_per_op": (cpu1 - cpu0) / ops * 1e6 if ops and cpu0 is not None and cpu1 else None,
        # about 0 once the allocator is settled; 1-2 per read when reads mmap their buffer
        "minor_faults_per_op": (rec.faults[1] - rec.faults[0]) / ops if ops else None,
        "jain": jain(rec.counts) if workers > 1 else None,
        "worker_ops_min": min(rec.counts),
        "worker_ops_max": max(rec.counts),
        # max/median acquire wait only means something when workers queue for connections
        "wait_max_over_median": (
            wait_max_ns / wait_p50 if workers > max_size and wait_p50 > 0 else None
        ),
    }
    if workers <= 64:
        result["worker_ops"] = list(rec.counts)
    return result


# ------------------------------------------------------------------ closed-loop scenarios


async def hold_async(conn: Any) -> None:
    """The ``checkout`` body: keep the connection across one scheduler yield."""
    await asyncio.sleep(0)


def hold_sync(conn: Any) -> None:
    time.sleep(0)


async def run_closed_async(
    contender: Any, body: Callable[[Any], Any] | None, cfg: dict[str, Any]
) -> dict[str, Any]:
    rec = Recorder(cfg["concurrency"], cfg["warmup"], cfg["window"])
    t = time.perf_counter()
    await contender.open()
    setup_s = time.perf_counter() - t
    gc.collect()
    rss_setup = rss_kb()
    tracked = reset_peak_rss()
    if cfg["scenario"] == "checkout-tight":
        await tight_loop_async(contender, rec)
    else:
        await closed_loop_async(contender, body, rec)
    rss_peak = peak_rss_kb()
    result = summarize(rec, cfg["max_size"])
    result["pool"] = contender.stats()
    await contender.close()
    result.update(_memory(rec, rss_setup, rss_peak, tracked, cfg), setup_s=setup_s)
    return result


def run_closed_threads(
    contender: Any, body: Callable[[Any], Any] | None, cfg: dict[str, Any]
) -> dict[str, Any]:
    rec = Recorder(cfg["concurrency"], cfg["warmup"], cfg["window"])
    t = time.perf_counter()
    contender.open()
    setup_s = time.perf_counter() - t
    gc.collect()
    rss_setup = rss_kb()
    tracked = reset_peak_rss()
    if cfg["scenario"] == "checkout-tight":
        tight_loop_threads(contender, rec)
    else:
        closed_loop_threads(contender, body, rec)
    rss_peak = peak_rss_kb()
    result = summarize(rec, cfg["max_size"])
    result["pool"] = contender.stats()
    contender.close()
    result.update(_memory(rec, rss_setup, rss_peak, tracked, cfg), setup_s=setup_s)
    return result


def _memory(
    rec: Recorder, rss_setup: int, rss_peak: int, tracked: bool, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Peak RSS over the run, and per worker: (peak - after setup - our own records) / C."""
    harness_kb = rec.harness_bytes() / 1024
    grown = max(0.0, rss_peak - rss_setup - harness_kb)
    return {
        "rss_setup_mb": rss_setup / 1024,
        "rss_peak_mb": rss_peak / 1024,
        "rss_peak_is_run_only": tracked,
        "harness_mb": harness_kb / 1024,
        "rss_per_worker_bytes": grown * 1024 / cfg["concurrency"],
    }


# ------------------------------------------------------------------ spike


def _delaying_proxy(upstream_port: int, delay: float) -> Any:
    """The fault tests' chaos proxy, with each new connection held ``delay`` seconds before
    it is forwarded (its own ``latency`` mode delays every chunk, queries too)."""
    sys.path.insert(0, str(REPO / "tests"))
    from faults.proxy import ChaosProxy

    return ChaosProxy("127.0.0.1", upstream_port, connect_delay=delay)


def open_spike_proxy(cfg: dict[str, Any]) -> Any:
    from contenders.drivers import SERVICES

    return _delaying_proxy(SERVICES["pg"], cfg["connect_delay"])


def _spike_result(
    proxy: Any, before: int, waits: list[int], lats: list[int], burst_ns: int
) -> dict[str, Any]:
    waits.sort()
    lats.sort()
    return {
        "opened_before": before,
        "opened_total": proxy.accepted,
        "opened_by_burst": proxy.accepted - before,
        "connections_at_end": proxy.connections,
        "burst_ms": burst_ns / 1e6,
        "wait_p50_ms": _quantile(waits, 0.5) / 1e6,
        "wait_max_ms": waits[-1] / 1e6,
        "lat_max_ms": lats[-1] / 1e6,
    }


async def run_spike_async(
    contender: Any, body: Callable[[Any], Any], cfg: dict[str, Any], proxy: Any
) -> dict[str, Any]:
    await contender.open()
    before = proxy.accepted
    lease = contender.lease_for(0)

    async def request() -> tuple[int, int]:
        t0 = clock()
        async with lease() as conn:
            t1 = clock()
            await body(conn)
        return t1 - t0, clock() - t0

    t = clock()
    done = await asyncio.gather(*(request() for _ in range(cfg["concurrency"])))
    burst = clock() - t
    await asyncio.sleep(cfg["settle"])  # connects still in flight land
    result = _spike_result(proxy, before, [w for w, _ in done], [x for _, x in done], burst)
    result["pool"] = contender.stats()
    await contender.close()
    return result


def run_spike_threads(
    contender: Any, body: Callable[[Any], Any], cfg: dict[str, Any], proxy: Any
) -> dict[str, Any]:
    contender.open()
    before = proxy.accepted
    lease = contender.lease_for(0)
    n = cfg["concurrency"]
    barrier = threading.Barrier(n + 1)
    waits: list[int] = []
    lats: list[int] = []

    def request() -> None:
        barrier.wait()
        t0 = clock()
        with lease() as conn:
            t1 = clock()
            body(conn)
        lats.append(clock() - t0)
        waits.append(t1 - t0)

    threads = [threading.Thread(target=request, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    t = clock()
    for thread in threads:
        thread.join()
    burst = clock() - t
    time.sleep(cfg["settle"])
    result = _spike_result(proxy, before, waits, lats, burst)
    result["pool"] = contender.stats()
    contender.close()
    return result
