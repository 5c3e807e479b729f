"""Core layer: the load-management engine, one pure call per tick.

``allocate(site, snapshot, previous)`` decides every connector's current limit jointly, per
grid phase, over the whole circuit tree, and returns what bound each one. The steps, in order
(docs/load-management.md tells the story with a worked example):

1. Judge the meters: a reading that is missing, NaN, negative where the site cannot export,
   above twice the rating or frozen counts as stale. Per node, the fail-safe ladder: a late
   reading holds (no increases), one older than ``fallback_after_s`` sends every connector
   below that node to its fallback current, and before the first reading it is start-up.
2. Sort the connectors: a vehicle present and fresh readings makes a candidate; an EVSE that
   stopped answering or whose last write failed keeps a conservative reservation (the higher of
   its last written limit, its fallback and its draw); no vehicle or a fault gets 0.
3. Capacities: each node and phase has rating - margin - non-EV load - reservations, the
   non-EV load being the node's meter minus the draws of the connectors below it (or the
   configured worst case without a meter). Limit slots and the unbalanced-load limit add
   constraints of their own; none can raise anything.
4. Admission: minimum currents are granted in tier order (within a tier, the running ones
   first, longest running first, then the waiting ones, longest waiting first; after
   ``rotation_s`` a running connector yields to a waiting one). A connector whose minimum
   does not fit is paused: never 0 < I < min.
5. Sharing: what is left above the minimums goes strictly tier by tier; within a tier it is
   max-min fair in amps (water-filling, controller/core/waterfill.py).
6. Dynamics: decreases go out at once; increases only after the EV followed its last step,
   at most ``ramp_step_a`` per ``ramp_period_s``, and only into capacity that is really free
   (every connector counted at the higher of its limit and its draw), so two grants can never
   overload a circuit together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from controller.core.model import (
    Allocation,
    Bound,
    Condition,
    ConnectorLimit,
    ConnectorMemory,
    EngineState,
    EvseReading,
    MeterMemory,
    MeterReading,
    NodePhaseState,
    Snapshot,
    Triple,
)
from controller.core.site import Connector, EvKind, LoadManagement, Site, Topology
from controller.core.slots import SITE, LimitSlot, active_slots, time_of_use_slot
from controller.core.waterfill import AT_MAX, UNBOUND, FloatArray, Incidence, waterfill

# Limits go out in steps of 0.1 A, rounded down: the finest step common EVSEs accept.
STEP_A = 0.1
_EPS = 1e-9
# A meter may read a little below zero on a site that cannot export (offsets, CT noise).
NEGATIVE_TOLERANCE_A = 0.5
_LADDER = {"normal": 0, "hold": 1, "startup": 2, "fallback": 3}


def floor_step(current_a: float) -> float:
    """Round down to the 0.1 A grid (never up: a limit must not grow by rounding)."""
    # round(.., 1): 217 * 0.1 is 21.700000000000003 in binary; 21.7 is what we mean and write.
    return round(math.floor(current_a / STEP_A + 1e-6) * STEP_A, 1)


# -- step 1: meters and the ladder ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _MeterJudgement:
    reading: MeterReading | None  # usable this tick (plausible, not frozen), else None
    memory: MeterMemory | None
    mode: str  # "normal", "hold", "fallback", "startup"
    fault: str | None


def _judge_meter(
    site: Site,
    *,
    node_rating_a: float,
    is_root: bool,
    reading: MeterReading | None,
    memory: MeterMemory | None,
    now_s: float,
    ev_draw_a: float,
) -> _MeterJudgement:
    control = site.control
    usable = reading
    fault = None
    if reading is not None:
        signed = reading.current_a
        if is_root and site.meter_export_positive:
            signed = (-signed[0], -signed[1], -signed[2])
        may_export = is_root and site.exports
        if not all(math.isfinite(i) for i in signed):
            usable, fault = None, "meter_implausible: not a number"
        elif any(abs(i) > 2.0 * node_rating_a for i in signed):
            usable, fault = None, "meter_implausible: above twice the rating"
        elif not may_export and any(i < -NEGATIVE_TOLERANCE_A for i in signed):
            usable, fault = None, "meter_implausible: negative on a site that cannot export"
        else:
            usable = replace(reading, current_a=(abs(signed[0]), abs(signed[1]), abs(signed[2])))
    # A frozen meter repeats itself exactly. All zeros is a real reading of an idle site,
    # unless the EVSEs below it say current flows.
    new_memory = memory
    if usable is not None and memory is not None and usable.at_s <= memory.good_at_s:
        usable = None  # the same reading again (the read failed): late, not frozen
    if usable is not None:
        value = usable.current_a
        if memory is None or memory.value != value:
            new_memory = MeterMemory(value=value, changed_at_s=now_s, good_at_s=usable.at_s)
        else:
            frozen_for = now_s - memory.changed_at_s
            moving = any(v != 0.0 for v in value) or ev_draw_a > 1.0
            if moving and frozen_for > control.meter_frozen_s:
                usable, fault = None, f"meter_frozen: unchanged for {frozen_for:.0f} s"
            else:
                new_memory = replace(memory, good_at_s=usable.at_s)
    if new_memory is None:
        return _MeterJudgement(reading=None, memory=None, mode="startup", fault=fault)
    age_s = now_s - new_memory.good_at_s
    if age_s > control.fallback_after_s:
        return _MeterJudgement(
            reading=None,
            memory=new_memory,
            mode="fallback",
            fault=fault or f"meter_stale: no usable reading for {age_s:.0f} s",
        )
    late = usable is None or age_s > control.meter_stale_s
    return _MeterJudgement(
        reading=usable if usable is not None else None,
        memory=new_memory,
        mode="hold" if late else "normal",
        fault=fault,
    )


# -- the per-tick working set ---------------------------------------------------------------


@dataclass(slots=True)
class _Cand:
    """A connector with a vehicle, sharing this tick."""

    conn: Connector
    idx: int
    reading: EvseReading
    memory: ConnectorMemory
    phases: tuple[int, ...]  # grid phases the EV loads
    tier: int
    lo: float
    hi: float
    hi_bound: Bound = Bound.CONNECTOR_MAX
    hi_slot: str | None = None
    mode: str = "normal"
    admitted: bool = False
    pause_bound: Bound = Bound.BELOW_MIN
    pause_key: int | None = None
    target: float = 0.0
    target_key: int = AT_MAX
    keys: list[tuple[int, float]] = field(default_factory=list)  # (constraint, weight)


@dataclass(slots=True)
class _Constraints:
    """Constraint k: sum of weighted EV currents <= capacity[k]; described for the status."""

    capacity: list[float] = field(default_factory=list)
    label: list[tuple[Bound, str | None, int | None, str | None]] = field(default_factory=list)

    def add(
        self, capacity: float, bound: Bound, node: str | None, phase: int | None, slot: str | None
    ) -> int:
        self.capacity.append(capacity)
        self.label.append((bound, node, phase, slot))
        return len(self.capacity) - 1


def _draw(conn: Connector, reading: EvseReading) -> Triple:
    """A connector's measured currents mapped onto the grid phases."""
    out = [0.0, 0.0, 0.0]
    for i, grid_phase in enumerate(conn.grid_phases):
        value = reading.current_a[i]
        if math.isfinite(value) and value > 0:
            out[grid_phase] += value
    return (out[0], out[1], out[2])


def _ev_phases(
    conn: Connector, reading: EvseReading, memory: ConnectorMemory, now_s: float, site: Site
) -> tuple[tuple[int, ...], ConnectorMemory]:
    """Which grid phases the EV loads: configured, or detected per session (1p on L1 only)."""
    wired = conn.grid_phases
    if len(wired) == 1 or conn.ev_kind is EvKind.THREE_PHASE:
        return wired, memory
    if conn.ev_kind is EvKind.ONE_PHASE:
        return (wired[0],), memory
    lm = site.load_management
    own = reading.current_a
    # A phase reading no number (NaN: unknown, or implausible) may carry current: it ends a
    # detection as a measured current does (I4: unknown input never frees capacity).
    others_on = any(not own[i] < lm.detect_on_a for i in (1, 2))
    if others_on:  # draws on L2/L3: 3-phase now, whatever was detected before
        return wired, replace(memory, ev_phases=None, one_phase_since_s=None)
    if memory.ev_phases is not None:
        return memory.ev_phases, memory
    looks_1p = own[0] >= lm.detect_on_a and all(own[i] < lm.detect_off_a for i in (1, 2))
    if not looks_1p:
        return wired, replace(memory, one_phase_since_s=None)
    since = memory.one_phase_since_s if memory.one_phase_since_s is not None else now_s
    if now_s - since >= lm.detect_after_s:
        return (wired[0],), replace(memory, ev_phases=(wired[0],), one_phase_since_s=since)
    return wired, replace(memory, one_phase_since_s=since)


# Fault detection at the connector (EVerest's soft over-current rule; a stuck contactor).
OVERCURRENT_FACTOR = 1.1
OVERCURRENT_OFFSET_A = 0.5
OVERCURRENT_AFTER_S = 7.0
STRAY_CURRENT_A = 1.0
STRAY_AFTER_S = 2.0


def _watch_device(
    conn: Connector,
    reading: EvseReading,
    *,
    draw: Triple,
    written: float | None,
    mem: ConnectorMemory,
    now: float,
    faults: list[Condition],
) -> ConnectorMemory:
    """Raise ``ev_overcurrent`` when the EV draws more than its limit + 10 % + 0.5 A for 7 s,
    and ``stuck_contactor`` when current flows while the EVSE says no car or not charging."""
    peak = max(draw)
    applied = written if written is not None else mem.limit_a
    over = reading.state.charging and peak > applied * OVERCURRENT_FACTOR + OVERCURRENT_OFFSET_A
    over_since = (
        (mem.overdraw_since_s if mem.overdraw_since_s is not None else now) if over else None
    )
    if over_since is not None and now - over_since >= OVERCURRENT_AFTER_S:
        faults.append(
            Condition(
                code="ev_overcurrent",
                subject=conn.id,
                detail=f"draws {peak:.1f} A against a limit of {applied:.1f} A",
            )
        )
    stray = not reading.state.charging and peak > STRAY_CURRENT_A
    stray_since = (mem.stray_since_s if mem.stray_since_s is not None else now) if stray else None
    if stray_since is not None and now - stray_since >= STRAY_AFTER_S:
        faults.append(
            Condition(
                code="stuck_contactor",
                subject=conn.id,
                detail=f"{peak:.1f} A flows in state {reading.state.value}",
            )
        )
    return replace(mem, overdraw_since_s=over_since, stray_since_s=stray_since)


def _fresh(site: Site, snap: Snapshot, conn: Connector) -> EvseReading | None:
    reading = snap.evses.get(conn.id)
    if reading is None or snap.now_s - reading.at_s > site.control.evse_stale_s:
        return None
    # No EV draws more than twice its connector's maximum (the meters' rule: twice the
    # rating). Such a value is unknown, like NaN: taken as a draw it would shrink the non-EV
    # load under the meters and raise the others, or pass for an EV that followed (I4).
    ceiling = 2.0 * conn.max_current_a
    if any(i > ceiling for i in reading.current_a):
        a, b, c = (math.nan if i > ceiling else i for i in reading.current_a)
        return replace(reading, current_a=(a, b, c))
    return reading


def _own_cap_a(site: Site, conn: Connector, mem: ConnectorMemory, snap: Snapshot) -> float:
    """A connector's own ceiling now: its maximum, its unwatched cap and the connector-scoped
    slots in force (power over the phases its EV is counted on, as for a candidate)."""
    cap = conn.max_current_a
    if conn.unwatched_cap_a is not None:
        cap = min(cap, conn.unwatched_cap_a)
    phases = mem.ev_phases or (
        conn.grid_phases[:1] if conn.ev_kind is EvKind.ONE_PHASE else conn.grid_phases
    )
    for slot in active_slots(snap.slots, snap.wall):
        if slot.scope != f"connector:{conn.id}":
            continue
        if slot.current_a is not None:
            cap = min(cap, slot.current_a)
        elif slot.power_w is not None:
            cap = min(cap, slot.power_w / (site.nominal_voltage_v * len(phases)))
    return cap


def _slot_scope_connectors(
    site: Site, topo: Topology, slot: LimitSlot
) -> tuple[Connector, ...] | None:
    """The connectors a slot covers; None for a scope this site does not have."""
    if slot.scope == SITE:
        return site.connectors
    kind, _, name = slot.scope.partition(":")
    if kind == "circuit" and name in topo.under:
        return topo.under[name]
    if kind == "connector":
        found = tuple(c for c in site.connectors if c.id == name)
        return found or None
    return None


# -- the engine -----------------------------------------------------------------------------


def allocate(site: Site, snap: Snapshot, previous: Allocation | None = None) -> Allocation:
    """Decide every connector's current limit for this tick. Pure; see the module docstring."""
    lm = site.load_management
    now = snap.now_s
    topo = Topology.of(site)
    prev_state = previous.state if previous is not None else EngineState()
    prev_mem = prev_state.connectors

    # Fresh EVSE readings and the EVs' draws per node (for frozen-meter detection too).
    fresh = {conn.id: _fresh(site, snap, conn) for conn in site.connectors}

    # -- 1. meters and the per-node ladder
    judgements: dict[str, _MeterJudgement] = {}
    meter_memory: dict[str, MeterMemory] = {}
    faults: list[Condition] = []
    for node in site.circuits:
        if node.meter is None:
            continue
        draw_below = 0.0
        for conn in topo.under[node.id]:
            r = fresh[conn.id]
            if r is not None:
                draw_below += sum(_draw(conn, r))
        judged = _judge_meter(
            site,
            node_rating_a=node.rating_a,
            is_root=node.parent is None,
            reading=snap.meters.get(node.meter),
            memory=prev_state.meters.get(node.meter),
            now_s=now,
            ev_draw_a=draw_below,
        )
        judgements[node.id] = judged
        if judged.memory is not None:
            meter_memory[node.meter] = judged.memory
        if judged.fault is not None:
            code, _, detail = judged.fault.partition(": ")
            faults.append(Condition(code=code, subject=node.meter, detail=detail))
    node_mode: dict[str, str] = {}
    for node in site.circuits:
        modes = [judgements[n].mode for n in topo.path[node.id] if n in judgements]
        node_mode[node.id] = max(modes, key=_LADDER.__getitem__, default="normal")
    mode = max(node_mode.values(), key=_LADDER.__getitem__, default="normal")

    # -- 2. sort the connectors
    limits: dict[str, ConnectorLimit] = {}
    memories: dict[str, ConnectorMemory] = {}
    reserved = {n.id: [0.0, 0.0, 0.0] for n in site.circuits}  # fixed worst cases per phase
    subtract = {n.id: [0.0, 0.0, 0.0] for n in site.circuits}  # EV draws to take off meters
    cands: list[_Cand] = []
    fixed_amps: dict[str, float] = {}
    for idx, conn in enumerate(site.connectors):
        reading = fresh[conn.id]
        written = snap.written_a.get(conn.id)
        start = written if written is not None else conn.fallback_current_a
        if start < conn.min_current_a:
            # A limit below the minimum charges nothing (e.g. written under an older config):
            # start from 0, never hold or retry it (I2: never 0 < I < min).
            start = 0.0
        mem = prev_mem.get(conn.id) or ConnectorMemory(limit_a=start, changed_at_s=now)
        cmode = node_mode[conn.circuit]
        draw = _draw(conn, reading) if reading is not None else (0.0, 0.0, 0.0)
        vehicle = reading is not None and reading.state.vehicle_present
        if reading is not None and (vehicle or cmode in ("fallback", "startup")):
            for node_id in topo.path[conn.circuit]:
                for p in range(3):
                    subtract[node_id][p] += draw[p]
        if reading is not None:
            mem = _watch_device(
                conn, reading, draw=draw, written=written, mem=mem, now=now, faults=faults
            )
        if not vehicle and mem.vehicle:  # unplugged: the session's memory ends
            mem = replace(
                mem,
                ev_phases=None,
                one_phase_since_s=None,
                underuse_since_s=None,
                waiting_since_s=None,
                paused_by_us=False,
            )

        fixed: float | None = None  # a conservative reservation instead of a share
        if cmode in ("fallback", "startup"):
            bound = Bound.FALLBACK if cmode == "fallback" else Bound.STARTUP
            # A session that may not draw (stopped, not authorised, unavailable) gets 0 A even
            # here: less than the fallback current, and nobody charges unpaid. Its reservation
            # stays the fallback current's (I5 holds either way).
            fallback_a = conn.fallback_current_a if _session_allows(snap, conn.id) else 0.0
            limits[conn.id] = ConnectorLimit(connector=conn.id, current_a=fallback_a, bound=bound)
            fixed = max(conn.fallback_current_a, *draw)
        elif reading is None:
            # Unread is not unknown: a session that may not draw (stopped, not authorised,
            # unavailable) gets 0 A here too, should the write get through.
            offline_a = conn.fallback_current_a if _session_allows(snap, conn.id) else 0.0
            limits[conn.id] = ConnectorLimit(
                connector=conn.id, current_a=offline_a, bound=Bound.EVSE_OFFLINE
            )
            fixed = max(written or 0.0, conn.fallback_current_a, mem.limit_a)
        elif conn.id in snap.write_failed:
            # Keep asking for what we asked before (never more); count the worst case. The
            # retry obeys the connector's own bounds in force now (I2): a connector slot or
            # cap that came in since must not be overridden by resending an older limit.
            retry = mem.limit_a if vehicle and _session_allows(snap, conn.id) else 0.0
            retry = min(retry, _own_cap_a(site, conn, mem, snap))
            if retry < conn.min_current_a:
                retry = 0.0
            limits[conn.id] = ConnectorLimit(
                connector=conn.id, current_a=retry, bound=Bound.WRITE_FAILED
            )
            fixed = max(written or 0.0, conn.fallback_current_a, *draw, retry)
        elif vehicle and not _session_allows(snap, conn.id):
            limits[conn.id] = ConnectorLimit(
                connector=conn.id, current_a=0.0, bound=_hold_bound(snap, conn.id)
            )
            # Until the EV has followed the 0 A, what it still draws stays reserved.
            fixed = max(draw)
        elif not vehicle:
            bound = Bound.NO_VEHICLE if reading.state.value == "A" else Bound.EVSE_FAULT
            limits[conn.id] = ConnectorLimit(connector=conn.id, current_a=0.0, bound=bound)
            if bound is Bound.EVSE_FAULT:
                faults.append(
                    Condition(
                        code="evse_fault",
                        subject=conn.id,
                        detail=f"reports state {reading.state.value}",
                    )
                )
        if fixed is not None:
            fixed_amps[conn.id] = fixed
            for node_id in topo.path[conn.circuit]:
                for p in conn.grid_phases:
                    reserved[node_id][p] += fixed
            memories[conn.id] = replace(
                mem,
                limit_a=limits[conn.id].current_a,
                vehicle=vehicle,
                running_since_s=None if limits[conn.id].current_a == 0 else mem.running_since_s,
            )
            continue
        if not vehicle:
            memories[conn.id] = replace(
                mem, limit_a=0.0, vehicle=False, running_since_s=None, step="none"
            )
            continue
        assert reading is not None
        phases, mem = _ev_phases(conn, reading, mem, now, site)
        session = snap.sessions.get(conn.id)
        tier = (
            session.priority_tier
            if session is not None and session.priority_tier is not None
            else conn.priority_tier
        )
        top_a, top_bound = conn.max_current_a, Bound.CONNECTOR_MAX
        if conn.unwatched_cap_a is not None and conn.unwatched_cap_a < top_a:
            top_a, top_bound = conn.unwatched_cap_a, Bound.UNWATCHED_CAP
        cands.append(
            _Cand(
                conn=conn,
                idx=idx,
                reading=reading,
                memory=replace(mem, vehicle=True),
                phases=phases,
                tier=tier,
                lo=conn.min_current_a,
                hi=top_a,
                hi_bound=top_bound,
                mode=cmode,
            )
        )

    # -- 3. capacities: nodes per phase, slots, the unbalanced-load limit
    cons = _Constraints()
    non_ev: dict[str, Triple] = {}
    available: dict[str, Triple] = {}
    node_key: dict[tuple[str, int], int] = {}
    for node in site.circuits:
        j = judgements.get(node.id)
        if j is not None and j.reading is not None:
            m = j.reading.current_a
            sub = subtract[node.id]
            ne: Triple = (max(0.0, m[0] - sub[0]), max(0.0, m[1] - sub[1]), max(0.0, m[2] - sub[2]))
        elif j is not None and j.memory is not None and j.memory.non_ev_a is not None:
            ne = j.memory.non_ev_a  # late: hold with the non-EV load of the last usable reading
        else:
            ne = node.worst_case_non_ev_a
        non_ev[node.id] = ne
        if j is not None and j.reading is not None and node.meter in meter_memory:
            meter_memory[node.meter] = replace(meter_memory[node.meter], non_ev_a=ne)
        base = node.rating_a - node.margin_a
        avail = (base - ne[0], base - ne[1], base - ne[2])
        available[node.id] = avail
        for p in range(3):
            node_key[(node.id, p)] = cons.add(
                avail[p] - reserved[node.id][p], Bound.CIRCUIT, node.id, p, None
            )
    for cand in cands:
        for node_id in topo.path[cand.conn.circuit]:
            for p in cand.phases:
                cand.keys.append((node_key[(node_id, p)], 1.0))
        # An EV that keeps drawing above its limit once it had time to follow counts at its
        # draw: the excess is taken from the capacity the others share. (Within the settling
        # time, step 6 already blocks increases while it draws more than its limit.)
        mem = cand.memory
        if now - mem.changed_at_s >= lm.settle_s:
            draw = _draw(cand.conn, cand.reading)
            for p in range(3):
                excess = draw[p] - mem.limit_a
                if excess > lm.follow_tolerance_a:
                    for node_id in topo.path[cand.conn.circuit]:
                        cons.capacity[node_key[(node_id, p)]] -= excess

    slots = list(snap.slots)
    tou = time_of_use_slot(site.time_of_use, snap.wall)
    if tou is not None:
        slots.append(tou)
    notes: list[str] = []
    by_id = {c.id: c for c in site.connectors}
    for slot in active_slots(slots, snap.wall):
        covered = _slot_scope_connectors(site, topo, slot)
        if covered is None:
            notes.append(f"slot {slot.key} names unknown scope {slot.scope!r}: ignored")
            continue
        ids = {c.id for c in covered}
        scoped = [c for c in cands if c.conn.id in ids]
        if slot.scope.startswith("connector:") and len(covered) == 1:
            for cand in scoped:
                amps = (
                    slot.current_a
                    if slot.current_a is not None
                    else (slot.power_w or 0.0) / (site.nominal_voltage_v * len(cand.phases))
                )
                if amps < cand.hi:
                    cand.hi, cand.hi_bound, cand.hi_slot = amps, Bound.SLOT, slot.key
            continue
        if slot.current_a is not None:
            for p in range(3):
                used = sum(
                    amps
                    for cid, amps in fixed_amps.items()
                    if cid in ids and p in by_id[cid].grid_phases
                )
                k = cons.add(slot.current_a - used, Bound.SLOT, None, None, slot.key)
                for cand in scoped:
                    if p in cand.phases:
                        cand.keys.append((k, 1.0))
        else:
            assert slot.power_w is not None
            v = site.nominal_voltage_v
            used = sum(
                amps * v * by_id[cid].phase_count for cid, amps in fixed_amps.items() if cid in ids
            )
            k = cons.add(slot.power_w - used, Bound.SLOT, None, None, slot.key)
            for cand in scoped:
                cand.keys.append((k, v * len(cand.phases)))

    if lm.unbalanced_limit_a is not None:
        root = site.root.id
        unbalance_key: dict[int, int] = {}
        base_load = [non_ev[root][p] + reserved[root][p] for p in range(3)]
        for cand in cands:  # 3-phase EVs load all phases alike: only 1-phase ones unbalance
            if len(cand.phases) == 1:
                p = cand.phases[0]
                # I_p - I_q <= U for every other phase q; EVs on q only help, so count none:
                # sum of 1-phase EVs on p <= U - (load on p - the least loaded other phase)
                others = min(base_load[q] for q in range(3) if q != p)
                cap = lm.unbalanced_limit_a - (base_load[p] - others)
                if p not in unbalance_key:
                    unbalance_key[p] = cons.add(cap, Bound.UNBALANCE, None, p, None)
                cand.keys.append((unbalance_key[p], 1.0))

    # Unused capacity: an EV settled well below its limit is capped near its draw. The cap
    # lifts when the EV draws (almost) all of it, i.e. it wants more: the release tolerance is
    # below the headroom, or a steady EV would be released every other tick and flap.
    release_tol_a = min(lm.follow_tolerance_a, lm.unused_headroom_a / 2)
    for cand in cands:
        mem = cand.memory
        peak = max((cand.reading.current_a[i] for i in range(cand.conn.phase_count)), default=0.0)
        since = mem.underuse_since_s
        capped = since is not None and now - since >= lm.unused_after_s
        if capped and peak >= mem.limit_a - release_tol_a:
            since, capped = None, False  # it ramps up to its allowance: its share comes back
        elif not capped:
            settled = now - mem.changed_at_s >= lm.settle_s
            below = mem.limit_a > 0 and peak < mem.limit_a - lm.unused_threshold_a
            if settled and below and mem.running_since_s is not None:
                since = since if since is not None else now
                capped = now - since >= lm.unused_after_s
            else:
                since = None
        cand.memory = replace(mem, underuse_since_s=since)
        if capped:
            cap = max(cand.lo, peak + lm.unused_headroom_a)
            if cap < cand.hi:
                cand.hi, cand.hi_bound, cand.hi_slot = cap, Bound.EV_USES_LESS, None

    capacity = np.asarray(cons.capacity, dtype=np.float64)

    # -- 4. admission of minimums, tier by tier
    _admit(cands, capacity, now=now, lm=lm)

    # -- 5. sharing above the minimums, strictly tier by tier, max-min fair within a tier
    remaining = capacity.copy()
    for cand in cands:
        if cand.admitted:
            for k, w in cand.keys:
                remaining[k] -= w * cand.lo
    entries = [(k, i, w) for i, cand in enumerate(cands) for k, w in cand.keys]
    inc = Incidence.build(entries, len(cands), len(cons.capacity))
    lo = np.asarray([c.lo for c in cands], dtype=np.float64)
    hi = np.asarray([max(c.hi, c.lo) for c in cands], dtype=np.float64)
    for tier in sorted({c.tier for c in cands if c.admitted}, reverse=True):
        members = np.asarray([c.admitted and c.tier == tier for c in cands], dtype=np.bool_)
        x_arr, bound_arr = waterfill(inc, lo, hi, remaining, members)
        for i in map(int, np.flatnonzero(members)):
            cand = cands[i]
            cand.target = max(cand.lo, floor_step(float(x_arr[i])))
            cand.target_key = int(bound_arr[i])
            for k, w in cand.keys:
                remaining[k] -= w * (cand.target - cand.lo)

    # -- 6. dynamics: decreases at once, increases settled, ramped and into free capacity
    decided: dict[int, tuple[float, Bound, int | None]] = {}
    for i, cand in enumerate(cands):
        prev = cand.memory.limit_a
        if not cand.admitted:
            decided[i] = (0.0, cand.pause_bound, cand.pause_key)
        elif cand.target <= prev + _EPS:
            decided[i] = (cand.target, Bound.CIRCUIT, cand.target_key)
    # Free capacity for increases: everyone counted at max(limit, draw) on each constraint.
    slack = capacity.copy()
    for i, cand in enumerate(cands):
        held = decided[i][0] if i in decided else cand.memory.limit_a
        draw = _draw(cand.conn, cand.reading)
        for k, w in cand.keys:
            _, _, phase, _ = cons.label[k]
            per_phase = draw[phase] if phase is not None else max(draw)
            slack[k] -= w * max(held, per_phase)
    order = sorted(
        (i for i in range(len(cands)) if i not in decided),
        key=lambda i: (-cands[i].tier, cands[i].idx),
    )
    for i in order:
        cand = cands[i]
        mem = cand.memory
        prev = mem.limit_a
        want = cand.target
        reason: Bound | None = None
        peak = max((cand.reading.current_a[j] for j in range(cand.conn.phase_count)), default=0.0)
        followed = (
            mem.step == "none"
            or (mem.step == "up" and peak >= prev - lm.follow_tolerance_a)
            or (mem.step == "down" and peak <= prev + lm.follow_tolerance_a)
        )
        settled = followed or now - mem.changed_at_s >= lm.settle_s
        ramp_due = mem.last_increase_at_s is None or (
            now - mem.last_increase_at_s >= lm.ramp_period_s - _EPS
        )
        if cand.mode == "hold":
            want, reason = prev, Bound.METER_HOLD
        elif prev > 0 and not settled:
            want, reason = prev, Bound.SETTLING
        elif prev > 0 and not ramp_due:
            want, reason = prev, Bound.RAMP
        elif prev > 0 and want - prev < lm.increase_deadband_a:
            want = prev
        elif want > max(cand.lo, prev + lm.ramp_step_a):
            want, reason = max(cand.lo, floor_step(prev + lm.ramp_step_a)), Bound.RAMP
        grant = want - prev
        if grant > _EPS:
            room = min((slack[k] / w for k, w in cand.keys if w > 0), default=math.inf)
            if room < grant - _EPS:
                grant = max(0.0, room)
                want = floor_step(prev + grant)
                reason = Bound.SETTLING
            if prev == 0.0 and want < cand.lo:  # a start needs its whole minimum
                want, reason = 0.0, Bound.SETTLING
            for k, w in cand.keys:
                slack[k] -= w * max(0.0, want - max(prev, 0.0))
        if reason is None:
            decided[i] = (want, Bound.CIRCUIT, cand.target_key)
        else:
            decided[i] = (want, reason, None)

    # -- results and the memory for the next tick
    for i, cand in enumerate(cands):
        value, reason, key = decided[i]
        mem = cand.memory
        lim = _describe(cand, value, reason, key, cons)
        limits[cand.conn.id] = lim
        prev = mem.limit_a
        changed = abs(value - prev) > _EPS
        running_since = mem.running_since_s
        waiting_since = mem.waiting_since_s
        if value >= cand.lo - _EPS:
            running_since = running_since if running_since is not None and prev > 0 else now
            waiting_since = None
        else:
            running_since = None
            waiting_since = waiting_since if waiting_since is not None else now
        memories[cand.conn.id] = replace(
            mem,
            limit_a=value,
            changed_at_s=now if changed else mem.changed_at_s,
            step=("up" if value > prev else "down") if changed else mem.step,
            last_increase_at_s=now if value > prev + _EPS else mem.last_increase_at_s,
            running_since_s=running_since,
            waiting_since_s=waiting_since,
            paused_by_us=value == 0.0 and (prev > 0 or mem.paused_by_us),
        )

    # Node figures for the status.
    nodes: dict[str, NodePhaseState] = {}
    for node in site.circuits:
        alloc = list(reserved[node.id])
        for cand in cands:
            if node.id in topo.path[cand.conn.circuit]:
                for p in cand.phases:
                    alloc[p] += limits[cand.conn.id].current_a
        j = judgements.get(node.id)
        nodes[node.id] = NodePhaseState(
            node=node.id,
            rating_a=node.rating_a,
            margin_a=node.margin_a,
            measured_a=j.reading.current_a if j is not None and j.reading is not None else None,
            non_ev_a=non_ev[node.id],
            allocated_a=(alloc[0], alloc[1], alloc[2]),
            available_a=available[node.id],
        )
    if mode == "hold":
        notes.append("a meter reading is late or implausible: no increases")
    elif mode == "fallback":
        notes.append(f"a meter is stale past {site.control.fallback_after_s:g} s: fallback")
    elif mode == "startup":
        notes.append("no usable meter reading yet: fallback currents")
    return Allocation(
        limits=limits,
        nodes=nodes,
        mode=mode,
        notes=tuple(notes),
        faults=tuple(faults),
        state=EngineState(connectors=memories, meters=meter_memory),
    )


def _describe(
    cand: _Cand, value: float, reason: Bound, key: int | None, cons: _Constraints
) -> ConnectorLimit:
    """Name what bound a connector: a constraint, its own maximum or a dynamic reason."""
    cid = cand.conn.id
    if reason in (Bound.CIRCUIT, Bound.BELOW_MIN) and key is not None and key >= 0:
        bound, node, phase, slot = cons.label[key]
        return ConnectorLimit(
            connector=cid,
            current_a=value,
            bound=reason if reason is Bound.BELOW_MIN else bound,
            node=node,
            phase=phase,
            slot=slot,
            target_a=cand.target,
        )
    if reason is Bound.CIRCUIT and key in (AT_MAX, UNBOUND, None):
        return ConnectorLimit(
            connector=cid,
            current_a=value,
            bound=cand.hi_bound,
            slot=cand.hi_slot,
            target_a=cand.target,
        )
    if reason is Bound.BELOW_MIN and cand.hi < cand.lo:
        return ConnectorLimit(
            connector=cid,
            current_a=value,
            bound=Bound.BELOW_MIN,
            slot=cand.hi_slot,
            target_a=0.0,
        )
    return ConnectorLimit(connector=cid, current_a=value, bound=reason, target_a=cand.target)


def _admit(cands: list[_Cand], capacity: FloatArray, *, now: float, lm: LoadManagement) -> None:
    """Grant minimums in tier order; mark who is paused and by what."""
    min_off_s, min_on_s, rotation_s = lm.min_off_s, lm.min_on_s, lm.rotation_s
    resume_margin_a = lm.resume_margin_a
    waiting_tiers = {c.tier for c in cands if c.memory.running_since_s is None and c.hi >= c.lo}

    def turn(c: _Cand) -> tuple[int, int, float, int]:
        # Within a tier: the running (longest first, so the latest start pauses first), then
        # the waiting (longest first), then the running that yield (rotation). A waiting
        # connector must not outrank a running one by having waited longer than that one has
        # run: that paused fresh starts after a tick and flapped, past min_on_s (found by the
        # hysteresis property in tests/core/test_properties.py).
        mem = c.memory
        if mem.running_since_s is not None:
            ran = now - mem.running_since_s
            yields = c.tier in waiting_tiers and ran >= max(rotation_s, min_on_s)
            return (-c.tier, 2 if yields else 0, mem.running_since_s, c.idx)
        since = mem.waiting_since_s if mem.waiting_since_s is not None else now
        return (-c.tier, 1, since, c.idx)

    slack = capacity.copy()
    # Fast path: every minimum fits at once and nobody is waiting to resume.
    total = np.zeros_like(slack)
    for c in cands:
        for k, w in c.keys:
            total[k] += w * c.lo
    resuming = any(c.memory.paused_by_us for c in cands)
    if not resuming and all(c.hi >= c.lo for c in cands) and bool(np.all(total <= slack + _EPS)):
        for c in cands:
            c.admitted = True
        return
    for c in sorted(cands, key=turn):
        if c.hi < c.lo - _EPS:  # a slot or its own maximum is below its minimum
            c.pause_bound, c.pause_key = Bound.BELOW_MIN, None
            continue
        mem = c.memory
        resume = mem.running_since_s is None and mem.paused_by_us
        need = c.lo + (resume_margin_a if resume else 0.0)
        blocked = [k for k, w in c.keys if slack[k] < w * need - _EPS]
        if blocked:  # capacity first: a full circuit is the reason to show, not the timer
            c.pause_bound, c.pause_key = Bound.BELOW_MIN, blocked[0]
            rotated = turn(c)[1] == 2  # it yields its turn to a waiting one
            if rotated:
                c.pause_bound, c.pause_key = Bound.ROTATION, None
            continue
        if resume and mem.waiting_since_s is not None and now - mem.waiting_since_s < min_off_s:
            c.pause_bound, c.pause_key = Bound.MIN_OFF, None
            continue
        c.admitted = True
        for k, w in c.keys:
            slack[k] -= w * c.lo


def _session_allows(snap: Snapshot, connector: str) -> bool:
    session = snap.sessions.get(connector)
    return session is None or session.charging_allowed


_HOLDS = {
    "not_authorised": Bound.NOT_AUTHORISED,
    "stopped": Bound.STOPPED,
    "unavailable": Bound.UNAVAILABLE,
}


def _hold_bound(snap: Snapshot, connector: str) -> Bound:
    session = snap.sessions.get(connector)
    hold = session.hold if session is not None else ""
    return _HOLDS.get(hold, Bound.NOT_AUTHORISED)
