"""An EVSE whose energy register reads as invalid (NaN: a map's ``invalid_raw``, a float
register in a fault state) costs the tick nothing: the session and its price wait for the next
valid value, as for a reading that did not come."""

from __future__ import annotations

import math
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

from controller.app.payments import SessionPricing
from controller.app.sessions import SessionDesk
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import SessionSettings
from controller.store.db import Database
from controller.store.journal import PaymentJournal
from controller.store.sessions import SessionStore
from tests.app.test_payments import BERLIN, SITE, T0, TARIFF


class _Site:
    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.now_s = 100.0
        self.desk = SessionDesk(
            site=SITE,
            store=SessionStore(self.db),
            settings=SessionSettings(free_vend=True),
            clock=lambda: self.now_s,
            wall_clock=lambda: T0 + timedelta(seconds=self.now_s),
        )
        self.desk.restore(clean_shutdown=True)
        self.pricing = SessionPricing(
            site=SITE, desk=self.desk, journal=PaymentJournal(self.db, tz=BERLIN),
            tariff=lambda: TARIFF, clock=lambda: self.now_s,
        )  # fmt: skip

    def tick(self, energy_wh: float, state: EvseState = EvseState.C) -> None:
        """One control tick as run.py runs it: the desk before allocating, pricing after."""
        self.now_s += 1.0
        wall = T0 + timedelta(seconds=self.now_s)
        reading = EvseReading(at_s=self.now_s, state=state, energy_wh=energy_wh)
        readings = {c: reading for c in self.desk.connectors}
        self.desk.observe(readings, self.now_s, wall)
        self.pricing.on_tick(readings, None, wall)


def test_an_invalid_register_mid_session_is_skipped(tmp_path: Path) -> None:
    site = _Site(tmp_path / "state.sqlite3")
    site.tick(1000.0)
    site.tick(math.nan)  # raised ValueError in the tick before
    site.tick(1500.0)
    rec = site.desk.record("cp1")
    assert rec is not None and rec.meter_start_wh == 1000.0 and rec.meter_last_wh == 1500.0
    priced = site.pricing.usage(rec.id)
    assert priced is not None and priced[1].energy_wh == Fraction(500)
    site.db.close()


def test_a_session_that_starts_on_an_invalid_register_starts_from_the_first_valid_one(
    tmp_path: Path,
) -> None:
    site = _Site(tmp_path / "state.sqlite3")
    site.tick(math.nan)
    site.tick(math.nan)
    site.tick(1000.0)
    site.tick(1200.0)
    rec = site.desk.record("cp1")
    assert rec is not None and rec.meter_start_wh == 1000.0
    priced = site.pricing.usage(rec.id)
    assert priced is not None and priced[1].energy_wh == Fraction(200)
    site.tick(1200.0, EvseState.A)  # unplugged: ends with finite meter values
    ended = site.desk.store.get(rec.id)
    assert ended is not None and (ended.meter_start_wh, ended.meter_stop_wh) == (1000.0, 1200.0)
    site.db.close()
