"""Golden scenarios of the load-management engine: one YAML file per scenario in golden/.

Each file describes a site, a sequence of ticks (what the meters and EVSEs report, the limit
slots in force, the sessions) and what the engine must decide at each tick, with the reason.
tests/core/golden/README.md describes the format. This module builds the core objects directly
(not through controller/config.py), runs the ticks in order, each with the previous
Allocation, and reports every mismatch of the first tick that has one: file, tick, connector,
expected and actual limit and bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from controller.core.allocation import allocate
from controller.core.model import (
    Allocation,
    Bound,
    ConnectorLimit,
    EvseReading,
    EvseState,
    MeterReading,
    Session,
    Snapshot,
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
    parse_rotation,
)
from controller.core.slots import LimitSlot, SlotSource, TouPeriod

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.yaml"))
DEFAULT_START_WALL = "2026-11-30T12:00:00"  # a Monday, in the site's time zone
DEFAULT_NOISE_A = 0.01
TOLERANCE_A = 1e-6


class FormatError(ValueError):
    """The scenario file does not follow tests/core/golden/README.md."""


# -- small readers -------------------------------------------------------------------------


def _mapping(value: Any, where: str, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected a mapping, got {value!r}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise FormatError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    return value


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value), float(value), float(value))
    if not isinstance(value, list) or len(value) != 3:
        raise FormatError(f"{where}: expected [L1, L2, L3], got {value!r}")
    a, b, c = (_num(v, where) for v in value)
    return (a, b, c)


def _wall(value: Any, tz: ZoneInfo, where: str) -> datetime:
    """An ISO local time in the site's zone (YAML may already have parsed it)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise FormatError(f"{where}: not an ISO date-time: {value!r}") from exc
    else:
        raise FormatError(f"{where}: expected an ISO date-time, got {value!r}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=tz)
    return parsed.astimezone(tz)


def _clock(value: Any, where: str) -> time:
    if isinstance(value, int):  # YAML 1.1 reads an unquoted 17:00 as a sexagesimal number
        return time(value // 60 % 24, value % 60)
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a time like '17:00', got {value!r}")
    try:
        return time.fromisoformat(value)
    except ValueError as exc:
        raise FormatError(f"{where}: not a time: {value!r}") from exc


# -- the site --------------------------------------------------------------------------------

CIRCUIT_KEYS = ("parent", "rating_a", "margin_a", "meter", "worst_case_non_ev_a")
CONNECTOR_KEYS = (
    "circuit",
    "rotation",
    "min_a",
    "max_a",
    "fallback_a",
    "tier",
    "ev_kind",
)
SITE_KEYS = (
    "timezone",
    "nominal_voltage_v",
    "start_wall",
    "exports",
    "meter_export_positive",
    "grid",
    "circuits",
    "connectors",
    "load_management",
    "control",
    "time_of_use",
)


def _device(device_id: str, driver: str) -> DeviceSpec:
    return DeviceSpec(
        id=device_id, driver=driver, transport=TcpTransport(host="127.0.0.1"), unit_id=1
    )


def _circuit(node_id: str, raw: Any, *, root: bool) -> Circuit:
    where = f"site.{'grid' if root else 'circuits.' + node_id}"
    spec = _mapping(raw, where, CIRCUIT_KEYS)
    if root and spec.get("parent") is not None:
        raise FormatError(f"{where}: the grid connection has no parent")
    if not root and "parent" not in spec:
        raise FormatError(f"{where}: needs a parent")
    if "rating_a" not in spec:
        raise FormatError(f"{where}: needs rating_a")
    return Circuit(
        id=node_id,
        parent=None if root else str(spec["parent"]),
        rating_a=_num(spec["rating_a"], where),
        margin_a=_num(spec.get("margin_a", 0.0), where),
        meter=node_id if spec.get("meter", root) else None,
        worst_case_non_ev_a=_triple(spec.get("worst_case_non_ev_a", 0.0), where),
    )


def _connector(cid: str, raw: Any) -> Connector:
    where = f"site.connectors.{cid}"
    spec = _mapping(raw, where, CONNECTOR_KEYS)
    defaults = Connector(id=cid, evse=_device(cid, "alfen_ng9xx"), circuit="grid", grid_phases=(0,))
    try:
        phases = parse_rotation(str(spec.get("rotation", "L1L2L3")))
        kind = EvKind(str(spec.get("ev_kind", "auto")))
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from exc
    return Connector(
        id=cid,
        evse=_device(cid, "alfen_ng9xx"),
        circuit=str(spec.get("circuit", "grid")),
        grid_phases=phases,
        min_current_a=_num(spec.get("min_a", defaults.min_current_a), where),
        max_current_a=_num(spec.get("max_a", defaults.max_current_a), where),
        fallback_current_a=_num(spec.get("fallback_a", defaults.fallback_current_a), where),
        priority_tier=int(spec.get("tier", defaults.priority_tier)),
        ev_kind=kind,
    )


def _settings(cls: type[Any], raw: Any, where: str) -> Any:
    fields = cls.__dataclass_fields__
    spec = _mapping(raw, where, list(fields))
    values = {k: (None if v is None else _num(v, f"{where}.{k}")) for k, v in spec.items()}
    return cls(**values)


def build_site(raw: Any) -> tuple[Site, datetime]:
    spec = _mapping(raw, "site", SITE_KEYS)
    tz_name = str(spec.get("timezone", "Europe/Berlin"))
    tz = ZoneInfo(tz_name)
    circuits = [_circuit("grid", spec.get("grid"), root=True)]
    for node_id, node in _mapping(spec.get("circuits"), "site.circuits").items():
        circuits.append(_circuit(str(node_id), node, root=False))
    ids = {c.id for c in circuits}
    for c in circuits:
        if c.parent is not None and c.parent not in ids:
            raise FormatError(f"site.circuits.{c.id}: unknown parent {c.parent!r}")
    connectors = [
        _connector(str(cid), conn)
        for cid, conn in _mapping(spec.get("connectors"), "site.connectors").items()
    ]
    if not connectors:
        raise FormatError("site.connectors: at least one connector")
    for conn in connectors:
        if conn.circuit not in ids:
            raise FormatError(f"site.connectors.{conn.id}: unknown circuit {conn.circuit!r}")
    periods = []
    for i, raw_period in enumerate(spec.get("time_of_use") or []):
        where = f"site.time_of_use[{i}]"
        p = _mapping(raw_period, where, ("name", "days", "start", "end", "power_w"))
        periods.append(
            TouPeriod(
                name=str(p.get("name", "")),
                days=frozenset(int(d) for d in p["days"]),
                start=_clock(p["start"], where),
                end=_clock(p["end"], where),
                power_w=_num(p["power_w"], where),
            )
        )
    site = Site(
        id="golden",
        name="golden",
        timezone=tz_name,
        nominal_voltage_v=_num(spec.get("nominal_voltage_v", 230.0), "site.nominal_voltage_v"),
        circuits=tuple(circuits),
        meters=tuple(_device(c.meter, "eastron_sdm630") for c in circuits if c.meter),
        connectors=tuple(connectors),
        control=_settings(ControlSettings, spec.get("control"), "site.control"),
        load_management=_settings(
            LoadManagement, spec.get("load_management"), "site.load_management"
        ),
        exports=bool(spec.get("exports", False)),
        meter_export_positive=bool(spec.get("meter_export_positive", False)),
        time_of_use=tuple(periods),
    )
    start = _wall(spec.get("start_wall", DEFAULT_START_WALL), tz, "site.start_wall")
    return site, start


# -- the world between ticks -------------------------------------------------------------------


@dataclass
class EvseInput:
    state: EvseState
    current_a: tuple[float, float, float]  # own phases L1..L3: what flows, answered or not
    offline: bool = False
    at_s: float | None = None


@dataclass
class MeterInput:
    kind: str  # "raw", "non_ev", "none", "silent"
    value: tuple[float, float, float] = (0.0, 0.0, 0.0)
    at_s: float | None = None


@dataclass
class World:
    """What the devices report, carried from tick to tick until a tick restates it."""

    wall_anchor: tuple[float, datetime]  # (t_s, wall) the wall clock runs on from
    meters: dict[str, MeterInput] = field(default_factory=dict)
    evses: dict[str, EvseInput] = field(default_factory=dict)
    slots: tuple[LimitSlot, ...] = ()
    sessions: dict[str, Session] = field(default_factory=dict)
    # What the shell passed last (a silent meter or EVSE repeats its last answer).
    last_meter: dict[str, MeterReading | None] = field(default_factory=dict)
    last_evse: dict[str, EvseReading | None] = field(default_factory=dict)
    written: dict[str, float | None] = field(default_factory=dict)


TICK_KEYS = (
    "t_s",
    "wall",
    "meters",
    "evses",
    "write_failed",
    "written",
    "slots",
    "sessions",
    "expect",
    "note",
)
EXPECT_GLOBAL = ("mode", "faults_contain", "no_faults")
LIMIT_KEYS = ("limit_a", "bound", "node", "phase", "slot", "target_a")
SLOT_KEYS = (
    "id",
    "source",
    "scope",
    "current_a",
    "power_w",
    "starts_at",
    "ends_at",
    "floor_w",
    "note",
)


def _evse_input(cid: str, conn: Connector, raw: Any, where: str) -> EvseInput:
    def own(value: Any) -> tuple[float, float, float]:
        if isinstance(value, list):
            return _triple(value, where)
        amps = _num(value, where)
        return (
            amps,
            amps if conn.phase_count == 3 else 0.0,
            amps if conn.phase_count == 3 else 0.0,
        )

    if isinstance(raw, str):
        parts = raw.split()
        try:
            state = EvseState(parts[0])
        except ValueError as exc:
            raise FormatError(f"{where}: unknown state {parts[0]!r}") from exc
        if len(parts) == 1:
            return EvseInput(state=state, current_a=(0.0, 0.0, 0.0))
        if len(parts) == 2:
            return EvseInput(state=state, current_a=own(float(parts[1])))
        if len(parts) == 4:
            return EvseInput(state=state, current_a=own([float(p) for p in parts[1:]]))
        raise FormatError(f"{where}: expected 'C', 'C 16' or 'C 16 0 0', got {raw!r}")
    spec = _mapping(raw, where, ("state", "current_a", "offline", "at_s"))
    try:
        state = EvseState(str(spec.get("state", "C")))
    except ValueError as exc:
        raise FormatError(f"{where}: unknown state {spec.get('state')!r}") from exc
    return EvseInput(
        state=state,
        current_a=own(spec.get("current_a", 0.0)),
        offline=bool(spec.get("offline", False)),
        at_s=None if spec.get("at_s") is None else _num(spec["at_s"], where),
    )


def _meter_input(raw: Any, where: str) -> MeterInput:
    if raw is None:
        return MeterInput(kind="none")
    if isinstance(raw, list):
        return MeterInput(kind="raw", value=_triple(raw, where))
    spec = _mapping(raw, where, ("non_ev", "current_a", "at_s", "silent"))
    at_s = None if spec.get("at_s") is None else _num(spec["at_s"], where)
    if spec.get("silent"):
        if len(spec) > 1:
            raise FormatError(f"{where}: silent takes no other keys")
        return MeterInput(kind="silent")
    if ("non_ev" in spec) == ("current_a" in spec):
        raise FormatError(f"{where}: give exactly one of non_ev and current_a")
    if "non_ev" in spec:
        return MeterInput(kind="non_ev", value=_triple(spec["non_ev"], where), at_s=at_s)
    return MeterInput(kind="raw", value=_triple(spec["current_a"], where), at_s=at_s)


def _slot(raw: Any, tz: ZoneInfo, where: str) -> LimitSlot:
    spec = _mapping(raw, where, SLOT_KEYS)
    try:
        return LimitSlot(
            id=str(spec["id"]),
            source=SlotSource(str(spec["source"])),
            scope=str(spec.get("scope", "site")),
            current_a=None if spec.get("current_a") is None else _num(spec["current_a"], where),
            power_w=None if spec.get("power_w") is None else _num(spec["power_w"], where),
            starts_at=None
            if spec.get("starts_at") is None
            else _wall(spec["starts_at"], tz, where),
            ends_at=None if spec.get("ends_at") is None else _wall(spec["ends_at"], tz, where),
            floor_w=None if spec.get("floor_w") is None else _num(spec["floor_w"], where),
            note=str(spec.get("note", "")),
        )
    except (KeyError, ValueError) as exc:
        raise FormatError(f"{where}: {exc}") from exc


# -- expectations ------------------------------------------------------------------------------


def _value_ok(expected: Any, actual: float, where: str) -> bool:
    if isinstance(expected, dict):
        spec = _mapping(expected, where, ("le", "ge", "between"))
        ok = True
        if "le" in spec:
            ok &= actual <= _num(spec["le"], where) + TOLERANCE_A
        if "ge" in spec:
            ok &= actual >= _num(spec["ge"], where) - TOLERANCE_A
        if "between" in spec:
            lo, hi = (_num(v, where) for v in spec["between"])
            ok &= lo - TOLERANCE_A <= actual <= hi + TOLERANCE_A
        return ok
    return abs(actual - _num(expected, where)) <= TOLERANCE_A


def _show_value(expected: Any) -> str:
    if isinstance(expected, dict):
        return " and ".join(f"{k} {v}" for k, v in expected.items())
    return f"{expected:g}"


def _show_actual(lim: ConnectorLimit) -> str:
    text = f"{lim.current_a:g} A ({lim.bound.value}"
    if lim.node is not None:
        text += f" {lim.node}"
    if lim.phase is not None:
        text += f" L{lim.phase + 1}"
    if lim.slot is not None:
        text += f" {lim.slot}"
    if lim.target_a is not None:
        text += f", target {lim.target_a:g}"
    return text + ")"


def _check_limit(cid: str, raw: Any, lim: ConnectorLimit, where: str) -> str | None:
    spec = _mapping(raw, where, LIMIT_KEYS)
    if not spec:
        raise FormatError(f"{where}: an expectation needs at least limit_a or bound")
    wrong = []
    if "limit_a" in spec and not _value_ok(spec["limit_a"], lim.current_a, where):
        wrong.append("limit_a")
    if "target_a" in spec and (
        lim.target_a is None or not _value_ok(spec["target_a"], lim.target_a, where)
    ):
        wrong.append("target_a")
    if "bound" in spec:
        try:
            bound = Bound(str(spec["bound"]))
        except ValueError as exc:
            raise FormatError(f"{where}: unknown bound {spec['bound']!r}") from exc
        if lim.bound is not bound:
            wrong.append("bound")
    if "node" in spec and lim.node != spec["node"]:
        wrong.append("node")
    if "phase" in spec:
        phase = int(spec["phase"])
        if phase not in (1, 2, 3):
            raise FormatError(f"{where}: phase is 1, 2 or 3")
        if lim.phase != phase - 1:
            wrong.append("phase")
    if "slot" in spec and lim.slot != spec["slot"]:
        wrong.append("slot")
    if not wrong:
        return None
    expected = []
    if "limit_a" in spec:
        expected.append(f"{_show_value(spec['limit_a'])} A")
    for key in ("bound", "node", "slot"):
        if key in spec:
            expected.append(str(spec[key]))
    if "phase" in spec:
        expected.append(f"L{spec['phase']}")
    if "target_a" in spec:
        expected.append(f"target {_show_value(spec['target_a'])}")
    return (
        f"connector {cid}: expected {' '.join(expected)}, got {_show_actual(lim)}"
        f" [wrong: {', '.join(wrong)}]"
    )


def _invariants(site: Site, alloc: Allocation) -> list[str]:
    """I2 on every tick: 0, the fallback, or within [min, max]; never 0 < I < min."""
    out = []
    for conn in site.connectors:
        value = alloc.limits[conn.id].current_a
        ok = (
            value == 0.0
            or abs(value - conn.fallback_current_a) <= TOLERANCE_A
            or conn.min_current_a - TOLERANCE_A <= value <= conn.max_current_a + TOLERANCE_A
        )
        if not ok:
            out.append(f"connector {conn.id}: invariant I2 broken by {value:g} A")
    return out


# -- running a scenario ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    path: Path
    raw: Mapping[str, Any]

    @property
    def xfail(self) -> str | None:
        reason = self.raw.get("xfail")
        return None if reason is None else str(reason)


def load(path: Path) -> Scenario:
    raw = yaml.safe_load(path.read_text())
    _mapping(raw, path.name, ("title", "story", "xfail", "meter_noise_a", "site", "ticks"))
    if not raw.get("ticks"):
        raise FormatError(f"{path.name}: no ticks")
    return Scenario(path=path, raw=raw)


def _draw_per_node(
    site: Site, topo: Topology, world: World
) -> dict[str, tuple[float, float, float]]:
    """What the EVs really draw below each node, on the grid's phases (answered or not)."""
    out = {}
    for node in site.circuits:
        total = [0.0, 0.0, 0.0]
        for conn in topo.under[node.id]:
            ev = world.evses.get(conn.id)
            if ev is None:
                continue
            for i, grid_phase in enumerate(conn.grid_phases):
                total[grid_phase] += ev.current_a[i]
        out[node.id] = (total[0], total[1], total[2])
    return out


def run(scenario: Scenario) -> list[str]:
    """Run every tick; return the mismatches of the first tick that has any."""
    raw = scenario.raw
    name = scenario.path.name
    site, start_wall = build_site(raw.get("site"))
    tz = ZoneInfo(site.timezone)
    topo = Topology.of(site)
    conns = {c.id: c for c in site.connectors}
    metered = {c.id for c in site.circuits if c.meter is not None}
    noise = _num(raw.get("meter_noise_a", DEFAULT_NOISE_A), f"{name}: meter_noise_a")
    # The shell programs and writes every EVSE's fallback current before the first tick.
    world = World(
        written={c.id: c.fallback_current_a for c in site.connectors},
        wall_anchor=(0.0, start_wall),
    )
    previous: Allocation | None = None
    offline_before: set[str] = set()
    last_t: float | None = None
    checked = 0
    for index, raw_tick in enumerate(raw["ticks"]):
        where = f"{name} tick {index}"
        tick = _mapping(raw_tick, where, TICK_KEYS)
        if "t_s" not in tick:
            raise FormatError(f"{where}: needs t_s")
        now = _num(tick["t_s"], f"{where}.t_s")
        if last_t is not None and now <= last_t:
            raise FormatError(f"{where}: t_s must increase ({now:g} after {last_t:g})")
        last_t = now
        where = f"{name} tick {index} (t_s={now:g})"
        if "wall" in tick:
            world.wall_anchor = (now, _wall(tick["wall"], tz, f"{where}.wall"))
        anchor_s, anchor_wall = world.wall_anchor
        wall = anchor_wall + timedelta(seconds=now - anchor_s)

        # -- inputs: restated ones replace what was there
        for node_id, m in _mapping(tick.get("meters"), f"{where}.meters").items():
            if node_id not in metered:
                raise FormatError(f"{where}.meters: {node_id!r} is not a metered node")
            world.meters[node_id] = _meter_input(m, f"{where}.meters.{node_id}")
        for cid, e in _mapping(tick.get("evses"), f"{where}.evses").items():
            if cid not in conns:
                raise FormatError(f"{where}.evses: unknown connector {cid!r}")
            world.evses[cid] = _evse_input(cid, conns[cid], e, f"{where}.evses.{cid}")
        if "slots" in tick:
            world.slots = tuple(
                _slot(s, tz, f"{where}.slots[{i}]") for i, s in enumerate(tick["slots"] or [])
            )
        for cid, s in _mapping(tick.get("sessions"), f"{where}.sessions").items():
            if cid not in conns:
                raise FormatError(f"{where}.sessions: unknown connector {cid!r}")
            if s is None:
                world.sessions.pop(cid, None)
                continue
            spec = _mapping(s, f"{where}.sessions.{cid}", ("priority_tier", "plugged_at_s"))
            world.sessions[cid] = Session(
                priority_tier=spec.get("priority_tier"), plugged_at_s=spec.get("plugged_at_s")
            )

        # -- the writes of the previous decision: they fail where listed, or to an EVSE that
        #    did not answer when they were sent
        listed = set(tick.get("write_failed") or [])
        if unknown := listed - set(conns):
            raise FormatError(f"{where}.write_failed: unknown connectors {sorted(unknown)}")
        failed = set(listed)
        if previous is not None:
            for cid in conns:
                decided = previous.limits[cid].current_a
                if cid in listed:
                    continue
                if cid in offline_before:
                    if decided != world.written.get(cid):
                        failed.add(cid)
                    continue
                world.written[cid] = decided
        for cid, amps in _mapping(tick.get("written"), f"{where}.written").items():
            if cid not in conns:
                raise FormatError(f"{where}.written: unknown connector {cid!r}")
            world.written[cid] = None if amps is None else _num(amps, f"{where}.written")

        # -- the snapshot
        draws = _draw_per_node(site, topo, world)
        meters: dict[str, MeterReading | None] = {}
        for node_id in metered:
            m_in = world.meters.get(node_id, MeterInput(kind="none"))
            reading: MeterReading | None
            if m_in.kind == "none":
                reading = None
            elif m_in.kind == "silent":
                reading = world.last_meter.get(node_id)
            else:
                value = m_in.value
                if m_in.kind == "non_ev":
                    jitter = noise if index % 2 else 0.0
                    d = draws[node_id]
                    value = (
                        value[0] + d[0] - jitter,
                        value[1] + d[1] - jitter,
                        value[2] + d[2] - jitter,
                    )
                reading = MeterReading(
                    at_s=now if m_in.at_s is None else m_in.at_s, current_a=value
                )
            meters[node_id] = reading
            world.last_meter[node_id] = reading
        evses: dict[str, EvseReading | None] = {}
        offline_now = set()
        for cid in conns:
            e_in = world.evses.get(cid)
            if e_in is None:
                evses[cid] = None
                offline_now.add(cid)
            elif e_in.offline:
                evses[cid] = world.last_evse.get(cid)
                offline_now.add(cid)
            else:
                evses[cid] = EvseReading(
                    at_s=now if e_in.at_s is None else e_in.at_s,
                    state=e_in.state,
                    current_a=e_in.current_a,
                )
            world.last_evse[cid] = evses[cid]
        snap = Snapshot(
            now_s=now,
            wall=wall,
            meters=meters,
            evses=evses,
            written_a=dict(world.written),
            write_failed=frozenset(failed),
            slots=world.slots,
            sessions=dict(world.sessions),
        )
        alloc = allocate(site, snap, previous)
        previous = alloc
        offline_before = offline_now

        # -- the expectations
        expect = _mapping(tick.get("expect"), f"{where}.expect")
        problems = _invariants(site, alloc)
        for key, value in expect.items():
            w = f"{where}.expect.{key}"
            if key == "mode":
                if alloc.mode != value:
                    problems.append(f"mode: expected {value}, got {alloc.mode}")
            elif key == "faults_contain":
                wanted = value if isinstance(value, list) else [value]
                texts = [str(f) for f in alloc.faults]
                for text in wanted:
                    if not any(str(text) in t for t in texts):
                        problems.append(f"faults: expected one containing {text!r}, got {texts}")
            elif key == "no_faults":
                if value and alloc.faults:
                    problems.append(f"faults: expected none, got {[str(f) for f in alloc.faults]}")
            elif key in conns:
                checked += 1
                problem = _check_limit(key, value, alloc.limits[key], w)
                if problem is not None:
                    problems.append(problem)
            else:
                raise FormatError(f"{w}: neither a connector nor one of {EXPECT_GLOBAL}")
        if problems:
            actual = "; ".join(f"{cid} {_show_actual(alloc.limits[cid])}" for cid in conns)
            return [
                f"{where}:",
                *(f"  {p}" for p in problems),
                f"  all connectors: {actual}",
                f"  mode {alloc.mode}, faults {[str(f) for f in alloc.faults]}",
                "  (later ticks not checked)",
            ]
    if checked == 0:
        raise FormatError(f"{name}: no connector expectation in any tick")
    return []


def _params() -> list[Any]:
    out = []
    for path in FILES:
        scenario = load(path)
        marks = []
        if scenario.xfail is not None:
            # raises=AssertionError: a format error in an xfail file must still fail the run
            marks.append(
                pytest.mark.xfail(strict=True, raises=AssertionError, reason=scenario.xfail)
            )
        out.append(pytest.param(scenario, id=path.stem, marks=marks))
    return out


@pytest.mark.parametrize("scenario", _params())
def test_golden(scenario: Scenario) -> None:
    mismatches = run(scenario)
    assert not mismatches, "\n".join(mismatches)


def test_there_are_golden_files() -> None:
    assert len(FILES) >= 18


def test_format_errors_are_reported_with_the_place() -> None:
    """A misspelt key must not make a scenario pass silently."""
    bad = {
        "site": {"grid": {"rating_a": 32}, "connectors": {"a": {}}},
        "ticks": [{"t_s": 0, "evses": {"a": "C 6"}, "expect": {"a": {"limt_a": 6}}}],
    }
    with pytest.raises(FormatError, match=r"tick 0 .*expect\.a: unknown keys \['limt_a'\]"):
        run(Scenario(path=Path("bad.yaml"), raw=bad))
    with pytest.raises(FormatError, match="neither a connector"):
        run(
            Scenario(
                path=Path("bad.yaml"),
                raw={**bad, "ticks": [{"t_s": 0, "expect": {"z": {"limit_a": 6}}}]},
            )
        )
