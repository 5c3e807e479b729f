"""Core layer: the lifecycle of faults (raised, cleared, timestamps, counts).

Each tick the shell collects the conditions it sees (from the engine, from device health) and
``update`` turns the set into transitions: a condition that appears raises a fault, one that
disappears clears it. Only transitions are logged and sent to the cloud links, never the same
fault every tick. Pure: times arrive as arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from controller.core.model import Condition

HISTORY = 100  # cleared faults kept for `evsite faults`

Key = tuple[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    code: str
    subject: str
    detail: str
    raised_at: datetime
    cleared_at: datetime | None = None
    occurrences: int = 1  # how often this (code, subject) has been raised since start

    @property
    def key(self) -> Key:
        return (self.code, self.subject)

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "subject": self.subject,
            "detail": self.detail,
            "raised_at": self.raised_at.isoformat(timespec="seconds"),
            "cleared_at": None
            if self.cleared_at is None
            else self.cleared_at.isoformat(timespec="seconds"),
            "occurrences": self.occurrences,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    kind: str  # "raised" or "cleared"
    fault: Fault


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultBook:
    active: Mapping[Key, Fault] = field(default_factory=dict)
    history: tuple[Fault, ...] = ()
    occurrences: Mapping[Key, int] = field(default_factory=dict)


def update(
    book: FaultBook, conditions: Iterable[Condition], *, wall: datetime
) -> tuple[FaultBook, list[Transition]]:
    """Apply this tick's conditions; returns the new book and what changed."""
    seen: dict[Key, Condition] = {}
    for c in conditions:
        seen.setdefault((c.code, c.subject), c)
    active = dict(book.active)
    occurrences = dict(book.occurrences)
    history = list(book.history)
    transitions: list[Transition] = []
    for key, cond in seen.items():
        if key in active:
            if active[key].detail != cond.detail:  # keep the latest detail, no transition
                active[key] = replace(active[key], detail=cond.detail)
            continue
        occurrences[key] = occurrences.get(key, 0) + 1
        fault = Fault(
            code=cond.code,
            subject=cond.subject,
            detail=cond.detail,
            raised_at=wall,
            occurrences=occurrences[key],
        )
        active[key] = fault
        transitions.append(Transition(kind="raised", fault=fault))
    for key in [k for k in active if k not in seen]:
        cleared = replace(active.pop(key), cleared_at=wall)
        history.append(cleared)
        transitions.append(Transition(kind="cleared", fault=cleared))
    return (
        FaultBook(active=active, history=tuple(history[-HISTORY:]), occurrences=occurrences),
        transitions,
    )
