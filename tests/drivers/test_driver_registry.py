"""Drivers: the registry's names, what it builds, and its errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.core.errors import ConfigError
from controller.core.site import DeviceSpec, TcpTransport
from drivers import registry
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.modbus.meter import RegisterMapMeter
from drivers.modbus.registermap import DeviceKind, RegisterMapError, load_builtin_map


def spec(driver: str, **options: object) -> DeviceSpec:
    return DeviceSpec(
        id="dev",
        driver=driver,
        transport=TcpTransport(host="127.0.0.1", port=1502),
        unit_id=1,
        options=options,
    )


def test_every_builtin_name_has_a_map_of_its_kind() -> None:
    for names, kind, generic in (
        (registry.METER_DRIVERS, DeviceKind.METER, registry.GENERIC_METER),
        (registry.EVSE_DRIVERS, DeviceKind.EVSE, registry.GENERIC_EVSE),
    ):
        for name, description in names.items():
            assert description
            if name != generic:
                assert load_builtin_map(name).kind is kind


def test_build_from_builtin_names_shares_the_bus() -> None:
    pool = BusPool()
    meter = registry.build_meter(spec("eastron_sdm630"), pool=pool)
    evse = registry.build_evse(spec("alfen_ng9xx", validity_time_s=300), pool=pool)
    assert isinstance(meter, RegisterMapMeter) and isinstance(evse, RegisterMapEvse)
    assert meter.client is evse.client and len(pool) == 1
    assert evse.watchdog_refresh_s == pytest.approx(99.9)
    asyncio.run(pool.close_all())
    assert len(pool) == 0


def test_default_pool_and_close_all() -> None:
    meter = registry.build_meter(spec("eastron_sdm630"))
    assert isinstance(meter, RegisterMapMeter)
    assert meter.client in registry.BUS_POOL.buses()
    asyncio.run(registry.close_all())
    assert len(registry.BUS_POOL) == 0


@pytest.mark.parametrize(
    ("build", "driver", "message"),
    [
        (registry.build_meter, "eastron_sdm631", "unknown meter driver 'eastron_sdm631'"),
        (registry.build_meter, "alfen_ng9xx", "unknown meter driver 'alfen_ng9xx'"),
        (registry.build_evse, "eastron_sdm630", "unknown EVSE driver 'eastron_sdm630'"),
        (registry.build_meter, "modbus_meter", "needs options.register_map"),
    ],
)
def test_unknown_or_incomplete_driver_is_a_config_error(
    build: object, driver: str, message: str
) -> None:
    assert callable(build)
    with pytest.raises(ConfigError, match=message):
        build(spec(driver), pool=BusPool())


def test_generic_driver_takes_a_site_map(tmp_path: Path) -> None:
    good = tmp_path / "my_meter.yaml"
    good.write_text(
        "map_version: 1\nkind: meter\nmodel: My meter\ndefaults: {table: input}\nfields:\n"
        "  - {name: current_l1_a, address: 0, type: i32, word_order: little, scale: 0.001}\n"
        "  - {name: current_l2_a, address: 2, type: i32, word_order: little, scale: 0.001}\n"
        "  - {name: current_l3_a, address: 4, type: i32, word_order: little, scale: 0.001}\n",
        encoding="utf-8",
    )
    pool = BusPool()
    meter = registry.build_meter(spec("modbus_meter", register_map=str(good)), pool=pool)
    assert isinstance(meter, RegisterMapMeter)
    assert meter.register_map.model == "My meter"
    with pytest.raises(ConfigError, match="describes a meter, not an EVSE"):
        registry.build_evse(spec("modbus_evse", register_map=str(good)), pool=pool)
    bad = tmp_path / "bad.yaml"
    bad.write_text("map_version: 1\nkind: meter\nmodel: x\nfields: []\n", encoding="utf-8")
    with pytest.raises(RegisterMapError, match=r"bad\.yaml: fields: must be a non-empty list"):
        registry.build_meter(spec("modbus_meter", register_map=str(bad)), pool=pool)
    asyncio.run(pool.close_all())
