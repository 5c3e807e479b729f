"""Test helpers: build core Site objects and snapshots tersely, and hypothesis strategies."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from controller.core.allocation import allocate
from controller.core.model import Allocation, EvseReading, EvseState, MeterReading, Snapshot
from controller.core.site import Circuit, Connector, DeviceSpec, Site, TcpTransport

WALL = datetime(2026, 11, 29, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
ROTATIONS = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0,), (1,), (2,)]


def evse(
    cid: str, circuit: str = "grid", phases: tuple[int, ...] = (0, 1, 2), **kw: float
) -> Connector:
    spec = DeviceSpec(
        id=cid, driver="alfen_ng9xx", transport=TcpTransport(host="127.0.0.1"), unit_id=1
    )
    return Connector(id=cid, evse=spec, circuit=circuit, grid_phases=phases, **kw)  # type: ignore[arg-type]


def site(
    connectors: list[Connector],
    rating_a: float = 32.0,
    margin_a: float = 0.0,
    circuits: list[Circuit] | None = None,
) -> Site:
    root = Circuit(id="grid", parent=None, rating_a=rating_a, margin_a=margin_a, meter="m")
    meter = DeviceSpec(id="m", driver="eastron_sdm630", transport=TcpTransport(host="h"), unit_id=1)
    return Site(
        id="t",
        name="t",
        timezone="Europe/Berlin",
        nominal_voltage_v=230,
        circuits=(root, *(circuits or [])),
        meters=(meter,),
        connectors=tuple(connectors),
    )


def snap(
    now_s: float,
    meter_a: tuple[float, float, float] | None,
    evses: dict[str, tuple[str, tuple[float, float, float]]],
    meter_at_s: float | None = None,
    written: dict[str, float | None] | None = None,
) -> Snapshot:
    meters = {
        "m": None
        if meter_a is None
        else MeterReading(at_s=now_s if meter_at_s is None else meter_at_s, current_a=meter_a)
    }
    readings = {
        cid: EvseReading(at_s=now_s, state=EvseState(state), current_a=cur)
        for cid, (state, cur) in evses.items()
    }
    return Snapshot(now_s=now_s, wall=WALL, meters=meters, evses=readings, written_a=written or {})


@st.composite
def sites_and_snapshots(draw: st.DrawFn) -> tuple[Site, Snapshot]:
    """A random tree (1-3 levels below the grid), 1-40 connectors, random readings."""
    n_boards = draw(st.integers(0, 5))
    circuits: list[Circuit] = []
    for i in range(n_boards):
        parent = draw(st.sampled_from(["grid", *[c.id for c in circuits]]))
        circuits.append(
            Circuit(
                id=f"b{i}",
                parent=parent,
                rating_a=draw(st.floats(6, 125)),
                margin_a=draw(st.floats(0, 3)),
                worst_case_non_ev_a=tuple(draw(st.floats(0, 20)) for _ in range(3)),  # type: ignore[arg-type]
            )
        )
    conns = []
    n = draw(st.integers(1, 40))
    for i in range(n):
        lo = draw(st.floats(6, 10))
        conns.append(
            evse(
                f"c{i}",
                circuit=draw(st.sampled_from(["grid", *[c.id for c in circuits]])),
                phases=draw(st.sampled_from(ROTATIONS)),
                min_current_a=lo,
                max_current_a=draw(st.floats(lo, 80)),
                fallback_current_a=0.0,
                priority_tier=draw(st.integers(0, 2)),
            )
        )
    s = site(
        conns, rating_a=draw(st.floats(10, 400)), margin_a=draw(st.floats(0, 5)), circuits=circuits
    )
    now = 1000.0
    states = st.sampled_from(["A", "B", "C", "C", "C", "E", "F"])
    readings = {
        k.id: (draw(states), tuple(draw(st.floats(0, 40)) for _ in range(3)))
        for k in conns
        if draw(st.booleans()) or True
    }
    meter = tuple(draw(st.floats(0, 2 * s.root.rating_a)) for _ in range(3))
    return s, snap(now, meter, readings)  # type: ignore[arg-type]


def settle(
    s: Site,
    *,
    building_a: tuple[float, float, float],
    vehicles: str,
    ticks: int = 60,
    start_s: float = 40.0,
) -> Allocation:
    """Run the engine tick by tick with EVs that follow their limits at once (3-phase EVs
    drawing their limit on every wired phase); returns the last allocation at t = start + ticks."""
    prev: Allocation | None = None
    by_id = {k.id: k for k in s.connectors}
    for t in range(ticks):
        now = start_s + t
        draws: dict[str, tuple[float, float, float]] = {}
        # A real meter never repeats itself exactly (a frozen one does, and counts as stale).
        jitter = -0.01 * (t % 2)
        meter = [b + jitter for b in building_a]
        for cid in vehicles:
            limit = prev.current_a(cid) if prev else 0.0
            own = tuple(limit if i < by_id[cid].phase_count else 0.0 for i in range(3))
            draws[cid] = own  # type: ignore[assignment]
            for i, g in enumerate(by_id[cid].grid_phases):
                meter[g] += own[i]
        evses = {cid: ("C", draws[cid]) for cid in vehicles}
        prev = allocate(s, snap(now, (meter[0], meter[1], meter[2]), evses), prev)
    assert prev is not None
    return prev
