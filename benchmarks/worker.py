"""One measurement in a fresh process: ``python benchmarks/worker.py '<config as JSON>'``.

Builds the contender, opens it (prewarmed), runs the configuration's scenario and prints the
result as one JSON object on stdout. ``run.py`` starts one of these per run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import scenarios
from contenders import SPECS, build


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    spec = SPECS[cfg["contender"]]
    proxy = scenarios.open_spike_proxy(cfg) if cfg["scenario"] == "spike" else None
    try:
        contender, driver = build(
            spec,
            workers=cfg["concurrency"],
            max_size=cfg["max_size"],
            min_size=cfg["min_size"],
            pg_port=proxy.port if proxy is not None else None,
        )
        sync = spec.mode == "sync"
        body: Any
        if cfg["body"] == "none":
            body = None
        elif cfg["body"] == "yield":
            body = scenarios.hold_sync if sync else scenarios.hold_async
        else:
            body = driver.op(cfg["sql"], client=contender.lends_client)
        if proxy is not None:
            if sync:
                return scenarios.run_spike_threads(contender, body, cfg, proxy)
            return asyncio.run(scenarios.run_spike_async(contender, body, cfg, proxy))
        if sync:
            return scenarios.run_closed_threads(contender, body, cfg)
        return asyncio.run(scenarios.run_closed_async(contender, body, cfg))
    finally:
        if proxy is not None:
            proxy.close()


if __name__ == "__main__":
    scenarios.settle_allocator()
    print(json.dumps(measure(json.loads(sys.argv[1]))))
