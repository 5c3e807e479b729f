"""The water-filling kernel against an independent reference: max-min fairness by a sequence of
linear programs (tests/bench/lp_reference.py, HiGHS), on the seeded 3-level sites of the
benchmark (tests/bench/sitegen.py) where every fair share is at least the minimum."""

from __future__ import annotations

import numpy as np
import pytest

from controller.core import allocation
from controller.core.waterfill import AT_MAX, FloatArray, Incidence, IntArray, waterfill
from tests.bench.sitegen import KernelInstance, kernel_instance

pytest.importorskip(
    "highspy", reason="highspy (a dev dependency, pip install -e '.[dev]') is not installed"
)

from tests.bench.lp_reference import maxmin_fair

TOLERANCE_A = 0.01
CASES = [(n, seed) for n in (10, 23, 50) for seed in (1, 2, 3, 4)]


def _lp(inst: KernelInstance, freeze: str = "dual") -> np.ndarray:
    x, _ = maxmin_fair(
        inst.inc.rows,
        inst.inc.cols,
        inst.inc.weights,
        inst.capacity,
        lo=inst.lo,
        hi=inst.hi,
        freeze="probe" if freeze == "probe" else "dual",
    )
    return x


@pytest.mark.parametrize(("connectors", "seed"), CASES)
def test_kernel_equals_the_lp_reference(connectors: int, seed: int) -> None:
    inst = kernel_instance(connectors, seed)
    x, bound = waterfill(inst.inc, inst.lo, inst.hi, inst.cap, inst.members)
    ref = _lp(inst)
    assert np.max(np.abs(x - ref)) <= TOLERANCE_A, np.abs(x - ref)
    # Feasible, and whoever is not at its maximum is stopped by a constraint that is full.
    load = np.bincount(inst.inc.rows, weights=inst.inc.weights * x[inst.inc.cols])
    assert np.all(load <= inst.capacity + 1e-6)
    for i in np.flatnonzero(bound != AT_MAX):
        assert load[bound[i]] >= inst.capacity[bound[i]] - 1e-6
    # The instances are not trivial: some connector is held below its maximum.
    assert np.any(x < inst.hi - 1.0)


@pytest.mark.parametrize(("connectors", "seed"), [(10, 1), (23, 2), (50, 3)])
def test_lp_reference_freezing_by_duals_matches_probing_each_connector(
    connectors: int, seed: int
) -> None:
    inst = kernel_instance(connectors, seed)
    assert np.max(np.abs(_lp(inst, "dual") - _lp(inst, "probe"))) <= 1e-7


@pytest.mark.parametrize(("connectors", "seed"), [(10, 1), (50, 2), (100, 3)])
def test_bench_instance_is_what_the_engine_gives_the_kernel(
    connectors: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sitegen builds the kernel's inputs as allocate() does, every share is at least the
    minimum, and the engine's targets are the reference's shares rounded down to 0.1 A."""
    inst = kernel_instance(connectors, seed)
    calls: list[tuple[Incidence, FloatArray, FloatArray, FloatArray, np.ndarray]] = []

    def recording(
        inc: Incidence, lo: FloatArray, hi: FloatArray, cap: FloatArray, members: np.ndarray
    ) -> tuple[FloatArray, IntArray]:
        # The engine goes on to spend ``cap`` after the call: keep a copy of what it was.
        calls.append((inc, lo.copy(), hi.copy(), cap.copy(), members.copy()))
        return waterfill(inc, lo, hi, cap, members)

    monkeypatch.setattr(allocation, "waterfill", recording)
    result = allocation.allocate(inst.site, inst.snapshot)
    assert len(calls) == 1, "one tier, one call of the kernel"
    inc, lo, hi, cap, members = calls[0]
    for name in ("rows", "cols", "weights"):
        assert np.array_equal(getattr(inc, name), getattr(inst.inc, name)), name
    assert (inc.n_connectors, inc.n_constraints) == (
        inst.inc.n_connectors,
        inst.inc.n_constraints,
    )
    assert np.array_equal(lo, inst.lo)
    assert np.array_equal(hi, inst.hi)
    assert np.allclose(cap, inst.cap, rtol=0, atol=1e-9)
    assert np.array_equal(members, inst.members)

    zero_lo, _ = waterfill(inst.inc, np.zeros_like(inst.lo), inst.hi, inst.capacity, inst.members)
    assert np.all(zero_lo >= inst.lo - 1e-6), "a fair share below its minimum"
    ref = _lp(inst)
    for i, conn in enumerate(inst.site.connectors):
        target = result.limits[conn.id].target_a
        assert target is not None
        assert ref[i] - 0.1 - 1e-6 <= target <= ref[i] + 1e-6, (conn.id, target, ref[i])
