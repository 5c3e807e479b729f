"""Drivers: the register-map schema's extensions (state rules, watchdog feed, enable switch, coils,
scale-factor fields, per-device base address, link) and the registry's capabilities."""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path

import pytest
import yaml

from controller.core.errors import ConfigError
from controller.core.site import DeviceSpec, SerialTransport, TcpTransport
from drivers import registry
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.modbus.registermap import (
    DeviceKind,
    Field,
    LineSettings,
    LinkKind,
    RegisterMapError,
    RegType,
    Table,
    apply_scale_factors,
    builtin_map_names,
    decode_value,
    load_builtin_map,
    parse_map_text,
)

EVSE_WITH_RULES = """
map_version: 1
kind: evse
model: Rules EVSE
defaults: {table: input}
link: {transports: [tcp], unit_id: 255}
fields:
  - {name: cable, address: 4, type: u16}
  - {name: charging, address: 1, type: u16}
  - {name: limit_a, address: 50, type: u16, table: holding, access: rw}
  - {name: alive, address: 60, type: u16, table: holding, access: rw}
  - {name: enabled, address: 400, type: bool, table: coil, access: rw, poll: false}
evse:
  setpoint: limit_a
  enable: {field: enabled}
  state_rules:
    - {when: {cable: {min: 2}, charging: 1}, state: C}
    - {when: {cable: [2, 3]}, state: B}
    - {state: A}
  fallback: {programme: false}
  watchdog:
    refresh_fraction: 0.25
    default_timeout_s: 8
    feed: {field: alive, value: 1, skip_when_read: [2]}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(RegisterMapError) as info:
        parse_map_text(text, name="t", source="site/t.yaml")
    return info.value.problems


def test_state_rules_feed_enable_and_link_parse() -> None:
    m = parse_map_text(EVSE_WITH_RULES, name="t", source="t.yaml")
    assert m.evse is not None
    evse = m.evse
    assert evse.state_letter({"cable": 3, "charging": 1}, None) == "C"
    assert evse.state_letter({"cable": 2, "charging": 0}, None) == "B"
    assert evse.state_letter({"cable": 0, "charging": 1}, None) == "A"
    assert evse.state_letter({"cable": math.nan, "charging": 0}, None) == "A"
    assert evse.enable is not None and evse.enable.field == "enabled"
    assert evse.watchdog is not None and evse.watchdog.feed is not None
    assert evse.watchdog.feed.skip_when_read == frozenset({2})
    assert evse.fallback is not None and evse.fallback.field is None
    assert m.link.transports == (LinkKind.TCP,) and m.link.unit_id == 255
    assert m.has_watchdog and not m.fallback_programmable
    assert m.field("enabled").table is Table.COIL
    assert [(b.table, b.address, b.count) for b in m.plan()] == [
        (Table.HOLDING, 50, 1),
        (Table.HOLDING, 60, 1),
        (Table.INPUT, 1, 1),
        (Table.INPUT, 4, 1),
    ]


@pytest.mark.parametrize(
    ("replace", "with_", "expected"),
    [
        ("    - {state: A}\n", "", "the last rule needs no when"),
        ("state: C}", "state: X}", "state 'X' is not one of"),
        ("{cable: [2, 3]}", "{nothing: 1}", "field 'nothing' is not defined"),
        ("{min: 2}", "{low: 2}", "a range is {min: x, max: y}"),
        ("feed: {field: alive,", "feed: {field: cable,", "must be access: rw"),
        ("type: bool, table: coil", "type: bool, table: holding", "coils hold type bool"),
        ("transports: [tcp]", "transports: [radio]", "transport 'radio' is not one of"),
        ("unit_id: 255}", "unit_id: 300}", "unit_id 300 must be 0..255"),
        ("refresh_fraction: 0.25\n", "refresh_fraction: 0.25\n    timeout_s: 3\n", "unknown keys"),
    ],
)
def test_malformed_extensions(replace: str, with_: str, expected: str) -> None:
    assert replace in EVSE_WITH_RULES
    problems = _problems(EVSE_WITH_RULES.replace(replace, with_, 1))
    assert any(expected in p for p in problems), problems


def test_watchdog_and_fallback_none() -> None:
    text = (
        EVSE_WITH_RULES.split("  fallback:", maxsplit=1)[0] + "  fallback: none\n  watchdog: none\n"
    )
    m = parse_map_text(text, name="t", source="t.yaml")
    assert m.evse is not None and m.evse.fallback is None and m.evse.watchdog is None
    assert not m.has_watchdog


def test_serial_line_settings_parse_and_check() -> None:
    meter = """
map_version: 1
kind: meter
model: m
link: {transports: [serial], serial: {baudrate: 19200, parity: E}}
fields:
  - {name: current_l1_a, address: 0, type: float32}
  - {name: current_l2_a, address: 2, type: float32}
  - {name: current_l3_a, address: 4, type: float32}
"""
    m = parse_map_text(meter, name="m", source="m.yaml")
    assert m.link.serial == LineSettings(baudrate=19200, parity="E", stopbits=1, bytesize=8)
    bad = meter.replace("parity: E", "parity: X")
    assert any("parity 'X' must be N, E or O" in p for p in _problems(bad))
    tcp_only = meter.replace("transports: [serial]", "transports: [tcp]")
    assert any("without a serial link" in p for p in _problems(tcp_only))


def test_scale_field_and_string_in_either_byte() -> None:
    value = Field(name="a", table=Table.HOLDING, address=0, type=RegType.I16, count=1)
    assert decode_value(value, [0xFF9C]) == -100
    fields = [
        Field(
            name="a", table=Table.HOLDING, address=0, type=RegType.I16, count=1, scale_field="sf"
        ),
        Field(name="sf", table=Table.HOLDING, address=1, type=RegType.I16, count=1),
    ]
    assert apply_scale_factors(fields, {"a": -100, "sf": -2}) == {"a": -1.0, "sf": -2}
    assert math.isnan(float(apply_scale_factors(fields, {"a": 5, "sf": math.nan})["a"]))
    letter = Field(name="s", table=Table.INPUT, address=0, type=RegType.STRING, count=1)
    assert decode_value(letter, [0x0043]) == "C"  # low byte (Phoenix EV-ETH)
    assert decode_value(letter, [0x4300]) == "C"  # high byte (CHARX)
    coil = Field(name="c", table=Table.COIL, address=400, type=RegType.BOOL, count=1)
    assert decode_value(coil, [1]) == 1


def test_scale_field_must_be_an_integer_field() -> None:
    meter = """
map_version: 1
kind: meter
model: m
fields:
  - {name: current_l1_a, address: 0, type: i16, scale_field: sf}
  - {name: current_l2_a, address: 1, type: i16, scale_field: nope}
  - {name: current_l3_a, address: 2, type: i16}
  - {name: sf, address: 3, type: float32}
"""
    problems = _problems(meter)
    assert any("scale_field 'sf' must be an unscaled integer" in p for p in problems)
    assert any("scale_field 'nope' is not defined" in p for p in problems)


def test_address_base_from_an_option() -> None:
    spec = DeviceSpec(
        id="c2",
        driver="phoenix_charx",
        transport=TcpTransport(host="127.0.0.1", port=1),
        unit_id=1,
        options={"connector": 3},
    )
    charx = registry.build_evse(spec, pool=BusPool())
    assert isinstance(charx, RegisterMapEvse)
    assert charx.register_map.field("setpoint_a").address == 3301
    bad = dataclasses.replace(spec, options={"connector": "two"})
    with pytest.raises(ConfigError, match="connector"):
        registry.build_evse(bad, pool=BusPool())


def test_a_tcp_only_model_on_a_serial_line_is_a_config_error() -> None:
    spec = DeviceSpec(
        id="v",
        driver="vestel_evc04",
        transport=SerialTransport(port="/dev/ttyUSB0", baudrate=9600),
        unit_id=255,
    )
    with pytest.raises(ConfigError, match="no serial"):
        registry.build_evse(spec, pool=BusPool())
    gateway = DeviceSpec(
        id="h",
        driver="heidelberg_ec",
        transport=TcpTransport(host="10.0.0.9", port=502, rtu_over_tcp=True),
        unit_id=3,
    )
    assert isinstance(registry.build_evse(gateway, pool=BusPool()), RegisterMapEvse)


# --- built-in maps and the registry ---------------------------------------------------------------


def test_registry_names_are_the_builtin_maps() -> None:
    named = set(registry.METER_DRIVERS) | set(registry.EVSE_DRIVERS)
    named -= {registry.GENERIC_METER, registry.GENERIC_EVSE}
    assert named == set(builtin_map_names())
    for name in registry.METER_DRIVERS:
        if name != registry.GENERIC_METER:
            assert load_builtin_map(name).kind is DeviceKind.METER
    for name in registry.EVSE_DRIVERS:
        if name != registry.GENERIC_EVSE:
            assert load_builtin_map(name).kind is DeviceKind.EVSE


@pytest.mark.parametrize("name", builtin_map_names())
def test_every_builtin_map_states_link_watchdog_and_fallback(name: str) -> None:
    raw = yaml.safe_load(
        (resources.files("drivers.modbus") / "maps" / f"{name}.yaml").read_text("utf-8")
    )
    assert "link" in raw, f"{name}: say which links the model has"
    if raw["kind"] == "evse":
        assert "watchdog" in raw["evse"], f"{name}: say watchdog: none when it has none"
        assert "fallback" in raw["evse"], f"{name}: say whether the fallback is programmable"


@pytest.mark.parametrize(
    ("driver", "watchdog", "programmable", "transports", "unit_id"),
    [
        ("heidelberg_ec", True, True, (LinkKind.SERIAL,), 1),
        ("alfen_ng9xx", True, False, (LinkKind.TCP,), 1),
        ("vestel_evc04", True, True, (LinkKind.TCP,), 255),
        ("schneider_evlink", True, False, (LinkKind.TCP,), 255),
        ("bender_cc612", False, False, (LinkKind.TCP,), 255),
        ("phoenix_ev_eth", False, False, (LinkKind.TCP,), 255),
        ("phoenix_charx", False, False, (LinkKind.TCP,), 1),
    ],
)
def test_evse_capabilities(
    driver: str,
    watchdog: bool,
    programmable: bool,
    transports: tuple[LinkKind, ...],
    unit_id: int,
) -> None:
    caps = registry.capabilities(driver)
    assert caps.kind is DeviceKind.EVSE
    assert (caps.has_watchdog, caps.fallback_programmable) == (watchdog, programmable)
    assert caps.transports == transports and caps.default_unit_id == unit_id


def test_meter_capabilities_and_line_defaults() -> None:
    sdm = registry.capabilities("eastron_sdm630")
    assert sdm.kind is DeviceKind.METER and not sdm.has_watchdog
    assert sdm.default_serial == LineSettings(baudrate=9600, parity="N")
    assert registry.capabilities("heidelberg_ec").default_serial == LineSettings(
        baudrate=19200, parity="E"
    )
    assert registry.capabilities("carlo_gavazzi_em340").default_serial is None  # not known


def test_capabilities_of_generic_and_unknown_drivers(tmp_path: Path) -> None:
    generic = registry.capabilities("modbus_evse")
    assert not generic.has_watchdog and not generic.fallback_programmable
    site_map = tmp_path / "mine.yaml"
    site_map.write_text(EVSE_WITH_RULES, encoding="utf-8")
    mine = registry.capabilities("modbus_evse", register_map=site_map)
    assert mine.has_watchdog and mine.model == "Rules EVSE" and mine.default_unit_id == 255
    with pytest.raises(ConfigError, match="unknown driver 'nope'"):
        registry.capabilities("nope")


def test_a_watchdog_timeout_the_register_cannot_hold_is_a_config_error() -> None:
    spec = DeviceSpec(
        id="hd",
        driver="heidelberg_ec",
        transport=SerialTransport(port="/dev/ttyUSB0", baudrate=19200, parity="E"),
        unit_id=1,
        options={"watchdog_timeout_s": 70},  # HR 257 holds at most 65535 ms
    )
    with pytest.raises(ConfigError, match="watchdog timeout 70 s does not fit"):
        registry.build_evse(spec, pool=BusPool())
