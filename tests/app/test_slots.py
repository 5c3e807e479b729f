"""The SlotBook: checks against the site, persists before it answers, refuses by field."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from controller.app.slots import SlotBook, SlotRefused
from controller.config import load_config_text
from controller.core.site import Site
from controller.core.slots import LimitSlot, SlotSource
from controller.store.db import Database

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

SITE_YAML = """\
site: {id: demo, timezone: Europe/Berlin, nominal_voltage_v: 230}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
circuits:
  - {id: carport, rating_a: 32}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}, circuit: carport,
     max_current_a: 16}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}, circuit: carport,
     phase_rotation: L2}
"""


def make_site() -> Site:
    return load_config_text(SITE_YAML).site


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.in_state_dir(tmp_path)
    yield database
    database.close()


@pytest.fixture
def book(db: Database, clock: Clock) -> SlotBook:
    return SlotBook(db, make_site(), wall=clock)


def override(book: SlotBook, **kw: Any) -> LimitSlot:
    kw.setdefault("id", "site")
    return book.set(source=SlotSource.OVERRIDE, **kw).slot


# --- accepted --------------------------------------------------------------------------------


def test_a_slot_is_stored_then_in_effect(book: SlotBook, db: Database) -> None:
    accepted = book.set(
        source=SlotSource.OVERRIDE,
        id="site",
        current_a=40,
        ends_at=NOW + timedelta(hours=2),
        note="fuse work",
    )
    assert accepted.replaced is False and accepted.notes == ()
    expected = LimitSlot(
        id="site",
        source=SlotSource.OVERRIDE,
        current_a=40,
        ends_at=NOW + timedelta(hours=2),
        note="fuse work",
    )
    assert accepted.slot == expected
    assert book.slots() == (expected,)
    assert db.load_slots() == [expected]
    assert book.get(SlotSource.OVERRIDE, "site") == expected


def test_slots_survive_a_new_book_on_the_same_file(
    tmp_path: Path, book: SlotBook, db: Database, clock: Clock
) -> None:
    a = override(book, id="a", scope="connector:cp1", power_w=3700.0)
    b = override(
        book,
        id="b",
        scope="circuit:carport",
        current_a=20,
        starts_at=datetime(2026, 11, 29, 18, 0, tzinfo=BERLIN),
        ends_at=datetime(2026, 11, 29, 22, 0, tzinfo=BERLIN),
    )
    dr = book.set(source=SlotSource.DEMAND_RESPONSE, id="dr-1", power_w=0.0, floor_w=4200.0).slot
    db.close()
    reopened = Database.in_state_dir(tmp_path)
    try:
        again = SlotBook(reopened, make_site(), wall=clock)
        assert set(again.slots()) == {a, b, dr}
    finally:
        reopened.close()


def test_same_source_and_id_replaces_other_sources_stay(book: SlotBook) -> None:
    override(book, current_a=40)
    book.set(source=SlotSource.CLOUD, id="site", current_a=30)
    accepted = book.set(source=SlotSource.OVERRIDE, id="site", power_w=11000)
    assert accepted.replaced is True
    assert sorted((s.source.value, s.current_a, s.power_w) for s in book.slots()) == [
        ("cloud", 30, None),
        ("override", None, 11000),
    ]


@pytest.mark.parametrize(
    ("kw", "fragments"),
    [
        ({"current_a": 80}, ["80 A is above the 63 A rating of circuit 'grid'", "clamped to 63 A"]),
        (
            {"scope": "circuit:carport", "current_a": 40},
            ["40 A is above the 32 A rating of circuit 'carport'"],
        ),
        (
            {"scope": "connector:cp1", "current_a": 20},
            ["20 A is above the 16 A max_current_a of connector 'cp1'", "clamped to 16 A"],
        ),
        (
            {"scope": "connector:cp2", "power_w": 9000},
            ["9 kW is above the 7.36 kW of connector 'cp2' (32 A x 1 x 230 V)"],
        ),
        ({"power_w": 50000}, ["50 kW is above the 43.47 kW of circuit 'grid'"]),
        (
            {"scope": "connector:cp1", "current_a": 3},
            ["3 A is below the 6 A minimum of connector 'cp1': it is paused"],
        ),
    ],
)
def test_values_beyond_the_hardware_are_accepted_with_a_note(
    book: SlotBook, kw: dict[str, Any], fragments: list[str]
) -> None:
    accepted = book.set(source=SlotSource.OVERRIDE, id="x", **kw)
    assert len(accepted.notes) == 1
    assert all(f in accepted.notes[0] for f in fragments), accepted.notes
    assert book.slots() == (accepted.slot,)


def test_values_within_the_ratings_need_no_note(book: SlotBook) -> None:
    for scope, value in (("site", 63.0), ("circuit:grid", 10.0), ("connector:cp1", 16.0)):
        assert (
            book.set(source=SlotSource.OVERRIDE, id=scope, scope=scope, current_a=value).notes == ()
        )


# --- refused ---------------------------------------------------------------------------------


LATER = NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("kw", "field", "fragment"),
    [
        (
            {"scope": "connector:cp9", "current_a": 10},
            "scope",
            "no connector 'cp9'; connectors: cp1",
        ),
        ({"scope": "circuit:shed", "current_a": 10}, "scope", "no circuit 'shed'; circuits: grid"),
        ({"scope": "house", "current_a": 10}, "scope", "unknown scope 'house'"),
        (
            {"scope": "carport", "current_a": 10},
            "scope",
            "use site, circuit:<id> or connector:<id>",
        ),
        ({"current_a": math.nan}, "current_a", "finite number >= 0, not nan"),
        ({"current_a": math.inf}, "current_a", "finite number >= 0"),
        ({"current_a": -1.0}, "current_a", "finite number >= 0, not -1.0"),
        ({"power_w": -5.0}, "power_w", "finite number >= 0"),
        ({}, "current_a", "give a limit"),
        ({"current_a": 10, "power_w": 2000}, "power_w", "not both"),
        ({"current_a": 10, "ends_at": NOW}, "ends_at", "is not in the future"),
        ({"current_a": 10, "ends_at": NOW - timedelta(days=1)}, "ends_at", "not in the future"),
        (
            {"current_a": 10, "starts_at": LATER, "ends_at": LATER},
            "ends_at",
            "is not after starts_at",
        ),
        (
            {"current_a": 10, "starts_at": datetime(2026, 12, 1, 8, 0)},  # noqa: DTZ001
            "starts_at",
            "must carry a UTC offset",
        ),
        ({"current_a": 10, "id": ""}, "id", "an id is 1 to 64"),
        ({"current_a": 10, "id": "a b"}, "id", "got 'a b'"),
        ({"current_a": 10, "note": "x" * 201}, "note", "at most 200 characters"),
        ({"power_w": 1000, "floor_w": 500}, "floor_w", "only a demand-response slot"),
    ],
)
def test_refusals_name_the_field_and_change_nothing(
    book: SlotBook, db: Database, kw: dict[str, Any], field: str, fragment: str
) -> None:
    kept = override(book, id="kept", current_a=30)
    kw.setdefault("id", "new")
    with capture_logs() as logs, pytest.raises(SlotRefused) as info:
        book.set(source=SlotSource.OVERRIDE, **kw)
    assert info.value.field == field
    assert fragment in info.value.message
    assert book.slots() == (kept,)
    assert db.load_slots() == [kept]
    assert logs == []


def test_a_floor_only_with_a_demand_response_power_limit(book: SlotBook) -> None:
    with pytest.raises(SlotRefused) as info:
        book.set(source=SlotSource.DEMAND_RESPONSE, id="dr", current_a=10, floor_w=4200)
    assert info.value.field == "floor_w"
    with pytest.raises(SlotRefused) as info:
        book.set(source=SlotSource.DEMAND_RESPONSE, id="dr", power_w=0, floor_w=-1)
    assert info.value.field == "floor_w"
    with pytest.raises(SlotRefused) as info:
        book.set(source=SlotSource.TIME_OF_USE, id="tou", power_w=1000)
    assert info.value.field == "source"
    assert book.slots() == ()


def test_nothing_applies_when_the_store_cannot_write(book: SlotBook, db: Database) -> None:
    kept = override(book, id="kept", current_a=30)
    db.close()
    with pytest.raises(SlotRefused) as info:
        override(book, id="new", current_a=10)
    assert info.value.field is None and "not saved, nothing changed" in info.value.message
    with pytest.raises(SlotRefused):
        book.clear(SlotSource.OVERRIDE, "kept")
    assert book.slots() == (kept,)


# --- clearing, expiry, logs ------------------------------------------------------------------


def test_clear_and_clear_all(book: SlotBook, db: Database) -> None:
    a = override(book, id="a", current_a=10)
    override(book, id="b", current_a=20)
    cloud = book.set(source=SlotSource.CLOUD, id="a", current_a=30).slot
    assert book.clear(SlotSource.OVERRIDE, "a") == a
    assert book.clear(SlotSource.OVERRIDE, "a") is None
    assert [s.id for s in book.clear_all(SlotSource.OVERRIDE)] == ["b"]
    assert book.clear_all(SlotSource.OVERRIDE) == ()
    assert book.slots() == (cloud,)
    assert db.load_slots() == [cloud]


def test_every_change_is_logged(book: SlotBook) -> None:
    with capture_logs() as logs:
        override(book, id="a", current_a=10, ends_at=LATER)
        override(book, id="a", current_a=12)
        book.clear(SlotSource.OVERRIDE, "a")
        override(book, id="b", current_a=20)
        book.clear_all(SlotSource.OVERRIDE)
    assert [(e["event"], e["id"], e.get("replaced"), e.get("reason")) for e in logs] == [
        ("limit_slot_set", "a", False, None),
        ("limit_slot_set", "a", True, None),
        ("limit_slot_cleared", "a", None, "request"),
        ("limit_slot_set", "b", False, None),
        ("limit_slot_cleared", "b", None, "request"),
    ]
    first = logs[0]
    assert first["log_level"] == "info" and first["source"] == "override"
    assert first["current_a"] == 10 and first["ends_at"] == LATER.isoformat()


def test_changes_are_journalled_in_the_event_log(book: SlotBook, db: Database) -> None:
    override(book, id="a", scope="connector:cp1", current_a=10)
    book.clear(SlotSource.OVERRIDE, "a")
    kinds = [(kind, subject) for _, kind, subject, _ in db.recent_events()]
    assert kinds == [("limit_slot_cleared", "connector:cp1"), ("limit_slot_set", "connector:cp1")]


def test_an_ended_slot_leaves_the_tick_and_the_file(
    book: SlotBook, db: Database, clock: Clock
) -> None:
    ending = override(book, id="a", current_a=10, ends_at=NOW + timedelta(minutes=30))
    stays = override(book, id="b", current_a=20)
    assert book.slots() == (ending, stays)
    clock.now = NOW + timedelta(minutes=29)
    assert book.slots() == (ending, stays)
    clock.now = NOW + timedelta(minutes=30)
    with capture_logs() as logs:
        assert book.slots() == (stays,)
    assert [(e["event"], e["id"], e["reason"]) for e in logs] == [
        ("limit_slot_cleared", "a", "expired")
    ]
    assert db.load_slots() == [stays]


def test_a_new_book_drops_what_ended_while_the_service_was_down(
    tmp_path: Path, book: SlotBook, db: Database, clock: Clock
) -> None:
    override(book, id="a", current_a=10, ends_at=NOW + timedelta(minutes=30))
    stays = override(book, id="b", current_a=20)
    clock.now = NOW + timedelta(hours=1)
    again = SlotBook(db, make_site(), wall=clock)
    assert again.slots() == (stays,)
    assert db.load_slots() == [stays]


def test_a_source_holds_at_most_max_slots_and_the_next_new_one_is_refused(
    book: SlotBook,
) -> None:
    from controller.app.slots import MAX_SLOTS_PER_SOURCE

    for n in range(MAX_SLOTS_PER_SOURCE):
        book.set(source=SlotSource.CLOUD, id=f"s{n}", current_a=40)
    with pytest.raises(SlotRefused) as refused:
        book.set(source=SlotSource.CLOUD, id="one-more", current_a=40)
    assert refused.value.field == "id"
    assert "clear some first" in refused.value.message
    assert book.get(SlotSource.CLOUD, "one-more") is None
    # Replacing one it holds is fine, and other sources have their own room.
    book.set(source=SlotSource.CLOUD, id="s0", current_a=30)
    book.set(source=SlotSource.OVERRIDE, id="site", current_a=30)
    assert sum(1 for s in book.slots() if s.source is SlotSource.CLOUD) == MAX_SLOTS_PER_SOURCE
