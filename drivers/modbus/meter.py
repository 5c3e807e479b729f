"""Drivers layer: a 3-phase meter driven by its register map (implements core ``Meter``).

The map names the fields (``current_l1_a`` .. ``energy_import_wh``); this class reads the planned
blocks and fills a ``MeterReading``. Values come through as the device reports them, NaN
included: judging plausibility is the core's job (``MeterReading.plausible``).
"""

from __future__ import annotations

from controller.core.model import ZERO3, MeterReading, Triple
from drivers.modbus.device import RegisterMapDevice, number
from drivers.modbus.registermap import DeviceKind, Value


def _triple(values: dict[str, Value], pattern: str) -> Triple | None:
    got = [number(values, pattern.format(i)) for i in (1, 2, 3)]
    if any(v is None for v in got):
        return None
    a, b, c = (float(v) for v in got if v is not None)
    return (a, b, c)


class RegisterMapMeter(RegisterMapDevice):
    """``RegisterMapMeter(spec, "eastron_sdm630", pool=pool)``: a meter from a map name or map."""

    kind = DeviceKind.METER

    async def read(self, now_s: float) -> MeterReading:
        values = await self.read_fields()
        current = _triple(values, "current_l{}_a")
        assert current is not None  # required by every meter map (checked when it loads)
        power = number(values, "power_w")
        if power is None:
            per_phase = _triple(values, "power_l{}_w")
            power = sum(per_phase) if per_phase is not None else 0.0
        return MeterReading(
            at_s=now_s,
            current_a=current,
            voltage_v=_triple(values, "voltage_l{}_v") or ZERO3,
            power_w=power,
            energy_import_wh=number(values, "energy_import_wh") or 0.0,
        )
