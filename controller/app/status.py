"""App layer: the status document the control loop publishes every tick.

One JSON-able dict, built from the site, the last readings, the allocation and device health.
`evsite status` prints it, the demo renders it, and later MQTT and OCPP read from it, so its
keys are an interface: units in every name, phases as lists [L1, L2, L3].
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controller import __version__
from controller.core.model import Allocation, EvseReading, MeterReading
from controller.core.site import Site, format_rotation


def _r(x: float) -> float:
    return round(x, 2)


def _list3(values: tuple[float, float, float] | None) -> list[float] | None:
    return None if values is None else [_r(v) for v in values]


def build_status(
    *,
    site: Site,
    wall: datetime,
    now_s: float,
    started_s: float,
    allocation: Allocation | None,
    meters: Mapping[str, MeterReading | None],
    evses: Mapping[str, EvseReading | None],
    written_a: Mapping[str, float | None],
    health: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Assemble the status document (pure: everything arrives as arguments)."""
    circuits: list[dict[str, Any]] = []
    for node in site.circuits:
        state = allocation.nodes.get(node.id) if allocation else None
        phases = []
        for p in range(3):
            measured = state.measured_a[p] if state and state.measured_a else None
            phases.append(
                {
                    "phase": f"L{p + 1}",
                    "rating_a": node.rating_a,
                    "margin_a": node.margin_a,
                    "measured_a": None if measured is None else _r(measured),
                    "non_ev_a": _r(state.non_ev_a[p]) if state else None,
                    "allocated_a": _r(state.allocated_a[p]) if state else None,
                    "available_a": _r(state.available_a[p]) if state else None,
                    # what the breaker still has before its rating, by measurement
                    "headroom_a": None if measured is None else _r(node.rating_a - measured),
                }
            )
        circuits.append(
            {"id": node.id, "parent": node.parent, "meter": node.meter, "phases": phases}
        )

    connectors: list[dict[str, Any]] = []
    for conn in site.connectors:
        reading = evses.get(conn.id)
        limit = allocation.limits.get(conn.id) if allocation else None
        connectors.append(
            {
                "id": conn.id,
                "circuit": conn.circuit,
                "rotation": format_rotation(conn.grid_phases),
                "priority_tier": conn.priority_tier,
                "state": reading.state.value if reading else "unknown",
                "online": bool(health.get(conn.id, {}).get("online", False)),
                "current_a": _list3(reading.current_a) if reading else None,
                "power_w": _r(reading.power_w) if reading else None,
                "energy_wh": _r(reading.energy_wh) if reading else None,
                "limit_a": _r(limit.current_a) if limit else None,
                "target_a": None if limit is None or limit.target_a is None else _r(limit.target_a),
                "bound_by": limit.describe() if limit else None,
                "bound": limit.bound.value if limit else None,
                "written_a": written_a.get(conn.id),
                "min_current_a": conn.min_current_a,
                "max_current_a": conn.max_current_a,
                "fallback_current_a": conn.fallback_current_a,
            }
        )

    meter_rows = []
    for spec in site.meters:
        m = meters.get(spec.id)
        meter_rows.append(
            {
                "id": spec.id,
                "current_a": _list3(m.current_a) if m else None,
                "voltage_v": _list3(m.voltage_v) if m else None,
                "power_w": _r(m.power_w) if m else None,
                "age_s": None if m is None else _r(now_s - m.at_s),
            }
        )

    return {
        "version": __version__,
        "site": {"id": site.id, "name": site.name, "timezone": site.timezone},
        "time": wall.isoformat(timespec="seconds"),
        "uptime_s": _r(now_s - started_s),
        "mode": allocation.mode if allocation else "starting",
        "notes": list(allocation.notes) if allocation else [],
        "grid": circuits[0] if circuits else None,
        "circuits": circuits,
        "connectors": connectors,
        "meters": meter_rows,
        "devices": [{"id": k, **v} for k, v in health.items()],
    }
