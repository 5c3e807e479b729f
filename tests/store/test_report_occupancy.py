"""The report's occupancy counts a transaction that began before the period and ran into it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.core.report import summarise
from controller.core.sessions import AuthMethod, SessionPhase, SessionRecord, StopReason
from controller.store.db import Database
from controller.store.journal import carried_over, report_lines
from controller.store.sessions import SessionStore

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 29, tzinfo=BERLIN)


def session(sid: str, start_h: float, end_h: float | None) -> SessionRecord:
    started = DAY + timedelta(hours=start_h)
    return SessionRecord(
        id=sid,
        connector="cp1",
        phase=SessionPhase.CLOSED if end_h is not None else SessionPhase.ACTIVE,
        method=AuthMethod.FREE,
        plugged_at=started,
        started_at=started,
        ended_at=None if end_h is None else DAY + timedelta(hours=end_h),
        meter_start_wh=0.0,
        meter_last_wh=1000.0,
        meter_stop_wh=None if end_h is None else 1000.0,
        stop_reason=None if end_h is None else StopReason.EV_DISCONNECTED,
    )


def test_an_overnight_session_occupies_the_next_day_but_bills_on_the_first(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "state.sqlite3")
    SessionStore(db).save(
        [
            session("overnight", -2, 6),  # 22:00 the day before -> 06:00: 6 h in the day
            session("before", -5, -3),  # over before the day began: not in it at all
            session("day", 12, 14),  # 2 h
        ]
    )
    start, end = DAY, DAY + timedelta(days=1)
    lines = report_lines(db.connection, start, end)
    carried = carried_over(db.connection, start)
    r = summarise(
        lines, start=start, end=end, connectors=["cp1"], now=end, tz=BERLIN, carried=carried
    )
    assert [s.id for s in r.sessions] == ["day"]  # money and sessions by their start
    assert r.connectors[0].occupancy_pct == pytest.approx(100 * 8 / 24)
    db.close()
