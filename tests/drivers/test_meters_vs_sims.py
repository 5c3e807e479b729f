"""Every meter driver against its hil simulator: TCP over loopback, RTU over a pty.

The simulators (hil/devices/meters.py, sdm630.py) are written from the reference on their own,
so a wrong address, word order or scale in a map shows up here as a wrong number.
"""

from __future__ import annotations

import math

import pytest

from controller.core.errors import ConfigError, DeviceError
from controller.core.model import MeterReading as CoreReading
from controller.core.site import DeviceSpec, TcpTransport
from drivers.modbus.bus import BusPool
from drivers.modbus.sunspec import SunSpecMeter
from drivers.registry import build_meter
from hil.devices.meters import MeterModel, MeterReading, SimulatedMeter
from hil.devices.rtu import LineSettings
from hil.devices.sdm630 import sdm630_device
from tests.drivers.sims import (
    LINE_9600_8N1,
    LINE_19200_8E1,
    LINUX_ONLY,
    rtu,
    rtu_spec,
    run,
    tcp,
    tcp_spec,
)

READING = MeterReading(
    voltage_v=(230.1, 231.2, 229.3),
    current_a=(10.5, 11.25, 0.75),
    power_w=(2400.0, 2500.0, 150.0),
    import_kwh=1234.5,
    export_kwh=6.7,
)

# driver -> simulated model, and the resolution the model's registers carry
TCP_METERS = [
    ("carlo_gavazzi_em24", MeterModel.EM24, 0.001),
    ("carlo_gavazzi_em340", MeterModel.EM340, 0.001),
    ("janitza_umg604", MeterModel.JANITZA_UMG604, 0.001),
    ("abb_b23", MeterModel.ABB_B23, 0.01),
    ("sunspec_203", MeterModel.SUNSPEC_203, 0.01),
    ("sunspec_213", MeterModel.SUNSPEC_213, 0.001),
]


def check(reading: object, resolution_a: float) -> None:
    assert isinstance(reading, CoreReading)
    assert reading.current_a == pytest.approx(READING.current_a, abs=resolution_a)
    assert reading.voltage_v == pytest.approx(READING.voltage_v, abs=0.1)
    assert reading.power_w == pytest.approx(sum(READING.power_w), abs=1.0)
    assert reading.energy_import_wh == pytest.approx(READING.import_kwh * 1000, rel=1e-6)


@pytest.mark.parametrize(("driver", "model", "resolution_a"), TCP_METERS)
def test_meter_over_tcp(driver: str, model: MeterModel, resolution_a: float) -> None:
    async def main() -> None:
        sim = SimulatedMeter(model, lambda: READING, unit_id=7)
        async with tcp([sim.device]) as server:
            meter = build_meter(tcp_spec(server, driver, unit_id=7), pool=BusPool())
            reading = await meter.read(now_s=1.0)
            await meter.close()
        check(reading, resolution_a)
        assert reading.at_s == 1.0

    run(main)


@pytest.mark.parametrize("base", [0, 50000])
def test_sunspec_finds_the_model_at_any_base(base: int) -> None:
    async def main() -> None:
        sim = SimulatedMeter(MeterModel.SUNSPEC_213, lambda: READING, sunspec_base=base)
        async with tcp([sim.device]) as server:
            meter = build_meter(tcp_spec(server, "sunspec_213", unit_id=1), pool=BusPool())
            assert isinstance(meter, SunSpecMeter)
            reading = await meter.read(now_s=0.0)
            found = meter.model_address
            # the walk is done once: the next read is one request
            before = sim.device.requests
            await meter.read(now_s=1.0)
            after = sim.device.requests
            await meter.close()
        check(reading, 0.001)
        assert found == base + 2 + 68  # "SunS", then the common model (ID, length, 66)
        assert after - before == 1

    run(main)


def test_sunspec_without_the_model_is_a_device_error() -> None:
    async def main() -> None:
        sim = SimulatedMeter(MeterModel.SUNSPEC_213, lambda: READING)
        async with tcp([sim.device]) as server:
            meter = build_meter(tcp_spec(server, "sunspec_203", unit_id=1), pool=BusPool())
            with pytest.raises(DeviceError, match="model 203 not found"):
                await meter.read(now_s=0.0)
            await meter.close()
        # a meter without any SunSpec map
        other = SimulatedMeter(MeterModel.JANITZA_UMG604, lambda: READING)
        async with tcp([other.device]) as server:
            meter = build_meter(tcp_spec(server, "sunspec_203", unit_id=1), pool=BusPool())
            with pytest.raises(DeviceError, match="no SunSpec marker"):
                await meter.read(now_s=0.0)
            await meter.close()

    run(main)


def test_abb_no_value_reads_as_nan() -> None:
    async def main() -> None:
        sim = SimulatedMeter(MeterModel.ABB_B23, lambda: READING)
        sim.no_value = True
        async with tcp([sim.device]) as server:
            meter = build_meter(tcp_spec(server, "abb_b23", unit_id=1), pool=BusPool())
            reading = await meter.read(now_s=0.0)
            await meter.close()
        assert all(math.isnan(a) for a in reading.current_a)
        assert math.isnan(reading.power_w)
        # (the core's ladder counts a NaN reading as implausible, never as 0 A: tests/core)

    run(main)


def test_sunspec_option_base_skips_probing() -> None:
    async def main() -> None:
        sim = SimulatedMeter(MeterModel.SUNSPEC_203, lambda: READING, sunspec_base=50000)
        async with tcp([sim.device]) as server:
            spec = tcp_spec(server, "sunspec_203", unit_id=1, sunspec_base=50000)
            meter = build_meter(spec, pool=BusPool())
            await meter.read(now_s=0.0)
            await meter.close()
        # marker + one header per model walked (common, then 203) + the data read
        assert sim.device.requests == 4

    run(main)


def test_sunspec_bad_base_option_is_a_config_error() -> None:
    spec = DeviceSpec(
        id="m",
        driver="sunspec_203",
        transport=TcpTransport(host="127.0.0.1", port=1),
        unit_id=1,
        options={"sunspec_base": 123},
    )
    with pytest.raises(ConfigError, match="sunspec_base"):
        build_meter(spec, pool=BusPool())


# --- RTU meters on a pty, at the two line settings sites use --------------------------------------

RTU_METERS = [
    ("eastron_sdm630", None),
    ("carlo_gavazzi_em24", MeterModel.EM24),
    ("carlo_gavazzi_em340", MeterModel.EM340),
]


@LINUX_ONLY
@pytest.mark.parametrize("line", [LINE_9600_8N1, LINE_19200_8E1], ids=["9600-8N1", "19200-8E1"])
@pytest.mark.parametrize(("driver", "model"), RTU_METERS)
def test_meter_over_rtu(driver: str, model: MeterModel | None, line: LineSettings) -> None:
    async def main() -> None:
        if model is None:
            device = sdm630_device(lambda: READING, unit_id=3)
        else:
            device = SimulatedMeter(model, lambda: READING, unit_id=3).device
        async with rtu([device], line) as bus:
            spec = rtu_spec(bus, driver, unit_id=3, line=line)
            meter = build_meter(spec, pool=BusPool())
            reading = await meter.read(now_s=0.0)
            await meter.close()
            counters = bus.counters
        check(reading, 0.001)
        assert counters.line_mismatch == 0 and counters.bad_crc == 0

    run(main)
