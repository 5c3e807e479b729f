"""Test helpers: build core Site objects and snapshots tersely, and hypothesis strategies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from controller.core.allocation import allocate
from controller.core.model import (
    ZERO3,
    Allocation,
    EvseReading,
    EvseState,
    MeterReading,
    Session,
    Snapshot,
    Triple,
)
from controller.core.site import (
    Circuit,
    Connector,
    ControlSettings,
    DeviceSpec,
    EvKind,
    LoadManagement,
    Site,
    TcpTransport,
    Topology,
)
from controller.core.slots import SITE, LimitSlot, SlotSource, TouPeriod

T = TypeVar("T")

WALL = datetime(2026, 11, 29, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
ROTATIONS = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0,), (1,), (2,)]


def evse(
    cid: str, circuit: str = "grid", phases: tuple[int, ...] = (0, 1, 2), **kw: object
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


# -- strategies for the property tests (tests/core/test_properties.py) ----------------------
#
# A ``Case`` is a random site, a short history of snapshots and the engine's allocations for
# them, and one more snapshot: the tick under test. Readings are generated from a simple
# physical picture (a building load per node plus what the EVs really draw), then spoiled on
# purpose: meters missing, late, NaN, negative, huge; EVSEs silent, stale, faulted, drawing
# above their limit; writes failing. Sizes are biased toward small sites (fast, and they shrink
# well) but reach 200 connectors.

EV_STATES = (EvseState.A, EvseState.B, EvseState.C, EvseState.C, EvseState.C, EvseState.D)
FAULT_STATES = (EvseState.E, EvseState.F, EvseState.UNKNOWN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """A site, earlier snapshots with the engine's allocations for them, and the tick under test.

    ``allocations[i]`` is ``allocate(site, history[i], allocations[i - 1])``; ``previous`` is
    the last of them (None without history). ``building`` is the true non-EV load per node.
    """

    site: Site
    history: tuple[Snapshot, ...]
    snap: Snapshot
    building: Mapping[str, Triple] = field(default_factory=dict)
    allocations: tuple[Allocation, ...] = field(default=(), repr=False)

    @property
    def previous(self) -> Allocation | None:
        return self.allocations[-1] if self.allocations else None

    def __repr__(self) -> str:
        return describe_case(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis' pretty printer
        p.text(describe_case(self))

    def run(self, snap: Snapshot | None = None) -> Allocation:
        """The engine on the tick under test (or on another snapshot after the same history)."""
        return allocate(self.site, snap if snap is not None else self.snap, self.previous)


_INDEX: dict[int, st.SearchStrategy[int]] = {}
BOOLS = st.booleans()


def pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """One of ``options``, shrinking toward the first. (Cheaper than ``st.sampled_from`` built
    afresh at every draw: a site of 200 connectors makes thousands of draws.)"""
    n = len(options)
    index = _INDEX.get(n)
    if index is None:
        index = _INDEX[n] = st.integers(0, n - 1)
    return options[draw(index)]


def pick_many(draw: st.DrawFn, *options: Sequence[Any]) -> list[Any]:
    """One choice from each of ``options``, in a single draw (each shrinks toward its first
    option). Per connector and tick this replaces half a dozen draws: sites of 200 connectors
    stay cheap to generate."""
    total = math.prod(len(o) for o in options)
    index = _INDEX.get(total)
    if index is None:
        index = _INDEX[total] = st.integers(0, total - 1)
    n = draw(index)
    out = []
    for o in options:
        n, i = divmod(n, len(o))
        out.append(o[i])
    return out


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True with probability 1/n; shrinks to False."""
    return pick(draw, range(n)) == n - 1


def _count(draw: st.DrawFn, max_value: int) -> int:
    """Mostly small counts (fast, readable), sometimes up to ``max_value``."""
    size = pick(draw, [4] * 8 + [12] * 6 + [40, max_value])
    return 1 + pick(draw, range(min(size, max_value)))


@st.composite
def control_settings(draw: st.DrawFn) -> ControlSettings:
    if draw(BOOLS):
        return ControlSettings()
    stale = pick(draw, [2.0, 3.0, 5.0])
    return ControlSettings(
        meter_stale_s=stale,
        fallback_after_s=stale + pick(draw, [2.0, 5.0, 7.0, 12.0]),
        evse_stale_s=pick(draw, [3.0, 5.0, 8.0]),
        meter_frozen_s=pick(draw, [4.0, 6.0, 10.0]),
    )


@st.composite
def tunings(draw: st.DrawFn, quick: bool = False) -> LoadManagement:
    """Load-management tuning: the defaults, or random values (``quick``: short timers, so that
    hysteresis and rotation happen within a few dozen ticks)."""
    if not quick and draw(BOOLS):
        base = LoadManagement()
        if draw(BOOLS):
            return base
        return replace(base, unbalanced_limit_a=pick(draw, [10.0, 16.0, 20.0]))
    return LoadManagement(
        ramp_step_a=pick(draw, [1.0, 2.5, 6.0, 10.0]),
        ramp_period_s=pick(draw, [1.0, 2.0, 5.0]),
        follow_tolerance_a=pick(draw, [0.5, 1.0, 2.0]),
        settle_s=pick(draw, [3.0, 5.0, 10.0]),
        increase_deadband_a=pick(draw, [0.0, 0.5, 1.0]),
        resume_margin_a=pick(draw, [0.0, 1.0, 2.0]),
        min_on_s=pick(draw, [0.0, 5.0, 10.0] if quick else [0.0, 10.0, 60.0]),
        min_off_s=pick(draw, [0.0, 4.0, 8.0] if quick else [0.0, 10.0, 30.0]),
        rotation_s=pick(draw, [6.0, 15.0, 40.0] if quick else [10.0, 60.0, 900.0]),
        unused_threshold_a=pick(draw, [1.0, 2.0]),
        unused_after_s=pick(draw, [3.0, 8.0, 20.0]),
        unused_headroom_a=pick(draw, [0.5, 1.0, 2.0]),
        detect_on_a=2.0,
        detect_off_a=0.5,
        detect_after_s=pick(draw, [2.0, 5.0, 10.0]),
        unbalanced_limit_a=pick(draw, [None, None, 6.0, 16.0, 20.0]),
    )


_BOUNDS = [(6.0, 32.0), (6.0, 16.0), (6.0, 6.0), (6.0, 63.0), (8.0, 10.0), (10.0, 32.0)]
_KINDS = [EvKind.AUTO, EvKind.AUTO, EvKind.ONE_PHASE, EvKind.THREE_PHASE]


_FALLBACKS = ["zero", "zero", "min", "min+4", "max"]
_UNWATCHED = [None, None, None, None, "min", "16"]
_TIERS = [0, 0, 0, 1, 2]


def connector_spec(draw: st.DrawFn, cid: str, circuits: Sequence[str]) -> Connector:
    """A connector: rotation, EV kind, [min, max], fallback (0 or within), watchdog cap, tier."""
    phases, kind, (lo, hi), fb, unwatched, circuit, tier = pick_many(
        draw, ROTATIONS, _KINDS, _BOUNDS, _FALLBACKS, _UNWATCHED, circuits, _TIERS
    )
    if kind is EvKind.THREE_PHASE and len(phases) == 1:
        kind = EvKind.AUTO  # the config refuses a 3-phase EV on a 1-phase connector
    fallback = {"zero": 0.0, "min": lo, "min+4": min(hi, lo + 4.0), "max": hi}[fb]
    cap = {None: None, "min": lo, "16": min(hi, 16.0)}[unwatched]
    return evse(
        cid,
        circuit=circuit,
        phases=phases,
        min_current_a=lo,
        max_current_a=hi,
        fallback_current_a=fallback,
        # an EVSE without a controller watchdog is capped (config: control.cap_unwatched)
        unwatched_cap_a=cap,
        priority_tier=tier,
        ev_kind=kind,
    )


_BOARD_RATINGS = [10.0, 16.0, 25.0, 32.0, 40.0, 63.0, 125.0]
_ROOT_RATINGS = [16.0, 25.0, 32.0, 35.0, 50.0, 63.0, 100.0, 250.0, 400.0]


@st.composite
def random_sites(
    draw: st.DrawFn,
    max_connectors: int = 200,
    quick: bool = False,
    max_boards: int = 8,
    root_meter: bool | None = None,
) -> Site:
    """A random tree (boards up to 4 levels below the grid), meters on the grid and on some
    boards, 1..max_connectors connectors with random rotations, EV kinds, bounds and tiers."""
    depth = {"grid": 0}
    circuits: list[Circuit] = []
    with_root_meter = not one_in(draw, 10) if root_meter is None else root_meter
    meters = ["m"] if with_root_meter else []
    for i in range(pick(draw, range(max_boards + 1))):
        parent = pick(draw, [c for c, d in depth.items() if d < 4])
        bid = f"b{i}"
        depth[bid] = depth[parent] + 1
        meter = f"m{bid}" if one_in(draw, 4) else None
        if meter is not None:
            meters.append(meter)
        circuits.append(
            Circuit(
                id=bid,
                parent=parent,
                rating_a=pick(draw, _BOARD_RATINGS),
                margin_a=pick(draw, [0.0, 0.0, 1.0, 2.5]),
                meter=meter,
                worst_case_non_ev_a=pick(draw, [(0.0, 0.0, 0.0), (2.0, 2.0, 2.0)]),
            )
        )
    root = Circuit(
        id="grid",
        parent=None,
        rating_a=pick(draw, _ROOT_RATINGS),
        margin_a=pick(draw, [0.0, 0.0, 2.0, 5.0]),
        meter="m" if with_root_meter else None,
        worst_case_non_ev_a=pick(draw, [(0.0, 0.0, 0.0), (5.0, 3.0, 1.0)]),
    )
    ids = ["grid", *[c.id for c in circuits]]
    n = _count(draw, max_connectors)
    conns = [connector_spec(draw, f"c{i}", ids) for i in range(n)]
    exports = draw(BOOLS)
    tou: tuple[TouPeriod, ...] = ()
    if one_in(draw, 6):
        tou = (
            TouPeriod(
                days=frozenset({WALL.isoweekday()}),
                start=time(6),
                end=time(22),
                power_w=pick(draw, [3000.0, 11000.0, 22000.0]),
                name="day",
            ),
        )
    mspecs = tuple(
        DeviceSpec(id=m, driver="eastron_sdm630", transport=TcpTransport(host="h"), unit_id=1)
        for m in meters
    )
    return Site(
        id="t",
        name="t",
        timezone="Europe/Berlin",
        nominal_voltage_v=230,
        circuits=(root, *circuits),
        meters=mspecs,
        connectors=tuple(conns),
        control=draw(control_settings()),
        load_management=draw(tunings(quick=quick)),
        exports=exports,
        meter_export_positive=exports and draw(BOOLS),
        time_of_use=tou,
    )


_WINDOWS = ["open", "open", "active", "future", "past"]


@st.composite
def limit_slots(draw: st.DrawFn, s: Site) -> LimitSlot:
    """A slot on the site, a circuit (or one the site does not have), or a connector; in amps
    or watts; open, active, not yet or no longer in force; DR slots with a floor."""
    scopes = [SITE, *[f"circuit:{c.id}" for c in s.circuits[1:]], "circuit:nowhere"]
    scopes += [f"connector:{k.id}" for k in s.connectors[:20]]
    scope = pick(draw, scopes)
    source = pick(draw, list(SlotSource))
    window = pick(draw, _WINDOWS)
    starts = ends = None
    if window == "active":
        starts, ends = WALL - timedelta(minutes=5), WALL + timedelta(minutes=5)
    elif window == "future":
        starts = WALL + timedelta(minutes=1)
    elif window == "past":
        ends = WALL - timedelta(seconds=1)
    key = f"s{pick(draw, range(4))}"
    if draw(BOOLS):
        return LimitSlot(
            id=key,
            source=source,
            scope=scope,
            current_a=pick(draw, [0.0, 3.0, 6.0, 10.0, 16.0, 25.0, 100.0]),
            starts_at=starts,
            ends_at=ends,
        )
    floor = None
    if source is SlotSource.DEMAND_RESPONSE and draw(BOOLS):
        floor = pick(draw, [4200.0, 11000.0, 1e6])
    return LimitSlot(
        id=key,
        source=source,
        scope=scope,
        power_w=pick(draw, [0.0, 1380.0, 4200.0, 11000.0, 22000.0, 1e6]),
        starts_at=starts,
        ends_at=ends,
        floor_w=floor,
    )


def _ev_phase_count(conn: Connector, ev_3p: bool) -> int:
    if conn.ev_kind is EvKind.ONE_PHASE:
        return 1
    return conn.phase_count if ev_3p else 1


_STATES = [EvseState.C, EvseState.C, EvseState.B, EvseState.A, EvseState.D]
_SPOILED_STATES = [*_STATES, EvseState.A, EvseState.E, EvseState.F, EvseState.UNKNOWN]
_HOW = ["follow", "follow", "zero", "lag", "over", "under", "any"]
_READING_KIND = ["fresh"] * 12 + ["missing", "stale", "old"]
_METER_KIND = ["ok"] * 10 + ["missing", "late", "nan", "negative", "huge", "random", "export"]
_ANY_AMPS = [0.0, 0.4, 1.0, 5.9, 6.0, 9.7, 16.0, 31.9, 32.0, 40.0]
_WRITTEN = ["last", "last", "last", "none", "fallback", "junk"]
_REPORTS: list[Triple | None] = [None] * 18 + [(math.nan, 0.0, 0.0), (-3.0, -3.0, -3.0)]
_FAILS = [False] * 11 + [True]
# "none": no session entry; "hold": a session that may not draw (not authorised, stopped)
_SESSION_TIERS: list[int | str | None] = ["none", "none", "none", None, 0, 1, 3, "hold"]


def readings(  # the tick's snapshot: a strategy in effect (it draws), not a composite
    draw: st.DrawFn,
    s: Site,
    *,
    now_s: float,
    building: Mapping[str, Triple],
    limits: Mapping[str, float],
    ev_3p: Mapping[str, bool],
    earlier: Sequence[Snapshot],
    spoil: bool = True,
    slots: bool = True,
) -> Snapshot:
    """One snapshot at ``now_s``: EVs draw near ``limits`` (what they were told before), the
    meters see ``building`` plus those draws; then some readings are spoiled."""
    physical: dict[str, Triple] = {}
    evses: dict[str, EvseReading | None] = {}
    written: dict[str, float | None] = {}
    failed = set()
    sessions: dict[str, Session] = {}
    for n, k in enumerate(s.connectors):
        # one draw per connector and tick (see pick_many); the first options are the plain ones
        state, how, amps, kind, offset, report, choice, junk, fails, tier = pick_many(
            draw,
            _SPOILED_STATES if spoil else _STATES,
            _HOW,
            _ANY_AMPS,
            _READING_KIND if spoil else ["fresh"],
            [0.5, 20.0],
            _REPORTS if spoil else [None],
            _WRITTEN if spoil else ["last"],
            [0.0, 3.0, k.min_current_a, k.max_current_a],
            _FAILS if spoil else [False],
            _SESSION_TIERS,
        )
        limit = limits.get(k.id, 0.0)
        value = {
            "follow": limit,
            "zero": 0.0,
            "lag": max(0.0, limit - 4.0),
            "over": limit + 2.5,
            "under": limit * 0.5,
            "any": amps,
        }[how if state.charging else "zero"]
        n_ev = _ev_phase_count(k, ev_3p.get(k.id, True))
        own: Triple = (value, value if n_ev > 1 else 0.0, value if n_ev > 2 else 0.0)
        physical[k.id] = own
        last = limits.get(k.id)
        written[k.id] = {
            "last": last,
            "none": None,
            "fallback": k.fallback_current_a,
            "junk": junk,
        }[choice]
        if fails:
            failed.add(k.id)
        if tier == "hold" and n < 30:
            sessions[k.id] = Session(charging_allowed=False, hold="stopped")
        elif tier not in ("none", "hold") and n < 30:
            assert tier is None or isinstance(tier, int)
            sessions[k.id] = Session(priority_tier=tier, plugged_at_s=0.0)
        if kind == "missing":
            evses[k.id] = None
            continue
        at = now_s
        if kind == "stale":
            at = now_s - s.control.evse_stale_s - offset
        elif kind == "old":
            at = now_s - min(offset, s.control.evse_stale_s)
        evses[k.id] = EvseReading(at_s=at, state=state, current_a=report or own)

    meters: dict[str, MeterReading | None] = {}
    topo = Topology.of(s)
    for node in s.circuits:
        if node.meter is None:
            continue
        total = list(building.get(node.id, ZERO3))
        for k in topo.under[node.id]:
            for i, g in enumerate(k.grid_phases):
                total[g] += physical[k.id][i]
        kind = pick(draw, _METER_KIND) if spoil else "ok"
        at = now_s
        meter_a: Triple = (total[0], total[1], total[2])
        if kind == "missing":
            meters[node.meter] = None
            continue
        if kind == "late":
            at = now_s - pick(draw, [1.0, 2.5, 4.0, 8.0, 30.0])
        elif kind == "nan":
            meter_a = (math.nan, meter_a[1], meter_a[2])
        elif kind == "negative":
            meter_a = (meter_a[0], -pick(draw, [0.4, 1.0, 20.0]), meter_a[2])
        elif kind == "huge":
            meter_a = (meter_a[0], meter_a[1], 2.0 * node.rating_a + pick(draw, [0.1, 1e4]))
        elif kind == "random":
            rating = node.rating_a
            meter_a = (
                pick(draw, [0.0, rating]),
                pick(draw, [0.3 * rating, 1.9 * rating]),
                meter_a[2],
            )
        elif kind == "export":
            meter_a = (meter_a[0] - 30.0, meter_a[1] - 30.0, meter_a[2])
        if node.parent is None and s.meter_export_positive:
            meter_a = (-meter_a[0], -meter_a[1], -meter_a[2])
        # A real meter never repeats itself exactly (a frozen one does: its own tests).
        seen = [r.current_a for e in earlier if (r := e.meters.get(node.meter)) is not None]
        while any(_same_magnitude(old, meter_a) for old in seen):
            meter_a = (meter_a[0] + 0.013, meter_a[1], meter_a[2])
        meters[node.meter] = MeterReading(at_s=at, current_a=meter_a)

    slot_list: tuple[LimitSlot, ...] = ()
    if slots:
        slot_list = tuple(draw(limit_slots(s)) for _ in range(pick(draw, [0, 0, 1, 2, 4])))
    return Snapshot(
        now_s=now_s,
        wall=WALL + timedelta(seconds=now_s - 1000.0),
        meters=meters,
        evses=evses,
        written_a=written,
        write_failed=frozenset(failed),
        slots=slot_list,
        sessions=sessions,
    )


def _same_magnitude(a: Triple, b: Triple) -> bool:
    return all(abs(x) == abs(y) for x, y in zip(a, b, strict=True))


_BUILDING = [ZERO3, (2.0, 2.0, 2.0), (10.0, 4.0, 0.5), (30.0, 30.0, 30.0)]
_GAPS = [1.0, 1.0, 2.0, 5.0, 11.0, 30.0]


@st.composite
def cases(
    draw: st.DrawFn,
    max_connectors: int = 200,
    spoil: bool = True,
    slots: bool = True,
    history: tuple[int, int] = (0, 3),
) -> Case:
    """A random site, 0..3 earlier ticks run through the engine, and the tick under test."""
    s = draw(random_sites(max_connectors=max_connectors))
    building = {c.id: pick(draw, _BUILDING) for c in s.circuits}
    ev_3p = {k.id: not one_in(draw, 4) for k in s.connectors}
    now = 1000.0
    snaps: list[Snapshot] = []
    allocations: list[Allocation] = []
    limits: dict[str, float] = {}
    for _ in range(pick(draw, range(history[0], history[1] + 1))):
        sn = readings(
            draw,
            s,
            now_s=now,
            building=building,
            limits=limits,
            ev_3p=ev_3p,
            earlier=snaps,
            spoil=spoil,
            slots=slots,
        )
        a = allocate(s, sn, allocations[-1] if allocations else None)
        snaps.append(sn)
        allocations.append(a)
        limits = {k: v.current_a for k, v in a.limits.items()}
        now += pick(draw, _GAPS)
    current = readings(
        draw,
        s,
        now_s=now,
        building=building,
        limits=limits,
        ev_3p=ev_3p,
        earlier=snaps,
        spoil=spoil,
        slots=slots,
    )
    return Case(
        site=s,
        history=tuple(snaps),
        snap=current,
        building=building,
        allocations=tuple(allocations),
    )


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return repr(v)


def describe_snapshot(sn: Snapshot) -> list[str]:
    lines = [f"  t={sn.now_s:g}"]
    for m, r in sn.meters.items():
        lines.append(
            f"    meter {m}: " + ("-" if r is None else f"{_fmt(r.current_a)} @{r.at_s:g}")
        )
    for c, e in sn.evses.items():
        w = sn.written_a.get(c)
        extra = f" written={_fmt(w)}" + (" WRITE_FAILED" if c in sn.write_failed else "")
        if e is None:
            lines.append(f"    {c}: -{extra}")
        else:
            lines.append(f"    {c}: {e.state.value} {_fmt(e.current_a)} @{e.at_s:g}{extra}")
    lines.extend(f"    slot {sl.describe()} {sl.starts_at}..{sl.ends_at}" for sl in sn.slots)
    lines.extend(f"    session {c}: tier {x.priority_tier}" for c, x in sn.sessions.items())
    return lines


def describe_case(case: Case) -> str:
    """A compact, readable account of a case (hypothesis prints it when a property fails)."""
    s = case.site
    lines = [f"Case(site: exports={s.exports} flip={s.meter_export_positive} {s.control}"]
    lines.append(f"  {s.load_management}")
    lines.extend(
        f"  node {c.id} <- {c.parent}: {c.rating_a:g} A margin {c.margin_a:g} meter {c.meter} "
        f"worst {_fmt(c.worst_case_non_ev_a)} building {_fmt(case.building.get(c.id))}"
        for c in s.circuits
    )
    lines.extend(
        f"  {k.id} @{k.circuit} {k.grid_phases} {k.ev_kind.value} [{k.min_current_a:g}, "
        f"{k.max_current_a:g}] fb {k.fallback_current_a:g} tier {k.priority_tier}"
        for k in s.connectors
    )
    lines.extend(f"  tou {p}" for p in s.time_of_use)
    for sn, a in zip(case.history, case.allocations, strict=True):
        lines.extend(describe_snapshot(sn))
        lines.append(f"    -> {a.mode}: " + describe_limits(a))
    lines.append("  under test:")
    lines.extend(describe_snapshot(case.snap))
    return "\n".join(lines) + ")"


def describe_limits(a: Allocation) -> str:
    return ", ".join(
        f"{c}={v.current_a:g}/{v.bound.value}" + (f"(t{v.target_a:g})" if v.target_a else "")
        for c, v in a.limits.items()
    )
