"""hil: a simulated Bender CC612/CC613 charge controller ("EMS" Modbus server, TCP).

Written from /work/shared/reference/modbus.md §2 on its own (no driver code). Unit id 255,
holding registers only, u32 high word first, 0-based wire addresses:

    122        IEC state: 1 = A, 2 = B, 3 = C, 4 = D
    212..217   current L1-L3 (u32, mA)
    218..219   energy (u32, Wh)
    220..221   power (u32, W)
    222..227   voltage L1-L3 (u32, V)
    1000       HEMS current limit (A): 0 = pause, else 6..station max

0xFFFFFFFF is "no value" (``no_value = True`` makes every measurement read so). Registers
100..299 and 1000..1001 are readable (the others read 0). No watchdog: a limit stays until
the next write.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hil.devices import registers as enc
from hil.devices.chargepoint import ChargePoint
from hil.devices.modbus import EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, RegisterDevice

HR_STATE = 122
HR_CURRENT_L1 = 212
HR_ENERGY = 218
HR_POWER = 220
HR_VOLTAGE_L1 = 222
HR_CURRENT_LIMIT = 1000
HOLDING_RANGES = (range(100, 300), range(1000, 1002))
NO_VALUE = [0xFFFF, 0xFFFF]
STATE_CODES = {"A": 1, "B": 2, "C": 3, "D": 4}


class BenderController:
    """The controller: registers around a ``ChargePoint``."""

    def __init__(
        self,
        charge_point: ChargePoint | None = None,
        *,
        unit_id: int = 255,
        clock: Callable[[], float] = time.monotonic,
        name: str = "bender",
    ) -> None:
        self.cp = charge_point or ChargePoint(max_current_a=32.0)
        self.clock = clock
        self.no_value = False
        self.device = RegisterDevice(
            name=name,
            unit_id=unit_id,
            render=self._render,
            write=self._write,
            holding=HOLDING_RANGES,
        )

    def _render(self, _function_code: int) -> dict[int, int]:
        t, cp = self.clock(), self.cp
        words: dict[int, int] = {HR_STATE: STATE_CODES.get(cp.state(t), 0)}

        def put(address: int, value: list[int]) -> None:
            words[address], words[address + 1] = value

        current = cp.current_a(t)
        for p in range(3):
            put(
                HR_CURRENT_L1 + 2 * p,
                NO_VALUE if self.no_value else enc.u32(round(current[p] * 1000)),
            )
            put(HR_VOLTAGE_L1 + 2 * p, NO_VALUE if self.no_value else enc.u32(round(cp.voltage_v)))
        put(HR_ENERGY, NO_VALUE if self.no_value else enc.u32(round(cp.energy_at_wh(t))))
        put(HR_POWER, NO_VALUE if self.no_value else enc.u32(round(cp.power_w(t))))
        words[HR_CURRENT_LIMIT] = round(cp.setpoint_a or 0.0)
        return words

    def _write(self, _function_code: int, address: int, values: list[int]) -> int | None:
        if address != HR_CURRENT_LIMIT or len(values) != 1:
            return EXC_ILLEGAL_ADDRESS
        value = values[0]
        if value != 0 and not 6 <= value <= self.cp.max_current_a:
            return EXC_ILLEGAL_VALUE
        self.cp.write_setpoint(float(value), self.clock())
        return None
