"""Properties of the load-management engine: invariants I1-I4 and I6 of ARCHITECTURE.md.

Each single-tick property draws a random ``Case`` (tests/core/sites.py): a circuit tree up to 4
levels below the grid with 1-200 connectors, a short history of spoiled snapshots run through
the engine, and one more snapshot. It checks the engine's allocation against an independent
reading of the spec (tests/core/oracle.py), not against the engine's own account of itself.
The multi-tick properties (I4 and I6 over time, hysteresis, the fail-safe ladder) run a
simulated site in a ``RuleBasedStateMachine`` at the end of this file.

I5 is a config-time check (controller/config.py) and is tested there.

Example counts are set per test (``N_*``): together 11,500 examples (the machine's each a run of
up to 30 steps), about a minute on two cores. ``EVSITE_PROPERTY_SCALE=10`` multiplies them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from controller.core.allocation import allocate
from controller.core.model import (
    Allocation,
    Bound,
    EvseReading,
    EvseState,
    MeterReading,
    Session,
    Snapshot,
    Triple,
)
from controller.core.site import Connector, EvKind, Site, Topology
from controller.core.slots import SITE, LimitSlot, SlotSource, active_slots
from tests.core.oracle import (
    FALLBACK_BOUNDS,
    TOL,
    Observer,
    View,
    connector_cap_a,
    counted_phases,
    fault_text,
    load_phases,
    node_phase_sums,
    observe_all,
    peak_of,
)
from tests.core.sites import WALL, Case, cases, evse, limit_slots, random_sites, site, snap

SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


# EVSITE_PROPERTY_SCALE=10 runs ten times as many examples (a soak; `make test` runs 1).
SCALE = float(os.environ.get("EVSITE_PROPERTY_SCALE", "1"))


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, suppress_health_check=SLOW)


def replay(site: Site, snaps: Sequence[Snapshot]) -> list[Allocation]:
    out: list[Allocation] = []
    for sn in snaps:
        out.append(allocate(site, sn, out[-1] if out else None))
    return out


def views_of(case: Case, snap: Snapshot | None = None) -> View:
    """The spec's view of the tick under test (after the case's history)."""
    return observe_all(case.site, [*case.history, snap if snap is not None else case.snap])[-1]


def prev_limit(case: Case, cid: str, snap_: Snapshot | None = None) -> float:
    """What the engine starts this tick from: its last decision; without one, the last written
    limit (or the fallback), a limit below the minimum counting as 0 (it charges nothing)."""
    prev = case.previous
    if prev is not None:
        return prev.current_a(cid)
    conn = next(k for k in case.site.connectors if k.id == cid)
    return _start_limit(conn, (snap_ or case.snap).written_a.get(cid))


def prev_limits(case: Case, snap_: Snapshot | None = None) -> dict[str, float]:
    return {k.id: prev_limit(case, k.id, snap_) for k in case.site.connectors}


# -- the checks, shared with the multi-tick machine -----------------------------------------


def ladder_current_a(view: View, k: Connector) -> float:
    """In fallback or start-up: the fallback current, or 0 A for a session that may not draw."""
    session = view.snap.sessions.get(k.id)
    if session is not None and not session.charging_allowed:
        return 0.0
    return k.fallback_current_a


def check_ladder(site: Site, view: View, alloc: Allocation) -> None:
    """In fallback or start-up every connector below is at its fallback current; a meter in
    fallback raises a fault."""
    for k in site.connectors:
        mode = view.connector_mode(k)
        if mode in ("fallback", "startup"):
            lim = alloc.limits[k.id]
            assert lim.current_a == ladder_current_a(view, k), (k.id, mode, lim)
            assert lim.bound in (Bound.FALLBACK, Bound.STARTUP), (k.id, mode, lim)
    texts = fault_text(alloc)
    for node in site.circuits:
        if node.meter is not None and view.meter_status[node.id] == "fallback":
            assert any(node.meter in t for t in texts), (node.id, texts)


def check_i1(site: Site, view: View, alloc: Allocation, *, strict: bool = False) -> None:
    """I1: per node and grid phase, steerable allocations + the worst case of the connectors
    the engine cannot steer <= rating - measured non-EV - margin. When the fixed worst cases
    alone exceed it, nothing steerable below may charge on that phase. ``strict``: count a
    detected 1-phase EV on all its connector's phases too (see test_i1_strict_...)."""

    def phases_of(k: Connector) -> tuple[int, ...]:
        return counted_phases(k) if strict else load_phases(site, view, alloc, k)

    for (node, p), (steer, fixed, rhs) in node_phase_sums(site, view, alloc, phases_of).items():
        assert steer <= max(0.0, rhs - fixed) + TOL, (
            f"I1 at {node} L{p + 1}: allocations {steer:.3f} + fixed {fixed:.3f} "
            f"> {rhs:.3f} (mode {view.mode[node]}, non-EV {view.non_ev[node]})"
        )


def check_unbalance(site: Site, view: View, alloc: Allocation) -> None:
    """The unbalanced-load limit U: EVs loading one grid phase never push that phase more than
    U above another (beyond what the rest of the site already does). On a site that exports,
    phase currents change sign and the limit's meaning with them: not checked there."""
    u = site.load_management.unbalanced_limit_a
    root = site.root
    ne = view.non_ev[root.id]
    if u is None or site.exports or ne is None or view.mode[root.id] != "normal":
        return
    base = list(ne)
    single = [0.0, 0.0, 0.0]
    for k in site.connectors:
        if k.id in view.fixed:
            for p in k.grid_phases:
                base[p] += view.fixed[k.id]
        elif len(phases := load_phases(site, view, alloc, k)) == 1:
            single[phases[0]] += alloc.current_a(k.id)
    for p in range(3):
        if single[p] > 0.0:
            others = min(base[q] for q in range(3) if q != p)
            assert base[p] + single[p] - others <= u + TOL, (
                f"unbalance: 1-phase EVs put {single[p]:.2f} A on L{p + 1}: "
                f"{base[p] + single[p]:.2f} A against {others:.2f} A (limit {u} A)"
            )


def check_i2(site: Site, view: View, alloc: Allocation, prev: dict[str, float]) -> None:
    """I2: 0 or within [min, min(max, connector slots)]; fallback outputs are the fallback;
    a failed write retries its previous limit (never more)."""
    snap = view.snap
    for k in site.connectors:
        lim = alloc.limits[k.id]
        i = lim.current_a
        assert math.isfinite(i) and i >= 0.0, lim
        if view.connector_mode(k) in ("fallback", "startup"):
            assert i == ladder_current_a(view, k), (k.id, lim)
            assert lim.bound in FALLBACK_BOUNDS, (k.id, lim)
            continue
        if view.fresh[k.id] is None:
            assert i == ladder_current_a(view, k), (k.id, lim)
            assert lim.bound in FALLBACK_BOUNDS, (k.id, lim)
            continue
        assert lim.bound not in FALLBACK_BOUNDS, (k.id, lim)
        cap, slot = connector_cap_a(site, snap, k, load_phases(site, view, alloc, k))
        if k.id in snap.write_failed:
            assert lim.bound is Bound.WRITE_FAILED, (k.id, lim)
            assert i <= prev[k.id] + TOL, (k.id, lim, prev[k.id])
        session = snap.sessions.get(k.id)
        if (
            session is not None
            and not session.charging_allowed
            and lim.bound is not Bound.WRITE_FAILED
        ):
            # a session that may not draw (not authorised, stopped, unavailable) gets nothing
            assert i == 0.0, (k.id, lim, session)
        if i == 0.0:
            continue
        assert i >= k.min_current_a - TOL, f"I2: {k.id} at {i} A < min {k.min_current_a} ({lim})"
        assert i <= cap + TOL, f"I2: {k.id} at {i} A > {cap} A ({slot or 'max'}) ({lim})"


def check_i6(
    site: Site, view: View, alloc: Allocation, prev: dict[str, float], last_up: dict[str, float]
) -> None:
    """I6 within one tick: a target below the previous limit goes out at once; an increase is
    at most one ramp step (or the minimum, from 0), never above the target, and at least
    ramp_period_s after the previous increase."""
    lm = site.load_management
    now = view.snap.now_s
    for k in site.connectors:
        lim = alloc.limits[k.id]
        if lim.bound in FALLBACK_BOUNDS or lim.bound is Bound.WRITE_FAILED:
            continue
        before = prev[k.id]
        if lim.target_a is not None and lim.target_a < before - TOL:
            assert lim.current_a <= lim.target_a + TOL, (k.id, before, lim)
        if lim.current_a > before + TOL:
            step = lim.current_a - before
            assert lim.current_a <= max(before + lm.ramp_step_a, k.min_current_a) + TOL, (
                f"I6: {k.id} rose {step:.2f} A in one tick ({before} -> {lim})"
            )
            assert lim.target_a is None or lim.current_a <= lim.target_a + TOL, (k.id, lim)
            # A start (from 0 to at least the minimum) is not a ramp step; the next step is.
            if before > 0.0 and k.id in last_up:
                gap = now - last_up[k.id]
                assert gap >= lm.ramp_period_s - 1e-6, (
                    f"I6: {k.id} rose again {gap:.2f} s after its last increase ({lim})"
                )


def last_increases(case: Case) -> dict[str, float]:
    """When each connector's limit last went up as a share (not as a fallback output)."""
    out: dict[str, float] = {}
    prev: dict[str, float] = {}
    for sn, a in zip(case.history, case.allocations, strict=True):
        for k in case.site.connectors:
            lim = a.limits[k.id]
            before = prev.get(k.id)
            if before is None:
                w = sn.written_a.get(k.id)
                before = w if w is not None else k.fallback_current_a
            fixed = lim.bound in FALLBACK_BOUNDS or lim.bound is Bound.WRITE_FAILED
            if not fixed and lim.current_a > before + 1e-9:
                out[k.id] = sn.now_s
            prev[k.id] = lim.current_a
    return out


def check_tick(case: Case, alloc: Allocation, view: View | None = None) -> None:
    view = view if view is not None else views_of(case)
    prev = prev_limits(case)
    check_ladder(case.site, view, alloc)
    check_i1(case.site, view, alloc)
    check_i2(case.site, view, alloc, prev)
    check_i6(case.site, view, alloc, prev, last_increases(case))


# -- I1, I2, the ladder, I6 on single ticks ---------------------------------------------------

N_I1 = 2500
N_I2 = 1500
N_I3 = 1000
N_I4 = 1000
N_I6 = 1500


@examples(N_I1)
@given(cases())
def test_i1_no_node_phase_is_overloaded(case: Case) -> None:
    """I1 per node and grid phase (and the fail-safe ladder, and the unbalanced-load limit)."""
    a = case.run()
    view = views_of(case)
    check_ladder(case.site, view, a)
    check_i1(case.site, view, a)
    check_unbalance(case.site, view, a)


@examples(N_I2)
@given(st.data())
def test_i2_each_limit_is_zero_or_within_its_bounds(data: st.DataObject) -> None:
    """I2 on random ticks, sharpened: connector slots arriving while writes fail, and a first
    tick from any written limit (below the minimum, above the maximum: an older config)."""
    case = data.draw(cases())
    sn = case.snap
    if data.draw(st.booleans()):
        extra = data.draw(connector_slots(case.site))
        failing = {sl.scope.partition(":")[2] for sl in extra if data.draw(st.booleans())}
        sn = _with(sn, slots=(*sn.slots, *extra), write_failed=sn.write_failed | failing)
    if case.previous is None and data.draw(st.booleans()):
        junk = st.sampled_from([0.0, 3.0, 5.9, 6.0, 16.0, 70.0])
        sn = _with(sn, written_a={k.id: data.draw(junk) for k in case.site.connectors})
    a = case.run(sn)
    check_i2(case.site, views_of(case, sn), a, prev_limits(case, sn))


@examples(N_I6)
@given(cases(history=(1, 3)))
def test_i6_decreases_at_once_increases_ramped(case: Case) -> None:
    a = case.run()
    view = views_of(case)
    prev = prev_limits(case)
    check_i6(case.site, view, a, prev, last_increases(case))


@pytest.mark.parametrize("switch", ["three_phases", "no_number"])
def test_i1_detected_one_phase_ev_counts_on_its_phase_only_while_it_stays_there(
    switch: str,
) -> None:
    """A 1-phase EV *detected* on a 3-phase connector counts on one grid phase only (issue 3,
    item 2; docs/load-management.md; golden one_phase_detection.yaml). Its limit is per phase on
    all three wires, though: should the EV start drawing on three phases, the other phases
    carry it until the next tick sees that and cuts it. This pins that trade-off (the strict,
    wired-phase I1 does not hold while the detection stands) and that the detection is dropped
    on the first tick the EV draws on another phase, or its EVSE reports no number there (the
    strict I1 holds again)."""
    s = site([evse("a"), evse("b", phases=(1,))], rating_a=16)
    snaps: list[Snapshot] = []
    allocs: list[Allocation] = []

    def tick(t: float, a_draw: tuple[float, float, float], b_draw: float) -> Allocation:
        seen = [0.0 if math.isnan(v) else v for v in a_draw]  # the meter sees a real current
        meter = (seen[0] + 0.01 * (t % 2), seen[1] + b_draw, seen[2])
        sn = snap(t, meter, {"a": ("C", a_draw), "b": ("C", (b_draw, 0.0, 0.0))})
        snaps.append(sn)
        allocs.append(allocate(s, sn, allocs[-1] if allocs else None))
        return allocs[-1]

    for t in range(40):
        la = allocs[-1].current_a("a") if allocs else 0.0
        lb = allocs[-1].current_a("b") if allocs else 0.0
        last = tick(t, (la, 0.0, 0.0), lb)
    view = observe_all(s, snaps)[-1]
    check_i1(s, view, last)
    assert last.current_a("a") + last.current_a("b") > 16.0  # both near 16 A: L2 would carry both
    with pytest.raises(AssertionError, match="I1 at grid L2"):
        check_i1(s, view, last, strict=True)
    # a's EV switches to three phases (or L2 and L3 read NaN): counted on all three again
    la, lb = last.current_a("a"), last.current_a("b")
    other = la if switch == "three_phases" else math.nan
    after = tick(40, (la, other, other), lb)
    view = observe_all(s, snaps)[-1]
    assert after.state.connectors["a"].ev_phases is None
    check_i1(s, view, after, strict=True)


# -- I3: slots only lower ---------------------------------------------------------------------


def _with(snap_: Snapshot, **changes: object) -> Snapshot:
    return replace(snap_, **changes)  # type: ignore[arg-type]


@st.composite
def connector_slots(draw: st.DrawFn, s: Site) -> list[LimitSlot]:
    """Active connector-scoped slots on some connectors (amps or watts, DR floors too)."""
    out: list[LimitSlot] = []
    for k in draw(st.lists(st.sampled_from(s.connectors), min_size=1, max_size=4)):
        if draw(st.booleans()):
            out.append(
                LimitSlot(
                    id=f"x{len(out)}",
                    source=draw(st.sampled_from(list(SlotSource))),
                    scope=f"connector:{k.id}",
                    current_a=draw(st.sampled_from([0.0, 5.0, 6.0, 8.5, 13.0, 20.0, 40.0])),
                )
            )
        else:
            out.append(
                LimitSlot(
                    id=f"x{len(out)}",
                    source=SlotSource.DEMAND_RESPONSE,
                    scope=f"connector:{k.id}",
                    power_w=draw(st.sampled_from([0.0, 1380.0, 4140.0, 11000.0])),
                    floor_w=draw(st.sampled_from([None, 4200.0])),
                )
            )
    return out


@examples(N_I3)
@given(st.data())
def test_i3_a_connector_slot_never_raises_its_connector(data: st.DataObject) -> None:
    """Adding connector-scoped slots never raises the connectors they cover (same snapshot,
    same previous allocation), and each covered connector stays within its slots (I2).

    (Slots on a site or circuit may raise *other* connectors: capacity one connector cannot
    use goes to the others; and max-min fairness is not monotone, so even a connector inside
    a tighter site cap can gain when a cap binds others first. What no slot may do is lift
    anything above the ratings: test_i3_slots_bound_their_scope and the I1 checks.)"""
    case = data.draw(cases())
    extra = data.draw(connector_slots(case.site))
    # all on one connector: a slot on another may free capacity for it (that is sharing)
    first = extra[0].scope
    extra = [replace(sl, scope=first) for sl in extra]
    without = case.run()
    sn = _with(case.snap, slots=(*case.snap.slots, *extra))
    with_ = case.run(sn)
    for slot in extra:
        cid = slot.scope.partition(":")[2]
        assert with_.current_a(cid) <= without.current_a(cid) + TOL, (
            f"I3: {slot.describe()} raised {cid} from {without.limits[cid]} to {with_.limits[cid]}"
        )
    view = views_of(case, sn)
    check_i2(case.site, view, with_, prev_limits(case))
    check_i1(case.site, view, with_)


@examples(N_I3)
@given(cases())
def test_i3_slots_bound_their_scope(case: Case) -> None:
    """Every site or circuit slot in force caps what its scope's steerable connectors get, on
    each phase (amps) or in total (watts over the phases counted), less what the connectors
    it cannot steer may draw there; a DR floor lifts the cap, never the ratings (I1)."""
    a = case.run()
    view = views_of(case)
    site_, topo = case.site, Topology.of(case.site)
    check_i1(site_, view, a)
    v = site_.nominal_voltage_v
    for slot in active_slots(case.snap.slots, case.snap.wall):
        kind, _, name = slot.scope.partition(":")
        if slot.scope == SITE:
            scope = site_.connectors
        elif kind == "circuit" and name in topo.under:
            scope = topo.under[name]
        else:
            continue
        steer = [k for k in scope if k.id not in view.fixed]
        fixed = [k for k in scope if k.id in view.fixed]
        if slot.current_a is not None:
            for p in range(3):
                got = sum(a.current_a(k.id) for k in steer if p in load_phases(site_, view, a, k))
                held = sum(view.fixed[k.id] for k in fixed if p in k.grid_phases)
                assert got <= max(0.0, slot.current_a - held) + TOL, (slot.describe(), p, got)
        else:
            assert slot.power_w is not None
            got = sum(v * len(load_phases(site_, view, a, k)) * a.current_a(k.id) for k in steer)
            held = sum(v * k.phase_count * view.fixed[k.id] for k in fixed)
            assert got <= max(0.0, slot.power_w - held) + v * TOL, (slot.describe(), got)


@examples(N_I3 // 2)
@given(cases())
def test_i3_slots_above_the_ratings_change_nothing(case: Case) -> None:
    """Slots far above the ratings (and a DR signal of 0 W with a huge floor) change nothing:
    no external limit can lift anything above what the ratings allow."""
    base = case.run()
    scopes = [SITE, *[f"circuit:{c.id}" for c in case.site.circuits]]
    scopes += [f"connector:{k.id}" for k in case.site.connectors[:10]]
    huge = []
    for i, scope in enumerate(scopes):
        huge.append(
            LimitSlot(id=f"h{i}", source=SlotSource.OVERRIDE, scope=scope, current_a=10_000.0)
        )
        huge.append(
            LimitSlot(
                id=f"f{i}",
                source=SlotSource.DEMAND_RESPONSE,
                scope=scope,
                power_w=0.0,
                floor_w=1e9,
                starts_at=WALL - timedelta(days=1),
            )
        )
    lifted = case.run(_with(case.snap, slots=(*case.snap.slots, *huge)))
    for k in case.site.connectors:
        assert lifted.current_a(k.id) == base.current_a(k.id), (k.id, base.limits[k.id])


# -- I4: stale or implausible input never raises ----------------------------------------------


def check_i4(site: Site, view: View, alloc: Allocation, prev: dict[str, float]) -> None:
    """Below a node in hold (its meter or one above it late, implausible or frozen) no limit
    rises; an EVSE without a fresh reading gets its fallback, never more."""
    for k in site.connectors:
        lim = alloc.limits[k.id]
        if view.fresh[k.id] is None:
            assert lim.current_a <= k.fallback_current_a + TOL, (k.id, lim)
        elif view.connector_mode(k) == "hold":
            assert lim.current_a <= prev[k.id] + TOL, (
                f"I4: {k.id} rose {prev[k.id]} -> {lim} while its meter is "
                f"{[view.meter_status.get(n) for n in Topology.of(site).path[k.circuit]]}"
            )


BAD_METER = ["late", "same_again", "nan", "inf", "negative", "huge", "frozen"]


@examples(N_I4)
@given(st.data())
def test_i4_a_late_or_implausible_meter_never_raises(data: st.DataObject) -> None:
    """From a previous allocation, a meter reading that is late (older than meter_stale_s),
    not newer than the last one, NaN, infinite, negative on a site that cannot export, above
    twice the rating, or frozen, never raises any connector below that meter."""
    case = data.draw(cases(history=(1, 3)))
    metered = [c for c in case.site.circuits if c.meter is not None]
    if not metered:
        return
    node = data.draw(st.sampled_from(metered))
    assert node.meter is not None
    bad = data.draw(st.sampled_from(BAD_METER))
    now, ctl = case.snap.now_s, case.site.control
    history = list(case.history)
    old = case.history[-1].meters.get(node.meter)
    value = (0.0, 0.0, 0.0)  # the tempting one: no load at all
    reading: MeterReading | None
    if bad == "late":
        age = data.draw(st.floats(ctl.meter_stale_s + 0.01, ctl.fallback_after_s))
        reading = MeterReading(at_s=now - age, current_a=value)
    elif bad == "same_again":
        reading = old
    elif bad == "frozen":
        # the same non-zero value at every tick so far: frozen once it outlasts meter_frozen_s
        value = (5.0, 5.0, 5.0)
        history = [
            _with(h, meters={**h.meters, node.meter: MeterReading(at_s=h.now_s, current_a=value)})
            for h in history
        ]
        reading = MeterReading(at_s=now, current_a=value)
    else:
        flip = -1.0 if node.parent is None and case.site.meter_export_positive else 1.0
        v = {
            "nan": math.nan,
            "inf": math.inf,
            "negative": -0.6 - 30.0 * (case.site.exports and node.parent is None),
            "huge": 2.0 * node.rating_a + 0.5,
        }[bad]
        if bad == "negative" and case.site.exports and node.parent is None:
            v = math.nan  # an exporting site's grid meter may read negative: use NaN instead
        reading = MeterReading(at_s=now, current_a=(flip * v, 0.0, 0.0))
    sn = _with(case.snap, meters={**case.snap.meters, node.meter: reading})
    allocs = replay(case.site, history)
    views = observe_all(case.site, [*history, sn])
    a = allocate(case.site, sn, allocs[-1])
    prev = {k.id: allocs[-1].current_a(k.id) for k in case.site.connectors}
    assert views[-1].meter_status[node.id] in ("late", "bad", "fallback", "startup") or (
        bad == "frozen"
    ), views[-1].meter_status
    check_ladder(case.site, views[-1], a)
    check_i4(case.site, views[-1], a, prev)


@examples(N_I4)
@given(cases(history=(1, 3)))
def test_i4_holds_on_every_tick(case: Case) -> None:
    """I4 and I6 on random ticks (whatever their meters and EVSEs say)."""
    a = case.run()
    check_i4(case.site, views_of(case), a, prev_limits(case))


@examples(N_I4)
@given(st.data())
def test_i4_an_implausible_evse_current_never_raises(data: st.DataObject) -> None:
    """An EVSE reporting a current no EV can draw (above twice the connector's maximum) is
    worth no more than one reporting no number (NaN) on those phases: it must not shrink the
    non-EV load the meter shows (giving the others more), nor pass for an EV that followed."""
    case = data.draw(cases(history=(1, 3)))
    live = [k for k in case.site.connectors if case.snap.evses.get(k.id) is not None]
    if not live:
        return
    k = data.draw(st.sampled_from(live))
    reading = case.snap.evses[k.id]
    assert reading is not None
    junk = data.draw(st.sampled_from([2.0 * k.max_current_a + 0.5, 1e4, math.inf]))
    n = k.phase_count
    own = reading.current_a
    bogus: Triple = (junk, junk if n > 1 else own[1], junk if n > 2 else own[2])
    blank: Triple = (math.nan, math.nan if n > 1 else own[1], math.nan if n > 2 else own[2])

    def run(current: Triple) -> Allocation:
        r = replace(reading, current_a=current)
        return case.run(_with(case.snap, evses={**case.snap.evses, k.id: r}))

    with_junk, with_nothing = run(bogus), run(blank)
    for c in case.site.connectors:
        assert with_junk.current_a(c.id) <= with_nothing.current_a(c.id) + TOL, (
            f"I4: {k.id} reporting {junk} A raised {c.id}: "
            f"{with_nothing.limits[c.id]} -> {with_junk.limits[c.id]}"
        )


# -- many ticks: a simulated site -------------------------------------------------------------
#
# EVs follow the limit their EVSE applies after a lag (a step, like the EVs of hil/), draw on
# one or three phases up to their own maximum, plug in and out; the building load steps; the
# meters go silent, stick, freeze or read NaN and come back; EVSEs stop answering; writes fail;
# slots come and go. After every tick the single-tick checks run on the engine's decision, and
# the properties that live across ticks are tracked: I4 while the meter is late, the I6 follow
# rule, pause/resume hysteresis and the ladder's recovery.

TICK_S = 1.0


@dataclass(slots=True)
class _Ev:
    three_phase: bool
    max_a: float
    lag_s: float
    overdraw_a: float = 0.0


@dataclass(slots=True)
class _Track:
    """What the checks remember of one connector across ticks."""

    last_up_s: float | None = None  # the last increase as a share
    change: tuple[float, str, float, bool] | None = None  # (t, "up"/"down", value, as a share)
    paused_at_s: float | None = None  # paused by the engine, still plugged
    running_since_s: float | None = None  # running (>= min) since, as a share
    rotation_pauses: list[float] = field(default_factory=list)


class SiteMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.prev: Allocation | None = None
        self.prev_view: View | None = None
        self.ticks = 0

    @initialize(
        s=random_sites(max_connectors=6, quick=True, max_boards=2, root_meter=True),
        rating=st.sampled_from([16.0, 20.0, 25.0, 32.0, 40.0]),
        plugged=st.lists(st.booleans(), min_size=6, max_size=6),
        one_tier=st.booleans(),
    )
    def setup(self, s: Site, rating: float, plugged: list[bool], one_tier: bool) -> None:
        """A small site, most of its connectors taken (contention: pauses and rotation), and
        often a single tier (rotation happens within a tier)."""
        root = replace(s.circuits[0], rating_a=rating)
        conns = tuple(replace(k, priority_tier=0) if one_tier else k for k in s.connectors)
        self.site = replace(s, circuits=(root, *s.circuits[1:]), connectors=conns, time_of_use=())
        self.topo = Topology.of(self.site)
        self.observer = Observer(self.site)
        self.building = {c.id: (0.0, 0.0, 0.0) for c in self.site.circuits}
        self.evs: dict[str, _Ev | None] = {
            k.id: _Ev(three_phase=True, max_a=32.0, lag_s=1.0) if on else None
            for k, on in zip(self.site.connectors, plugged, strict=False)
        }
        self.fault: set[str] = set()
        self.offline: set[str] = set()
        self.fail_next: set[str] = set()
        self.write_failed: frozenset[str] = frozenset()
        self.written: dict[str, float | None] = {k.id: None for k in self.site.connectors}
        self.applied: dict[str, list[tuple[float, float]]] = {
            k.id: [(-1e9, 0.0)] for k in self.site.connectors
        }
        meters = [c.meter for c in self.site.circuits if c.meter is not None]
        self.meter_mode: dict[str, str] = {m: "ok" for m in meters}
        self.last_meter: dict[str, MeterReading] = {}
        self.last_evse: dict[str, EvseReading] = {}
        self.slots: list[LimitSlot] = []
        self.sessions: dict[str, Session] = {}
        self.track = {k.id: _Track() for k in self.site.connectors}

    # -- the world changes

    @rule(data=st.data())
    def plug_in(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.evs)))
        self.evs[cid] = _Ev(
            three_phase=data.draw(st.booleans()),
            max_a=data.draw(st.sampled_from([32.0, 32.0, 16.0, 10.0])),
            lag_s=data.draw(st.sampled_from([0.0, 1.0, 2.0, 4.0])),
            overdraw_a=data.draw(st.sampled_from([0.0, 0.0, 0.4])),
        )
        self.tick()

    @rule(data=st.data())
    def unplug(self, data: st.DataObject) -> None:
        self.evs[data.draw(st.sampled_from(sorted(self.evs)))] = None
        self.tick()

    @rule(data=st.data())
    def building_load(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from([c.id for c in self.site.circuits]))
        self.building[node] = data.draw(
            st.sampled_from([(0.0, 0.0, 0.0), (3.0, 1.0, 0.0), (8.0, 8.0, 8.0), (14.0, 2.0, 6.0)])
        )
        self.tick()

    @rule(data=st.data())
    def meter_trouble(self, data: st.DataObject) -> None:
        meter = data.draw(st.sampled_from(sorted(self.meter_mode)))
        self.meter_mode[meter] = data.draw(
            st.sampled_from(["ok", "ok", "silent", "stuck", "frozen", "nan"])
        )
        self.tick()

    @rule(data=st.data())
    def evse_trouble(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.evs)))
        what = data.draw(st.sampled_from(["offline", "online", "fault", "clear"]))
        if what == "offline":
            self.offline.add(cid)
        elif what == "online":
            self.offline.discard(cid)
        elif what == "fault":
            self.fault.add(cid)
        else:
            self.fault.discard(cid)
        self.tick()

    @rule(data=st.data())
    def writes_fail(self, data: st.DataObject) -> None:
        self.fail_next = set(data.draw(st.sets(st.sampled_from(sorted(self.evs)), max_size=2)))
        self.tick()

    @rule(data=st.data())
    def slot_change(self, data: st.DataObject) -> None:
        drop = data.draw(st.booleans())
        if self.slots and drop:
            self.slots.pop(data.draw(st.integers(0, len(self.slots) - 1)))
        else:
            self.slots.append(data.draw(limit_slots(self.site)))
        self.tick()

    @rule(data=st.data())
    def session_tier(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.evs)))
        if data.draw(st.integers(0, 4)) == 0:  # stopped or not authorised: no current
            self.sessions[cid] = Session(charging_allowed=False, hold="not_authorised")
        else:
            self.sessions[cid] = Session(priority_tier=data.draw(st.sampled_from([None, 0, 2])))
        self.tick()

    @rule(steps=st.integers(1, 8), gap=st.sampled_from([0.0, 0.0, 0.0, 3.0, 11.0]))
    def run(self, steps: int, gap: float) -> None:
        self.t += gap
        for _ in range(steps):
            self.tick()

    # -- one tick

    def _offer(self, cid: str, at_s: float) -> float:
        return [v for t, v in self.applied[cid] if t <= at_s][-1]

    def _draws(self) -> dict[str, Triple]:
        out: dict[str, Triple] = {}
        for k in self.site.connectors:
            ev = self.evs[k.id]
            if ev is None or k.id in self.fault:
                out[k.id] = (0.0, 0.0, 0.0)
                continue
            offer = self._offer(k.id, self.t - ev.lag_s)
            amps = min(offer, ev.max_a) + ev.overdraw_a if offer >= 6.0 else 0.0
            n = k.phase_count if ev.three_phase and k.ev_kind is not EvKind.ONE_PHASE else 1
            out[k.id] = tuple(amps if i < n else 0.0 for i in range(3))  # type: ignore[assignment]
        return out

    def _snapshot(self, draws: dict[str, Triple]) -> Snapshot:
        evses: dict[str, EvseReading | None] = {}
        for k in self.site.connectors:
            ev = self.evs[k.id]
            if k.id in self.offline:
                evses[k.id] = self.last_evse.get(k.id)  # its last answer, getting older
                continue
            if ev is None:
                state = EvseState.A
            elif k.id in self.fault:
                state = EvseState.F
            else:
                state = EvseState.C if max(draws[k.id]) > 0 else EvseState.B
            r = EvseReading(at_s=self.t, state=state, current_a=draws[k.id])
            evses[k.id] = self.last_evse[k.id] = r
        meters: dict[str, MeterReading | None] = {}
        jitter = 0.01 * (self.ticks % 2)  # a live meter never repeats itself exactly
        for node in self.site.circuits:
            if node.meter is None:
                continue
            total = [jitter, 0.0, 0.0]
            for n in self.site.circuits:
                if node.id in self.topo.path[n.id]:
                    for p in range(3):
                        total[p] += self.building[n.id][p]
            for k in self.topo.under[node.id]:
                for i, g in enumerate(k.grid_phases):
                    total[g] += draws[k.id][i]
            sign = -1.0 if node.parent is None and self.site.meter_export_positive else 1.0
            fresh = MeterReading(
                at_s=self.t, current_a=(sign * total[0], sign * total[1], sign * total[2])
            )
            mode = self.meter_mode[node.meter]
            last = self.last_meter.get(node.meter)
            if mode == "silent":
                reading: MeterReading | None = None
            elif mode == "stuck" and last is not None:
                reading = last
            elif mode == "frozen" and last is not None:
                reading = replace(last, at_s=self.t)
            elif mode == "nan":
                reading = replace(fresh, current_a=(math.nan, 0.0, 0.0))
                self.meter_mode[node.meter] = "ok"  # one bad reading
            else:
                reading = self.last_meter[node.meter] = fresh
            meters[node.meter] = reading
        return Snapshot(
            now_s=self.t,
            wall=WALL + timedelta(seconds=self.t),
            meters=meters,
            evses=evses,
            written_a=dict(self.written),
            write_failed=self.write_failed,
            slots=tuple(self.slots),
            sessions=dict(self.sessions),
        )

    def tick(self) -> None:
        self.t += TICK_S
        self.ticks += 1
        draws = self._draws()
        sn = self._snapshot(draws)
        view = self.observer.observe(sn)
        a = allocate(self.site, sn, self.prev)
        prev = {
            k.id: (
                self.prev.current_a(k.id)
                if self.prev is not None
                else _start_limit(k, self.written.get(k.id))
            )
            for k in self.site.connectors
        }
        last_up = {c: t.last_up_s for c, t in self.track.items() if t.last_up_s is not None}
        check_ladder(self.site, view, a)
        check_i1(self.site, view, a)
        check_unbalance(self.site, view, a)
        check_i2(self.site, view, a, prev)
        check_i4(self.site, view, a, prev)
        check_i6(self.site, view, a, prev, last_up)
        self.check_across_ticks(view, a, prev)
        event(f"mode {a.mode}")
        # the shell writes every limit; a write to an EVSE that is offline or failing is lost
        failed = set()
        for k in self.site.connectors:
            if k.id in self.offline or k.id in self.fail_next:
                failed.add(k.id)
                continue
            value = a.current_a(k.id)
            self.written[k.id] = value
            if self.applied[k.id][-1][1] != value:
                self.applied[k.id].append((self.t, value))
        self.write_failed = frozenset(failed - self.offline)
        self.fail_next = set()
        self.prev, self.prev_view = a, view

    def check_across_ticks(self, view: View, a: Allocation, prev: dict[str, float]) -> None:
        lm = self.site.load_management
        now = self.t
        for k in self.site.connectors:
            lim = a.limits[k.id]
            tr = self.track[k.id]
            value, before = lim.current_a, prev[k.id]
            share = lim.bound not in FALLBACK_BOUNDS and lim.bound is not Bound.WRITE_FAILED
            reading = view.fresh[k.id]
            was_share = self.prev is None or (
                self.prev.limits[k.id].bound not in FALLBACK_BOUNDS
                and self.prev.limits[k.id].bound is not Bound.WRITE_FAILED
            )
            # the ladder's recovery: from the fallback, one ramp step (or a start at the minimum)
            if self.prev_view is not None and share:
                was = self.prev_view.connector_mode(k)
                if was in ("fallback", "startup") and view.connector_mode(k) != was:
                    event(f"recovery from {was}")
                    cap = max(k.fallback_current_a + lm.ramp_step_a, k.min_current_a)
                    assert value <= cap + TOL, f"recovery of {k.id} jumped {before} -> {lim}"
            # I6: an increase only once the EV followed its last step, or settle_s passed
            # (no step yet: the first decision starts from the written limit or the fallback)
            if share and was_share and value > before + TOL and before > 0.0 and tr.change:
                t_c, direction, level, as_share = tr.change
                peak = peak_of(k, reading)
                followed = (direction == "up" and peak >= level - lm.follow_tolerance_a) or (
                    direction == "down" and peak <= level + lm.follow_tolerance_a
                )
                if as_share:
                    event("increase checked against the follow rule")
                    assert followed or now - t_c >= lm.settle_s - 1e-6, (
                        f"I6: {k.id} rose {before} -> {lim} at {now} although its EV "
                        f"draws {peak} after the step {direction} to {level} at {t_c}"
                    )
            # hysteresis (a missing reading is no news: the EV is still there)
            held = lim.bound in (Bound.NOT_AUTHORISED, Bound.STOPPED, Bound.UNAVAILABLE)
            if (reading is not None and not reading.state.vehicle_present) or held:
                # the session ended (or may not draw): not a pause of the engine's making
                tr.paused_at_s = None
                tr.running_since_s = None
            elif share and value == 0.0 and before > 0.0 and was_share:
                event(f"paused: {lim.bound.value}")
                ran = now - tr.running_since_s if tr.running_since_s is not None else math.inf
                if lim.bound is Bound.ROTATION:
                    assert ran >= lm.min_on_s - 1e-6, f"{k.id} rotated out after {ran} s"
                    if tr.rotation_pauses:
                        gap = now - tr.rotation_pauses[-1]
                        assert gap >= lm.min_on_s + lm.min_off_s - 1e-6, (k.id, gap)
                    tr.rotation_pauses.append(now)
                elif ran < lm.min_on_s - 1e-6:
                    event("paused before min_on_s")
                    assert self.capacity_forces(view, a, k), (
                        f"{k.id} paused ({lim.bound.value}) after running {ran} s although the "
                        f"minimums of the connectors running before still fit"
                    )
                tr.paused_at_s = now
                tr.running_since_s = None
            elif share and value > 0.0:
                if before == 0.0 and tr.paused_at_s is not None:
                    event("resumed after a pause")
                    off = now - tr.paused_at_s
                    assert off >= lm.min_off_s - 1e-6, f"{k.id} resumed after {off} s ({lim})"
                tr.paused_at_s = None
                if tr.running_since_s is None:
                    tr.running_since_s = now
            # what the next ticks compare with
            if share and value > before + TOL:
                tr.last_up_s = now
            if abs(value - before) > TOL:
                tr.change = (now, "up" if value > before else "down", value, share)

    def capacity_forces(self, view: View, a: Allocation, paused: Connector) -> bool:
        """Whether a running connector had to pause before min_on_s: a higher tier claims
        its minimum, or its own slot fell below its minimum, or the minimums of the connectors
        running before no longer fit some node and phase (its measured non-EV load, the
        connectors the engine cannot steer, EVs drawing above their limits). Site/circuit
        slots and the unbalanced-load limit are not modelled here: with them, say yes."""
        site, snap, prev = self.site, view.snap, self.prev
        assert prev is not None

        def tier(k: Connector) -> int:
            session = snap.sessions.get(k.id)
            if session is not None and session.priority_tier is not None:
                return session.priority_tier
            return k.priority_tier

        def steered(alloc: Allocation, k: Connector) -> bool:
            bound = alloc.limits[k.id].bound
            return bound not in FALLBACK_BOUNDS and bound is not Bound.WRITE_FAILED

        for k in site.connectors:
            # priority pre-emption: a higher tier starts, or is granted its minimum and waits
            # for the current to be let go (a start needs its whole minimum free)
            lim = a.limits[k.id]
            granted = lim.target_a is not None and lim.target_a >= k.min_current_a
            if tier(k) > tier(paused) and steered(a, k) and (lim.current_a > 0.0 or granted):
                return True
        if site.load_management.unbalanced_limit_a is not None:
            return True
        for slot in active_slots(snap.slots, snap.wall):
            if not slot.scope.startswith("connector:"):
                return True
        cap, _ = connector_cap_a(site, snap, paused, load_phases(site, view, a, paused))
        if cap < paused.min_current_a:
            return True
        running = [
            k
            for k in site.connectors
            if k.id not in view.fixed
            and prev.current_a(k.id) > 0.0  # running before (as a share or not)
            and (r := view.fresh[k.id]) is not None
            and r.state.vehicle_present
        ]
        for node in site.circuits:
            ne = view.non_ev[node.id]
            if ne is None:
                return True
            under = self.topo.under[node.id]
            for p in range(3):
                fixed = sum(
                    max(view.fixed[k.id], prev.current_a(k.id))
                    for k in under
                    if k.id in view.fixed and p in k.grid_phases
                )
                need = 0.0
                for k in under:
                    if k in running and p in load_phases(site, view, a, k):
                        need += k.min_current_a
                    if k.id not in view.fixed:  # an EV still drawing above its limit
                        need += max(0.0, view.draws[k.id][p] - prev.current_a(k.id))
                if need > node.rating_a - node.margin_a - ne[p] - fixed + TOL:
                    return True
        return False


def _start_limit(k: Connector, written: float | None) -> float:
    start = written if written is not None else k.fallback_current_a
    return start if start >= k.min_current_a else 0.0


N_MACHINE = 500
SiteMachine.TestCase.settings = settings(
    max_examples=max(1, int(N_MACHINE * SCALE)),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=SLOW,
)
TestSiteMachine = SiteMachine.TestCase
