"""hil: a simulated Schneider Electric EVlink Pro AC (Modbus TCP, remote controller life bit).

Written from /work/shared/reference/modbus.md §2 on its own (no driver code). Unit id 255,
holding registers, 0-based wire addresses, LOW word first for multi-register values:

    1           EV state: 0/1/2/6 = A, 3/4/5/7 = B, 8/9 = C
    2999..3004  current L1-L3 (float32, A)
    3203..3206  energy (u64, Wh)
    4000        life bit: the master writes 1; 2 = the station does not watch it
    4004        maximum current (A): 0 = disabled, else 6..station max

Registers 0..199, 2999..3099, 3200..3209 and 4000..4011 exist (the others in there read 0).

Behaviour (the reference gives no timeout: ``life_bit_timeout_s`` is the simulator's): the
station clears the life bit ``clear_after_s`` after each write of 1 and falls back to its own
fallback current when no 1 arrived for ``life_bit_timeout_s``. With ``watched = False`` the
register reads 2, writes to it are accepted and change nothing, and there is no fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hil.devices import registers as enc
from hil.devices.chargepoint import ChargePoint
from hil.devices.modbus import EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, RegisterDevice

HR_STATE = 1
HR_CURRENT_L1 = 2999
HR_ENERGY = 3203
HR_LIFE_BIT = 4000
HR_MAX_CURRENT = 4004
HOLDING_RANGES = (range(0, 200), range(2999, 3100), range(3200, 3210), range(4000, 4012))
STATE_CODES = {"A": 1, "B": 4, "C": 8, "D": 8, "E": 7, "F": 7}
LIFE_BIT_NOT_WATCHED = 2


class SchneiderEvlink:
    """The station: registers and life-bit watchdog around a ``ChargePoint``."""

    def __init__(
        self,
        charge_point: ChargePoint | None = None,
        *,
        unit_id: int = 255,
        clock: Callable[[], float] = time.monotonic,
        life_bit_timeout_s: float = 6.0,
        clear_after_s: float = 1.0,
        watched: bool = True,
        name: str = "schneider",
    ) -> None:
        self.cp = charge_point or ChargePoint(max_current_a=32.0)
        self.cp.watchdog_timeout_s = life_bit_timeout_s if watched else None
        self.clock = clock
        self.watched = watched
        self.clear_after_s = clear_after_s
        self.life_bit_writes = 0
        self._life_bit_at_s: float | None = None
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
        if not self.watched:
            words[HR_LIFE_BIT] = LIFE_BIT_NOT_WATCHED
        else:
            fresh = self._life_bit_at_s is not None and t - self._life_bit_at_s < self.clear_after_s
            words[HR_LIFE_BIT] = 1 if fresh else 0
        current = cp.current_a(t)
        for p in range(3):
            a, b = enc.f32(current[p], low_word_first=True)
            words[HR_CURRENT_L1 + 2 * p], words[HR_CURRENT_L1 + 2 * p + 1] = a, b
        for i, w in enumerate(enc.u64(round(cp.energy_at_wh(t)), low_word_first=True)):
            words[HR_ENERGY + i] = w
        words[HR_MAX_CURRENT] = round(cp.setpoint_a or 0.0)
        return words

    def _write(self, _function_code: int, address: int, values: list[int]) -> int | None:
        if len(values) != 1:
            return EXC_ILLEGAL_ADDRESS
        value, t, cp = values[0], self.clock(), self.cp
        if address == HR_MAX_CURRENT:
            if value != 0 and not 6 <= value <= cp.max_current_a:
                return EXC_ILLEGAL_VALUE
            cp.write_setpoint(float(value), t)
        elif address == HR_LIFE_BIT:
            if value != 1:
                return EXC_ILLEGAL_VALUE
            self.life_bit_writes += 1
            if self.watched:
                self._life_bit_at_s = t
                cp.feed(t)
        else:
            return EXC_ILLEGAL_ADDRESS
        return None
