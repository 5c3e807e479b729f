"""Store layer: session records and connector availability in the site's state file.

A session row is written on every transition of its session (synchronous=FULL: a transaction
the backend must bill, or a session a driver paid for, is on disk before anyone is told about
it) and, while it runs, with its latest energy register value now and then, so that after a
power cut the session ends with the last known meter value.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime

from controller.core.sessions import AuthMethod, SessionPhase, SessionRecord, StopReason
from controller.store.db import Database, StoreError

SCHEDULED_AVAILABILITY = "availability_scheduled"  # markers: pending changes, JSON

_COLUMNS = (
    "id, connector, phase, method, id_tag, priority_tier, plugged_at, authorised_at, "
    "started_at, ended_at, meter_start_wh, meter_last_wh, meter_stop_wh, last_drawing_at, "
    "stop_reason, stopped_by, ocpp_transaction_id, payment_id"
)


class SessionStore:
    """Session rows and availability flags over one Database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn = db.connection

    def save(self, records: Iterable[SessionRecord]) -> None:
        """Insert or update the records in one transaction (one fsync)."""
        rows = [_row(r) for r in records]
        if not rows:
            return
        now = datetime.now(UTC).isoformat()
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                f"INSERT OR REPLACE INTO sessions({_COLUMNS}, updated_at) "
                f"VALUES ({', '.join('?' * 19)})",
                [(*row, now) for row in rows],
            )
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            ids = ", ".join(str(r[0]) for r in rows)
            raise StoreError(f"cannot record sessions {ids}: {exc}") from exc

    def probe(self) -> None:
        """A small real write: raises StoreError while the file cannot be written."""
        try:
            self._conn.execute(
                "INSERT INTO markers(name, value, at) VALUES ('session_store_probe', '1', ?) "
                "ON CONFLICT(name) DO UPDATE SET at=excluded.at",
                (datetime.now(UTC).isoformat(),),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the state file: {exc}") from exc

    def open_sessions(self) -> list[SessionRecord]:
        """Sessions the last run left open (every phase but closed)."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE phase <> 'closed' ORDER BY plugged_at"
        ).fetchall()
        return [_record(r) for r in rows]

    def get(self, session_id: str) -> SessionRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return None if row is None else _record(row)

    def set_availability(self, connector: str, available: bool, source: str) -> None:
        try:
            self._conn.execute(
                "INSERT INTO connector_availability(connector, available, source, at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(connector) DO UPDATE SET "
                "available=excluded.available, source=excluded.source, at=excluded.at",
                (connector, int(available), source, datetime.now(UTC).isoformat()),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the availability of {connector}: {exc}") from exc

    def save_scheduled_availability(self, pending: dict[str, tuple[bool, str]]) -> None:
        """Availability changes waiting for a running transaction to end (connector ->
        (available, who asked)), so that a restart keeps them."""
        document = json.dumps({cid: [available, by] for cid, (available, by) in pending.items()})
        self._db.set_marker(SCHEDULED_AVAILABILITY, document, datetime.now(UTC).isoformat())

    def scheduled_availability(self) -> dict[str, tuple[bool, str]]:
        text = self._db.marker(SCHEDULED_AVAILABILITY)
        if not text:
            return {}
        try:
            document = json.loads(text)
            return {str(c): (bool(v[0]), str(v[1])) for c, v in document.items()}
        except (ValueError, TypeError, IndexError, AttributeError):
            return {}  # unreadable: the change is lost, the connector keeps its state

    def availability(self) -> dict[str, tuple[bool, str]]:
        rows = self._conn.execute(
            "SELECT connector, available, source FROM connector_availability"
        ).fetchall()
        return {r[0]: (bool(r[1]), str(r[2])) for r in rows}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _row(r: SessionRecord) -> tuple[object, ...]:
    return (
        r.id,
        r.connector,
        r.phase.value,
        r.method.value if r.method is not None else None,
        r.id_tag,
        r.priority_tier,
        _iso(r.plugged_at),
        _iso(r.authorised_at),
        _iso(r.started_at),
        _iso(r.ended_at),
        r.meter_start_wh,
        r.meter_last_wh,
        r.meter_stop_wh,
        _iso(r.last_drawing_at),
        r.stop_reason.value if r.stop_reason is not None else None,
        r.stopped_by,
        r.ocpp_transaction_id,
        r.payment_id,
    )


def _record(row: tuple[object, ...] | sqlite3.Row) -> SessionRecord:
    (
        sid,
        connector,
        phase,
        method,
        id_tag,
        tier,
        plugged_at,
        authorised_at,
        started_at,
        ended_at,
        meter_start,
        meter_last,
        meter_stop,
        last_drawing,
        reason,
        stopped_by,
        tx_id,
        payment_id,
    ) = tuple(row)
    return SessionRecord(
        id=str(sid),
        connector=str(connector),
        phase=SessionPhase(str(phase)),
        method=AuthMethod(str(method)) if method is not None else None,
        id_tag=None if id_tag is None else str(id_tag),
        priority_tier=None if tier is None else int(str(tier)),
        plugged_at=_parse(_text(plugged_at)),
        authorised_at=_parse(_text(authorised_at)),
        started_at=_parse(_text(started_at)),
        ended_at=_parse(_text(ended_at)),
        meter_start_wh=_float(meter_start),
        meter_last_wh=_float(meter_last),
        meter_stop_wh=_float(meter_stop),
        last_drawing_at=_parse(_text(last_drawing)),
        stop_reason=StopReason(str(reason)) if reason is not None else None,
        stopped_by=_text(stopped_by),
        ocpp_transaction_id=None if tx_id is None else int(str(tx_id)),
        payment_id=_text(payment_id),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _float(value: object) -> float | None:
    return None if value is None else float(str(value))
