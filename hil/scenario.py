"""hil: scenario files (YAML) -> validated, typed scenario values.

A scenario scripts one simulated site: the grid connection, the building's own load, the EVSEs
(Alfen NG9xx sockets) and the EVs that visit them. The format is documented in hil/README.md.
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
    """One Alfen socket: its wiring to the grid phases, station limits and its EV visits.

    `grid_phases[i]` is the grid phase index (0 = L1) that the connector's phase i is wired to;
    its length is the number of phases the EVSE has (1 or 3).
    """

    id: str
    phase_rotation: str
    grid_phases: tuple[int, ...]
    max_current_a: float
    safe_current_a: float
    validity_time_s: float = 60.0
    unit_id: int = 1
    min_current_a: float = MIN_CHARGE_CURRENT_A
    priority_tier: int = 0
    evs: tuple[EvSpec, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSpec:
    """The SDM630 grid meter's Modbus identity and its register start value."""

    unit_id: int = 1
    timeout_s: float = 0.5
    initial_import_kwh: float = 0.0


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
    source_path: Path | None = None


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
    evse_list = top.items("evses")
    evses = tuple(_evse(_Obj(item, f"evses[{i}]")) for i, item in enumerate(evse_list))
    ids = [e.id for e in evses]
    if len(set(ids)) != len(ids) or "grid_meter" in ids:
        raise ScenarioError("evses: ids must be unique and not 'grid_meter'")
    meter_obj = top.obj("grid_meter", optional=True)
    meter = MeterSpec(
        unit_id=meter_obj.integer("unit_id", default=1, minimum=1, maximum=247),
        timeout_s=meter_obj.number("timeout_s", default=0.5, positive=True),
        initial_import_kwh=meter_obj.number("initial_import_kwh", default=0.0, minimum=0.0),
    )
    meter_obj.done()
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
    shipped scenarios keep all three >= 0.
    """
    site = scenario.site
    headroom = [
        site.grid_rating_a - site.grid_margin_a - w for w in worst_building_current_a(scenario)
    ]
    for evse in scenario.evses:
        for grid_phase in evse.grid_phases:
            headroom[grid_phase] -= evse.safe_current_a
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


def _evse(obj: _Obj) -> EvseSpec:
    evse_id = obj.text("id")
    rotation = obj.text("phase_rotation", default="L1L2L3")
    try:
        grid_phases = parse_phase_rotation(rotation)
    except ScenarioError as exc:
        raise ScenarioError(f"{obj.where}{exc}") from exc
    max_current_a = obj.number("max_current_a", positive=True)
    safe_current_a = obj.number("safe_current_a", default=MIN_CHARGE_CURRENT_A, minimum=0.0)
    if safe_current_a > max_current_a:
        raise ScenarioError(f"{obj.where}safe_current_a: above max_current_a")
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
        validity_time_s=obj.number("validity_time_s", default=60.0, positive=True),
        unit_id=obj.integer("unit_id", default=1, minimum=1, maximum=247),
        min_current_a=obj.number("min_current_a", default=MIN_CHARGE_CURRENT_A, positive=True),
        priority_tier=obj.integer("priority_tier", default=0, minimum=0),
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
