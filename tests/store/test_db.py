"""The state file: created with its schema, upgraded in place, refused when too new, durable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.store.db import SCHEMA_VERSION, Database, StoreVersionError


def test_new_file_gets_the_current_schema_wal_and_full_sync(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path / "state")
    assert db.schema_version == SCHEMA_VERSION
    assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_written_limits_survive_a_reopen(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    db.save_written_limit("cp1", 16.0, "2026-11-29T10:00:00+00:00")
    db.save_written_limit("cp1", 10.5, "2026-11-29T10:00:01+00:00")
    db.log_event("2026-11-29T10:00:01+00:00", "mode_changed", "site", '{"new": "normal"}')
    db.close()
    again = Database.in_state_dir(tmp_path)
    assert again.written_limits()["cp1"].written_a == 10.5
    assert again.recent_events()[0][1] == "mode_changed"
    again.close()


def test_an_old_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "evsite.sqlite3"
    sqlite3.connect(path).close()  # version 0: an empty file from before any migration
    db = Database(path)
    assert db.schema_version == SCHEMA_VERSION
    db.save_written_limit("cp1", 6.0, "t")
    db.close()


def test_a_file_from_a_newer_evsite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "evsite.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreVersionError, match=r"newer|knows up to"):
        Database(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()
