"""hil devices over loopback TCP with a raw pymodbus client: the Alfen socket and the SDM630.

Values are decoded here with struct, not with hil's encoder, so an encoding bug cannot hide.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Sequence

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from hil.devices.alfen import AlfenSocketServer, AlfenStation, SocketMeasurement
from hil.devices.modbus import Fault
from hil.devices.sdm630 import MeterReading, Sdm630Server


def f32(regs: Sequence[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *regs))[0]
    return value


def f32_regs(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def f64(regs: Sequence[int]) -> float:
    value: float = struct.unpack(">d", struct.pack(">HHHH", *regs))[0]
    return value


def text(regs: Sequence[int]) -> str:
    return b"".join(struct.pack(">H", r) for r in regs).rstrip(b"\0").decode()


class FakeClock:
    def __init__(self) -> None:
        self.t_s = 0.0

    def __call__(self) -> float:
        return self.t_s


def with_alfen(
    body: Callable[[AsyncModbusTcpClient, AlfenStation, FakeClock], Awaitable[None]],
    *,
    validity_time_s: float = 60,
    measurement: SocketMeasurement | None = None,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        station = AlfenStation(max_current_a=32, safe_current_a=6, validity_time_s=validity_time_s)
        reading = measurement or SocketMeasurement()
        server = AlfenSocketServer(station, clock=clock, measurement=lambda: reading)
        port = await server.start("127.0.0.1", 0)
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        try:
            assert await client.connect()
            await body(client, station, clock)
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


def test_alfen_state_string_currents_power_energy() -> None:
    measurement = SocketMeasurement(
        voltage_v=(231, 229, 230),
        current_a=(16, 16, 0),
        power_w=7360,
        energy_delivered_wh=123456.5,
        mode3_state="C2",
    )

    async def body(client: AsyncModbusTcpClient, _s: AlfenStation, _c: FakeClock) -> None:
        rr = await client.read_holding_registers(1201, count=5, device_id=1)
        assert not rr.isError()
        assert text(rr.registers) == "C2"
        assert rr.registers == [0x4332, 0, 0, 0, 0]
        rr = await client.read_holding_registers(306, count=20, device_id=1)  # 306..325 in one go
        regs = rr.registers
        assert [f32(regs[i : i + 2]) for i in (0, 2, 4)] == [231, 229, 230]
        assert [f32(regs[i : i + 2]) for i in (14, 16, 18)] == [16, 16, 0]
        assert (
            f32((await client.read_holding_registers(344, count=2, device_id=1)).registers) == 7360
        )
        rr = await client.read_holding_registers(374, count=4, device_id=1)
        assert f64(rr.registers) == 123456.5
        rr = await client.read_holding_registers(1200, count=16, device_id=1)  # the whole block
        assert not rr.isError()
        rr = await client.read_holding_registers(2000, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == 2
        rr = await client.read_input_registers(320, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 2

    with_alfen(body, measurement=measurement)


def test_alfen_setpoint_needs_both_registers_in_one_fc16_and_shows_as_applied() -> None:
    async def body(client: AsyncModbusTcpClient, station: AlfenStation, clock: FakeClock) -> None:
        rr = await client.read_holding_registers(1206, count=10, device_id=1)
        assert f32(rr.registers[0:2]) == 6  # before any write: the safe current
        assert rr.registers[8] == 0  # 1214: setpoint not accounted for
        assert f32(rr.registers[6:8]) == 6  # 1212: safe current
        clock.t_s = 5.0
        wr = await client.write_registers(1210, f32_regs(16.0), device_id=1)
        assert not wr.isError()
        rr = await client.read_holding_registers(1206, count=10, device_id=1)
        assert f32(rr.registers[0:2]) == 16
        assert (rr.registers[2] << 16 | rr.registers[3]) == 60  # 1208: validity left, s
        assert f32(rr.registers[4:6]) == 16  # 1210 reads back
        assert rr.registers[8] == 1
        assert station.applied_limit_a(5.0) == 16

        single = await client.write_register(1210, f32_regs(10.0)[0], device_id=1)  # FC06
        assert single.isError()
        one = await client.write_registers(1210, [f32_regs(10.0)[0]], device_id=1)  # FC16, 1 reg
        assert one.isError()
        half = await client.write_registers(1211, f32_regs(10.0), device_id=1)  # misaligned
        assert half.isError()
        too_high = await client.write_registers(1210, f32_regs(32.5), device_id=1)
        assert too_high.isError() and too_high.exception_code == 3
        negative = await client.write_registers(1210, f32_regs(-1.0), device_id=1)
        assert negative.isError() and negative.exception_code == 3
        read_only = await client.write_registers(1212, f32_regs(10.0), device_id=1)
        assert read_only.isError()
        rr = await client.read_holding_registers(1206, count=2, device_id=1)
        assert f32(rr.registers) == 16  # none of the refused writes changed anything

    with_alfen(body)


def test_alfen_validity_expiry_falls_back_to_the_safe_current() -> None:
    async def body(client: AsyncModbusTcpClient, _s: AlfenStation, clock: FakeClock) -> None:
        assert not (await client.write_registers(1210, f32_regs(20.0), device_id=1)).isError()
        clock.t_s = 0.4
        rr = await client.read_holding_registers(1206, count=9, device_id=1)
        assert f32(rr.registers[0:2]) == 20
        assert rr.registers[3] == 1  # 0.6 s left, shown rounded up
        clock.t_s = 1.0
        rr = await client.read_holding_registers(1206, count=9, device_id=1)
        assert f32(rr.registers[0:2]) == 6
        assert rr.registers[2:4] == [0, 0]
        assert rr.registers[8] == 0
        assert f32(rr.registers[4:6]) == 20  # the last written value still reads back

    with_alfen(body, validity_time_s=1)


def test_alfen_validity_expiry_in_real_time() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        station = AlfenStation(max_current_a=32, safe_current_a=8, validity_time_s=0.5)
        server = AlfenSocketServer(station, clock=lambda: loop.time() - t0)
        port = await server.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        try:
            await client.connect()
            await client.write_registers(1210, f32_regs(13.0), device_id=1)
            rr = await client.read_holding_registers(1206, count=2, device_id=1)
            assert f32(rr.registers) == 13
            await asyncio.sleep(0.6)
            rr = await client.read_holding_registers(1206, count=2, device_id=1)
            assert f32(rr.registers) == 8
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


def test_alfen_phases_register() -> None:
    async def body(client: AsyncModbusTcpClient, station: AlfenStation, clock: FakeClock) -> None:
        assert (await client.read_holding_registers(1215, count=1, device_id=1)).registers == [3]
        assert not (await client.write_register(1215, 1, device_id=1)).isError()
        assert (await client.read_holding_registers(1215, count=1, device_id=1)).registers == [1]
        assert station.offer_at(clock.t_s).phases == 1
        assert not (await client.write_registers(1215, [3], device_id=1)).isError()
        bad = await client.write_register(1215, 2, device_id=1)
        assert bad.isError() and bad.exception_code == 3
        assert (await client.read_holding_registers(1215, count=1, device_id=1)).registers == [3]

    with_alfen(body)


def with_meter(body: Callable[[AsyncModbusTcpClient, Sdm630Server], Awaitable[None]]) -> None:
    reading = MeterReading(
        voltage_v=(230.5, 229.5, 231),
        current_a=(12.25, 3.5, 0.75),
        power_w=(2800, 800, 170),
        import_kwh=1234.5,
        export_kwh=0.25,
    )

    async def main() -> None:
        meter = Sdm630Server(lambda: reading)
        port = await meter.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        try:
            await client.connect()
            await body(client, meter)
        finally:
            client.close()
            await meter.stop()

    asyncio.run(main())


def test_sdm630_currents_are_float32_be_at_0x06() -> None:
    async def body(client: AsyncModbusTcpClient, _m: Sdm630Server) -> None:
        rr = await client.read_input_registers(0x06, count=6, device_id=1)
        assert not rr.isError()
        assert [f32(rr.registers[i : i + 2]) for i in (0, 2, 4)] == [12.25, 3.5, 0.75]
        assert rr.registers[0:2] == [0x4144, 0x0000]  # 12.25 = 0x41440000, high word first

    with_meter(body)


def test_sdm630_18_register_block_and_totals() -> None:
    async def body(client: AsyncModbusTcpClient, _m: Sdm630Server) -> None:
        rr = await client.read_input_registers(0, count=18, device_id=1)
        values = [f32(rr.registers[i : i + 2]) for i in range(0, 18, 2)]
        assert values == [230.5, 229.5, 231, 12.25, 3.5, 0.75, 2800, 800, 170]
        rr = await client.read_input_registers(0x34, count=2, device_id=1)
        assert f32(rr.registers) == 3770
        rr = await client.read_input_registers(0x48, count=4, device_id=1)
        assert [f32(rr.registers[0:2]), f32(rr.registers[2:4])] == [1234.5, 0.25]
        rr = await client.read_input_registers(0, count=0x4C, device_id=1)  # all of it at once
        assert not rr.isError() and len(rr.registers) == 0x4C

    with_meter(body)


def test_sdm630_undefined_addresses_answer_exception_2() -> None:
    async def body(client: AsyncModbusTcpClient, _m: Sdm630Server) -> None:
        for address, count in ((0x4C, 2), (0x4A, 4), (0x100, 2)):
            rr = await client.read_input_registers(address, count=count, device_id=1)
            assert rr.isError() and rr.exception_code == 2, hex(address)
        rr = await client.read_holding_registers(0x06, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 2

    with_meter(body)


def test_sdm630_fault_modes() -> None:
    async def body(client: AsyncModbusTcpClient, meter: Sdm630Server) -> None:
        meter.fault = Fault.EXCEPTION
        rr = await client.read_input_registers(0x06, count=2, device_id=1)
        assert rr.isError() and rr.exception_code == 4
        meter.fault = Fault.SILENT
        quick = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=0.2, retries=0)
        await quick.connect()
        try:
            with pytest.raises(ModbusIOException):
                await quick.read_input_registers(0x06, count=2, device_id=1)
        finally:
            quick.close()
        meter.fault = Fault.NONE
        rr = await client.read_input_registers(0x06, count=2, device_id=1)
        assert f32(rr.registers) == 12.25

    with_meter(body)
