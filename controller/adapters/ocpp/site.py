"""Adapters layer: what the OCPP link needs of the running site (a port the app implements).

The link never reaches into the control loop or the session desk itself: the app's wiring
(controller/app/ocpp.py) implements ``SitePort`` over them, so this package depends on the core
types alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from controller.core.model import EvseReading
from controller.core.sessions import SessionRecord, StopReason
from controller.core.slots import LimitSlot


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorFault:
    """A fault at a connector as OCPP reports it (StatusNotification errorCode, info)."""

    error_code: str  # ChargePointErrorCode
    info: str = ""
    vendor_error_code: str = ""
    faulted: bool = True  # False: reported with the status it has (still usable)


class SitePort(Protocol):
    def now(self) -> datetime:
        """The site's wall time (aware)."""

    def records(self) -> Mapping[str, SessionRecord]:
        """The open session of each connector that has one."""

    def record_by_id(self, session_id: str) -> SessionRecord | None: ...

    def start(self, connector: str, *, id_tag: str) -> SessionRecord:
        """A remote start (raises core SessionRefused with the reason)."""

    def stop(self, connector: str, *, reason: StopReason) -> SessionRecord:
        """Raises core SessionRefused when there is nothing to stop."""

    def attach(self, session_id: str, transaction_id: int) -> None: ...

    def set_availability(self, connector: str, available: bool) -> str:
        """ "accepted" or "scheduled" (a running transaction first ends)."""

    def available(self, connector: str) -> bool: ...

    def vehicle_present(self, connector: str) -> bool | None: ...

    def reading(self, connector: str) -> EvseReading | None:
        """The EVSE's latest reading (None: none yet)."""

    def offered_a(self, connector: str) -> float | None:
        """The current limit the engine gives the connector now."""

    def fault(self, connector: str | None) -> ConnectorFault | None:
        """The connector's fault (None: the charge point as a whole), or None."""

    def other_slots(self, connector: str | None) -> tuple[LimitSlot, ...]:
        """The limit slots that bind a connector (None: the site), OCPP profiles' aside: the
        caps of a composite schedule."""

    def max_current_a(self, connector: str | None) -> float:
        """What a connector (None: the whole site, per phase) may draw with no profile."""

    def number_phases(self, connector: str | None) -> int: ...

    def nominal_voltage_v(self) -> float: ...

    def reset(self, hard: bool) -> None:
        """Restart the service (after the transactions ended)."""

    def note_event(self, kind: str, subject: str, detail: Mapping[str, object]) -> None:
        """Record an event in the site's event log (and wherever events go)."""
