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

Two loops make the same iterations: ``_fill_general`` recomputes everything each time;
``_fill_by_events`` only updates what the events change, and is taken whenever its sums are
exact (whole-number weights, as the engine's are), so both give bit-identical results. At 1000
connectors the second takes about a quarter of the time (``make bench``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

AT_MAX = -1  # bound code: reached its own maximum
UNBOUND = -2  # never frozen (no constraint and no maximum): cannot happen with finite hi
_EPS = 1e-9
_BIG = 1e12  # amps, volt-amps: far above any site, far below overflow


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
    # Every iteration freezes a connector, saturates a constraint or lets one join: bounded.
    iterations = 2 * n + inc.n_constraints + 2
    if _exact_sums(inc, lo, hi, remaining, frozen):
        _fill_by_events(
            inc,
            lo=lo,
            hi=hi,
            remaining=remaining,
            frozen=frozen,
            level=level,
            x=x,
            bound=bound,
            iterations=iterations,
        )
    else:
        _fill_general(
            inc,
            lo=lo,
            hi=hi,
            remaining=remaining,
            frozen=frozen,
            level=level,
            x=x,
            bound=bound,
            iterations=iterations,
        )
    return x, bound


def _exact_sums(
    inc: Incidence, lo: FloatArray, hi: FloatArray, remaining: FloatArray, frozen: BoolArray
) -> bool:
    """Whether the event-driven loop gives bit for bit what the general one gives.

    It keeps each constraint's rate (the sum of the weights of the rising connectors) up to
    date by adding and taking away, instead of summing it anew every iteration. That is exact,
    whatever the order, when every weight is a non-negative whole number and every sum stays
    below 2**52 (amps weigh 1, a power slot weighs volts x phases). Bounds and capacities must
    be finite and below 1e12 in size, so that no sum can overflow.
    """
    w = inc.weights
    if lo.dtype != np.float64 or hi.dtype != np.float64 or len(w) == 0:
        return False
    live = ~frozen
    return bool(
        (np.abs(remaining) < _BIG).all()
        and (np.abs(lo[live]) < _BIG).all()
        and (np.abs(hi[live]) < _BIG).all()
        and (w >= 0.0).all()
        and (np.floor(w) == w).all()
        and w.sum() < 2.0**52
    )


def _fill_general(
    inc: Incidence,
    *,
    lo: FloatArray,
    hi: FloatArray,
    remaining: FloatArray,
    frozen: BoolArray,
    level: float,
    x: FloatArray,
    bound: IntArray,
    iterations: int,
) -> None:
    """The reference loop: every iteration recomputes the rising set and the rates."""
    rows, cols, w = inc.rows, inc.cols, inc.weights
    for _ in range(iterations):
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


def _fill_by_events(
    inc: Incidence,
    *,
    lo: FloatArray,
    hi: FloatArray,
    remaining: FloatArray,
    frozen: BoolArray,
    level: float,
    x: FloatArray,
    bound: IntArray,
    iterations: int,
) -> None:
    """The same iterations as ``_fill_general``, with the work of each one kept to what changed.

    The rising set only grows by connectors whose minimum the level reaches (taken in order of
    their minimum) and shrinks by those that freeze; the rates follow those changes; a rising
    connector's x is computed once, from the level at which it froze (the general loop writes
    the same level clamped to its bounds every iteration until then); and a saturated
    constraint's connectors come from its own list of entries.
    """
    n, k_count = inc.n_connectors, inc.n_constraints
    rows, cols, w = inc.rows, inc.cols, inc.weights
    # Entries by constraint, each in entry order (it decides the bound named on a tie): a
    # stable sort, a radix sort for small keys.
    key = np.int16 if k_count < 2**15 else np.intp
    by_row = np.argsort(rows.astype(key), kind="stable")
    row_start = np.zeros(k_count + 1, dtype=np.intp)
    np.cumsum(np.bincount(rows, minlength=k_count), out=row_start[1:])
    cols_sorted = len(cols) < 2 or bool((cols[1:] >= cols[:-1]).all())
    # Without repeated (constraint, connector) entries, one saturated constraint hits every
    # connector once. Sorted by connector, repeats would sit side by side within a constraint.
    cols_by_row = cols[by_row]
    repeats = True
    if cols_sorted:
        c, r = cols_by_row, rows[by_row]
        repeats = bool(((c[1:] == c[:-1]) & (r[1:] == r[:-1])).any())
    # Entries by connector, padded to the largest count with a zero weight (order does not
    # matter: the sums are exact): a group's rates are then one gather and one bincount.
    col_count = np.bincount(cols, minlength=n)
    width = int(col_count.max())
    if cols_sorted:
        rows_c, w_c = rows, w
    else:
        by_col = np.argsort(cols.astype(np.int16 if n < 2**15 else np.intp), kind="stable")
        rows_c, w_c = rows[by_col], w[by_col]
    col_start = np.cumsum(col_count) - col_count
    slot = col_start[:, None] + np.arange(width)
    pad = np.arange(width) >= col_count[:, None]
    slot[pad] = 0
    conn_rows = rows_c[slot]
    conn_w = w_c[slot]
    conn_w[pad] = 0.0

    def rate_of(group: IntArray) -> FloatArray:
        """Sum of the weights of the connectors in ``group`` (distinct), per constraint."""
        return cast(
            FloatArray,
            np.bincount(conn_rows[group].ravel(), conn_w[group].ravel(), minlength=k_count),
        )

    # Live connectors above the level join the rising set in order of their minimum; the
    # others join at the first iteration (bisect only needs the list split at the level).
    live = (~frozen).nonzero()[0]
    first = lo[live] <= level + _EPS
    later = live[~first]
    order = np.concatenate((live[first], later[np.argsort(lo[later], kind="stable")]))
    lo_sorted: list[float] = lo[order].tolist()
    n_wait = len(order)
    joined = 0
    rising = np.zeros(n, dtype=np.bool_)
    hi_rising = np.full(n, np.inf)  # hi of the rising connectors, inf elsewhere
    n_rising = 0
    frozen_at = np.full(n, np.nan)  # the level at which each connector froze
    rate = np.zeros(k_count)
    # The loaded constraints (rate > 0, so rate >= 1: whole numbers) in compact arrays; an
    # unloaded one's remaining capacity does not move (minus 0 x a finite step).
    loaded = rate.nonzero()[0]
    remaining_l = remaining[loaded]
    rate_l = rate[loaded]
    threshold_l = rate_l
    changed = False
    minimum = np.minimum.reduce
    for _ in range(iterations):
        if n_rising == 0 and joined == n_wait:
            break
        if joined < n_wait and lo_sorted[joined] <= level + _EPS:
            upto = bisect_right(lo_sorted, level + _EPS, joined)
            new = order[joined:upto]
            joined = upto
            rising[new] = True
            hi_rising[new] = hi[new]
            n_rising += len(new)
            rate += rate_of(new)
            changed = True
        if changed:
            remaining[loaded] = remaining_l
            loaded = (rate > _EPS).nonzero()[0]
            remaining_l = remaining[loaded]
            rate_l = rate[loaded]
            threshold_l = _EPS * rate_l  # = _EPS * max(1, rate) for rate >= 1
            changed = False
        step = np.inf
        hi_min = np.inf
        if n_rising:
            hi_min = float(minimum(hi_rising))
            step = hi_min - level
        if joined < n_wait:
            step = min(step, lo_sorted[joined] - level)
        if len(loaded):
            step = min(step, float(minimum(remaining_l / rate_l)))
        step = max(step, 0.0)
        level += step
        remaining_l -= rate_l * step
        done: list[IntArray] = []
        if hi_min <= level + _EPS:
            at_max = (hi_rising <= level + _EPS).nonzero()[0]
            bound[at_max] = AT_MAX
            rising[at_max] = False
            done.append(at_max)
        if len(loaded):
            saturated = (remaining_l <= threshold_l).nonzero()[0]
            if len(saturated):
                hits = _hits(
                    loaded[saturated],
                    by_row=by_row,
                    row_start=row_start,
                    rows=rows,
                    cols=cols,
                    cols_by_row=cols_by_row,
                    rising=rising,
                    bound=bound,
                    repeats=repeats,
                )
                if len(hits):
                    done.append(hits)
        if done:
            group = done[0] if len(done) == 1 else np.concatenate(done)
            frozen_at[group] = level
            hi_rising[group] = np.inf
            n_rising -= len(group)
            rate -= rate_of(group)
            changed = True
    else:
        # Out of iterations (cannot happen with finite bounds): as the general loop leaves it.
        frozen_at[rising] = level
    done_mask = ~np.isnan(frozen_at)
    x[done_mask] = np.minimum(np.maximum(frozen_at[done_mask], lo[done_mask]), hi[done_mask])


def _hits(
    saturated: IntArray,
    *,
    by_row: IntArray,
    row_start: IntArray,
    rows: IntArray,
    cols: IntArray,
    cols_by_row: IntArray,
    rising: BoolArray,
    bound: IntArray,
    repeats: bool,
) -> IntArray:
    """Freeze the rising connectors on the saturated constraints; returns them (distinct).

    A connector on several saturated constraints names the first one in entry order.
    """
    if len(saturated) == 1:
        k = int(saturated[0])
        hit_cols = cols_by_row[row_start[k] : row_start[k + 1]]
        hit_cols = hit_cols[rising[hit_cols]]
        if repeats and len(hit_cols) > 1:
            hit_cols = np.unique(hit_cols)
        bound[hit_cols] = k
    else:
        entries = np.sort(
            np.concatenate([by_row[row_start[k] : row_start[k + 1]] for k in saturated.tolist()])
        )
        hit_cols = cols[entries]
        keep = rising[hit_cols]
        entries, hit_cols = entries[keep], hit_cols[keep]
        hit_cols, first = np.unique(hit_cols, return_index=True)
        bound[hit_cols] = rows[entries[first]]
    rising[hit_cols] = False
    return hit_cols
