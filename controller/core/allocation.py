"""Core layer: the allocation of current to connectors, one pure call per tick.

``allocate(site, snapshot, previous)`` decides every connector's limit jointly, per grid phase,
over the whole circuit tree. It is the walking skeleton's engine: max-min fair sharing
(progressive filling) of each node's headroom, the 6 A minimum (a connector whose share falls
below its minimum is paused, lowest priority tier first), and the fail-safe ladder of
ARCHITECTURE.md (hold when the meter is late, fallback currents when it is stale, fallback
before the first fresh reading). Every limit names what bound it.

Accounting is conservative throughout:
- a node's non-EV load is its meter minus the currents of the connectors being allocated below
  it; everything else a meter sees (a connector in fault, a stuck contactor) stays "non-EV";
- a node without a meter carries its configured worst-case non-EV load;
- an EVSE without a fresh reading keeps a reservation of the higher of its last written limit
  and its fallback current on each of its phases, on top of what the meter already shows;
- a connector is counted on every phase it is wired to, whatever the EV draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from controller.core.model import (
    ZERO3,
    Allocation,
    Bound,
    ConnectorLimit,
    EvseReading,
    MeterReading,
    NodePhaseState,
    Snapshot,
    Triple,
)
from controller.core.site import Connector, Site, Topology

# Limits go out in steps of 0.1 A, rounded down: the finest step common EVSEs accept.
STEP_A = 0.1
# An increase smaller than this is not worth a write: without it, meter noise would move every
# limit up and down by a few tenths each tick. Decreases always go out.
INCREASE_DEADBAND_A = 1.0
_EPS = 1e-9


def floor_step(current_a: float) -> float:
    """Round down to the 0.1 A grid (never up: a limit must not grow by rounding)."""
    # round(.., 1): 217 * 0.1 is 21.700000000000003 in binary; 21.7 is what we mean and write.
    return round(math.floor(current_a / STEP_A + 1e-6) * STEP_A, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class _MeterVerdict:
    reading: MeterReading | None  # the reading used (possibly late), None if none usable
    age_s: float  # math.inf when there never was a usable one


def _judge_meters(site: Site, snap: Snapshot) -> dict[str, _MeterVerdict]:
    verdicts: dict[str, _MeterVerdict] = {}
    for node in site.circuits:
        if node.meter is None:
            continue
        reading = snap.meters.get(node.meter)
        if reading is None or not reading.plausible(node.rating_a):
            verdicts[node.id] = _MeterVerdict(reading=None, age_s=math.inf)
        else:
            verdicts[node.id] = _MeterVerdict(reading=reading, age_s=snap.now_s - reading.at_s)
    return verdicts


def _fresh_evse(site: Site, snap: Snapshot, conn: Connector) -> EvseReading | None:
    reading = snap.evses.get(conn.id)
    if reading is None or snap.now_s - reading.at_s > site.control.evse_stale_s:
        return None
    return reading


def _on_grid(conn: Connector, own: Triple) -> Triple:
    """A connector's own per-phase currents mapped onto the grid's phases."""
    out = [0.0, 0.0, 0.0]
    for i, grid_phase in enumerate(conn.grid_phases):
        value = own[i]
        if math.isfinite(value) and value > 0:
            out[grid_phase] += value
    return (out[0], out[1], out[2])


def _fixed_limits(site: Site, bound: Bound) -> dict[str, ConnectorLimit]:
    return {
        k.id: ConnectorLimit(connector=k.id, current_a=k.fallback_current_a, bound=bound)
        for k in site.connectors
    }


def allocate(site: Site, snap: Snapshot, previous: Allocation | None = None) -> Allocation:
    """Decide every connector's current limit for this tick. Pure; see the module docstring."""
    control = site.control
    topo = Topology.of(site)
    meters = _judge_meters(site, snap)
    never_read = [n for n, v in meters.items() if v.reading is None and previous is None]
    ages = [v.age_s for v in meters.values()]
    worst_age_s = max(ages, default=0.0)

    if never_read:
        fixed = _fixed_limits(site, Bound.STARTUP)
        return _result(
            topo,
            site,
            snap,
            meters=meters,
            limits=fixed,
            active=[],
            mode="startup",
            notes=("no fresh meter reading yet",),
        )
    if worst_age_s > control.fallback_after_s:
        fixed = _fixed_limits(site, Bound.FALLBACK)
        note = f"meter stale for {worst_age_s:.0f} s (> {control.fallback_after_s:g} s)"
        return _result(
            topo, site, snap, meters=meters, limits=fixed, active=[], mode="fallback", notes=(note,)
        )
    hold = worst_age_s > control.meter_stale_s

    # Who gets a share, and who keeps a reservation.
    limits: dict[str, ConnectorLimit] = {}
    active: list[Connector] = []
    reserved: dict[str, list[float]] = {n.id: [0.0, 0.0, 0.0] for n in site.circuits}
    for conn in site.connectors:
        reading = _fresh_evse(site, snap, conn)
        if reading is None:
            last = snap.written_a.get(conn.id)
            keep = max(last if last is not None else 0.0, conn.fallback_current_a)
            for node_id in topo.path[conn.circuit]:
                for p in conn.grid_phases:
                    reserved[node_id][p] += keep
            limits[conn.id] = ConnectorLimit(
                connector=conn.id, current_a=conn.fallback_current_a, bound=Bound.EVSE_OFFLINE
            )
        elif reading.state.vehicle_present:
            active.append(conn)
        else:
            bound = Bound.NO_VEHICLE if reading.state.value == "A" else Bound.EVSE_FAULT
            limits[conn.id] = ConnectorLimit(connector=conn.id, current_a=0.0, bound=bound)

    # Each node's per-phase headroom for the active connectors.
    available: dict[str, Triple] = {}
    for node in site.circuits:
        non_ev = _non_ev(
            site, topo, snap, node_id=node.id, verdict=meters.get(node.id), active=active
        )
        r = reserved[node.id]
        base = node.rating_a - node.margin_a
        available[node.id] = (
            base - non_ev[0] - r[0],
            base - non_ev[1] - r[1],
            base - non_ev[2] - r[2],
        )

    shares = _share(site, topo, active, available)
    for conn in active:
        limit = shares[conn.id]
        before = previous.limits[conn.id] if previous and conn.id in previous.limits else None
        if before is not None and limit.current_a > before.current_a:
            if hold:
                limit = ConnectorLimit(
                    connector=conn.id, current_a=before.current_a, bound=Bound.METER_HOLD
                )
            elif before.current_a > 0 and limit.current_a - before.current_a < INCREASE_DEADBAND_A:
                limit = replace(limit, current_a=before.current_a)
        limits[conn.id] = limit

    notes = (f"meter late by {worst_age_s:.1f} s: no increases",) if hold else ()
    mode = "hold" if hold else "normal"
    return _result(
        topo,
        site,
        snap,
        meters=meters,
        limits=limits,
        active=active,
        mode=mode,
        notes=notes,
        available=available,
    )


def _share(
    site: Site, topo: Topology, active: list[Connector], available: Mapping[str, Triple]
) -> dict[str, ConnectorLimit]:
    """Max-min fair shares with minimum currents: pause the least important until all fit."""
    candidates = list(active)
    paused: dict[str, ConnectorLimit] = {}
    while True:
        filled = _fill(site, topo, candidates, available)
        short = [k for k in candidates if filled[k.id].current_a < k.min_current_a - _EPS]
        if not short:
            break
        # Lowest tier first; within it, the one furthest from its minimum, then the last listed.
        order = {k.id: i for i, k in enumerate(site.connectors)}
        victim = min(
            short,
            key=lambda k: (k.priority_tier, filled[k.id].current_a, -order[k.id]),
        )
        paused[victim.id] = ConnectorLimit(
            connector=victim.id,
            current_a=0.0,
            bound=Bound.BELOW_MIN,
            node=filled[victim.id].node,
            phase=filled[victim.id].phase,
        )
        candidates.remove(victim)
    return {**filled, **paused}


def _fill(
    site: Site,
    topo: Topology,
    conns: list[Connector],
    available: Mapping[str, Triple],
) -> dict[str, ConnectorLimit]:
    """Progressive filling: raise every unfrozen connector together until a node phase or the
    connector's own maximum stops it. The result is max-min fair per phase over the tree."""
    level = 0.0  # every unfrozen connector sits at this level
    bound: dict[str, ConnectorLimit] = {}
    remaining = {(n, p): available[n][p] for n in available for p in range(3)}
    users: dict[tuple[str, int], list[Connector]] = {key: [] for key in remaining}
    keys_of: dict[str, list[tuple[str, int]]] = {}
    for conn in conns:
        keys_of[conn.id] = [(n, p) for n in topo.path[conn.circuit] for p in conn.grid_phases]
        for key in keys_of[conn.id]:
            users[key].append(conn)
    counts = {key: len(us) for key, us in users.items() if us}
    unfrozen = {k.id: k for k in conns}

    def freeze(conn: Connector, limit: ConnectorLimit) -> None:
        bound[conn.id] = limit
        del unfrozen[conn.id]
        for key in keys_of[conn.id]:
            counts[key] -= 1
            if not counts[key]:
                del counts[key]

    while unfrozen:
        step = min(k.max_current_a for k in unfrozen.values()) - level
        for key, count in counts.items():
            step = min(step, remaining[key] / count)
        step = max(step, 0.0)
        level += step
        for key, count in counts.items():
            remaining[key] -= step * count
        for k in [k for k in unfrozen.values() if level >= k.max_current_a - _EPS]:
            freeze(
                k,
                ConnectorLimit(
                    connector=k.id, current_a=k.max_current_a, bound=Bound.CONNECTOR_MAX
                ),
            )
        for key in [key for key in counts if remaining[key] <= _EPS]:
            for k in users[key]:
                if k.id in unfrozen:
                    limit = ConnectorLimit(
                        connector=k.id,
                        current_a=floor_step(max(level, 0.0)),
                        bound=Bound.CIRCUIT,
                        node=key[0],
                        phase=key[1],
                    )
                    freeze(k, limit)
    return bound


def _non_ev(
    site: Site,
    topo: Topology,
    snap: Snapshot,
    *,
    node_id: str,
    verdict: _MeterVerdict | None,
    active: list[Connector],
) -> Triple:
    """Measured non-EV load of a node (meter minus the active EVs below it), never negative;
    the configured worst case when the node has no usable meter."""
    if verdict is None or verdict.reading is None:
        return site.circuit(node_id).worst_case_non_ev_a
    ev = [0.0, 0.0, 0.0]
    for conn in active:
        reading = snap.evses.get(conn.id)
        if reading is not None and node_id in topo.path[conn.circuit]:
            mapped = _on_grid(conn, reading.current_a)
            ev = [ev[p] + mapped[p] for p in range(3)]
    measured = verdict.reading.current_a
    return (
        max(0.0, measured[0] - ev[0]),
        max(0.0, measured[1] - ev[1]),
        max(0.0, measured[2] - ev[2]),
    )


def _result(
    topo: Topology,
    site: Site,
    snap: Snapshot,
    *,
    meters: Mapping[str, _MeterVerdict],
    limits: dict[str, ConnectorLimit],
    active: list[Connector],
    mode: str,
    notes: tuple[str, ...],
    available: Mapping[str, Triple] | None = None,
) -> Allocation:
    nodes: dict[str, NodePhaseState] = {}
    for node in site.circuits:
        allocated = [0.0, 0.0, 0.0]
        for conn in topo.under[node.id]:
            for p in conn.grid_phases:
                allocated[p] += limits[conn.id].current_a
        verdict = meters.get(node.id)
        nodes[node.id] = NodePhaseState(
            node=node.id,
            rating_a=node.rating_a,
            margin_a=node.margin_a,
            measured_a=verdict.reading.current_a if verdict and verdict.reading else None,
            non_ev_a=_non_ev(site, topo, snap, node_id=node.id, verdict=verdict, active=active),
            allocated_a=(allocated[0], allocated[1], allocated[2]),
            available_a=available[node.id] if available is not None else ZERO3,
        )
    return Allocation(limits=limits, nodes=nodes, mode=mode, notes=notes)
