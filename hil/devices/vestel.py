"""hil: a simulated Vestel EVC04 / Webasto Unite wallbox (Modbus TCP, alive register).

Written from /work/shared/reference/modbus.md §2 on its own (no driver code). Unit id 255,
0-based wire addresses, u16 unless noted:

    input    1000        charge point state (OCPP-like: 0 available, 1 preparing, 2 charging,
                         3 suspended by the EVSE, 4 suspended by the EV, 7 unavailable, 8 faulted)
             1001        1 while charging
             1004        cable state: 0 no cable, 1 cable without vehicle, 2 vehicle, 3 locked
             1008/1010/1012   current L1-L3 (mA; single registers, NOT contiguous)
             1014/1016/1018   voltage L1-L3 (V)
             1020..1021  power (u32, W)
             1036..1037  total energy (u32, 0.1 kWh)
    holding  2000        failsafe current (A)
             2002        failsafe timeout (s)
             5004        maximum current (A): 0 = stop, else 6..station max
             6000        alive register

Only the registers above exist: a read across 1009 or 1011 answers exception 2.

Behaviour: the master writes 1 to the alive register; the box clears it every timeout/2 (at
least 3 s) and, when it finds it still clear a whole timeout after the last write, applies the
failsafe current until the master writes 1 again. The real box also closes the TCP socket at
that moment; the simulator does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hil.devices import registers as enc
from hil.devices.chargepoint import ChargePoint
from hil.devices.modbus import (
    EXC_ILLEGAL_ADDRESS,
    EXC_ILLEGAL_VALUE,
    FC_READ_INPUT,
    RegisterDevice,
)

IR_CHARGE_POINT_STATE = 1000
IR_CHARGING = 1001
IR_CABLE_STATE = 1004
IR_CURRENTS = (1008, 1010, 1012)
IR_VOLTAGES = (1014, 1016, 1018)
IR_POWER = 1020
IR_ENERGY = 1036
HR_FAILSAFE_CURRENT = 2000
HR_FAILSAFE_TIMEOUT = 2002
HR_MAX_CURRENT = 5004
HR_ALIVE = 6000
INPUT_RANGES = (
    range(1000, 1002),
    range(1004, 1005),
    *(range(a, a + 1) for a in (*IR_CURRENTS, *IR_VOLTAGES)),
    range(1020, 1022),
    range(1036, 1038),
)
HOLDING_RANGES = tuple(range(a, a + 1) for a in (2000, 2002, 5004, 6000))
FACTORY_TIMEOUT_S = 20
MIN_CLEAR_PERIOD_S = 3.0


class VestelWallbox:
    """The wallbox: registers and alive-register watchdog around a ``ChargePoint``."""

    def __init__(
        self,
        charge_point: ChargePoint | None = None,
        *,
        unit_id: int = 255,
        clock: Callable[[], float] = time.monotonic,
        name: str = "vestel",
    ) -> None:
        self.cp = charge_point or ChargePoint(max_current_a=32.0)
        self.cp.watchdog_timeout_s = FACTORY_TIMEOUT_S
        self.clock = clock
        self._alive_written_s: float | None = None
        self.device = RegisterDevice(
            name=name,
            unit_id=unit_id,
            render=self._render,
            write=self._write,
            holding=HOLDING_RANGES,
            inputs=INPUT_RANGES,
        )

    def alive_register(self, t_s: float) -> int:
        """1 from a write until the box's next clearing (every timeout/2, at least 3 s)."""
        if self._alive_written_s is None:
            return 0
        period = max((self.cp.watchdog_timeout_s or 0.0) / 2, MIN_CLEAR_PERIOD_S)
        return 1 if t_s - self._alive_written_s < period else 0

    def _render(self, function_code: int) -> dict[int, int]:
        t, cp = self.clock(), self.cp
        if function_code != FC_READ_INPUT:
            return {
                HR_FAILSAFE_CURRENT: round(cp.failsafe_current_a),
                HR_FAILSAFE_TIMEOUT: round(cp.watchdog_timeout_s or 0),
                HR_MAX_CURRENT: round(cp.setpoint_a or 0.0),
                HR_ALIVE: self.alive_register(t),
            }
        letter = cp.state(t)
        charging = letter == "C"
        words = {
            IR_CHARGE_POINT_STATE: 8
            if cp.error_state
            else (2 if charging else (1 if cp.ev else 0)),
            IR_CHARGING: 1 if charging else 0,
            IR_CABLE_STATE: 3 if cp.ev is not None else 0,
        }
        current = cp.current_a(t)
        for p in range(3):
            words[IR_CURRENTS[p]] = enc.u16(round(current[p] * 1000))[0]
            words[IR_VOLTAGES[p]] = round(cp.voltage_v)
        words[IR_POWER], words[IR_POWER + 1] = enc.u32(round(cp.power_w(t)))
        words[IR_ENERGY], words[IR_ENERGY + 1] = enc.u32(round(cp.energy_at_wh(t) / 100))
        return words

    def _write(self, _function_code: int, address: int, values: list[int]) -> int | None:
        if len(values) != 1:
            return EXC_ILLEGAL_ADDRESS
        value, t, cp = values[0], self.clock(), self.cp
        if address == HR_MAX_CURRENT:
            if value != 0 and not 6 <= value <= cp.max_current_a:
                return EXC_ILLEGAL_VALUE
            cp.write_setpoint(float(value), t)
        elif address == HR_FAILSAFE_CURRENT:
            if value > cp.max_current_a:
                return EXC_ILLEGAL_VALUE
            cp.failsafe_current_a = float(value)
        elif address == HR_FAILSAFE_TIMEOUT:
            if value < 1:
                return EXC_ILLEGAL_VALUE
            cp.watchdog_timeout_s = float(value)
        elif address == HR_ALIVE:
            if value != 1:
                return EXC_ILLEGAL_VALUE
            self._alive_written_s = t
            cp.feed(t)
        else:
            return EXC_ILLEGAL_ADDRESS
        return None
