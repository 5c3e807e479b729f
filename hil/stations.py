"""hil: the simulated site's EVSEs of every model, joined to the site's physics.

The Alfen socket keeps its own setpoint history (``AlfenStation``), which is the EV's offer. The
other models (Heidelberg, Bender, Vestel, Phoenix EV-ETH / CHARX, Schneider) are register maps
around a ``ChargePoint``; here that charge point is a ``SiteChargePoint``: its limit, watchdog
and failsafe logic are the model's own, while the EV behind it (plugged or not, its currents,
the energy counter) is the site's physics (``hil.physics.SiteModel``). ``SampledOffer`` records
the charge point's applied limit as it changes (at every physics step and every write), so the
EV can see it ``response_lag_s`` late like it sees an Alfen's.

``build_station(spec, ...)`` makes the device for one scenario EVSE; the site serves its
``RegisterDevice`` on a loopback TCP port or on the RS-485 line the scenario names.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hil.devices.bender import BenderController
from hil.devices.chargepoint import ZERO3, ChargePoint, Ev
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.modbus import RegisterDevice
from hil.devices.phoenix import PhoenixCharx, PhoenixEvEth
from hil.devices.schneider import SchneiderEvlink
from hil.devices.vestel import VestelWallbox
from hil.physics import EvseState, Offer
from hil.scenario import EvseSpec

Measure = Callable[[], EvseState | None]
"""The physics' latest state of this EVSE (None before the first step)."""


class SiteChargePoint(ChargePoint):
    """A ``ChargePoint`` whose EV is the site's physics (presence, currents, energy)."""

    def __init__(self, measure: Measure, *, ev_max_current_a: float = 32.0, **kwargs: Any):
        self._measure = measure
        self._ev_max_current_a = ev_max_current_a
        super().__init__(**kwargs)

    @property
    def ev(self) -> Ev | None:
        m = self._measure()
        if m is None or not m.ev_present:
            return None
        return Ev(max_current_a=self._ev_max_current_a, phases=3)

    @ev.setter
    def ev(self, _value: Ev | None) -> None:
        """Who is plugged in is the physics' business (ChargePoint.__init__ sets None)."""

    def current_a(self, t_s: float) -> tuple[float, float, float]:
        m = self._measure()
        if m is None or self.error_state is not None:
            return ZERO3
        return m.current_a

    def power_w(self, t_s: float) -> float:
        return sum(self.current_a(t_s)) * self.voltage_v

    def state(self, t_s: float) -> str:
        if self.error_state is not None:
            return self.error_state
        m = self._measure()
        return "A" if m is None else m.mode3_state[0]

    def advance(self, t_s: float) -> None:
        """The physics integrates the energy."""

    def energy_at_wh(self, t_s: float) -> float:
        m = self._measure()
        return 0.0 if m is None else m.energy_wh


class SampledOffer:
    """A charge point's applied limit over time, recorded as it changes (an ``OfferSource``)."""

    def __init__(self, cp: ChargePoint, *, phases: int) -> None:
        self._cp = cp
        self._phases = phases
        self._times: list[float] = [-math.inf]
        self._limits: list[float] = [cp.applied_limit_a(0.0)]

    def record(self, t_s: float) -> None:
        """Note the applied limit at ``t_s`` (call at every step and after every write)."""
        limit = self._cp.applied_limit_a(t_s)
        if limit != self._limits[-1] and t_s >= self._times[-1]:
            self._times.append(t_s)
            self._limits.append(limit)

    def offer_at(self, t_s: float) -> Offer:
        i = bisect.bisect_right(self._times, t_s) - 1
        return Offer(limit_a=self._limits[max(i, 0)], phases=self._phases)

    def change_times(self, after_s: float, until_s: float) -> list[float]:
        return [t for t in self._times if after_s < t <= until_s]

    def forget_before(self, t_s: float) -> None:
        i = bisect.bisect_left(self._times, t_s)
        if i > 1:
            keep = i - 1  # the value in force at t_s stays
            self._times = [-math.inf, *self._times[keep + 1 :]]
            self._limits = self._limits[keep:]


@dataclass(slots=True)
class Station:
    """One simulated EVSE of a ChargePoint model: its device, charge point and offer."""

    spec: EvseSpec
    device: RegisterDevice
    cp: SiteChargePoint
    offer: SampledOffer
    model: object  # the model object (HeidelbergBox, VestelWallbox, ...) for tests

    def snapshot(self, t_s: float) -> dict[str, Any]:
        cp = self.cp
        remaining = cp.watchdog_remaining_s(t_s)
        return {
            "setpoint_a": cp.setpoint_a,
            "setpoint_in_force": cp.setpoint_a is not None and not cp.in_failsafe(t_s),
            "validity_remaining_s": None if remaining is None else round(remaining, 3),
            "applied_limit_a": round(cp.applied_limit_a(t_s), 3),
            "phases": len(self.spec.grid_phases),
            "watchdog_timeout_s": cp.watchdog_timeout_s,
            "watchdog_expired": cp.in_failsafe(t_s),
            "fallback_current_a": cp.failsafe_current_a,
        }


def build_station(
    spec: EvseSpec,
    *,
    clock: Callable[[], float],
    measure: Measure,
    voltage_v: float,
    ev_max_current_a: float,
) -> Station:
    """The device of one scenario EVSE (any model but the Alfen, which has its own station)."""
    cp = SiteChargePoint(
        measure,
        ev_max_current_a=ev_max_current_a,
        max_current_a=spec.max_current_a,
        min_current_a=spec.min_current_a,
        voltage_v=voltage_v,
        failsafe_current_a=spec.safe_current_a,
    )
    model: (
        HeidelbergBox
        | BenderController
        | VestelWallbox
        | PhoenixEvEth
        | PhoenixCharx
        | SchneiderEvlink
    )
    name = spec.id
    if spec.model == "heidelberg":
        # leaving state F takes ~10 s on the real box; the box's factory timeout (15 s) stands
        # until the controller programmes its own
        model = HeidelbergBox(cp, unit_id=spec.unit_id, clock=clock, name=name)
    elif spec.model == "bender":
        model = BenderController(cp, unit_id=spec.unit_id, clock=clock, name=name)
    elif spec.model == "vestel":
        model = VestelWallbox(cp, unit_id=spec.unit_id, clock=clock, name=name)
    elif spec.model == "phoenix_ev_eth":
        model = PhoenixEvEth(cp, unit_id=spec.unit_id, clock=clock, name=name)
    elif spec.model == "phoenix_charx":
        model = PhoenixCharx([cp], unit_id=spec.unit_id, clock=clock, name=name)
    elif spec.model == "schneider":
        model = SchneiderEvlink(
            cp,
            unit_id=spec.unit_id,
            clock=clock,
            life_bit_timeout_s=spec.watchdog_timeout_s or 6.0,
            name=name,
        )
    else:
        raise ValueError(f"{spec.id}: no ChargePoint model {spec.model!r}")
    offer = SampledOffer(cp, phases=len(spec.grid_phases))
    return Station(spec=spec, device=model.device, cp=cp, offer=offer, model=model)
