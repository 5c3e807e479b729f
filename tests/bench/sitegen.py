"""Benchmarks: seeded generators of 3-level sites (grid -> boards -> sub-boards -> connectors).

``generate`` makes a whole site and snapshot for the engine (``allocate``), with idle connectors,
priority tiers and minimums that may not fit. ``kernel_instance`` makes a site on which every
connector charges and every fair share is at least the connector's minimum, together with the
water-filling kernel's inputs built from it exactly as the engine's steps 3-5 build them (the
test tests/core/test_waterfill_lp.py checks that against ``allocate``). The LP reference of
tests/bench/lp_reference.py solves the same problem from ``capacity``, in absolute amps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from controller.core.model import EvseReading, EvseState, MeterReading, Snapshot
from controller.core.site import (
    Circuit,
    Connector,
    DeviceSpec,
    EvKind,
    Site,
    TcpTransport,
    Topology,
)
from controller.core.waterfill import FloatArray, Incidence, waterfill

ROTATIONS = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0,), (1,), (2,)]
WALL = datetime(2026, 11, 29, 12, tzinfo=ZoneInfo("Europe/Berlin"))


def generate(connectors: int, seed: int = 1) -> tuple[Site, Snapshot]:
    rng = random.Random(seed)
    boards = max(1, connectors // 50)
    circuits = [
        Circuit(
            id="grid",
            parent=None,
            rating_a=max(63.0, connectors * 9.0),
            margin_a=2.0,
            meter="grid_meter",
        )
    ]
    subs: list[str] = []
    for b in range(boards):
        circuits.append(
            Circuit(id=f"b{b}", parent="grid", rating_a=rng.choice([125.0, 160.0, 250.0]))
        )
        for s in range(2):
            sid = f"b{b}s{s}"
            circuits.append(
                Circuit(
                    id=sid,
                    parent=f"b{b}",
                    rating_a=rng.choice([63.0, 80.0, 100.0]),
                    worst_case_non_ev_a=(2.0, 2.0, 2.0),
                )
            )
            subs.append(sid)
    conns = []
    readings: dict[str, EvseReading | None] = {}
    for i in range(connectors):
        cid = f"cp{i}"
        spec = DeviceSpec(
            id=cid, driver="alfen_ng9xx", transport=TcpTransport(host="10.0.0.1"), unit_id=1
        )
        conns.append(
            Connector(
                id=cid,
                evse=spec,
                circuit=rng.choice(subs),
                grid_phases=rng.choice(ROTATIONS),
                max_current_a=rng.choice([16.0, 32.0]),
                fallback_current_a=0.0,
                priority_tier=rng.choice([0, 0, 0, 1, 2]),
            )
        )
        state = rng.choice([EvseState.A, EvseState.B, EvseState.C, EvseState.C, EvseState.C])
        cur = rng.uniform(0, 16) if state is EvseState.C else 0.0
        readings[cid] = EvseReading(at_s=100.0, state=state, current_a=(cur, cur, cur))
    meter = DeviceSpec(
        id="grid_meter", driver="eastron_sdm630", transport=TcpTransport(host="h"), unit_id=1
    )
    site = Site(
        id="bench",
        name="bench",
        timezone="Europe/Berlin",
        nominal_voltage_v=230,
        circuits=tuple(circuits),
        meters=(meter,),
        connectors=tuple(conns),
    )
    load = tuple(rng.uniform(0.3, 0.7) * site.root.rating_a for _ in range(3))
    snap = Snapshot(
        now_s=100.0,
        wall=datetime(2026, 11, 29, 12, tzinfo=ZoneInfo("Europe/Berlin")),
        meters={"grid_meter": MeterReading(at_s=100.0, current_a=load)},  # type: ignore[arg-type]
        evses=readings,
    )
    return site, snap


# -- kernel instances: every connector charging, every fair share at least its minimum ------

_MINIMA_A = (6.0, 6.0, 6.0, 6.0, 8.0, 10.0)
_MAXIMA_A = (10.0, 13.0, 16.0, 20.0, 25.0, 32.0)
_SHORT_TOL_A = 1e-6


@dataclass(frozen=True, slots=True)
class KernelInstance:
    """One water-filling problem: sum_i w_ik * x_i <= capacity_k, lo_i <= x_i <= hi_i.

    ``cap`` is what the kernel takes (capacity less every admitted minimum); ``lo``, ``hi``,
    ``members`` and ``inc`` are what ``allocate`` passes to ``waterfill`` for this site and
    snapshot (one tier, everyone admitted). ``grown`` counts the rating increases it took for
    every fair share to reach its minimum.
    """

    site: Site
    snapshot: Snapshot
    inc: Incidence
    lo: FloatArray
    hi: FloatArray
    capacity: FloatArray
    cap: FloatArray
    members: npt.NDArray[np.bool_]
    grown: int


def kernel_inputs(
    site: Site, non_ev_a: dict[str, tuple[float, float, float]]
) -> tuple[Incidence, FloatArray, FloatArray, FloatArray, FloatArray]:
    """(inc, lo, hi, capacity, cap) as the engine builds them when every connector charges.

    Constraint 3*j + p is node ``site.circuits[j]`` on grid phase p, with capacity rating -
    margin - non-EV load; each connector weighs 1 on every node of its path to the root, on
    each grid phase it loads (no slots, no unbalanced-load limit, nothing reserved).
    """
    topo = Topology.of(site)
    capacity: list[float] = []
    node_key: dict[tuple[str, int], int] = {}
    for node in site.circuits:
        base = node.rating_a - node.margin_a
        ne = non_ev_a[node.id]
        avail = (base - ne[0], base - ne[1], base - ne[2])
        for p in range(3):
            node_key[(node.id, p)] = len(capacity)
            capacity.append(avail[p] - 0.0)
    keys = [
        [
            (node_key[(node_id, p)], 1.0)
            for node_id in topo.path[conn.circuit]
            for p in conn.grid_phases
        ]
        for conn in site.connectors
    ]
    cap_arr = np.asarray(capacity, dtype=np.float64)
    remaining = cap_arr.copy()
    for conn, conn_keys in zip(site.connectors, keys, strict=True):
        for k, w in conn_keys:
            remaining[k] -= w * conn.min_current_a
    entries = [(k, i, w) for i, conn_keys in enumerate(keys) for k, w in conn_keys]
    inc = Incidence.build(entries, len(site.connectors), len(capacity))
    lo = np.asarray([c.min_current_a for c in site.connectors], dtype=np.float64)
    hi = np.asarray(
        [max(c.max_current_a, c.min_current_a) for c in site.connectors], dtype=np.float64
    )
    return inc, lo, hi, cap_arr, remaining


def kernel_instance(connectors: int, seed: int = 1) -> KernelInstance:
    """A seeded 3-level site where every connector charges and gets at least its minimum.

    Ratings start below the connectors' total demand, so that sub-boards, boards and the grid
    connection bind; then, while the max-min fair share from zero (the kernel with lo = 0) of
    some connector is below its minimum, the spare capacity of the node that stopped it grows
    by 10 % (only that node, so the others stay binding).
    """
    rng = random.Random(seed)
    boards = max(1, round(connectors / 50))
    sub_ids: list[str] = []
    parents: dict[str, str | None] = {"grid": None}
    for b in range(boards):
        parents[f"b{b}"] = "grid"
        for s in range(rng.choice([2, 3])):
            parents[f"b{b}s{s}"] = f"b{b}"
            sub_ids.append(f"b{b}s{s}")
    margin = {
        node: (2.0 if parent is None else rng.choice([0.0, 1.0]))
        for node, parent in parents.items()
    }
    conns: list[Connector] = []
    for i in range(connectors):
        cid = f"cp{i}"
        rotation = rng.choice(ROTATIONS)
        min_a = rng.choice(_MINIMA_A)
        max_a = max(min_a, rng.choice(_MAXIMA_A))
        spec = DeviceSpec(
            id=cid, driver="alfen_ng9xx", transport=TcpTransport(host="10.0.0.1"), unit_id=1
        )
        conns.append(
            Connector(
                id=cid,
                evse=spec,
                circuit=sub_ids[i % len(sub_ids)] if i < len(sub_ids) else rng.choice(sub_ids),
                grid_phases=rotation,
                min_current_a=min_a,
                max_current_a=max_a,
                fallback_current_a=0.0,
                priority_tier=0,
                ev_kind=EvKind.THREE_PHASE if len(rotation) == 3 else EvKind.ONE_PHASE,
            )
        )
    # Demand per node and phase: the sum of the maxima below it.
    demand = {node: [0.0, 0.0, 0.0] for node in parents}
    for conn in conns:
        node: str | None = conn.circuit
        while node is not None:
            for p in conn.grid_phases:
                demand[node][p] += conn.max_current_a
            node = parents[node]
    fraction = {"grid": rng.uniform(0.35, 0.6)}
    fraction.update({n: rng.uniform(0.45, 0.8) for n in parents if n != "grid"})
    spare = {n: max(1.0, fraction[n] * max(demand[n])) for n in parents}
    non_ev: dict[str, tuple[float, float, float]] = {}
    for n, parent in parents.items():
        if parent is None:  # measured at the grid meter
            non_ev[n] = (
                round(rng.uniform(5.0, 40.0), 1),
                round(rng.uniform(5.0, 40.0), 1),
                round(rng.uniform(5.0, 40.0), 1),
            )
        else:  # configured worst case of a sub-board without a meter
            w = rng.choice([0.0, 2.0, 4.0])
            non_ev[n] = (w, w, w)

    grown = 0
    for _ in range(1000):
        site = _kernel_site(parents, spare, margin, non_ev, conns)
        inc, lo, hi, capacity, cap = kernel_inputs(site, non_ev)
        members = np.ones(len(conns), dtype=np.bool_)
        share, bound = waterfill(inc, np.zeros_like(lo), hi, capacity, members)
        short = np.flatnonzero(share < lo - _SHORT_TOL_A)
        if short.size == 0:
            break
        for k in sorted({int(bound[i]) for i in short if bound[i] >= 0}):
            spare[site.circuits[k // 3].id] *= 1.1
        grown += 1
    else:
        raise RuntimeError(f"no instance with every share at least the minimum ({seed=})")
    snapshot = Snapshot(
        now_s=100.0,
        wall=WALL,
        meters={"grid_meter": MeterReading(at_s=100.0, current_a=non_ev["grid"])},
        evses={c.id: EvseReading(at_s=100.0, state=EvseState.C) for c in conns},
    )
    return KernelInstance(
        site=site,
        snapshot=snapshot,
        inc=inc,
        lo=lo,
        hi=hi,
        capacity=capacity,
        cap=cap,
        members=members,
        grown=grown,
    )


def _kernel_site(
    parents: dict[str, str | None],
    spare: dict[str, float],
    margin: dict[str, float],
    non_ev: dict[str, tuple[float, float, float]],
    conns: list[Connector],
) -> Site:
    circuits = [
        Circuit(
            id=n,
            parent=parent,
            # Ratings on the 0.1 A grid a config would carry: spare + margin + worst non-EV load.
            rating_a=round(spare[n] + margin[n] + max(non_ev[n]), 1),
            margin_a=margin[n],
            meter="grid_meter" if parent is None else None,
            worst_case_non_ev_a=(0.0, 0.0, 0.0) if parent is None else non_ev[n],
        )
        for n, parent in parents.items()
    ]
    meter = DeviceSpec(
        id="grid_meter", driver="eastron_sdm630", transport=TcpTransport(host="h"), unit_id=1
    )
    return Site(
        id="bench",
        name="bench",
        timezone="Europe/Berlin",
        nominal_voltage_v=230,
        circuits=tuple(circuits),
        meters=(meter,),
        connectors=tuple(conns),
    )
