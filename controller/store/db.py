"""Store layer: the one SQLite file of a site, its schema version and its migrations.

Everything that must survive a restart lives here (WAL journal, synchronous=FULL: a limit we
wrote, a limit slot set from the CLI or the network, a transaction or a payment must not vanish
with a power cut). Migrations are a list of
SQL scripts applied in order; ``PRAGMA user_version`` records how far a file has come, so an
old file is upgraded in place and a file from a newer evsite is refused rather than damaged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from controller.core.errors import PermanentError, RetryableError
from controller.core.slots import LimitSlot, SlotSource

# Append only: never edit a migration that has shipped.
MIGRATIONS: Sequence[str] = (
    # 1: the walking skeleton
    """
    CREATE TABLE connector_state (
        connector   TEXT PRIMARY KEY,
        written_a   REAL NOT NULL,
        written_at  TEXT NOT NULL          -- UTC ISO 8601
    );
    CREATE TABLE event_log (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          TEXT NOT NULL,         -- UTC ISO 8601
        kind        TEXT NOT NULL,         -- snake_case fact, e.g. mode_changed
        subject     TEXT NOT NULL,         -- site, connector or device id
        detail      TEXT NOT NULL          -- JSON
    );
    """,
    # 2: limit slots from the CLI and the network, kept across restarts
    """
    CREATE TABLE limit_slots (
        source      TEXT NOT NULL,         -- SlotSource value: override, cloud, ocpp, ...
        id          TEXT NOT NULL,         -- unique within its source
        scope       TEXT NOT NULL,         -- site, circuit:<id> or connector:<id>
        current_a   REAL,                  -- per phase; exactly one of current_a and power_w
        power_w     REAL,
        starts_at   TEXT,                  -- ISO 8601 with offset; NULL: open-ended
        ends_at     TEXT,
        floor_w     REAL,
        note        TEXT NOT NULL DEFAULT '',
        created_at  TEXT NOT NULL,         -- ISO 8601 with offset
        PRIMARY KEY (source, id),
        CHECK ((current_a IS NULL) <> (power_w IS NULL))
    );
    """,
    # 3: the persistent outbox of the cloud links (controller.store.outbox)
    """
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of sending
        id          TEXT NOT NULL UNIQUE,  -- event id (UUID): consumers deduplicate by it
        channel     TEXT NOT NULL,         -- which link sends it: mqtt, ocpp
        kind        TEXT NOT NULL,         -- event kind or message type, e.g. fault_raised
        payload     TEXT NOT NULL,         -- JSON, sent as it is
        created_at  TEXT NOT NULL,         -- UTC ISO 8601
        attempts    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_by_channel ON outbox(channel, seq);
    CREATE TABLE markers (
        name        TEXT PRIMARY KEY,      -- e.g. config_sha256: what the last run saw
        value       TEXT NOT NULL,
        at          TEXT NOT NULL          -- UTC ISO 8601
    );
    """,
    # 4: charging sessions (controller.store.sessions) and connector availability
    """
    CREATE TABLE sessions (
        id              TEXT PRIMARY KEY,  -- UUID
        connector       TEXT NOT NULL,
        phase           TEXT NOT NULL,     -- SessionPhase: authorised, pending, active, ...
        method          TEXT,              -- AuthMethod: free, id_tag, remote, card, ...
        id_tag          TEXT,
        priority_tier   INTEGER,
        plugged_at      TEXT,              -- ISO 8601 with offset
        authorised_at   TEXT,
        started_at      TEXT,
        ended_at        TEXT,
        meter_start_wh  REAL,
        meter_last_wh   REAL,
        meter_stop_wh   REAL,
        last_drawing_at TEXT,
        stop_reason     TEXT,              -- OCPP 1.6 spelling: EVDisconnected, Remote, ...
        stopped_by      TEXT,
        ocpp_transaction_id INTEGER,
        payment_id      TEXT,
        updated_at      TEXT NOT NULL      -- UTC ISO 8601
    );
    CREATE INDEX sessions_open ON sessions(phase) WHERE phase <> 'closed';
    CREATE INDEX sessions_by_start ON sessions(started_at);
    CREATE TABLE connector_availability (
        connector   TEXT PRIMARY KEY,
        available   INTEGER NOT NULL,      -- 0: inoperative (no new session), 1: operative
        source      TEXT NOT NULL,         -- who set it: ocpp, mqtt, cli
        at          TEXT NOT NULL          -- UTC ISO 8601
    );
    """,
    # 5: card payments (controller.store.journal): the journal, written before every terminal
    # command, and each session's priced usage
    """
    CREATE TABLE payments (
        id              TEXT PRIMARY KEY,  -- UUID
        terminal        TEXT NOT NULL,     -- the terminal's id in the config
        state           TEXT NOT NULL,     -- PaymentState: preauth_sent, authorised, ...
        connector       TEXT,
        session_id      TEXT,
        preauth_cents   INTEGER NOT NULL,
        cost_cents      INTEGER,
        final_cents     INTEGER,           -- min(cost, pre-auth): what a capture asks for
        captured_cents  INTEGER,           -- what the terminal booked (0: released)
        receipt_number  INTEGER,           -- the pre-auth's receipt: the key of its capture
        trace_number    INTEGER,
        settle_receipt_number INTEGER,
        settle_trace_number   INTEGER,
        terminal_id     TEXT,
        masked_pan      TEXT,              -- as the terminal masked it; never more
        card_name       TEXT,
        aid             TEXT,
        result_code     INTEGER,
        reason          TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        receipt_text    TEXT NOT NULL DEFAULT '',
        created_at      TEXT NOT NULL,     -- ISO 8601 with offset
        updated_at      TEXT NOT NULL
    );
    CREATE INDEX payments_live ON payments(state)
        WHERE state NOT IN ('captured', 'released', 'declined', 'failed');
    CREATE INDEX payments_by_session ON payments(session_id);
    -- one live payment per receipt of a terminal: a capture is keyed on it
    CREATE UNIQUE INDEX payments_open_receipt ON payments(terminal, receipt_number)
        WHERE receipt_number IS NOT NULL
        AND state NOT IN ('captured', 'released', 'declined', 'failed');
    CREATE TABLE session_costs (
        session_id      TEXT PRIMARY KEY,
        tariff          TEXT NOT NULL,     -- JSON: the tariff the session is priced with
        usage           TEXT NOT NULL,     -- JSON: controller.core.tariff.Usage, exact
        currency        TEXT NOT NULL,
        energy_wh       TEXT NOT NULL,     -- exact (a fraction as text)
        total_cents     INTEGER NOT NULL,
        energy_cents    INTEGER NOT NULL,
        time_cents      INTEGER NOT NULL,
        idle_fee_cents  INTEGER NOT NULL,
        session_fee_cents INTEGER NOT NULL,
        vat_cents       INTEGER NOT NULL,
        final           INTEGER NOT NULL DEFAULT 0,  -- 1 once the session ended
        updated_at      TEXT NOT NULL      -- UTC ISO 8601
    );
    """,
    # 6: the OCPP link's documents (controller.store.ocpp): installed charging profiles, the
    # local authorisation list, the authorisation cache, reservations
    """
    CREATE TABLE ocpp_state (
        name        TEXT PRIMARY KEY,      -- e.g. profiles:<identity>, local_list, auth_cache
        value       TEXT NOT NULL,         -- JSON
        updated_at  TEXT NOT NULL          -- UTC ISO 8601
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
DB_FILENAME = "evsite.sqlite3"


class StoreError(RetryableError):
    """The state file could not be written (disk full, read-only, locked)."""


class StoreVersionError(PermanentError):
    """The state file was written by a newer evsite."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenLimit:
    connector: str
    written_a: float
    written_at: str


class Database:
    """A connection to the site's state file. Not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {path}: {exc}") from exc

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Database:
        return cls(state_dir / DB_FILENAME)

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection, for the store's other modules (the outbox) only."""
        return self._conn

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path} has schema version {current}, this evsite knows up to "
                f"{SCHEMA_VERSION}: upgrade evsite or restore a matching state file"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[version - 1]
            # executescript commits first; the version bump is in the same script so a crash
            # mid-way leaves the old version and the migration re-runs from a clean state.
            self._conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")

    def save_written_limit(self, connector: str, written_a: float, written_at: str) -> None:
        self.save_written_limits([(connector, written_a, written_at)])

    def save_written_limits(self, rows: list[tuple[str, float, str]]) -> None:
        """Record (connector, written_a, written_at) rows in one transaction: one fsync per
        tick, however many limits changed."""
        if not rows:
            return
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    "INSERT INTO connector_state(connector, written_a, written_at) "
                    "VALUES (?, ?, ?) ON CONFLICT(connector) DO UPDATE SET "
                    "written_a=excluded.written_a, written_at=excluded.written_at",
                    rows,
                )
        except sqlite3.Error as exc:
            names = ", ".join(r[0] for r in rows)
            raise StoreError(f"cannot record the limits of {names}: {exc}") from exc

    def written_limits(self) -> dict[str, WrittenLimit]:
        rows = self._conn.execute(
            "SELECT connector, written_a, written_at FROM connector_state"
        ).fetchall()
        return {r[0]: WrittenLimit(connector=r[0], written_a=r[1], written_at=r[2]) for r in rows}

    def log_event(self, at: str, kind: str, subject: str, detail: str) -> None:
        try:
            self._conn.execute(
                "INSERT INTO event_log(at, kind, subject, detail) VALUES (?, ?, ?, ?)",
                (at, kind, subject, detail),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot log {kind}: {exc}") from exc

    def recent_events(self, limit: int = 50) -> list[tuple[str, str, str, str]]:
        rows = self._conn.execute(
            "SELECT at, kind, subject, detail FROM event_log ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- markers: small facts one run leaves for the next ------------------------------------

    def marker(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM markers WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_marker(self, name: str, value: str, at: str) -> None:
        try:
            self._conn.execute(
                "INSERT INTO markers(name, value, at) VALUES (?, ?, ?) ON CONFLICT(name) "
                "DO UPDATE SET value=excluded.value, at=excluded.at",
                (name, value, at),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record {name}: {exc}") from exc

    # -- limit slots ---------------------------------------------------------------------------

    def save_slot(self, slot: LimitSlot, created_at: str) -> None:
        """Insert or replace the slot with the same (source, id)."""
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO limit_slots(source, id, scope, current_a, power_w, "
                "starts_at, ends_at, floor_w, note, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    slot.source.value,
                    slot.id,
                    slot.scope,
                    slot.current_a,
                    slot.power_w,
                    _iso(slot.starts_at),
                    _iso(slot.ends_at),
                    slot.floor_w,
                    slot.note,
                    created_at,
                ),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record limit slot {slot.key}: {exc}") from exc

    def delete_slot(self, source: SlotSource, slot_id: str) -> bool:
        """Remove one slot; False when there was none."""
        try:
            cursor = self._conn.execute(
                "DELETE FROM limit_slots WHERE source = ? AND id = ?", (source.value, slot_id)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot delete limit slot {source.value}:{slot_id}: {exc}") from exc
        return cursor.rowcount > 0

    def load_slots(self) -> list[LimitSlot]:
        """Every stored slot, oldest first, with aware datetimes."""
        rows = self._conn.execute(
            "SELECT source, id, scope, current_a, power_w, starts_at, ends_at, floor_w, note "
            "FROM limit_slots ORDER BY created_at, source, id"
        ).fetchall()
        slots = []
        for source, slot_id, scope, current_a, power_w, starts_at, ends_at, floor_w, note in rows:
            try:
                slots.append(
                    LimitSlot(
                        id=slot_id,
                        source=SlotSource(source),
                        scope=scope,
                        current_a=current_a,
                        power_w=power_w,
                        starts_at=_parse(starts_at),
                        ends_at=_parse(ends_at),
                        floor_w=floor_w,
                        note=note,
                    )
                )
            except ValueError as exc:
                raise StoreError(
                    f"{self.path}: limit slot {source}:{slot_id} is unreadable: {exc}"
                ) from exc
        return slots

    def purge_expired(self, now: datetime) -> int:
        """Delete the slots whose end is at or before ``now`` (aware); returns how many."""
        # Offsets differ between rows, so the comparison is on parsed datetimes, not on text.
        rows = self._conn.execute(
            "SELECT source, id, ends_at FROM limit_slots WHERE ends_at IS NOT NULL"
        ).fetchall()
        expired = []
        for source, slot_id, ends_at in rows:
            end = _parse(ends_at)
            if end is not None and end <= now:
                expired.append((source, slot_id))
        if not expired:
            return 0
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany("DELETE FROM limit_slots WHERE source = ? AND id = ?", expired)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise StoreError(f"cannot purge expired limit slots: {exc}") from exc
        return len(expired)

    def close(self) -> None:
        self._conn.close()


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a stored time must carry its UTC offset, not {value!r}")
    return value.isoformat()


def _parse(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"stored time {text!r} has no UTC offset")
    return value
