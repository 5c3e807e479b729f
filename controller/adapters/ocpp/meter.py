"""Adapters layer: OCPP 1.6 meter values and connector statuses from what the EVSEs report.

Pure functions over core types (no I/O): the link calls them each tick and when it builds a
MeterValues, StartTransaction or StopTransaction payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from controller.adapters.ocpp.site import ConnectorFault
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import DRAWING_THRESHOLD_A, SessionPhase, SessionRecord

ENERGY = "Energy.Active.Import.Register"
MIN_OFFER_A = 6.0  # IEC 61851: an offer below this means no charging


def iso(when: datetime) -> str:
    """An OCPP timestamp: UTC, with Z, milliseconds at most."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sampled_values(
    measurands: Sequence[str],
    *,
    reading: EvseReading | None,
    offered_a: float | None,
    phases: int,
    context: str,
    energy_wh: float | None = None,
) -> list[dict[str, Any]]:
    """The sampledValue items for ``measurands`` (those that can be read now)."""
    out: list[dict[str, Any]] = []
    for measurand in measurands:
        if measurand == ENERGY:
            value = energy_wh if energy_wh is not None else (reading.energy_wh if reading else None)
            if value is not None:
                out.append(_value(f"{value:.0f}", context, measurand, "Wh"))
        elif measurand == "Current.Import" and reading is not None:
            for i in range(phases):
                out.append(
                    {
                        **_value(f"{reading.current_a[i]:.1f}", context, measurand, "A"),
                        "phase": f"L{i + 1}",
                    }
                )
        elif measurand == "Power.Active.Import" and reading is not None:
            out.append(_value(f"{reading.power_w:.0f}", context, measurand, "W"))
        elif measurand == "Current.Offered" and offered_a is not None:
            out.append(_value(f"{offered_a:.1f}", context, measurand, "A"))
    return out


def _value(value: str, context: str, measurand: str, unit: str) -> dict[str, Any]:
    return {
        "value": value,
        "context": context,
        "measurand": measurand,
        "location": "Outlet",
        "unit": unit,
    }


def connector_status(
    *,
    rec: SessionRecord | None,
    available: bool,
    vehicle_present: bool | None,
    reading: EvseReading | None,
    offered_a: float | None,
    reserved: bool,
    fault: ConnectorFault | None,
) -> tuple[str, str, str, str]:
    """(status, errorCode, info, vendorErrorCode) of a connector for StatusNotification."""
    error, info, vendor = "NoError", "", ""
    if fault is None and reading is not None:
        if reading.state is EvseState.E:
            fault = ConnectorFault(error_code="EVCommunicationError", info="control pilot state E")
        elif reading.state is EvseState.F:
            fault = ConnectorFault(error_code="InternalError", info="the EVSE reports a fault (F)")
    if fault is not None:
        error, info, vendor = fault.error_code, fault.info, fault.vendor_error_code
        if fault.faulted:
            return "Faulted", error, info, vendor
    phase = rec.phase if rec is not None else None
    if phase is SessionPhase.ACTIVE:
        drawing = reading is not None and max(reading.current_a) >= DRAWING_THRESHOLD_A
        if drawing:
            status = "Charging"
        elif offered_a is not None and offered_a < MIN_OFFER_A:
            status = "SuspendedEVSE"
        else:
            status = "SuspendedEV"
    elif not available:
        status = "Unavailable"
    elif phase is SessionPhase.FINISHING:
        status = "Finishing"
    elif phase in (SessionPhase.PENDING, SessionPhase.AUTHORISED):
        status = "Preparing"
    elif reserved:
        status = "Reserved"
    elif vehicle_present:
        status = "Preparing"
    else:
        status = "Available"
    return status, error, info, vendor
