"""Drivers layer: ``evsite device read``: every polled field of a configured device, decoded.

One read of the device's polled fields (the same requests as a tick's read), laid out for a
technician: each field's value with the unit its name carries, where it lives (table, address,
type, scale) and, for a state field, the IEC letter. A SunSpec meter finds its model first, as
it does at start. Nothing is written: an EVSE is read, never set up.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from drivers.modbus.device import RegisterMapDevice
from drivers.modbus.registermap import Field, Value
from drivers.modbus.scan import format_value, unit_of
from drivers.modbus.sunspec import SunSpecMeter


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldReading:
    field: Field
    value: Value
    state: str | None = None  # the IEC letter, for a state field

    def as_dict(self) -> dict[str, Any]:
        f = self.field
        value: Value | None = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN: "no value"
        return {
            "name": f.name,
            "value": value,
            "text": format_value(self.value),
            "unit": unit_of(f.name),
            "state": self.state,
            "table": f.table.value,
            "address": f.address,
            "type": f.type.value,
            "scale": f.scale,
            "description": f.description,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceReadout:
    device: str
    driver: str
    model: str
    kind: str
    unit_id: int
    bus: str
    fields: tuple[FieldReading, ...]
    state: str | None  # an EVSE's IEC state as the driver sees it
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "driver": self.driver,
            "model": self.model,
            "kind": self.kind,
            "unit_id": self.unit_id,
            "bus": self.bus,
            "state": self.state,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "fields": [r.as_dict() for r in self.fields],
        }


async def read_out(device: RegisterMapDevice) -> DeviceReadout:
    """Read ``device``'s polled fields now. Bus errors propagate (core errors)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if isinstance(device, SunSpecMeter) and device.model_address is None:
        await device.locate()
    values = await device.read_fields()
    rmap = device.register_map
    readings = []
    for f in rmap.polled:
        if f.name not in values:
            continue
        value = values[f.name]
        readings.append(FieldReading(field=f, value=value, state=f.state_letter(value)))
    state = None
    if rmap.evse is not None:
        state = rmap.evse.state_letter(values, rmap.get("state"))
    return DeviceReadout(
        device=device.name,
        driver=device.spec.driver,
        model=rmap.model,
        kind=rmap.kind.value,
        unit_id=device.spec.unit_id,
        bus=device.client.describe(),
        fields=tuple(readings),
        state=state,
        elapsed_ms=(loop.time() - start) * 1000.0,
    )
