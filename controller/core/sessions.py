"""Core layer: charging sessions at the connectors, one state machine per connector.

A session is what a driver, a backend and a bill see: a vehicle plugged in at a connector,
authorised by some method, charging, stopped for some reason. The OCPP link turns sessions
into transactions, the MQTT link into events, payments into captures, `evsite report` into
revenue; all of them read the same records, so they agree.

Phases of a session (``SessionPhase``)::

    AUTHORISED --plug in--> ACTIVE --unplug--> closed (EVDisconnected)
      (authorised first,      |  ^
       e.g. a remote start;   |  +--authorise-- PENDING (plugged in, waiting; closes on unplug)
       lapses if no vehicle)  +--stop--> FINISHING --unplug--> closed
                                        (stopped, vehicle still in: no current until it leaves)

With free vend, plugging in starts an ACTIVE session at once. Only an ACTIVE session may draw
current: the engine gives every other connector 0 A (``engine_session``).

Pure: the wall time and the monotonic time are arguments, ids are given by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from controller.core.model import Session


class AuthMethod(StrEnum):
    """How a session was authorised: also its payment method in the revenue records."""

    FREE = "free"  # free vend: plugging in is enough
    ID_TAG = "id_tag"  # an RFID card / idTag: backend, local list or authorisation cache
    REMOTE = "remote"  # a remote start: OCPP RemoteStartTransaction or an MQTT app start
    CARD = "card"  # a card payment at the site's terminal
    TECHNICIAN = "technician"  # `evsite session start` on the gateway


class StopReason(StrEnum):
    """Why a transaction ended, spelt as OCPP 1.6 StopTransaction.reason spells it."""

    EV_DISCONNECTED = "EVDisconnected"
    LOCAL = "Local"  # the same card presented again, or stopped at the site
    REMOTE = "Remote"  # RemoteStopTransaction, an MQTT stop
    DEAUTHORIZED = "DeAuthorized"  # the backend refused the idTag after an offline start
    POWER_LOSS = "PowerLoss"  # the controller died (no clean shutdown) while it ran
    REBOOT = "Reboot"  # the controller restarted cleanly while it ran
    EMERGENCY_STOP = "EmergencyStop"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    UNLOCK_COMMAND = "UnlockCommand"
    OTHER = "Other"  # e.g. the pre-authorised amount is used up


class SessionPhase(StrEnum):
    AUTHORISED = "authorised"  # authorised, waiting for a vehicle
    PENDING = "pending"  # vehicle plugged in, waiting for authorisation
    ACTIVE = "active"  # the transaction: authorised and plugged in; may draw current
    FINISHING = "finishing"  # the transaction ended, the vehicle is still plugged in
    CLOSED = "closed"  # over: nothing more will happen to it


class SessionEventKind(StrEnum):
    AUTHORISED = "authorised"  # authorised before a vehicle came
    PENDING = "pending"  # a vehicle waits for authorisation
    STARTED = "started"  # the transaction began (ACTIVE)
    ENDED = "ended"  # the transaction ended (with stop_reason)
    ABANDONED = "abandoned"  # closed without a transaction (timeout, unplugged while pending)
    CLOSED = "closed"  # the vehicle left after the transaction ended
    UPDATED = "updated"  # tier or references changed


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    """How sessions start: free vend (plugging in is enough) or authorisation first."""

    free_vend: bool = True
    # An authorisation given before the vehicle is plugged in lapses after this (OCPP's
    # ConnectionTimeOut).
    connection_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """One session. Wall times are aware datetimes; energies are the connector's register."""

    id: str
    connector: str
    phase: SessionPhase
    method: AuthMethod | None = None
    id_tag: str | None = None
    priority_tier: int | None = None
    plugged_at: datetime | None = None
    authorised_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    meter_start_wh: float | None = None
    meter_last_wh: float | None = None
    meter_stop_wh: float | None = None
    last_drawing_at: datetime | None = None  # the last time the EV drew current (idle fees)
    stop_reason: StopReason | None = None
    stopped_by: str | None = None  # who asked: ocpp, mqtt, cli, card, local, controller
    ocpp_transaction_id: int | None = None
    payment_id: str | None = None
    # Monotonic times, meaningful within one run only (not persisted).
    plugged_at_s: float | None = None
    authorised_at_s: float | None = None

    @property
    def open(self) -> bool:
        return self.phase is not SessionPhase.CLOSED

    @property
    def in_transaction(self) -> bool:
        return self.phase is SessionPhase.ACTIVE

    @property
    def energy_wh(self) -> float:
        """Energy charged in the transaction so far (or in total once it ended)."""
        if self.meter_start_wh is None:
            return 0.0
        end = self.meter_stop_wh if self.meter_stop_wh is not None else self.meter_last_wh
        if end is None:
            return 0.0
        # A register that went backwards (replaced EVSE, reset) never charges negative energy.
        return max(0.0, end - self.meter_start_wh)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEvent:
    kind: SessionEventKind
    record: SessionRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorView:
    """What the EVSE said this tick, as the session machine needs it (None: no fresh reading)."""

    vehicle_present: bool | None
    energy_wh: float | None = None
    drawing: bool = False


class SessionRefused(Exception):
    """A session command that cannot be carried out (not a bug: a reason to tell the caller)."""

    def __init__(self, message: str, *, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


# A connector whose EV draws at least this on some phase counts as drawing (idle fees).
DRAWING_THRESHOLD_A = 1.0


def observe(
    rec: SessionRecord | None,
    view: ConnectorView,
    *,
    connector: str,
    new_id: str,
    now_s: float,
    wall: datetime,
    free_vend: bool,
    available: bool,
    connection_timeout_s: float,
) -> tuple[SessionRecord | None, list[SessionEvent]]:
    """One tick of one connector's session. Returns the record (None: no session) and what
    happened. Without a fresh reading (``vehicle_present is None``) nothing changes."""
    present = view.vehicle_present
    if rec is not None and present is not None:
        rec = _meter(rec, view, wall)
    if rec is None:
        if not present or not available:
            return None, []
        plugged = SessionRecord(
            id=new_id,
            connector=connector,
            phase=SessionPhase.PENDING,
            plugged_at=wall,
            plugged_at_s=now_s,
            meter_last_wh=view.energy_wh,
        )
        if free_vend:
            started = _start(
                plugged, method=AuthMethod.FREE, id_tag=None, wall=wall, now_s=now_s, view=view
            )
            return started, [SessionEvent(kind=SessionEventKind.STARTED, record=started)]
        return plugged, [SessionEvent(kind=SessionEventKind.PENDING, record=plugged)]
    phase = rec.phase
    if phase is SessionPhase.AUTHORISED:
        if present is None:
            # Nobody knows whether a vehicle came: the timeout is judged on the next reading.
            return rec, []
        if not available:
            # Taken out of service since (no transaction ran, so at once): never starts here.
            gone = replace(rec, phase=SessionPhase.CLOSED, ended_at=wall)
            return gone, [SessionEvent(kind=SessionEventKind.ABANDONED, record=gone)]
        if present:
            started = replace(rec, plugged_at=wall, plugged_at_s=now_s)
            started = _start(
                started, method=rec.method, id_tag=rec.id_tag, wall=wall, now_s=now_s, view=view
            )
            return started, [SessionEvent(kind=SessionEventKind.STARTED, record=started)]
        since = rec.authorised_at_s if rec.authorised_at_s is not None else now_s
        if now_s - since >= connection_timeout_s:
            gone = replace(rec, phase=SessionPhase.CLOSED, ended_at=wall)
            return gone, [SessionEvent(kind=SessionEventKind.ABANDONED, record=gone)]
        return rec, []
    if present is None:
        return rec, []
    if phase is SessionPhase.PENDING:
        if not present:
            gone = replace(rec, phase=SessionPhase.CLOSED, ended_at=wall)
            return gone, [SessionEvent(kind=SessionEventKind.ABANDONED, record=gone)]
        return rec, []
    if phase is SessionPhase.ACTIVE:
        if not present:
            ended = _end(rec, StopReason.EV_DISCONNECTED, by="local", wall=wall, close=True)
            return ended, [SessionEvent(kind=SessionEventKind.ENDED, record=ended)]
        return rec, []
    if phase is SessionPhase.FINISHING:
        if not present:
            gone = replace(rec, phase=SessionPhase.CLOSED)
            return gone, [SessionEvent(kind=SessionEventKind.CLOSED, record=gone)]
        return rec, []
    return rec, []


def resume(
    rec: SessionRecord, view: ConnectorView, *, wall: datetime, clean_shutdown: bool, now_s: float
) -> tuple[SessionRecord, list[SessionEvent]]:
    """The first fresh reading after a restart, for a session the last run left open.

    A transaction whose vehicle is still plugged in continues (the energy register tells what
    was charged meanwhile); one whose vehicle left ends with the last meter value the last run
    recorded and PowerLoss or Reboot, as OCPP asks. A session not yet in a transaction closes.
    """
    present = view.vehicle_present
    if present is None:
        return rec, []
    if rec.phase is SessionPhase.ACTIVE:
        if present:
            return _meter(replace(rec, plugged_at_s=now_s), view, wall), []
        reason = StopReason.REBOOT if clean_shutdown else StopReason.POWER_LOSS
        ended = _end(rec, reason, by="controller", wall=wall, close=True)
        return ended, [SessionEvent(kind=SessionEventKind.ENDED, record=ended)]
    if rec.phase is SessionPhase.FINISHING:
        if present:
            return rec, []
        gone = replace(rec, phase=SessionPhase.CLOSED)
        return gone, [SessionEvent(kind=SessionEventKind.CLOSED, record=gone)]
    if rec.phase is SessionPhase.PENDING and present:
        return replace(rec, plugged_at_s=now_s), []
    if rec.phase is SessionPhase.AUTHORISED:
        # Its connection timeout ran in the last run's monotonic clock: give it a new one.
        return replace(rec, authorised_at_s=now_s), []
    gone = replace(rec, phase=SessionPhase.CLOSED, ended_at=rec.ended_at or wall)
    return gone, [SessionEvent(kind=SessionEventKind.ABANDONED, record=gone)]


def authorise(
    rec: SessionRecord | None,
    *,
    connector: str,
    new_id: str,
    method: AuthMethod,
    id_tag: str | None,
    priority_tier: int | None,
    vehicle_present: bool | None,
    energy_wh: float | None,
    now_s: float,
    wall: datetime,
    available: bool,
) -> tuple[SessionRecord, list[SessionEvent]]:
    """Authorise charging at a connector: starts the transaction if a vehicle waits, else
    holds the authorisation until one comes (or the connection timeout passes)."""
    if not available:
        raise SessionRefused(f"connector {connector} is unavailable", code="unavailable")
    if rec is not None and rec.phase in (SessionPhase.ACTIVE, SessionPhase.AUTHORISED):
        raise SessionRefused(
            f"connector {connector} already has an authorised session ({rec.id})", code="busy"
        )
    if rec is not None and rec.phase is SessionPhase.FINISHING:
        raise SessionRefused(
            f"connector {connector}: the vehicle of the last session is still plugged in",
            code="busy",
        )
    view = ConnectorView(vehicle_present=vehicle_present, energy_wh=energy_wh)
    if rec is not None and rec.phase is SessionPhase.PENDING:
        base = replace(rec, priority_tier=priority_tier)
        started = _start(base, method=method, id_tag=id_tag, wall=wall, now_s=now_s, view=view)
        return started, [SessionEvent(kind=SessionEventKind.STARTED, record=started)]
    waiting = SessionRecord(
        id=new_id,
        connector=connector,
        phase=SessionPhase.AUTHORISED,
        method=method,
        id_tag=id_tag,
        priority_tier=priority_tier,
        authorised_at=wall,
        authorised_at_s=now_s,
    )
    return waiting, [SessionEvent(kind=SessionEventKind.AUTHORISED, record=waiting)]


def stop(
    rec: SessionRecord | None,
    *,
    connector: str,
    reason: StopReason,
    by: str,
    wall: datetime,
) -> tuple[SessionRecord, list[SessionEvent]]:
    """End a session on request: the transaction ends now; the vehicle, if still plugged in,
    gets no more current until it leaves."""
    if rec is None or not rec.open:
        raise SessionRefused(f"connector {connector} has no session to stop", code="no_session")
    if rec.phase is SessionPhase.ACTIVE:
        ended = _end(rec, reason, by=by, wall=wall, close=False)
        return ended, [SessionEvent(kind=SessionEventKind.ENDED, record=ended)]
    if rec.phase is SessionPhase.FINISHING:
        raise SessionRefused(f"connector {connector}: the session has already ended", code="ended")
    gone = replace(rec, phase=SessionPhase.CLOSED, ended_at=wall, stop_reason=reason, stopped_by=by)
    return gone, [SessionEvent(kind=SessionEventKind.ABANDONED, record=gone)]


def engine_session(
    rec: SessionRecord | None,
    *,
    available: bool,
    vehicle_present: bool | None,
    free_vend: bool = True,
) -> Session | None:
    """What the load-management engine needs of a connector's session (None: no entry, the
    connector's defaults apply; used for connectors with nothing plugged in)."""
    if rec is None:
        if not available:
            return Session(charging_allowed=False, hold="unavailable")
        if vehicle_present:
            # Plugged in without a session (e.g. the record could not be stored): no current.
            return Session(charging_allowed=False, hold="not_authorised")
        if vehicle_present is None and not free_vend:
            # Nothing known (EVSE silent, start-up) where charging needs an authorisation:
            # nobody authorised a car there, so the fallback current is not for it either.
            return Session(charging_allowed=False, hold="not_authorised")
        return None
    if rec.phase is SessionPhase.ACTIVE:
        return Session(priority_tier=rec.priority_tier, plugged_at_s=rec.plugged_at_s)
    if rec.phase is SessionPhase.FINISHING:
        return Session(charging_allowed=False, hold="stopped")
    if not available:
        return Session(charging_allowed=False, hold="unavailable")
    return Session(charging_allowed=False, hold="not_authorised")


def _start(
    rec: SessionRecord,
    *,
    method: AuthMethod | None,
    id_tag: str | None,
    wall: datetime,
    now_s: float,
    view: ConnectorView,
) -> SessionRecord:
    start_wh = view.energy_wh if view.energy_wh is not None else rec.meter_last_wh
    return replace(
        rec,
        phase=SessionPhase.ACTIVE,
        method=method,
        id_tag=id_tag,
        authorised_at=rec.authorised_at or wall,
        authorised_at_s=rec.authorised_at_s if rec.authorised_at_s is not None else now_s,
        started_at=wall,
        meter_start_wh=start_wh,
        meter_last_wh=start_wh,
        last_drawing_at=None,
    )


def _end(
    rec: SessionRecord, reason: StopReason, *, by: str, wall: datetime, close: bool
) -> SessionRecord:
    stop_wh = rec.meter_last_wh if rec.meter_last_wh is not None else rec.meter_start_wh
    if stop_wh is not None and rec.meter_start_wh is not None:
        # A register that went backwards (reset, swapped EVSE) must not bill negative energy
        # in whoever computes meterStop - meterStart (an OCPP backend).
        stop_wh = max(stop_wh, rec.meter_start_wh)
    return replace(
        rec,
        phase=SessionPhase.CLOSED if close else SessionPhase.FINISHING,
        ended_at=wall,
        meter_stop_wh=stop_wh,
        stop_reason=reason,
        stopped_by=by,
    )


def _meter(rec: SessionRecord, view: ConnectorView, wall: datetime) -> SessionRecord:
    """Follow the energy register (and whether the EV draws) while the transaction runs."""
    if rec.phase is not SessionPhase.ACTIVE:
        return rec
    energy = view.energy_wh
    if energy is None or not math.isfinite(energy):
        energy = rec.meter_last_wh
    if rec.meter_start_wh is None and energy is not None:
        rec = replace(rec, meter_start_wh=energy)
    drawing_at = wall if view.drawing else rec.last_drawing_at
    if energy == rec.meter_last_wh and drawing_at == rec.last_drawing_at:
        return rec
    return replace(rec, meter_last_wh=energy, last_drawing_at=drawing_at)
