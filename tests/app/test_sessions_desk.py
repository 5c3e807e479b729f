"""Tests of controller.app.sessions.SessionDesk over a real SQLite state file.

The desk is driven as the control loop drives it (readings each tick, commands in between); what
the tests look at is what others see: the rows on disk (read over a connection of our own, as
`evsite report` or the next run would), what the listeners (OCPP, MQTT, payments) are told and
when, what the engine is handed (may this connector draw?), and the store-failure alarm. A
"crash" is a new Database and a new desk on the same file; a failing disk is a connection that
can no longer write (``PRAGMA query_only``: every write fails as on a read-only file).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.app.sessions import (
    METER_SAVE_PERIOD_S,
    IdTagDecision,
    SessionDesk,
)
from controller.config import load_config_text
from controller.core.model import EvseReading, EvseState, Session
from controller.core.sessions import (
    AuthMethod,
    SessionEvent,
    SessionEventKind,
    SessionPhase,
    SessionRefused,
    SessionSettings,
    StopReason,
)
from controller.store.db import Database
from controller.store.sessions import SessionStore

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=BERLIN)
K = SessionEventKind
P = SessionPhase

SITE_YAML = """\
site: {id: desk, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}}
"""
SITE = load_config_text(SITE_YAML).site


@dataclass
class Rig:
    """A desk on a state file, its clock, the cars at its connectors and what it said."""

    path: Path
    free_vend: bool = True
    now_s: float = 1000.0
    cars: dict[str, bool] = field(default_factory=lambda: {"cp1": False, "cp2": False})
    energy_wh: dict[str, float] = field(default_factory=lambda: {"cp1": 10_000.0, "cp2": 0.0})
    heard: list[tuple[SessionEvent, dict[str, Any] | None]] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)
    db: Database = field(init=False)
    desk: SessionDesk = field(init=False)
    engine: dict[str, Session] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boot()

    def boot(self, *, clean_shutdown: bool | None = None) -> None:
        """A new run on the same file (after ``crash`` or at the start)."""
        self.db = Database(self.path)
        self.desk = SessionDesk(
            site=SITE,
            store=SessionStore(self.db),
            settings=SessionSettings(free_vend=self.free_vend, connection_timeout_s=60.0),
            clock=lambda: self.now_s,
            wall_clock=self.wall,
            new_id=lambda: f"s{next(self.ids)}",
        )
        self.desk.listeners.append(self.listen)
        if clean_shutdown is not None:
            self.desk.restore(clean_shutdown=clean_shutdown)

    def crash(self) -> None:
        """The process dies: nothing more is written, the memory is gone."""
        self.db.close()

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now_s)

    def listen(self, event: SessionEvent) -> None:
        # What a listener finds on disk at the moment it hears of the event.
        self.heard.append((event, self.row(event.record.id)))

    def row(self, session_id: str) -> dict[str, Any] | None:
        """A session's row, read as another process would (its own connection)."""
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        finally:
            conn.close()
        return None if found is None else dict(found)

    def rows(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY id")]
        finally:
            conn.close()

    def reading(self, cid: str) -> EvseReading:
        present = self.cars[cid]
        drawing = present and self.allowed(cid)
        return EvseReading(
            at_s=self.now_s,
            state=EvseState.C if drawing else EvseState.B if present else EvseState.A,
            current_a=(16.0, 16.0, 16.0) if drawing else (0.0, 0.0, 0.0),
            energy_wh=self.energy_wh[cid],
        )

    def tick(self, dt_s: float = 1.0, *, fresh: bool = True) -> dict[str, Session]:
        self.now_s += dt_s
        for cid, present in self.cars.items():
            if present and self.allowed(cid):
                self.energy_wh[cid] += 11_000.0 * dt_s / 3600.0  # 11 kW while allowed
        readings = {cid: self.reading(cid) if fresh else None for cid in self.cars}
        self.engine = self.desk.observe(readings, self.now_s, self.wall())
        return self.engine

    def allowed(self, cid: str) -> bool:
        """Whether the car draws now: only with a session the engine let draw last tick (a
        connector without a vehicle had 0 A)."""
        session = self.engine.get(cid)
        return session is not None and session.charging_allowed

    def may_draw(self, cid: str) -> bool:
        session = self.engine.get(cid)
        return session is None or session.charging_allowed

    def hold(self, cid: str) -> str:
        session = self.engine.get(cid)
        assert session is not None and not session.charging_allowed, session
        return session.hold

    def kinds(self) -> list[tuple[str, SessionEventKind]]:
        return [(e.record.connector, e.kind) for e, _ in self.heard]

    def break_disk(self) -> None:
        self.db.connection.execute("PRAGMA query_only = ON")

    def mend_disk(self) -> None:
        self.db.connection.execute("PRAGMA query_only = OFF")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "evsite.sqlite3")
    r.desk.restore(clean_shutdown=True)
    yield r
    r.db.close()


@pytest.fixture
def paid(tmp_path: Path) -> Iterator[Rig]:
    """Authorisation required (sessions.free_vend: false)."""
    r = Rig(tmp_path / "evsite.sqlite3", free_vend=False)
    r.desk.restore(clean_shutdown=True)
    yield r
    r.db.close()


# -- on disk before anyone is told ---------------------------------------------------------------


def test_every_transition_is_on_disk_before_a_listener_hears_of_it(rig: Rig) -> None:
    rig.tick()
    rig.cars["cp1"] = True
    rig.tick()  # free vend: starts
    for _ in range(5):
        rig.tick()
    rig.desk.stop("cp1", reason=StopReason.REMOTE, by="ocpp")
    rig.tick()
    rig.cars["cp1"] = False
    rig.tick()

    assert rig.kinds() == [("cp1", K.STARTED), ("cp1", K.ENDED), ("cp1", K.CLOSED)]
    for event, on_disk in rig.heard:
        assert on_disk is not None, f"{event.kind} told before its row existed"
        assert on_disk["phase"] == event.record.phase.value, event.kind
        assert on_disk["stop_reason"] == (
            event.record.stop_reason.value if event.record.stop_reason else None
        )
    ended = rig.row(rig.heard[0][0].record.id)
    assert ended is not None
    assert (ended["phase"], ended["stop_reason"], ended["stopped_by"]) == (
        "closed",
        "Remote",
        "ocpp",
    )
    assert ended["meter_start_wh"] == 10_000.0
    # 5 ticks at 11 kW between the start and the stop: 15.3 Wh billed; none after the stop.
    assert ended["meter_stop_wh"] == pytest.approx(10_000.0 + 5 * 11_000 / 3600)


def test_a_broken_listener_does_not_silence_the_others(rig: Rig) -> None:
    def broken(_: SessionEvent) -> None:
        raise RuntimeError("the MQTT link fell over")

    rig.desk.listeners.insert(0, broken)
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.kinds() == [("cp1", K.STARTED)]


def test_the_meter_value_is_saved_at_most_every_period_while_charging(rig: Rig) -> None:
    rig.cars["cp1"] = True
    rig.tick()
    sid = rig.desk.record("cp1").id  # type: ignore[union-attr]
    saved: list[tuple[float, float]] = []  # (time, value) each time the row's value changed
    last = None
    for _ in range(45):
        rig.tick()
        row = rig.row(sid)
        assert row is not None
        if row["meter_last_wh"] != last:
            last = row["meter_last_wh"]
            saved.append((rig.now_s, last))
        # After a power cut now, the session would end with a value at most a period old.
        in_memory = rig.desk.record("cp1")
        assert in_memory is not None and in_memory.meter_last_wh is not None
        behind_wh = in_memory.meter_last_wh - row["meter_last_wh"]
        assert behind_wh <= 11_000 * (METER_SAVE_PERIOD_S + 1) / 3600 + 1e-6
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(saved)]
    assert len(saved) >= 4
    assert all(gap >= METER_SAVE_PERIOD_S for gap in gaps), gaps


# -- restart ---------------------------------------------------------------------------------------


def _charge_then_crash(rig: Rig, seconds: int = 25) -> tuple[str, float]:
    rig.cars["cp1"] = True
    for _ in range(seconds):
        rig.tick()
    rec = rig.desk.record("cp1")
    assert rec is not None and rec.phase is P.ACTIVE
    on_disk = rig.row(rec.id)
    assert on_disk is not None
    rig.crash()
    return rec.id, float(on_disk["meter_last_wh"])


def test_after_a_crash_a_car_still_plugged_in_continues_its_session(rig: Rig) -> None:
    sid, _ = _charge_then_crash(rig)
    rig.heard.clear()
    rig.now_s = 5.0  # a new boot: a new monotonic clock
    rig.boot(clean_shutdown=False)
    assert rig.desk.record("cp1") is not None
    rig.tick()
    rec = rig.desk.record("cp1")
    assert rec is not None and rec.id == sid and rec.phase is P.ACTIVE
    assert rig.may_draw("cp1")
    assert rig.heard == []  # nothing ended, nothing started
    rig.tick(15.0)
    assert rig.row(sid)["meter_last_wh"] == rig.energy_wh["cp1"]  # type: ignore[index]
    assert [r["id"] for r in rig.rows()] == [sid]


@pytest.mark.parametrize(("clean", "reason"), [(False, "PowerLoss"), (True, "Reboot")])
def test_after_a_restart_a_car_that_left_ends_its_session_with_the_last_saved_value(
    rig: Rig, clean: bool, reason: str
) -> None:
    sid, saved_wh = _charge_then_crash(rig)
    rig.cars["cp1"] = False
    rig.energy_wh["cp1"] += 500.0  # whatever the EVSE says now was never seen by us
    rig.heard.clear()
    rig.now_s = 5.0
    rig.boot(clean_shutdown=clean)
    rig.tick()
    assert rig.desk.record("cp1") is None
    assert rig.kinds() == [("cp1", K.ENDED)]
    ended = rig.row(sid)
    assert ended is not None
    assert (ended["phase"], ended["stop_reason"], ended["stopped_by"]) == (
        "closed",
        reason,
        "controller",
    )
    assert ended["meter_stop_wh"] == saved_wh
    # The next car is a new session.
    rig.cars["cp1"] = True
    rig.tick()
    nxt = rig.desk.record("cp1")
    assert nxt is not None and nxt.id != sid and nxt.phase is P.ACTIVE


def test_a_restored_session_waits_for_a_fresh_reading(rig: Rig) -> None:
    sid, _ = _charge_then_crash(rig)
    rig.cars["cp1"] = False
    rig.now_s = 5.0
    rig.boot(clean_shutdown=False)
    rig.tick(fresh=False)
    rig.tick(fresh=False)
    rec = rig.desk.record("cp1")
    assert rec is not None and rec.id == sid and rec.phase is P.ACTIVE
    assert rig.row(sid)["phase"] == "active"  # type: ignore[index]
    rig.tick()
    assert rig.row(sid)["stop_reason"] == "PowerLoss"  # type: ignore[index]


def test_a_stop_before_the_first_reading_after_a_restart_holds(rig: Rig) -> None:
    # The backend's RemoteStop arrives while the EVSE has not answered yet since the reboot.
    sid, _ = _charge_then_crash(rig)
    rig.now_s = 5.0
    rig.boot(clean_shutdown=False)
    stopped = rig.desk.stop("cp1", reason=StopReason.REMOTE, by="ocpp")
    assert stopped.phase is P.FINISHING
    rig.tick()  # the car is still there
    rec = rig.desk.record("cp1")
    assert rec is not None and rec.id == sid and rec.phase is P.FINISHING
    assert rig.hold("cp1") == "stopped"
    assert rig.row(sid)["stop_reason"] == "Remote"  # type: ignore[index]


def test_a_session_of_a_connector_that_left_the_config_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "evsite.sqlite3"
    db = Database(path)
    from controller.core.sessions import SessionRecord

    SessionStore(db).save(
        [
            SessionRecord(
                id="old",
                connector="cp9",
                phase=P.ACTIVE,
                method=AuthMethod.FREE,
                started_at=T0,
                plugged_at=T0,
                meter_start_wh=5.0,
                meter_last_wh=9.0,
            )
        ]
    )
    db.close()
    rig = Rig(path)
    rig.desk.restore(clean_shutdown=False)
    row = rig.row("old")
    assert row is not None and row["phase"] == "closed"
    assert row["stop_reason"] is not None and row["meter_stop_wh"] == 9.0
    rig.db.close()


# -- the store fails -------------------------------------------------------------------------------


def test_no_session_starts_while_the_state_file_cannot_be_written(rig: Rig) -> None:
    rig.tick()
    rig.break_disk()
    rig.cars["cp1"] = True
    for _ in range(3):
        rig.tick()
        assert rig.desk.record("cp1") is None
        assert rig.hold("cp1") == "not_authorised"  # the car waits at 0 A
    assert [c.code for c in rig.desk.conditions()] == ["session_store_failed"]
    assert rig.heard == []  # nobody was told of a transaction nobody could bill
    assert rig.rows() == []
    with pytest.raises(SessionRefused) as refused:
        rig.desk.start("cp2", method=AuthMethod.REMOTE, by="ocpp")
    assert refused.value.code in ("refused", "store_failed")
    assert rig.desk.record("cp2") is None

    rig.mend_disk()
    rig.tick()
    rig.tick()
    rec = rig.desk.record("cp1")
    assert rec is not None and rec.phase is P.ACTIVE and rig.may_draw("cp1")
    assert rig.desk.conditions() == []
    assert rig.kinds() == [("cp1", K.STARTED)]
    assert rig.row(rec.id)["phase"] == "active"  # type: ignore[index]


def test_the_alarm_clears_when_the_file_is_writable_again_even_with_nothing_to_write(
    rig: Rig,
) -> None:
    rig.break_disk()
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.desk.conditions()
    rig.cars["cp1"] = False  # the driver gave up and left: nothing is waiting to be written
    rig.tick()
    rig.mend_disk()
    for _ in range(int(METER_SAVE_PERIOD_S) + 2):
        rig.tick()
    assert rig.desk.conditions() == []
    rig.desk.start("cp2", method=AuthMethod.REMOTE, by="ocpp")  # accepted again


def test_a_running_session_outlives_a_store_failure_and_is_written_when_it_recovers(
    rig: Rig,
) -> None:
    rig.cars["cp1"] = True
    rig.tick()
    sid = rig.desk.record("cp1").id  # type: ignore[union-attr]
    rig.heard.clear()
    rig.break_disk()
    rig.cars["cp1"] = False
    rig.tick()  # the car left: the transaction ended, but the row cannot say so yet
    assert rig.desk.conditions()
    assert rig.row(sid)["phase"] == "active"  # type: ignore[index]
    assert rig.heard == []  # not told before it is on disk
    rig.mend_disk()
    rig.tick()
    assert rig.row(sid)["stop_reason"] == "EVDisconnected"  # type: ignore[index]
    assert rig.kinds() == [("cp1", K.ENDED)]
    assert rig.heard[0][1] is not None and rig.heard[0][1]["phase"] == "closed"
    assert rig.desk.conditions() == []


# -- gates, commands -------------------------------------------------------------------------------


def test_a_gate_refuses_new_sessions_while_it_says_so(rig: Rig) -> None:
    closed = {"yes": True}

    def gate(method: AuthMethod) -> str | None:
        return "the site is closed" if closed["yes"] else None

    rig.desk.gates.append(gate)
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.desk.record("cp1") is None and rig.hold("cp1") == "not_authorised"
    with pytest.raises(SessionRefused, match="the site is closed"):
        rig.desk.start("cp2", method=AuthMethod.TECHNICIAN, by="cli")
    closed["yes"] = False
    rig.tick()
    assert rig.desk.record("cp1") is not None and rig.may_draw("cp1")


def test_authorisation_required_the_car_waits_at_0_a_until_started(paid: Rig) -> None:
    paid.cars["cp1"] = True
    for _ in range(3):
        paid.tick()
    pending = paid.desk.record("cp1")
    assert pending is not None and pending.phase is P.PENDING
    assert paid.hold("cp1") == "not_authorised"
    assert paid.energy_wh["cp1"] == 10_000.0
    rec = paid.desk.start("cp1", method=AuthMethod.TECHNICIAN, by="cli", priority_tier=2)
    assert rec.id == pending.id and rec.phase is P.ACTIVE and rec.priority_tier == 2
    assert paid.row(rec.id)["phase"] == "active"  # type: ignore[index]
    paid.tick()
    assert paid.may_draw("cp1") and paid.engine["cp1"].priority_tier == 2
    assert paid.kinds() == [("cp1", K.PENDING), ("cp1", K.STARTED)]


def test_unknown_connector_and_double_start_are_refused(paid: Rig) -> None:
    with pytest.raises(SessionRefused) as refused:
        paid.desk.start("cp7", method=AuthMethod.TECHNICIAN, by="cli")
    assert refused.value.code == "unknown_connector"
    paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    with pytest.raises(SessionRefused) as refused:
        paid.desk.start("cp1", method=AuthMethod.TECHNICIAN, by="cli")
    assert refused.value.code == "busy"


def test_an_authorisation_lapses_on_disk_too(paid: Rig) -> None:
    rec = paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    assert paid.row(rec.id)["phase"] == "authorised"  # type: ignore[index]
    paid.tick(30.0)
    assert paid.desk.record("cp1") is not None
    paid.tick(31.0)
    assert paid.desk.record("cp1") is None
    assert paid.row(rec.id)["phase"] == "closed"  # type: ignore[index]
    assert paid.kinds() == [("cp1", K.AUTHORISED), ("cp1", K.ABANDONED)]


def test_availability_off_waits_for_the_running_transaction_then_applies(rig: Rig) -> None:
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.desk.set_availability("cp1", False, by="ocpp") == "scheduled"
    assert rig.desk.available("cp1")
    assert rig.desk.status_document()["cp1"].get("availability_scheduled") is not None
    rig.tick()
    assert rig.may_draw("cp1")  # the transaction runs on
    rig.cars["cp1"] = False
    rig.tick()
    assert not rig.desk.available("cp1")
    # who asked is what is recorded, not the fact that it waited
    assert rig.desk.store.availability()["cp1"] == (False, "ocpp")
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.desk.record("cp1") is None and rig.hold("cp1") == "unavailable"
    with pytest.raises(SessionRefused) as refused:
        rig.desk.start("cp1", method=AuthMethod.TECHNICIAN, by="cli")
    assert refused.value.code == "unavailable"

    # It is on disk: the next run keeps the connector out of service.
    rig.crash()
    rig.boot(clean_shutdown=False)
    rig.tick()
    assert not rig.desk.available("cp1") and rig.hold("cp1") == "unavailable"
    assert rig.desk.set_availability("cp1", True, by="cli") == "accepted"
    rig.tick()
    assert rig.desk.record("cp1") is not None and rig.may_draw("cp1")


def test_availability_off_applies_when_the_session_is_stopped(rig: Rig) -> None:
    rig.cars["cp1"] = True
    rig.tick()
    rig.desk.set_availability("cp1", False, by="cli")
    rig.desk.stop("cp1", reason=StopReason.LOCAL, by="cli")
    rig.tick()
    assert not rig.desk.available("cp1")


def test_availability_changed_while_the_disk_fails_is_written_once_it_works(rig: Rig) -> None:
    # A broken cable: the technician takes cp1 out of service while the disk is failing.
    rig.break_disk()
    assert rig.desk.set_availability("cp1", False, by="cli") == "accepted"
    assert not rig.desk.available("cp1") and rig.desk.conditions()
    rig.tick()
    rig.mend_disk()
    rig.tick(METER_SAVE_PERIOD_S)
    assert rig.desk.conditions() == []
    rig.crash()
    rig.boot(clean_shutdown=False)
    assert not rig.desk.available("cp1")  # still out of service after the restart


def test_the_same_card_again_stops_the_session_it_started(paid: Rig) -> None:
    asked: list[tuple[str, str]] = []

    async def backend(connector: str, id_tag: str) -> IdTagDecision | None:
        asked.append((connector, id_tag))
        if id_tag == "BLOCKED":
            return IdTagDecision(accepted=False, status="Blocked")
        return IdTagDecision(accepted=True, status="Accepted", priority_tier=3)

    paid.desk.authorisers.append(backend)
    paid.cars["cp1"] = True
    paid.tick()
    answer = asyncio.run(paid.desk.present_id_tag("cp1", "CARD1", by="rfid"))
    assert answer["result"] == "authorised"
    assert answer["session"]["phase"] == "active" and answer["session"]["id_tag"] == "CARD1"
    paid.tick()
    assert paid.may_draw("cp1") and paid.engine["cp1"].priority_tier == 3

    with pytest.raises(SessionRefused) as refused:
        asyncio.run(paid.desk.present_id_tag("cp2", "BLOCKED", by="rfid"))
    assert refused.value.code == "not_accepted" and "Blocked" in str(refused.value)

    answer = asyncio.run(paid.desk.present_id_tag("cp1", "CARD1", by="rfid"))
    assert answer["result"] == "stopped"
    assert answer["session"]["stop_reason"] == "Local"
    assert answer["session"]["stopped_by"] == "rfid"
    assert asked == [("cp1", "CARD1"), ("cp2", "BLOCKED")]  # the stop asked nobody
    paid.tick()
    assert paid.hold("cp1") == "stopped"


def test_a_card_nobody_can_check_is_refused(paid: Rig) -> None:
    with pytest.raises(SessionRefused) as refused:
        asyncio.run(paid.desk.present_id_tag("cp1", "CARD1", by="rfid"))
    assert refused.value.code == "no_authoriser"
    assert paid.desk.record("cp1") is None


def test_tier_and_references_are_recorded(rig: Rig) -> None:
    rig.cars["cp1"] = True
    rig.tick()
    rec = rig.desk.set_tier("cp1", 4, by="mqtt")
    rig.tick()
    assert rig.engine["cp1"].priority_tier == 4
    attached = rig.desk.attach(rec.id, ocpp_transaction_id=77, payment_id="pay-1")
    assert attached is not None
    row = rig.row(rec.id)
    assert row is not None
    assert (row["priority_tier"], row["ocpp_transaction_id"], row["payment_id"]) == (
        4,
        77,
        "pay-1",
    )
    with pytest.raises(SessionRefused):
        rig.desk.set_tier("cp2", 1, by="cli")


def test_a_start_refused_for_the_disk_is_accepted_once_the_disk_works(paid: Rig) -> None:
    paid.break_disk()
    with pytest.raises(SessionRefused) as refused:
        paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    assert refused.value.code == "store_failed"
    assert paid.desk.record("cp1") is None and paid.desk.conditions()
    paid.mend_disk()
    rec = paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    assert rec.phase is P.AUTHORISED and paid.row(rec.id) is not None
    assert paid.desk.conditions() == []


def test_a_waiting_car_authorised_while_the_disk_fails_does_not_charge(paid: Rig) -> None:
    paid.cars["cp1"] = True
    paid.tick()
    waiting = paid.desk.record("cp1")
    assert waiting is not None and waiting.phase is P.PENDING
    energy_wh = paid.energy_wh["cp1"]
    paid.break_disk()
    with pytest.raises(SessionRefused) as refused:
        paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    assert refused.value.code == "store_failed"
    for _ in range(3):
        paid.tick()
    # The row on disk says pending: the car must not charge under it.
    assert paid.hold("cp1") == "not_authorised" and paid.energy_wh["cp1"] == energy_wh
    assert paid.desk.record("cp1") == waiting
    paid.mend_disk()
    rec = paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    assert rec.id == waiting.id and paid.row(rec.id)["phase"] == "active"  # type: ignore[index]


def test_an_authorised_session_whose_car_comes_while_the_disk_fails_waits(paid: Rig) -> None:
    waiting = paid.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    assert waiting.phase is P.AUTHORISED
    paid.break_disk()
    paid.cars["cp1"] = True
    energy_wh = paid.energy_wh["cp1"]
    for _ in range(3):
        paid.tick()
    # The row on disk says authorised: no transaction, no current, nobody told of a start.
    assert paid.hold("cp1") == "not_authorised" and paid.energy_wh["cp1"] == energy_wh
    assert paid.desk.record("cp1") == waiting
    assert (K.STARTED) not in [e.kind for e, _ in paid.heard]
    paid.mend_disk()
    paid.tick()
    rec = paid.desk.record("cp1")
    assert rec is not None and rec.id == waiting.id and rec.phase is P.ACTIVE
    assert paid.row(rec.id)["phase"] == "active"  # type: ignore[index]


def test_an_authorisation_at_a_connector_that_left_the_config_lapses(paid: Rig) -> None:
    waiting = paid.desk.start("cp2", method=AuthMethod.CARD, by="card", payment_id="p1")
    assert waiting.phase is P.AUTHORISED
    paid.crash()
    # The next run's site has cp1 only.
    one = load_config_text(SITE_YAML.replace(
        "  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}}\n", ""
    )).site  # fmt: skip
    paid.db = Database(paid.path)
    desk = SessionDesk(
        site=one,
        store=SessionStore(paid.db),
        settings=SessionSettings(free_vend=False),
        clock=lambda: paid.now_s,
        wall_clock=paid.wall,
    )
    heard: list[SessionEvent] = []
    desk.listeners.append(heard.append)
    desk.restore(clean_shutdown=True)
    # Closed on disk (an open row would keep its card's pre-auth open forever), and told.
    row = paid.row(waiting.id)
    assert row is not None and row["phase"] == "closed" and row["stop_reason"] == "Other"
    assert [(e.kind, e.record.id) for e in heard] == [(K.ABANDONED, waiting.id)]
    assert desk.records() == {}


def test_a_clean_shutdown_writes_the_latest_meter_value_for_a_reboot_stop(rig: Rig) -> None:
    rig.cars["cp1"] = True
    for _ in range(6):  # the meter value went to disk once, on the 2nd tick
        rig.tick()
    rec = rig.desk.record("cp1")
    assert rec is not None and rec.meter_last_wh is not None
    assert rig.row(rec.id)["meter_last_wh"] < rec.meter_last_wh  # type: ignore[index]
    rig.desk.save_open()
    assert rig.row(rec.id)["meter_last_wh"] == rec.meter_last_wh  # type: ignore[index]
    rig.crash()
    rig.cars["cp1"] = False
    rig.boot(clean_shutdown=True)
    rig.tick()
    ended = rig.row(rec.id)
    assert ended is not None
    assert (ended["stop_reason"], ended["meter_stop_wh"]) == ("Reboot", rec.meter_last_wh)


# -- properties ------------------------------------------------------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.sampled_from([1.0, 1.0, 4.0, 30.0])),
        st.tuples(st.just("tick"), st.just(1.0)),
        st.tuples(st.just("plug"), st.sampled_from(["cp1", "cp2"]), st.booleans()),
        st.tuples(st.just("start"), st.sampled_from(["cp1", "cp2"])),
        st.tuples(st.just("stop"), st.sampled_from(["cp1", "cp2"])),
        st.tuples(st.just("available"), st.sampled_from(["cp1", "cp2"]), st.booleans()),
        st.tuples(st.just("disk"), st.booleans()),
        st.tuples(st.just("restart"), st.booleans()),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(free_vend=st.booleans(), steps=STEPS)
def test_random_operation_keeps_the_records_honest(
    free_vend: bool, steps: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp) / "evsite.sqlite3", free_vend=free_vend)
        rig.desk.restore(clean_shutdown=True)
        broken = False
        try:
            for step in steps:
                kind = step[0]
                if kind == "tick":
                    rig.tick(step[1])
                elif kind == "plug":
                    rig.cars[step[1]] = step[2]
                elif kind in ("start", "stop", "available"):
                    with contextlib.suppress(SessionRefused):
                        if kind == "start":
                            rig.desk.start(step[1], method=AuthMethod.REMOTE, by="ocpp")
                        elif kind == "stop":
                            rig.desk.stop(step[1], reason=StopReason.REMOTE, by="ocpp")
                        else:
                            rig.desk.set_availability(step[1], step[2], by="cli")
                elif kind == "disk":
                    broken = not step[1]
                    (rig.break_disk if broken else rig.mend_disk)()
                else:
                    if step[1] and not broken:
                        rig.desk.save_open()
                    rig.crash()
                    rig.now_s = 1.0  # a new boot, a new monotonic clock
                    rig.boot(clean_shutdown=step[1])
                    broken = False

                rows = rig.rows()
                open_rows = [r for r in rows if r["phase"] != "closed"]
                connectors = [r["connector"] for r in open_rows]
                assert len(connectors) == len(set(connectors)), open_rows
                for r in rows:
                    if r["started_at"] is not None and r["phase"] in ("finishing", "closed"):
                        assert r["stop_reason"] is not None, r
                        assert r["meter_stop_wh"] >= r["meter_start_wh"], r
                for cid, present in rig.cars.items():
                    if kind != "tick":
                        break  # the engine's view is that of the last tick
                    if present and cid in rig.engine and rig.engine[cid].charging_allowed:
                        rec = rig.desk.record(cid)
                        assert rec is not None and rec.phase is P.ACTIVE
                        # Charging only under a session the state file knows of.
                        assert rig.row(rec.id) is not None
                for event, on_disk in rig.heard:
                    assert on_disk is not None, event
                    # What the listener found was this transition or a later one, never older.
                    if event.kind in (K.STARTED, K.ENDED, K.CLOSED):
                        assert on_disk["phase"] != "pending", (event.kind, on_disk)
                    if event.kind is K.ENDED:
                        assert on_disk["stop_reason"] == event.record.stop_reason
        finally:
            rig.db.close()


def test_a_scheduled_availability_change_survives_a_restart(rig: Rig) -> None:
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.desk.set_availability("cp1", False, by="mqtt") == "scheduled"
    rig.crash()
    rig.boot(clean_shutdown=False)
    rig.tick()
    assert rig.desk.available("cp1") and rig.may_draw("cp1")  # the transaction runs on
    assert rig.desk.status_document()["cp1"].get("availability_scheduled") is False
    rig.cars["cp1"] = False
    rig.tick()
    assert not rig.desk.available("cp1")
    assert rig.desk.store.availability()["cp1"] == (False, "mqtt")
    assert rig.desk.store.scheduled_availability() == {}
