"""Core layer: the numeric kernel of fair sharing (max-min fair water-filling), in numpy.

Problem: connectors i with bounds lo_i <= x_i <= hi_i, linear constraints k with non-negative
weights, sum_i w_ik * (x_i - lo_i) <= cap_k (capacity left once every minimum is granted).
Every connector's level rises together, x_i = clamp(L, lo_i, hi_i), until a constraint it
weighs on runs out (it freezes there, bound by that constraint) or it reaches hi_i. The result
is the max-min fair allocation in amps per connector: nobody could get more without taking from
someone who has less.

Each iteration jumps straight to the next event (a constraint saturates, a connector reaches
its maximum, the level reaches a connector's minimum), so the number of iterations is the
number of distinct events, not of amps. The incidence structure is prepared once per site
(``Incidence``); a tick only supplies the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

AT_MAX = -1  # bound code: reached its own maximum
UNBOUND = -2  # never frozen (no constraint and no maximum): cannot happen with finite hi
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Incidence:
    """Which connector weighs on which constraint: coordinate lists (rows = constraints)."""

    rows: IntArray
    cols: IntArray
    weights: FloatArray
    n_connectors: int
    n_constraints: int

    @classmethod
    def build(
        cls, entries: list[tuple[int, int, float]], n_connectors: int, n_constraints: int
    ) -> Incidence:
        if entries:
            rows, cols, weights = zip(*entries, strict=True)
        else:
            rows, cols, weights = (), (), ()
        return cls(
            rows=np.asarray(rows, dtype=np.intp),
            cols=np.asarray(cols, dtype=np.intp),
            weights=np.asarray(weights, dtype=np.float64),
            n_connectors=n_connectors,
            n_constraints=n_constraints,
        )


def waterfill(
    inc: Incidence, lo: FloatArray, hi: FloatArray, cap: FloatArray, members: npt.NDArray[np.bool_]
) -> tuple[FloatArray, IntArray]:
    """Fill the ``members`` between ``lo`` and ``hi`` within ``cap``; returns (x, bound).

    ``bound[i]`` is the index of the constraint that stopped connector i, or AT_MAX. Connectors
    that are not members keep x = lo and bound UNBOUND. ``cap`` is not modified.
    """
    n = inc.n_connectors
    x = lo.astype(np.float64, copy=True)
    bound = np.full(n, UNBOUND, dtype=np.intp)
    if not members.any():
        return x, bound
    remaining = cap.astype(np.float64, copy=True)
    frozen = ~members
    # Connectors whose maximum is at their minimum are done before anything moves.
    flat = members & (hi <= lo + _EPS)
    bound[flat] = AT_MAX
    frozen |= flat
    level = float(lo[~frozen].min()) if (~frozen).any() else 0.0
    rows, cols, w = inc.rows, inc.cols, inc.weights
    # Every iteration freezes a connector, saturates a constraint or lets one join: bounded.
    for _ in range(2 * n + inc.n_constraints + 2):
        live = ~frozen
        if not live.any():
            break
        rising = live & (lo <= level + _EPS)
        rate = np.bincount(rows, weights=w * rising[cols], minlength=inc.n_constraints)
        step = np.inf
        if rising.any():
            step = float((hi[rising] - level).min())
        waiting = live & ~rising
        if waiting.any():
            step = min(step, float((lo[waiting] - level).min()))
        loaded = rate > _EPS
        if loaded.any():
            step = min(step, float((remaining[loaded] / rate[loaded]).min()))
        step = max(step, 0.0)
        level += step
        remaining -= rate * step
        x[rising] = np.minimum(np.maximum(level, lo[rising]), hi[rising])
        at_max = rising & (hi <= level + _EPS)
        bound[at_max] = AT_MAX
        frozen |= at_max
        saturated = loaded & (remaining <= _EPS * np.maximum(1.0, rate))
        if saturated.any():
            hit = saturated[rows] & rising[cols] & ~frozen[cols]
            if hit.any():
                # A connector on several saturated constraints names the first one.
                idx = np.flatnonzero(hit)
                order = np.argsort(cols[idx], kind="stable")
                first = idx[order][np.r_[True, np.diff(cols[idx][order]) != 0]]
                bound[cols[first]] = rows[first]
                frozen[cols[first]] = True
    return x, bound
