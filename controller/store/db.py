"""Store layer: the one SQLite file of a site, its schema version and its migrations.

Everything that must survive a restart lives here (WAL journal, synchronous=FULL: a limit we
wrote, a transaction or a payment must not vanish with a power cut). Migrations are a list of
SQL scripts applied in order; ``PRAGMA user_version`` records how far a file has come, so an
old file is upgraded in place and a file from a newer evsite is refused rather than damaged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.core.errors import PermanentError, RetryableError

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
        try:
            self._conn.execute(
                "INSERT INTO connector_state(connector, written_a, written_at) VALUES (?, ?, ?) "
                "ON CONFLICT(connector) DO UPDATE SET written_a=excluded.written_a, "
                "written_at=excluded.written_at",
                (connector, written_a, written_at),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record limit of {connector}: {exc}") from exc

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

    def close(self) -> None:
        self._conn.close()
