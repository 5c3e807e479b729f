"""The water-filling kernel (controller/core/waterfill.py) against the definition of max-min
fairness, on small random instances.

Two independent checks: an exact reference (progressive filling in rational arithmetic,
written from the definition, nothing shared with the kernel), and the optimality certificate
of max-min fairness with minimums: every member is at its maximum, or it weighs on a saturated
constraint on which no connector that received current above its minimum has more than it.
Then nobody can be raised without lowering someone who has as much or less.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.core.waterfill import AT_MAX, UNBOUND, Incidence, waterfill

TOL = 1e-7


@dataclass(frozen=True, slots=True)
class Instance:
    lo: list[float]
    hi: list[float]
    cap: list[float]
    entries: list[tuple[int, int, float]]  # (constraint, connector, weight)
    members: list[bool]

    @property
    def n(self) -> int:
        return len(self.lo)

    def weight(self, k: int, i: int) -> float:
        return sum(w for kk, ii, w in self.entries if kk == k and ii == i)


AMPS = st.sampled_from([0.0, 1.0, 2.5, 6.0, 6.0, 8.0, 10.0, 13.7, 16.0, 32.0])


@st.composite
def instances(draw: st.DrawFn, integer_weights: bool | None = None) -> Instance:
    n = draw(st.integers(1, 6))
    m = draw(st.integers(0, 5))
    lo = [draw(AMPS) for _ in range(n)]
    hi = [lo[i] + draw(st.sampled_from([0.0, 0.05, 1.0, 4.0, 10.0, 26.0, 100.0])) for i in range(n)]
    cap = [draw(st.sampled_from([0.0, 0.3, 2.0, 5.0, 12.0, 30.0, 60.0, 1e4])) for _ in range(m)]
    if integer_weights is None:
        integer_weights = draw(st.booleans())
    weights = [1.0, 1.0, 2.0, 3.0, 230.0, 690.0] if integer_weights else [0.5, 1.0, 1.7, 230.0]
    entries = []
    for k in range(m):
        for i in range(n):
            if draw(st.integers(0, 2)) > 0:
                entries.append((k, i, draw(st.sampled_from(weights))))
    if entries and draw(st.integers(0, 4)) == 4:
        entries.append(draw(st.sampled_from(entries)))  # a repeated entry: weights add up
    members = [draw(st.integers(0, 4)) > 0 for _ in range(n)]
    return Instance(lo=lo, hi=hi, cap=cap, entries=entries, members=members)


def run(inst: Instance) -> tuple[list[float], list[int]]:
    inc = Incidence.build(list(inst.entries), inst.n, len(inst.cap))
    lo = np.asarray(inst.lo, dtype=np.float64)
    hi = np.asarray(inst.hi, dtype=np.float64)
    cap = np.asarray(inst.cap, dtype=np.float64)
    members = np.asarray(inst.members, dtype=np.bool_)
    cap_before = cap.copy()
    x, bound = waterfill(inc, lo, hi, cap, members)
    assert (cap == cap_before).all(), "waterfill must not modify cap"
    return [float(v) for v in x], [int(b) for b in bound]


def reference(inst: Instance) -> list[Fraction]:
    """Max-min fair allocation by exact progressive filling: a common level rises; each live
    member sits at clamp(level, lo, hi); a member freezes at its maximum or when a
    constraint it weighs on runs out."""
    n, m = inst.n, len(inst.cap)
    lo = [Fraction(v) for v in inst.lo]
    hi = [Fraction(v) for v in inst.hi]
    w = [[Fraction(inst.weight(k, i)) for i in range(n)] for k in range(m)]
    cap = [Fraction(v) for v in inst.cap]
    x = list(lo)
    live = {i for i in range(n) if inst.members[i] and hi[i] > lo[i]}
    if not live:
        return x
    level = min(lo[i] for i in live)

    def used(k: int) -> Fraction:
        return sum((w[k][i] * (x[i] - lo[i]) for i in range(n)), Fraction(0))

    while live:
        rising = {i for i in live if lo[i] <= level}
        rate = [sum((w[k][i] for i in rising), Fraction(0)) for k in range(m)]
        steps = [hi[i] - level for i in rising]
        steps += [lo[i] - level for i in live - rising]
        steps += [(cap[k] - used(k)) / rate[k] for k in range(m) if rate[k] > 0]
        step = max(min(steps), Fraction(0))
        level += step
        for i in rising:
            x[i] = min(max(level, lo[i]), hi[i])
        done = {i for i in rising if x[i] >= hi[i]}
        for k in range(m):
            if rate[k] > 0 and used(k) >= cap[k]:
                done |= {i for i in rising if w[k][i] > 0}
        live -= done
    return x


SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(instances())
def test_waterfill_equals_the_exact_max_min_fair_allocation(inst: Instance) -> None:
    x, _ = run(inst)
    ref = reference(inst)
    for i in range(inst.n):
        assert abs(x[i] - float(ref[i])) <= TOL * max(1.0, abs(float(ref[i]))), (i, x, ref)


@SETTINGS
@given(instances())
def test_waterfill_is_feasible_and_certifies_max_min_fairness(inst: Instance) -> None:
    x, bound = run(inst)
    n, m = inst.n, len(inst.cap)
    used = [sum(inst.weight(k, i) * (x[i] - inst.lo[i]) for i in range(n)) for k in range(m)]
    for k in range(m):
        assert used[k] <= inst.cap[k] + TOL * max(1.0, inst.cap[k]), ("over capacity", k)
    for i in range(n):
        if not inst.members[i]:
            assert x[i] == inst.lo[i] and bound[i] == UNBOUND, (i, x[i], bound[i])
            continue
        assert inst.lo[i] - TOL <= x[i] <= inst.hi[i] + TOL, (i, x[i])
        assert bound[i] != UNBOUND, i
        if bound[i] == AT_MAX:
            assert x[i] >= inst.hi[i] - TOL, ("named its maximum below it", i)
            continue
        k = bound[i]
        assert 0 <= k < m and inst.weight(k, i) > 0, ("named a constraint it does not load", i)
        assert used[k] >= inst.cap[k] - TOL * max(1.0, inst.cap[k]), ("not saturated", i, k)
        # the bottleneck certificate: on k, nobody who got current above their minimum has
        # more than i, so raising i must lower someone with as much or less
        for j in range(n):
            if inst.weight(k, j) > 0 and x[j] > inst.lo[j] + TOL:
                assert x[j] <= x[i] + TOL, ("not a bottleneck", i, j, k, x)


@SETTINGS
@given(instances(integer_weights=True), st.randoms(use_true_random=False))
def test_waterfill_does_not_depend_on_the_order_of_entries(inst: Instance, rnd: object) -> None:
    """The result is a property of the problem, not of how the incidence lists are ordered."""
    import random

    assert isinstance(rnd, random.Random)
    shuffled = list(inst.entries)
    rnd.shuffle(shuffled)
    x1, _ = run(inst)
    x2, _ = run(Instance(inst.lo, inst.hi, inst.cap, shuffled, inst.members))
    assert np.allclose(x1, x2, rtol=0, atol=TOL), (x1, x2)


def test_waterfill_examples() -> None:
    one_phase = [(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0)]  # three connectors on one phase
    # 30 A shared by three: 10 A each
    x, b = run(Instance([0, 0, 0], [32, 32, 32], [30], one_phase, [True] * 3))
    assert x == [10, 10, 10] and b == [0, 0, 0]
    # one capped at 4 A: the others share the rest
    x, b = run(Instance([0, 0, 0], [4, 32, 32], [30], one_phase, [True] * 3))
    assert x == [4, 13, 13] and b == [AT_MAX, 0, 0]
    # minimums already granted (6 A and 10 A): 8 A above them lifts both to 12 A
    x, _ = run(Instance([6, 10], [32, 32], [8], one_phase[:2], [True, True]))
    assert x == [12, 12]
