"""Test helpers: an independent reading of the load-management spec, tick by tick.

The property tests do not trust the engine's own account of what it saw. ``Observer`` follows
the snapshots the engine was given and judges them from the spec alone (issue 3, the
fail-safe ladder of ARCHITECTURE.md): which meter readings are usable, which nodes are in
hold, fallback or start-up, what the measured non-EV load of each node is, which connectors
have a fresh reading and what each connector must be counted at. The checks in
tests/core/test_properties.py compare the engine's allocation against that view.

Physical conventions (deliberately the conservative, physically meaningful ones):
- a connector loads all its wired grid phases, unless its EV is configured 1-phase (a
  1-phase EV *detected* on a 3-phase connector could start drawing on all three at any time);
- the measured non-EV load of a node is its meter minus the draws of the connectors below it
  with a fresh reading and a vehicle (or at their fallback), at least 0; the grid meter of a
  site that exports counts export negative, a small negative reading elsewhere (offset noise)
  counts by its size;
- a connector the engine cannot steer this tick (no fresh reading, failed write, fallback) is
  counted at what it may physically draw: the higher of its last written limit, its fallback
  and its measured draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from controller.core.model import (
    Allocation,
    Bound,
    EvseReading,
    MeterReading,
    Snapshot,
    Triple,
)
from controller.core.site import Circuit, Connector, EvKind, Site, Topology
from controller.core.slots import active_slots

TOL = 1e-6
LADDER = ("normal", "hold", "startup", "fallback")
# Outputs that are not a share: the configured fallback (fallback, start-up, EVSE offline).
FALLBACK_BOUNDS = frozenset({Bound.FALLBACK, Bound.STARTUP, Bound.EVSE_OFFLINE})


def counted_phases(conn: Connector) -> tuple[int, ...]:
    """The grid phases a connector's allocation may load, physically (see the module
    docstring): all its wired phases unless its EV is configured 1-phase."""
    if conn.ev_kind is EvKind.ONE_PHASE:
        return conn.grid_phases[:1]
    return conn.grid_phases


def load_phases(site: Site, view: View, alloc: Allocation, conn: Connector) -> tuple[int, ...]:
    """The grid phases the spec (issue 3, item 2) lets the engine count a connector on: as
    ``counted_phases``, except that a 1-phase EV *detected* on a 3-phase connector counts on
    its one phase, but only while its fresh reading still shows it 1-phase (below detect_on_a
    on L2 and L3). The detection itself is read from the engine's state; that it is dropped
    the moment the EV draws on another phase is what this checks."""
    wired = counted_phases(conn)
    mem = alloc.state.connectors.get(conn.id)
    detected = mem.ev_phases if mem is not None else None
    reading = view.fresh.get(conn.id)
    if detected is None or len(wired) != 3 or reading is None:
        return wired
    on = site.load_management.detect_on_a
    if detected == wired[:1] and all(reading.current_a[i] < on for i in (1, 2)):
        return detected
    return wired


def draw_of(conn: Connector, reading: EvseReading | None) -> Triple:
    """A connector's measured currents on the grid phases. NaN, negatives and currents above
    twice the connector's maximum (no EV draws that: the meters' rule for their rating) are
    no measurement: they count as 0, so they are never taken off a meter's reading."""
    out = [0.0, 0.0, 0.0]
    if reading is not None:
        for i, g in enumerate(conn.grid_phases):
            v = reading.current_a[i]
            if math.isfinite(v) and 0 < v <= 2.0 * conn.max_current_a:
                out[g] += v
    return (out[0], out[1], out[2])


def peak_of(conn: Connector, reading: EvseReading | None) -> float:
    """The EV's highest current on the connector's own phases (NaN when unknown)."""
    if reading is None:
        return math.nan
    return max(reading.current_a[i] for i in range(conn.phase_count))


def fault_text(alloc: Allocation) -> list[str]:
    """Faults as text, whatever their type (strings or structured conditions)."""
    out = []
    for f in alloc.faults:
        parts = [str(f), str(getattr(f, "code", "")), str(getattr(f, "subject", ""))]
        out.append(" ".join(parts))
    return out


@dataclass(slots=True)
class _MeterTrack:
    value: Triple | None = None  # magnitudes of the last usable reading
    changed_at_s: float = 0.0
    good_at_s: float | None = None
    non_ev: Triple | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class View:
    """What the spec says about one tick."""

    snap: Snapshot
    # per metered node: "fresh", "late" (usable but old), "bad" (unusable, within budget),
    # "fallback" (no usable reading for longer than fallback_after_s), "startup" (none yet)
    meter_status: Mapping[str, str]
    # per node: the worst mode over the meters on its path to the root
    mode: Mapping[str, str]
    # per node: the measured non-EV load (None when unknown: fallback, start-up); for a "bad"
    # meter, the non-EV load at its last usable reading (what the engine must hold on to)
    non_ev: Mapping[str, Triple | None]
    fresh: Mapping[str, EvseReading | None]
    draws: Mapping[str, Triple]
    # connectors the engine cannot steer this tick, and what each may physically draw
    fixed: Mapping[str, float] = field(default_factory=dict)

    def connector_mode(self, conn: Connector) -> str:
        return self.mode[conn.circuit]


class Observer:
    """Follows a site's snapshots and judges each from the spec (see the module docstring)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.topo = Topology.of(site)
        self.meters: dict[str, _MeterTrack] = {}

    def _plausible(self, node: Circuit, reading: MeterReading) -> Triple | None:
        """The signed currents (import positive) when believable, else None."""
        signed = reading.current_a
        root = node.parent is None
        if root and self.site.meter_export_positive:
            signed = (-signed[0], -signed[1], -signed[2])
        if not all(math.isfinite(v) for v in signed):
            return None
        if any(abs(v) > 2.0 * node.rating_a for v in signed):
            return None
        may_export = root and self.site.exports
        if not may_export:
            if any(v < -0.5 for v in signed):
                return None
            # a little below zero is offset noise around 0: its size counts, as the engine has it
            return (abs(signed[0]), abs(signed[1]), abs(signed[2]))
        return (signed[0], signed[1], signed[2])

    def observe(self, snap: Snapshot) -> View:
        site, ctl, now = self.site, self.site.control, snap.now_s
        fresh: dict[str, EvseReading | None] = {}
        for k in site.connectors:
            r = snap.evses.get(k.id)
            fresh[k.id] = r if r is not None and now - r.at_s <= ctl.evse_stale_s else None
        draws = {k.id: draw_of(k, fresh[k.id]) for k in site.connectors}

        status: dict[str, str] = {}
        usable: dict[str, Triple] = {}
        for node in site.circuits:
            if node.meter is None:
                continue
            track = self.meters.setdefault(node.meter, _MeterTrack())
            reading = snap.meters.get(node.meter)
            signed = self._plausible(node, reading) if reading is not None else None
            if (
                reading is not None
                and track.good_at_s is not None
                and (reading.at_s <= track.good_at_s)
            ):
                signed = None  # not newer than the last good one: the same reading again
            if signed is not None and reading is not None:
                mags: Triple = (abs(signed[0]), abs(signed[1]), abs(signed[2]))
                if track.value != mags:
                    track.value, track.changed_at_s = mags, now
                    track.good_at_s = reading.at_s
                    usable[node.id] = signed
                else:
                    # frozen: the same value for longer than meter_frozen_s, while something
                    # should be moving (a non-zero value, or EVs below drawing current)
                    ev = sum(sum(draws[k.id]) for k in self.topo.under[node.id])
                    moving = any(v != 0.0 for v in mags) or ev > 1.0
                    if not (moving and now - track.changed_at_s > ctl.meter_frozen_s):
                        track.good_at_s = reading.at_s
                        usable[node.id] = signed
            if track.good_at_s is None:
                status[node.id] = "startup"
            elif now - track.good_at_s > ctl.fallback_after_s:
                status[node.id] = "fallback"
            elif node.id not in usable:
                status[node.id] = "bad"
            elif now - track.good_at_s > ctl.meter_stale_s:
                status[node.id] = "late"
            else:
                status[node.id] = "fresh"

        own_mode = {
            n: {"fresh": "normal", "late": "hold", "bad": "hold"}.get(s, s)
            for n, s in status.items()
        }
        mode: dict[str, str] = {}
        for node in site.circuits:
            modes = [own_mode[n] for n in self.topo.path[node.id] if n in own_mode]
            mode[node.id] = max(modes, key=LADDER.index, default="normal")

        # what each connector the engine cannot steer may physically draw
        fixed: dict[str, float] = {}
        for k in site.connectors:
            written = snap.written_a.get(k.id) or 0.0
            peak = max(draws[k.id])
            if mode[k.circuit] in ("fallback", "startup"):
                fixed[k.id] = max(k.fallback_current_a, peak)
            elif fresh[k.id] is None or k.id in snap.write_failed:
                fixed[k.id] = max(written, k.fallback_current_a, peak)

        non_ev: dict[str, Triple | None] = {}
        for node in site.circuits:
            if node.meter is None:
                non_ev[node.id] = node.worst_case_non_ev_a
                continue
            track = self.meters[node.meter]
            if status[node.id] in ("fallback", "startup"):
                non_ev[node.id] = None
            elif node.id in usable:
                m = usable[node.id]
                sub = [0.0, 0.0, 0.0]
                for k in self.topo.under[node.id]:
                    r = fresh[k.id]
                    vehicle = r is not None and r.state.vehicle_present
                    if r is not None and (vehicle or mode[k.circuit] in ("fallback", "startup")):
                        for p in range(3):
                            sub[p] += draws[k.id][p]
                ne = (max(0.0, m[0] - sub[0]), max(0.0, m[1] - sub[1]), max(0.0, m[2] - sub[2]))
                track.non_ev = ne
                non_ev[node.id] = ne
            else:
                non_ev[node.id] = track.non_ev
        return View(
            snap=snap,
            meter_status=status,
            mode=mode,
            non_ev=non_ev,
            fresh=fresh,
            draws=draws,
            fixed=fixed,
        )


def observe_all(site: Site, snaps: Iterable[Snapshot]) -> list[View]:
    obs = Observer(site)
    return [obs.observe(s) for s in snaps]


def connector_cap_a(
    site: Site, snap: Snapshot, conn: Connector, phases: tuple[int, ...]
) -> tuple[float, str | None]:
    """min(configured max, unwatched cap, connector-scoped slots in force) in amps (power over
    ``phases``), and what binds."""
    cap, which = conn.max_current_a, None
    if conn.unwatched_cap_a is not None and conn.unwatched_cap_a < cap:
        cap, which = conn.unwatched_cap_a, "unwatched cap"
    v = site.nominal_voltage_v
    for slot in active_slots(snap.slots, snap.wall):
        if slot.scope != f"connector:{conn.id}":
            continue
        if slot.current_a is not None:
            amps = slot.current_a
        else:
            assert slot.power_w is not None
            amps = slot.power_w / (v * len(phases))
        if amps < cap:
            cap, which = amps, slot.key
    return cap, which


PhasesOf = Callable[[Connector], tuple[int, ...]]


def node_phase_sums(
    site: Site, view: View, alloc: Allocation, phases_of: PhasesOf
) -> dict[tuple[str, int], tuple[float, float, float]]:
    """Per (node, grid phase): (sum of steerable allocations, sum of fixed worst cases,
    rating - margin - measured non-EV); nodes with unknown non-EV load are left out."""
    topo = Topology.of(site)
    out = {}
    for node in site.circuits:
        ne = view.non_ev[node.id]
        if ne is None or view.mode[node.id] in ("fallback", "startup"):
            continue
        for p in range(3):
            steer = fixed = 0.0
            for k in topo.under[node.id]:
                if k.id in view.fixed:
                    if p in k.grid_phases:
                        fixed += view.fixed[k.id]
                elif p in phases_of(k):
                    steer += alloc.limits[k.id].current_a
            out[(node.id, p)] = (steer, fixed, node.rating_a - node.margin_a - ne[p])
    return out
