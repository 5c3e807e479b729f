"""Tests of controller.core.sessions: the per-connector session machine, by example and by
property.

Every example is a story a driver or a backend would notice: plugging in starts charging (free
vend) or waits for a card, a remote start waits for the car, a stopped car gets no current, a
restart continues a transaction or ends it with the last meter value the last run recorded.
The properties run random sequences of readings, commands and restarts through the machine the
way the SessionDesk does and check what must never happen.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.sessions import (
    AuthMethod,
    ConnectorView,
    SessionEvent,
    SessionEventKind,
    SessionPhase,
    SessionRecord,
    SessionRefused,
    StopReason,
    authorise,
    engine_session,
    observe,
    resume,
    stop,
)

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=BERLIN)
TIMEOUT_S = 60.0
P = SessionPhase
K = SessionEventKind


def wall(t_s: float) -> datetime:
    return T0 + timedelta(seconds=t_s)


def view(
    present: bool | None, energy_wh: float | None = None, drawing: bool = False
) -> ConnectorView:
    return ConnectorView(vehicle_present=present, energy_wh=energy_wh, drawing=drawing)


def tick(
    rec: SessionRecord | None,
    present: bool | None,
    energy_wh: float | None = None,
    *,
    t_s: float = 0.0,
    drawing: bool = False,
    free_vend: bool = True,
    available: bool = True,
    new_id: str = "s1",
) -> tuple[SessionRecord | None, list[SessionEvent]]:
    return observe(
        rec,
        view(present, energy_wh, drawing),
        connector="cp1",
        new_id=new_id,
        now_s=t_s,
        wall=wall(t_s),
        free_vend=free_vend,
        available=available,
        connection_timeout_s=TIMEOUT_S,
    )


def auth(
    rec: SessionRecord | None,
    *,
    present: bool | None,
    energy_wh: float | None = None,
    t_s: float = 0.0,
    method: AuthMethod = AuthMethod.REMOTE,
    id_tag: str | None = "TAG1",
    tier: int | None = None,
    available: bool = True,
    new_id: str = "s1",
) -> tuple[SessionRecord, list[SessionEvent]]:
    return authorise(
        rec,
        connector="cp1",
        new_id=new_id,
        method=method,
        id_tag=id_tag,
        priority_tier=tier,
        vehicle_present=present,
        energy_wh=energy_wh,
        now_s=t_s,
        wall=wall(t_s),
        available=available,
    )


def stop_at(
    rec: SessionRecord | None, t_s: float, reason: StopReason = StopReason.LOCAL, by: str = "cli"
) -> tuple[SessionRecord, list[SessionEvent]]:
    return stop(rec, connector="cp1", reason=reason, by=by, wall=wall(t_s))


def still(
    rec: SessionRecord | None,
    present: bool | None,
    energy_wh: float,
    *,
    t_s: float,
    drawing: bool = False,
) -> SessionRecord:
    """A tick after which the session is still there."""
    after, _ = tick(rec, present, energy_wh, t_s=t_s, drawing=drawing)
    assert after is not None
    return after


def kinds(events: list[SessionEvent]) -> list[SessionEventKind]:
    return [e.kind for e in events]


def may_draw(rec: SessionRecord | None, *, present: bool | None, available: bool = True) -> bool:
    """Whether the engine lets the connector draw current (no entry: the defaults allow)."""
    session = engine_session(rec, available=available, vehicle_present=present)
    return session is None or session.charging_allowed


def hold(rec: SessionRecord | None, *, present: bool | None, available: bool = True) -> str:
    session = engine_session(rec, available=available, vehicle_present=present)
    assert session is not None
    assert not session.charging_allowed
    return session.hold


def active(energy_wh: float = 1000.0, t_s: float = 0.0) -> SessionRecord:
    rec, _ = tick(None, True, energy_wh, t_s=t_s)
    assert rec is not None and rec.phase is P.ACTIVE
    return rec


# -- free vend ---------------------------------------------------------------------------------


def test_free_vend_plugging_in_starts_a_transaction_at_once() -> None:
    rec, events = tick(None, False, 1000.0, t_s=0.0)
    assert (rec, events) == (None, [])

    rec, events = tick(None, True, 1000.0, t_s=5.0)
    assert rec is not None
    assert kinds(events) == [K.STARTED] and events[0].record == rec
    assert rec.phase is P.ACTIVE and rec.id == "s1" and rec.connector == "cp1"
    assert rec.method is AuthMethod.FREE and rec.id_tag is None
    assert rec.plugged_at == rec.started_at == rec.authorised_at == wall(5.0)
    assert rec.meter_start_wh == 1000.0 and rec.energy_wh == 0.0
    assert rec.stop_reason is None and rec.meter_stop_wh is None
    session = engine_session(rec, available=True, vehicle_present=True)
    assert session is not None and session.charging_allowed
    assert session.plugged_at_s == 5.0


def test_the_register_follows_the_transaction_and_drawing_is_noted() -> None:
    start = active(1000.0)
    rec, events = tick(start, True, 1250.5, t_s=10.0, drawing=True)
    assert events == [] and rec is not None
    assert rec.meter_last_wh == 1250.5 and rec.energy_wh == pytest.approx(250.5)
    assert rec.last_drawing_at == wall(10.0)
    same, _ = tick(rec, True, 1250.5, t_s=11.0)  # not drawing: the last time it drew stays
    assert same is rec


def test_an_implausible_register_value_is_ignored() -> None:
    rec = active(1000.0)
    for bad in (math.nan, math.inf, None):
        after, _ = tick(rec, True, bad, t_s=3.0)
        assert after is not None and after.meter_last_wh == 1000.0


# -- authorisation required --------------------------------------------------------------------


def test_authorisation_required_plugged_in_car_waits_then_starts_with_the_register_then() -> None:
    rec, events = tick(None, True, 1000.0, t_s=0.0, free_vend=False)
    assert rec is not None and kinds(events) == [K.PENDING]
    assert rec.phase is P.PENDING and rec.plugged_at == wall(0.0) and rec.started_at is None
    assert hold(rec, present=True) == "not_authorised"

    # The car waits; the register does not move a transaction that has not begun.
    rec, events = tick(rec, True, 1003.0, t_s=20.0, free_vend=False)
    assert events == [] and rec is not None and rec.phase is P.PENDING

    started, events = auth(
        rec, present=True, energy_wh=1003.0, t_s=30.0, method=AuthMethod.ID_TAG, tier=2,
        new_id="other",
    )  # fmt: skip
    assert kinds(events) == [K.STARTED]
    assert started.id == rec.id  # the same session: plugged at 0 s, started at 30 s
    assert started.phase is P.ACTIVE
    assert started.meter_start_wh == 1003.0
    assert (started.method, started.id_tag, started.priority_tier) == (AuthMethod.ID_TAG, "TAG1", 2)
    assert started.plugged_at == wall(0.0) and started.started_at == wall(30.0)
    assert started.authorised_at == wall(30.0)
    session = engine_session(started, available=True, vehicle_present=True)
    assert session is not None and session.charging_allowed and session.priority_tier == 2


def test_unplugged_while_waiting_for_authorisation_abandons_without_a_transaction() -> None:
    rec, _ = tick(None, True, 1000.0, free_vend=False)
    gone, events = tick(rec, False, 1000.0, t_s=8.0, free_vend=False)
    assert gone is not None and kinds(events) == [K.ABANDONED]
    assert gone.phase is P.CLOSED and not gone.open
    assert gone.started_at is None and gone.stop_reason is None and gone.energy_wh == 0.0
    assert gone.ended_at == wall(8.0)
    # The next car is a new session.
    nxt, events = tick(None, True, 1000.0, t_s=9.0, free_vend=False, new_id="s2")
    assert nxt is not None and nxt.id == "s2" and kinds(events) == [K.PENDING]


# -- authorised before the car comes ------------------------------------------------------------


def test_remote_start_before_plug_in_waits_for_the_car_then_starts() -> None:
    rec, events = auth(None, present=False, energy_wh=500.0, t_s=0.0, tier=1)
    assert kinds(events) == [K.AUTHORISED]
    assert rec.phase is P.AUTHORISED and rec.method is AuthMethod.REMOTE
    assert rec.authorised_at == wall(0.0) and rec.plugged_at is None
    assert hold(rec, present=False) == "not_authorised"  # nothing to draw for yet

    rec2, events = tick(rec, False, 500.0, t_s=30.0, free_vend=False)
    assert rec2 is rec and events == []

    started, events = tick(rec, True, 520.0, t_s=40.0, free_vend=False, new_id="unused")
    assert started is not None and kinds(events) == [K.STARTED]
    assert started.id == rec.id and started.phase is P.ACTIVE
    assert started.meter_start_wh == 520.0
    assert (started.method, started.id_tag, started.priority_tier) == (AuthMethod.REMOTE, "TAG1", 1)
    assert started.authorised_at == wall(0.0)
    assert started.plugged_at == started.started_at == wall(40.0)
    assert may_draw(started, present=True)


def test_an_authorisation_lapses_after_the_connection_timeout() -> None:
    rec, _ = auth(None, present=False, t_s=100.0)
    still, events = tick(rec, False, 0.0, t_s=100.0 + TIMEOUT_S - 0.1)
    assert still is rec and events == []
    gone, events = tick(rec, False, 0.0, t_s=100.0 + TIMEOUT_S)
    assert gone is not None and kinds(events) == [K.ABANDONED]
    assert gone.phase is P.CLOSED and gone.ended_at == wall(100.0 + TIMEOUT_S)
    assert gone.started_at is None and gone.stop_reason is None
    # A car that comes later finds no authorisation: with authorisation required it waits.
    nxt, events = tick(None, True, 0.0, t_s=200.0, free_vend=False, new_id="s2")
    assert nxt is not None and nxt.phase is P.PENDING


def test_authorising_a_free_connector_with_the_car_already_there_starts_on_the_next_reading() -> (
    None
):
    # The car stood there without a session (e.g. the state file could not be written).
    rec, events = auth(None, present=True, energy_wh=700.0, method=AuthMethod.TECHNICIAN)
    assert rec.phase is P.AUTHORISED and kinds(events) == [K.AUTHORISED]
    started, events = tick(rec, True, 701.0, t_s=1.0)
    assert started is not None and started.phase is P.ACTIVE and kinds(events) == [K.STARTED]
    assert started.meter_start_wh == 701.0


# -- ends ---------------------------------------------------------------------------------------


def test_unplugging_during_a_transaction_ends_it_with_the_last_register_value() -> None:
    rec = active(1000.0, t_s=0.0)
    rec = still(rec, True, 1500.0, t_s=60.0, drawing=True)
    rec = still(rec, True, 2300.0, t_s=120.0, drawing=True)
    ended, events = tick(rec, False, 2300.0, t_s=121.0)
    assert ended is not None and kinds(events) == [K.ENDED]
    assert ended.phase is P.CLOSED
    assert ended.stop_reason is StopReason.EV_DISCONNECTED and ended.stopped_by == "local"
    assert (ended.meter_start_wh, ended.meter_stop_wh) == (1000.0, 2300.0)
    assert ended.energy_wh == 1300.0
    assert ended.ended_at == wall(121.0) and ended.last_drawing_at == wall(120.0)


def test_the_unplug_readings_register_value_is_the_meter_stop() -> None:
    rec = active(1000.0)
    ended, _ = tick(rec, False, 1010.0, t_s=5.0)
    assert ended is not None and ended.meter_stop_wh == 1010.0


def test_stop_leaves_the_car_at_0_a_until_it_leaves() -> None:
    rec = active(1000.0)
    rec = still(rec, True, 1800.0, t_s=50.0)
    stopped, events = stop_at(rec, 60.0, StopReason.REMOTE, by="ocpp")
    assert kinds(events) == [K.ENDED]
    assert stopped.phase is P.FINISHING and stopped.open and not stopped.in_transaction
    assert stopped.stop_reason is StopReason.REMOTE and stopped.stopped_by == "ocpp"
    assert stopped.meter_stop_wh == 1800.0 and stopped.ended_at == wall(60.0)
    assert hold(stopped, present=True) == "stopped"

    # The car stays a while: whatever the register does now is not part of the transaction.
    later, events = tick(stopped, True, 1900.0, t_s=90.0)
    assert later is stopped and events == []

    gone, events = tick(stopped, False, 1900.0, t_s=120.0)
    assert gone is not None and kinds(events) == [K.CLOSED]
    assert gone.phase is P.CLOSED
    assert gone.meter_stop_wh == 1800.0 and gone.energy_wh == 800.0
    assert gone.ended_at == wall(60.0)  # the transaction ended at the stop, not the unplug
    assert gone.stop_reason is StopReason.REMOTE


def test_stopping_twice_is_refused_and_so_is_stopping_nothing() -> None:
    stopped, _ = stop_at(active(), 1.0)
    with pytest.raises(SessionRefused) as refused:
        stop_at(stopped, 2.0)
    assert refused.value.code == "ended"
    with pytest.raises(SessionRefused) as refused:
        stop_at(None, 2.0)
    assert refused.value.code == "no_session"
    closed, _ = tick(stopped, False, t_s=3.0)
    with pytest.raises(SessionRefused) as refused:
        stop_at(closed, 4.0)
    assert refused.value.code == "no_session"


@pytest.mark.parametrize("phase", [P.PENDING, P.AUTHORISED])
def test_stopping_before_the_transaction_abandons_it_with_the_reason(phase: SessionPhase) -> None:
    if phase is P.PENDING:
        rec, _ = tick(None, True, 10.0, free_vend=False)
    else:
        rec, _ = auth(None, present=False)
    assert rec is not None and rec.phase is phase
    gone, events = stop_at(rec, 5.0, StopReason.REMOTE, by="mqtt")
    assert kinds(events) == [K.ABANDONED]
    assert gone.phase is P.CLOSED and gone.started_at is None
    assert gone.stop_reason is StopReason.REMOTE and gone.stopped_by == "mqtt"


def test_a_second_authorisation_is_refused_while_one_holds_the_connector() -> None:
    for rec in (active(), auth(None, present=False)[0], stop_at(active(), 1.0)[0]):
        with pytest.raises(SessionRefused) as refused:
            auth(rec, present=True, new_id="s9")
        assert refused.value.code == "busy", rec.phase


# -- availability --------------------------------------------------------------------------------


def test_an_unavailable_connector_starts_nothing_and_holds_the_car() -> None:
    rec, events = tick(None, True, 1000.0, available=False)
    assert (rec, events) == (None, [])
    assert hold(None, present=True, available=False) == "unavailable"
    assert hold(None, present=False, available=False) == "unavailable"
    with pytest.raises(SessionRefused) as refused:
        auth(None, present=True, available=False)
    assert refused.value.code == "unavailable"
    # Available again: the waiting car starts (free vend).
    rec, events = tick(None, True, 1000.0, t_s=1.0)
    assert rec is not None and rec.phase is P.ACTIVE


def test_an_authorisation_never_starts_on_a_connector_made_unavailable_since() -> None:
    # A remote start, then the connector is taken out of service (no transaction runs, so the
    # change applies at once): the car that comes must not charge.
    rec, _ = auth(None, present=False, t_s=0.0)
    after, events = tick(rec, True, 100.0, t_s=5.0, available=False)
    assert after is None or after.phase is not P.ACTIVE
    assert not may_draw(after, present=True, available=False)
    assert K.STARTED not in kinds(events)


def test_a_plugged_in_car_without_a_session_may_not_draw() -> None:
    assert hold(None, present=True) == "not_authorised"
    assert engine_session(None, available=True, vehicle_present=False) is None
    assert engine_session(None, available=True, vehicle_present=None) is None


# -- no fresh reading ----------------------------------------------------------------------------


def _every_open_phase() -> Iterator[SessionRecord]:
    yield auth(None, present=False, t_s=0.0)[0]
    pending, _ = tick(None, True, 10.0, free_vend=False)
    assert pending is not None
    yield pending
    yield active()
    yield stop_at(active(), 1.0)[0]


@pytest.mark.parametrize("rec", list(_every_open_phase()), ids=lambda r: r.phase.value)
def test_without_a_fresh_reading_nothing_changes(rec: SessionRecord) -> None:
    # Long after any timeout: without a reading nobody knows whether a car is there.
    after, events = tick(rec, None, 99999.0, t_s=10 * TIMEOUT_S)
    assert after is rec and events == []
    assert tick(None, None, 1.0, t_s=1.0) == (None, [])
    assert resume(rec, view(None), wall=wall(1.0), clean_shutdown=False, now_s=1.0) == (rec, [])


# -- restart -------------------------------------------------------------------------------------


def _from_disk(rec: SessionRecord) -> SessionRecord:
    """What the next run reads back: the monotonic times do not survive a restart."""
    return replace(rec, plugged_at_s=None, authorised_at_s=None)


def test_restart_with_the_car_still_plugged_in_continues_the_transaction() -> None:
    rec = active(1000.0)
    rec = still(rec, True, 1400.0, t_s=30.0)
    cont, events = resume(
        _from_disk(rec), view(True, 1650.0), wall=wall(90.0), clean_shutdown=False, now_s=3.0
    )
    assert events == []
    assert cont.id == rec.id and cont.phase is P.ACTIVE and cont.started_at == rec.started_at
    assert cont.meter_start_wh == 1000.0 and cont.meter_last_wh == 1650.0
    assert cont.energy_wh == 650.0  # what it charged while we were down counts
    session = engine_session(cont, available=True, vehicle_present=True)
    assert session is not None and session.charging_allowed and session.plugged_at_s == 3.0


@pytest.mark.parametrize(
    ("clean", "reason"), [(True, StopReason.REBOOT), (False, StopReason.POWER_LOSS)]
)
def test_restart_with_the_car_gone_ends_with_the_last_known_meter_value(
    clean: bool, reason: StopReason
) -> None:
    rec = active(1000.0)
    rec = still(rec, True, 1400.0, t_s=30.0)  # the last value the last run recorded
    ended, events = resume(
        _from_disk(rec), view(False, 1700.0), wall=wall(300.0), clean_shutdown=clean, now_s=2.0
    )
    assert kinds(events) == [K.ENDED]
    assert ended.phase is P.CLOSED and ended.stop_reason is reason
    assert ended.stopped_by == "controller"
    assert ended.meter_stop_wh == 1400.0 and ended.energy_wh == 400.0
    assert ended.ended_at == wall(300.0)


def test_restart_finishing_car_still_there_stays_stopped_car_gone_closes() -> None:
    stopped, _ = stop_at(active(1000.0), 5.0)
    still, events = resume(
        _from_disk(stopped), view(True, 1200.0), wall=wall(60.0), clean_shutdown=True, now_s=1.0
    )
    assert events == [] and still.phase is P.FINISHING
    assert hold(still, present=True) == "stopped"
    gone, events = resume(
        _from_disk(stopped), view(False, 1200.0), wall=wall(60.0), clean_shutdown=True, now_s=1.0
    )
    assert kinds(events) == [K.CLOSED] and gone.phase is P.CLOSED
    assert gone.stop_reason is StopReason.LOCAL and gone.meter_stop_wh == 1000.0


def test_restart_pending_car_still_there_keeps_waiting_car_gone_abandons() -> None:
    pending, _ = tick(None, True, 10.0, free_vend=False)
    assert pending is not None
    still, events = resume(
        _from_disk(pending), view(True, 10.0), wall=wall(60.0), clean_shutdown=True, now_s=1.0
    )
    assert events == [] and still.phase is P.PENDING and still.plugged_at_s == 1.0
    gone, events = resume(
        _from_disk(pending), view(False, 10.0), wall=wall(60.0), clean_shutdown=True, now_s=1.0
    )
    assert kinds(events) == [K.ABANDONED] and gone.phase is P.CLOSED and gone.started_at is None


def test_restart_authorised_gets_a_new_connection_timeout_from_the_restart() -> None:
    rec, _ = auth(None, present=False, t_s=5000.0)
    back, events = resume(
        _from_disk(rec), view(False), wall=wall(5100.0), clean_shutdown=False, now_s=2.0
    )
    assert events == [] and back.phase is P.AUTHORISED and back.authorised_at_s == 2.0
    still, _ = tick(back, False, t_s=2.0 + TIMEOUT_S - 1)
    assert still is back
    gone, events = tick(back, False, t_s=2.0 + TIMEOUT_S)
    assert gone is not None and kinds(events) == [K.ABANDONED]


# -- the register ---------------------------------------------------------------------------------


def test_energy_is_never_negative_when_the_register_goes_backwards() -> None:
    rec = active(5000.0)
    rec = still(rec, True, 5200.0, t_s=10.0)
    reset, _ = tick(rec, True, 40.0, t_s=20.0)  # the EVSE was swapped or its register reset
    assert reset is not None and reset.energy_wh == 0.0
    ended, _ = tick(reset, False, 40.0, t_s=30.0)
    assert ended is not None and ended.phase is P.CLOSED
    assert ended.energy_wh == 0.0
    # What the backend bills from (meterStop - meterStart) is never negative either.
    assert ended.meter_stop_wh is not None and ended.meter_start_wh is not None
    assert ended.meter_stop_wh >= ended.meter_start_wh


# -- properties ----------------------------------------------------------------------------------


@dataclass
class Driver:
    """Runs one connector's machine the way the SessionDesk does: readings each tick, commands
    in between, restarts that lose the monotonic clock and resume on the first fresh reading."""

    free_vend: bool
    ids: Iterator[str] = field(default_factory=lambda: (f"s{i}" for i in itertools.count()))
    rec: SessionRecord | None = None
    restored: bool = False
    clean: bool = False
    t_s: float = 0.0
    energy_wh: float = 10_000.0
    present: bool = False
    available: bool = True
    history: dict[str, list[SessionRecord]] = field(default_factory=dict)
    events: list[SessionEvent] = field(default_factory=list)

    def take(self, rec: SessionRecord | None, events: list[SessionEvent]) -> None:
        for e in events:
            assert e.record == rec, "an event carries the record it produced"
        if rec is not None:
            versions = self.history.setdefault(rec.id, [])
            if versions:
                assert versions[-1].open, f"{rec.id} changed after it closed"
            if not versions or versions[-1] != rec:
                versions.append(rec)
        self.events.extend(events)
        self.rec = rec if rec is None or rec.open else None
        if self.rec is None:
            self.restored = False  # closed by a command before its first fresh reading

    def reading(self, fresh: bool) -> None:
        v = view(self.present if fresh else None, self.energy_wh, drawing=self.present)
        if self.restored and v.vehicle_present is not None:
            assert self.rec is not None
            self.restored = False
            self.take(*resume(self.rec, v, wall=wall(self.t_s), clean_shutdown=self.clean,
                              now_s=self.t_s))  # fmt: skip
            if self.rec is None:
                return
        if self.restored:
            return
        self.take(
            *observe(
                self.rec,
                v,
                connector="cp1",
                new_id=next(self.ids),
                now_s=self.t_s,
                wall=wall(self.t_s),
                free_vend=self.free_vend,
                available=self.available,
                connection_timeout_s=TIMEOUT_S,
            )
        )

    def command(self, what: str) -> None:
        try:
            if what == "stop":
                self.take(*stop_at(self.rec, self.t_s, StopReason.REMOTE))
            else:
                self.take(
                    *auth(
                        self.rec,
                        present=self.present,
                        energy_wh=self.energy_wh,
                        t_s=self.t_s,
                        new_id=next(self.ids),
                        available=self.available,
                    )
                )
        except SessionRefused:
            pass

    def restart(self, clean: bool) -> None:
        if self.rec is not None:
            self.rec = _from_disk(self.rec)
            self.restored = True
            self.clean = clean


READ = st.tuples(
    st.just("read"),
    st.booleans() | st.just(True),  # fresh, mostly
    st.floats(-3000, 3000) | st.floats(0, 500),  # the register also goes backwards
    st.floats(0.1, 90),
)
# Weighted towards what happens at a real connector: many readings, now and then a car comes or
# goes, a command, an outage of the connector, a restart.
STEP = st.one_of(
    READ,
    READ,
    READ,
    st.tuples(st.just("plug"), st.booleans()),
    st.tuples(st.just("plug"), st.booleans()),
    st.tuples(st.just("command"), st.sampled_from(["start", "stop"])),
    st.tuples(st.just("available"), st.booleans() | st.just(True)),
    st.tuples(st.just("restart"), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(free_vend=st.booleans(), steps=st.lists(STEP, min_size=20, max_size=100))
def test_random_sequences_keep_the_machines_promises(
    free_vend: bool, steps: list[tuple[object, ...]]
) -> None:
    d = Driver(free_vend=free_vend)
    for step in steps:
        kind = step[0]
        if kind == "read":
            _, fresh, delta_wh, dt_s = step
            assert isinstance(fresh, bool) and isinstance(delta_wh, float)
            assert isinstance(dt_s, float)
            d.t_s += dt_s
            d.energy_wh = max(0.0, d.energy_wh + delta_wh)  # backwards too: resets, swaps
            d.reading(fresh)
        elif kind == "plug":
            d.present = bool(step[1])
        elif kind == "command":
            d.command(str(step[1]))
        elif kind == "available":
            d.available = bool(step[1])
        else:
            d.restart(bool(step[1]))

        # At most one open session per connector: every open record is the current one.
        latest = {sid: versions[-1] for sid, versions in d.history.items()}
        still_open = [r for r in latest.values() if r.open]
        assert len(still_open) <= (1 if d.rec is not None else 0)
        if d.rec is not None:
            assert [r.id for r in still_open] == [d.rec.id]

        # Only an ACTIVE session lets a plugged-in car draw.
        if d.present and not d.restored and may_draw(d.rec, present=True, available=d.available):
            assert d.rec is not None and d.rec.phase is P.ACTIVE, d.rec

    ids = list(d.history)
    assert len(ids) == len(set(ids))
    for versions in d.history.values():
        assert len({v.connector for v in versions}) == 1
        for rec in versions:
            assert rec.energy_wh >= 0.0
            if rec.phase is P.ACTIVE:
                assert rec.started_at is not None and rec.meter_start_wh is not None
            if rec.started_at is not None and rec.phase in (P.FINISHING, P.CLOSED):
                # An ended transaction: why, when, and a meter value a backend can bill from.
                assert rec.stop_reason is not None, rec
                assert rec.ended_at is not None
                assert rec.meter_stop_wh is not None and rec.meter_start_wh is not None
                assert rec.meter_stop_wh >= rec.meter_start_wh, rec
            if rec.started_at is None:
                assert rec.meter_stop_wh is None
        # A session's transaction starts once, and its start values never change after.
        starts = {(v.started_at, v.meter_start_wh) for v in versions if v.started_at is not None}
        assert len(starts) <= 1
    for e in d.events:
        if e.kind is K.ENDED:
            assert e.record.stop_reason is not None


def test_without_free_vend_a_connector_nobody_authorised_gets_no_fallback_current() -> None:
    # An EVSE that went silent (or before its first reading): with free vend the engine's
    # fallback applies; where charging needs an authorisation nobody gave, it stays at 0 A.
    assert engine_session(None, available=True, vehicle_present=None) is None
    held = engine_session(None, available=True, vehicle_present=None, free_vend=False)
    assert held is not None and not held.charging_allowed and held.hold == "not_authorised"
    assert engine_session(None, available=True, vehicle_present=False, free_vend=False) is None
