"""App layer: wiring of the MQTT cloud link into the service (events, commands, status, alarms).

- Events: fault transitions (ControlLoop.fault_listeners), limit slot changes (SlotBook
  listeners), mode changes (seen in the status each tick) and a changed config file (at start)
  go to the link's persistent outbox as ``fault_raised``, ``fault_cleared``, ``limit_changed``,
  ``mode_changed`` and ``config_changed``. An event the outbox refuses (full, disk full) is
  logged as ``event_not_queued``; the outbox alarm is then up.
- Outbox alarms are fault conditions (ControlLoop.condition_sources): ``outbox_full`` and
  ``store_unwritable``, subject ``outbox``. They are in ``evsite status`` and ``evsite faults``;
  new paid sessions will be refused on them (issue 7).
- Commands from the cloud: ``limit_set`` / ``limit_clear`` (slot source ``cloud``),
  ``demand_response_set`` / ``demand_response_clear`` (source ``demand_response``) and
  ``status_get``. Limits go through the SlotBook: stored before they apply, they only lower.
- The test-only socket command ``debug_inject_events {"count": N}`` exists only with
  ``mqtt.allow_test_injection: true``.

The link never stops the control loop: a link that cannot start (unreadable credentials) is
reported in the status and the log, and the site goes on being managed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ConfigDict, Field

from controller import __version__
from controller.adapters.mqtt.commands import (
    CommandRejected,
    CommandSpec,
    DemandResponseSet,
    LimitSet,
    NoArguments,
    SlotClear,
)
from controller.adapters.mqtt.link import CHANNEL, CredentialsError, MqttLink, load_credentials
from controller.adapters.mqtt.settings import MqttSettings
from controller.app.control_socket import Command, CommandRefused, slot_document
from controller.app.slots import SlotBook, SlotRefused
from controller.core.errors import EvsiteError
from controller.core.faults import Transition
from controller.core.model import Condition
from controller.core.site import Site
from controller.core.slots import LimitSlot, SlotSource
from controller.store.db import Database, StoreError
from controller.store.outbox import Outbox

log = structlog.get_logger("evsite.cloud")

CONFIG_MARKER = "config_sha256"
MAX_INJECT = 100_000
_FIELD_NAMES = {"power_w": "power_kw", "floor_w": "floor_kw"}


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


def _rejected(exc: SlotRefused) -> CommandRejected:
    """The SlotBook's refusal in the command's words (kW fields), the field named first."""
    if exc.field is None:
        return CommandRejected(exc.message)
    field = _FIELD_NAMES.get(exc.field, exc.field)
    message = exc.message if exc.message.startswith(field) else f"{field}: {exc.message}"
    return CommandRejected(message, field=field)


def cloud_commands(
    book: SlotBook, status: Callable[[], Mapping[str, Any]]
) -> dict[str, CommandSpec[Any]]:
    """The commands the cloud may send, over one SlotBook."""
    tz = ZoneInfo(book.site.timezone)

    def answer(slot: LimitSlot, replaced: bool, notes: Iterable[str]) -> dict[str, Any]:
        return {
            "slot": slot_document(slot, tz, book.now()),
            "replaced": replaced,
            "notes": list(notes),
        }

    def limit_set(req: LimitSet) -> dict[str, Any]:
        if req.current_a is None and req.power_kw is None:
            raise CommandRejected(
                "current_a: give a limit, current_a (A per phase) or power_kw (kW in total)",
                field="current_a",
            )
        if req.current_a is not None and req.power_kw is not None:
            raise CommandRejected(
                "power_kw: give current_a or power_kw, not both", field="power_kw"
            )
        ends_at = req.ends_at
        if req.duration_s is not None:
            if ends_at is not None:
                raise CommandRejected(
                    "duration_s: give ends_at or duration_s, not both", field="duration_s"
                )
            ends_at = (req.starts_at or book.now()) + timedelta(seconds=req.duration_s)
        try:
            accepted = book.set(
                source=SlotSource.CLOUD,
                id=req.id,
                scope=req.scope,
                current_a=req.current_a,
                power_w=None if req.power_kw is None else req.power_kw * 1000.0,
                starts_at=req.starts_at,
                ends_at=ends_at,
                note=req.note,
            )
        except SlotRefused as exc:
            raise _rejected(exc) from None
        return answer(accepted.slot, accepted.replaced, accepted.notes)

    def demand_response_set(req: DemandResponseSet) -> dict[str, Any]:
        if req.floor_kw is not None and req.floor_kw > req.power_kw:
            raise CommandRejected(
                f"floor_kw: {req.floor_kw:g} is above power_kw {req.power_kw:g}", field="floor_kw"
            )
        try:
            accepted = book.set(
                source=SlotSource.DEMAND_RESPONSE,
                id=req.id,
                scope=req.scope,
                power_w=req.power_kw * 1000.0,
                starts_at=req.starts_at,
                ends_at=req.ends_at,
                floor_w=None if req.floor_kw is None else req.floor_kw * 1000.0,
                note=req.note,
            )
        except SlotRefused as exc:
            raise _rejected(exc) from None
        return answer(accepted.slot, accepted.replaced, accepted.notes)

    def clearer(source: SlotSource, what: str) -> Callable[[SlotClear], dict[str, Any]]:
        def clear(req: SlotClear) -> dict[str, Any]:
            if req.all == (req.id is not None):
                raise CommandRejected("id: give id or all, one of them", field="id")
            try:
                if req.all:
                    cleared: tuple[LimitSlot, ...] = book.clear_all(source)
                else:
                    assert req.id is not None
                    slot = book.clear(source, req.id)
                    if slot is None:
                        ids = [s.id for s in book.slots() if s.source is source]
                        known = f"{what}s: {', '.join(ids)}" if ids else "there are none"
                        raise CommandRejected(f"id: no {what} {req.id!r}; {known}", field="id")
                    cleared = (slot,)
            except SlotRefused as exc:
                raise _rejected(exc) from None
            now = book.now()
            return {"cleared": [slot_document(s, tz, now) for s in cleared]}

        return clear

    def status_get(_: NoArguments) -> dict[str, Any]:
        return {"status": dict(status())}

    return {
        "limit_set": CommandSpec(LimitSet, limit_set),
        "limit_clear": CommandSpec(SlotClear, clearer(SlotSource.CLOUD, "cloud limit")),
        "demand_response_set": CommandSpec(DemandResponseSet, demand_response_set),
        "demand_response_clear": CommandSpec(
            SlotClear, clearer(SlotSource.DEMAND_RESPONSE, "demand-response event")
        ),
        "status_get": CommandSpec(NoArguments, status_get),
    }


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
    ) -> None:
        self.settings = settings
        self.site = site
        self._db = db
        self.outbox = outbox
        self._status = status
        self._config_source = config_source
        self._mode: str | None = None
        self._problem: str | None = None
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
            commands=cloud_commands(book, self._status),
            version=__version__,
            credentials=credentials,
        )
        book.listeners.append(self._on_slot)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._note_config()
        if self._problem is not None:
            log.error("mqtt_not_started", error=self._problem)
            return
        await self.link.start()

    async def close(self) -> None:
        if self._problem is None:
            await self.link.close()

    # -- what the loop and the socket see ----------------------------------------------------

    def on_tick(self, status: dict[str, Any]) -> None:
        """After each tick: note a mode change, add the link's state to the status."""
        mode = status.get("mode")
        if isinstance(mode, str) and mode != self._mode:
            old = self._mode or "starting"
            self._mode = mode
            if old != mode:
                self.emit("mode_changed", {"old": old, "new": mode, "notes": status.get("notes")})
        link = self.link.status_document()
        if self._problem is not None:
            link = {**link, "state": "misconfigured", "last_error": self._problem}
        status["mqtt"] = link
        status["outbox"] = outbox_document(self.outbox)

    def on_fault(self, transition: Transition) -> None:
        self.emit(f"fault_{transition.kind}", transition.fault.as_dict())

    def _on_slot(self, action: str, slot: LimitSlot) -> None:
        self.emit("limit_changed", slot_event(action, slot))

    def emit(self, kind: str, data: Any) -> None:
        """Queue an event; never raises (the outbox alarm tells when events cannot be queued)."""
        try:
            self.link.emit(kind, data)
        except (EvsiteError, ValueError) as exc:
            log.error("event_not_queued", kind=kind, error=str(exc), data=data)

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
