"""A session whose car left while the controller was down (ended PowerLoss / Reboot at the
restart) is priced to the last moment the controller knew of it: the hours it was down are not
billed as session time, since nobody knows when the car left."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from controller.app.payments import SessionPricing
from controller.app.sessions import SessionDesk
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import SessionSettings
from controller.core.tariff import CostBreakdown
from controller.store.db import Database
from controller.store.journal import PaymentJournal
from controller.store.sessions import SessionStore
from tests.app.test_payments import BERLIN, SITE, T0, TARIFF


class _Run:
    """One run of the controller (desk + pricing) on the state file."""

    def __init__(self, path: Path, now_s: float, *, clean: bool) -> None:
        self.db = Database(path)
        self.now_s = now_s
        self.desk = SessionDesk(
            site=SITE,
            store=SessionStore(self.db),
            settings=SessionSettings(free_vend=True),
            clock=lambda: self.now_s,
            wall_clock=lambda: T0 + timedelta(seconds=self.now_s),
        )
        self.desk.restore(clean_shutdown=clean)
        self.pricing = SessionPricing(
            site=SITE, desk=self.desk, journal=PaymentJournal(self.db, tz=BERLIN),
            tariff=lambda: TARIFF, clock=lambda: self.now_s, save_period_s=10.0,
        )  # fmt: skip
        self.over: list[CostBreakdown | None] = []
        self.pricing.over_listeners.append(lambda _rec, b: self.over.append(b))

    def tick(self, energy_wh: float, state: EvseState) -> None:
        self.now_s += 1.0
        wall = T0 + timedelta(seconds=self.now_s)
        reading = EvseReading(
            at_s=self.now_s,
            state=state,
            current_a=(16.0, 16.0, 16.0) if state is EvseState.C else (0.0, 0.0, 0.0),
            energy_wh=energy_wh,
        )
        readings = {"cp1": reading}
        self.desk.observe(readings, self.now_s, wall)
        self.pricing.on_tick(readings, None, wall)


@pytest.mark.parametrize("clean", [False, True], ids=["PowerLoss", "Reboot"])
def test_the_downtime_of_a_car_that_left_meanwhile_is_not_billed(
    tmp_path: Path, clean: bool
) -> None:
    first = _Run(tmp_path / "state.sqlite3", 100.0, clean=True)
    energy = 1000.0
    for _ in range(31):  # started on the 1st tick, then 30 s at 11 kW
        first.tick(energy, EvseState.C)
        energy += 11_000 / 3600
    if clean:
        first.desk.save_open()
    first.db.close()
    # Two hours later the controller is back; the car is gone.
    second = _Run(tmp_path / "state.sqlite3", first.now_s + 7200.0, clean=clean)
    second.tick(energy, EvseState.A)
    (breakdown,) = second.over
    assert breakdown is not None
    # At most the 30 s the controller saw (the last saved usage), never the 2 h it was down.
    assert breakdown.session_s <= 30
    assert breakdown.time_cents <= 3  # 0.05 EUR/min: 30 s are 2.5 cents
    assert breakdown.energy_wh > Fraction(0)
    second.db.close()
