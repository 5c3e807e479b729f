"""Fault lifecycle: raised once, detail updated silently, cleared once, counted."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from controller.core.faults import FaultBook, update
from controller.core.model import Condition

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))


def test_raise_update_clear_and_count() -> None:
    book = FaultBook()
    stale = Condition(code="meter_stale", subject="m", detail="no reading for 11 s")
    book, tr = update(book, [stale], wall=T0)
    assert [(t.kind, t.fault.code) for t in tr] == [("raised", "meter_stale")]
    later = Condition(code="meter_stale", subject="m", detail="no reading for 12 s")
    book, tr = update(book, [later], wall=T0 + timedelta(seconds=1))
    assert tr == [] and book.active[("meter_stale", "m")].detail == "no reading for 12 s"
    book, tr = update(book, [], wall=T0 + timedelta(seconds=5))
    assert [t.kind for t in tr] == ["cleared"]
    assert tr[0].fault.cleared_at == T0 + timedelta(seconds=5)
    assert book.active == {} and book.history[-1].raised_at == T0
    book, tr = update(book, [stale], wall=T0 + timedelta(seconds=9))
    assert tr[0].fault.occurrences == 2
