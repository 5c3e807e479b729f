"""Drivers layer: the names a site config may use in ``driver:`` and what they build.

The config loader checks names against ``METER_DRIVERS`` / ``EVSE_DRIVERS`` (cheap, no I/O);
the application builds drivers through ``build_meter`` / ``build_evse``. A built-in name is the
name of a register map in ``drivers/modbus/maps/``; ``modbus_meter`` / ``modbus_evse`` take a
site's own map file from ``options.register_map`` (the loader resolves it beside the config).
Devices built here share one bus owner per TCP host:port or serial port through a ``BusPool``.

``capabilities(name)`` says what a model can do for the site's fail-safe without touching a
device: whether it has a watchdog of its own, whether evsite can programme its fallback current,
which links it has and its factory unit id and line settings (`evsite config check` warns about
models that keep their last limit when the controller dies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.core.errors import ConfigError
from controller.core.ports import Evse, Meter
from controller.core.site import DeviceSpec
from drivers.modbus import timing
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.modbus.meter import RegisterMapMeter
from drivers.modbus.registermap import (
    DeviceKind,
    LineSettings,
    LinkKind,
    RegisterMap,
    load_builtin_map,
    load_map_file,
)
from drivers.modbus.sunspec import SunSpecMeter

GENERIC_METER = "modbus_meter"
GENERIC_EVSE = "modbus_evse"

# name -> one-line description (shown by `evsite config check` and in docs/devices.md). Every
# built-in name is a map in drivers/modbus/maps/ (a test keeps the two in step).
METER_DRIVERS: dict[str, str] = {
    "eastron_sdm630": "Eastron SDM630 3-phase meter (input registers, float32)",
    "carlo_gavazzi_em24": "Carlo Gavazzi EM24 3-phase meter (RS-485, INT32 low word first)",
    "carlo_gavazzi_em340": "Carlo Gavazzi EM330/EM340 3-phase meter (INT32 low word first)",
    "janitza_umg604": "Janitza UMG 604 power analyser (holding registers, float32)",
    "abb_b23": "ABB B23/B24 3-phase meter (u32/i32/u64, all-0xFF = no value)",
    "sunspec_203": "Any SunSpec meter with model 203 (integer + scale factor), base found",
    "sunspec_213": "Any SunSpec meter with model 213 (float32), base found",
    GENERIC_METER: "Any Modbus meter described by a register map file (options.register_map)",
}

EVSE_DRIVERS: dict[str, str] = {
    "alfen_ng9xx": "Alfen NG9xx (Eve) with active load balancing, Modbus TCP",
    "heidelberg_ec": "Heidelberg Energy Control (Modbus RTU, watchdog and failsafe programmed)",
    "bender_cc612": "Bender CC612/CC613, Mennekes AMTRON Pro, ... (Modbus TCP, no watchdog)",
    "phoenix_ev_eth": "Phoenix Contact EV-CC-...-ETH, Wallbe (Modbus TCP, no watchdog)",
    "phoenix_charx": "Phoenix Contact CHARX SEC-3xxx (Modbus TCP, options.connector, no watchdog)",
    "vestel_evc04": "Vestel EVC04 / Webasto Unite (Modbus TCP, alive register, failsafe)",
    "schneider_evlink": "Schneider EVlink Pro AC (Modbus TCP, life bit)",
    GENERIC_EVSE: "Any Modbus EVSE described by a register map file (options.register_map)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverCapabilities:
    """What a driver's model offers, read from its register map (no device needed)."""

    driver: str
    kind: DeviceKind
    model: str
    # the EVSE falls back on its own when the controller stops feeding it
    has_watchdog: bool
    # evsite writes the fallback current at start (False: set on the station, or not at all)
    fallback_programmable: bool
    transports: tuple[LinkKind, ...]  # "tcp": Modbus TCP on the device; "serial": RS-485 RTU
    default_unit_id: int
    default_serial: LineSettings | None  # factory line settings; None: not known or no serial
    watchdog_default_timeout_s: float | None = None


def capabilities_of_map(driver: str, rmap: RegisterMap) -> DriverCapabilities:
    """The capabilities a register map describes (a built-in one or a site's own)."""
    wd = None if rmap.evse is None else rmap.evse.watchdog
    return DriverCapabilities(
        driver=driver,
        kind=rmap.kind,
        model=rmap.model,
        has_watchdog=wd is not None,
        fallback_programmable=rmap.fallback_programmable,
        transports=rmap.link.transports,
        default_unit_id=rmap.link.unit_id,
        default_serial=rmap.link.serial,
        watchdog_default_timeout_s=None if wd is None else wd.default_timeout_s,
    )


def capabilities(driver_name: str, *, register_map: str | Path | None = None) -> DriverCapabilities:
    """What ``driver_name`` can do; ConfigError for an unknown name.

    ``modbus_meter`` / ``modbus_evse`` describe whatever map the site gives: pass its path as
    ``register_map``. Without one, a generic EVSE is taken at its worst (no watchdog, no
    programmable fallback).
    """
    if driver_name in (GENERIC_METER, GENERIC_EVSE):
        if register_map is not None:
            return capabilities_of_map(driver_name, load_map_file(register_map))
        return DriverCapabilities(
            driver=driver_name,
            kind=DeviceKind.METER if driver_name == GENERIC_METER else DeviceKind.EVSE,
            model="register map file",
            has_watchdog=False,
            fallback_programmable=False,
            transports=(LinkKind.TCP, LinkKind.SERIAL),
            default_unit_id=1,
            default_serial=None,
        )
    if driver_name not in METER_DRIVERS and driver_name not in EVSE_DRIVERS:
        known = sorted({*METER_DRIVERS, *EVSE_DRIVERS})
        raise ConfigError([f"unknown driver {driver_name!r} (known: {', '.join(known)})"])
    return capabilities_of_map(driver_name, load_builtin_map(driver_name))


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


def line_time_s(spec: DeviceSpec) -> tuple[float, float]:
    """(one poll, one limit write) of ``spec`` on its serial line, in seconds; (0, 0) on TCP
    or when the map cannot be loaded (that is reported elsewhere)."""
    try:
        if spec.driver in EVSE_DRIVERS:
            rmap = _register_map(spec, EVSE_DRIVERS, GENERIC_EVSE, "EVSE")
        else:
            rmap = _register_map(spec, METER_DRIVERS, GENERIC_METER, "meter")
    except ConfigError:
        return (0.0, 0.0)
    return (timing.read_s(rmap, spec.transport), timing.write_s(rmap, spec.transport))


def build_meter(spec: DeviceSpec, *, pool: BusPool | None = None) -> Meter:
    """The meter for ``spec``; ConfigError for an unknown driver or a broken map."""
    rmap = _register_map(spec, METER_DRIVERS, GENERIC_METER, "meter")
    chosen = BUS_POOL if pool is None else pool
    if rmap.address_base is not None and rmap.address_base.sunspec_model is not None:
        return SunSpecMeter(spec, rmap, pool=chosen)
    return RegisterMapMeter(spec, rmap, pool=chosen)


def build_evse(spec: DeviceSpec, *, pool: BusPool | None = None) -> Evse:
    """The EVSE controller for ``spec``; ConfigError for an unknown driver or a broken map."""
    rmap = _register_map(spec, EVSE_DRIVERS, GENERIC_EVSE, "EVSE")
    return RegisterMapEvse(spec, rmap, pool=BUS_POOL if pool is None else pool)


async def close_all(pool: BusPool | None = None) -> None:
    """Close every bus (the default pool unless one is given)."""
    await (BUS_POOL if pool is None else pool).close_all()
