"""hil: simulated Phoenix Contact charge controllers: EV-CC-...-ETH and CHARX SEC-3xxx (TCP).

Written from /work/shared/reference/modbus.md §2 on its own (no driver code).

EV-CC-...-ETH (Wallbe, ESL Walli, Compleo), unit id 255 (DIP 10 ON):

    input    100        IEC state, ASCII letter in the LOW byte ('A'..'F')
             108..113   voltage L1-L3 (i32, LOW word first, V)
             114..119   current L1-L3 (i32, LOW word first, A)
             120..121   power (i32, low word first, W)
    holding  528        maximum current (A), FC06; 6..station max
             904..905   energy (u32, low word first, Wh)
    coil     400        charging enabled (how a master pauses the box)

Input registers 100..135, holding 500..599 and 900..909, coils 400..419 exist.

CHARX SEC-3xxx, unit id 1, holding registers (FC03) read high word first, one block per
connector at ``connector * 1000``:

    base+238..243   current L1-L3 (i32, mA)
    base+244..245   power (i32, mW)
    base+250..253   energy (i64, Wh)
    base+299        IEC state, ASCII letter in the HIGH byte
    base+300        enable (1/0)
    base+301        maximum current (A): 0 = off, else 6..max; FC16 only (FC06 -> exception 1)

Registers 100..120 (114: number of connectors) and base+200..base+320 exist. Neither model has a
watchdog: a limit stays until the next write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from hil.devices import registers as enc
from hil.devices.chargepoint import ChargePoint
from hil.devices.modbus import (
    EXC_ILLEGAL_ADDRESS,
    EXC_ILLEGAL_FUNCTION,
    EXC_ILLEGAL_VALUE,
    FC_READ_COILS,
    FC_READ_INPUT,
    FC_WRITE_COIL,
    FC_WRITE_MULTIPLE,
    RegisterDevice,
)

# --- EV-CC-...-ETH ---------------------------------------------------------------------------

ETH_IR_STATE = 100
ETH_IR_VOLTAGE_L1 = 108
ETH_IR_CURRENT_L1 = 114
ETH_IR_POWER = 120
ETH_HR_MAX_CURRENT = 528
ETH_HR_ENERGY = 904
ETH_COIL_ENABLE = 400
ETH_INPUT_RANGES = (range(100, 136),)
ETH_HOLDING_RANGES = (range(500, 600), range(900, 910))
ETH_COIL_RANGES = (range(400, 420),)


class PhoenixEvEth:
    """An EV-CC-...-ETH controller around a ``ChargePoint``."""

    def __init__(
        self,
        charge_point: ChargePoint | None = None,
        *,
        unit_id: int = 255,
        clock: Callable[[], float] = time.monotonic,
        name: str = "phoenix_ev_eth",
    ) -> None:
        self.cp = charge_point or ChargePoint(max_current_a=32.0)
        self.clock = clock
        self.device = RegisterDevice(
            name=name,
            unit_id=unit_id,
            render=self._render,
            write=self._write,
            holding=ETH_HOLDING_RANGES,
            inputs=ETH_INPUT_RANGES,
            coils=ETH_COIL_RANGES,
        )

    def _render(self, function_code: int) -> dict[int, int]:
        t, cp = self.clock(), self.cp
        if function_code == FC_READ_COILS:
            return {ETH_COIL_ENABLE: 1 if cp.enabled else 0}
        words: dict[int, int] = {}

        def put(address: int, value: list[int]) -> None:
            for i, w in enumerate(value):
                words[address + i] = w

        if function_code == FC_READ_INPUT:
            words[ETH_IR_STATE] = ord(cp.state(t)[0])  # low byte, high byte 0
            current = cp.current_a(t)
            for p in range(3):
                put(ETH_IR_VOLTAGE_L1 + 2 * p, enc.i32(round(cp.voltage_v), low_word_first=True))
                put(ETH_IR_CURRENT_L1 + 2 * p, enc.i32(round(current[p]), low_word_first=True))
            put(ETH_IR_POWER, enc.i32(round(cp.power_w(t)), low_word_first=True))
            return words
        words[ETH_HR_MAX_CURRENT] = round(cp.setpoint_a or 0.0)
        put(ETH_HR_ENERGY, enc.u32(round(cp.energy_at_wh(t)), low_word_first=True))
        return words

    def _write(self, function_code: int, address: int, values: list[int]) -> int | None:
        t = self.clock()
        if function_code == FC_WRITE_COIL:
            if address != ETH_COIL_ENABLE:
                return EXC_ILLEGAL_ADDRESS
            self.cp.advance(t)
            self.cp.enabled = bool(values[0])
            return None
        if address != ETH_HR_MAX_CURRENT or len(values) != 1:
            return EXC_ILLEGAL_ADDRESS
        if not 6 <= values[0] <= self.cp.max_current_a:
            return EXC_ILLEGAL_VALUE
        self.cp.write_setpoint(float(values[0]), t)
        return None


# --- CHARX SEC-3xxx ------------------------------------------------------------------------------

CHARX_HR_CONNECTORS = 114
CHARX_BLOCK = 1000
CHARX_CURRENT_L1 = 238
CHARX_POWER = 244
CHARX_ENERGY = 250
CHARX_STATE = 299
CHARX_ENABLE = 300
CHARX_MAX_CURRENT = 301


class PhoenixCharx:
    """A CHARX controller with one ``ChargePoint`` per connector (1, 2, ...)."""

    def __init__(
        self,
        connectors: Sequence[ChargePoint] = (),
        *,
        unit_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
        name: str = "phoenix_charx",
    ) -> None:
        self.connectors = list(connectors) or [ChargePoint(max_current_a=32.0)]
        self.clock = clock
        blocks = [
            range(n * CHARX_BLOCK + 200, n * CHARX_BLOCK + 321)
            for n in range(1, len(self.connectors) + 1)
        ]
        self.device = RegisterDevice(
            name=name,
            unit_id=unit_id,
            render=self._render,
            write=self._write,
            holding=(range(100, 121), *blocks),
        )

    def _render(self, _function_code: int) -> dict[int, int]:
        t = self.clock()
        words: dict[int, int] = {CHARX_HR_CONNECTORS: len(self.connectors)}

        def put(address: int, value: list[int]) -> None:
            for i, w in enumerate(value):
                words[address + i] = w

        for n, cp in enumerate(self.connectors, start=1):
            base = n * CHARX_BLOCK
            current = cp.current_a(t)
            for p in range(3):
                put(base + CHARX_CURRENT_L1 + 2 * p, enc.i32(round(current[p] * 1000)))
            put(base + CHARX_POWER, enc.i32(round(cp.power_w(t) * 1000)))
            put(base + CHARX_ENERGY, enc.i64(round(cp.energy_at_wh(t))))
            words[base + CHARX_STATE] = ord(cp.state(t)[0]) << 8  # high byte
            words[base + CHARX_ENABLE] = 1 if cp.enabled else 0
            words[base + CHARX_MAX_CURRENT] = round(cp.setpoint_a or 0.0)
        return words

    def _write(self, function_code: int, address: int, values: list[int]) -> int | None:
        n, offset = divmod(address, CHARX_BLOCK)
        if not 1 <= n <= len(self.connectors) or len(values) != 1:
            return EXC_ILLEGAL_ADDRESS
        cp, t = self.connectors[n - 1], self.clock()
        if offset == CHARX_MAX_CURRENT:
            if function_code != FC_WRITE_MULTIPLE:
                return EXC_ILLEGAL_FUNCTION
            if values[0] != 0 and not 6 <= values[0] <= cp.max_current_a:
                return EXC_ILLEGAL_VALUE
            cp.write_setpoint(float(values[0]), t)
            return None
        if offset == CHARX_ENABLE:
            if values[0] not in (0, 1):
                return EXC_ILLEGAL_VALUE
            cp.advance(t)
            cp.enabled = values[0] == 1
            return None
        return EXC_ILLEGAL_ADDRESS
