"""Benchmarks: a seeded generator of 3-level sites (grid -> boards -> sub-boards -> connectors)."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

from controller.core.model import EvseReading, EvseState, MeterReading, Snapshot
from controller.core.site import Circuit, Connector, DeviceSpec, Site, TcpTransport

ROTATIONS = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0,), (1,), (2,)]


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
