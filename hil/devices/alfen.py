"""hil: a simulated Alfen NG9xx socket: register map, setpoint/validity behaviour, TCP server.

Written from /work/shared/reference/modbus.md §2 on its own (no driver code). Holding registers
only (FC03 read, FC16 write; FC06 only for the phases register), socket 1 = unit id 1, wire
addresses 0-based, float32/float64/u32 big-endian with the high word first:

    306/308/310   voltage L1-L3 (V), float32
    320/322/324   current L1-L3 (A), float32
    344           real power sum (W), float32
    374           real energy delivered (Wh), float64 (4 registers)
    1201-1205     mode-3 state, ASCII, two characters per register, NUL padded ("A", "B2", "C2")
    1206          actual applied max current (A), float32
    1208          remaining validity time of the setpoint (s), u32
    1210-1211     modbus slave max current (A), float32, R/W: one FC16 of both registers
    1212          safe current (A), float32, read-only here (configured on the station)
    1214          setpoint accounted for (u16: 1 while the setpoint is in force)
    1215          charge using 1 or 3 phases (u16, R/W)

The other addresses in 300..393 and 1200..1215 are readable and read 0 (not modelled), so a
driver may read any block there; everything else answers exception 2.

Behaviour: each setpoint write is in force for `validity_time_s`; before the first write and
after expiry the station applies its safe current. The applied limit is
min(setpoint or safe current, station max). Writes below 0 or above the station max, NaN,
phases other than 1/3 -> exception 3; a write that splits the float32 at 1210 (one register,
FC06) or touches a read-only register -> exception 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hil.devices import registers as enc
from hil.devices.modbus import (
    EXC_ILLEGAL_ADDRESS,
    EXC_ILLEGAL_VALUE,
    FC_WRITE_MULTIPLE,
    FC_WRITE_SINGLE,
    DeviceServer,
)
from hil.physics import Offer

REG_VOLTAGE_L1 = 306
REG_CURRENT_L1 = 320
REG_POWER_SUM = 344
REG_ENERGY_DELIVERED = 374
REG_MODE3_STATE = 1201
MODE3_STATE_REGISTERS = 5
REG_APPLIED_MAX_CURRENT = 1206
REG_VALIDITY_REMAINING = 1208
REG_MAX_CURRENT_SETPOINT = 1210
REG_SAFE_CURRENT = 1212
REG_SETPOINT_ACCOUNTED = 1214
REG_PHASES = 1215

HOLDING_RANGES = (range(300, 394), range(1200, 1216))
MODE3_STATES = ("A", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F")


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketMeasurement:
    """What the socket's own meter and state machine report."""

    voltage_v: tuple[float, float, float] = (230.0, 230.0, 230.0)
    current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    power_w: float = 0.0
    energy_delivered_wh: float = 0.0
    mode3_state: str = "A"


class AlfenStation:
    """The socket's load-balancing logic (pure): setpoint history, validity, safe current, phases.

    It is the EV's `OfferSource`: the offer at any time follows from the recorded writes.
    """

    def __init__(
        self,
        *,
        max_current_a: float,
        safe_current_a: float,
        validity_time_s: float = 60.0,
        phases: int = 3,
    ) -> None:
        self.max_current_a = max_current_a
        self.safe_current_a = safe_current_a
        self.validity_time_s = validity_time_s
        self._writes: list[tuple[float, float]] = []
        self._phase_writes: list[tuple[float, int]] = [(-math.inf, phases)]

    def write_setpoint(self, current_a: float, t_s: float) -> None:
        """Record a setpoint write at `t_s`; ValueError when the station would refuse it."""
        if not enc.is_finite(current_a) or current_a < 0 or current_a > self.max_current_a:
            raise ValueError(f"setpoint {current_a} A outside [0, {self.max_current_a}]")
        self._writes.append((t_s, current_a))

    def write_phases(self, phases: int, t_s: float) -> None:
        """Record a phases write (1 or 3) at `t_s`; ValueError otherwise."""
        if phases not in (1, 3):
            raise ValueError(f"phases {phases}: 1 or 3")
        self._phase_writes.append((t_s, phases))

    def last_setpoint(self, t_s: float) -> tuple[float, float] | None:
        """(written at, value) of the last setpoint written at or before `t_s`."""
        for at_s, value in reversed(self._writes):
            if at_s <= t_s:
                return (at_s, value)
        return None

    def setpoint_a(self, t_s: float) -> float | None:
        """The last written setpoint (still readable after it expired), None before any."""
        last = self.last_setpoint(t_s)
        return None if last is None else last[1]

    def validity_remaining_s(self, t_s: float) -> float:
        """Seconds the setpoint stays in force; 0 when expired or never written."""
        last = self.last_setpoint(t_s)
        if last is None:
            return 0.0
        return max(0.0, last[0] + self.validity_time_s - t_s)

    def setpoint_in_force(self, t_s: float) -> bool:
        """True while the last setpoint is within its validity time."""
        return self.validity_remaining_s(t_s) > 0

    def applied_limit_a(self, t_s: float) -> float:
        """min(setpoint if in force else the safe current, station max)."""
        last = self.last_setpoint(t_s)
        wanted = (
            last[1] if last is not None and self.setpoint_in_force(t_s) else self.safe_current_a
        )
        return min(wanted, self.max_current_a)

    def phases_at(self, t_s: float) -> int:
        """The phases setting in force at `t_s`."""
        phases = self._phase_writes[0][1]
        for at_s, value in self._phase_writes:
            if at_s <= t_s:
                phases = value
        return phases

    def offer_at(self, t_s: float) -> Offer:
        return Offer(limit_a=self.applied_limit_a(t_s), phases=self.phases_at(t_s))

    def change_times(self, after_s: float, until_s: float) -> list[float]:
        times = {at for at, _ in self._writes} | {
            at + self.validity_time_s for at, _ in self._writes
        }
        times |= {at for at, _ in self._phase_writes}
        return sorted(t for t in times if after_s < t <= until_s)

    def forget_before(self, t_s: float) -> None:
        """Drop history older than `t_s`, keeping what is still in force then."""
        old = [w for w in self._writes if w[0] < t_s]
        self._writes = old[-1:] + [w for w in self._writes if w[0] >= t_s]
        old_p = [w for w in self._phase_writes if w[0] < t_s]
        self._phase_writes = old_p[-1:] + [w for w in self._phase_writes if w[0] >= t_s]


def alfen_registers(
    station: AlfenStation, measurement: SocketMeasurement, t_s: float
) -> dict[int, int]:
    """The socket's holding registers at `t_s` (address -> word)."""
    words: dict[int, int] = {}

    def put(address: int, values: list[int]) -> None:
        for offset, word in enumerate(values):
            words[address + offset] = word

    for phase in range(3):
        put(REG_VOLTAGE_L1 + 2 * phase, enc.float32_to_registers(measurement.voltage_v[phase]))
        put(REG_CURRENT_L1 + 2 * phase, enc.float32_to_registers(measurement.current_a[phase]))
    put(REG_POWER_SUM, enc.float32_to_registers(measurement.power_w))
    put(REG_ENERGY_DELIVERED, enc.float64_to_registers(measurement.energy_delivered_wh))
    put(REG_MODE3_STATE, enc.ascii_to_registers(measurement.mode3_state, MODE3_STATE_REGISTERS))
    put(REG_APPLIED_MAX_CURRENT, enc.float32_to_registers(station.applied_limit_a(t_s)))
    remaining_s = math.ceil(station.validity_remaining_s(t_s))
    put(REG_VALIDITY_REMAINING, enc.uint32_to_registers(remaining_s))
    setpoint = station.setpoint_a(t_s)
    put(REG_MAX_CURRENT_SETPOINT, enc.float32_to_registers(0.0 if setpoint is None else setpoint))
    put(REG_SAFE_CURRENT, enc.float32_to_registers(station.safe_current_a))
    put(REG_SETPOINT_ACCOUNTED, [1 if station.setpoint_in_force(t_s) else 0])
    put(REG_PHASES, [station.phases_at(t_s)])
    return words


class AlfenSocketServer:
    """An Alfen socket on Modbus TCP: the station logic plus live measurements from the site."""

    def __init__(
        self,
        station: AlfenStation,
        *,
        clock: Callable[[], float],
        measurement: Callable[[], SocketMeasurement] = SocketMeasurement,
        unit_id: int = 1,
        name: str = "alfen",
    ) -> None:
        self.station = station
        self._clock = clock
        self._measurement = measurement
        self.server = DeviceServer(
            name=name,
            unit_id=unit_id,
            render=lambda _fc: alfen_registers(self.station, self._measurement(), self._clock()),
            write=self._write,
            holding=HOLDING_RANGES,
        )

    @property
    def port(self) -> int:
        """The TCP port, once started."""
        return self.server.port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen and return the port."""
        return await self.server.start(host, port)

    async def stop(self) -> None:
        """Stop listening."""
        await self.server.stop()

    def _write(self, function_code: int, address: int, values: list[int]) -> int | None:
        if address == REG_MAX_CURRENT_SETPOINT and len(values) == 2:
            if function_code != FC_WRITE_MULTIPLE:
                return EXC_ILLEGAL_ADDRESS
            try:
                self.station.write_setpoint(enc.registers_to_float32(values), self._clock())
            except ValueError:
                return EXC_ILLEGAL_VALUE
            return None
        if (
            address == REG_PHASES
            and len(values) == 1
            and function_code
            in (
                FC_WRITE_SINGLE,
                FC_WRITE_MULTIPLE,
            )
        ):
            try:
                self.station.write_phases(values[0], self._clock())
            except ValueError:
                return EXC_ILLEGAL_VALUE
            return None
        return EXC_ILLEGAL_ADDRESS
