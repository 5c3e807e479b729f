"""Core layer: limit slots, one per source of a limit, and what they demand at a given time.

Every source of a limit owns a slot: OCPP charging profiles, demand-response events, the
time-of-use schedule, technician and cloud overrides. A slot caps the EV charging current of a
scope (the whole site, one circuit node, one connector), per phase in amps or in total in
watts, during a window of the site's local wall time. The engine takes the minimum over the
slots that apply, and the configured ratings always stay on top: no slot can raise anything.

A demand-response slot may carry a floor (such as §14a EnWG's 4.2 kW): the signal cannot demand
less than the floor, but the floor never lifts a limit above what the ratings allow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time
from enum import StrEnum


class SlotSource(StrEnum):
    """Who set a slot. Each source has its own slots; sources never overwrite one another."""

    OVERRIDE = "override"  # a technician (CLI)
    CLOUD = "cloud"  # the MQTT backend
    OCPP = "ocpp"  # a charging profile from the CSMS
    DEMAND_RESPONSE = "demand_response"  # a DR event (grid operator, aggregator)
    TIME_OF_USE = "time_of_use"  # the configured weekly schedule


SITE = "site"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSlot:
    """A cap on EV charging. ``scope`` is ``"site"``, ``"circuit:<id>"`` or ``"connector:<id>"``.

    Exactly one of ``current_a`` (per phase) and ``power_w`` (total over the phases in use) is
    set. ``starts_at``/``ends_at`` are aware datetimes; None means open-ended.
    """

    id: str  # unique within its source, e.g. "site", "dr-2026-11-29-1", "ocpp-tx-12"
    source: SlotSource
    scope: str = SITE
    current_a: float | None = None
    power_w: float | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    floor_w: float | None = None  # demand response: never demand less than this
    note: str = ""

    def __post_init__(self) -> None:
        if (self.current_a is None) == (self.power_w is None):
            raise ValueError("a limit slot has exactly one of current_a and power_w")
        value = self.current_a if self.current_a is not None else self.power_w
        assert value is not None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a limit must be a finite number >= 0, not {value!r}")

    @property
    def key(self) -> str:
        return f"{self.source.value}:{self.id}"

    def active(self, wall: datetime) -> bool:
        if self.starts_at is not None and wall < self.starts_at:
            return False
        return self.ends_at is None or wall < self.ends_at

    def describe(self) -> str:
        what = f"{self.current_a:g} A" if self.current_a is not None else f"{self.power_w:g} W"
        return f"{self.key} {self.scope} {what}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TouPeriod:
    """One period of the weekly time-of-use schedule: a site power cap on some days and hours.

    ``days`` are ISO weekdays (1 = Monday .. 7 = Sunday); ``end`` of 00:00 means midnight at the
    end of the day; a period whose end is before its start runs over midnight.
    """

    days: frozenset[int]
    start: time
    end: time
    power_w: float
    name: str = ""

    def covers(self, wall: datetime) -> bool:
        t = wall.timetz().replace(tzinfo=None)
        day = wall.isoweekday()
        if self.start < self.end or self.end == time(0):
            end_ok = self.end == time(0) or t < self.end
            return day in self.days and self.start <= t and end_ok
        # over midnight: the evening part belongs to the listed day, the morning to the next
        previous_day = 7 if day == 1 else day - 1
        return (day in self.days and t >= self.start) or (
            previous_day in self.days and t < self.end
        )


def time_of_use_slot(periods: Sequence[TouPeriod], wall: datetime) -> LimitSlot | None:
    """The site power cap of the schedule at ``wall`` (the lowest if periods overlap)."""
    caps = [p for p in periods if p.covers(wall)]
    if not caps:
        return None
    period = min(caps, key=lambda p: p.power_w)
    return LimitSlot(
        id=period.name or "schedule",
        source=SlotSource.TIME_OF_USE,
        power_w=period.power_w,
        note=f"time-of-use period {period.name or period.start.isoformat('minutes')}",
    )


def active_slots(slots: Iterable[LimitSlot], wall: datetime) -> tuple[LimitSlot, ...]:
    """The slots in force at ``wall``, with demand-response floors applied to their value."""
    out = []
    for slot in slots:
        if not slot.active(wall):
            continue
        floor = slot.floor_w
        if floor is not None and slot.power_w is not None and slot.power_w < floor:
            out.append(replace(slot, power_w=floor))
        else:
            out.append(slot)
    return tuple(out)
