"""App layer: the technician tools' socket commands, ``bus_scan`` and ``device_read``.

While the service runs it is the one owner of every bus it drives: a second process opening an
RS-485 line would garble frames, and some EVSEs take a single Modbus master (Vestel) or two
(Alfen). So `evsite bus scan` and `evsite device read` come here, and the work goes through the
service's own client of that bus:

- between ticks: ``TickGate`` learns from each tick's end when the next one starts and lets a
  request through only when its worst case (timeout plus gap) ends before then, so the tick's
  own requests never wait behind a probe (after three windows too short for one probe, a probe
  goes right after a tick: it may then delay the next tick by at most its own budget);
- a line with more than ``SCAN_MAX_TICK_UNITS`` devices in the tick has little idle time left,
  and a scan there is refused unless forced;
- a line the service is not using is opened for the scan and closed after it;
- a port the service drives at other line settings is refused: changing them would cut off
  its devices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.app.control_socket import Answer, Command, CommandRefused
from controller.core.errors import EvsiteError
from controller.core.ports import Evse, Meter
from controller.core.site import SerialTransport, Site, TcpTransport, Transport
from drivers.modbus.bus import BusPool, bus_key
from drivers.modbus.client import ModbusClient
from drivers.modbus.device import RegisterMapDevice
from drivers.modbus.readout import read_out
from drivers.modbus.scan import BusScanner

# A line with more devices than this in the tick is refused for scanning unless ``force``.
SCAN_MAX_TICK_UNITS = 4
# Windows too short for a probe in a row before one goes right after a tick anyway.
MAX_MISSED_WINDOWS = 3

_PAYLOAD = ConfigDict(extra="forbid", strict=True, frozen=True)


class TickGate:
    """Lets the tools' bus requests run between the control loop's ticks."""

    def __init__(
        self,
        *,
        tick_s: float,
        clock: Callable[[], float] = time.monotonic,
        guard_s: float = 0.02,
    ) -> None:
        self._tick_s = tick_s
        self._clock = clock
        self._guard_s = guard_s
        self._window_end: float | None = None
        self._next_tick = asyncio.Event()

    def tick_done(self, tick_ms: float) -> None:
        """Call at the end of every tick with its duration (ControlLoop.last_tick_ms)."""
        started = self._clock() - tick_ms / 1000.0
        self._window_end = started + self._tick_s - self._guard_s
        event, self._next_tick = self._next_tick, asyncio.Event()
        event.set()

    def fits(self, cost_s: float) -> bool:
        end = self._window_end
        return end is not None and self._clock() + cost_s <= end

    async def window(self, cost_s: float) -> None:
        """Return once a request costing up to ``cost_s`` ends before the next tick starts."""
        missed = 0
        while not self.fits(cost_s):
            await self._after_next_tick()
            if self.fits(cost_s):
                return
            missed += 1
            if missed >= MAX_MISSED_WINDOWS:
                return  # right after a tick: the most room there will be

    async def _after_next_tick(self) -> None:
        # A loop that stopped ticking (shutting down) must not hang a technician's request.
        try:
            await asyncio.wait_for(self._next_tick.wait(), 2 * self._tick_s + 1.0)
        except TimeoutError:
            self._window_end = None


class BusScanRequest(BaseModel):
    """``bus_scan``: a serial port and its line settings, or a TCP host."""

    model_config = _PAYLOAD
    port: str | None = None
    baudrate: int | None = Field(default=None, gt=0)
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    host: str | None = None
    tcp_port: int = Field(default=502, ge=1, le=65535)
    rtu_over_tcp: bool = False
    units: list[int] = Field(min_length=1, max_length=256)
    unit_timeout_s: float = Field(default=0.1, gt=0, le=2.0)  # how long each unit may take
    force: bool = False


class DeviceReadRequest(BaseModel):
    """``device_read``: one configured device by id."""

    model_config = _PAYLOAD
    device: str


def scan_transport(req: BusScanRequest) -> Transport:
    """The bus a scan request names; CommandRefused naming the field at fault."""
    if (req.port is None) == (req.host is None):
        raise CommandRefused("give a serial port or a TCP host, one of them", field="port")
    if req.port is not None:
        if req.baudrate is None:
            raise CommandRefused("a serial scan needs the baud rate", field="baudrate")
        if req.parity is None:
            raise CommandRefused("a serial scan needs the parity (N, E or O)", field="parity")
        return SerialTransport(
            port=req.port,
            baudrate=req.baudrate,
            parity=req.parity,
            stopbits=req.stopbits,
            bytesize=req.bytesize,
        )
    assert req.host is not None
    return TcpTransport(host=req.host, port=req.tcp_port, rtu_over_tcp=req.rtu_over_tcp)


def devices_on(site: Site, transport: Transport) -> list[str]:
    """The configured devices on ``transport``'s bus (all of them read every tick)."""
    key = bus_key(transport)
    specs = [*site.meters, *(c.evse for c in site.connectors)]
    return [s.id for s in specs if bus_key(s.transport) == key]


def device_commands(
    *,
    site: Site,
    meters: Mapping[str, Meter],
    evses: Mapping[str, Evse],
    pool: BusPool,
    gate: TickGate,
    max_tick_units: int = SCAN_MAX_TICK_UNITS,
) -> dict[str, Command[Any]]:
    """``bus_scan`` and ``device_read`` over the service's devices and bus pool."""
    scanning: set[tuple[str, str, int]] = set()

    async def bus_scan(req: BusScanRequest) -> Answer:
        transport = scan_transport(req)
        key = bus_key(transport)
        if key in scanning:
            raise CommandRefused(f"a scan of {transport.describe()} is already running")
        shared = pool.find(transport)
        users = devices_on(site, transport)
        client: ModbusClient
        if shared is not None:
            if shared.transport != transport and isinstance(transport, SerialTransport):
                raise CommandRefused(
                    f"the service drives {shared.transport.describe()}; scanning it at other "
                    "line settings would cut off its devices",
                    field="baudrate",
                )
            if len(users) > max_tick_units and not req.force:
                raise CommandRefused(
                    f"{len(users)} devices on {transport.describe()} are read every tick "
                    f"({', '.join(users)}); a scan would take the little idle time the line "
                    "has left: add --force to scan anyway",
                    field="force",
                )
            client = shared
        else:
            client = ModbusClient(transport, timeout_s=max(req.unit_timeout_s, 0.3))
        scanning.add(key)
        try:
            scanner = BusScanner(
                client,
                timeout_s=req.unit_timeout_s,
                gate=gate.window if shared is not None else None,
            )
            report = await scanner.scan(req.units)
        finally:
            scanning.discard(key)
            if shared is None:
                await client.close()
        return {
            "via": "service",
            "shared_with": users if shared is not None else [],
            "scan": report.as_dict(),
        }

    async def device_read(req: DeviceReadRequest) -> Answer:
        device = meters.get(req.device) or evses.get(req.device)
        if device is None:
            known = ", ".join(sorted([*meters, *evses]))
            raise CommandRefused(f"no device {req.device!r}; devices: {known}", field="device")
        if not isinstance(device, RegisterMapDevice):
            raise CommandRefused(f"{req.device} is not a Modbus register-map device")
        client = device.client
        blocks = len(device.read_plan) + (1 if device.register_map.address_base else 0)
        await gate.window(blocks * (client.call_budget_s + client.inter_frame_gap_s))
        try:
            readout = await read_out(device)
        except EvsiteError as exc:
            raise CommandRefused(f"{req.device}: {exc}") from exc
        return {"via": "service", "device": readout.as_dict()}

    return {
        "bus_scan": Command(BusScanRequest, bus_scan),
        "device_read": Command(DeviceReadRequest, device_read),
    }
