"""A site without a tariff: its sessions are simply not priced, and that is not an error."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from structlog.testing import capture_logs

from controller.app.payments import SessionPricing
from controller.app.sessions import SessionDesk
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import SessionSettings
from controller.store.db import Database
from controller.store.journal import PaymentJournal
from controller.store.sessions import SessionStore
from tests.app.test_payments import BERLIN, SITE, T0


def test_sessions_end_quietly_unpriced_on_a_site_without_a_tariff(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.sqlite3")
    now = [100.0]
    desk = SessionDesk(
        site=SITE,
        store=SessionStore(db),
        settings=SessionSettings(free_vend=True),
        clock=lambda: now[0],
        wall_clock=lambda: T0 + timedelta(seconds=now[0]),
    )
    desk.restore(clean_shutdown=True)
    pricing = SessionPricing(
        site=SITE, desk=desk, journal=PaymentJournal(db, tz=BERLIN), tariff=lambda: None,
        clock=lambda: now[0],
    )  # fmt: skip
    over: list[object] = []
    pricing.over_listeners.append(lambda rec, breakdown: over.append(breakdown))

    def tick(state: EvseState, energy_wh: float) -> None:
        now[0] += 1.0
        wall: datetime = T0 + timedelta(seconds=now[0])
        reading = EvseReading(at_s=now[0], state=state, energy_wh=energy_wh)
        desk.observe({c: reading for c in desk.connectors}, now[0], wall)
        pricing.on_tick({c: reading for c in desk.connectors}, None, wall)

    with capture_logs() as logs:
        tick(EvseState.C, 1000.0)
        tick(EvseState.C, 1500.0)
        tick(EvseState.A, 1500.0)
    assert over and all(b is None for b in over)  # ended, and no price
    assert [e for e in logs if e["log_level"] == "error"] == []
    db.close()
