"""App layer: wiring of the OCPP 1.6J link into the service (sessions, limits, status, alarms).

- Sessions: each charge point (``Station``) hears the SessionDesk's events (a transaction's
  start and end go to the outbox as StartTransaction / StopTransaction), authorises presented
  idTags (``desk.authorisers``), and starts, stops and blocks sessions through the desk
  (RemoteStartTransaction, RemoteStopTransaction, ChangeAvailability): the desk stays the one
  place sessions change.
- Limits: the charging profiles in force become limit slots (source ``ocpp``) that run.py adds
  to the SlotBook's; the engine takes the minimum with the ratings, so a profile above them is
  clamped, never obeyed.
- Alarms: while the OCPP outbox cannot take a message (disk full, full outbox) no new session
  starts (``desk.gates``); the outbox alarm is a fault condition (cloud.outbox_conditions).
- Status: ``status["ocpp"]`` lists each charge point's link.

The link never stops the control loop: a link that cannot start (unreadable credentials or
keys file) is reported in the status and the log, and the site goes on being managed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from controller.adapters.ocpp.auth import LocalAuth
from controller.adapters.ocpp.keys import KEYS_FILENAME, ConfigurationKeys, KeysFileError
from controller.adapters.ocpp.settings import OcppSettings
from controller.adapters.ocpp.site import ConnectorFault
from controller.adapters.ocpp.station import (
    CredentialsError,
    Station,
    load_authorization_key,
)
from controller.app.sessions import IdTagDecision, SessionDesk
from controller.app.slots import SlotBook
from controller.core.errors import EvsiteError
from controller.core.model import Allocation, EvseReading
from controller.core.sessions import AuthMethod, SessionRecord, StopReason
from controller.core.site import Site, Topology
from controller.core.slots import SITE, LimitSlot
from controller.store.db import Database, StoreError
from controller.store.ocpp import OcppStore
from controller.store.outbox import Outbox

log = structlog.get_logger("evsite.ocpp")

CHANNEL = "ocpp"  # the gateway's channel; a per-EVSE charge point has ocpp:<identity>


class SiteAdapter:
    """``SitePort`` over the running service: the desk, the loop's readings and limits."""

    def __init__(
        self,
        *,
        site: Site,
        desk: SessionDesk,
        book: SlotBook,
        db: Database,
        readings: Callable[[], Mapping[str, EvseReading | None]],
        allocation: Callable[[], Allocation | None],
        health: Callable[[str], tuple[bool, bool, int, str | None]],
        restart: Callable[[], None],
    ) -> None:
        self._site = site
        self._desk = desk
        self._book = book
        self._db = db
        self._readings = readings
        self._allocation = allocation
        self._health = health
        self._restart = restart
        self._tz = ZoneInfo(site.timezone)
        self._connectors = {c.id: c for c in site.connectors}
        self._topology = Topology.of(site)

    def now(self) -> datetime:
        return datetime.now(self._tz)

    def records(self) -> Mapping[str, SessionRecord]:
        return self._desk.records()

    def record_by_id(self, session_id: str) -> SessionRecord | None:
        for rec in self._desk.records().values():
            if rec.id == session_id:
                return rec
        return self._desk.store.get(session_id)

    def start(self, connector: str, *, id_tag: str) -> SessionRecord:
        return self._desk.start(connector, method=AuthMethod.REMOTE, by="ocpp", id_tag=id_tag)

    def stop(self, connector: str, *, reason: StopReason) -> SessionRecord:
        return self._desk.stop(connector, reason=reason, by="ocpp")

    def attach(self, session_id: str, transaction_id: int) -> None:
        self._desk.attach(session_id, ocpp_transaction_id=transaction_id)

    def set_availability(self, connector: str, available: bool) -> str:
        return self._desk.set_availability(connector, available, by="ocpp")

    def available(self, connector: str) -> bool:
        return self._desk.available(connector)

    def vehicle_present(self, connector: str) -> bool | None:
        return self._desk.vehicle_present(connector)

    def reading(self, connector: str) -> EvseReading | None:
        return self._readings().get(connector)

    def offered_a(self, connector: str) -> float | None:
        allocation = self._allocation()
        if allocation is None or connector not in allocation.limits:
            return None
        return allocation.limits[connector].current_a

    def fault(self, connector: str | None) -> ConnectorFault | None:
        if connector is None:
            problems = [c.detail for c in self._desk.conditions()]
            if problems:
                return ConnectorFault(
                    error_code="InternalError",
                    info="state file not writable",
                    vendor_error_code="store_unwritable",
                    faulted=False,
                )
            allocation = self._allocation()
            if allocation is not None and allocation.mode == "fallback":
                return ConnectorFault(
                    error_code="PowerMeterFailure",
                    info="site meter silent: fallback currents",
                    vendor_error_code="meter_fallback",
                    faulted=False,
                )
            return None
        online, seen, failures, error = self._health(connector)
        if seen and not online and failures >= 2:
            return ConnectorFault(
                error_code="OtherError",
                info=(error or "no answer")[:50],
                vendor_error_code="evse_offline",
            )
        return None

    def other_slots(self, connector: str | None) -> tuple[LimitSlot, ...]:
        scopes = {SITE}
        if connector is not None:
            scopes.add(f"connector:{connector}")
            path = self._topology.path.get(self._connectors[connector].circuit, ())
            scopes.update(f"circuit:{c}" for c in path)
        return tuple(s for s in self._book.slots() if s.scope in scopes)

    def max_current_a(self, connector: str | None) -> float:
        if connector is not None:
            return self._connectors[connector].max_current_a
        roots = [c for c in self._site.circuits if c.parent is None]
        return min(c.rating_a - c.margin_a for c in roots) if roots else 0.0

    def number_phases(self, connector: str | None) -> int:
        if connector is None:
            return 3
        return len(self._connectors[connector].grid_phases)

    def nominal_voltage_v(self) -> float:
        return self._site.nominal_voltage_v

    def reset(self, hard: bool) -> None:
        # The service exits; systemd starts it again (Restart=always). The transactions were
        # stopped with SoftReset/HardReset before.
        log.warning("ocpp_reset_restarting", hard=hard)
        self._restart()

    def note_event(self, kind: str, subject: str, detail: Mapping[str, object]) -> None:
        try:
            self._db.log_event(datetime.now(UTC).isoformat(), kind, subject, json.dumps(detail))
        except StoreError as exc:
            log.error("state_write_failed", error=str(exc))


def phase_rotation(site: Site, numbers: Mapping[int, str]) -> str:
    """ConnectorPhaseRotation: ``<n>.RST`` per connector (Unknown for a 1-phase one)."""
    names = {0: "R", 1: "S", 2: "T"}  # grid phases L1..L3 are 0..2
    by_id = {c.id: c for c in site.connectors}
    parts = []
    for n, cid in sorted(numbers.items()):
        phases = by_id[cid].grid_phases
        rotation = "".join(names[p] for p in phases) if len(phases) == 3 else ""
        parts.append(f"{n}.{rotation or 'Unknown'}")
    return ",".join(parts)


class OcppLink:
    """The OCPP charge point(s) of a running service."""

    def __init__(
        self,
        settings: OcppSettings,
        *,
        site: Site,
        db: Database,
        outbox: Outbox,
        desk: SessionDesk,
        port: SiteAdapter,
        state_dir: Path,
        version: str,
    ) -> None:
        self.settings = settings
        self.site = site
        self.outbox = outbox
        self.desk = desk
        self.stations: list[Station] = []
        self.problem: str | None = None
        self._tz = ZoneInfo(site.timezone)
        connectors = [c.id for c in site.connectors]
        identities = settings.identities(connectors)
        site_values = dict(settings.keys)
        try:
            if settings.credentials_file is not None:
                site_values["AuthorizationKey"] = load_authorization_key(settings.credentials_file)
        except CredentialsError as exc:
            self.problem = str(exc)
            return
        store = OcppStore(db)
        self.auth = LocalAuth(store)
        for identity, numbers in identities.items():
            # Each charge point has its own keys (per-EVSE ones their own file): what a CSMS
            # sets on one does not change another.
            name = KEYS_FILENAME if settings.topology == "gateway" else f"ocpp-keys.{identity}.json"
            try:
                keys = ConfigurationKeys(
                    state_dir / name,
                    site_values=site_values,
                    fixed={
                        "NumberOfConnectors": str(len(numbers)),
                        "SecurityProfile": str(settings.security_profile),
                        "ConnectionTimeOut": str(round(desk.settings.connection_timeout_s)),
                        "ConnectorPhaseRotation": phase_rotation(site, numbers),
                    },
                )
                station = Station(
                    settings,
                    identity=identity,
                    connectors=numbers,
                    keys=keys,
                    auth=self.auth,
                    store=store,
                    outbox=outbox,
                    site=port,
                    channel=CHANNEL if settings.topology == "gateway" else f"ocpp:{identity}",
                    version=version,
                    clock=time.monotonic,
                )
            except (EvsiteError, KeysFileError) as exc:
                self.problem = str(exc)
                self.stations = []
                return
            self.stations.append(station)
            desk.listeners.append(station.on_session_event)
        self._by_connector = {cid: s for s in self.stations for cid in s.connectors.values()}
        desk.authorisers.append(self.authorise)
        desk.gates.append(self.gate)
        desk.holds.append(self.hold)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.problem is not None:
            log.error("ocpp_not_started", error=self.problem)
            return
        for station in self.stations:
            await station.start()

    async def close(self) -> None:
        for station in self.stations:
            await station.close()

    # -- the service's hooks -----------------------------------------------------------------

    def on_tick(self, status: dict[str, Any]) -> None:
        now_s, wall = time.monotonic(), datetime.now(self._tz)
        for station in self.stations:
            try:
                station.on_tick(now_s, wall)
            except Exception:  # the link must never cost the control loop
                log.exception("ocpp_tick_failed", identity=station.identity)
        status["ocpp"] = self.status_document()

    def slots(self) -> tuple[LimitSlot, ...]:
        wall = datetime.now(self._tz)
        out: list[LimitSlot] = []
        for station in self.stations:
            try:
                out.extend(station.slots(wall))
            except Exception:
                # Better the ratings alone than a crashed tick; the log says why.
                log.exception("ocpp_profile_slots_failed", identity=station.identity)
        return tuple(out)

    async def authorise(self, connector: str, id_tag: str) -> IdTagDecision | None:
        station = self._by_connector.get(connector) if self.stations else None
        if station is None:
            return None
        answer = await station.authorise(connector, id_tag)
        if answer is None:
            return None
        log.info(
            "ocpp_id_tag_authorisation",
            connector=connector,
            accepted=answer.accepted,
            status=answer.status,
            source=answer.source,
        )
        return IdTagDecision(
            accepted=answer.accepted, status=answer.status, parent_id_tag=answer.parent_id_tag
        )

    def hold(self, connector: str, id_tag: str | None) -> str | None:
        station = self._by_connector.get(connector) if self.stations else None
        return None if station is None else station.hold(connector, id_tag)

    def gate(self, method: AuthMethod) -> str | None:
        channels = {s.channel for s in self.stations}
        for alarm in self.outbox.alarms():
            if alarm.channel in channels:
                return f"OCPP transaction messages cannot be queued: {alarm.detail}"
        return None

    def status_document(self) -> dict[str, Any]:
        if self.problem is not None:
            return {"state": "misconfigured", "last_error": self.problem, "stations": []}
        return {"stations": [s.status_document() for s in self.stations]}


__all__ = ["CHANNEL", "OcppLink", "SiteAdapter"]
