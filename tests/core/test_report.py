"""core/report.py: what an operator reads from a period's sessions, checked by hand."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.core.report import SessionLine, summarise

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 28, tzinfo=BERLIN)


def line(
    sid: str, cid: str, start_h: float, hours: float | None, wh: float, **kw: object
) -> SessionLine:
    start = DAY + timedelta(hours=start_h)
    end = None if hours is None else start + timedelta(hours=hours)
    return SessionLine(id=sid, connector=cid, started_at=start, ended_at=end, energy_wh=wh, **kw)  # type: ignore[arg-type]


def test_revenue_is_what_was_captured_for_cards_and_the_price_for_the_rest() -> None:
    lines = [
        line("a", "cp1", 8, 2, 20_000, method="card", cost_cents=900, captured_cents=800),
        line("b", "cp1", 12, 1, 5_000, method="id_tag", cost_cents=300),
        line("c", "cp2", 18.5, 1, 11_000, method="free"),
    ]
    r = summarise(
        lines,
        start=DAY,
        end=DAY + timedelta(days=1),
        connectors=["cp1", "cp2", "cp3"],
        now=DAY + timedelta(days=2),
        tz=BERLIN,
    )
    assert r.total_sessions == 3 and r.total_energy_wh == 36_000
    assert r.total_revenue_cents == 800 + 300 and r.total_captured_cents == 800
    assert r.total_cost_cents == 1200
    cp1, cp2, cp3 = r.connectors
    assert (cp1.sessions, cp1.revenue_cents) == (2, 1100)
    assert cp1.occupancy_pct == pytest.approx(12.5)
    assert (cp2.sessions, cp2.energy_wh) == (1, 11_000) and cp3.sessions == 0
    # 20 kWh over 08-10 (10 per hour), 5 kWh 12-13, 11 kWh over 18:30-19:30 (5.5 each)
    assert r.energy_by_hour_wh[8] == pytest.approx(10_000) and r.energy_by_hour_wh[12] == 5_000
    assert r.energy_by_hour_wh[18] == pytest.approx(5_500)
    assert r.peak_hours == (8, 9, 18)


def test_occupancy_is_clipped_to_the_period_and_a_running_session_counts_to_now() -> None:
    lines = [
        line(
            "a", "cp1", -1, 2, 1_000, method="free"
        ),  # 23:00 the day before to 01:00: one hour inside
        line("b", "cp1", 22, None, 1_000, method="free"),  # still running at "now" 23:00
    ]
    r = summarise(
        lines,
        start=DAY,
        end=DAY + timedelta(days=1),
        connectors=["cp1"],
        now=DAY + timedelta(hours=23),
        tz=BERLIN,
    )
    assert r.connectors[0].occupancy_pct == pytest.approx(100 * 2 / 24)


def test_an_empty_period_and_a_backwards_one() -> None:
    r = summarise(
        [], start=DAY, end=DAY + timedelta(days=1), connectors=["cp1"], now=DAY, tz=BERLIN
    )
    assert r.total_sessions == 0 and r.peak_hours == () and r.connectors[0].occupancy_pct == 0
    with pytest.raises(ValueError):
        summarise([], start=DAY, end=DAY, connectors=[], now=DAY, tz=BERLIN)
