"""hil: a simulated Eastron SDM630 grid meter: input-register map, Modbus TCP server, RTU device.

Written from /work/shared/reference/modbus.md §1 on its own (no driver code). Input registers
(FC04), float32 big-endian with the high word first, 0-based wire addresses, unit id 1:

    0x00/0x02/0x04   voltage L1-L3 (V)
    0x06/0x08/0x0A   current L1-L3 (A)
    0x0C/0x0E/0x10   active power L1-L3 (W)
    0x34             total active power (W)
    0x48             total import active energy (kWh)
    0x4A             total export active energy (kWh)

Every address in 0x00..0x4B is readable, so any sub-block can be read in one request (the
18-register V/I/P block from 0, the whole 76 registers); the ones not listed above read 0.0.
Other addresses, and every holding register, answer exception 2.
"""

from __future__ import annotations

from collections.abc import Callable

from hil.devices import registers as enc
from hil.devices.meters import MeterReading
from hil.devices.modbus import DeviceServer, Fault, RegisterDevice

REG_VOLTAGE_L1 = 0x00
REG_CURRENT_L1 = 0x06
REG_POWER_L1 = 0x0C
REG_POWER_TOTAL = 0x34
REG_IMPORT_KWH = 0x48
REG_EXPORT_KWH = 0x4A
INPUT_RANGE = range(0x00, 0x4C)


__all__ = ["MeterReading", "Sdm630Server", "sdm630_device", "sdm630_registers"]


def sdm630_registers(reading: MeterReading) -> dict[int, int]:
    """The meter's input registers 0x00..0x4B (address -> word)."""
    words = dict.fromkeys(INPUT_RANGE, 0)

    def put(address: int, value: float) -> None:
        high, low = enc.float32_to_registers(value)
        words[address] = high
        words[address + 1] = low

    for phase in range(3):
        put(REG_VOLTAGE_L1 + 2 * phase, reading.voltage_v[phase])
        put(REG_CURRENT_L1 + 2 * phase, reading.current_a[phase])
        put(REG_POWER_L1 + 2 * phase, reading.power_w[phase])
    put(REG_POWER_TOTAL, sum(reading.power_w))
    put(REG_IMPORT_KWH, reading.import_kwh)
    put(REG_EXPORT_KWH, reading.export_kwh)
    return words


def sdm630_device(
    reading: Callable[[], MeterReading] = MeterReading, *, unit_id: int = 1, name: str = "sdm630"
) -> RegisterDevice:
    """The meter as a ``RegisterDevice`` (for an ``RtuLine``, the SDM630's own link)."""
    return RegisterDevice(
        name=name,
        unit_id=unit_id,
        render=lambda _fc: sdm630_registers(reading()),
        inputs=(INPUT_RANGE,),
    )


class Sdm630Server:
    """The meter on Modbus TCP; `reading` is called on every request for live values."""

    def __init__(
        self,
        reading: Callable[[], MeterReading] = MeterReading,
        *,
        unit_id: int = 1,
        name: str = "sdm630",
    ) -> None:
        self._reading = reading
        self.server = DeviceServer(
            name=name,
            unit_id=unit_id,
            render=lambda _fc: sdm630_registers(self._reading()),
            inputs=(INPUT_RANGE,),
        )

    @property
    def port(self) -> int:
        """The TCP port, once started."""
        return self.server.port

    @property
    def fault(self) -> Fault:
        """The injected fault (Fault.NONE: answering normally)."""
        return self.server.fault

    @fault.setter
    def fault(self, value: Fault) -> None:
        self.server.fault = value

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen and return the port."""
        return await self.server.start(host, port)

    async def stop(self) -> None:
        """Stop listening."""
        await self.server.stop()
