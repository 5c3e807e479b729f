"""hil's meter and EVSE models over loopback TCP with a raw pymodbus client.

Values are decoded here with struct straight from reference/modbus.md, not with hil's encoders
nor the drivers' maps, so an encoding slip in a simulator cannot hide behind its own decoder.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Awaitable, Callable, Sequence

import pytest
from pymodbus.client import AsyncModbusTcpClient

from hil.devices.bender import BenderController
from hil.devices.chargepoint import ChargePoint, Ev
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.meters import MeterModel, MeterReading, SimulatedMeter
from hil.devices.modbus import RegisterDevice, TcpServer, quiet_pymodbus
from hil.devices.phoenix import PhoenixCharx, PhoenixEvEth
from hil.devices.schneider import SchneiderEvlink
from hil.devices.vestel import VestelWallbox

READING = MeterReading(
    voltage_v=(230.1, 231.2, 229.3),
    current_a=(10.5, 11.25, 0.75),
    power_w=(2400.0, 2500.0, 150.0),
    import_kwh=1234.5,
    export_kwh=6.7,
)


def words_be(regs: Sequence[int]) -> bytes:
    return b"".join(struct.pack(">H", r) for r in regs)


def words_le(regs: Sequence[int]) -> bytes:
    """Registers with the LOW word first, turned into big-endian bytes."""
    return words_be(list(reversed(regs)))


Body = Callable[[AsyncModbusTcpClient, int], Awaitable[None]]


def serve(device: RegisterDevice, body: Body) -> None:
    async def main() -> None:
        quiet_pymodbus()
        server = TcpServer([device])
        port = await server.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        try:
            await client.connect()
            await body(client, device.unit_id)
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


# --- meters ---------------------------------------------------------------------------------------


def test_em24_int32_low_word_first() -> None:
    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        r = await c.read_input_registers(0x00, count=0x2A, device_id=uid)
        regs = r.registers
        i32 = [struct.unpack(">i", words_le(regs[a : a + 2]))[0] for a in range(0, 0x2A, 2)]
        assert i32[0x00 // 2] == 2301  # V x 10
        assert i32[0x0C // 2 : 0x12 // 2] == [10500, 11250, 750]  # A x 1000
        assert i32[0x12 // 2 : 0x18 // 2] == [24000, 25000, 1500]  # W x 10
        assert i32[0x28 // 2] == 50500  # system W x 10
        e = await c.read_input_registers(0x42, count=2, device_id=uid)
        assert struct.unpack(">i", words_le(e.registers))[0] == 12345  # kWh x 10

    serve(SimulatedMeter(MeterModel.EM24, lambda: READING).device, body)


def test_em340_energy_registers() -> None:
    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        e = await c.read_input_registers(0x34, count=2, device_id=uid)
        assert struct.unpack(">i", words_le(e.registers))[0] == 12345
        x = await c.read_input_registers(0x4E, count=2, device_id=uid)
        assert struct.unpack(">i", words_le(x.registers))[0] == 67
        bad = await c.read_input_registers(0x60, count=2, device_id=uid)
        assert bad.isError() and bad.exception_code == 2

    serve(SimulatedMeter(MeterModel.EM340, lambda: READING).device, body)


def test_janitza_float32_holding() -> None:
    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        r = await c.read_holding_registers(19012, count=6, device_id=uid)
        currents = struct.unpack(">fff", words_be(r.registers))
        assert currents == pytest.approx(READING.current_a)
        e = await c.read_holding_registers(19068, count=2, device_id=uid)
        assert struct.unpack(">f", words_be(e.registers))[0] == pytest.approx(1234500.0)

    serve(SimulatedMeter(MeterModel.JANITZA_UMG604, lambda: READING).device, body)


def test_abb_b23_scales_and_no_value() -> None:
    meter = SimulatedMeter(MeterModel.ABB_B23, lambda: READING)

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        r = await c.read_holding_registers(0x5B0C, count=6, device_id=uid)
        assert struct.unpack(">III", words_be(r.registers)) == (1050, 1125, 75)
        p = await c.read_holding_registers(0x5B14, count=2, device_id=uid)
        assert struct.unpack(">i", words_be(p.registers))[0] == 505000
        e = await c.read_holding_registers(0x5000, count=4, device_id=uid)
        assert struct.unpack(">Q", words_be(e.registers))[0] == 123450
        meter.no_value = True
        r = await c.read_holding_registers(0x5B0C, count=2, device_id=uid)
        assert r.registers == [0xFFFF, 0xFFFF]
        p = await c.read_holding_registers(0x5B14, count=2, device_id=uid)
        assert p.registers == [0x7FFF, 0xFFFF]

    serve(meter.device, body)


@pytest.mark.parametrize("model", [MeterModel.SUNSPEC_203, MeterModel.SUNSPEC_213])
def test_sunspec_chain(model: MeterModel) -> None:
    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        head = await c.read_holding_registers(40000, count=4, device_id=uid)
        assert words_be(head.registers[:2]) == b"SunS"
        assert head.registers[2:] == [1, 66]
        address = 40000 + 4 + 66
        m = await c.read_holding_registers(address, count=2, device_id=uid)
        model_id, length = m.registers
        assert model_id == (203 if model is MeterModel.SUNSPEC_203 else 213)
        end = await c.read_holding_registers(address + 2 + length, count=2, device_id=uid)
        assert end.registers == [0xFFFF, 0]
        body_regs = (await c.read_holding_registers(address, count=70, device_id=uid)).registers
        if model is MeterModel.SUNSPEC_203:
            sf = struct.unpack(">h", words_be(body_regs[6:7]))[0]
            amps = [struct.unpack(">h", words_be([w]))[0] * 10.0**sf for w in body_regs[3:6]]
            assert amps == pytest.approx(READING.current_a)
            e_sf = struct.unpack(">h", words_be(body_regs[54:55]))[0]
            wh = struct.unpack(">I", words_be(body_regs[46:48]))[0] * 10.0**e_sf
            assert wh == pytest.approx(1234500)
            assert body_regs[7] == 0x8000  # not implemented
        else:
            currents = struct.unpack(">fff", words_be(body_regs[4:10]))
            assert currents == pytest.approx(READING.current_a)
            wh = struct.unpack(">f", words_be(body_regs[68:70]))[0]
            assert wh == pytest.approx(1234500)
            assert math.isnan(struct.unpack(">f", words_be(body_regs[18:20]))[0])
        nothing = await c.read_holding_registers(0, count=2, device_id=uid)
        assert nothing.isError() and nothing.exception_code == 2

    serve(SimulatedMeter(model, lambda: READING).device, body)


# --- EVSEs ----------------------------------------------------------------------------------------


def test_heidelberg_registers() -> None:
    box = HeidelbergBox(ChargePoint(max_current_a=16.0, ev=Ev(max_current_a=16.0)))

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        r = await c.read_input_registers(4, count=15, device_id=uid)
        regs = r.registers
        assert regs[5 - 4] == 4  # B1: EV present, nothing offered (no setpoint yet)
        assert (await c.read_holding_registers(257, count=1, device_id=uid)).registers == [15000]
        assert not (await c.write_register(261, 100, device_id=uid)).isError()  # 10.0 A, FC06
        refused = await c.write_registers(261, [50], device_id=uid)  # 5.0 A
        assert refused.isError() and refused.exception_code == 3
        regs = (await c.read_input_registers(4, count=15, device_id=uid)).registers
        assert regs[5 - 4] == 7  # C2
        assert regs[6 - 4 : 9 - 4] == [100, 100, 100]  # 0.1 A
        assert regs[14 - 4] == 6900  # W
        assert (await c.write_register(262, 60, device_id=uid)).isError() is False
        assert box.cp.failsafe_current_a == 6.0
        assert (await c.write_register(257, 2000, device_id=uid)).isError() is False
        assert box.cp.watchdog_timeout_s == 2.0
        assert (await c.write_register(258, 4, device_id=uid)).isError() is False
        assert box.standby == 4

    serve(box.device, body)


def test_bender_registers() -> None:
    ctl = BenderController(ChargePoint(ev=Ev(max_current_a=16.0)))

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        assert uid == 255
        assert not (await c.write_register(1000, 16, device_id=uid)).isError()
        state = (await c.read_holding_registers(122, count=1, device_id=uid)).registers
        assert state == [3]
        r = await c.read_holding_registers(212, count=16, device_id=uid)
        values = struct.unpack(">8I", words_be(r.registers))
        assert values[:3] == (16000, 16000, 16000)  # mA
        assert values[4] == 3 * 16 * 230  # W at 220
        assert values[5:] == (230, 230, 230)
        bad = await c.write_register(1000, 3, device_id=uid)
        assert bad.isError() and bad.exception_code == 3

    serve(ctl.device, body)


def test_phoenix_ev_eth_registers_and_coil() -> None:
    ctl = PhoenixEvEth(ChargePoint(ev=Ev(max_current_a=16.0)))

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        assert not (await c.write_register(528, 12, device_id=uid)).isError()
        r = await c.read_input_registers(100, count=20, device_id=uid)
        assert r.registers[0] == ord("C")  # the letter in the low byte
        amps = [struct.unpack(">i", words_le(r.registers[a : a + 2]))[0] for a in (14, 16, 18)]
        assert amps == [12, 12, 12]
        coil = await c.read_coils(400, count=1, device_id=uid)
        assert coil.bits[0] is True
        assert not (await c.write_coil(400, False, device_id=uid)).isError()
        assert ctl.cp.enabled is False
        r = await c.read_input_registers(100, count=1, device_id=uid)
        assert r.registers[0] == ord("B")

    serve(ctl.device, body)


def test_phoenix_charx_blocks() -> None:
    ctl = PhoenixCharx([ChargePoint(), ChargePoint(ev=Ev(max_current_a=16.0))])

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        assert uid == 1
        assert (await c.read_holding_registers(114, count=1, device_id=uid)).registers == [2]
        single = await c.write_register(2301, 16, device_id=uid)
        assert single.isError() and single.exception_code == 1  # FC16 only
        assert not (await c.write_registers(2301, [16], device_id=uid)).isError()
        r = await c.read_holding_registers(2238, count=6, device_id=uid)
        assert struct.unpack(">3i", words_be(r.registers)) == (16000, 16000, 16000)
        state = await c.read_holding_registers(2299, count=1, device_id=uid)
        assert state.registers == [ord("C") << 8]  # the letter in the high byte
        first = await c.read_holding_registers(1299, count=1, device_id=uid)
        assert first.registers == [ord("A") << 8]

    serve(ctl.device, body)


def test_vestel_registers_are_not_contiguous() -> None:
    box = VestelWallbox(ChargePoint(ev=Ev(max_current_a=16.0)))

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        assert not (await c.write_register(5004, 10, device_id=uid)).isError()
        assert [
            (await c.read_input_registers(a, count=1, device_id=uid)).registers[0]
            for a in (1001, 1004, 1008, 1010, 1012)
        ] == [1, 3, 10000, 10000, 10000]
        across = await c.read_input_registers(1008, count=3, device_id=uid)
        assert across.isError() and across.exception_code == 2
        assert (await c.read_holding_registers(6000, count=1, device_id=uid)).registers == [0]
        assert not (await c.write_register(6000, 1, device_id=uid)).isError()
        assert (await c.read_holding_registers(6000, count=1, device_id=uid)).registers == [1]
        assert (await c.read_holding_registers(2002, count=1, device_id=uid)).registers == [20]

    serve(box.device, body)


def test_schneider_registers() -> None:
    station = SchneiderEvlink(ChargePoint(ev=Ev(max_current_a=32.0), energy_wh=5000.0))

    async def body(c: AsyncModbusTcpClient, uid: int) -> None:
        assert not (await c.write_register(4004, 20, device_id=uid)).isError()
        assert (await c.read_holding_registers(1, count=1, device_id=uid)).registers == [8]
        r = await c.read_holding_registers(2999, count=6, device_id=uid)
        amps = [struct.unpack(">f", words_le(r.registers[a : a + 2]))[0] for a in (0, 2, 4)]
        assert amps == pytest.approx([20.0, 20.0, 20.0])
        e = await c.read_holding_registers(3203, count=4, device_id=uid)
        assert struct.unpack(">Q", words_le(e.registers))[0] == pytest.approx(5000, abs=1)
        assert not (await c.write_register(4000, 1, device_id=uid)).isError()
        assert (await c.read_holding_registers(4000, count=1, device_id=uid)).registers == [1]
        assert station.life_bit_writes == 1

    serve(station.device, body)
