"""A driver bug costs its own device, never the tick; a connector that was offline at start is
set up when it answers, and until then gets no more than its fallback current."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.app.service import ControlLoop
from controller.core.model import EvseReading, EvseState
from controller.core.site import Circuit, Connector, DeviceSpec, Site, TcpTransport
from controller.store.db import Database
from tests.app.test_round_robin import Meter


class Box:
    watchdog_refresh_s = None

    def __init__(self, name: str, *, crash: bool = False, setup_fails: int = 0) -> None:
        self._name = name
        self.crash = crash
        self.setup_fails = setup_fails
        self.setups = 0
        self.writes: list[float] = []

    @property
    def name(self) -> str:
        return self._name

    async def setup(self, fallback_current_a: float) -> None:
        self.setups += 1
        if self.setups <= self.setup_fails:
            from controller.core.errors import DeviceUnavailable

            raise DeviceUnavailable("no answer")

    async def read(self, now_s: float) -> EvseReading:
        if self.crash:
            raise KeyError("a field the map does not have")
        return EvseReading(at_s=now_s, state=EvseState.C)

    async def write_limit(self, current_a: float) -> None:
        self.writes.append(current_a)

    async def close(self) -> None:
        return None


def _loop(tmp_path: Path, boxes: dict[str, Box]) -> ControlLoop:
    conns = tuple(
        Connector(
            id=n,
            evse=DeviceSpec(
                id=n, driver="alfen_ng9xx", transport=TcpTransport(host="h"), unit_id=1
            ),
            circuit="grid",
            grid_phases=(0, 1, 2),
        )
        for n in boxes
    )
    site = Site(
        id="s", name="s", timezone="Europe/Berlin", nominal_voltage_v=230,
        circuits=(Circuit(id="grid", parent=None, rating_a=63, meter="m"),),
        meters=(DeviceSpec(id="m", driver="eastron_sdm630", transport=TcpTransport(host="h"),
                           unit_id=1),),
        connectors=conns,
    )  # fmt: skip
    return ControlLoop(
        site=site, meters={"m": Meter()}, evses=boxes,  # type: ignore[dict-item]
        db=Database.in_state_dir(tmp_path), clock=lambda: NOW[0],
    )  # fmt: skip


NOW = [100.0]  # the tests' clock: one second per tick


async def _ticks(loop: ControlLoop, n: int) -> None:
    await loop.start()
    for _ in range(n):
        NOW[0] += 1.0
        await loop.tick()


def test_a_crashing_driver_costs_only_its_device(tmp_path: Path) -> None:
    boxes = {"bad": Box("bad", crash=True), "good": Box("good")}
    loop = _loop(tmp_path, boxes)

    asyncio.run(_ticks(loop, 3))
    assert loop.ticks == 3
    assert not loop.health["bad"].online and "KeyError" in (loop.health["bad"].last_error or "")
    assert loop.health["good"].online and max(boxes["good"].writes) > 6.0


def test_setup_is_retried_and_the_limit_held_at_fallback_until_it_succeeds(
    tmp_path: Path,
) -> None:
    boxes = {"late": Box("late", setup_fails=3)}
    loop = _loop(tmp_path, boxes)

    asyncio.run(_ticks(loop, 8))
    box = boxes["late"]
    assert box.setups >= 4  # failed at start and in the first ticks, then succeeded
    before_setup = box.writes[: box.setups - 1]
    assert all(w <= 6.0 for w in before_setup), box.writes
    assert max(box.writes) > 6.0  # once set up, it gets its share
