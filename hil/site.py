"""hil: the simulated site in asyncio: physics on a monotonic clock behind real Modbus servers.

An SDM630 grid meter and one EVSE per scenario entry (an Alfen socket unless the scenario names
another model). Each TCP device gets its own loopback port; devices the scenario puts on an
RS-485 line share one pty (``RtuLine``: real framing, parity and pacing), whose path the
controller opens as its serial port. The physics (hil.physics) advances every `tick_s` of real
time; the devices answer from its latest state, and setpoint writes reach the physics through
each model's own limit and watchdog logic (hil.stations). Optionally a JSON line per
`trace_interval_s` goes to `trace_path`: the snapshot plus the events since the last line, for
end-to-end tests that check the grid current against the rating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from hil.devices.alfen import AlfenSocketServer, AlfenStation, SocketMeasurement
from hil.devices.modbus import Fault, RegisterDevice, TcpServer, quiet_pymodbus
from hil.devices.rtu import LineSettings, RtuLine
from hil.devices.sdm630 import MeterReading, sdm630_device
from hil.physics import Event, EvseState, OfferSource, SiteModel
from hil.scenario import EvseSpec, EvSpec, Scenario, load_scenario
from hil.stations import Station, build_station

GRID_METER_ID = "grid_meter"
HISTORY_S = 300.0  # station write history kept for the EVs' lag; far more than any lag

# scenario model -> evsite driver name, and the option that carries its watchdog timeout
DRIVERS = {
    "alfen": "alfen_ng9xx",
    "heidelberg": "heidelberg_ec",
    "bender": "bender_cc612",
    "vestel": "vestel_evc04",
    "phoenix_ev_eth": "phoenix_ev_eth",
    "phoenix_charx": "phoenix_charx",
    "schneider": "schneider_evlink",
}
WATCHDOG_OPTIONS = {
    "heidelberg": "watchdog_timeout_s",
    "vestel": "failsafe_timeout_s",
    "schneider": "life_bit_timeout_s",
}


class SimulatedSite:
    """A scenario served on loopback TCP; see hil/README.md for the test hooks."""

    def __init__(
        self,
        scenario: Scenario | str | os.PathLike[str],
        *,
        port_base: int = 0,
        host: str = "127.0.0.1",
        trace_path: str | os.PathLike[str] | None = None,
        tick_s: float = 0.1,
        trace_interval_s: float = 0.5,
        quiet: bool = True,
    ) -> None:
        self.scenario = (
            scenario if isinstance(scenario, Scenario) else load_scenario(os.fspath(scenario))
        )
        self.host = host
        self.port_base = port_base
        self.tick_s = tick_s
        self.trace_interval_s = trace_interval_s
        self._trace_path = None if trace_path is None else Path(trace_path)
        self._quiet = quiet
        self._t0: float | None = None
        scenario_ = self.scenario
        # Alfen sockets: their own station logic is the EV's offer
        self.stations = {
            evse.id: AlfenStation(
                max_current_a=evse.max_current_a,
                safe_current_a=evse.safe_current_a,
                validity_time_s=evse.validity_time_s,
                phases=len(evse.grid_phases),
            )
            for evse in scenario_.evses
            if evse.model == "alfen"
        }
        # every other model: a register map around a ChargePoint joined to the physics
        self.boxes: dict[str, Station] = {
            evse.id: build_station(
                evse,
                clock=self.now_s,
                measure=self._physics_of(evse.id),
                voltage_v=scenario_.site.nominal_voltage_v,
                ev_max_current_a=max((v.max_current_a for v in evse.evs), default=32.0),
            )
            for evse in scenario_.evses
            if evse.model != "alfen"
        }
        offers: dict[str, OfferSource] = {**self.stations}
        offers.update({k: box.offer for k, box in self.boxes.items()})
        self.model = SiteModel(scenario_, offers)
        self.meter: RegisterDevice = sdm630_device(
            self._meter_reading, unit_id=scenario_.meter.unit_id, name=GRID_METER_ID
        )
        self.sockets = {
            evse.id: AlfenSocketServer(
                self.stations[evse.id],
                clock=self.now_s,
                measurement=self._socket_measurement(evse.id),
                unit_id=evse.unit_id,
                name=evse.id,
            )
            for evse in scenario_.evses
            if evse.model == "alfen"
        }
        # the RS-485 lines and who sits on them; everyone else has a TCP port of their own
        self.lines: dict[str, RtuLine] = {
            spec.id: RtuLine(
                line=LineSettings(
                    baudrate=spec.baudrate, parity=spec.parity, stopbits=spec.stopbits
                ),
                turnaround_s=spec.turnaround_s,
            )
            for spec in scenario_.lines
        }
        self._tcp: dict[str, TcpServer | AlfenSocketServer] = {}
        if scenario_.meter.line is None:
            self._tcp[GRID_METER_ID] = TcpServer([self.meter], name=GRID_METER_ID)
        else:
            self.lines[scenario_.meter.line].attach(self.meter)
        for evse in scenario_.evses:
            if evse.model == "alfen":
                self._tcp[evse.id] = self.sockets[evse.id]
            elif evse.line is None:
                self._tcp[evse.id] = TcpServer([self.boxes[evse.id].device], name=evse.id)
            else:
                self.lines[evse.line].attach(self.boxes[evse.id].device)
        self._ports: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._trace: IO[str] | None = None
        self._next_trace_s = 0.0
        self._pending: list[Event] = []
        self._last_trace_s = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the servers and the physics clock (scenario time 0 is now)."""
        if self._task is not None:
            raise RuntimeError("already started")
        if self._quiet:
            quiet_pymodbus()
        try:
            for index, (name, server) in enumerate(self._tcp.items()):
                port = 0 if self.port_base == 0 else self.port_base + index
                self._ports[name] = await server.start(self.host, port)
            for line in self.lines.values():
                await line.start()
        except BaseException:
            await self._stop_servers()
            raise
        self._open_trace()
        self._t0 = time.monotonic()
        self._next_trace_s = self.trace_interval_s
        self._task = asyncio.create_task(self._run(), name="hil-site-physics")

    async def stop(self) -> None:
        """Stop the physics and the servers; the trace gets a last line."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._step()
            if self._pending or self.model.t_s - self._last_trace_s >= self.tick_s:
                self._write_trace()
        await self._stop_servers()
        if self._trace is not None:
            self._trace.close()
            self._trace = None

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # --- public API --------------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        """TCP port by device id: 'grid_meter' and each EVSE id that is on TCP."""
        return dict(self._ports)

    @property
    def serial_ports(self) -> dict[str, str]:
        """The pty path by line id (what the controller opens as its serial port)."""
        return {line_id: line.port for line_id, line in self.lines.items()}

    def device(self, device_id: str) -> RegisterDevice:
        """The simulated device by id ('grid_meter' or an EVSE id), for fault injection."""
        if device_id == GRID_METER_ID:
            return self.meter
        if device_id in self.sockets:
            return self.sockets[device_id].server.device
        return self.boxes[device_id].device

    def now_s(self) -> float:
        """Scenario time: seconds since start() on the monotonic clock (0 before)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def site_config(
        self, *, state_dir: str | os.PathLike[str], runtime_dir: str | os.PathLike[str]
    ) -> dict[str, Any]:
        """The evsite site config (YAML-able) that points the controller at this site."""
        if not self._ports:
            raise RuntimeError("start() the site first: the config names its ports")
        s = self.scenario
        meter: dict[str, Any] = {
            "id": GRID_METER_ID,
            "driver": "eastron_sdm630",
            "transport": self._transport(GRID_METER_ID, s.meter.line),
            "unit_id": s.meter.unit_id,
            "timeout_s": _num(s.meter.timeout_s),
        }
        return {
            "site": {
                "id": s.site.id,
                "name": s.site.name,
                "timezone": s.site.timezone,
                "nominal_voltage_v": _num(s.site.nominal_voltage_v),
            },
            "grid": {
                "rating_a": _num(s.site.grid_rating_a),
                "margin_a": _num(s.site.grid_margin_a),
                "meter": GRID_METER_ID,
            },
            "meters": [meter],
            "evses": [self._evse_config(evse) for evse in s.evses],
            "control": {key: _num(value) for key, value in s.control.items()},
            "service": {
                "state_dir": os.fspath(state_dir),
                "runtime_dir": os.fspath(runtime_dir),
                "log_format": "auto",
            },
        }

    def _transport(self, device_id: str, line_id: str | None) -> dict[str, Any]:
        if line_id is None:
            return {"type": "tcp", "host": self.host, "port": self._ports[device_id]}
        line = self.scenario.line(line_id)
        return {
            "type": "serial",
            "port": self.lines[line_id].port,
            "baudrate": line.baudrate,
            "parity": line.parity,
            "stopbits": line.stopbits,
        }

    def _evse_config(self, evse: EvseSpec) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": evse.id,
            "driver": DRIVERS[evse.model],
            "transport": self._transport(evse.id, evse.line),
            "unit_id": evse.unit_id,
            "circuit": "grid",
            "phase_rotation": evse.phase_rotation,
            "min_current_a": _num(evse.min_current_a),
            "max_current_a": _num(evse.max_current_a),
            "fallback_current_a": _num(evse.safe_current_a),
            "priority_tier": evse.priority_tier,
        }
        if evse.timeout_s != 0.5:
            entry["timeout_s"] = _num(evse.timeout_s)
        if evse.unwatched_cap_a is not None:
            entry["unwatched_cap_a"] = _num(evse.unwatched_cap_a)
        options: dict[str, Any] = {}
        if evse.model == "alfen":
            options["validity_time_s"] = _num(evse.validity_time_s)
        elif evse.model in WATCHDOG_OPTIONS and evse.watchdog_timeout_s is not None:
            options[WATCHDOG_OPTIONS[evse.model]] = _num(evse.watchdog_timeout_s)
        if options:
            entry["options"] = options
        return entry

    def snapshot(self) -> dict[str, Any]:
        """The latest state as plain JSON-able data (see hil/README.md for the keys)."""
        state = self.model.state
        t_s = state.t_s
        evses: dict[str, Any] = {}
        models = {e.id: e.model for e in self.scenario.evses}
        for evse in state.evses:
            entry: dict[str, Any] = {"model": models[evse.evse_id]}
            box = self.boxes.get(evse.evse_id)
            if box is not None:
                entry.update(box.snapshot(t_s))
            else:
                station = self.stations[evse.evse_id]
                setpoint = station.setpoint_a(t_s)
                entry.update(
                    {
                        "setpoint_a": None if setpoint is None else _r(setpoint),
                        "setpoint_in_force": station.setpoint_in_force(t_s),
                        "validity_remaining_s": _r(station.validity_remaining_s(t_s)),
                        "applied_limit_a": _r(station.applied_limit_a(t_s)),
                        "phases": station.phases_at(t_s),
                        "watchdog_timeout_s": station.validity_time_s,
                        # a setpoint was written and its validity time ran out
                        "watchdog_expired": setpoint is not None
                        and not station.setpoint_in_force(t_s),
                        "fallback_current_a": station.safe_current_a,
                    }
                )
            entry.update(
                {
                    "state": evse.mode3_state,
                    "ev_present": evse.ev_present,
                    "ev_full": evse.ev_full,
                    "ev_current_a": [_r(c) for c in evse.current_a],
                    "power_w": _r(evse.power_w),
                    "energy_wh": _r(evse.energy_wh),
                    "session_energy_wh": _r(evse.session_energy_wh),
                }
            )
            evses[evse.evse_id] = entry
        return {
            "t_s": _r(t_s),
            "grid_rating_a": _num(self.scenario.site.grid_rating_a),
            "grid_current_a": [_r(c) for c in state.grid_current_a],
            "building_current_a": [_r(c) for c in state.building_current_a],
            "grid_power_w": _r(sum(state.grid_power_w)),
            "grid_import_kwh": _r(state.grid_import_wh / 1000.0),
            "meter_fault": self.meter.fault.value,
            "evses": evses,
        }

    def set_building(self, current_a: Sequence[float]) -> None:
        """From now on the building draws `current_a` [L1, L2, L3] (scenario steps end here)."""
        self.model.set_building(current_a, max(self.now_s(), self.model.t_s))
        self._step()

    def plug_in(self, evse_id: str, ev: EvSpec) -> None:
        """An EV is plugged in at the EVSE now (its arrival_s/departure_s are ignored)."""
        self.model.plug_in(evse_id, max(self.now_s(), self.model.t_s), ev)

    def unplug(self, evse_id: str) -> None:
        """The EV at the EVSE leaves now."""
        self.model.unplug(evse_id, max(self.now_s(), self.model.t_s))

    def fail_meter(self, silent: bool = True) -> None:
        """Make the grid meter fail: silent=True no reply at all, False exception 4 replies."""
        self.meter.inject(Fault.SILENT if silent else Fault.EXCEPTION)
        kind = "meter_silent" if silent else "meter_failing"
        self._pending.append(Event(at_s=self.now_s(), kind=kind))

    def restore_meter(self) -> None:
        """The grid meter answers normally again."""
        self.meter.clear_fault()
        self._pending.append(Event(at_s=self.now_s(), kind="meter_restored"))

    # --- internals ---------------------------------------------------------------------------

    async def _run(self) -> None:
        next_tick_s = self.now_s()
        while True:
            self._step()
            if self.model.t_s >= self._next_trace_s:
                self._write_trace()
                self._next_trace_s += self.trace_interval_s
                if self._next_trace_s <= self.model.t_s:  # fell behind: do not burst lines
                    self._next_trace_s = self.model.t_s + self.trace_interval_s
            next_tick_s += self.tick_s
            delay_s = next_tick_s - self.now_s()
            if delay_s < 0:
                next_tick_s = self.now_s()
                delay_s = 0.0
            await asyncio.sleep(delay_s)

    def _step(self) -> None:
        now = max(self.now_s(), self.model.t_s)
        for box in self.boxes.values():
            box.offer.record(now)
        self.model.advance(now)
        self._pending.extend(self.model.drain_events())
        for station in self.stations.values():
            station.forget_before(now - HISTORY_S)
        for box in self.boxes.values():
            box.offer.forget_before(now - HISTORY_S)

    def _open_trace(self) -> None:
        if self._trace_path is not None:
            self._trace_path.parent.mkdir(parents=True, exist_ok=True)
            self._trace = self._trace_path.open("w", encoding="utf-8")

    def _write_trace(self) -> None:
        if self._trace is None:
            self._pending.clear()
            return
        events = sorted(self._pending, key=lambda e: e.at_s)
        self._pending = []
        line = {**self.snapshot(), "events": [e.to_dict() for e in events]}
        self._last_trace_s = self.model.t_s
        self._trace.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._trace.flush()

    async def _stop_servers(self) -> None:
        for server in self._tcp.values():
            await server.stop()
        for line in self.lines.values():
            await line.stop()

    def _meter_reading(self) -> MeterReading:
        state = self.model.state
        return MeterReading(
            voltage_v=state.grid_voltage_v,
            current_a=state.grid_current_a,
            power_w=state.grid_power_w,
            import_kwh=state.grid_import_wh / 1000.0,
            export_kwh=0.0,
        )

    def _physics_of(self, evse_id: str) -> Callable[[], EvseState | None]:
        def measure() -> EvseState | None:
            model = getattr(self, "model", None)  # None while the site is being built
            return None if model is None else model.state.evse(evse_id)

        return measure

    def _socket_measurement(self, evse_id: str) -> Callable[[], SocketMeasurement]:
        voltage_v = self.scenario.site.nominal_voltage_v

        def measure() -> SocketMeasurement:
            evse = self.model.state.evse(evse_id)
            return SocketMeasurement(
                voltage_v=(voltage_v, voltage_v, voltage_v),
                current_a=evse.current_a,
                power_w=evse.power_w,
                energy_delivered_wh=evse.energy_wh,
                mode3_state=evse.mode3_state,
            )

        return measure


def _r(value: float) -> float:
    return round(value, 3)


def _num(value: float) -> int | float:
    """Whole numbers as int, so the written YAML reads 32 rather than 32.0."""
    return int(value) if float(value).is_integer() else value
