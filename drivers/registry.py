"""Drivers layer: the names a site config may use in ``driver:`` and what they build.

The config loader checks names against ``METER_DRIVERS`` / ``EVSE_DRIVERS`` (cheap, no I/O);
the application builds drivers through ``build_meter`` / ``build_evse``. A built-in name is the
name of a register map in ``drivers/modbus/maps/``; ``modbus_meter`` / ``modbus_evse`` take a
site's own map file from ``options.register_map`` (the loader resolves it beside the config).
Devices built here share one bus owner per TCP host:port or serial port through a ``BusPool``.
"""

from __future__ import annotations

from pathlib import Path

from controller.core.errors import ConfigError
from controller.core.ports import Evse, Meter
from controller.core.site import DeviceSpec
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.modbus.meter import RegisterMapMeter
from drivers.modbus.registermap import RegisterMap, load_builtin_map, load_map_file

GENERIC_METER = "modbus_meter"
GENERIC_EVSE = "modbus_evse"

# name -> one-line description (shown by `evsite config check` and in docs/devices.md)
METER_DRIVERS: dict[str, str] = {
    "eastron_sdm630": "Eastron SDM630 3-phase meter (input registers, float32)",
    GENERIC_METER: "Any Modbus meter described by a register map file (options.register_map)",
}

EVSE_DRIVERS: dict[str, str] = {
    "alfen_ng9xx": "Alfen NG9xx (Eve) with active load balancing, Modbus TCP",
    GENERIC_EVSE: "Any Modbus EVSE described by a register map file (options.register_map)",
}

# The pool the application uses unless it passes its own; close it on shutdown (close_all).
BUS_POOL = BusPool()


def _register_map(spec: DeviceSpec, known: dict[str, str], generic: str, what: str) -> RegisterMap:
    if spec.driver not in known:
        raise ConfigError(
            [
                f"device {spec.id}: unknown {what} driver {spec.driver!r} "
                f"(known: {', '.join(sorted(known))})"
            ]
        )
    if spec.driver == generic:
        path = spec.options.get("register_map")
        if not isinstance(path, str | Path) or not str(path):
            raise ConfigError(
                [f"device {spec.id}: driver {generic} needs options.register_map (a YAML file)"]
            )
        return load_map_file(path)
    return load_builtin_map(spec.driver)


def build_meter(spec: DeviceSpec, *, pool: BusPool | None = None) -> Meter:
    """The meter for ``spec``; ConfigError for an unknown driver or a broken map."""
    rmap = _register_map(spec, METER_DRIVERS, GENERIC_METER, "meter")
    return RegisterMapMeter(spec, rmap, pool=BUS_POOL if pool is None else pool)


def build_evse(spec: DeviceSpec, *, pool: BusPool | None = None) -> Evse:
    """The EVSE controller for ``spec``; ConfigError for an unknown driver or a broken map."""
    rmap = _register_map(spec, EVSE_DRIVERS, GENERIC_EVSE, "EVSE")
    return RegisterMapEvse(spec, rmap, pool=BUS_POOL if pool is None else pool)


async def close_all(pool: BusPool | None = None) -> None:
    """Close every bus (the default pool unless one is given)."""
    await (BUS_POOL if pool is None else pool).close_all()
