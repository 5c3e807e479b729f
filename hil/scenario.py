"""hil: scenario files (YAML) -> validated, typed scenario values.

A scenario scripts one simulated site: the grid connection, the building's own load, the EVSEs
(Alfen NG9xx sockets by default; Heidelberg, Bender, Vestel, Phoenix and Schneider models too)
and the EVs that visit them, and how each device is reached: its own loopback Modbus TCP port,
or an RS-485 line (a pty, several unit ids on it). The format is documented in hil/README.md.
Loading is strict: unknown keys and wrong types are errors naming their location, so a typo
in a test scenario cannot silently change what the test exercises.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
PHASES = 3
MIN_CHARGE_CURRENT_A = 6.0
DEFAULT_CONTROL: Mapping[str, float] = {"tick_s": 1, "meter_stale_s": 3, "fallback_after_s": 10}

# EVSE models the site can simulate -> (default unit id, links it has, has a watchdog).
EVSE_MODELS: Mapping[str, tuple[int, frozenset[str], bool]] = {
    "alfen": (1, frozenset({"tcp"}), True),
    "heidelberg": (1, frozenset({"rtu"}), True),
    "bender": (255, frozenset({"tcp"}), False),
    "vestel": (255, frozenset({"tcp"}), True),
    "phoenix_ev_eth": (255, frozenset({"tcp"}), False),
    "phoenix_charx": (1, frozenset({"tcp"}), False),
    "schneider": (255, frozenset({"tcp"}), True),
}
METER_MODELS = ("sdm630",)
HEIDELBERG_MAX_CURRENT_A = 16.0  # the box's hardware maximum (IR 100)
PARITIES = ("N", "E", "O")


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; the message names the offending key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSpec:
    """The site and its grid connection (per-phase rating and safety margin)."""

    id: str
    name: str
    timezone: str
    nominal_voltage_v: float
    grid_rating_a: float
    grid_margin_a: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildingStep:
    """From `at_s` on, the building draws `current_a` on grid L1, L2, L3."""

    at_s: float
    current_a: tuple[float, float, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildingSpec:
    """The non-EV load: steps sorted by time plus seeded noise of +-`noise_a` per phase."""

    steps: tuple[BuildingStep, ...]
    noise_a: float = 0.0
    seed: int = 0
    noise_period_s: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvSpec:
    """One EV visit: plugged in from `arrival_s` until `departure_s` (None: stays)."""

    arrival_s: float
    departure_s: float | None
    phases: int
    max_current_a: float
    energy_need_wh: float
    response_lag_s: float = 3.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvseSpec:
    """One EVSE: its model and link, its wiring to the grid phases, limits and EV visits.

    `grid_phases[i]` is the grid phase index (0 = L1) that the connector's phase i is wired to;
    its length is the number of phases the EVSE has (1 or 3). `line` names the RS-485 line it
    sits on (None: its own Modbus TCP port).
    """

    id: str
    phase_rotation: str
    grid_phases: tuple[int, ...]
    max_current_a: float
    safe_current_a: float
    model: str = "alfen"
    line: str | None = None
    validity_time_s: float = 60.0
    # the watchdog of a Heidelberg (HR 257), Vestel (failsafe timeout) or Schneider (life bit);
    # None: the model's factory value. The Alfen's is validity_time_s.
    watchdog_timeout_s: float | None = None
    unit_id: int = 1
    min_current_a: float = MIN_CHARGE_CURRENT_A
    priority_tier: int = 0
    # copied into the config for models without a watchdog (None: the config's default)
    unwatched_cap_a: float | None = None
    timeout_s: float = 0.5
    evs: tuple[EvSpec, ...] = ()

    @property
    def has_watchdog(self) -> bool:
        return EVSE_MODELS[self.model][2]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSpec:
    """The grid meter (an SDM630): its Modbus identity, link and register start value."""

    unit_id: int = 1
    timeout_s: float = 0.5
    initial_import_kwh: float = 0.0
    model: str = "sdm630"
    line: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LineSpec:
    """An RS-485 line (a pty): its settings, which every device on it is configured for."""

    id: str
    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1
    # the devices' reply delay after a request's t3.5 (real devices: a few ms to 100 ms)
    turnaround_s: float = 0.005


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole simulated site, as loaded from one scenario file."""

    name: str
    description: str
    site: SiteSpec
    building: BuildingSpec
    evses: tuple[EvseSpec, ...]
    meter: MeterSpec = MeterSpec()
    control: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTROL))
    lines: tuple[LineSpec, ...] = ()
    source_path: Path | None = None

    def line(self, line_id: str) -> LineSpec:
        for line in self.lines:
            if line.id == line_id:
                return line
        raise KeyError(line_id)


# --- loading -------------------------------------------------------------------------------


def shipped_scenarios() -> list[Path]:
    """The scenario files that ship with the package, sorted by name."""
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A path as given when it exists, else the shipped scenario of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SCENARIO_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path() and shipped.is_file():
        return shipped
    raise ScenarioError(f"no scenario file {str(name_or_path)!r} (and no shipped one by that name)")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario file (a path, or the name of a shipped scenario)."""
    path = resolve_scenario_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    try:
        return scenario_from_dict(data, source_path=path)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc


def scenario_from_dict(data: object, *, source_path: Path | None = None) -> Scenario:
    """Validate a parsed scenario document."""
    top = _Obj(data, "")
    site = top.obj("site")
    scenario_name = top.text("name")
    site_id = site.text("id", default=scenario_name)
    site_spec = SiteSpec(
        id=site_id,
        name=site.text("name", default=f"Simulated site ({scenario_name})"),
        timezone=site.text("timezone", default="Europe/Berlin"),
        nominal_voltage_v=site.number("nominal_voltage_v", default=230.0, positive=True),
        grid_rating_a=site.number("grid_rating_a", positive=True),
        grid_margin_a=site.number("grid_margin_a", default=0.0, minimum=0.0),
    )
    site.done()
    building = _building(top.obj("building"))
    lines = tuple(
        _line(_Obj(item, f"lines[{i}]")) for i, item in enumerate(top.items("lines", default=[]))
    )
    line_ids = [line.id for line in lines]
    if len(set(line_ids)) != len(line_ids):
        raise ScenarioError("lines: ids must be unique")
    evse_list = top.items("evses")
    evses = tuple(_evse(_Obj(item, f"evses[{i}]")) for i, item in enumerate(evse_list))
    ids = [e.id for e in evses]
    if len(set(ids)) != len(ids) or "grid_meter" in ids:
        raise ScenarioError("evses: ids must be unique and not 'grid_meter'")
    meter_obj = top.obj("grid_meter", optional=True)
    meter_model = meter_obj.text("model", default="sdm630")
    if meter_model not in METER_MODELS:
        raise ScenarioError(f"grid_meter.model: one of {', '.join(METER_MODELS)}")
    meter = MeterSpec(
        unit_id=meter_obj.integer("unit_id", default=1, minimum=1, maximum=247),
        timeout_s=meter_obj.number("timeout_s", default=0.5, positive=True),
        initial_import_kwh=meter_obj.number("initial_import_kwh", default=0.0, minimum=0.0),
        model=meter_model,
        line=meter_obj.raw("line", default=None),
    )
    meter_obj.done()
    _check_lines(lines, meter, evses)
    control_obj = top.obj("control", optional=True)
    control = dict(DEFAULT_CONTROL)
    for key in list(control_obj.keys()):
        control[key] = control_obj.number(key, positive=True)
    control_obj.done()
    scenario = Scenario(
        name=scenario_name,
        description=top.text("description", default=""),
        site=site_spec,
        building=building,
        evses=evses,
        meter=meter,
        control=control,
        lines=lines,
        source_path=source_path,
    )
    top.done()
    return scenario


def parse_phase_rotation(text: str) -> tuple[int, ...]:
    """'L2L3L1' -> (1, 2, 0): the grid phase index of the connector's L1, L2, L3.

    A one-phase EVSE names a single grid phase ('L2' -> (1,)).
    """
    if not re.fullmatch(r"(L[123])+", text):
        raise ScenarioError(f"phase_rotation {text!r}: expected e.g. L1L2L3, L2L3L1 or L2")
    phases = tuple(int(text[i + 1]) - 1 for i in range(0, len(text), 2))
    if len(phases) not in (1, PHASES) or len(set(phases)) != len(phases):
        raise ScenarioError(f"phase_rotation {text!r}: one phase or all three, each once")
    return phases


# --- site-level checks ---------------------------------------------------------------------


def worst_building_current_a(scenario: Scenario) -> tuple[float, float, float]:
    """Per grid phase, the largest building load the scenario can produce (noise included)."""
    worst = [0.0, 0.0, 0.0]
    for step in scenario.building.steps:
        for p in range(PHASES):
            worst[p] = max(worst[p], step.current_a[p] + scenario.building.noise_a)
    return (worst[0], worst[1], worst[2])


def fallback_headroom_a(scenario: Scenario) -> tuple[float, float, float]:
    """Per grid phase: rating - margin - worst building load - sum of fallback currents.

    The controller refuses a config where any of these is negative (invariant I5), so the
    shipped scenarios keep all three >= 0. An EVSE without a watchdog counts at the higher of
    its fallback current and its ``unwatched_cap_a`` (it keeps its last limit if the controller
    dies; the controller caps it at its fallback current when no cap is given).
    """
    site = scenario.site
    headroom = [
        site.grid_rating_a - site.grid_margin_a - w for w in worst_building_current_a(scenario)
    ]
    for evse in scenario.evses:
        orphaned = evse.safe_current_a
        if not evse.has_watchdog and evse.unwatched_cap_a is not None:
            orphaned = max(orphaned, evse.unwatched_cap_a)
        for grid_phase in evse.grid_phases:
            headroom[grid_phase] -= orphaned
    return (headroom[0], headroom[1], headroom[2])


# --- validation internals ------------------------------------------------------------------


def _building(obj: _Obj) -> BuildingSpec:
    steps: list[BuildingStep] = []
    for i, item in enumerate(obj.items("steps")):
        step = _Obj(item, f"{obj.where}steps[{i}]")
        current = step.triple("current_a")
        steps.append(BuildingStep(at_s=step.number("at_s", minimum=0.0), current_a=current))
        step.done()
    if not steps:
        raise ScenarioError(f"{obj.where}steps: at least one step")
    steps.sort(key=lambda s: s.at_s)
    spec = BuildingSpec(
        steps=tuple(steps),
        noise_a=obj.number("noise_a", default=0.0, minimum=0.0),
        seed=obj.integer("seed", default=0),
        noise_period_s=obj.number("noise_period_s", default=1.0, positive=True),
    )
    obj.done()
    return spec


def _line(obj: _Obj) -> LineSpec:
    parity = obj.text("parity", default="E")
    if parity not in PARITIES:
        raise ScenarioError(f"{obj.where}parity: one of N, E, O")
    stopbits = obj.integer("stopbits", default=1, minimum=1, maximum=2)
    spec = LineSpec(
        id=obj.text("id"),
        baudrate=obj.integer("baudrate", default=19200, minimum=1200, maximum=230400),
        parity=parity,
        stopbits=stopbits,
        turnaround_s=obj.number("turnaround_s", default=0.005, minimum=0.0),
    )
    obj.done()
    return spec


def _check_lines(
    lines: tuple[LineSpec, ...], meter: MeterSpec, evses: tuple[EvseSpec, ...]
) -> None:
    """Every line named exists; unit ids are unique on a line; only RS-485 models sit on one."""
    known = {line.id for line in lines}
    used: dict[str, dict[int, str]] = {line.id: {} for line in lines}
    members: list[tuple[str, str | None, int]] = [("grid_meter", meter.line, meter.unit_id)]
    members += [(f"evses[{e.id}]", e.line, e.unit_id) for e in evses]
    if meter.line is not None and not isinstance(meter.line, str):
        raise ScenarioError("grid_meter.line: expected a line id")
    for where, line, unit in members:
        if line is None:
            continue
        if line not in known:
            raise ScenarioError(f"{where}.line: no line {line!r} in lines")
        if not 1 <= unit <= 247:
            raise ScenarioError(f"{where}.unit_id: {unit} is not an RS-485 address (1..247)")
        if unit in used[line]:
            raise ScenarioError(
                f"{where}.unit_id: {unit} on line {line} is taken by {used[line][unit]}"
            )
        used[line][unit] = where


def _evse(obj: _Obj) -> EvseSpec:
    evse_id = obj.text("id")
    model = obj.text("model", default="alfen")
    if model not in EVSE_MODELS:
        raise ScenarioError(f"{obj.where}model: one of {', '.join(EVSE_MODELS)}")
    default_unit, links, has_watchdog = EVSE_MODELS[model]
    line = obj.raw("line", default=None)
    if line is not None and not isinstance(line, str):
        raise ScenarioError(f"{obj.where}line: expected a line id")
    if line is not None and "rtu" not in links:
        raise ScenarioError(f"{obj.where}line: a {model} is reached over Modbus TCP only")
    if line is None and "tcp" not in links:
        raise ScenarioError(f"{obj.where}line: a {model} sits on an RS-485 line (give line)")
    rotation = obj.text("phase_rotation", default="L1L2L3")
    try:
        grid_phases = parse_phase_rotation(rotation)
    except ScenarioError as exc:
        raise ScenarioError(f"{obj.where}{exc}") from exc
    max_current_a = obj.number("max_current_a", positive=True)
    if model == "heidelberg" and max_current_a > HEIDELBERG_MAX_CURRENT_A:
        raise ScenarioError(f"{obj.where}max_current_a: a Heidelberg takes at most 16 A")
    safe_current_a = obj.number("safe_current_a", default=MIN_CHARGE_CURRENT_A, minimum=0.0)
    if safe_current_a > max_current_a:
        raise ScenarioError(f"{obj.where}safe_current_a: above max_current_a")
    watchdog = obj.raw("watchdog_timeout_s", default=None)
    if watchdog is not None:
        if model == "alfen" or not has_watchdog:
            what = "validity_time_s" if model == "alfen" else "nothing: it has no watchdog"
            raise ScenarioError(f"{obj.where}watchdog_timeout_s: a {model} takes {what}")
        watchdog = obj.number("watchdog_timeout_s", positive=True)
    if obj.has("validity_time_s") and model != "alfen":
        raise ScenarioError(f"{obj.where}validity_time_s: Alfen only (see watchdog_timeout_s)")
    cap = obj.raw("unwatched_cap_a", default=None)
    if cap is not None:
        if has_watchdog:
            raise ScenarioError(f"{obj.where}unwatched_cap_a: a {model} has a watchdog")
        cap = obj.number("unwatched_cap_a", minimum=0.0)
    visits: list[EvSpec] = []
    if obj.has("ev") and obj.has("evs"):
        raise ScenarioError(f"{obj.where}: give either ev or evs, not both")
    if obj.has("ev"):
        single = obj.raw("ev")
        items: list[Any] = [] if single is None else [single]
        prefix = f"{obj.where}ev"
    else:
        items = obj.items("evs", default=[])
        prefix = f"{obj.where}evs"
    for i, item in enumerate(items):
        visits.append(_ev(_Obj(item, f"{prefix}[{i}]" if obj.has("evs") else prefix)))
    visits.sort(key=lambda v: v.arrival_s)
    for earlier, later in itertools.pairwise(visits):
        if earlier.departure_s is None or earlier.departure_s > later.arrival_s:
            raise ScenarioError(f"{prefix}: EV visits overlap")
    spec = EvseSpec(
        id=evse_id,
        phase_rotation=rotation,
        grid_phases=grid_phases,
        max_current_a=max_current_a,
        safe_current_a=safe_current_a,
        model=model,
        line=line,
        validity_time_s=obj.number("validity_time_s", default=60.0, positive=True),
        watchdog_timeout_s=watchdog,
        unit_id=obj.integer("unit_id", default=default_unit, minimum=1, maximum=255),
        min_current_a=obj.number("min_current_a", default=MIN_CHARGE_CURRENT_A, positive=True),
        priority_tier=obj.integer("priority_tier", default=0, minimum=0),
        unwatched_cap_a=cap,
        timeout_s=obj.number("timeout_s", default=0.5, positive=True),
        evs=tuple(visits),
    )
    obj.done()
    return spec


def _ev(obj: _Obj) -> EvSpec:
    arrival_s = obj.number("arrival_s", minimum=0.0)
    departure = obj.raw("departure_s", default=None)
    departure_s = None if departure is None else obj.number("departure_s", minimum=0.0)
    if departure_s is not None and departure_s <= arrival_s:
        raise ScenarioError(f"{obj.where}departure_s: must be after arrival_s")
    phases = obj.integer("phases", default=3)
    if phases not in (1, PHASES):
        raise ScenarioError(f"{obj.where}phases: must be 1 or 3")
    spec = EvSpec(
        arrival_s=arrival_s,
        departure_s=departure_s,
        phases=phases,
        max_current_a=obj.number("max_current_a", positive=True),
        energy_need_wh=obj.number("energy_need_wh", minimum=0.0),
        response_lag_s=obj.number("response_lag_s", default=3.0, minimum=0.0),
    )
    obj.done()
    return spec


_MISSING: Any = object()


class _Obj:
    """A mapping being validated: typed getters that name the key's location on error."""

    def __init__(self, data: object, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ScenarioError(f"{where or 'scenario'}: expected a mapping")
        self.data: dict[str, Any] = data
        self.where = f"{where}." if where else ""
        self.used: set[str] = set()

    def keys(self) -> list[str]:
        return [str(k) for k in self.data]

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ScenarioError(f"{self.where}{key}: required")
        return default

    def obj(self, key: str, *, optional: bool = False) -> _Obj:
        value = self.raw(key, default=None if optional else _MISSING)
        return _Obj(value, f"{self.where}{key}")

    def items(self, key: str, default: Any = _MISSING) -> list[Any]:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise ScenarioError(f"{self.where}{key}: expected a list")
        return value

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or (not value and value != default):
            raise ScenarioError(f"{self.where}{key}: expected a non-empty string")
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        positive: bool = False,
    ) -> float:
        value = self.raw(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ScenarioError(f"{self.where}{key}: expected a number")
        if positive and value <= 0:
            raise ScenarioError(f"{self.where}{key}: must be > 0")
        if minimum is not None and value < minimum:
            raise ScenarioError(f"{self.where}{key}: must be >= {minimum}")
        return float(value)

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{self.where}{key}: expected an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ScenarioError(f"{self.where}{key}: out of range [{minimum}, {maximum}]")
        return value

    def triple(self, key: str) -> tuple[float, float, float]:
        value = self.raw(key)
        if (
            not isinstance(value, list)
            or len(value) != PHASES
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or any(v < 0 or not math.isfinite(v) for v in value)
        ):
            raise ScenarioError(f"{self.where}{key}: expected [L1, L2, L3], each >= 0")
        return (float(value[0]), float(value[1]), float(value[2]))

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            raise ScenarioError(f"{self.where}{unknown[0]}: unknown key")
