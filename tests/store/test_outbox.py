"""The persistent outbox: order, acknowledgement, the bound, restarts, a full disk, alarms."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.store.db import Database, StoreError
from controller.store.outbox import AlarmCode, NewMessage, Outbox, OutboxFull


def _open(tmp: Path, **kw: int) -> tuple[Database, Outbox]:
    db = Database.in_state_dir(tmp)
    bound = kw.get("bound")
    return db, Outbox(db, bounds={"mqtt": bound} if bound else None)


def _kinds(box: Outbox, channel: str = "mqtt", limit: int = 1000) -> list[str]:
    return [m.payload for m in box.peek(channel, limit)]


def test_peek_returns_messages_in_order_per_channel(tmp_path: Path) -> None:
    db, box = _open(tmp_path)
    for i in range(5):
        box.append("mqtt", "fault_raised", f'{{"n": {i}}}')
        box.append("ocpp", "MeterValues", f'{{"m": {i}}}')
    assert _kinds(box) == [f'{{"n": {i}}}' for i in range(5)]
    assert _kinds(box, "ocpp") == [f'{{"m": {i}}}' for i in range(5)]
    assert box.count("mqtt") == box.count("ocpp") == 5
    first_two = box.peek("mqtt", 2)
    assert [m.payload for m in box.peek("mqtt", 2, after_seq=first_two[-1].seq)] == [
        '{"n": 2}',
        '{"n": 3}',
    ]
    ids = {m.id for m in box.peek("mqtt", 10)}
    assert len(ids) == 5 and all(len(i) == 36 for i in ids)  # UUIDs, all different
    db.close()


def test_ack_removes_only_those_acknowledged_and_counts_attempts(tmp_path: Path) -> None:
    db, box = _open(tmp_path)
    sent = box.append_many("mqtt", [NewMessage(kind="k", payload=str(i)) for i in range(4)])
    assert box.ack([sent[1].id, sent[2].id], attempted=[sent[0].id, sent[3].id]) == 2
    left = box.peek("mqtt", 10)
    assert [m.payload for m in left] == ["0", "3"]
    assert [m.attempts for m in left] == [1, 1]
    assert box.ack([sent[1].id]) == 0  # a duplicate PUBACK changes nothing
    assert box.count("mqtt") == 2
    db.close()


def test_a_restart_keeps_every_unacknowledged_row_in_order(tmp_path: Path) -> None:
    db, box = _open(tmp_path)
    sent = box.append_many("mqtt", [NewMessage(kind="k", payload=str(i)) for i in range(100)])
    box.ack([m.id for m in sent[:10]])
    db.close()

    db, box = _open(tmp_path)
    assert box.count("mqtt") == 90
    again = box.peek("mqtt", 1000)
    assert [m.id for m in again] == [m.id for m in sent[10:]]
    # The sequence goes on after the restart: later rows come after the old ones.
    new = box.append("mqtt", "k", "late")
    assert new.seq > again[-1].seq
    db.close()


def test_at_the_bound_append_raises_and_drops_nothing(tmp_path: Path) -> None:
    db, box = _open(tmp_path, bound=10)
    for i in range(8):
        box.append("mqtt", "k", str(i))
    assert box.alarms() == ()
    box.append("mqtt", "k", "8")  # 9 of 10: the alarm rises before the bound refuses
    (alarm,) = box.alarms()
    assert alarm.code is AlarmCode.OUTBOX_FULL and alarm.channel == "mqtt"
    box.append("mqtt", "k", "9")
    with pytest.raises(OutboxFull, match="holds 10 of 10"):
        box.append("mqtt", "k", "10")
    # A batch that does not fit whole is refused whole.
    box.ack([box.peek("mqtt", 1)[0].id])
    with pytest.raises(OutboxFull):
        box.append_many(
            "mqtt", [NewMessage(kind="k", payload="a"), NewMessage(kind="k", payload="b")]
        )
    assert _kinds(box) == [str(i) for i in range(1, 10)]  # the oldest was acked, nothing dropped
    assert box.alarms()[0].code is AlarmCode.OUTBOX_FULL
    # The alarm falls once the backend took enough (below 80 % of the bound).
    box.ack([box.peek("mqtt", 1)[0].id])
    assert box.count("mqtt") == 8 and box.alarms() != ()
    box.ack([box.peek("mqtt", 1)[0].id])
    assert box.count("mqtt") == 7 and box.alarms() == ()
    # Other channels have their own bound.
    box.append("ocpp", "k", "x")
    db.close()


def test_the_full_alarm_is_up_again_after_a_restart(tmp_path: Path) -> None:
    db, box = _open(tmp_path, bound=10)
    box.append_many("mqtt", [NewMessage(kind="k", payload=str(i)) for i in range(10)])
    db.close()
    db, box = _open(tmp_path, bound=10)
    assert [a.code for a in box.alarms()] == [AlarmCode.OUTBOX_FULL]
    db.close()


def test_a_full_disk_raises_store_error_and_the_alarm_until_a_write_succeeds(
    tmp_path: Path,
) -> None:
    db, box = _open(tmp_path)
    box.append("mqtt", "k", "before")
    conn = db.connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    # SQLite's own cap on the file size answers exactly as a full disk does (SQLITE_FULL).
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 200_000
    with pytest.raises(StoreError, match="database or disk is full"):
        box.append("mqtt", "k", big)
    (alarm,) = box.alarms()
    assert alarm.code is AlarmCode.STORE_UNWRITABLE
    assert box.count("mqtt") == 1 and _kinds(box) == ["before"]
    conn.execute("PRAGMA max_page_count = 1073741823")
    box.append("mqtt", "k", "after")
    assert box.alarms() == ()
    assert _kinds(box) == ["before", "after"]
    db.close()


def test_an_id_given_twice_is_refused(tmp_path: Path) -> None:
    db, box = _open(tmp_path)
    box.append("mqtt", "k", "1", id="same")
    with pytest.raises(ValueError, match="already queued"):
        box.append("mqtt", "k", "2", id="same")
    assert box.count("mqtt") == 1
    db.close()


def test_appended_rows_are_committed_before_append_returns(tmp_path: Path) -> None:
    db, box = _open(tmp_path)
    box.append("mqtt", "k", "durable")
    # Another connection (another process after a crash) sees it at once.
    other = sqlite3.connect(tmp_path / "evsite.sqlite3")
    assert other.execute("SELECT payload FROM outbox").fetchall() == [("durable",)]
    assert db.connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other.close()
    db.close()
