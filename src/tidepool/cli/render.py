"""How ``tidepool bench`` shows what it measured: a table, one JSON document (its schema is
``schema/bench.schema.json`` beside this module), CSV, or a PNG plot (matplotlib)."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import platform
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .. import __version__
from .._url import redact_url
from .common import EXIT_FAILURE, EXIT_USAGE, CommandError, color_enabled, paint

if TYPE_CHECKING:
    from .bench import Outcome

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "environment",
    "plot",
    "render_csv",
    "render_table",
    "report",
    "require_matplotlib",
    "write",
]

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).parent / "schema" / "bench.schema.json"
CSV_COLUMNS = (
    "label",
    "size",
    "requests",
    "req_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p99_wait_ms",
    "timeouts",
    "errors",
    "server_connections",
    "recommended",
)
MATPLOTLIB_HINT = "--plot needs matplotlib: pip install 'tidepool[cli]'"


def write(outcome: Outcome, stream: TextIO) -> None:
    """Write ``outcome`` to ``stream`` in the configured format."""
    fmt = outcome.config.format
    if fmt == "json":
        stream.write(json.dumps(report(outcome), indent=2) + "\n")
    elif fmt == "csv":
        stream.write(render_csv(outcome))
    else:
        stream.write(render_table(outcome, color=color_enabled(stream)))
    stream.flush()


def environment() -> dict[str, Any]:
    """Where the numbers were measured (the client side)."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tidepool": __version__,
    }


def report(outcome: Outcome) -> dict[str, Any]:
    """The JSON document: config, environment, per-size results and the recommendation."""
    config = outcome.config
    settings: dict[str, Any] = {
        "url": None if config.url is None else redact_url(config.url),
        "database": outcome.database,
        "kind": outcome.kind,
        "driver": outcome.driver,
        "workload": config.workload,
        "query": config.query,
        "sizes": config.sizes if config.sizes == "auto" else list(config.sizes),
        "concurrency": config.concurrency,
        "instances": config.instances,
        "duration": config.duration,
        "warmup": config.warmup,
        "work_ms": config.work_ms,
        "hold": config.hold,
        "acquire_timeout": config.acquire_timeout,
        "format": config.format,
        "table": outcome.table,
        "rows": outcome.rows,
        "write_share": config.write_share,
    }
    env = environment()
    env["server"] = outcome.server.as_dict()
    rec = outcome.recommendation
    hikari = outcome.hikari
    return {
        "schema_version": SCHEMA_VERSION,
        "config": settings,
        "environment": env,
        "results": [dataclasses.asdict(r) for r in outcome.results],
        "skipped": [{"size": size, "reason": why} for size, why in outcome.skipped],
        "recommendation": None if rec is None else dataclasses.asdict(rec),
        "hikari": None if hikari is None else dataclasses.asdict(hikari),
        "warnings": list(outcome.warnings),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    return [line(header), *(line(row) for row in rows)]


def render_table(outcome: Outcome, color: bool = False) -> str:
    """The plain-text report: what was measured, the table, the recommendation."""
    config = outcome.config
    env = environment()
    work = ""
    if config.work_ms:
        where = "holding the connection" if config.hold else "not holding the connection"
        work = f", {config.work_ms:g} ms of app work per request ({where})"
    what = config.workload if config.query is None else "--query"
    seeded = f" ({outcome.rows:,} rows)" if outcome.rows else ""
    instances = f" x {config.instances} instances" if config.instances > 1 else ""
    via = f" via {outcome.driver}" if outcome.kind == "postgresql" else ""
    lines = [
        f"tidepool bench: {what} on {outcome.database}{seeded}{via}, "
        f"concurrency {config.concurrency}{instances}, {config.duration:g} s per size "
        f"after {config.warmup:g} s warmup{work}",
        f"python {env['python']}, {env['cpu_count']} CPUs, tidepool {env['tidepool']}; "
        + _server_line(outcome),
        "",
    ]
    header = (
        "size", "req/s", "p50 ms", "p95 ms", "p99 ms", "p99 wait ms", "timeouts", "server conns"
    )  # fmt: skip
    rows = [
        (
            r.label,
            f"{r.req_per_s:.0f}",
            _ms(r.p50_ms),
            _ms(r.p95_ms),
            _ms(r.p99_ms),
            _ms(r.p99_wait_ms),
            str(r.timeouts),
            "-" if r.server_connections is None else str(r.server_connections),
        )
        for r in outcome.results
    ]
    table = _table(header, rows)
    lines.append(paint(table[0], "1", color))
    lines.extend(table[1:])
    lines.append("")
    rec = outcome.recommendation
    if rec is None:
        lines.append("recommended: none (no pool size completed a request)")
    else:
        lines.append(paint(f"recommended: max_size={rec.size}", "1;32", color))
        lines.append(f"why: size {rec.size}: {rec.reason}")
    if outcome.hikari is not None:
        hikari = outcome.hikari
        start = (
            f"unknown ({hikari.note})"
            if hikari.size is None
            else f"max_size={hikari.size} ({hikari.note})"
        )
        lines.append(f"HikariCP starting point: {start}")
    lines.extend(paint(f"warning: {w}", "33", color) for w in outcome.warnings)
    return "\n".join(lines) + "\n"


def _server_line(outcome: Outcome) -> str:
    server = outcome.server
    text = f"{server.kind} {server.version}"
    if server.max_connections is not None:
        text += (
            f", max_connections {server.max_connections} ({server.reserved_connections} "
            f"reserved, {server.connections_in_use} in use)"
        )
    if outcome.kind == "postgresql":
        text += ", local" if server.local else ", remote"
    return text


def render_csv(outcome: Outcome) -> str:
    """One header line and one row per measured size (the baseline first, size empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rec = outcome.recommendation
    for r in outcome.results:
        row = dataclasses.asdict(r)
        row["recommended"] = rec is not None and r.size == rec.size
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def require_matplotlib() -> None:
    """Raise a one-line :class:`CommandError` (exit code 2) unless matplotlib is importable."""
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError(MATPLOTLIB_HINT, EXIT_USAGE)


def plot(outcome: Outcome, path: str) -> None:
    """Draw throughput and p99 latency against pool size into the PNG file ``path``."""
    require_matplotlib()
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    pooled = [r for r in outcome.results if r.size is not None]
    sizes = [r.size for r in pooled]
    figure, left = pyplot.subplots(figsize=(7, 4), dpi=100)
    try:
        left.plot(sizes, [r.req_per_s for r in pooled], "o-", color="tab:blue", label="req/s")
        left.set_xscale("log", base=2)
        left.set_xticks(sizes, [str(s) for s in sizes])
        left.set_xlabel("pool size (max_size)")
        left.set_ylabel("throughput (req/s)", color="tab:blue")
        right = left.twinx()
        right.plot(
            sizes,
            [float("nan") if r.p99_ms is None else r.p99_ms for r in pooled],
            "s--",
            color="tab:red",
            label="p99 ms",
        )
        right.set_ylabel("p99 latency (ms)", color="tab:red")
        baseline = next((r for r in outcome.results if r.size is None), None)
        if baseline is not None and baseline.req_per_s > 0:
            left.axhline(baseline.req_per_s, color="gray", linestyle=":", label="no pool")
        rec = outcome.recommendation
        title = f"tidepool bench: {outcome.config.workload} on {outcome.database}"
        if rec is not None:
            left.axvline(rec.size, color="tab:green", alpha=0.4)
            title += f" (recommended {rec.size})"
        left.set_title(title, fontsize=9)
        figure.tight_layout()
        figure.savefig(path, format="png")
    except OSError as exc:
        raise CommandError(f"cannot write the plot {path!r}: {exc}", EXIT_FAILURE) from None
    finally:
        pyplot.close(figure)
