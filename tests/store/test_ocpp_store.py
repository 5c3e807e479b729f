"""The OCPP link's documents survive a reopen of the state file; a failed write says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.store.db import Database, StoreError
from controller.store.ocpp import OcppStore


def test_documents_survive_a_reopen_and_replace_whole(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    store = OcppStore(db)
    assert store.load("local_list") is None
    store.save("local_list", {"version": 3, "entries": {"TAG": {"status": "Accepted"}}})
    store.save("local_list", {"version": 4, "entries": {}})
    db.close()
    again = OcppStore(Database.in_state_dir(tmp_path))
    assert again.load("local_list") == {"version": 4, "entries": {}}


def test_a_write_to_a_read_only_file_raises_store_error(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    db.connection.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="profiles"):
        OcppStore(db).save("profiles", [])
