"""tidepool beside the pools Python users pick today, in one run (``make benchmark``).

Every configuration (scenario x concurrency x contender) runs in a fresh child process
(``worker.py``) that opens its pool prewarmed, warms up, measures a window and prints JSON.
The repetitions are interleaved (every configuration once, then again, ...), so a slow moment
on a shared machine hits every contender alike. The report gives medians with their min-max
spread, ratios against the references measured in the same repetition, Jain's fairness index,
the longest acquire wait (counting acquires still pending at the end of the window), and the
issue's targets with PASS / MISS.

    python benchmarks/run.py                      # the whole suite, about 12 minutes
    python benchmarks/run.py --quick              # 1 repetition, short windows: a smoke test
    python benchmarks/run.py --only 'select1/c64' --reps 5 --json out.json
    python benchmarks/run.py --list               # the configurations and their estimates
    python benchmarks/run.py --from-json out.json --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import environment
import report
from contenders import SPECS
from plan import SCENARIOS, Config, build_plan, run_order, within_budget

HERE = Path(__file__).resolve().parent
MARK_START = "<!-- benchmark-results:start -->"
MARK_END = "<!-- benchmark-results:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[2:]),
    )
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="measured window per run, s (1.5)"
    )
    parser.add_argument("--only", metavar="REGEX", help="configurations whose name matches")
    parser.add_argument("--json", metavar="PATH", help="write everything measured here")
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        help=f"write the Markdown tables; in a file holding {MARK_START} ... {MARK_END}, "
        "replace what is between them",
    )
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, 0.5 s windows: a smoke test"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=12.0,
        metavar="MINUTES",
        help="leave out the lowest-priority configurations past this estimate (12)",
    )
    parser.add_argument("--from-json", metavar="PATH", help="report a stored run; measure nothing")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.reps, args.seconds = 1, 0.5
    if args.reps < 1 or args.seconds <= 0:
        parser.error("--reps must be >= 1 and --seconds > 0")
    return args


def run_child(cfg: Config) -> dict[str, Any]:
    """One run in a fresh process: its JSON result, or ``{"error": ...}``."""
    cmd = [sys.executable, str(HERE / "worker.py"), json.dumps(cfg.params)]
    env = {**os.environ, "PSYCOPG_IMPL": "binary"}
    limit = cfg.estimate_s() * 4 + 60
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, env=env, cwd=HERE.parent
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {limit:.0f} s"}
    lines = out.stderr.strip().splitlines()
    if out.returncode != 0 or not out.stdout.strip():
        return {"error": lines[-1][:300] if lines else f"exit status {out.returncode}"}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if lines:
        result["stderr_lines"] = len(lines)
        result["stderr_first"] = lines[0][:300]
    return result


def _progress(rep: int, reps: int, i: int, n: int, cfg: Config, res: dict[str, Any]) -> str:
    if "error" in res:
        what = f"ERROR {res['error']}"
    elif cfg.scenario == "spike":
        what = f"{res['connections_at_end']} connections at the end"
    else:
        what = f"{res['ops_per_s']:,.0f} ops/s"
    return f"[rep {rep}/{reps}] {i:3}/{n} {cfg.name:55} {what} ({res['wall_s']:.1f} s)"


def measure(args: argparse.Namespace, configs: list[Config]) -> dict[str, Any]:
    started = time.time()
    machine = environment.machine()
    servers = environment.servers()
    skipped: dict[str, str] = {}
    runnable = []
    for cfg in configs:
        service = SPECS[cfg.contender].service
        if service is not None and servers.get(service) is None:
            skipped[cfg.name] = f"{service} server unreachable"
        else:
            runnable.append(cfg)
    for service, version in servers.items():
        if version is None:
            print(f"{service}: server unreachable, its contenders are skipped", file=sys.stderr)
    order = run_order(runnable)
    estimate = sum(c.estimate_s() for c in order) * args.reps
    print(
        f"{len(order)} configurations x {args.reps} repetitions, estimated "
        f"{estimate / 60:.1f} min (load average {machine['load_average']})",
        file=sys.stderr,
    )
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in order}
    for rep in range(1, args.reps + 1):
        for i, cfg in enumerate(order, 1):
            t = time.perf_counter()
            res = run_child(cfg)
            res["wall_s"] = time.perf_counter() - t
            runs[cfg.name].append(res)
            print(_progress(rep, args.reps, i, len(order), cfg, res), file=sys.stderr)
    wall = time.time() - started
    return {
        "meta": {
            "command": "python benchmarks/run.py " + shlex.join(args.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "wall_s": wall,
            "estimate_s": estimate,
            "reps": args.reps,
            "seconds": args.seconds,
            "quick": args.quick,
            "machine": machine,
            "load_end": environment.load(),
            "packages": environment.packages(),
            "psycopg_impl": environment.psycopg_impl(),
            "tidepool_core": environment.tidepool_core(),
            "servers": servers,
            "commit": environment.git_commit(),
        },
        "scenarios": {name: asdict(s) for name, s in SCENARIOS.items()},
        "configs": [c.describe() for c in order],
        "runs": runs,
        "skipped": skipped,
    }


def summary(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The median of every numeric result per configuration."""
    out: dict[str, dict[str, float]] = {}
    for name, results in data["runs"].items():
        ok = [r for r in results if "error" not in r]
        keys = {k for r in ok for k, v in r.items() if isinstance(v, (int, float))}
        out[name] = {
            k: statistics.median(vals)
            for k in sorted(keys)
            if (vals := [r[k] for r in ok if isinstance(r.get(k), (int, float))])
        }
    return out


def write_markdown(path: Path, tables: str) -> None:
    block = f"{MARK_START}\n\n{tables}\n{MARK_END}"
    text = path.read_text() if path.exists() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        path.write_text(head + block + tail)
    else:
        path.write_text(tables)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        configs = build_plan(args.seconds, quick=args.quick)
        if args.only:
            pattern = re.compile(args.only)
            configs = [c for c in configs if pattern.search(c.name)]
            if not configs:
                print(f"no configuration matches {args.only!r} (see --list)", file=sys.stderr)
                return 2
        kept, dropped = within_budget(configs, args.reps, args.budget * 60)
        if args.list:
            for cfg in run_order(kept):
                print(f"{cfg.name:55} priority {cfg.priority}  ~{cfg.estimate_s():.1f} s per run")
            for cfg in dropped:
                print(f"{cfg.name:55} priority {cfg.priority}  left out (budget)")
            total = sum(c.estimate_s() for c in kept) * args.reps
            print(f"{len(kept)} configurations x {args.reps} repetitions: ~{total / 60:.1f} min")
            return 0
        if dropped:
            print(
                f"left out to stay within {args.budget:g} min: "
                + ", ".join(c.name for c in dropped),
                file=sys.stderr,
            )
        data = measure(args, kept)
        data["meta"]["left_out_for_budget"] = [c.name for c in dropped]
        data["summary"] = summary(data)
        data["targets"] = report.evaluate(report.Runs(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    if args.markdown:
        write_markdown(Path(args.markdown), report.render_markdown(data))
    print(report.render_text(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
