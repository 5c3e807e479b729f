"""Drivers against real Modbus TCP servers on loopback, registers set by hand from the reference.

reference/modbus.md §1 (SDM630: input registers, float32, high word first) and §2 (Alfen NG9xx:
holding registers; state text at 1201-1205; setpoint float32 at 1210 in one FC16).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType

from controller.core.errors import ConfigError, DeviceError, DeviceUnavailable
from controller.core.model import EvseState
from controller.core.site import DeviceSpec, SerialTransport, TcpTransport
from drivers.modbus.bus import BusPool
from drivers.modbus.client import ModbusBusy, ModbusClient, ModbusRefused
from drivers.modbus.evse import RegisterMapEvse
from drivers.modbus.meter import RegisterMapMeter
from tests.drivers.modbus_loopback import (
    FakeDevice,
    closed_port,
    f32,
    f32_from,
    f64,
    modbus_server,
    silent_server,
    text,
    u32,
)


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def spec(
    port: int,
    *,
    driver: str = "eastron_sdm630",
    unit_id: int = 1,
    timeout_s: float = 0.3,
    rtu_over_tcp: bool = False,
    **options: Any,
) -> DeviceSpec:
    return DeviceSpec(
        id=f"{driver}-{unit_id}",
        driver=driver,
        transport=TcpTransport(host="127.0.0.1", port=port, rtu_over_tcp=rtu_over_tcp),
        unit_id=unit_id,
        timeout_s=timeout_s,
        options=options,
    )


# --- devices as the reference describes them ---------------------------------------------------


def sdm630(
    unit_id: int = 1,
    *,
    current_a: tuple[float, float, float] = (10.5, 11.25, 0.0),
    with_energy: bool = True,
) -> FakeDevice:
    """Only the documented input registers exist: anything else answers exception 2."""
    dev = FakeDevice(unit_id=unit_id)
    for i, v in enumerate((230.1, 231.2, 229.3)):
        dev.set("input", 0x00 + 2 * i, f32(v))
    for i, a in enumerate(current_a):
        dev.set("input", 0x06 + 2 * i, f32(a))
    for i, w in enumerate((2400.0, 2500.0, 0.0)):
        dev.set("input", 0x0C + 2 * i, f32(w))
    dev.set("input", 0x34, f32(4900.0))
    if with_energy:
        dev.set("input", 0x48, f32(1234.5))  # kWh
    return dev


def alfen(unit_id: int = 1, *, state: str = "C2", safe_current_a: float = 6.0) -> FakeDevice:
    """Registers 300-425 and 1200-1215 exist (holding). The setpoint takes FC16 of exactly 2."""
    dev = FakeDevice(unit_id=unit_id)
    dev.define("holding", 300, 425)
    dev.define("holding", 1200, 1215)
    for i, v in enumerate((229.0, 230.0, 231.0)):
        dev.set("holding", 306 + 2 * i, f32(v))
    for i, a in enumerate((15.5, 15.75, 16.0)):
        dev.set("holding", 320 + 2 * i, f32(a))
    dev.set("holding", 344, f32(10900.0))
    dev.set("holding", 374, f64(987654.5))
    dev.set("holding", 1201, text(state, 5))
    dev.set("holding", 1206, f32(16.0))
    dev.set("holding", 1208, u32(42))
    dev.set("holding", 1210, f32(16.0))
    dev.set("holding", 1212, f32(safe_current_a))
    dev.set("holding", 1214, [1])
    dev.set("holding", 1215, [3])

    def refuse(fc: int, address: int, count: int) -> ExcCodes | None:
        if fc in (6, 16):
            if address == 1210 and fc == 16 and count == 2:
                return None
            if address == 1215 and count == 1:
                return None
            return ExcCodes.ILLEGAL_VALUE if address in (1210, 1211) else ExcCodes.ILLEGAL_ADDRESS
        return None

    dev.refuse = refuse
    return dev


# --- meter ---------------------------------------------------------------------------------------


def test_sdm630_reading_decodes_reference_registers() -> None:
    async def main() -> None:
        dev = sdm630()
        async with modbus_server([dev]) as port:
            meter = RegisterMapMeter(spec(port), "eastron_sdm630")
            try:
                r = await meter.read(now_s=12.5)
            finally:
                await meter.close()
        assert meter.name == "eastron_sdm630-1"
        assert r.at_s == 12.5
        assert r.current_a == pytest.approx((10.5, 11.25, 0.0))
        assert r.voltage_v == pytest.approx((230.1, 231.2, 229.3), rel=1e-6)
        assert r.power_w == pytest.approx(4900.0)
        assert r.energy_import_wh == pytest.approx(1234.5 * 1000)
        # three FC04 requests, none across the undocumented registers
        assert [fc for fc, _a, _n in dev.reads] == [4, 4, 4]
        assert meter.last_values["power_l1_w"] == pytest.approx(2400.0)

    run(main)


def test_meter_reads_follow_the_device() -> None:
    async def main() -> None:
        dev = sdm630()
        async with modbus_server([dev]) as port:
            meter = RegisterMapMeter(spec(port), "eastron_sdm630")
            first = await meter.read(now_s=1.0)
            dev.set("input", 0x08, f32(31.5))
            second = await meter.read(now_s=2.0)
            await meter.close()
        assert first.current_a[1] == pytest.approx(11.25)
        assert second.current_a[1] == pytest.approx(31.5)
        assert second.at_s == 2.0

    run(main)


# --- EVSE ----------------------------------------------------------------------------------------


def test_alfen_reading_decodes_reference_registers() -> None:
    async def main() -> None:
        dev = alfen()
        async with modbus_server([dev]) as port:
            evse = RegisterMapEvse(spec(port, driver="alfen_ng9xx"), "alfen_ng9xx")
            r = await evse.read(now_s=3.0)
            await evse.close()
        assert r.state is EvseState.C
        assert r.current_a == pytest.approx((15.5, 15.75, 16.0))
        assert r.power_w == pytest.approx(10900.0)
        assert r.energy_wh == pytest.approx(987654.5)
        assert r.applied_limit_a == pytest.approx(16.0)
        assert evse.last_values["validity_remaining_s"] == 42
        assert all(fc == 3 for fc, _a, _n in dev.reads)

    run(main)


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("A", EvseState.A),
        ("B1", EvseState.B),
        ("B2", EvseState.B),
        ("C1", EvseState.C),
        ("C2", EvseState.C),
        ("D1", EvseState.D),
        ("D2", EvseState.D),
        ("E", EvseState.E),
        ("F", EvseState.F),
        ("X7", EvseState.UNKNOWN),
        ("", EvseState.UNKNOWN),
    ],
)
def test_alfen_state_text(raw: str, state: EvseState) -> None:
    async def main() -> None:
        dev = alfen()
        dev.set("holding", 1201, text(raw, 5))
        async with modbus_server([dev]) as port:
            evse = RegisterMapEvse(spec(port, driver="alfen_ng9xx"), "alfen_ng9xx")
            r = await evse.read(now_s=0.0)
            await evse.close()
        assert r.state is state

    run(main)


def test_alfen_setpoint_is_one_fc16_of_two_registers() -> None:
    async def main() -> None:
        dev = alfen()
        async with modbus_server([dev]) as port:
            evse = RegisterMapEvse(spec(port, driver="alfen_ng9xx"), "alfen_ng9xx")
            await evse.write_limit(10.5)
            await evse.write_limit(0.0)
            with pytest.raises(ValueError):
                await evse.write_limit(-1.0)
            with pytest.raises(ValueError):
                await evse.write_limit(float("nan"))
            await evse.close()
        assert [(fc, a, len(v)) for fc, a, v in dev.writes] == [(16, 1210, 2), (16, 1210, 2)]
        assert f32_from(dev.writes[0][2]) == 10.5
        assert f32_from(dev.writes[1][2]) == 0.0

    run(main)


def test_alfen_write_refused_is_a_device_error() -> None:
    async def main() -> None:
        dev = alfen()
        dev.refuse = lambda fc, a, n: ExcCodes.ILLEGAL_VALUE if fc == 16 else None
        async with modbus_server([dev]) as port:
            evse = RegisterMapEvse(spec(port, driver="alfen_ng9xx"), "alfen_ng9xx")
            with pytest.raises(ModbusRefused) as info:
                await evse.write_limit(16.0)
            await evse.close()
        assert isinstance(info.value, DeviceError)
        assert info.value.exception_code == 3 and info.value.function_code == 16

    run(main)


def test_alfen_setup_reads_safe_current_and_warns() -> None:
    async def main() -> None:
        dev = alfen(safe_current_a=6.0)
        async with modbus_server([dev]) as port:
            evse = RegisterMapEvse(spec(port, driver="alfen_ng9xx"), "alfen_ng9xx")
            await evse.setup(6.05)
            assert evse.setup_warnings == []
            assert evse.device_fallback_current_a == pytest.approx(6.0)
            await evse.setup(10.0)
            assert len(evse.setup_warnings) == 1
            assert "6 A" in evse.setup_warnings[0] and "10 A" in evse.setup_warnings[0]
            await evse.close()
        assert dev.writes == []  # nothing programmed: the safe current lives on the station

    run(main)


def test_alfen_watchdog_refresh_from_validity_time() -> None:
    evse = RegisterMapEvse(spec(1, driver="alfen_ng9xx"), "alfen_ng9xx")
    assert evse.watchdog_timeout_s == 60.0
    assert evse.watchdog_refresh_s == pytest.approx(60.0 * 0.333)
    evse = RegisterMapEvse(spec(1, driver="alfen_ng9xx", validity_time_s=300), "alfen_ng9xx")
    refresh_s = evse.watchdog_refresh_s
    assert refresh_s is not None and refresh_s == pytest.approx(99.9) and refresh_s <= 300 / 3
    with pytest.raises(ConfigError, match="validity_time_s"):
        RegisterMapEvse(spec(1, driver="alfen_ng9xx", validity_time_s="long"), "alfen_ng9xx")
    with pytest.raises(ConfigError, match="describes an EVSE, not a meter"):
        RegisterMapMeter(spec(1, driver="alfen_ng9xx"), "alfen_ng9xx")


# --- failures ------------------------------------------------------------------------------------


def test_silent_device_times_out_within_budget() -> None:
    async def main() -> None:
        async with silent_server() as port:
            meter = RegisterMapMeter(spec(port, timeout_s=0.2), "eastron_sdm630")
            for _ in range(2):
                t0 = time.monotonic()
                with pytest.raises(DeviceUnavailable):
                    await meter.read(now_s=0.0)
                elapsed = time.monotonic() - t0
                assert 0.15 <= elapsed <= 0.2 * 1.5 + 0.2, elapsed  # slack for a busy CI host
            await meter.close()

    run(main)


def test_hung_library_call_is_cut_at_one_and_a_half_timeouts() -> None:
    class Hanging:
        connected = True

        async def read_holding_registers(self, *_a: object, **_k: object) -> None:
            await asyncio.sleep(60)

        def close(self) -> None:
            pass

    class HangingClient(ModbusClient):
        def _build(self) -> Any:
            return Hanging()

    async def main() -> None:
        client = HangingClient(TcpTransport(host="127.0.0.1", port=1), timeout_s=0.2)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match=r"within 0\.30 s"):
            await client.read_registers("holding", 0, 2, 1)
        assert 0.25 <= time.monotonic() - t0 <= 0.7
        await client.close()

    run(main)


def test_closed_port_is_unavailable_quickly() -> None:
    async def main() -> None:
        meter = RegisterMapMeter(spec(closed_port(), timeout_s=0.5), "eastron_sdm630")
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="cannot connect"):
            await meter.read(now_s=0.0)
        with pytest.raises(DeviceUnavailable, match="not connected"):  # backing off: no wait
            await meter.read(now_s=0.0)
        assert time.monotonic() - t0 < 0.5
        await meter.close()

    run(main)


def test_reconnects_after_the_device_comes_back() -> None:
    async def main() -> None:
        dev = sdm630()
        async with modbus_server([dev]) as port:
            meter = RegisterMapMeter(spec(port), "eastron_sdm630")
            await meter.read(now_s=0.0)
        with pytest.raises(DeviceUnavailable):
            await meter.read(now_s=1.0)
        async with modbus_server([dev], port=port):
            deadline = time.monotonic() + 3.0
            while True:
                try:
                    r = await meter.read(now_s=2.0)
                    break
                except DeviceUnavailable:
                    assert time.monotonic() < deadline, "no reconnect within 3 s"
                    await asyncio.sleep(0.1)
            await meter.close()
        assert r.current_a[0] == pytest.approx(10.5)

    run(main)


def test_exception_response_is_a_device_error() -> None:
    async def main() -> None:
        dev = sdm630(with_energy=False)  # 0x48 undefined: exception 2
        async with modbus_server([dev]) as port:
            meter = RegisterMapMeter(spec(port), "eastron_sdm630")
            with pytest.raises(ModbusRefused) as info:
                await meter.read(now_s=0.0)
            await meter.close()
        assert isinstance(info.value, DeviceError)
        assert info.value.exception_code == 2 and info.value.function_code == 4
        assert "illegal data address" in str(info.value)

    run(main)


@pytest.mark.parametrize("code", [ExcCodes.DEVICE_BUSY, ExcCodes.GATEWAY_NO_RESPONSE])
def test_busy_and_gateway_exceptions_are_retryable(code: ExcCodes) -> None:
    async def main() -> None:
        dev = sdm630()
        dev.refuse = lambda fc, a, n: code
        async with modbus_server([dev]) as port:
            meter = RegisterMapMeter(spec(port), "eastron_sdm630")
            with pytest.raises(ModbusBusy) as info:
                await meter.read(now_s=0.0)
            await meter.close()
        assert isinstance(info.value, DeviceUnavailable)
        assert info.value.exception_code == int(code)

    run(main)


# --- shared buses --------------------------------------------------------------------------------


def test_devices_on_one_host_share_one_client() -> None:
    async def main() -> None:
        devs = [sdm630(1, current_a=(1.0, 2.0, 3.0)), sdm630(2, current_a=(4.0, 5.0, 6.0))]
        pool = BusPool()
        async with modbus_server(devs) as port:
            m1 = RegisterMapMeter(spec(port, unit_id=1), "eastron_sdm630", pool=pool)
            m2 = RegisterMapMeter(spec(port, unit_id=2, timeout_s=0.4), "eastron_sdm630", pool=pool)
            assert m1.client is m2.client and len(pool) == 1
            assert m1.client.timeout_s == 0.4  # the bus takes the largest timeout asked for
            r1, r2 = await asyncio.gather(m1.read(now_s=0.0), m2.read(now_s=0.0))
            await m1.close()
            assert len(pool) == 1
            await m2.read(now_s=1.0)
            await m2.close()
            assert len(pool) == 0
        assert r1.current_a == pytest.approx((1.0, 2.0, 3.0))
        assert r2.current_a == pytest.approx((4.0, 5.0, 6.0))

    run(main)


def test_rtu_over_tcp_bus_one_transaction_at_a_time_with_gap() -> None:
    async def main() -> None:
        devs = [sdm630(1, current_a=(1.0, 2.0, 3.0)), sdm630(7, current_a=(7.0, 8.0, 9.0))]
        stamps: list[float] = []

        def stamp(_fc: int, _address: int, _count: int) -> None:
            stamps.append(time.monotonic())

        for d in devs:
            d.refuse = stamp
        pool = BusPool()
        async with modbus_server(devs, framer=FramerType.RTU) as port:
            meters = [
                RegisterMapMeter(
                    spec(port, unit_id=u, rtu_over_tcp=True, inter_frame_gap_s=0.05),
                    "eastron_sdm630",
                    pool=pool,
                )
                for u in (1, 7)
            ]
            readings = await asyncio.gather(*(m.read(now_s=0.0) for m in meters))
            for m in meters:
                await m.close()
        assert readings[0].current_a == pytest.approx((1.0, 2.0, 3.0))
        assert readings[1].current_a == pytest.approx((7.0, 8.0, 9.0))
        assert len(stamps) == 6
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert min(gaps) >= 0.045, gaps

    run(main)


def test_pool_rejects_one_port_with_two_line_settings() -> None:
    pool = BusPool()
    pool.get(SerialTransport(port="/dev/ttyUSB0", baudrate=9600))
    with pytest.raises(ConfigError, match="disagree on line settings"):
        pool.get(SerialTransport(port="/dev/ttyUSB0", baudrate=19200, parity="E"))
    pool.get(TcpTransport(host="gw", port=502, rtu_over_tcp=True))
    with pytest.raises(ConfigError, match="framing"):
        pool.get(TcpTransport(host="GW", port=502))
    assert len(pool) == 2
