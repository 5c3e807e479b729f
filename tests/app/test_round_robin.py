"""A slow RS-485 line: the meter is read every tick, the EVSEs round-robin within the budget.

The devices here are in-memory stand-ins for the ports (what is under test is the loop's
scheduling); the real RTU path runs in tests/e2e/test_mixed_e2e.py.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from controller.app.service import ControlLoop
from controller.core.model import EvseReading, EvseState, MeterReading
from controller.core.site import (
    Circuit,
    Connector,
    ControlSettings,
    DeviceSpec,
    SerialTransport,
    Site,
)
from controller.store.db import Database

LINE = SerialTransport(port="/dev/ttyUSB0", baudrate=9600)


class Meter:
    read_estimate_s = 0.2

    def __init__(self) -> None:
        self.reads = 0

    @property
    def name(self) -> str:
        return "m"

    async def read(self, now_s: float) -> MeterReading:
        self.reads += 1
        return MeterReading(at_s=now_s, current_a=(1.0 + self.reads * 0.01,) * 3)

    async def close(self) -> None:
        return None


class Evse:
    read_estimate_s = 0.1
    watchdog_refresh_s = None

    def __init__(self, name: str) -> None:
        self._name = name
        self.reads = 0

    @property
    def name(self) -> str:
        return self._name

    async def setup(self, fallback_current_a: float) -> None:
        return None

    async def read(self, now_s: float) -> EvseReading:
        self.reads += 1
        return EvseReading(at_s=now_s, state=EvseState.C)

    async def write_limit(self, current_a: float) -> None:
        return None

    async def close(self) -> None:
        return None


def test_slow_line_reads_meter_every_tick_and_evses_in_turn(tmp_path: Path) -> None:
    names = [f"hd{i}" for i in range(8)]
    conns = tuple(
        Connector(
            id=n,
            evse=DeviceSpec(id=n, driver="heidelberg_ec", transport=LINE, unit_id=i + 1),
            circuit="grid",
            grid_phases=(0, 1, 2),
        )
        for i, n in enumerate(names)
    )
    site = Site(
        id="s", name="s", timezone="Europe/Berlin", nominal_voltage_v=230,
        circuits=(Circuit(id="grid", parent=None, rating_a=200, meter="m"),),
        meters=(DeviceSpec(id="m", driver="eastron_sdm630", transport=LINE, unit_id=20),),
        connectors=conns, control=ControlSettings(tick_s=1.0),
    )  # fmt: skip
    meter = Meter()
    evses = {n: Evse(n) for n in names}
    clock = itertools.count(100.0, 1.0)
    loop = ControlLoop(
        site=site, meters={"m": meter}, evses=evses,  # type: ignore[dict-item]
        db=Database.in_state_dir(tmp_path), clock=lambda: float(next(clock)),
    )  # fmt: skip

    async def run() -> list[list[int]]:
        seen = []
        for _ in range(12):
            before = [e.reads for e in evses.values()]
            await loop.tick()
            seen.append([e.reads - b for e, b in zip(evses.values(), before, strict=True)])
        return seen

    per_tick = asyncio.run(run())
    assert meter.reads == 12  # every tick
    # 0.7 s - 0.2 s for the meter leaves 0.5 s: five EVSEs of 0.1 s per tick, in turn.
    assert all(sum(t) == 5 for t in per_tick), per_tick
    assert all(e.reads in (7, 8) for e in evses.values())  # 60 reads over 8 EVSEs, evenly
