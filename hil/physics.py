"""hil: the simulated site's physics, pure (no I/O, no clock): EVs, building load, grid meter.

`SiteModel.advance(t_s)` moves the site to scenario time `t_s` (seconds since start) and
returns its state. Given the scenario and what the EVSEs offered when, the result is
deterministic: instantaneous values (currents, states) depend only on `t_s`; integrated ones
(energies, and the moment an EV is full) on the step size too, by at most one step.

Rules the model follows (see hil/README.md):
- an EV sees the EVSE's offer `response_lag_s` late, as a step, for decreases and increases;
- it pauses while the offer it sees is below 6 A, and stops for good once its energy need is met;
- it draws min(offer, its max) on each of its phases; a 1-phase EV (or a 1-phase EVSE, or an
  EVSE switched to 1 phase) uses the connector's L1 only;
- the grid meter sees the building load plus every connector's currents mapped through the
  EVSE's phase rotation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from hil.scenario import MIN_CHARGE_CURRENT_A, PHASES, EvseSpec, EvSpec, Scenario

Triple = tuple[float, float, float]
ZERO3: Triple = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """What an EVSE offers the EV: a current limit per phase and how many phases it may use."""

    limit_a: float
    phases: int = PHASES


class OfferSource(Protocol):
    """An EVSE's offer as a piecewise-constant function of scenario time."""

    def offer_at(self, t_s: float) -> Offer:
        """The offer in force at `t_s`."""
        ...

    def change_times(self, after_s: float, until_s: float) -> list[float]:
        """Sorted times in (after_s, until_s] at which the offer may have changed."""
        ...


class ScheduledOffer:
    """A scripted offer: `limit_a` from each `(at_s, limit_a)` on; for tests and fixed runs."""

    def __init__(self, changes: Sequence[tuple[float, float]], *, phases: int = PHASES) -> None:
        if not changes:
            raise ValueError("at least one (at_s, limit_a)")
        self._changes = sorted(changes)
        self._phases = phases

    def offer_at(self, t_s: float) -> Offer:
        limit_a = self._changes[0][1]
        for at_s, value in self._changes:
            if at_s <= t_s:
                limit_a = value
        return Offer(limit_a=limit_a, phases=self._phases)

    def change_times(self, after_s: float, until_s: float) -> list[float]:
        return [at for at, _ in self._changes if after_s < at <= until_s]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened at `at_s` that changes the load (used by the trace).

    kinds: arrival, departure, ev_full, building_step, limit_decrease, limit_increase.
    """

    at_s: float
    kind: str
    evse_id: str | None = None
    old_a: float | None = None
    new_a: float | None = None
    current_a: Triple | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, without the fields that do not apply to this kind."""
        out: dict[str, object] = {"at_s": round(self.at_s, 3), "kind": self.kind}
        if self.evse_id is not None:
            out["evse"] = self.evse_id
        if self.old_a is not None:
            out["old_a"] = round(self.old_a, 3)
        if self.new_a is not None:
            out["new_a"] = round(self.new_a, 3)
        if self.current_a is not None:
            out["current_a"] = [round(c, 3) for c in self.current_a]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class EvseState:
    """One EVSE at one instant.

    `current_a` is per connector phase (L1, L2, L3 of the EVSE, before rotation);
    `offered_limit_a` is what the EVSE offers now, which the EV follows after its lag.
    """

    evse_id: str
    mode3_state: str
    ev_present: bool
    offered_limit_a: float
    current_a: Triple
    power_w: float
    energy_wh: float
    session_energy_wh: float
    ev_full: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteState:
    """The whole site at scenario time `t_s`; grid values are what the grid meter measures."""

    t_s: float
    building_current_a: Triple
    grid_current_a: Triple
    grid_voltage_v: Triple
    grid_power_w: Triple
    grid_import_wh: float
    evses: tuple[EvseState, ...]

    def evse(self, evse_id: str) -> EvseState:
        """The state of one EVSE by id."""
        for state in self.evses:
            if state.evse_id == evse_id:
                return state
        raise KeyError(evse_id)


def connector_to_grid(evse: EvseSpec, connector_current_a: Triple) -> Triple:
    """Map a connector's per-phase currents onto the grid phases through the rotation."""
    grid = [0.0, 0.0, 0.0]
    for connector_phase, grid_phase in enumerate(evse.grid_phases):
        grid[grid_phase] += connector_current_a[connector_phase]
    return (grid[0], grid[1], grid[2])


def ev_current_a(*, ev: EvSpec, evse: EvseSpec, offer: Offer, ev_full: bool) -> Triple:
    """The EV's current per connector phase for the offer it currently sees."""
    if ev_full or offer.limit_a < MIN_CHARGE_CURRENT_A:
        return ZERO3
    phases = max(1, min(ev.phases, len(evse.grid_phases), offer.phases))
    current_a = min(offer.limit_a, ev.max_current_a)
    values = [current_a if i < phases else 0.0 for i in range(PHASES)]
    return (values[0], values[1], values[2])


class _Slot:
    """Mutable per-EVSE simulation state (the session in progress and cumulated energy)."""

    def __init__(self, spec: EvseSpec, offer: OfferSource) -> None:
        self.spec = spec
        self.offer = offer
        self.visit: int | None = None
        self.current_a: Triple = ZERO3
        self.energy_wh = 0.0
        self.session_energy_wh = 0.0
        self.ev_full = False
        self.limit_a = offer.offer_at(0.0).limit_a

    def visit_at(self, t_s: float) -> int | None:
        for i, ev in enumerate(self.spec.evs):
            if ev.arrival_s <= t_s and (ev.departure_s is None or t_s < ev.departure_s):
                return i
        return None


class SiteModel:
    """The simulated site's physics; advance it with monotonically increasing `t_s`."""

    def __init__(self, scenario: Scenario, offers: Mapping[str, OfferSource]) -> None:
        missing = [e.id for e in scenario.evses if e.id not in offers]
        if missing:
            raise ValueError(f"no offer source for EVSE(s) {missing}")
        self.scenario = scenario
        self._slots = [_Slot(e, offers[e.id]) for e in scenario.evses]
        self._overrides: list[tuple[float, Triple]] = []
        self._events: list[Event] = []
        self._t_s = 0.0
        self._import_wh = scenario.meter.initial_import_kwh * 1000.0
        self._state = self._compute(0.0, after_s=-math.inf)

    @property
    def t_s(self) -> float:
        """The scenario time of the current state."""
        return self._t_s

    @property
    def state(self) -> SiteState:
        """The state at `t_s`."""
        return self._state

    def advance(self, t_s: float) -> SiteState:
        """Move to `t_s` (not before the current time) and return the new state."""
        if t_s < self._t_s:
            raise ValueError(f"time runs forward: {t_s} < {self._t_s}")
        dt_s = t_s - self._t_s
        voltage_v = self.scenario.site.nominal_voltage_v
        for slot in self._slots:
            delta_wh = voltage_v * sum(slot.current_a) * dt_s / 3600.0
            slot.energy_wh += delta_wh
            if slot.visit is not None:
                need_wh = slot.spec.evs[slot.visit].energy_need_wh
                slot.session_energy_wh = min(slot.session_energy_wh + delta_wh, need_wh)
                if not slot.ev_full and slot.session_energy_wh >= need_wh:
                    slot.ev_full = True
                    self._events.append(Event(at_s=t_s, kind="ev_full", evse_id=slot.spec.id))
        self._import_wh += max(0.0, sum(self._state.grid_power_w)) * dt_s / 3600.0
        after_s = self._t_s
        self._t_s = t_s
        self._state = self._compute(t_s, after_s=after_s)
        return self._state

    def set_building(self, current_a: Sequence[float], t_s: float) -> None:
        """From `t_s` on, the building draws `current_a` (replaces the scenario's later steps)."""
        if len(current_a) != PHASES or any(c < 0 for c in current_a):
            raise ValueError("current_a: three values >= 0")
        value: Triple = (float(current_a[0]), float(current_a[1]), float(current_a[2]))
        self._overrides.append((t_s, value))
        self._events.append(Event(at_s=t_s, kind="building_step", current_a=value))

    def plug_in(self, evse_id: str, t_s: float, ev: EvSpec) -> None:
        """From `t_s` on, `ev` is plugged in at the EVSE (a visit added at run time, for tests
        that decide when a car comes); its arrival_s and departure_s are set here."""
        slot = self._slot(evse_id)
        t_s = max(t_s, self._t_s)
        if slot.visit_at(t_s) is not None:
            raise ValueError(f"{evse_id}: an EV is already plugged in at {t_s:g} s")
        visit = replace(ev, arrival_s=t_s, departure_s=None)
        slot.spec = replace(slot.spec, evs=(*slot.spec.evs, visit))

    def unplug(self, evse_id: str, t_s: float) -> None:
        """From `t_s` on, the EV plugged in at the EVSE is gone (its visit ends there)."""
        slot = self._slot(evse_id)
        t_s = max(t_s, self._t_s)
        current = slot.visit_at(t_s)
        if current is None:
            raise ValueError(f"{evse_id}: no EV plugged in at {t_s:g} s")
        evs = list(slot.spec.evs)
        evs[current] = replace(evs[current], departure_s=t_s)
        slot.spec = replace(slot.spec, evs=tuple(evs))

    def _slot(self, evse_id: str) -> _Slot:
        for slot in self._slots:
            if slot.spec.id == evse_id:
                return slot
        raise KeyError(evse_id)

    def drain_events(self) -> list[Event]:
        """The events since the last call, in time order."""
        events = sorted(self._events, key=lambda e: e.at_s)
        self._events = []
        return events

    def building_current_a(self, t_s: float) -> Triple:
        """The building's load per grid phase at `t_s`, noise included."""
        base = self._building_base_a(t_s)
        spec = self.scenario.building
        if spec.noise_a <= 0:
            return base
        bucket = math.floor(t_s / spec.noise_period_s)
        noisy = []
        for phase in range(PHASES):
            # Seeded by (seed, bucket, phase) alone, so the noise does not depend on step size.
            u = random.Random(f"{spec.seed}:{bucket}:{phase}").random()
            noisy.append(max(0.0, base[phase] + spec.noise_a * (2.0 * u - 1.0)))
        return (noisy[0], noisy[1], noisy[2])

    def _building_base_a(self, t_s: float) -> Triple:
        for at_s, value in reversed(self._overrides):
            if at_s <= t_s:
                return value
        steps = self.scenario.building.steps
        current = steps[0].current_a
        for step in steps:
            if step.at_s <= t_s:
                current = step.current_a
        return current

    def _compute(self, t_s: float, *, after_s: float) -> SiteState:
        self._scenario_events(after_s, t_s)
        building = self.building_current_a(t_s)
        grid = list(building)
        voltage_v = self.scenario.site.nominal_voltage_v
        evse_states = []
        for slot in self._slots:
            self._limit_events(slot, after_s, t_s)
            self._enter_visit(slot, slot.visit_at(t_s))
            offered_limit_a = slot.offer.offer_at(t_s).limit_a
            if slot.visit is None:
                slot.current_a = ZERO3
                mode3 = "A"
            else:
                ev = slot.spec.evs[slot.visit]
                seen_s = t_s - ev.response_lag_s
                if seen_s < ev.arrival_s:
                    slot.current_a = ZERO3
                else:
                    slot.current_a = ev_current_a(
                        ev=ev,
                        evse=slot.spec,
                        offer=slot.offer.offer_at(seen_s),
                        ev_full=slot.ev_full,
                    )
                mode3 = "C2" if any(c > 0 for c in slot.current_a) else "B2"
            for phase, value in enumerate(connector_to_grid(slot.spec, slot.current_a)):
                grid[phase] += value
            evse_states.append(
                EvseState(
                    evse_id=slot.spec.id,
                    mode3_state=mode3,
                    ev_present=slot.visit is not None,
                    offered_limit_a=offered_limit_a,
                    current_a=slot.current_a,
                    power_w=voltage_v * sum(slot.current_a),
                    energy_wh=slot.energy_wh,
                    session_energy_wh=slot.session_energy_wh,
                    ev_full=slot.ev_full,
                )
            )
        grid_a: Triple = (grid[0], grid[1], grid[2])
        return SiteState(
            t_s=t_s,
            building_current_a=building,
            grid_current_a=grid_a,
            grid_voltage_v=(voltage_v, voltage_v, voltage_v),
            grid_power_w=(voltage_v * grid[0], voltage_v * grid[1], voltage_v * grid[2]),
            grid_import_wh=self._import_wh,
            evses=tuple(evse_states),
        )

    def _enter_visit(self, slot: _Slot, visit: int | None) -> None:
        if visit == slot.visit:
            return
        slot.visit = visit
        slot.session_energy_wh = 0.0
        slot.ev_full = False
        if visit is not None and slot.spec.evs[visit].energy_need_wh <= 0:
            slot.ev_full = True

    def _scenario_events(self, after_s: float, until_s: float) -> None:
        for step in self.scenario.building.steps[1:]:
            overridden = any(at <= step.at_s for at, _ in self._overrides)
            if after_s < step.at_s <= until_s and not overridden:
                self._events.append(
                    Event(at_s=step.at_s, kind="building_step", current_a=step.current_a)
                )
        for slot in self._slots:
            for ev in slot.spec.evs:
                if after_s < ev.arrival_s <= until_s:
                    self._events.append(
                        Event(at_s=ev.arrival_s, kind="arrival", evse_id=slot.spec.id)
                    )
                if ev.departure_s is not None and after_s < ev.departure_s <= until_s:
                    self._events.append(
                        Event(at_s=ev.departure_s, kind="departure", evse_id=slot.spec.id)
                    )

    def _limit_events(self, slot: _Slot, after_s: float, until_s: float) -> None:
        if math.isinf(after_s):
            return
        for at_s in slot.offer.change_times(after_s, until_s):
            new_a = slot.offer.offer_at(at_s).limit_a
            if new_a != slot.limit_a:
                kind = "limit_decrease" if new_a < slot.limit_a else "limit_increase"
                self._events.append(
                    Event(
                        at_s=at_s, kind=kind, evse_id=slot.spec.id, old_a=slot.limit_a, new_a=new_a
                    )
                )
                slot.limit_a = new_a
        slot.limit_a = slot.offer.offer_at(until_s).limit_a
