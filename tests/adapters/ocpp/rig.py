"""Test support: the OCPP link of a site on an event loop, with real parts around it.

``Site`` is everything `evsite run` builds around the link except the Modbus devices and the
engine: a real SQLite state file, the real SessionDesk and SlotBook, the real outbox, the
app's SiteAdapter and OcppLink. The test plays the EVSEs (``plug``, ``unplug``, the energy
register) and a background task ticks the desk and the link every 0.1 s as the control loop
does. "Restarting the controller" is a new Site on the same state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from controller.adapters.ocpp.settings import OcppSettings
from controller.app.ocpp import OcppLink, SiteAdapter
from controller.app.sessions import SessionDesk
from controller.app.slots import SlotBook
from controller.config import load_config_text
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import SessionPhase, SessionSettings
from controller.core.slots import LimitSlot
from controller.store.db import Database
from controller.store.outbox import Outbox
from controller.store.sessions import SessionStore

SITE_YAML = """\
site: {id: ocpp-rig, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}, max_current_a: 32}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}, max_current_a: 16}
"""
SITE = load_config_text(SITE_YAML).site
TZ = ZoneInfo("Europe/Berlin")
TICK_S = 0.1

# Short enough for tests, long enough that nothing races.
FAST_KEYS = {
    "MeterValueSampleInterval": "1",
    "TransactionMessageRetryInterval": "1",
    "TransactionMessageAttempts": "3",
    "HeartbeatInterval": "300",
}


def settings(url: str, **kw: Any) -> OcppSettings:
    keys = {**FAST_KEYS, **kw.pop("keys", {})}
    base = OcppSettings(
        url=url.removesuffix("/CP_1"),  # the link appends the identity
        identity="CP_1",
        keys=keys,
        call_timeout_s=3.0,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    return replace(base, **kw)


class Site:
    """A site with its OCPP link, on the running event loop (``async with``)."""

    def __init__(
        self,
        state_dir: Path,
        ocpp: OcppSettings,
        *,
        free_vend: bool = False,
        clean_shutdown: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.db = Database.in_state_dir(state_dir)
        self.book = SlotBook(self.db, SITE)
        self.outbox = Outbox(self.db)
        self.desk = SessionDesk(
            site=SITE,
            store=SessionStore(self.db),
            settings=SessionSettings(free_vend=free_vend, connection_timeout_s=60.0),
            clock=time.monotonic,
            wall_clock=lambda: datetime.now(TZ),
        )
        self.desk.restore(clean_shutdown=clean_shutdown)
        self.cars: dict[str, bool] = {"cp1": False, "cp2": False}
        self.energy_wh: dict[str, float] = {"cp1": 1000.0, "cp2": 5000.0}
        self.current_a: dict[str, float] = {"cp1": 0.0, "cp2": 0.0}
        self.offline: set[str] = set()
        self.restarts = 0
        self.port = SiteAdapter(
            site=SITE,
            desk=self.desk,
            book=self.book,
            db=self.db,
            readings=self.readings,
            allocation=lambda: None,
            health=self._health,
            restart=self._restart,
        )
        self.link = OcppLink(
            ocpp,
            site=SITE,
            db=self.db,
            outbox=self.outbox,
            desk=self.desk,
            port=self.port,
            state_dir=state_dir,
            version="test",
        )
        self.status: dict[str, Any] = {}
        self._ticker: asyncio.Task[None] | None = None

    def _health(self, cid: str) -> tuple[bool, bool, int, str | None]:
        if cid in self.offline:
            return False, True, 5, "no answer"
        return True, True, 0, None

    def _restart(self) -> None:
        self.restarts += 1

    @property
    def station(self) -> Any:
        return self.link.stations[0]

    def readings(self) -> dict[str, EvseReading | None]:
        now = time.monotonic()
        out: dict[str, EvseReading | None] = {}
        for cid, present in self.cars.items():
            amps = self.current_a[cid] if present and self._drawing(cid) else 0.0
            state = EvseState.C if amps > 0 else (EvseState.B if present else EvseState.A)
            out[cid] = EvseReading(
                at_s=now,
                state=state,
                current_a=(amps, amps, amps),
                power_w=amps * 230 * 3,
                energy_wh=self.energy_wh[cid],
            )
        return out

    def _drawing(self, cid: str) -> bool:
        """The car draws only in a transaction, as the engine allows (0 A otherwise)."""
        rec = self.desk.record(cid)
        return rec is not None and rec.phase is SessionPhase.ACTIVE

    def tick(self) -> None:
        self.desk.observe(self.readings(), time.monotonic(), datetime.now(TZ))
        self.link.on_tick(self.status)

    def slots(self) -> tuple[LimitSlot, ...]:
        return self.link.slots()

    def plug(self, cid: str, *, current_a: float = 16.0) -> None:
        self.cars[cid] = True
        self.current_a[cid] = current_a

    def unplug(self, cid: str) -> None:
        self.cars[cid] = False
        self.current_a[cid] = 0.0

    async def ticking(self) -> None:
        while True:
            self.energy_wh = {
                c: e
                + (
                    self.current_a[c] * 230 * 3 * TICK_S / 3600
                    if self.cars[c] and self._drawing(c)
                    else 0.0
                )
                for c, e in self.energy_wh.items()
            }
            self.tick()
            await asyncio.sleep(TICK_S)

    async def __aenter__(self) -> Site:
        await self.link.start()
        self._ticker = asyncio.create_task(self.ticking())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.link.close()
        self.db.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)
