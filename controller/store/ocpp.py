"""Store layer: the OCPP link's documents in the site's state file (migration 6).

The link keeps a few JSON documents that must survive a restart: the charging profiles each
charge point has installed, the local authorisation list, the authorisation cache and the
reservations. Each is one row, replaced whole in one fsync'd transaction.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from controller.store.db import Database, StoreError


class OcppStore:
    """Named JSON documents of the OCPP link over one Database."""

    def __init__(self, db: Database) -> None:
        self._conn = db.connection

    def load(self, name: str) -> Any:
        """The document (parsed JSON), None if there is none."""
        row = self._conn.execute("SELECT value FROM ocpp_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(str(row[0]))

    def save(self, name: str, value: Any) -> None:
        """Replace the document; on disk when this returns. StoreError: not stored."""
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                self._conn.execute(
                    "INSERT INTO ocpp_state(name, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
                    (name, text, datetime.now(UTC).isoformat()),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store the OCPP document {name}: {exc}") from exc
