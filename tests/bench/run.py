"""Benchmarks (`make bench`): one JSON object a line, figures with their unit in the key.

Rows: ``allocate`` (the pure allocation per tick on a seeded 3-level tree).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.core.allocation import allocate
from tests.bench.sitegen import generate


def bench_allocate(connectors: int, budget_s: float = 3.0) -> dict[str, object]:
    site, snap = generate(connectors)
    allocate(site, snap)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times) < 5:
        t0 = time.perf_counter()
        allocate(site, snap)
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= 200:
            break
    return {
        "bench": "allocate",
        "connectors": connectors,
        "runs": len(times),
        "median_ms": round(statistics.median(times), 3),
        "p99_ms": round(sorted(times)[int(0.99 * (len(times) - 1))], 3),
    }


def main() -> None:
    for n in (10, 100, 1000):
        print(json.dumps(bench_allocate(n)), flush=True)


if __name__ == "__main__":
    main()
