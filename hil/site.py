"""hil: the simulated site in asyncio: physics on a monotonic clock behind real Modbus TCP servers.

One SDM630 grid meter and one Alfen socket per EVSE, each on its own loopback port. The physics
(hil.physics) advances every `tick_s` of real time; the servers answer from its latest state,
and setpoint writes reach the physics through the Alfen station logic. Optionally a JSON line
per `trace_interval_s` goes to `trace_path`: the snapshot plus the events since the last line,
for end-to-end tests that check the grid current against the rating.
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
from hil.devices.modbus import Fault, quiet_pymodbus
from hil.devices.sdm630 import MeterReading, Sdm630Server
from hil.physics import Event, SiteModel
from hil.scenario import Scenario, load_scenario

GRID_METER_ID = "grid_meter"
HISTORY_S = 300.0  # station write history kept for the EVs' lag; far more than any lag


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
        self.stations = {
            evse.id: AlfenStation(
                max_current_a=evse.max_current_a,
                safe_current_a=evse.safe_current_a,
                validity_time_s=evse.validity_time_s,
                phases=len(evse.grid_phases),
            )
            for evse in self.scenario.evses
        }
        self.model = SiteModel(self.scenario, self.stations)
        self.meter = Sdm630Server(
            self._meter_reading, unit_id=self.scenario.meter.unit_id, name=GRID_METER_ID
        )
        self.sockets = {
            evse.id: AlfenSocketServer(
                self.stations[evse.id],
                clock=self.now_s,
                measurement=self._socket_measurement(evse.id),
                unit_id=evse.unit_id,
                name=evse.id,
            )
            for evse in self.scenario.evses
        }
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
        servers: list[tuple[str, Sdm630Server | AlfenSocketServer]] = [
            (GRID_METER_ID, self.meter),
            *self.sockets.items(),
        ]
        try:
            for index, (name, server) in enumerate(servers):
                port = 0 if self.port_base == 0 else self.port_base + index
                self._ports[name] = await server.start(self.host, port)
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
        """TCP port by device id: 'grid_meter' and each EVSE id."""
        return dict(self._ports)

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
            "meters": [
                {
                    "id": GRID_METER_ID,
                    "driver": "eastron_sdm630",
                    "transport": {
                        "type": "tcp",
                        "host": self.host,
                        "port": self._ports[GRID_METER_ID],
                    },
                    "unit_id": s.meter.unit_id,
                    "timeout_s": _num(s.meter.timeout_s),
                }
            ],
            "evses": [
                {
                    "id": evse.id,
                    "driver": "alfen_ng9xx",
                    "transport": {"type": "tcp", "host": self.host, "port": self._ports[evse.id]},
                    "unit_id": evse.unit_id,
                    "circuit": "grid",
                    "phase_rotation": evse.phase_rotation,
                    "min_current_a": _num(evse.min_current_a),
                    "max_current_a": _num(evse.max_current_a),
                    "fallback_current_a": _num(evse.safe_current_a),
                    "priority_tier": evse.priority_tier,
                    "options": {"validity_time_s": _num(evse.validity_time_s)},
                }
                for evse in s.evses
            ],
            "control": {key: _num(value) for key, value in s.control.items()},
            "service": {
                "state_dir": os.fspath(state_dir),
                "runtime_dir": os.fspath(runtime_dir),
                "log_format": "auto",
            },
        }

    def snapshot(self) -> dict[str, Any]:
        """The latest state as plain JSON-able data (see hil/README.md for the keys)."""
        state = self.model.state
        t_s = state.t_s
        evses: dict[str, Any] = {}
        for evse in state.evses:
            station = self.stations[evse.evse_id]
            setpoint = station.setpoint_a(t_s)
            evses[evse.evse_id] = {
                "state": evse.mode3_state,
                "ev_present": evse.ev_present,
                "ev_full": evse.ev_full,
                "setpoint_a": None if setpoint is None else _r(setpoint),
                "setpoint_in_force": station.setpoint_in_force(t_s),
                "validity_remaining_s": _r(station.validity_remaining_s(t_s)),
                "applied_limit_a": _r(station.applied_limit_a(t_s)),
                "phases": station.phases_at(t_s),
                "ev_current_a": [_r(c) for c in evse.current_a],
                "power_w": _r(evse.power_w),
                "energy_wh": _r(evse.energy_wh),
                "session_energy_wh": _r(evse.session_energy_wh),
            }
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

    def fail_meter(self, silent: bool = True) -> None:
        """Make the grid meter fail: silent=True no reply at all, False exception 4 replies."""
        self.meter.fault = Fault.SILENT if silent else Fault.EXCEPTION
        kind = "meter_silent" if silent else "meter_failing"
        self._pending.append(Event(at_s=self.now_s(), kind=kind))

    def restore_meter(self) -> None:
        """The grid meter answers normally again."""
        self.meter.fault = Fault.NONE
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
        self.model.advance(now)
        self._pending.extend(self.model.drain_events())
        for station in self.stations.values():
            station.forget_before(now - HISTORY_S)

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
        await self.meter.stop()
        for server in self.sockets.values():
            await server.stop()

    def _meter_reading(self) -> MeterReading:
        state = self.model.state
        return MeterReading(
            voltage_v=state.grid_voltage_v,
            current_a=state.grid_current_a,
            power_w=state.grid_power_w,
            import_kwh=state.grid_import_wh / 1000.0,
            export_kwh=0.0,
        )

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
