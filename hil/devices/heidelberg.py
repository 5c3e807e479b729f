"""hil: a simulated Heidelberg / Amperfied Energy Control wallbox (Modbus RTU).

Written from /work/shared/reference/modbus.md §2 on its own (no driver code). Unit id from DIP
switch S4 (default 1), 19200 baud 8E1. 0-based wire addresses, u16 unless noted:

    input    4        register layout version
             5        charging state: 2/3 = A1/A2, 4/5 = B1/B2, 6/7 = C1/C2, 8 = derating,
                      9 = E, 10 = F, 11 = error
             6..8     current L1-L3 (0.1 A)
             9        PCB temperature (0.1 degC)
             10..12   voltage L1-L3 (V)
             13       external lock state
             14       power (W)
             15..16   energy since power-on (u32, high word first, Wh)
             17..18   energy since installation (u32, high word first, Wh)
             100/101  hardware maximum / minimum current (A)
    holding  257      watchdog timeout (ms; factory 15000, 0 = off)
             258      standby (4 = standby disabled)
             259      remote lock (1 = unlocked)
             261      maximum current (0.1 A): 0 = stop, 60..160
             262      failsafe current (0.1 A)

Behaviour: any request addressed to the box feeds its watchdog; when the timeout passes
without one, the box applies its failsafe current (state F when that is below 6 A) and needs
``recover_s`` (about 10 s on the real box) after the next request to leave it. With standby
enabled (258 != 4) the box stops answering once it has been idle in state A for
``standby_after_s``. A locked box (259 = 0) does not charge. Writes take FC06 or FC16; a value
out of range answers exception 3, an unknown or read-only register exception 2.
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
    FC_WRITE_MULTIPLE,
    FC_WRITE_SINGLE,
    RegisterDevice,
)

IR_LAYOUT_VERSION = 4
IR_STATE = 5
IR_CURRENT_L1 = 6
IR_TEMPERATURE = 9
IR_VOLTAGE_L1 = 10
IR_LOCK_STATE = 13
IR_POWER = 14
IR_ENERGY_POWER_ON = 15
IR_ENERGY_INSTALLED = 17
IR_HW_MAX_CURRENT = 100
IR_HW_MIN_CURRENT = 101
HR_WATCHDOG_TIMEOUT_MS = 257
HR_STANDBY = 258
HR_REMOTE_LOCK = 259
HR_MAX_CURRENT = 261
HR_FAILSAFE_CURRENT = 262

INPUT_RANGES = (range(4, 19), range(100, 102))
HOLDING_RANGES = (range(257, 263),)
STANDBY_DISABLED = 4
FACTORY_TIMEOUT_MS = 15000
LAYOUT_VERSION = 0x0108


class HeidelbergBox:
    """The wallbox: its registers around a ``ChargePoint`` (max 16 A)."""

    def __init__(
        self,
        charge_point: ChargePoint | None = None,
        *,
        unit_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
        recover_s: float = 10.0,
        standby_after_s: float | None = None,
        name: str = "heidelberg",
    ) -> None:
        self.cp = charge_point or ChargePoint(max_current_a=16.0)
        self.cp.recover_s = recover_s
        self.cp.watchdog_timeout_s = FACTORY_TIMEOUT_MS / 1000.0
        self.clock = clock
        self.standby = 0  # standby enabled, as from the factory
        self.remote_lock = 1
        self.standby_after_s = standby_after_s
        self._idle_since_s = clock()
        self.device = RegisterDevice(
            name=name,
            unit_id=unit_id,
            render=self._render,
            write=self._write,
            holding=HOLDING_RANGES,
            inputs=INPUT_RANGES,
            on_request=self._on_request,
            asleep=self._asleep,
        )

    # --- behaviour ---------------------------------------------------------------------------

    def _on_request(self) -> None:
        self.cp.feed(self.clock())

    def _asleep(self) -> bool:
        t = self.clock()
        if self.cp.state(t) != "A":
            self._idle_since_s = t
            return False
        if self.standby == STANDBY_DISABLED or self.standby_after_s is None:
            return False
        return t - self._idle_since_s >= self.standby_after_s

    def state_code(self, t_s: float) -> int:
        cp = self.cp
        if cp.error_state == "E":
            return 9
        if cp.error_state is not None:
            return 11
        if cp.in_failsafe(t_s) and cp.failsafe_current_a < cp.min_current_a:
            return 10
        letter = cp.state(t_s)
        offered = cp.applied_limit_a(t_s) >= cp.min_current_a
        if letter == "A":
            return 3 if offered else 2
        if letter == "B":
            return 5 if offered else 4
        return 7

    # --- registers ---------------------------------------------------------------------------

    def _render(self, function_code: int) -> dict[int, int]:
        t = self.clock()
        cp = self.cp
        if function_code != FC_READ_INPUT:
            setpoint = 0.0 if cp.setpoint_a is None else cp.setpoint_a
            timeout_ms = round((cp.watchdog_timeout_s or 0.0) * 1000)
            return {
                HR_WATCHDOG_TIMEOUT_MS: timeout_ms,
                HR_STANDBY: self.standby,
                HR_REMOTE_LOCK: self.remote_lock,
                HR_MAX_CURRENT: round(setpoint * 10),
                HR_FAILSAFE_CURRENT: round(cp.failsafe_current_a * 10),
            }
        words: dict[int, int] = {
            IR_LAYOUT_VERSION: LAYOUT_VERSION,
            IR_STATE: self.state_code(t),
            IR_TEMPERATURE: 250,
            IR_LOCK_STATE: 0 if self.remote_lock else 1,
            IR_POWER: enc.u16(round(cp.power_w(t)))[0],
            IR_HW_MAX_CURRENT: round(cp.max_current_a),
            IR_HW_MIN_CURRENT: round(cp.min_current_a),
        }
        current = cp.current_a(t)
        for p in range(3):
            words[IR_CURRENT_L1 + p] = round(current[p] * 10)
            words[IR_VOLTAGE_L1 + p] = round(cp.voltage_v)
        energy = enc.u32(round(cp.energy_at_wh(t)))
        words[IR_ENERGY_POWER_ON], words[IR_ENERGY_POWER_ON + 1] = energy
        words[IR_ENERGY_INSTALLED], words[IR_ENERGY_INSTALLED + 1] = energy
        return words

    def _write(self, function_code: int, address: int, values: list[int]) -> int | None:
        if function_code not in (FC_WRITE_SINGLE, FC_WRITE_MULTIPLE) or len(values) != 1:
            return EXC_ILLEGAL_ADDRESS
        value, t = values[0], self.clock()
        if address == HR_MAX_CURRENT:
            if value != 0 and not 60 <= value <= round(self.cp.max_current_a * 10):
                return EXC_ILLEGAL_VALUE
            self.cp.write_setpoint(value / 10.0, t)
        elif address == HR_FAILSAFE_CURRENT:
            if value != 0 and not 60 <= value <= round(self.cp.max_current_a * 10):
                return EXC_ILLEGAL_VALUE
            self.cp.failsafe_current_a = value / 10.0
        elif address == HR_WATCHDOG_TIMEOUT_MS:
            self.cp.watchdog_timeout_s = value / 1000.0 if value else None
        elif address == HR_STANDBY:
            self.standby = value
        elif address == HR_REMOTE_LOCK:
            if value not in (0, 1):
                return EXC_ILLEGAL_VALUE
            self.remote_lock = value
            self.cp.enabled = value == 1
        else:
            return EXC_ILLEGAL_ADDRESS
        return None
