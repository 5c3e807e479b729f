"""App layer: setting and clearing limit slots on request, one implementation for every channel.

The technician socket (source ``override``) and the MQTT commands (sources ``cloud`` and
``demand_response``) both call ``set_limit`` and ``clear_limits`` here; each channel keeps its
own payload model (the socket takes site-local times and watts, MQTT aware times and
kilowatts) and its own wording of refusals (``Wording``), so that the answers each channel
gave before stay what they were. A refusal raises ``LimitRefused`` naming the field at fault;
the SlotBook applies nothing then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from controller.app.slots import SlotBook, SlotRefused
from controller.core.errors import PermanentError
from controller.core.slots import LimitSlot, SlotSource

# A limit window longer than a year is a mistake (and would overflow a datetime).
MAX_DURATION_S = 366 * 24 * 3600.0

Answer = dict[str, Any]


class LimitRefused(PermanentError):
    """A limit request not applied; ``field`` names the input at fault (or None)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True, kw_only=True)
class Wording:
    """How a channel words refusals.

    ``prefix``: messages start with the field's name (``duration_s: give ...``).
    ``names``: the SlotBook's field names in the channel's own words (``power_w`` ->
    ``power_kw``). ``value_first``: the missing/both-values check is made before anything else,
    in the channel's words, instead of by the SlotBook.
    """

    prefix: bool = False
    names: Mapping[str, str] = field(default_factory=dict)
    value_first: bool = False
    local_times: bool = True  # an end computed from duration_s in the site's offset, not UTC

    def say(self, field_name: str, message: str) -> LimitRefused:
        text = f"{field_name}: {message}" if self.prefix else message
        return LimitRefused(text, field=field_name)

    def slot_refused(self, exc: SlotRefused) -> LimitRefused:
        if exc.field is None:
            return LimitRefused(exc.message)
        if not self.prefix and not self.names:
            return LimitRefused(exc.message, field=exc.field)
        name = self.names.get(exc.field, exc.field)
        if not self.prefix or exc.message.startswith(name):
            return LimitRefused(exc.message, field=name)
        return LimitRefused(f"{name}: {exc.message}", field=name)


SOCKET = Wording()
CLOUD = Wording(
    prefix=True,
    names={"power_w": "power_kw", "floor_w": "floor_kw"},
    value_first=True,
    local_times=False,
)


def _iso(value: datetime | None, tz: ZoneInfo) -> str | None:
    return None if value is None else value.astimezone(tz).isoformat()


def slot_document(slot: LimitSlot, tz: ZoneInfo, now: datetime) -> Answer:
    """A slot as JSON, its times in the site's local time, and whether it applies ``now``."""
    return {
        "source": slot.source.value,
        "id": slot.id,
        "scope": slot.scope,
        "current_a": slot.current_a,
        "power_w": slot.power_w,
        "starts_at": _iso(slot.starts_at, tz),
        "ends_at": _iso(slot.ends_at, tz),
        "floor_w": slot.floor_w,
        "note": slot.note,
        "active": slot.active(now),
    }


def set_limit(
    book: SlotBook,
    source: SlotSource,
    *,
    id: str,
    scope: str,
    current_a: float | None = None,
    power_w: float | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    duration_s: float | None = None,
    floor_w: float | None = None,
    note: str = "",
    wording: Wording = SOCKET,
) -> Answer:
    """Check and set one slot; the answer has the slot, whether it replaced one, and notes."""
    if wording.value_first:
        if current_a is None and power_w is None:
            power = wording.names.get("power_w", "power_w")
            unit = "kW in total" if power == "power_kw" else "W"
            raise wording.say("current_a", f"give a limit, current_a (A per phase) or {power} "
                                           f"({unit})")  # fmt: skip
        if current_a is not None and power_w is not None:
            power = wording.names.get("power_w", "power_w")
            raise wording.say(power, f"give current_a or {power}, not both")
    if duration_s is not None:
        if ends_at is not None:
            raise wording.say("duration_s", "give ends_at or duration_s, not both")
        if not math.isfinite(duration_s) or not 0 < duration_s <= MAX_DURATION_S:
            raise LimitRefused(
                f"duration_s: must be a number of seconds > 0 and at most a year, "
                f"got {duration_s!r}",
                field="duration_s",
            )
        now = book.now()
        if wording.local_times:
            now = now.astimezone(ZoneInfo(book.site.timezone))
        ends_at = (starts_at or now) + timedelta(seconds=duration_s)
    try:
        accepted = book.set(
            source=source,
            id=id,
            scope=scope,
            current_a=current_a,
            power_w=power_w,
            starts_at=starts_at,
            ends_at=ends_at,
            floor_w=floor_w,
            note=note,
        )
    except SlotRefused as exc:
        raise wording.slot_refused(exc) from exc
    tz = ZoneInfo(book.site.timezone)
    return {
        "slot": slot_document(accepted.slot, tz, book.now()),
        "replaced": accepted.replaced,
        "notes": list(accepted.notes),
    }


def clear_limits(
    book: SlotBook,
    source: SlotSource,
    *,
    id: str | None,
    all: bool,
    what: str,
    wording: Wording = SOCKET,
) -> Answer:
    """Clear one slot of ``source`` by id, or all of them. ``what`` names one in refusals
    ("override", "cloud limit"); an unknown id is refused with the known ones."""
    if all == (id is not None):
        raise wording.say("id", "give id or all, one of them")
    try:
        if all:
            cleared: tuple[LimitSlot, ...] = book.clear_all(source)
        else:
            assert id is not None
            slot = book.clear(source, id)
            if slot is None:
                ids = [s.id for s in book.slots() if s.source is source]
                known = f"{what}s: {', '.join(ids)}" if ids else "there are none"
                raise wording.say("id", f"no {what} {id!r}; {known}")
            cleared = (slot,)
    except SlotRefused as exc:
        raise wording.slot_refused(exc) from exc
    tz = ZoneInfo(book.site.timezone)
    now = book.now()
    return {"cleared": [slot_document(s, tz, now) for s in cleared]}
