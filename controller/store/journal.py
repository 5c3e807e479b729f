"""Store layer: the payment journal and each session's priced usage, in the site's state file.

``PaymentJournal.save`` writes one payment row in its own transaction; the database runs
with synchronous=FULL, so when it returns the row is on disk (fsync'd). The payment shell
calls it BEFORE every terminal command that can move money (the intent) and after each result
(reference/payment.md §7). A write that fails raises ``StoreError``: the shell then sends
nothing, and starts no new payment until a write succeeds again.

No card data beyond what the terminal itself masked (``masked_pan``) is ever stored: the
payment rows have no column for anything else, and receipts are the terminal's printed text,
which shows the masked PAN only.

``session_costs`` keeps, per session, the tariff it is priced with and its exact ``Usage``
(fractions as text), so a session that outlives a restart goes on being priced exactly, and
the report reads the same figures the capture was computed from.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any

from controller.core.payment import Payment, PaymentState
from controller.core.report import SessionLine
from controller.core.tariff import CostBreakdown, EnergyBand, Tariff, TouPrice, Usage
from controller.store.db import Database, StoreError

_COLUMNS = (
    "id",
    "terminal",
    "state",
    "connector",
    "session_id",
    "preauth_cents",
    "cost_cents",
    "final_cents",
    "captured_cents",
    "receipt_number",
    "trace_number",
    "settle_receipt_number",
    "settle_trace_number",
    "terminal_id",
    "masked_pan",
    "card_name",
    "aid",
    "result_code",
    "reason",
    "attempts",
    "receipt_text",
    "created_at",
    "updated_at",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM payments"
_FINAL = "('captured', 'released', 'declined', 'failed')"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCost:
    """A session's priced usage as stored."""

    session_id: str
    tariff: Tariff
    usage: Usage
    total_cents: int
    energy_cents: int
    time_cents: int
    idle_fee_cents: int
    session_fee_cents: int
    vat_cents: int
    energy_wh: Fraction
    final: bool


class PaymentJournal:
    """Payment rows and session costs over one Database."""

    def __init__(self, db: Database, *, tz: tzinfo = UTC) -> None:
        self._conn = db.connection
        self._tz = tz

    # -- payments --------------------------------------------------------------------------

    def save(self, p: Payment) -> None:
        """Insert or replace one payment row, durably (one transaction, one fsync)."""
        row = (
            p.id,
            p.terminal,
            p.state.value,
            p.connector,
            p.session_id,
            p.preauth_cents,
            p.cost_cents,
            p.final_cents,
            p.captured_cents,
            p.receipt_number,
            p.trace_number,
            p.settle_receipt_number,
            p.settle_trace_number,
            p.terminal_id,
            p.masked_pan,
            p.card_name,
            p.aid,
            p.result_code,
            p.reason,
            p.attempts,
            p.receipt_text,
            p.created_at.isoformat(),
            p.updated_at.isoformat(),
        )
        try:
            # An upsert on the id only: a second live payment on the same receipt must fail
            # (the unique index), never replace the first one's row as OR REPLACE would.
            self._conn.execute(
                f"INSERT INTO payments({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]),
                row,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot journal payment {p.id} ({p.state.value}): {exc}") from exc

    def get(self, payment_id: str) -> Payment | None:
        row = self._conn.execute(f"{_SELECT} WHERE id = ?", (payment_id,)).fetchone()
        return None if row is None else self._payment(row)

    def live(self) -> list[Payment]:
        """Payments not yet in a final state, oldest first (what a restart reconciles)."""
        rows = self._conn.execute(
            f"{_SELECT} WHERE state NOT IN {_FINAL} ORDER BY created_at"
        ).fetchall()
        return [self._payment(r) for r in rows]

    def recent(self, limit: int = 20) -> list[Payment]:
        rows = self._conn.execute(
            f"{_SELECT} ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
        ).fetchall()
        return [self._payment(r) for r in rows]

    def session_of_payment(self, payment_id: str) -> tuple[str, str] | None:
        """(session id, phase) of the session that carries ``payment_id``, if one was stored."""
        row = self._conn.execute(
            "SELECT id, phase FROM sessions WHERE payment_id = ? ORDER BY updated_at DESC LIMIT 1",
            (payment_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def probe(self) -> None:
        """A write that touches nothing: raises StoreError when the file cannot be written."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR REPLACE INTO markers(name, value, at) VALUES ('journal_probe', ?, ?)",
                ("ok", datetime.now(UTC).isoformat()),
            )
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise StoreError(f"cannot write the payment journal: {exc}") from exc

    # -- session costs ----------------------------------------------------------------------

    def save_cost(
        self,
        session_id: str,
        *,
        tariff: Tariff,
        usage: Usage,
        breakdown: CostBreakdown,
        final: bool,
    ) -> None:
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO session_costs(session_id, tariff, usage, currency, "
                "energy_wh, total_cents, energy_cents, time_cents, idle_fee_cents, "
                "session_fee_cents, vat_cents, final, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    json.dumps(tariff_data(tariff)),
                    json.dumps(usage_data(usage)),
                    breakdown.currency,
                    str(breakdown.energy_wh),
                    breakdown.total_cents,
                    breakdown.energy_cents,
                    breakdown.time_cents,
                    breakdown.idle_fee_cents,
                    breakdown.session_fee_cents,
                    breakdown.vat_cents,
                    int(final),
                    datetime.now(UTC).isoformat(),
                ),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the cost of session {session_id}: {exc}") from exc

    def cost(self, session_id: str) -> SessionCost | None:
        row = self._conn.execute(
            "SELECT session_id, tariff, usage, total_cents, energy_cents, time_cents, "
            "idle_fee_cents, session_fee_cents, vat_cents, energy_wh, final "
            "FROM session_costs WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        return SessionCost(
            session_id=str(row[0]),
            tariff=tariff_from_data(json.loads(row[1])),
            usage=usage_from_data(json.loads(row[2]), tz=self._tz),
            total_cents=int(row[3]),
            energy_cents=int(row[4]),
            time_cents=int(row[5]),
            idle_fee_cents=int(row[6]),
            session_fee_cents=int(row[7]),
            vat_cents=int(row[8]),
            energy_wh=Fraction(str(row[9])),
            final=bool(row[10]),
        )

    def _payment(self, row: tuple[Any, ...]) -> Payment:
        d = dict(zip(_COLUMNS, row, strict=True))
        return Payment(
            id=d["id"],
            terminal=d["terminal"],
            state=PaymentState(d["state"]),
            connector=d["connector"],
            session_id=d["session_id"],
            preauth_cents=int(d["preauth_cents"]),
            cost_cents=d["cost_cents"],
            final_cents=d["final_cents"],
            captured_cents=d["captured_cents"],
            receipt_number=d["receipt_number"],
            trace_number=d["trace_number"],
            settle_receipt_number=d["settle_receipt_number"],
            settle_trace_number=d["settle_trace_number"],
            terminal_id=d["terminal_id"],
            masked_pan=d["masked_pan"],
            card_name=d["card_name"],
            aid=d["aid"],
            result_code=d["result_code"],
            reason=d["reason"],
            attempts=int(d["attempts"]),
            receipt_text=d["receipt_text"],
            created_at=datetime.fromisoformat(d["created_at"]).astimezone(self._tz),
            updated_at=datetime.fromisoformat(d["updated_at"]).astimezone(self._tz),
        )


# --- exact JSON forms of a tariff and a usage ----------------------------------------------------


def tariff_data(t: Tariff) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "currency": t.currency,
        "vat_rate_pct": str(t.vat_rate_pct),
        "price_per_kwh": str(t.price_per_kwh),
        "time_of_use": [
            {
                "name": p.name,
                "days": sorted(p.days),
                "start": p.start.isoformat(),
                "end": p.end.isoformat(),
                "price_per_kwh": str(p.price_per_kwh),
            }
            for p in t.time_of_use
        ],
        "price_per_minute": str(t.price_per_minute),
        "session_fee": str(t.session_fee),
        "idle_fee_per_minute": str(t.idle_fee_per_minute),
        "idle_grace_min": str(t.idle_grace_min),
        "preauth_cents": t.preauth_cents,
        "preauth_cap_cents": t.preauth_cap_cents,
    }


def tariff_from_data(d: dict[str, Any]) -> Tariff:
    return Tariff(
        id=d["id"],
        name=d["name"],
        currency=d["currency"],
        vat_rate_pct=Decimal(d["vat_rate_pct"]),
        price_per_kwh=Decimal(d["price_per_kwh"]),
        time_of_use=tuple(
            TouPrice(
                name=p["name"],
                days=frozenset(p["days"]),
                start=time.fromisoformat(p["start"]),
                end=time.fromisoformat(p["end"]),
                price_per_kwh=Decimal(p["price_per_kwh"]),
            )
            for p in d["time_of_use"]
        ),
        price_per_minute=Decimal(d["price_per_minute"]),
        session_fee=Decimal(d["session_fee"]),
        idle_fee_per_minute=Decimal(d["idle_fee_per_minute"]),
        idle_grace_min=Decimal(d["idle_grace_min"]),
        preauth_cents=int(d["preauth_cents"]),
        preauth_cap_cents=d["preauth_cap_cents"],
    )


def usage_data(u: Usage) -> dict[str, Any]:
    return {
        "started_at": u.started_at.isoformat(),
        "last_at": u.last_at.isoformat(),
        "register_wh": str(u.register_wh),
        "bands": [
            {"name": b.name, "price_per_kwh": str(b.price_per_kwh), "energy_wh": str(b.energy_wh)}
            for b in u.bands
        ],
        "idle_since": None if u.idle_since is None else u.idle_since.isoformat(),
        "closed_idle_s": str(u.closed_idle_s),
        "last_power_w": str(u.last_power_w),
        "register_resets": u.register_resets,
    }


def usage_from_data(d: dict[str, Any], *, tz: tzinfo) -> Usage:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(tz)

    return Usage(
        started_at=at(d["started_at"]),
        last_at=at(d["last_at"]),
        register_wh=Fraction(d["register_wh"]),
        bands=tuple(
            EnergyBand(
                name=b["name"],
                price_per_kwh=Decimal(b["price_per_kwh"]),
                energy_wh=Fraction(b["energy_wh"]),
            )
            for b in d["bands"]
        ),
        idle_since=None if d["idle_since"] is None else at(d["idle_since"]),
        closed_idle_s=Fraction(d["closed_idle_s"]),
        last_power_w=Fraction(d["last_power_w"]),
        register_resets=int(d["register_resets"]),
    )


# --- the report's reading --------------------------------------------------------------------


def carried_over(
    conn: sqlite3.Connection, start: datetime
) -> list[tuple[str, datetime, datetime | None]]:
    """(connector, started_at, ended_at) of the transactions that started before ``start`` and
    were still running at it: they occupy their connector in the period, though their money
    belongs to the period they started in."""
    rows = conn.execute(
        "SELECT connector, started_at, ended_at FROM sessions WHERE started_at IS NOT NULL"
    ).fetchall()
    out = []
    for connector, started_text, ended_text in rows:
        started = datetime.fromisoformat(started_text)
        ended = None if ended_text is None else datetime.fromisoformat(ended_text)
        if started < start and (ended is None or ended > start):
            out.append((str(connector), started, ended))
    return out


def report_lines(conn: sqlite3.Connection, start: datetime, end: datetime) -> list[SessionLine]:
    """Sessions with a transaction that started in [start, end), each with its priced cost
    and its card payment (if any), read from the state file (a read-only connection will do)."""
    rows = conn.execute(
        "SELECT s.id, s.connector, s.started_at, s.ended_at, s.meter_start_wh, s.meter_last_wh, "
        "s.meter_stop_wh, s.method, s.stop_reason, c.currency, c.total_cents, c.energy_cents, "
        "c.time_cents, c.idle_fee_cents, c.session_fee_cents, c.vat_cents, p.state, "
        "p.preauth_cents, p.captured_cents, p.masked_pan, p.card_name, p.receipt_number, "
        "p.trace_number "
        "FROM sessions s "
        "LEFT JOIN session_costs c ON c.session_id = s.id "
        "LEFT JOIN payments p ON p.id = s.payment_id "
        "WHERE s.started_at IS NOT NULL"
    ).fetchall()
    lines = []
    for r in rows:
        started = datetime.fromisoformat(r[2])
        if not start <= started < end:  # offsets differ between rows (DST): compare parsed
            continue
        meter_start, meter_last, meter_stop = r[4], r[5], r[6]
        last = meter_stop if meter_stop is not None else meter_last
        energy = 0.0 if meter_start is None or last is None else max(0.0, last - meter_start)
        lines.append(
            SessionLine(
                id=r[0],
                connector=r[1],
                started_at=started,
                ended_at=None if r[3] is None else datetime.fromisoformat(r[3]),
                energy_wh=energy,
                method=r[7],
                stop_reason=r[8],
                currency=r[9],
                cost_cents=r[10],
                energy_cents=r[11],
                time_cents=r[12],
                idle_fee_cents=r[13],
                session_fee_cents=r[14],
                vat_cents=r[15],
                payment_state=r[16],
                preauth_cents=r[17],
                captured_cents=r[18],
                masked_pan=r[19],
                card_name=r[20],
                receipt_number=r[21],
                trace_number=r[22],
            )
        )
    return lines
