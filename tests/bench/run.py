"""Benchmarks (`make bench`): one JSON object a line, figures with their unit in the key.

Rows, each for 10, 100 and 1000 connectors on seeded 3-level trees (tests/bench/sitegen.py):

- ``allocate``: the whole engine, ``allocate()`` per tick (``generate``: idle connectors,
  tiers, minimums that may not fit).
- ``allocate_kernel``: the numeric kernel alone, ``waterfill`` on the inputs the engine
  prepares (``kernel_instance``: everyone charging, every fair share at least the minimum).
- ``allocate_lp``: the same problem solved by the reference, a sequence of linear programs
  with HiGHS (tests/bench/lp_reference.py): the largest difference in any connector's
  allocation, both medians and the ratio. Skipped, with a note on stderr, without highspy.

Targets (issue 3): kernel <= 1 ms median at 1000 connectors, difference <= 0.01 A, kernel
>= 100x faster than the reference.

Then the device side (tests/bench/buses.py, issue 4): ``tick`` (the real control loop's tick
with 1 meter and 50 EVSEs on loopback Modbus TCP), ``footprint`` (the real `evsite run`
process at 50 connectors: CPU share of one core, RSS) and ``rtu`` (transactions per second on
a paced pty at 19200 8E1 against the wire limit). Targets: p99 <= 250 ms, <= 2 % and <= 80 MB,
ratio >= 0.8.

Then the MQTT link (tests/bench/mqtt.py, issue 6), against a real mosquitto: ``mqtt_outbox``
(events per second through the persistent outbox to the broker, and single fsync'd appends
per second) and ``mqtt_telemetry`` (CPU share of one core for telemetry at 50 connectors).
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from controller.core.allocation import allocate
from controller.core.waterfill import FloatArray, waterfill
from tests.bench.sitegen import KernelInstance, generate, kernel_instance

SIZES = (10, 100, 1000)
SEED = 1


def _times_ms(
    call: Callable[[], object], *, budget_s: float, min_runs: int, max_runs: int
) -> list[float]:
    """Wall times of ``call`` in ms: at least ``min_runs``, then until the budget is spent."""
    call()  # warm-up
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection is not the code under test
    try:
        start = time.perf_counter()
        while len(times) < max_runs and (
            len(times) < min_runs or time.perf_counter() - start < budget_s
        ):
            t0 = time.perf_counter_ns()
            call()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _p99(times: list[float]) -> float:
    return sorted(times)[int(0.99 * (len(times) - 1))]


def bench_allocate(connectors: int, budget_s: float = 3.0) -> dict[str, object]:
    site, snap = generate(connectors)
    times = _times_ms(lambda: allocate(site, snap), budget_s=budget_s, min_runs=5, max_runs=200)
    return {
        "bench": "allocate",
        "connectors": connectors,
        "runs": len(times),
        "median_ms": round(statistics.median(times), 3),
        "p99_ms": round(_p99(times), 3),
    }


def bench_kernel(inst: KernelInstance, budget_s: float = 1.5) -> tuple[dict[str, object], float]:
    """The row, and the median in ms unrounded (for the ratio to the reference)."""
    times = _times_ms(
        lambda: waterfill(inst.inc, inst.lo, inst.hi, inst.cap, inst.members),
        budget_s=budget_s,
        min_runs=200,
        max_runs=20_000,
    )
    median = statistics.median(times)
    row: dict[str, object] = {
        "bench": "allocate_kernel",
        "connectors": len(inst.lo),
        "seed": SEED,
        "runs": len(times),
        "median_ms": round(median, 4),
        "p99_ms": round(_p99(times), 4),
    }
    return row, median


def bench_lp(
    inst: KernelInstance, kernel_median_ms: float, budget_s: float = 2.0
) -> dict[str, object]:
    from tests.bench.lp_reference import maxmin_fair

    inc = inst.inc
    solves = 0

    def solve() -> FloatArray:
        nonlocal solves
        x, solves = maxmin_fair(
            inc.rows, inc.cols, inc.weights, inst.capacity, lo=inst.lo, hi=inst.hi
        )
        return x

    x_lp = solve()
    x_kernel, _ = waterfill(inc, inst.lo, inst.hi, inst.cap, inst.members)
    times = _times_ms(solve, budget_s=budget_s, min_runs=3, max_runs=50)
    lp_median = statistics.median(times)
    return {
        "bench": "allocate_lp",
        "connectors": len(inst.lo),
        "seed": SEED,
        "lp_solves": solves,
        "lp_runs": len(times),
        "max_diff_a": float(f"{float(np.max(np.abs(x_kernel - x_lp))):.3g}"),
        "lp_median_ms": round(lp_median, 3),
        "kernel_median_ms": round(kernel_median_ms, 4),
        "speedup_vs_lp": round(lp_median / kernel_median_ms, 1),
    }


def main() -> None:
    try:
        import highspy  # noqa: F401

        have_lp = True
    except ImportError:
        have_lp = False
        print(
            "allocate_lp skipped: highspy is not installed (pip install -e '.[dev]')",
            file=sys.stderr,
        )
    for n in SIZES:
        print(json.dumps(bench_allocate(n)), flush=True)
    for n in SIZES:
        inst = kernel_instance(n, SEED)
        row, median_ms = bench_kernel(inst)
        print(json.dumps(row), flush=True)
        if have_lp:
            print(json.dumps(bench_lp(inst, median_ms)), flush=True)
    from tests.bench.buses import rows as device_rows

    for row in device_rows():
        print(json.dumps(row), flush=True)
    from tests.bench.mqtt import rows as mqtt_rows

    for row in mqtt_rows():
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
