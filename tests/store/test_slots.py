"""Limit slots in the state file: migration 2, identical across a reopen, purge by instant."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.core.slots import LimitSlot, SlotSource
from controller.store.db import MIGRATIONS, SCHEMA_VERSION, Database, StoreError

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=BERLIN)


def _slots() -> list[LimitSlot]:
    return [
        LimitSlot(id="site", source=SlotSource.OVERRIDE, current_a=40.0, note="fuse work"),
        LimitSlot(
            id="connector:cp1",
            source=SlotSource.OVERRIDE,
            scope="connector:cp1",
            power_w=3700.0,
            starts_at=T0,
            ends_at=T0 + timedelta(hours=2),
        ),
        LimitSlot(
            id="dr-1",
            source=SlotSource.DEMAND_RESPONSE,
            power_w=0.0,
            floor_w=4200.0,
            starts_at=datetime(2026, 11, 29, 17, 0, tzinfo=timezone(timedelta(hours=-5))),
            ends_at=datetime(2026, 11, 30, 1, 30, 15, 123456, tzinfo=UTC),
        ),
        LimitSlot(id="cap", source=SlotSource.CLOUD, scope="circuit:carport", current_a=16.5),
    ]


def test_migration_2_adds_the_slot_table_to_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "evsite.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    conn.execute("INSERT INTO connector_state VALUES ('cp1', 10.0, '2026-11-29T09:00:00+00:00')")
    conn.close()

    db = Database(path)
    assert db.schema_version == SCHEMA_VERSION >= 2
    assert db.written_limits()["cp1"].written_a == 10.0  # version 1 data kept
    assert db.load_slots() == []
    db.save_slot(_slots()[0], T0.isoformat())
    assert db.load_slots() == [_slots()[0]]
    db.close()


def test_slots_come_back_identical_after_a_reopen(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    for i, slot in enumerate(_slots()):
        db.save_slot(slot, (T0 + timedelta(seconds=i)).isoformat())
    db.close()

    again = Database.in_state_dir(tmp_path)
    loaded = again.load_slots()
    again.close()
    assert loaded == _slots()  # oldest first
    for before, after in zip(_slots(), loaded, strict=True):
        for moment_before, moment_after in (
            (before.starts_at, after.starts_at),
            (before.ends_at, after.ends_at),
        ):
            if moment_before is None:
                assert moment_after is None
            else:
                assert moment_after is not None and moment_after.tzinfo is not None
                assert moment_after.utcoffset() == moment_before.utcoffset()
                assert moment_after.isoformat() == moment_before.isoformat()


def test_save_replaces_the_slot_of_the_same_source_and_id(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    first = LimitSlot(id="site", source=SlotSource.OVERRIDE, current_a=40.0)
    other_source = LimitSlot(id="site", source=SlotSource.CLOUD, current_a=30.0)
    db.save_slot(first, T0.isoformat())
    db.save_slot(other_source, T0.isoformat())
    second = LimitSlot(id="site", source=SlotSource.OVERRIDE, power_w=11000.0)
    db.save_slot(second, (T0 + timedelta(minutes=1)).isoformat())
    assert db.load_slots() == [other_source, second]
    db.close()


def test_delete_slot_says_whether_there_was_one(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    db.save_slot(_slots()[0], T0.isoformat())
    assert db.delete_slot(SlotSource.CLOUD, "site") is False  # other source: untouched
    assert db.delete_slot(SlotSource.OVERRIDE, "site") is True
    assert db.delete_slot(SlotSource.OVERRIDE, "site") is False
    assert db.load_slots() == []
    db.close()


def test_purge_compares_instants_not_text(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    plus_one = timezone(timedelta(hours=1))
    # 10:30+01:00 is 09:30 UTC: expired at 09:45 UTC although "10:30" > "09:45" as text.
    early = LimitSlot(
        id="a",
        source=SlotSource.OVERRIDE,
        current_a=10,
        ends_at=datetime(2026, 11, 29, 10, 30, tzinfo=plus_one),
    )
    # 05:00-05:00 is 10:00 UTC: still running at 09:45 UTC although "05:00" < "09:45".
    late = LimitSlot(
        id="b",
        source=SlotSource.OVERRIDE,
        current_a=10,
        ends_at=datetime(2026, 11, 29, 5, 0, tzinfo=timezone(timedelta(hours=-5))),
    )
    open_ended = LimitSlot(id="c", source=SlotSource.OVERRIDE, current_a=10)
    exactly_now = LimitSlot(
        id="d",
        source=SlotSource.OVERRIDE,
        current_a=10,
        ends_at=datetime(2026, 11, 29, 9, 45, tzinfo=UTC),
    )
    for slot in (early, late, open_ended, exactly_now):
        db.save_slot(slot, T0.isoformat())
    now = datetime(2026, 11, 29, 9, 45, tzinfo=UTC)
    assert db.purge_expired(now) == 2
    assert {s.id for s in db.load_slots()} == {"b", "c"}
    assert db.purge_expired(now) == 0
    db.close()


def test_a_naive_time_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    naive = LimitSlot(
        id="x",
        source=SlotSource.OVERRIDE,
        current_a=10,
        ends_at=datetime(2026, 11, 29, 12, 0),  # noqa: DTZ001 -- the point of the test
    )
    with pytest.raises(ValueError, match="UTC offset"):
        db.save_slot(naive, T0.isoformat())
    assert db.load_slots() == []
    db.close()


def test_the_table_refuses_a_row_with_both_values(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):
        db._conn.execute(
            "INSERT INTO limit_slots(source, id, scope, current_a, power_w, created_at) "
            "VALUES ('override', 'x', 'site', 10, 2000, 't')"
        )
    db.close()


def test_a_closed_file_raises_store_error(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    db.close()
    with pytest.raises(StoreError):
        db.save_slot(_slots()[0], T0.isoformat())
    with pytest.raises(StoreError):
        db.delete_slot(SlotSource.OVERRIDE, "site")
