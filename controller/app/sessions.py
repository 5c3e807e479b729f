"""App layer: the sessions of a site, kept per connector, on disk before anyone is told.

The control loop calls ``SessionDesk.observe`` every tick with the EVSE readings, before it
allocates: the desk runs each connector's session machine (controller.core.sessions), writes
every transition to the state file, tells its listeners (the OCPP link, MQTT events, payments)
and hands the engine what it needs (``Session``: tier, and whether the connector may draw).

Commands come from the technician socket, MQTT, OCPP and the payment terminal: start
(authorise), stop, presenting an idTag, priority tier, availability. They all land here, so
"the latest command wins" between sources, and every one is recorded with who gave it.

If the state file cannot be written, no new session starts (a transaction nobody could bill
must not begin) and an alarm is raised until a write succeeds again.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from controller.app.control_socket import Command, CommandRefused, NoArguments
from controller.core.model import Condition, EvseReading, Session
from controller.core.sessions import (
    DRAWING_THRESHOLD_A,
    AuthMethod,
    ConnectorView,
    SessionEvent,
    SessionEventKind,
    SessionPhase,
    SessionRecord,
    SessionRefused,
    SessionSettings,
    StopReason,
    authorise,
    engine_session,
    observe,
    resume,
    stop,
)
from controller.core.site import Site
from controller.store.db import StoreError
from controller.store.sessions import SessionStore

log = structlog.get_logger("evsite.sessions")

# While a transaction runs, its energy register is written at most this often (besides every
# transition): after a power cut the session ends with a meter value at most this old.
METER_SAVE_PERIOD_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class IdTagDecision:
    """An authoriser's answer for an idTag (OCPP: Authorize, local list, cache)."""

    accepted: bool
    status: str  # OCPP idTagInfo.status: Accepted, Blocked, Expired, Invalid, ConcurrentTx
    priority_tier: int | None = None
    parent_id_tag: str | None = None


# (connector, id_tag) -> a decision, or None when this authoriser has no opinion.
Authoriser = Callable[[str, str], Awaitable[IdTagDecision | None]]
# A gate may refuse a new session by method: returns the reason, or None to let it pass.
StartGate = Callable[[AuthMethod], str | None]
# A hold keeps a connector for one idTag (an OCPP reservation): (connector, the idTag of the
# new session or None) -> the reason to refuse it, or None. Free vend does not start a session
# on a held connector: its car waits for the idTag the connector is held for.
ConnectorHold = Callable[[str, str | None], str | None]


class SessionDesk:
    """Owns the session records of every connector of one site."""

    def __init__(
        self,
        *,
        site: Site,
        store: SessionStore,
        settings: SessionSettings,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.site = site
        self.store = store
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.new_id = new_id
        self.connectors = [c.id for c in site.connectors]
        self._open: dict[str, SessionRecord] = {}
        self._restored: dict[str, SessionRecord] = {}
        self._clean_shutdown = False
        self._views: dict[str, ConnectorView] = {}
        self._available: dict[str, bool] = dict.fromkeys(self.connectors, True)
        # connector -> (available, who asked): applied when its running transaction ends
        self._availability_pending: dict[str, tuple[bool, str]] = {}
        self._dirty: dict[str, SessionRecord] = {}
        self._meter_saved_s: dict[str, float] = {}
        self._store_error: str | None = None
        self._probed_s = -1e9
        self._untold: list[SessionEvent] = []  # events whose records are not on disk yet
        self._availability_unsaved: dict[str, tuple[bool, str]] = {}
        self.listeners: list[Callable[[SessionEvent], None]] = []
        self.authorisers: list[Authoriser] = []
        self.gates: list[StartGate] = []
        self.holds: list[ConnectorHold] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def restore(self, *, clean_shutdown: bool) -> None:
        """Take over what the last run left open; each waits for its connector's first fresh
        reading to know whether its vehicle is still there (``resume``)."""
        self._clean_shutdown = clean_shutdown
        gone: list[SessionEvent] = []
        for rec in self.store.open_sessions():
            if rec.connector not in self._available:
                # The connector left the config: its session ends as if its vehicle had left
                # (a transaction with a stop reason and the last meter value, for the bill).
                ended, happened = resume(
                    rec,
                    ConnectorView(vehicle_present=False),
                    wall=self.wall_clock(),
                    clean_shutdown=clean_shutdown,
                    now_s=self.clock(),
                )
                if ended.open:
                    # An authorisation waiting for a car (one a card paid for, say): no car
                    # will ever come to a connector that is gone, so it lapses now.
                    ended, happened = stop(
                        ended,
                        connector=rec.connector,
                        reason=StopReason.OTHER,
                        by="controller",
                        wall=self.wall_clock(),
                    )
                self._remember(ended, dirty=True)
                gone.extend(happened)
                continue
            self._restored[rec.connector] = rec
            self._open[rec.connector] = rec
        for cid, (available, _source) in self.store.availability().items():
            if cid in self._available:
                self._available[cid] = available
        self._availability_pending = {
            cid: change
            for cid, change in self.store.scheduled_availability().items()
            if cid in self._available
        }
        if self._restored:
            log.info(
                "sessions_restored",
                sessions={c: r.phase.value for c, r in self._restored.items()},
                clean_shutdown=clean_shutdown,
            )
        self._flush()
        self._announce(gone)

    def save_open(self) -> None:
        """On a clean shutdown: write every open session with its latest meter value, so one
        whose vehicle leaves while we are down ends (Reboot) with the exact value, not one up
        to METER_SAVE_PERIOD_S old."""
        for rec in self._open.values():
            self._dirty[rec.id] = rec
        self._flush()
        self._announce([])

    # -- every tick --------------------------------------------------------------------------

    def observe(
        self, readings: Mapping[str, EvseReading | None], now_s: float, wall: datetime
    ) -> dict[str, Session]:
        """Run every connector's session one tick; returns the engine's view of them."""
        events: list[SessionEvent] = []
        created: set[str] = set()
        # Sessions whose transaction begins this tick, as they were before: a start that
        # cannot be written does not begin (the row on disk still says pending / authorised).
        starting: dict[str, SessionRecord] = {}
        stale_s = self.site.control.evse_stale_s
        for cid in self.connectors:
            reading = readings.get(cid)
            if reading is None or now_s - reading.at_s > stale_s:
                view = ConnectorView(vehicle_present=None)
            else:
                view = ConnectorView(
                    vehicle_present=reading.state.vehicle_present,
                    # An invalid register (NaN) is no value: the session keeps its last one.
                    energy_wh=reading.energy_wh if math.isfinite(reading.energy_wh) else None,
                    drawing=max(reading.current_a) >= DRAWING_THRESHOLD_A,
                )
            self._views[cid] = view
            rec = self._open.get(cid)
            if cid in self._restored and view.vehicle_present is not None:
                del self._restored[cid]
                if rec is not None:
                    # The record as it is now: a command (a stop) may have changed it since.
                    rec, happened = resume(
                        rec,
                        view,
                        wall=wall,
                        clean_shutdown=self._clean_shutdown,
                        now_s=now_s,
                    )
                    self._adopt(cid, rec, happened, events)
                    rec = self._open.get(cid)
                if rec is None:
                    continue  # the restored session ended; a new one starts next tick
            if cid in self._restored:
                continue  # no fresh reading yet: the restored session waits
            new, happened = observe(
                rec,
                view,
                connector=cid,
                new_id=self.new_id(),
                now_s=now_s,
                wall=wall,
                free_vend=self.settings.free_vend and self._held(cid, None) is None,
                available=self._available[cid],
                connection_timeout_s=self.settings.connection_timeout_s,
            )
            if (
                new is not None
                and new is rec
                and new.phase is SessionPhase.PENDING
                and self.settings.free_vend
                and view.vehicle_present
                and self._available[cid]
                and self._held(cid, None) is None
                and self._gate(AuthMethod.FREE) is None
            ):
                # A car a hold kept waiting under free vend: the hold is gone, it starts.
                new, happened = authorise(
                    new,
                    connector=cid,
                    new_id=new.id,
                    method=AuthMethod.FREE,
                    id_tag=None,
                    priority_tier=None,
                    vehicle_present=True,
                    energy_wh=view.energy_wh,
                    now_s=now_s,
                    wall=wall,
                    available=True,
                )
            if rec is None and new is not None and new.phase is SessionPhase.ACTIVE:
                refusal = self._gate(new.method or AuthMethod.FREE)
                if refusal is not None:
                    # No session while a gate refuses: the vehicle waits at 0 A.
                    self._views[cid] = view
                    continue
            if new is not rec:
                if rec is None and new is not None:
                    created.add(new.id)
                elif (
                    rec is not None
                    and new is not None
                    and new.phase is SessionPhase.ACTIVE
                    and rec.phase is not SessionPhase.ACTIVE
                ):
                    starting[new.id] = rec
                self._adopt(cid, new, happened, events)
                if (
                    new is not None
                    and new.phase is SessionPhase.ACTIVE
                    and not happened
                    and now_s - self._meter_saved_s.get(cid, -1e9) >= METER_SAVE_PERIOD_S
                ):
                    self._dirty[new.id] = new
                    self._meter_saved_s[cid] = now_s
        self._apply_pending_availability()
        if not self._flush():
            # A session whose first record could not be written never began: nobody could
            # bill it. Its vehicle waits at 0 A; the next tick tries again (and so finds out
            # when the file is writable again).
            unwritten = created & self._dirty.keys()
            for sid in unwritten:
                rec = self._dirty.pop(sid)
                if self._open.get(rec.connector) is rec:
                    del self._open[rec.connector]
            for sid, waiting in starting.items():
                if sid in self._dirty:  # its start is not on disk: it waits again
                    unwritten.add(sid)
                    self._dirty[sid] = waiting
                    self._open[waiting.connector] = waiting
            events = [e for e in events if e.record.id not in unwritten]
            if self._store_error is not None and not self._dirty:
                self._probe(now_s)
        self._announce(events)
        return self.engine_sessions()

    def engine_sessions(self) -> dict[str, Session]:
        out: dict[str, Session] = {}
        for cid in self.connectors:
            view = self._views.get(cid)
            present = view.vehicle_present if view is not None else None
            session = engine_session(
                self._open.get(cid),
                available=self._available[cid],
                vehicle_present=present,
                free_vend=self.settings.free_vend,
            )
            if session is not None:
                out[cid] = session
        return out

    # -- commands ----------------------------------------------------------------------------

    def start(
        self,
        connector: str,
        *,
        method: AuthMethod,
        by: str,
        id_tag: str | None = None,
        priority_tier: int | None = None,
        payment_id: str | None = None,
    ) -> SessionRecord:
        """Authorise charging at a connector (a remote or app start, a card payment, an
        accepted idTag, a technician). Raises SessionRefused with the reason."""
        self._known(connector)
        refusal = self._gate(method)
        if refusal is not None:
            raise SessionRefused(refusal, code="refused")
        held = self._held(connector, id_tag)
        if held is not None:
            raise SessionRefused(held, code="held")
        view = self._views.get(connector, ConnectorView(vehicle_present=None))
        rec, happened = authorise(
            self._open.get(connector),
            connector=connector,
            new_id=self.new_id(),
            method=method,
            id_tag=id_tag,
            priority_tier=priority_tier,
            vehicle_present=view.vehicle_present,
            energy_wh=view.energy_wh,
            now_s=self.clock(),
            wall=self.wall_clock(),
            available=self._available[connector],
        )
        if payment_id is not None:
            rec = replace(rec, payment_id=payment_id)
            happened = [replace(e, record=rec) for e in happened]
        self._commit(connector, rec, happened, by=by)
        return rec

    def stop(self, connector: str, *, reason: StopReason, by: str) -> SessionRecord:
        self._known(connector)
        rec, happened = stop(
            self._open.get(connector),
            connector=connector,
            reason=reason,
            by=by,
            wall=self.wall_clock(),
        )
        self._commit(connector, rec, happened, by=by)
        return rec

    def set_tier(self, connector: str, tier: int | None, *, by: str) -> SessionRecord:
        self._known(connector)
        rec = self._open.get(connector)
        if rec is None or rec.phase in (SessionPhase.FINISHING, SessionPhase.CLOSED):
            raise SessionRefused(f"connector {connector} has no session", code="no_session")
        rec = replace(rec, priority_tier=tier)
        self._commit(
            connector, rec, [SessionEvent(kind=SessionEventKind.UPDATED, record=rec)], by=by
        )
        return rec

    def attach(
        self,
        session_id: str,
        *,
        ocpp_transaction_id: int | None = None,
        payment_id: str | None = None,
    ) -> SessionRecord | None:
        """Record a reference another part learnt later (the backend's transactionId)."""
        for cid, rec in self._open.items():
            if rec.id == session_id:
                new = replace(
                    rec,
                    ocpp_transaction_id=(
                        ocpp_transaction_id
                        if ocpp_transaction_id is not None
                        else rec.ocpp_transaction_id
                    ),
                    payment_id=payment_id if payment_id is not None else rec.payment_id,
                )
                self._open[cid] = new
                self._dirty[new.id] = new
                self._flush()
                return new
        closed = self.store.get(session_id)
        if closed is None:
            return None
        new = replace(
            closed,
            ocpp_transaction_id=ocpp_transaction_id or closed.ocpp_transaction_id,
            payment_id=payment_id or closed.payment_id,
        )
        self._dirty[new.id] = new
        self._flush()
        return new

    def set_availability(self, connector: str, available: bool, *, by: str) -> str:
        """Operative or inoperative. With a transaction running, an inoperative change waits
        for its end ("scheduled", as OCPP answers ChangeAvailability)."""
        self._known(connector)
        rec = self._open.get(connector)
        if not available and rec is not None and rec.phase is SessionPhase.ACTIVE:
            self._availability_pending[connector] = (available, by)
            self._save_pending_availability()
            log.info("availability_scheduled", connector=connector, available=available, by=by)
            return "scheduled"
        if self._availability_pending.pop(connector, None) is not None:
            self._save_pending_availability()
        self._set_available(connector, available, by)
        return "accepted"

    async def present_id_tag(self, connector: str, id_tag: str, *, by: str) -> dict[str, Any]:
        """An idTag presented at a connector (RFID reader): stops the session it started, or
        asks the authorisers and starts one."""
        self._known(connector)
        rec = self._open.get(connector)
        if rec is not None and rec.phase is SessionPhase.ACTIVE and rec.id_tag == id_tag:
            self.stop(connector, reason=StopReason.LOCAL, by=by)
            return {"result": "stopped", "session": session_document(self._record_of(rec.id))}
        decision: IdTagDecision | None = None
        for ask in self.authorisers:
            decision = await ask(connector, id_tag)
            if decision is not None:
                break
        if decision is None:
            raise SessionRefused(
                f"idTag {id_tag}: nobody can authorise it (no OCPP link)", code="no_authoriser"
            )
        if not decision.accepted:
            raise SessionRefused(f"idTag {id_tag}: {decision.status}", code="not_accepted")
        started = self.start(
            connector,
            method=AuthMethod.ID_TAG,
            by=by,
            id_tag=id_tag,
            priority_tier=decision.priority_tier,
        )
        return {"result": "authorised", "session": session_document(started)}

    # -- reading -----------------------------------------------------------------------------

    def record(self, connector: str) -> SessionRecord | None:
        return self._open.get(connector)

    def records(self) -> dict[str, SessionRecord]:
        return dict(self._open)

    def available(self, connector: str) -> bool:
        return self._available[connector]

    def refusal(self, method: AuthMethod, connector: str | None = None) -> str | None:
        """Why a new session by ``method`` (at ``connector``, if given) would be refused now: a
        gate, or a hold on the connector; None when it would not be."""
        return self._gate(method) or (None if connector is None else self._held(connector, None))

    def vehicle_present(self, connector: str) -> bool | None:
        view = self._views.get(connector)
        return None if view is None else view.vehicle_present

    def conditions(self) -> list[Condition]:
        if self._store_error is None:
            return []
        return [
            Condition(code="session_store_failed", subject="sessions", detail=self._store_error)
        ]

    def status_document(self) -> dict[str, Any]:
        return {
            cid: {
                "available": self._available[cid],
                **(
                    {"availability_scheduled": self._availability_pending[cid][0]}
                    if cid in self._availability_pending
                    else {}
                ),
                "session": session_document(self._open[cid]) if cid in self._open else None,
            }
            for cid in self.connectors
        }

    # -- inside ------------------------------------------------------------------------------

    def _known(self, connector: str) -> None:
        if connector not in self._available:
            raise SessionRefused(f"no connector {connector!r}", code="unknown_connector")

    def _gate(self, method: AuthMethod) -> str | None:
        # A broken state file is not judged here: the new session's first write fails and
        # undoes it (``_commit``, ``observe``), so a file that works again is noticed at once.
        for gate in self.gates:
            try:
                refusal = gate(method)
            except Exception as exc:  # runs in the tick: a broken gate refuses, never stalls it
                log.error("session_gate_failed", method=method.value, error=repr(exc))
                return f"a session gate failed: {exc!r}"
            if refusal is not None:
                return refusal
        return None

    def _held(self, connector: str, id_tag: str | None) -> str | None:
        for hold in self.holds:
            try:
                reason = hold(connector, id_tag)
            except Exception as exc:  # runs in the tick: a broken hold holds, never stalls it
                log.error("session_hold_failed", connector=connector, error=repr(exc))
                return f"a connector hold failed: {exc!r}"
            if reason is not None:
                return reason
        return None

    def _record_of(self, session_id: str) -> SessionRecord:
        for rec in self._open.values():
            if rec.id == session_id:
                return rec
        stored = self.store.get(session_id)
        assert stored is not None
        return stored

    def _commit(
        self, connector: str, rec: SessionRecord, happened: list[SessionEvent], *, by: str
    ) -> None:
        """A command's result: on disk first; a new session that cannot be stored is refused."""
        before = self._open.get(connector)
        unwritten = self._dirty.get(rec.id)
        # A transaction that begins (a waiting car authorised) is a promise too: not on disk,
        # it must not begin, or the car charges under a row that still says pending.
        starts = rec.phase is SessionPhase.ACTIVE and (
            before is None or before.phase is not SessionPhase.ACTIVE
        )
        self._remember(rec, dirty=True)
        try:
            self.store.save([rec])
        except StoreError as exc:
            self._store_failed(str(exc))
            if before is None or before.id != rec.id or starts:
                # Nothing was promised yet: undo and refuse.
                if unwritten is not None:
                    self._dirty[rec.id] = unwritten
                else:
                    self._dirty.pop(rec.id, None)
                if before is None:
                    self._open.pop(connector, None)
                else:
                    self._open[connector] = before
                raise SessionRefused(
                    f"the state file cannot be written: {exc}", code="store_failed"
                ) from exc
        else:
            self._dirty.pop(rec.id, None)
            self._store_ok()
            self._flush()  # what an earlier failure left unwritten, before anyone is told
        log.info(
            "session_command",
            connector=connector,
            session=rec.id,
            phase=rec.phase.value,
            by=by,
            events=[e.kind.value for e in happened],
        )
        if rec.phase is SessionPhase.CLOSED:
            self._apply_pending_availability()
        self._announce(happened)

    def _adopt(
        self,
        cid: str,
        rec: SessionRecord | None,
        happened: list[SessionEvent],
        events: list[SessionEvent],
    ) -> None:
        if rec is None:
            self._open.pop(cid, None)
            return
        self._remember(rec, dirty=bool(happened))
        events.extend(happened)
        for e in happened:
            log.info(
                "session_" + e.kind.value,
                connector=cid,
                session=rec.id,
                method=rec.method.value if rec.method else None,
                reason=rec.stop_reason.value if rec.stop_reason else None,
                energy_wh=round(rec.energy_wh, 1),
            )

    def _remember(self, rec: SessionRecord, *, dirty: bool) -> None:
        if dirty or rec.id in self._dirty:
            self._dirty[rec.id] = rec
        if rec.phase is SessionPhase.CLOSED:
            if self._open.get(rec.connector, rec).id == rec.id:
                self._open.pop(rec.connector, None)
        else:
            self._open[rec.connector] = rec

    def _flush(self) -> bool:
        """Write the records (and availabilities) changed since the last write; False if
        that failed (they are kept, and written with the next successful flush)."""
        if not self._dirty and not self._availability_unsaved:
            return self._store_error is None
        try:
            if self._dirty:
                self.store.save(list(self._dirty.values()))
                self._dirty.clear()
            for cid, (available, by) in list(self._availability_unsaved.items()):
                self.store.set_availability(cid, available, by)
                del self._availability_unsaved[cid]
        except StoreError as exc:
            self._store_failed(str(exc))
            return False
        self._store_ok()
        return True

    def _probe(self, now_s: float) -> None:
        """While the alarm is up with nothing to write: find out now and then whether the
        file is writable again, so the alarm clears without waiting for the next session."""
        if now_s - self._probed_s < METER_SAVE_PERIOD_S:
            return
        self._probed_s = now_s
        try:
            self.store.probe()
        except StoreError as exc:
            self._store_failed(str(exc))
        else:
            self._store_ok()

    def _announce(self, events: list[SessionEvent]) -> None:
        """Tell the listeners, once every record is on disk (in the order things happened)."""
        self._untold.extend(events)
        if self._dirty:
            return  # held until the next successful write
        untold, self._untold = self._untold, []
        self._tell(untold)

    def _store_failed(self, detail: str) -> None:
        if self._store_error is None:
            log.error("session_store_failed", error=detail)
        self._store_error = detail

    def _store_ok(self) -> None:
        if self._store_error is not None:
            log.info("session_store_recovered")
        self._store_error = None

    def _tell(self, events: list[SessionEvent]) -> None:
        for event in events:
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception as exc:  # one broken listener must not stop the others
                    log.error("session_listener_failed", kind=event.kind.value, error=repr(exc))

    def _apply_pending_availability(self) -> None:
        for cid, (available, by) in list(self._availability_pending.items()):
            rec = self._open.get(cid)
            if rec is None or rec.phase is not SessionPhase.ACTIVE:
                del self._availability_pending[cid]
                self._set_available(cid, available, by)
                self._save_pending_availability()

    def _save_pending_availability(self) -> None:
        try:
            self.store.save_scheduled_availability(self._availability_pending)
        except StoreError as exc:
            self._store_failed(str(exc))  # in force in memory; lost only with a restart

    def _set_available(self, connector: str, available: bool, by: str) -> None:
        try:
            self.store.set_availability(connector, available, by)
        except StoreError as exc:
            self._store_failed(str(exc))
            # In force now; on disk with the next successful write, so a restart keeps it.
            self._availability_unsaved[connector] = (available, by)
        else:
            self._availability_unsaved.pop(connector, None)
        if self._available[connector] != available:
            log.info("availability_changed", connector=connector, available=available, by=by)
        self._available[connector] = available


def session_document(rec: SessionRecord) -> dict[str, Any]:
    """A session as JSON for the socket, MQTT and the report."""

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": rec.id,
        "connector": rec.connector,
        "phase": rec.phase.value,
        "method": rec.method.value if rec.method else None,
        "id_tag": rec.id_tag,
        "priority_tier": rec.priority_tier,
        "plugged_at": iso(rec.plugged_at),
        "authorised_at": iso(rec.authorised_at),
        "started_at": iso(rec.started_at),
        "ended_at": iso(rec.ended_at),
        "energy_wh": round(rec.energy_wh, 1),
        "meter_start_wh": rec.meter_start_wh,
        "meter_stop_wh": rec.meter_stop_wh,
        "stop_reason": rec.stop_reason.value if rec.stop_reason else None,
        "stopped_by": rec.stopped_by,
        "ocpp_transaction_id": rec.ocpp_transaction_id,
        "payment_id": rec.payment_id,
    }


# -- socket commands (`evsite session ...`, `evsite availability ...`) -------------------------

_PAYLOAD = ConfigDict(extra="forbid", strict=True, frozen=True)


class SessionStartRequest(BaseModel):
    model_config = _PAYLOAD
    connector: str
    id_tag: str | None = Field(default=None, min_length=1, max_length=20)
    priority_tier: int | None = Field(default=None, ge=0, le=9)


class SessionStopRequest(BaseModel):
    model_config = _PAYLOAD
    connector: str


class IdTagRequest(BaseModel):
    model_config = _PAYLOAD
    connector: str
    id_tag: str = Field(min_length=1, max_length=20)


class TierRequest(BaseModel):
    model_config = _PAYLOAD
    connector: str
    priority_tier: int | None = Field(ge=0, le=9)


class AvailabilityRequest(BaseModel):
    model_config = _PAYLOAD
    connector: str
    available: bool


def session_commands(desk: SessionDesk) -> dict[str, Command[Any]]:
    """The technician's session commands over the control socket (by="cli")."""

    def refused(exc: SessionRefused) -> CommandRefused:
        field = "connector" if exc.code in ("unknown_connector", "unavailable", "busy") else None
        return CommandRefused(str(exc), field=field)

    def listing(_: NoArguments) -> dict[str, Any]:
        return {"connectors": desk.status_document()}

    def start(req: SessionStartRequest) -> dict[str, Any]:
        try:
            rec = desk.start(
                req.connector,
                method=AuthMethod.TECHNICIAN,
                by="cli",
                id_tag=req.id_tag,
                priority_tier=req.priority_tier,
            )
        except SessionRefused as exc:
            raise refused(exc) from exc
        return {"session": session_document(rec)}

    def stop_(req: SessionStopRequest) -> dict[str, Any]:
        try:
            rec = desk.stop(req.connector, reason=StopReason.LOCAL, by="cli")
        except SessionRefused as exc:
            raise refused(exc) from exc
        return {"session": session_document(rec)}

    async def tag(req: IdTagRequest) -> dict[str, Any]:
        try:
            return await desk.present_id_tag(req.connector, req.id_tag, by="cli")
        except SessionRefused as exc:
            raise refused(exc) from exc

    def tier(req: TierRequest) -> dict[str, Any]:
        try:
            rec = desk.set_tier(req.connector, req.priority_tier, by="cli")
        except SessionRefused as exc:
            raise refused(exc) from exc
        return {"session": session_document(rec)}

    def availability(req: AvailabilityRequest) -> dict[str, Any]:
        try:
            result = desk.set_availability(req.connector, req.available, by="cli")
        except SessionRefused as exc:
            raise refused(exc) from exc
        return {"result": result}

    return {
        "session_list": Command(NoArguments, listing),
        "session_start": Command(SessionStartRequest, start),
        "session_stop": Command(SessionStopRequest, stop_),
        "session_tag": Command(IdTagRequest, tag),
        "session_tier": Command(TierRequest, tier),
        "availability_set": Command(AvailabilityRequest, availability),
    }
