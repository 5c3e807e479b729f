"""The bus layer against injected faults, on Modbus TCP (loopback) and RTU (a pty RS-485 line).

Each fault must turn into the right core error within the device's own budget, and cost nothing
afterwards: the next request, the fault gone, reads normally. On a serial line a wrong baud rate,
parity or stop bits must fail the same way (no answer), never hang. And one silent device on a
bus of eight costs the others nothing beyond its own timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from controller.core.errors import DeviceError, DeviceUnavailable
from controller.core.model import EvseReading, EvseState
from drivers.modbus.bus import BusPool
from drivers.modbus.client import ModbusBusy, ModbusNoAnswer, ModbusRefused
from drivers.modbus.evse import RegisterMapEvse
from drivers.registry import build_evse
from hil.devices.chargepoint import ChargePoint, Ev
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.modbus import Fault, TcpServer
from hil.devices.rtu import LineSettings, RtuLine
from tests.drivers.sims import LINE_19200_8E1, LINUX_ONLY, rtu, rtu_spec, run, tcp, tcp_spec

TIMEOUT_S = 0.2
SLACK_S = 0.15  # a busy CI host


@asynccontextmanager
async def one_box(transport: str) -> AsyncIterator[tuple[HeidelbergBox, RegisterMapEvse, object]]:
    """A Heidelberg box and its driver, over TCP (a converting gateway) or on an RTU line."""
    box = HeidelbergBox(ChargePoint(max_current_a=16.0, ev=Ev(max_current_a=16.0)))
    pool = BusPool(reconnect_delay_s=0.05, reconnect_delay_max_s=0.2)
    if transport == "tcp":
        async with tcp([box.device]) as server:
            spec = tcp_spec(server, "heidelberg_ec", unit_id=1, timeout_s=TIMEOUT_S)
            driver = build_evse(spec, pool=pool)
            assert isinstance(driver, RegisterMapEvse)
            yield box, driver, server
            await pool.close_all()
    else:
        async with rtu([box.device], LINE_19200_8E1) as bus:
            spec = rtu_spec(
                bus, "heidelberg_ec", unit_id=1, line=LINE_19200_8E1, timeout_s=TIMEOUT_S
            )
            driver = build_evse(spec, pool=pool)
            assert isinstance(driver, RegisterMapEvse)
            yield box, driver, bus
            await pool.close_all()


TRANSPORTS = ["tcp", pytest.param("rtu", marks=LINUX_ONLY)]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.SILENT, ModbusNoAnswer),
        (Fault.CORRUPT, ModbusNoAnswer),
        (Fault.GARBAGE, DeviceUnavailable),
        (Fault.SLOW, ModbusNoAnswer),
    ],
)
def test_no_usable_answer_costs_one_timeout_then_reads_again(
    transport: str, fault: Fault, expected: type[Exception]
) -> None:
    async def main() -> None:
        async with one_box(transport) as (box, ec, _):
            await ec.read(now_s=0.0)
            box.device.inject(fault, count=1, delay_s=TIMEOUT_S * 2.5)
            t0 = time.monotonic()
            with pytest.raises(expected):
                await ec.read(now_s=1.0)
            elapsed = time.monotonic() - t0
            if fault is Fault.SLOW:
                await asyncio.sleep(TIMEOUT_S * 2)  # let the late reply pass
            again = await ec.read(now_s=2.0)
            counters = ec.client.counters
        assert elapsed <= TIMEOUT_S * 1.5 + SLACK_S
        assert again.state is EvseState.B
        assert counters.transactions == 3 and counters.failures == 1
        assert box.device.requests == 3

    run(main)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_slow_reply_within_the_timeout_is_fine(transport: str) -> None:
    async def main() -> None:
        async with one_box(transport) as (box, ec, _):
            box.device.inject(Fault.SLOW, delay_s=TIMEOUT_S / 3)
            reading = await ec.read(now_s=0.0)
        assert reading.state is EvseState.B

    run(main)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("code", "expected"),
    [(2, ModbusRefused), (3, ModbusRefused), (4, ModbusRefused), (6, ModbusBusy), (11, ModbusBusy)],
)
def test_exception_codes(transport: str, code: int, expected: type[Exception]) -> None:
    async def main() -> None:
        async with one_box(transport) as (box, ec, _):
            box.device.inject(Fault.EXCEPTION, count=1, exception_code=code)
            with pytest.raises(expected) as info:
                await ec.read(now_s=0.0)
            again = await ec.read(now_s=1.0)
        error = info.value
        assert isinstance(error, ModbusRefused | ModbusBusy)
        assert error.exception_code == code and error.function_code == 4
        # "busy" and gateway codes are worth a retry; the others are permanent
        assert isinstance(error, DeviceUnavailable) == (code in (6, 11))
        assert isinstance(error, DeviceError) == (code not in (6, 11))
        assert again.state is EvseState.B

    run(main)


def test_out_of_range_write_is_refused_by_the_device() -> None:
    async def main() -> None:
        async with one_box("tcp") as (_box, ec, _):
            with pytest.raises(ModbusRefused, match="exception 3"):
                await ec.write_limit(20.0)  # the box takes 6..16 A

    run(main)


def test_tcp_device_drops_off_and_comes_back() -> None:
    async def main() -> None:
        async with one_box("tcp") as (_box, ec, server):
            assert isinstance(server, TcpServer)
            await ec.read(now_s=0.0)
            await server.drop_off()
            failures = 0
            for _ in range(3):
                t0 = time.monotonic()
                with pytest.raises(DeviceUnavailable):
                    await ec.read(now_s=1.0)
                assert time.monotonic() - t0 <= TIMEOUT_S * 1.5 + SLACK_S
                failures += 1
            await server.come_back()
            deadline = time.monotonic() + 2.0
            while True:  # reconnects after its back-off (here 0.05 .. 0.2 s)
                try:
                    reading = await ec.read(now_s=2.0)
                    break
                except DeviceUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        assert failures == 3 and reading.state is EvseState.B

    run(main)


@LINUX_ONLY
def test_rtu_device_drops_off_and_comes_back() -> None:
    async def main() -> None:
        async with one_box("rtu") as (box, ec, _):
            await ec.read(now_s=0.0)
            box.device.inject(Fault.SILENT)  # unplugged from the bus
            for _ in range(2):
                with pytest.raises(ModbusNoAnswer):
                    await ec.read(now_s=1.0)
            box.device.clear_fault()
            reading = await ec.read(now_s=2.0)  # back at once: a serial line has no connection
        assert reading.state is EvseState.B

    run(main)


# --- line settings --------------------------------------------------------------------------------


@LINUX_ONLY
@pytest.mark.parametrize(
    "master",
    [
        LineSettings(baudrate=19200, parity="N"),  # parity mismatch (the common one)
        LineSettings(baudrate=19200, parity="O"),
        LineSettings(baudrate=9600, parity="E"),  # baud mismatch
        LineSettings(baudrate=19200, parity="E", stopbits=2),
    ],
    ids=["8N1", "8O1", "9600", "8E2"],
)
def test_wrong_line_settings_fail_within_the_timeout(master: LineSettings) -> None:
    async def main() -> None:
        box = HeidelbergBox()
        async with rtu([box.device], LINE_19200_8E1) as bus:
            spec = rtu_spec(bus, "heidelberg_ec", unit_id=1, line=master, timeout_s=TIMEOUT_S)
            ec = build_evse(spec, pool=BusPool())
            t0 = time.monotonic()
            with pytest.raises(DeviceUnavailable):
                await ec.read(now_s=0.0)
            elapsed = time.monotonic() - t0
            await ec.close()
            counters = bus.counters
        assert elapsed <= TIMEOUT_S * 1.5 + SLACK_S
        assert counters.line_mismatch == 1 and counters.replies == 0
        assert box.device.requests == 0  # the box never saw a frame it could take

    run(main)


@LINUX_ONLY
def test_one_device_at_other_settings_on_a_shared_line() -> None:
    """A box left at 9600 on a 19200 line is the only one that does not answer."""

    async def main() -> None:
        good = HeidelbergBox(unit_id=1, name="good")
        stray = HeidelbergBox(unit_id=2, name="stray")
        bus = RtuLine([good.device], line=LINE_19200_8E1)
        bus.attach(stray.device, LineSettings(baudrate=9600, parity="E"))
        async with bus:
            pool = BusPool()
            one, two = (
                build_evse(
                    rtu_spec(bus, "heidelberg_ec", unit_id=u, line=LINE_19200_8E1, timeout_s=0.15),
                    pool=pool,
                )
                for u in (1, 2)
            )
            ok = await one.read(now_s=0.0)
            with pytest.raises(ModbusNoAnswer):
                await two.read(now_s=0.0)
            await pool.close_all()
        assert ok.state is EvseState.A

    run(main)


# --- one silent device on a bus of eight ----------------------------------------------------------


@LINUX_ONLY
def test_one_silent_device_costs_only_its_own_timeout() -> None:
    ticks = 3
    silent_unit = 5

    async def main() -> None:
        boxes = [HeidelbergBox(unit_id=u, name=f"hd{u}") for u in range(1, 9)]
        async with rtu([b.device for b in boxes], LINE_19200_8E1) as bus:
            pool = BusPool()
            evses = [
                build_evse(
                    rtu_spec(
                        bus, "heidelberg_ec", unit_id=u, line=LINE_19200_8E1, timeout_s=TIMEOUT_S
                    ),
                    pool=pool,
                )
                for u in range(1, 9)
            ]
            client = pool.buses()[0]

            async def tick() -> tuple[float, list[object]]:
                t0 = time.monotonic()
                results = await asyncio.gather(
                    *(e.read(now_s=0.0) for e in evses), return_exceptions=True
                )
                return time.monotonic() - t0, list(results)

            await tick()  # connect
            base = [await tick() for _ in range(ticks)]
            before = {b.device.unit_id: b.device.requests for b in boxes}
            counted = client.counters
            boxes[silent_unit - 1].device.inject(Fault.SILENT)
            faulty = [await tick() for _ in range(ticks)]
            after = {b.device.unit_id: b.device.requests for b in boxes}
            counters = client.counters
            await pool.close_all()

        base_s = max(t for t, _ in base)
        for t, results in faulty:
            # the silent box's budget, and nothing else
            assert t <= base_s + TIMEOUT_S * 1.5 + SLACK_S
            assert t >= TIMEOUT_S * 0.9
            for unit, result in enumerate(results, start=1):
                if unit == silent_unit:
                    assert isinstance(result, ModbusNoAnswer)
                else:
                    assert not isinstance(result, BaseException), result
        # one request per device per tick: no retries, nobody else paid for the silent box
        assert all(after[u] - before[u] == ticks for u in after)
        assert counters.transactions - counted.transactions == 8 * ticks
        assert counters.timeouts - counted.timeouts == ticks
        assert counters.failures - counted.failures == ticks

    run(main)


@LINUX_ONLY
def test_a_late_reply_never_becomes_another_devices_reading() -> None:
    async def main() -> None:
        charging = HeidelbergBox(ChargePoint(max_current_a=16, ev=Ev()), unit_id=1, name="a")
        idle = HeidelbergBox(unit_id=2, name="b")
        async with rtu([charging.device, idle.device], LINE_19200_8E1) as bus:
            pool = BusPool()
            a, b = (
                build_evse(
                    rtu_spec(bus, "heidelberg_ec", unit_id=u, line=LINE_19200_8E1, timeout_s=0.15),
                    pool=pool,
                )
                for u in (1, 2)
            )
            await a.write_limit(10.0)
            seen: list[object] = []
            for delay_s in (0.2, 0.25, 0.3):
                charging.device.inject(Fault.SLOW, count=1, delay_s=delay_s)
                with pytest.raises(ModbusNoAnswer):
                    await a.read(now_s=0.0)
                for _ in range(2):
                    try:
                        seen.append(await b.read(now_s=0.0))
                    except ModbusNoAnswer as exc:  # the late reply held the line: one miss
                        seen.append(exc)
            await pool.close_all()
        readings = [r for r in seen if isinstance(r, EvseReading)]
        assert len(readings) >= 4
        assert all(r.state is EvseState.A and r.current_a == (0.0, 0.0, 0.0) for r in readings)

    run(main)
