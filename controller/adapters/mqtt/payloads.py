"""Adapters layer: the JSON documents the MQTT link publishes (sans-IO: data in, bytes out).

- event envelope ``{"id", "ts", "kind", "site", "data"}``: stored in the outbox as it is sent
- telemetry: compact, units in the keys, built from the control loop's status document
- connector state: only the slow-changing fields, so that the retained topic seldom changes
- meta: the site's ratings, connectors and tariff, retained
- status: the birth message, the last will and the goodbye

The status document of controller.app.status is the input; its keys are an interface.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from controller.core.site import Site, format_rotation

# Event kinds the link sends (docs/mqtt.md).
EVENT_KINDS = (
    "fault_raised",
    "fault_cleared",
    "limit_changed",
    "config_changed",
    "mode_changed",
    "session_started",
    "session_ended",
    "availability_changed",
    "tariff_changed",
    "payment",
    "test",  # injected by the test-only socket command debug_inject_events
)
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def envelope(*, event_id: str, ts: datetime, kind: str, site_id: str, data: Any) -> str:
    """One event as it goes to ``events/<kind>``; the id lets the cloud drop duplicates."""
    if not _KIND_RE.fullmatch(kind):
        raise ValueError(f"an event kind is snake_case, not {kind!r}")
    return dumps(
        {
            "id": event_id,
            "ts": ts.isoformat(timespec="milliseconds"),
            "kind": kind,
            "site": site_id,
            "data": data,
        }
    )


def _finite(x: Any) -> float | None:
    """A number for JSON, or None: NaN and infinities (a register with no value) are not JSON."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _r1(x: Any) -> float | None:
    value = _finite(x)
    return None if value is None else round(value, 1)


def _r0(x: Any) -> int | None:
    value = _finite(x)
    return None if value is None else round(value)


def _phases(values: Sequence[Any] | None) -> list[float | None] | None:
    return None if values is None else [_r1(v) for v in values]


def _node(circuit: Mapping[str, Any]) -> dict[str, Any]:
    phases = circuit.get("phases") or []
    return {
        "current_a": [_r1(p.get("measured_a")) for p in phases],
        "allocated_a": [_r1(p.get("allocated_a")) for p in phases],
        "available_a": [_r1(p.get("available_a")) for p in phases],
    }


def telemetry(status: Mapping[str, Any], ts: datetime) -> bytes | None:
    """The telemetry document from the loop's status; None before the first tick."""
    if not status or "connectors" not in status:
        return None
    grid = status.get("grid")
    site: dict[str, Any] = _node(grid) if grid else {}
    meters = {m.get("id"): m for m in status.get("meters") or []}
    grid_meter = meters.get(grid.get("meter")) if grid else None
    site["power_w"] = _r0(grid_meter.get("power_w")) if grid_meter else None
    grid_id = grid.get("id") if grid else None
    circuits = {c["id"]: _node(c) for c in status.get("circuits") or [] if c["id"] != grid_id}
    connectors = {
        c["id"]: {
            "state": c.get("state"),
            "current_a": _phases(c.get("current_a")),
            "power_w": _r0(c.get("power_w")),
            "energy_wh": _r0(c.get("energy_wh")),
            "limit_a": _r1(c.get("limit_a")),
            "bound": c.get("bound"),
        }
        for c in status.get("connectors") or []
    }
    document: dict[str, Any] = {
        "ts": ts.isoformat(timespec="milliseconds"),
        "mode": status.get("mode"),
        "site": site,
        "connectors": connectors,
    }
    if circuits:
        document["circuits"] = circuits
    return dumps(document).encode()


def connector_states(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """connector id -> its retained state: what it is doing, not how much (telemetry has that)."""
    return {
        c["id"]: {"state": c.get("state"), "online": bool(c.get("online"))}
        for c in status.get("connectors") or []
    }


def meta(
    site: Site,
    *,
    version: str,
    telemetry_interval_s: float,
    commands: Sequence[str],
    tariff: Mapping[str, Any] | None = None,
) -> str:
    """``tariff``: the tariff in force as the driver sees it (core.tariff.price_display plus
    its source), or None when the site charges nothing."""
    return dumps(
        {
            "site": {
                "id": site.id,
                "name": site.name,
                "timezone": site.timezone,
                "nominal_voltage_v": site.nominal_voltage_v,
            },
            "software": {"name": "evsite", "version": version},
            "api": "v1",
            "circuits": [
                {
                    "id": c.id,
                    "parent": c.parent,
                    "rating_a": c.rating_a,
                    "margin_a": c.margin_a,
                    "metered": c.meter is not None,
                }
                for c in site.circuits
            ],
            "connectors": [
                {
                    "id": k.id,
                    "circuit": k.circuit,
                    "phases": len(k.grid_phases),
                    "rotation": format_rotation(k.grid_phases),
                    "min_current_a": k.min_current_a,
                    "max_current_a": k.max_current_a,
                    "fallback_current_a": k.fallback_current_a,
                    "priority_tier": k.priority_tier,
                }
                for k in site.connectors
            ],
            "time_of_use": [
                {
                    "name": p.name,
                    "days": sorted(p.days),
                    "start": p.start.isoformat("minutes"),
                    "end": p.end.isoformat("minutes"),
                    "power_w": p.power_w,
                }
                for p in site.time_of_use
            ],
            "tariff": None if tariff is None else dict(tariff),
            "telemetry_interval_s": telemetry_interval_s,
            "commands": sorted(commands),
            "events": list(EVENT_KINDS),
        }
    )


def status_online(*, boot_id: str, version: str, since: datetime) -> str:
    return dumps(
        {
            "state": "online",
            "boot_id": boot_id,
            "version": version,
            "since": since.isoformat(timespec="seconds"),
        }
    )


def status_offline(*, boot_id: str, reason: str) -> str:
    """``reason``: ``connection_lost`` in the last will, ``stopped`` when the service stops."""
    return dumps({"state": "offline", "boot_id": boot_id, "reason": reason})
