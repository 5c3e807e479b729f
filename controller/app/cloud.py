"""App layer: wiring of the MQTT cloud link into the service (events, commands, status, alarms).

- Events: fault transitions (ControlLoop.fault_listeners), limit slot changes (SlotBook
  listeners), mode changes (seen in the status each tick), a changed config file (at start),
  sessions started and ended (SessionDesk listeners), availability changes (seen on the desk
  each tick, whoever made them), tariff changes (TariffBook listeners) and payments (the
  payment engine calls ``CloudLink.on_payment``) go to the link's persistent outbox. An event
  the outbox refuses (full, disk full) is logged as ``event_not_queued``; the outbox alarm is
  then up.
- Outbox alarms are fault conditions (ControlLoop.condition_sources): ``outbox_full`` and
  ``store_unwritable``, subject ``outbox``. They are in ``evsite status`` and ``evsite faults``;
  while one is up, ``outbox_gate`` (a SessionDesk gate) refuses new paid sessions (card
  payments and app starts), so that no billable event has to be dropped.
- Commands from the cloud: ``limit_set`` / ``limit_clear`` (slot source ``cloud``),
  ``demand_response_set`` / ``demand_response_clear`` (source ``demand_response``),
  ``availability_set``, ``session_start`` / ``session_stop`` / ``session_tier`` (through the
  SessionDesk, which OCPP, the socket and the terminal share: the latest command wins, each is
  recorded with who gave it), ``tariff_set`` / ``tariff_clear`` (TariffBook) and ``status_get``.
  Limits go through the SlotBook (controller.app.limit_commands, shared with the socket):
  stored before they apply, they only lower.
- Home Assistant discovery (``mqtt.home_assistant``): the configs of
  controller.adapters.mqtt.home_assistant, published at each connection; the topics published
  are remembered in the state file, so that those no longer wanted (all, when switched off)
  are removed with an empty retained message.
- The test-only socket command ``debug_inject_events {"count": N}`` exists only with
  ``mqtt.allow_test_injection: true``.

The link never stops the control loop: a link that cannot start (unreadable credentials) is
reported in the status and the log, and the site goes on being managed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from controller import __version__
from controller.adapters.mqtt.commands import (
    AvailabilitySet,
    CommandRejected,
    CommandSpec,
    DemandResponseSet,
    LimitSet,
    NoArguments,
    SessionStart,
    SessionStop,
    SessionTier,
    SlotClear,
)
from controller.adapters.mqtt.home_assistant import discovery
from controller.adapters.mqtt.link import CHANNEL, CredentialsError, MqttLink, load_credentials
from controller.adapters.mqtt.settings import MqttSettings
from controller.app.control_socket import Command, CommandRefused
from controller.app.limit_commands import CLOUD, LimitRefused, clear_limits, set_limit
from controller.app.sessions import SessionDesk, session_document
from controller.app.slots import SlotBook
from controller.app.tariffs import TariffBook, TariffChange, TariffNotSaved
from controller.config import TariffPayload
from controller.core.errors import ConfigError, EvsiteError
from controller.core.faults import Transition
from controller.core.model import Condition
from controller.core.sessions import (
    AuthMethod,
    SessionEvent,
    SessionEventKind,
    SessionRefused,
    StopReason,
)
from controller.core.site import Site
from controller.core.slots import LimitSlot, SlotSource
from controller.store.db import Database, StoreError
from controller.store.outbox import Outbox

log = structlog.get_logger("evsite.cloud")

CONFIG_MARKER = "config_sha256"
# The Home Assistant discovery topics published so far (JSON list): removed when switched off.
HA_MARKER = "ha_discovery_topics"
MAX_INJECT = 100_000
BY = "mqtt"  # who gave a command, as the session records and availability store it
# Sessions someone pays for: refused while an outbox alarm is up (a card payment at the
# terminal; an app start, which the backend bills from the session events).
PAID_METHODS = frozenset({AuthMethod.CARD, AuthMethod.REMOTE})
# Keys a payment event must never carry (card data stays in the terminal).
CARD_DATA_KEYS = frozenset({"pan", "card_number", "track2", "track_2", "cvv", "cvc", "expiry"})


class InjectRequest(BaseModel):
    """``debug_inject_events``: queue ``count`` events of kind ``test`` in one transaction."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    count: int = Field(ge=1, le=MAX_INJECT)
    start: int = Field(default=0, ge=0)  # the first event's "n", so bursts can be split


def outbox_conditions(outbox: Outbox) -> Callable[[], list[Condition]]:
    """The outbox alarms as fault conditions, for ControlLoop.condition_sources."""

    def conditions() -> list[Condition]:
        return [
            Condition(code=a.code.value, subject="outbox", detail=f"{a.channel}: {a.detail}")
            for a in outbox.alarms()
        ]

    return conditions


def outbox_document(outbox: Outbox) -> dict[str, Any]:
    return {
        "alarms": [
            {"code": a.code.value, "channel": a.channel, "detail": a.detail}
            for a in outbox.alarms()
        ],
    }


def outbox_gate(outbox: Outbox) -> Callable[[AuthMethod], str | None]:
    """A SessionDesk gate: no new paid session while an outbox alarm is up, rather than a
    billable event that could not be queued."""

    def gate(method: AuthMethod) -> str | None:
        if method not in PAID_METHODS:
            return None
        alarms = outbox.alarms()
        if not alarms:
            return None
        what = "; ".join(f"{a.code.value} ({a.channel})" for a in alarms)
        return f"no paid sessions while the event outbox cannot take more events: {what}"

    return gate


def slot_event(action: str, slot: LimitSlot) -> dict[str, Any]:
    return {
        "action": action,
        "source": slot.source.value,
        "id": slot.id,
        "scope": slot.scope,
        "current_a": slot.current_a,
        "power_w": slot.power_w,
        "starts_at": slot.starts_at.isoformat() if slot.starts_at else None,
        "ends_at": slot.ends_at.isoformat() if slot.ends_at else None,
        "floor_w": slot.floor_w,
        "note": slot.note,
    }


def _rejected(exc: LimitRefused) -> CommandRejected:
    return CommandRejected(exc.message, field=exc.field)


_PROBLEM_RE = re.compile(r"^tariff update: (?:(?P<field>[A-Za-z0-9_.\[\]]+): )?(?P<text>.*)$", re.S)


def tariff_rejected(exc: ConfigError) -> CommandRejected:
    """tariff_from_payload's first problem as a command refusal naming its key."""
    problem = exc.problems[0] if exc.problems else str(exc)
    match = _PROBLEM_RE.match(problem)
    if match is None:
        return CommandRejected(problem)
    field = match["field"]
    text = match["text"]
    return CommandRejected(f"{field}: {text}" if field else text, field=field)


def _session_rejected(exc: SessionRefused) -> CommandRejected:
    # Everything but a gate's refusal or a failed write is about the connector named.
    field = None if exc.code in ("refused", "store_failed") else "connector"
    return CommandRejected(str(exc), field=field)


def cloud_commands(
    book: SlotBook,
    status: Callable[[], Mapping[str, Any]],
    *,
    desk: SessionDesk | None = None,
    tariffs: TariffBook | None = None,
) -> dict[str, CommandSpec[Any]]:
    """The commands the cloud may send: limits over the SlotBook, sessions and availability
    over the SessionDesk, the tariff over the TariffBook (the last two when given)."""

    def limit_set(req: LimitSet) -> dict[str, Any]:
        try:
            return set_limit(
                book,
                SlotSource.CLOUD,
                id=req.id,
                scope=req.scope,
                current_a=req.current_a,
                power_w=None if req.power_kw is None else req.power_kw * 1000.0,
                starts_at=req.starts_at,
                ends_at=req.ends_at,
                duration_s=req.duration_s,
                note=req.note,
                wording=CLOUD,
            )
        except LimitRefused as exc:
            raise _rejected(exc) from None

    def demand_response_set(req: DemandResponseSet) -> dict[str, Any]:
        if req.floor_kw is not None and req.floor_kw > req.power_kw:
            raise CommandRejected(
                f"floor_kw: {req.floor_kw:g} is above power_kw {req.power_kw:g}", field="floor_kw"
            )
        try:
            return set_limit(
                book,
                SlotSource.DEMAND_RESPONSE,
                id=req.id,
                scope=req.scope,
                power_w=req.power_kw * 1000.0,
                starts_at=req.starts_at,
                ends_at=req.ends_at,
                floor_w=None if req.floor_kw is None else req.floor_kw * 1000.0,
                note=req.note,
                wording=CLOUD,
            )
        except LimitRefused as exc:
            raise _rejected(exc) from None

    def clearer(source: SlotSource, what: str) -> Callable[[SlotClear], dict[str, Any]]:
        def clear(req: SlotClear) -> dict[str, Any]:
            try:
                return clear_limits(book, source, id=req.id, all=req.all, what=what, wording=CLOUD)
            except LimitRefused as exc:
                raise _rejected(exc) from None

        return clear

    def status_get(_: NoArguments) -> dict[str, Any]:
        return {"status": dict(status())}

    commands: dict[str, CommandSpec[Any]] = {
        "limit_set": CommandSpec(LimitSet, limit_set),
        "limit_clear": CommandSpec(SlotClear, clearer(SlotSource.CLOUD, "cloud limit")),
        "demand_response_set": CommandSpec(DemandResponseSet, demand_response_set),
        "demand_response_clear": CommandSpec(
            SlotClear, clearer(SlotSource.DEMAND_RESPONSE, "demand-response event")
        ),
        "status_get": CommandSpec(NoArguments, status_get),
    }
    if desk is not None:
        commands.update(session_commands(desk))
    if tariffs is not None:
        commands.update(tariff_commands(tariffs))
    return commands


def session_commands(desk: SessionDesk) -> dict[str, CommandSpec[Any]]:
    """``availability_set``, ``session_start``, ``session_stop``, ``session_tier`` (by mqtt)."""

    def availability_set(req: AvailabilitySet) -> dict[str, Any]:
        try:
            result = desk.set_availability(req.connector, req.available, by=BY)
        except SessionRefused as exc:
            raise _session_rejected(exc) from None
        return {"connector": req.connector, "available": req.available, "result": result}

    def session_start(req: SessionStart) -> dict[str, Any]:
        try:
            rec = desk.start(
                req.connector,
                method=AuthMethod.REMOTE,
                by=BY,
                id_tag=req.id_tag,
                priority_tier=req.priority_tier,
            )
        except SessionRefused as exc:
            raise _session_rejected(exc) from None
        return {"session": session_document(rec)}

    def session_stop(req: SessionStop) -> dict[str, Any]:
        try:
            rec = desk.stop(req.connector, reason=StopReason.REMOTE, by=BY)
        except SessionRefused as exc:
            raise _session_rejected(exc) from None
        return {"session": session_document(rec)}

    def session_tier(req: SessionTier) -> dict[str, Any]:
        try:
            rec = desk.set_tier(req.connector, req.priority_tier, by=BY)
        except SessionRefused as exc:
            raise _session_rejected(exc) from None
        return {"session": session_document(rec)}

    return {
        "availability_set": CommandSpec(AvailabilitySet, availability_set),
        "session_start": CommandSpec(SessionStart, session_start),
        "session_stop": CommandSpec(SessionStop, session_stop),
        "session_tier": CommandSpec(SessionTier, session_tier),
    }


def tariff_commands(tariffs: TariffBook) -> dict[str, CommandSpec[Any]]:
    """``tariff_set`` (a whole tariff, checked as the site file's) and ``tariff_clear``."""

    def parse(document: dict[str, Any]) -> dict[str, Any]:
        try:
            tariffs.check(document)
        except ConfigError as exc:
            raise tariff_rejected(exc) from None
        return document

    def tariff_set(document: dict[str, Any]) -> dict[str, Any]:
        try:
            tariffs.update(document, by=BY)
        except ConfigError as exc:
            raise tariff_rejected(exc) from None
        except TariffNotSaved as exc:
            raise CommandRejected(str(exc)) from None
        return {"tariff": tariffs.document()}

    def tariff_clear(_: NoArguments) -> dict[str, Any]:
        try:
            tariffs.clear(by=BY)
        except TariffNotSaved as exc:
            raise CommandRejected(str(exc)) from None
        return {"tariff": tariffs.document()}

    return {
        "tariff_set": CommandSpec(TariffPayload, tariff_set, parse=parse),
        "tariff_clear": CommandSpec(NoArguments, tariff_clear),
    }


def _json_value(value: Any) -> Any:
    """A payment's data as JSON: exact decimals as text, times as ISO 8601, enums by value."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"{type(value).__name__} cannot go into an event")


def _card_data_keys(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        found = [str(k) for k in value if str(k).lower() in CARD_DATA_KEYS]
        for v in value.values():
            found += _card_data_keys(v)
        return found
    if isinstance(value, list | tuple):
        return [k for v in value for k in _card_data_keys(v)]
    return []


@dataclass(slots=True)
class _Availability:
    available: bool
    by: str | None


class CloudLink:
    """The MQTT link of a running service, with the events it is fed."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        site: Site,
        db: Database,
        outbox: Outbox,
        book: SlotBook,
        status: Callable[[], Mapping[str, Any]],
        config_source: Path | None = None,
        desk: SessionDesk | None = None,
        tariffs: TariffBook | None = None,
    ) -> None:
        self.settings = settings
        self.site = site
        self._db = db
        self.outbox = outbox
        self._status = status
        self._config_source = config_source
        self._desk = desk
        self._tariffs = tariffs
        self._mode: str | None = None
        self._problem: str | None = None
        self._availability: dict[str, _Availability] = {}
        credentials = None
        if settings.credentials_file is not None:
            try:
                credentials = load_credentials(settings.credentials_file)
            except CredentialsError as exc:
                self._problem = str(exc)
        self.link = MqttLink(
            settings,
            site=site,
            outbox=outbox,
            status=self._status,
            commands=cloud_commands(book, self._status, desk=desk, tariffs=tariffs),
            version=__version__,
            credentials=credentials,
        )
        book.listeners.append(self._on_slot)
        if desk is not None:
            desk.listeners.append(self._on_session)
            self._availability = {
                cid: _Availability(available=desk.available(cid), by=None)
                for cid in desk.connectors
            }
        if tariffs is not None:
            tariffs.listeners.append(self._on_tariff)
            self.link.set_meta(tariff=tariffs.document())
        self._discovery_task: asyncio.Task[bool] | None = None
        self.link.connect_listeners.append(self._on_connected)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._note_config()
        if self._problem is not None:
            log.error("mqtt_not_started", error=self._problem)
            return
        await self.link.start()

    async def close(self) -> None:
        if self._discovery_task is not None:
            self._discovery_task.cancel()
        if self._problem is None:
            await self.link.close()

    # -- Home Assistant discovery ------------------------------------------------------------

    def _on_connected(self) -> None:
        if self._discovery_task is not None and not self._discovery_task.done():
            self._discovery_task.cancel()
        self._discovery_task = asyncio.create_task(self.sync_discovery(), name="mqtt-ha")

    async def sync_discovery(self) -> bool:
        """Publish the Home Assistant discovery configs (``mqtt.home_assistant: true``) and
        remove those published before that are no longer wanted (all of them when switched
        off). True once the broker acknowledged every one; else tried again at the next
        connection."""
        wanted = []
        if self.settings.home_assistant:
            wanted = discovery(
                self.site, prefix=self.settings.home_assistant_prefix, version=__version__
            )
        try:
            previous = [str(t) for t in json.loads(self._db.marker(HA_MARKER) or "[]")]
        except ValueError:
            previous = []
        topics = [d.topic for d in wanted]
        stale = [t for t in previous if t not in topics]
        if not wanted and not stale:
            return True
        now = datetime.now(UTC).isoformat()
        try:
            # Known before they are sent: a crash in between must not leave unknown configs.
            self._db.set_marker(HA_MARKER, json.dumps(sorted({*previous, *topics})), now)
        except StoreError as exc:
            log.error("state_write_failed", error=str(exc))
            return False
        done = True
        for item in wanted:
            done = await self.link.publish_retained(item.topic, item.payload) and done
        for topic in stale:
            done = await self.link.publish_retained(topic, "") and done
        if done:
            try:
                self._db.set_marker(HA_MARKER, json.dumps(sorted(topics)), now)
            except StoreError as exc:
                log.error("state_write_failed", error=str(exc))
                return False
            log.info("mqtt_discovery_published", configs=len(wanted), removed=len(stale))
        return done

    # -- what the loop and the socket see ----------------------------------------------------

    def on_tick(self, status: dict[str, Any]) -> None:
        """After each tick: note a mode change, add the link's state to the status."""
        mode = status.get("mode")
        if isinstance(mode, str) and mode != self._mode:
            old = self._mode or "starting"
            self._mode = mode
            if old != mode:
                self.emit("mode_changed", {"old": old, "new": mode, "notes": status.get("notes")})
        self._note_availability()
        link = self.link.status_document()
        if self._problem is not None:
            link = {**link, "state": "misconfigured", "last_error": self._problem}
        status["mqtt"] = link
        status["outbox"] = outbox_document(self.outbox)

    def on_fault(self, transition: Transition) -> None:
        self.emit(f"fault_{transition.kind}", transition.fault.as_dict())

    def _on_slot(self, action: str, slot: LimitSlot) -> None:
        self.emit("limit_changed", slot_event(action, slot))

    def _on_session(self, event: SessionEvent) -> None:
        if event.kind is SessionEventKind.STARTED:
            self.emit("session_started", session_document(event.record))
        elif event.kind is SessionEventKind.ENDED:
            self.emit("session_ended", session_document(event.record))

    def _note_availability(self) -> None:
        """Availability changes, from any source (MQTT, OCPP, the socket, a scheduled change
        that took effect): seen on the desk after each tick, with who set it."""
        desk = self._desk
        if desk is None:
            return
        changed = [
            cid
            for cid in desk.connectors
            if desk.available(cid) != self._availability[cid].available
        ]
        if not changed:
            return
        stored = desk.store.availability()
        for cid in changed:
            available = desk.available(cid)
            by = stored.get(cid, (available, None))[1]
            self._availability[cid] = _Availability(available=available, by=by)
            self.emit(
                "availability_changed",
                {"connector": cid, "available": available, "by": by},
            )

    def _on_tariff(self, change: TariffChange) -> None:
        document = self._tariffs.document() if self._tariffs is not None else None
        self.link.set_meta(tariff=document)
        self.emit(
            "tariff_changed",
            {
                "source": change.source,
                "by": change.by,
                "previous_tariff_id": None if change.previous is None else change.previous.id,
                "tariff": document,
            },
        )

    def on_payment(self, event: Mapping[str, Any]) -> str | None:
        """A payment fact from the payment engine, as a ``payment`` event (docs/mqtt.md).

        ``event`` is a mapping of JSON-able values (Decimal as text, datetimes as ISO 8601);
        keys that would carry card data (``pan``, ``track2``, ...) are refused. Returns the
        event id once it is on disk, or None when it could not be queued (the outbox alarm is
        then up and logged; new paid sessions are refused until it falls).
        """
        card = _card_data_keys(event)
        if card:
            # Never log the values: only which keys were wrong.
            log.error("payment_event_refused", reason="card data", keys=sorted(card))
            raise ValueError(f"a payment event must not carry card data: {', '.join(card)}")
        data = _json_value(event)
        return self.emit("payment", data)

    def on_payment_step(self, step: Mapping[str, Any]) -> None:
        """A PaymentDesk listener (controller.app.payments): ``{"event": "payment_<state>",
        "payment": {...}, "cost": {...}?}`` becomes one ``payment`` event."""
        payment = dict(step.get("payment") or {})
        amount = payment.get("captured_cents")
        if amount is None:
            amount = payment.get("final_cents") or payment.get("preauth_cents")
        event: dict[str, Any] = {
            **payment,
            "payment_id": payment.get("id"),
            "status": payment.get("state"),
            "amount_cents": amount,
        }
        if "cost" in step:
            event["cost"] = step["cost"]
            event.setdefault("currency", step["cost"].get("currency"))
        with contextlib.suppress(ValueError):  # refused and logged (card data): not published
            self.on_payment(event)

    def emit(self, kind: str, data: Any) -> str | None:
        """Queue an event; never raises (the outbox alarm tells when events cannot be queued).
        Returns its id, or None when it was not queued."""
        try:
            return self.link.emit(kind, data).id
        except (EvsiteError, ValueError) as exc:
            log.error("event_not_queued", kind=kind, error=str(exc), data=data)
            return None

    def _note_config(self) -> None:
        if self._config_source is None:
            return
        try:
            digest = hashlib.sha256(self._config_source.read_bytes()).hexdigest()
        except OSError as exc:
            log.warning("config_not_hashed", error=str(exc))
            return
        previous = self._db.marker(CONFIG_MARKER)
        if previous == digest:
            return
        self.emit(
            "config_changed",
            {"file": str(self._config_source), "sha256": digest, "previous_sha256": previous},
        )
        try:
            self._db.set_marker(CONFIG_MARKER, digest, datetime.now(UTC).isoformat())
        except StoreError as exc:
            log.error("state_write_failed", error=str(exc))

    # -- socket commands ---------------------------------------------------------------------

    def socket_commands(self) -> dict[str, Command[Any]]:
        if not self.settings.allow_test_injection:
            return {}

        def inject(req: InjectRequest) -> dict[str, Any]:
            batch = str(uuid.uuid4())
            try:
                stored = self.link.emit_many(
                    "test",
                    [{"batch": batch, "n": n} for n in range(req.start, req.start + req.count)],
                )
            except EvsiteError as exc:
                raise CommandRefused(str(exc), field="count") from exc
            return {
                "batch": batch,
                "queued": len(stored),
                "first_id": stored[0].id,
                "last_id": stored[-1].id,
                "outbox": self.outbox.count(CHANNEL),
            }

        return {"debug_inject_events": Command(InjectRequest, inject)}
