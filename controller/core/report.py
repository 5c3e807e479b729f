"""Core layer: revenue and usage over a period, from the session records (pure).

``summarise`` turns the sessions of a period (each with its energy, its priced cost and, for a
card session, what the terminal captured) into what an operator asks: sessions, energy,
revenue, occupancy per connector, and the hours of the day when the site delivers the most.

- Revenue of a session: for a card payment, what the terminal captured (money taken at the
  site); for any other method (RFID, app, free, technician), its cost at the site's tariff
  (billed by the backend, not here). ``captured_cents`` and ``cost_cents`` are also shown
  apart.
- Occupancy of a connector: the share of the period its transactions ran (start to end,
  clipped to the period; a running one counts up to ``now``).
- Peak hours: each session's energy spread evenly over its duration, summed per local hour of
  the day (the site's timezone); the busiest hours first.

Times are aware datetimes passed in; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

HOURS_SHOWN = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLine:
    """One session as the report shows it."""

    id: str
    connector: str
    started_at: datetime
    ended_at: datetime | None  # None: still running
    energy_wh: float
    method: str | None
    stop_reason: str | None = None
    currency: str | None = None
    cost_cents: int | None = None  # the priced cost (None: no tariff when it ran)
    energy_cents: int | None = None
    time_cents: int | None = None
    idle_fee_cents: int | None = None
    session_fee_cents: int | None = None
    vat_cents: int | None = None
    payment_state: str | None = None
    preauth_cents: int | None = None
    captured_cents: int | None = None
    masked_pan: str | None = None
    card_name: str | None = None
    receipt_number: int | None = None
    trace_number: int | None = None

    @property
    def revenue_cents(self) -> int:
        if self.method == "card":
            return self.captured_cents or 0
        return self.cost_cents or 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorSummary:
    connector: str
    sessions: int
    energy_wh: float
    revenue_cents: int
    captured_cents: int
    cost_cents: int
    occupancy_pct: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    start: datetime
    end: datetime
    sessions: tuple[SessionLine, ...]
    connectors: tuple[ConnectorSummary, ...]
    total_sessions: int
    total_energy_wh: float
    total_revenue_cents: int
    total_captured_cents: int
    total_cost_cents: int
    energy_by_hour_wh: tuple[float, ...]  # 24 entries, local hour of day
    peak_hours: tuple[int, ...]


def summarise(
    lines: list[SessionLine],
    *,
    start: datetime,
    end: datetime,
    connectors: list[str],
    now: datetime,
    tz: tzinfo,
    carried: Sequence[tuple[str, datetime, datetime | None]] = (),
) -> Report:
    """The report of ``lines`` (transactions that started in the period). ``carried`` are
    (connector, started_at, ended_at) of transactions that started before the period and ran
    into it: they count towards occupancy only."""
    if end <= start:
        raise ValueError(f"the period must end after it starts ({start} .. {end})")
    period_s = (end - start).total_seconds()
    known = list(connectors) + sorted({s.connector for s in lines} - set(connectors))
    summaries = []
    for cid in known:
        mine = [s for s in lines if s.connector == cid]
        busy_s = 0.0
        spans = [(s.started_at, s.ended_at) for s in mine]
        spans += [(began, ended) for c, began, ended in carried if c == cid]
        for began, ended in spans:
            a = max(began, start)
            b = min(ended or now, end)
            busy_s += max(0.0, (b - a).total_seconds())
        summaries.append(
            ConnectorSummary(
                connector=cid,
                sessions=len(mine),
                energy_wh=sum(s.energy_wh for s in mine),
                revenue_cents=sum(s.revenue_cents for s in mine),
                captured_cents=sum(s.captured_cents or 0 for s in mine),
                cost_cents=sum(s.cost_cents or 0 for s in mine),
                occupancy_pct=100.0 * busy_s / period_s,
            )
        )
    by_hour = [0.0] * 24
    for s in lines:
        _spread(by_hour, s, now=now, tz=tz)
    ranked = sorted((h for h in range(24) if by_hour[h] > 0), key=lambda h: (-by_hour[h], h))
    return Report(
        start=start,
        end=end,
        sessions=tuple(sorted(lines, key=lambda s: s.started_at)),
        connectors=tuple(summaries),
        total_sessions=len(lines),
        total_energy_wh=sum(s.energy_wh for s in lines),
        total_revenue_cents=sum(s.revenue_cents for s in lines),
        total_captured_cents=sum(s.captured_cents or 0 for s in lines),
        total_cost_cents=sum(s.cost_cents or 0 for s in lines),
        energy_by_hour_wh=tuple(by_hour),
        peak_hours=tuple(ranked[:HOURS_SHOWN]),
    )


def _spread(by_hour: list[float], s: SessionLine, *, now: datetime, tz: tzinfo) -> None:
    """Add a session's energy to the hours of the day it ran in, evenly over its time."""
    begin = s.started_at
    finish = s.ended_at or now
    total_s = (finish - begin).total_seconds()
    if s.energy_wh <= 0:
        return
    if total_s <= 0:
        by_hour[begin.astimezone(tz).hour] += s.energy_wh
        return
    t = begin
    while t < finish:
        local = t.astimezone(tz)
        next_hour = (
            local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        ).astimezone(begin.tzinfo)
        piece_end = min(next_hour, finish)
        by_hour[local.hour] += s.energy_wh * (piece_end - t).total_seconds() / total_s
        t = piece_end
