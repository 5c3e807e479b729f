"""App layer: the book of limit slots set from outside, in memory for the tick, persisted.

Technician overrides from the CLI today, cloud, OCPP and demand-response slots later: each
arrives here, is checked against the site (the scope must exist, the value must be a number
>= 0, the window must end in the future), is written to the state file and only then takes
effect and is answered. ``SlotBook.slots`` is what the control loop puts into every Snapshot;
the engine takes the minimum over the slots that apply and clamps them to the configured
ratings, so a value above a rating is accepted with a note that the rating stays the limit.

Time-of-use caps are not here: they come from the site config (``Site.time_of_use``).

``listeners`` hear every change after it took effect (``set``, ``cleared``, ``expired``): the
cloud links turn them into ``limit_changed`` events.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from controller.core.errors import PermanentError
from controller.core.site import Site
from controller.core.slots import SITE, LimitSlot, SlotSource
from controller.store.db import Database, StoreError

log = structlog.get_logger("evsite.limits")

# (action, slot): action is "set", "cleared" or "expired".
SlotListener = Callable[[str, LimitSlot], None]

CIRCUIT_PREFIX = "circuit:"
CONNECTOR_PREFIX = "connector:"
MAX_NOTE_CHARS = 200
# Per source: a backend that leaks slots (a new id each time, never cleared) is refused before
# the tick has to walk thousands of them.
MAX_SLOTS_PER_SOURCE = 100
_SLOT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class SlotRefused(PermanentError):
    """A slot request that was not applied; ``field`` names the offending input (or None)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotAccepted:
    """A slot that was stored and is in effect; ``notes`` say how the engine will treat it."""

    slot: LimitSlot
    replaced: bool  # a slot with the same source and id was there before
    notes: tuple[str, ...] = ()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _finite_at_least_zero(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise SlotRefused(name, f"{name} must be a finite number >= 0, not {value!r}")


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise SlotRefused(name, f"{name} must carry a UTC offset (an aware datetime)")


class SlotBook:
    """The persisted limit slots of one site. Use from the event loop's thread only."""

    def __init__(
        self, db: Database, site: Site, *, wall: Callable[[], datetime] = _utc_now
    ) -> None:
        self._db = db
        self.site = site
        self._wall = wall
        self._circuits = {c.id: c for c in site.circuits}
        self._connectors = {k.id: k for k in site.connectors}
        self.listeners: list[SlotListener] = []
        now = wall()
        try:
            db.purge_expired(now)
        except StoreError as exc:
            log.error("state_write_failed", error=str(exc))
        self._by_key: dict[tuple[SlotSource, str], LimitSlot] = {
            (s.source, s.id): s for s in db.load_slots() if s.ends_at is None or s.ends_at > now
        }
        self._rebuild()
        if self._by_key:
            log.info("limit_slots_restored", slots=[s.describe() for s in self._tuple])

    # -- what the tick reads -----------------------------------------------------------------

    def slots(self) -> tuple[LimitSlot, ...]:
        """Every slot not yet ended, for the Snapshot; expired ones are dropped on the way."""
        if self._next_end is not None:
            now = self._wall()
            if now >= self._next_end:
                self._expire(now)
        return self._tuple

    def get(self, source: SlotSource, slot_id: str) -> LimitSlot | None:
        return self._by_key.get((source, slot_id))

    def now(self) -> datetime:
        return self._wall()

    # -- changes -----------------------------------------------------------------------------

    def set(
        self,
        *,
        source: SlotSource,
        id: str,  # the slot's own field name (shadows the builtin here only)
        scope: str = SITE,
        current_a: float | None = None,
        power_w: float | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
        floor_w: float | None = None,
        note: str = "",
    ) -> SlotAccepted:
        """Check, persist, then apply a slot (replacing one with the same source and id).

        Raises SlotRefused naming the field at fault; nothing changes then.
        """
        now = self._wall()
        if source is SlotSource.TIME_OF_USE:
            raise SlotRefused("source", "time-of-use caps come from the site config")
        if not _SLOT_ID_RE.fullmatch(id):
            raise SlotRefused(
                "id",
                "an id is 1 to 64 letters, digits, '_', '-', '.' or ':', starting with a letter "
                f"or digit; got {id!r}",
            )
        self._check_scope(scope)
        if current_a is None and power_w is None:
            raise SlotRefused("current_a", "give a limit: current_a (A per phase) or power_w (W)")
        if current_a is not None and power_w is not None:
            raise SlotRefused("power_w", "give current_a or power_w, not both")
        _finite_at_least_zero("current_a", current_a)
        _finite_at_least_zero("power_w", power_w)
        if floor_w is not None:
            if source is not SlotSource.DEMAND_RESPONSE:
                raise SlotRefused("floor_w", "only a demand-response slot carries a floor")
            if power_w is None:
                raise SlotRefused("floor_w", "a floor goes with a power limit (power_w)")
            _finite_at_least_zero("floor_w", floor_w)
        _aware("starts_at", starts_at)
        _aware("ends_at", ends_at)
        if ends_at is not None:
            if starts_at is not None and ends_at <= starts_at:
                raise SlotRefused(
                    "ends_at",
                    f"ends_at {ends_at.isoformat()} is not after starts_at {starts_at.isoformat()}",
                )
            if ends_at <= now:
                tz_now = now.astimezone(ends_at.tzinfo)
                raise SlotRefused(
                    "ends_at",
                    f"ends_at {ends_at.isoformat()} is not in the future (now "
                    f"{tz_now.isoformat(timespec='seconds')})",
                )
        if len(note) > MAX_NOTE_CHARS:
            raise SlotRefused("note", f"a note is at most {MAX_NOTE_CHARS} characters")

        if (source, id) not in self._by_key:
            held = sum(1 for slot_source, _ in self._by_key if slot_source is source)
            if held >= MAX_SLOTS_PER_SOURCE:
                raise SlotRefused(
                    "id",
                    f"{source.value} already holds {held} slots, the most one source may hold; "
                    "clear some first or reuse an id",
                )
        slot = LimitSlot(
            id=id,
            source=source,
            scope=scope,
            current_a=current_a,
            power_w=power_w,
            starts_at=starts_at,
            ends_at=ends_at,
            floor_w=floor_w,
            note=note,
        )
        try:
            self._db.save_slot(slot, now.isoformat())
        except StoreError as exc:
            raise SlotRefused(None, f"not saved, nothing changed: {exc}") from exc
        replaced = (source, id) in self._by_key
        self._by_key[(source, id)] = slot
        self._rebuild()
        log.info(
            "limit_slot_set",
            source=source.value,
            id=id,
            scope=scope,
            current_a=current_a,
            power_w=power_w,
            starts_at=starts_at.isoformat() if starts_at else None,
            ends_at=ends_at.isoformat() if ends_at else None,
            floor_w=floor_w,
            note=note,
            replaced=replaced,
        )
        self._journal(now, "limit_slot_set", slot, replaced=replaced)
        self._notify("set", slot)
        return SlotAccepted(slot=slot, replaced=replaced, notes=self._notes(slot))

    def clear(self, source: SlotSource, slot_id: str) -> LimitSlot | None:
        """Remove one slot (from the store first); None when there was none."""
        slot = self._by_key.get((source, slot_id))
        try:
            found = self._db.delete_slot(source, slot_id)
        except StoreError as exc:
            raise SlotRefused(None, f"not deleted, nothing changed: {exc}") from exc
        if slot is None:
            # An expired slot may still be in the file until the next purge: gone either way.
            if found:
                log.info("limit_slot_cleared", source=source.value, id=slot_id, reason="expired")
            return None
        del self._by_key[(source, slot_id)]
        self._rebuild()
        log.info("limit_slot_cleared", source=source.value, id=slot_id, reason="request")
        self._journal(self._wall(), "limit_slot_cleared", slot, reason="request")
        self._notify("cleared", slot)
        return slot

    def clear_all(self, source: SlotSource) -> tuple[LimitSlot, ...]:
        """Remove every slot of one source; returns those removed."""
        cleared: list[LimitSlot] = []
        try:
            for (slot_source, slot_id), slot in list(self._by_key.items()):
                if slot_source is not source:
                    continue
                try:
                    self._db.delete_slot(source, slot_id)
                except StoreError as exc:
                    done = ", ".join(s.id for s in cleared) or "none"
                    raise SlotRefused(
                        None, f"stopped at {slot_id!r} (cleared before it: {done}): {exc}"
                    ) from exc
                del self._by_key[(source, slot_id)]
                cleared.append(slot)
                log.info("limit_slot_cleared", source=source.value, id=slot_id, reason="request")
                self._journal(self._wall(), "limit_slot_cleared", slot, reason="request")
                self._notify("cleared", slot)
        finally:
            self._rebuild()
        return tuple(cleared)

    # -- inside ------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        self._tuple = tuple(self._by_key.values())
        ends = [s.ends_at for s in self._tuple if s.ends_at is not None]
        self._next_end: datetime | None = min(ends) if ends else None

    def _expire(self, now: datetime) -> None:
        gone = [
            key for key, s in self._by_key.items() if s.ends_at is not None and s.ends_at <= now
        ]
        expired = [self._by_key.pop(key) for key in gone]
        for slot in expired:
            log.info("limit_slot_cleared", source=slot.source.value, id=slot.id, reason="expired")
        self._rebuild()
        for slot in expired:
            self._notify("expired", slot)
        try:
            self._db.purge_expired(now)
        except StoreError as exc:
            # The slots are gone from the tick anyway; the next start purges the file.
            log.error("state_write_failed", error=str(exc))

    def _notify(self, action: str, slot: LimitSlot) -> None:
        for listener in self.listeners:
            try:
                listener(action, slot)
            except Exception:
                # A listener's failure (the cloud link) must not undo or hide a stored change.
                log.exception("limit_listener_failed", action=action, slot=slot.key)

    def _check_scope(self, scope: str) -> None:
        if scope == SITE:
            return
        if scope.startswith(CIRCUIT_PREFIX):
            name = scope.removeprefix(CIRCUIT_PREFIX)
            if name not in self._circuits:
                known = ", ".join(self._circuits)
                raise SlotRefused("scope", f"no circuit {name!r}; circuits: {known}")
            return
        if scope.startswith(CONNECTOR_PREFIX):
            name = scope.removeprefix(CONNECTOR_PREFIX)
            if name not in self._connectors:
                known = ", ".join(self._connectors) or "none"
                raise SlotRefused("scope", f"no connector {name!r}; connectors: {known}")
            return
        raise SlotRefused(
            "scope", f"unknown scope {scope!r}; use site, circuit:<id> or connector:<id>"
        )

    def _notes(self, slot: LimitSlot) -> tuple[str, ...]:
        """How the engine will treat the value: clamped to a rating, or pausing a connector."""
        voltage_v = self.site.nominal_voltage_v
        if slot.scope.startswith(CONNECTOR_PREFIX):
            k = self._connectors[slot.scope.removeprefix(CONNECTOR_PREFIX)]
            what, rating_a, phases = f"connector {k.id!r}", k.max_current_a, k.phase_count
            rating_name = "max_current_a"
        else:
            circuit = (
                self.site.root
                if slot.scope == SITE
                else self._circuits[slot.scope.removeprefix(CIRCUIT_PREFIX)]
            )
            what, rating_a, phases = f"circuit {circuit.id!r}", circuit.rating_a, 3
            rating_name = "rating"
        notes: list[str] = []
        if slot.current_a is not None and slot.current_a > rating_a:
            notes.append(
                f"{_fmt(slot.current_a)} A is above the {_fmt(rating_a)} A {rating_name} of "
                f"{what}: it will be clamped to {_fmt(rating_a)} A (the ratings always win)"
            )
        rating_w = rating_a * voltage_v * phases
        if slot.power_w is not None and slot.power_w > rating_w:
            notes.append(
                f"{_fmt(slot.power_w / 1000)} kW is above the {_fmt(rating_w / 1000)} kW of {what}"
                f" ({_fmt(rating_a)} A x {phases} x {_fmt(voltage_v)} V): it will be clamped to "
                "that (the ratings always win)"
            )
        if slot.scope.startswith(CONNECTOR_PREFIX) and slot.current_a is not None:
            k = self._connectors[slot.scope.removeprefix(CONNECTOR_PREFIX)]
            if slot.current_a < k.min_current_a:
                notes.append(
                    f"{_fmt(slot.current_a)} A is below the {_fmt(k.min_current_a)} A minimum of "
                    f"connector {k.id!r}: it is paused while this applies"
                )
        return tuple(notes)

    def _journal(self, now: datetime, kind: str, slot: LimitSlot, **extra: object) -> None:
        detail = {
            "source": slot.source.value,
            "id": slot.id,
            "scope": slot.scope,
            "current_a": slot.current_a,
            "power_w": slot.power_w,
            "starts_at": slot.starts_at.isoformat() if slot.starts_at else None,
            "ends_at": slot.ends_at.isoformat() if slot.ends_at else None,
            "floor_w": slot.floor_w,
            "note": slot.note,
            **extra,
        }
        try:
            self._db.log_event(now.isoformat(), kind, slot.scope, json.dumps(detail))
        except StoreError as exc:
            log.error("state_write_failed", error=str(exc))
