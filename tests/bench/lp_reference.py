"""Benchmarks and tests: max-min fair allocation by a sequence of linear programs (HiGHS).

The reference the water-filling kernel (controller/core/waterfill.py) is checked against. It
shares no code with the kernel: it takes the problem in absolute amps,

    sum_i a_ki * x_i <= b_k  for every constraint k,    lo_i <= x_i <= hi_i,

and computes the max-min fair (leximin) allocation the textbook way. Round after round, with
the connectors frozen so far fixed at their values:

1. maximise t subject to x_i >= t for every unfrozen connector i (and everything above);
2. freeze at t every unfrozen connector that cannot exceed t while the others keep t:
   - ``freeze="dual"``: those whose row x_i - t >= 0 has a non-zero dual value (by
     complementary slackness x_i = t in every optimal solution), and if no dual says so,
     the probe below;
   - ``freeze="probe"``: in addition, maximise x_i for each remaining unfrozen connector
     with t fixed, and freeze it if it cannot get above t;

until every connector is frozen. Each round freezes at least one connector. A connector
whose minimum lies above t is never frozen at t (its row is slack).

highspy is a dev dependency only: the product never imports this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Literal

import highspy
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

# Primal and dual feasibility tolerance of every LP, and the threshold of a non-zero dual.
TOL = 1e-9
_DUAL_TOL = 1e-7
_PROBE_TOL = 1e-7

_banner_shown = False


def _highs() -> highspy.Highs:
    """A silent solver. HiGHS prints a banner to fd 1 at its first construction in a process;
    `make bench` prints JSON lines there, so that one construction writes to /dev/null."""
    global _banner_shown  # noqa: PLW0603
    if _banner_shown:
        h = highspy.Highs()  # type: ignore[no-untyped-call]
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            h = highspy.Highs()  # type: ignore[no-untyped-call]
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _banner_shown = True
    h.setOptionValue("output_flag", False)
    h.setOptionValue("primal_feasibility_tolerance", TOL)
    h.setOptionValue("dual_feasibility_tolerance", TOL)
    h.setOptionValue("presolve", "off")  # keeps the basis warm from one round to the next
    return h


def _check(h: highspy.Highs, what: str) -> None:
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"LP reference: {what}: {h.modelStatusToString(status)}")


def maxmin_fair(
    rows: Sequence[int] | IntArray,
    cols: Sequence[int] | IntArray,
    coef: Sequence[float] | FloatArray,
    b: Sequence[float] | FloatArray,
    *,
    lo: Sequence[float] | FloatArray,
    hi: Sequence[float] | FloatArray,
    freeze: Literal["dual", "probe"] = "dual",
) -> tuple[FloatArray, int]:
    """The max-min fair x for A x <= b (A given as coordinates), lo <= x <= hi.

    Returns (x, number of LPs solved). Raises RuntimeError if the problem is infeasible
    (the minimums do not fit) or a solve fails.
    """
    lo_a = np.asarray(lo, dtype=np.float64)
    hi_a = np.asarray(hi, dtype=np.float64)
    b_a = np.asarray(b, dtype=np.float64)
    n, m = len(lo_a), len(b_a)
    if n == 0:
        return np.zeros(0), 0
    inf = highspy.kHighsInf
    h = _highs()
    # Columns: x_0..x_{n-1}, then t (column n).
    h.addVars(n, lo_a, hi_a)
    h.addVar(-inf, inf)
    t_col = n
    # Rows 0..m-1: A x <= b, in compressed row form.
    order = np.lexsort((np.asarray(cols), np.asarray(rows)))
    r = np.asarray(rows, dtype=np.int32)[order]
    c = np.asarray(cols, dtype=np.int32)[order]
    v = np.asarray(coef, dtype=np.float64)[order]
    starts = np.searchsorted(r, np.arange(m)).astype(np.int32)
    h.addRows(m, np.full(m, -inf), b_a, len(v), starts, c, v)
    # Rows m..m+n-1: x_i - t >= 0 while i is unfrozen (free once it is).
    idx = np.empty(2 * n, dtype=np.int32)
    idx[0::2] = np.arange(n, dtype=np.int32)
    idx[1::2] = t_col
    val = np.tile(np.array([1.0, -1.0]), n)
    h.addRows(
        n, np.zeros(n), np.full(n, inf), 2 * n, np.arange(0, 2 * n, 2, dtype=np.int32), idx, val
    )
    h.changeColCost(t_col, 1.0)
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)

    x = lo_a.copy()
    unfrozen = np.ones(n, dtype=np.bool_)
    solves = 0

    def fix(i: int, value: float) -> None:
        unfrozen[i] = False
        x[i] = value
        h.changeColBounds(i, value, value)
        h.changeRowBounds(m + i, -inf, inf)

    while unfrozen.any():
        left = int(unfrozen.sum())
        h.run()
        solves += 1
        _check(h, "max t")
        sol = h.getSolution()
        level = float(sol.col_value[t_col])
        duals = np.abs(np.asarray(sol.row_dual[m:], dtype=np.float64))
        newly = np.flatnonzero(unfrozen & (duals > _DUAL_TOL))
        for i in newly.tolist():
            fix(i, level)
        if freeze == "dual" and newly.size:
            continue
        # Probe: can connector i get above t while every other unfrozen one keeps t?
        h.changeColCost(t_col, 0.0)
        h.changeColBounds(t_col, level, level)
        for i in np.flatnonzero(unfrozen).tolist():
            if lo_a[i] > level + _PROBE_TOL:
                continue  # above t by its own minimum
            h.changeColCost(i, 1.0)
            h.run()
            solves += 1
            _check(h, f"probe {i}")
            best = float(h.getSolution().col_value[i])
            h.changeColCost(i, 0.0)
            if best <= level + _PROBE_TOL:
                fix(i, level)
        h.changeColBounds(t_col, -inf, inf)
        h.changeColCost(t_col, 1.0)
        if int(unfrozen.sum()) == left:
            raise RuntimeError(f"LP reference: no connector freezes at t = {level}")
    return x, solves
