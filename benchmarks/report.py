"""The tables of a run: one per scenario, the cost of the session reset, and the targets.

Everything is computed from the run data (``run.py --json`` writes it), so a stored run can be
rendered again, as text or as Markdown for ``docs/benchmarks.md``. Values are medians over the
repetitions; "spread" is the min-max of ops/s; a ratio is the median of the per-repetition
ratios (each against the reference measured in the same repetition), with their min-max.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from contenders import LABELS

FAIR_JAIN = 0.99
FAIR_WAIT = 10.0  # longest acquire wait / median acquire wait
BUSY_LOAD = 0.5  # 1-minute load average at the start above which a run is flagged as noisy


# ------------------------------------------------------------------ tables


class Table:
    """Rows of strings, rendered as aligned text or as a Markdown table."""

    def __init__(self, title: str, headers: list[str], numeric_from: int, note: str = "") -> None:
        self.title, self.headers, self.note = title, headers, note
        self.numeric_from = numeric_from  # columns from here on are right-aligned
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def text(self) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
            for i, h in enumerate(self.headers)
        ]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i >= self.numeric_from else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        out = [self.title, line(self.headers), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def markdown(self, level: str = "###") -> str:
        align = ["---" if i < self.numeric_from else "---:" for i in range(len(self.headers))]
        out = [f"{level} {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        out += ["| " + " | ".join(self.headers) + " |", "|" + "|".join(align) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(out)


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def _spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return f"{_n(min(values), digits)}-{_n(max(values), digits)}"


def _ratio(r: tuple[float, float, float] | None) -> str:
    if r is None:
        return "-"
    return f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"


# ------------------------------------------------------------------ the data


class Runs:
    """Per-configuration results, aligned by repetition (``None`` where a run failed)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.configs: dict[str, dict[str, Any]] = {c["name"]: c for c in data["configs"]}
        self.runs: dict[str, list[dict[str, Any] | None]] = {
            name: [r if r is not None and "error" not in r else None for r in results]
            for name, results in data["runs"].items()
        }
        self.errors = {
            name: [r["error"] for r in results if r is not None and "error" in r]
            for name, results in data["runs"].items()
        }

    def has(self, name: str) -> bool:
        return any(r is not None for r in self.runs.get(name, []))

    def values(self, name: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(name, []) if r is not None and r.get(key) is not None]

    def median(self, name: str, key: str) -> float | None:
        values = self.values(name, key)
        return statistics.median(values) if values else None

    def paired(
        self, name: str, ref: str, key: str, combine: Callable[[float, float], float]
    ) -> tuple[float, float, float] | None:
        """``combine(value, reference value)`` per repetition: (median, min, max)."""
        out = []
        for a, b in zip(self.runs.get(name, []), self.runs.get(ref, []), strict=False):
            if a is None or b is None or a.get(key) is None or b.get(key) is None:
                continue
            if combine is _div and not b[key]:
                continue
            out.append(combine(a[key], b[key]))
        return (statistics.median(out), min(out), max(out)) if out else None

    def ratio(self, name: str, ref: str | None, key: str = "ops_per_s") -> Any:
        if ref is None or ref == name or not self.has(ref):
            return None
        return self.paired(name, ref, key, _div)

    def in_order(self, scenario: str) -> list[dict[str, Any]]:
        return [
            c for c in self.configs.values() if c["scenario"] == scenario and self.has(c["name"])
        ]


def _div(a: float, b: float) -> float:
    return a / b


def _sub(a: float, b: float) -> float:
    return a - b


def pool_ref(cfg: dict[str, Any]) -> str | None:
    """The reference of the same number of connections, same mode and driver: the 20-line
    pool for the checkout scenarios, raw (C <= pool) or raw-sem (C > pool) for queries."""
    scenario, c = cfg["scenario"], cfg["concurrency"]
    if scenario in ("checkout-tight", "checkout"):
        ref = "ref-asyncio-queue" if cfg["mode"] == "async" else "ref-thread-lifoqueue"
        return f"{scenario}/c{c}/{ref}"
    if scenario in ("select1", "scale"):
        kind = "raw-sem" if c > cfg["params"]["max_size"] else "raw"
        return f"{scenario}/c{c}/{LABELS[cfg['driver']]}-{kind}"
    return None


def dedicated_ref(cfg: dict[str, Any]) -> str | None:
    if cfg["scenario"] != "select1":
        return None
    return f"select1/c{cfg['concurrency']}/{LABELS[cfg['driver']]}-raw"


# ------------------------------------------------------------------ scenario tables


def _wait_cells(runs: Runs, cfg: dict[str, Any]) -> list[str]:
    """Jain, the longest acquire wait (median and worst repetition), max / median wait."""
    name = cfg["name"]
    waits = runs.values(name, "wait_max_ms")
    wait = f"{_n(statistics.median(waits), 1)} ({_n(max(waits), 1)})" if waits else "-"
    # a dedicated connection per worker: nobody waits, and the ratio would be noise / noise
    ratio = None if cfg["kind"] == "raw" else runs.median(name, "wait_max_over_median")
    return [_n(runs.median(name, "jain"), 2), wait, _n(ratio, 1)]


def checkout_table(runs: Runs, scenario: str, about: str) -> Table | None:
    configs = runs.in_order(scenario)
    if not configs:
        return None
    tight = scenario == "checkout-tight"
    headers = ["C", "contender", "mode", "ops/s", "spread", "vs 20-line pool", "p50 us", "p99 us"]
    if not tight:
        headers += ["Jain", "max wait ms (worst)", "max/med wait"]
    headers += ["CPU us/op"]
    table = Table(f"{scenario}: {about}", headers, 3)
    for cfg in sorted(configs, key=lambda c: (c["concurrency"], c["mode"])):
        name = cfg["name"]
        ops = runs.values(name, "ops_per_s")
        cells = [
            str(cfg["concurrency"]),
            cfg["contender"],
            cfg["mode"],
            _n(runs.median(name, "ops_per_s")),
            _spread(ops),
            _ratio(runs.ratio(name, pool_ref(cfg))),
            _n(runs.median(name, "lat_p50_us"), 1),
            _n(runs.median(name, "lat_p99_us"), 1),
        ]
        if not tight:
            cells += _wait_cells(runs, cfg)
        cells.append(_n(runs.median(name, "cpu_us_per_op"), 2))
        table.add(*cells)
    return table


def select_table(runs: Runs, about: str) -> Table | None:
    configs = runs.in_order("select1")
    if not configs:
        return None
    headers = [
        "C",
        "contender",
        "mode",
        "ops/s",
        "spread",
        "vs raw, 10 conns",
        "vs raw, C conns",
        "p50 us",
        "p99 us",
        "Jain",
        "max wait ms (worst)",
        "max/med wait",
        "CPU us/op",
    ]
    table = Table(
        f"select1: {about}",
        headers,
        3,
        "vs raw, 10 conns: against the same driver with no pool, on one dedicated connection per "
        "worker at C=1 and on 10 connections behind a semaphore at C>10.",
    )
    for cfg in sorted(configs, key=lambda c: (c["concurrency"], c["driver"])):
        name = cfg["name"]
        table.add(
            str(cfg["concurrency"]),
            cfg["contender"],
            cfg["mode"],
            _n(runs.median(name, "ops_per_s")),
            _spread(runs.values(name, "ops_per_s")),
            _ratio(runs.ratio(name, pool_ref(cfg))),
            _ratio(runs.ratio(name, dedicated_ref(cfg))),
            _n(runs.median(name, "lat_p50_us"), 1),
            _n(runs.median(name, "lat_p99_us"), 1),
            *_wait_cells(runs, cfg),
            _n(runs.median(name, "cpu_us_per_op"), 1),
        )
    return table


def scale_table(runs: Runs, about: str) -> Table | None:
    configs = runs.in_order("scale")
    if not configs:
        return None
    headers = [
        "tasks",
        "contender",
        "ops/s",
        "spread",
        "vs raw-sem",
        "wait p50 ms",
        "wait p99 ms",
        "max wait ms (worst)",
        "max/med wait",
        "ops per task",
        "Jain",
        "peak RSS MB",
        "KB per waiter",
        "KB above raw-sem",
    ]
    table = Table(
        f"scale: {about}",
        headers,
        2,
        "KB per waiter: (peak RSS - RSS after setup - the harness's own records) / tasks; "
        "raw-sem's figure is the cost of the task itself and of a semaphore wait.",
    )
    for cfg in sorted(configs, key=lambda c: c["concurrency"]):
        name = cfg["name"]
        ref = pool_ref(cfg)
        above = (
            runs.paired(name, ref, "rss_per_worker_bytes", _sub)
            if ref and ref != name and runs.has(ref)
            else None
        )
        lo = runs.values(name, "worker_ops_min")
        hi = runs.values(name, "worker_ops_max")
        waits = [w / 1e3 for w in runs.values(name, "wait_p50_us")]
        p99 = [w / 1e3 for w in runs.values(name, "wait_p99_us")]
        table.add(
            f"{cfg['concurrency']:,}",
            cfg["contender"],
            _n(runs.median(name, "ops_per_s")),
            _spread(runs.values(name, "ops_per_s")),
            _ratio(runs.ratio(name, ref)),
            _n(statistics.median(waits), 1) if waits else "-",
            _n(statistics.median(p99), 1) if p99 else "-",
            _wait_cells(runs, cfg)[1],
            _n(runs.median(name, "wait_max_over_median"), 2),
            f"{int(min(lo))}-{int(max(hi))}" if lo and hi else "-",
            _n(runs.median(name, "jain"), 3),
            _n(runs.median(name, "rss_peak_mb"), 1),
            _n(_kb(runs.median(name, "rss_per_worker_bytes")), 2),
            _n(above[0] / 1024, 2) if above else "-",
        )
    return table


def _kb(x: float | None) -> float | None:
    return None if x is None else x / 1024


def spike_table(runs: Runs, about: str) -> Table | None:
    configs = runs.in_order("spike")
    if not configs:
        return None
    headers = [
        "contender",
        "mode",
        "connections at the end",
        "spread",
        "opened for the burst",
        "burst ms",
        "max wait ms",
    ]
    table = Table(f"spike: {about}", headers, 2)
    for cfg in configs:
        name = cfg["name"]
        table.add(
            cfg["contender"],
            cfg["mode"],
            _n(runs.median(name, "connections_at_end")),
            _spread(runs.values(name, "connections_at_end")),
            _n(runs.median(name, "opened_by_burst")),
            _n(runs.median(name, "burst_ms"), 1),
            _n(runs.median(name, "wait_max_ms"), 1),
        )
    return table


def reset_table(runs: Runs) -> Table | None:
    """Every pool measured both with its default reset and without, in the same runs."""
    table = Table(
        "reset-cost: the default session reset against none, same scenario, same run",
        [
            "scenario",
            "C",
            "pool",
            "default ops/s",
            "reset off ops/s",
            "default / off",
            "extra CPU us/op",
            "extra p50 us",
        ],
        3,
    )
    for cfg in runs.configs.values():
        name = cfg["name"]
        off = name + "-noreset"
        if cfg["contender"].endswith("-noreset") or not (runs.has(name) and runs.has(off)):
            continue
        cpu = runs.paired(name, off, "cpu_us_per_op", _sub)
        p50 = runs.paired(name, off, "lat_p50_us", _sub)
        table.add(
            cfg["scenario"],
            str(cfg["concurrency"]),
            cfg["contender"],
            _n(runs.median(name, "ops_per_s")),
            _n(runs.median(off, "ops_per_s")),
            _ratio(runs.ratio(name, off)),
            _n(cpu[0], 1) if cpu else "-",
            _n(p50[0], 1) if p50 else "-",
        )
    return table if table.rows else None


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """One row of the issue's targets table, and how it is measured here.

    ``kind``: ``value`` (the median of ``key``), ``ratio`` (``key`` over ``ref``'s, per
    repetition) or ``above`` (``key`` minus ``ref``'s, per repetition). ``fair`` adds the
    fairness conditions: Jain >= 0.99 and longest acquire wait <= 10x the median wait.
    """

    row: str
    config: str
    kind: str
    goal: float
    at_most: bool = False
    ref: str | None = None
    key: str = "ops_per_s"
    fair: bool = False
    baseline: str = ""
    context: tuple[str, ...] = ()
    info: bool = False
    stretch: float | None = None
    unit: str = "x"


def _c64(contender: str) -> str:
    return f"select1/c64/{contender}"


TARGETS = [
    Target(
        "checkout-tight, AsyncPool: client CPU per acquire+release",
        "checkout-tight/c1/tidepool-asyncpg-noreset",
        "value",
        3.0,
        at_most=True,
        key="cpu_us_per_op",
        baseline="psycopg_pool async 9.4 us (asyncio.Queue 1.4 us)",
        context=("checkout-tight/c1/psycopg-async-pool", "checkout-tight/c1/ref-asyncio-queue"),
        unit=" us",
    ),
    Target(
        "checkout-tight, Pool: client CPU per acquire+release",
        "checkout-tight/c1/tidepool-psycopg-noreset",
        "value",
        3.5,
        at_most=True,
        key="cpu_us_per_op",
        baseline="psycopg_pool sync 5.4 us (LifoQueue 1.8 us)",
        context=("checkout-tight/c1/psycopg-pool", "checkout-tight/c1/ref-thread-lifoqueue"),
        unit=" us",
    ),
    Target(
        "checkout, C=64, AsyncPool: ops/s vs asyncpg's pool without reset",
        "checkout/c64/tidepool-asyncpg-noreset",
        "ratio",
        2.0,
        ref="checkout/c64/asyncpg-pool-noreset",
        fair=True,
        baseline="asyncpg pool without reset 45.7k ops/s",
        context=("checkout/c64/psycopg-async-pool",),
    ),
    Target(
        "select1 asyncpg, C=64, reset off: vs raw asyncpg, 10 conns + semaphore",
        _c64("tidepool-asyncpg-noreset"),
        "ratio",
        0.90,
        ref=_c64("asyncpg-raw-sem"),
        fair=True,
        baseline="asyncpg pool without reset 0.62x",
        context=(_c64("asyncpg-pool-noreset"),),
    ),
    Target(
        "select1 asyncpg, C=64, default (safe) reset: vs raw",
        _c64("tidepool-asyncpg"),
        "ratio",
        0.75,
        ref=_c64("asyncpg-raw-sem"),
        fair=True,
        stretch=0.85,
        baseline="asyncpg pool with its reset 0.37x",
        context=(_c64("asyncpg-pool"),),
    ),
    Target(
        "select1 psycopg async, C=64: vs raw psycopg, 10 conns + semaphore",
        _c64("tidepool-psycopg-async"),
        "ratio",
        0.90,
        ref=_c64("psycopg-async-raw-sem"),
        fair=True,
        baseline="psycopg_pool 0.63x",
        context=(_c64("psycopg-async-pool"),),
    ),
    Target(
        "(same, reset off)",
        _c64("tidepool-psycopg-async-noreset"),
        "ratio",
        0.90,
        ref=_c64("psycopg-async-raw-sem"),
        fair=True,
        info=True,
    ),
    Target(
        "select1 psycopg threads, C=64: vs psycopg_pool ConnectionPool",
        _c64("tidepool-psycopg"),
        "ratio",
        1.2,
        ref=_c64("psycopg-pool"),
        fair=True,
        baseline="psycopg_pool ConnectionPool 4.5k ops/s",
    ),
    Target(
        "(same, reset off)",
        _c64("tidepool-psycopg-noreset"),
        "ratio",
        1.2,
        ref=_c64("psycopg-pool"),
        fair=True,
        info=True,
    ),
]
for _tasks in (1000, 10000):
    _name = f"scale/c{_tasks}/tidepool-asyncpg-noreset"
    _ref = f"scale/c{_tasks}/asyncpg-raw-sem"
    TARGETS += [
        Target(
            f"scale, {_tasks:,} tasks (reset off): vs raw asyncpg + semaphore",
            _name,
            "ratio",
            0.90,
            ref=_ref,
            baseline="psycopg_pool 0.60x (raw-sem 18.1k ops/s)",
            context=(f"scale/c{_tasks}/psycopg-async-pool", f"scale/c{_tasks}/asyncpg-pool"),
        ),
        Target(
            f"scale, {_tasks:,} tasks: max / median acquire wait",
            _name,
            "value",
            2.0,
            at_most=True,
            key="wait_max_over_median",
            baseline="raw-sem 2.0, asyncpg pool 14",
            context=(_ref, f"scale/c{_tasks}/psycopg-async-pool"),
        ),
        Target(
            f"scale, {_tasks:,} tasks: RSS per waiter above raw-sem (bytes)",
            _name,
            "above",
            2048,
            at_most=True,
            ref=_ref,
            key="rss_per_worker_bytes",
            context=(f"scale/c{_tasks}/psycopg-async-pool", f"scale/c{_tasks}/asyncpg-pool"),
            unit=" B",
        ),
    ]
TARGETS += [
    Target(
        "spike (connect 150 ms, 50 requests, max 50): connections at the end",
        "spike/c50/tidepool-asyncpg",
        "value",
        8,
        at_most=True,
        key="connections_at_end",
        baseline="HikariCP 5-6, DBCP2 45",
        context=("spike/c50/psycopg-async-pool", "spike/c50/asyncpg-pool"),
        unit="",
    ),
    Target(
        "Redis PING, C=64: vs raw redis-py, 10 conns + semaphore",
        _c64("tidepool-redis"),
        "ratio",
        0.90,
        ref=_c64("redis-raw-sem"),
        fair=True,
        baseline="redis-py BlockingConnectionPool 0.65x, unfair",
        context=(_c64("redis-blocking-pool"),),
    ),
    Target(
        "(same, reset off)",
        _c64("tidepool-redis-noreset"),
        "ratio",
        0.90,
        ref=_c64("redis-raw-sem"),
        fair=True,
        info=True,
    ),
    Target(
        "MySQL select1 (aiomysql), C=64: vs raw aiomysql, 10 conns + semaphore",
        _c64("tidepool-aiomysql"),
        "ratio",
        0.95,
        ref=_c64("aiomysql-raw-sem"),
        fair=True,
        baseline="aiomysql pool 0.89x",
        context=(_c64("aiomysql-pool"),),
    ),
    Target(
        "(same, reset off)",
        _c64("tidepool-aiomysql-noreset"),
        "ratio",
        0.95,
        ref=_c64("aiomysql-raw-sem"),
        fair=True,
        info=True,
    ),
]


def _measure(runs: Runs, t: Target, name: str) -> tuple[float, float, float] | None:
    if t.kind == "ratio":
        return runs.ratio(name, t.ref, t.key)  # type: ignore[no-any-return]
    if t.kind == "above":
        if t.ref is None or not runs.has(t.ref):
            return None
        return runs.paired(name, t.ref, t.key, _sub)
    values = runs.values(name, t.key)
    return (statistics.median(values), min(values), max(values)) if values else None


def _fmt(t: Target, m: tuple[float, float, float] | None) -> str:
    if m is None:
        return "-"
    digits = 2 if t.unit in ("x", " us") else 0
    body = f"{m[0]:,.{digits}f}{t.unit}"
    if m[1] != m[2]:
        body += f" ({m[1]:,.{digits}f}-{m[2]:,.{digits}f})"
    return body


def evaluate(runs: Runs) -> list[dict[str, Any]]:
    """Each target with its measured value, fairness and PASS / MISS (``n/a``: not measured)."""
    rows = []
    for t in TARGETS:
        measured = _measure(runs, t, t.config)
        fair_ok = True
        fairness = "-"
        if t.fair and runs.has(t.config):
            j = runs.median(t.config, "jain")
            w = runs.median(t.config, "wait_max_over_median")
            fair_ok = j is not None and j >= FAIR_JAIN and w is not None and w <= FAIR_WAIT
            fairness = f"Jain {_n(j, 2)}, max/med wait {_n(w, 1)}"
        met = None
        if measured is not None:
            met = measured[0] <= t.goal if t.at_most else measured[0] >= t.goal
            met = met and fair_ok
        if t.info:
            status = "info"
        elif met is None:
            status = "n/a"
        else:
            status = "PASS" if met else "MISS"
            if met and t.stretch is not None and measured is not None:
                status += " (stretch met)" if measured[0] >= t.stretch else ""
        context = []
        for other in t.context:
            m = _measure(runs, t, other)
            if m is not None:
                context.append(f"{other.rsplit('/', 1)[-1]} {_fmt(t, m).split(' (')[0]}")
        goal = ("<= " if t.at_most else ">= ") + f"{t.goal:g}{t.unit}"
        if t.stretch is not None:
            goal += f" (stretch {t.stretch:g}{t.unit})"
        if t.fair:
            goal += ", fair"
        rows.append(
            {
                "target": t.row,
                "config": t.config,
                "reference": t.ref,
                "measured": measured,
                "measured_text": _fmt(t, measured),
                "goal": goal,
                "fairness": fairness,
                "same_run": "; ".join(context) or "-",
                "baseline": t.baseline or "-",
                "status": status,
            }
        )
    return rows


def targets_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "targets (medians of the repetitions; ratios against references of the same run)",
        [
            "target",
            "measured on",
            "measured",
            "goal",
            "fairness",
            "same run",
            "issue baseline",
            "result",
        ],
        99,
        f"fair: Jain >= {FAIR_JAIN} over per-worker op counts and no acquire wait above "
        f"{FAIR_WAIT:g}x the median wait. 'same run' shows the peers measured the same way.",
    )
    for r in rows:
        table.add(
            r["target"],
            r["config"].rsplit("/", 1)[-1],
            r["measured_text"],
            r["goal"],
            r["fairness"],
            r["same_run"],
            r["baseline"],
            r["status"],
        )
    return table


def contenders_table(data: dict[str, Any]) -> Table:
    table = Table("contenders in this run", ["contender", "mode", "kind", "driver", "what"], 99)
    seen: set[str] = set()
    for cfg in data["configs"]:
        if cfg["contender"] not in seen:
            seen.add(cfg["contender"])
            table.add(cfg["contender"], cfg["mode"], cfg["kind"], cfg["driver"], cfg["about"])
    table.rows.sort(key=lambda r: (r[2] != "tidepool", r[3], r[0]))
    return table


# ------------------------------------------------------------------ the whole report


def tables(data: dict[str, Any]) -> list[Table]:
    runs = Runs(data)
    about = {s: d["about"] for s, d in data["scenarios"].items()}
    found: Iterable[Table | None] = (
        checkout_table(runs, "checkout-tight", about["checkout-tight"]),
        checkout_table(runs, "checkout", about["checkout"]),
        select_table(runs, about["select1"]),
        reset_table(runs),
        scale_table(runs, about["scale"]),
        spike_table(runs, about["spike"]),
    )
    return [t for t in found if t is not None]


def header_lines(data: dict[str, Any]) -> list[str]:
    meta = data["meta"]
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v)
    servers = "; ".join(v for v in meta["servers"].values() if v)
    lines = [
        f"command: {meta['command']}",
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, {m['os']}, "
        f"kernel {m['kernel']}, {m['python']}, {m['event_loop']}",
        f"load average at start {m['load_average']}, at the end {meta.get('load_end')}",
        f"packages: {versions}; psycopg impl {meta.get('psycopg_impl')}; tidepool core "
        f"{meta.get('tidepool_core', 'pure Python')}",
        f"servers: {servers}",
        f"tidepool commit {meta.get('commit')}; {meta['reps']} repetitions, interleaved, one "
        f"fresh process per run; window {meta['seconds']:g} s (checkout-tight 2/3 of it, scale "
        f"4/3) after a warm-up; wall time {_n(meta.get('wall_s'), 0)} s",
    ]
    if m["load_average"][0] > BUSY_LOAD:
        lines.append(
            f"note: the machine was busy when the run started (load average "
            f"{m['load_average'][0]:g} before any benchmark process): the figures are noisy"
        )
    return lines


def errors(data: dict[str, Any]) -> list[str]:
    out = []
    for name, errs in Runs(data).errors.items():
        for err in sorted(set(errs)):
            out.append(f"{name}: {err}")
    out += [f"{name}: skipped, {why}" for name, why in data.get("skipped", {}).items()]
    return out


def render_text(data: dict[str, Any]) -> str:
    parts = ["\n".join(header_lines(data))]
    parts += [t.text() for t in tables(data)]
    parts.append(targets_table(evaluate(Runs(data))).text())
    errs = errors(data)
    if errs:
        parts.append("not measured:\n  " + "\n  ".join(errs))
    return "\n\n".join(parts) + "\n"


def render_markdown(data: dict[str, Any]) -> str:
    parts = ["```text\n" + "\n".join(header_lines(data)) + "\n```"]
    parts.append(targets_table(evaluate(Runs(data))).markdown())
    parts += [t.markdown() for t in tables(data)]
    parts.append(contenders_table(data).markdown())
    errs = errors(data)
    if errs:
        parts.append("Not measured in this run:\n\n" + "\n".join(f"- `{e}`" for e in errs))
    return "\n\n".join(parts) + "\n"
