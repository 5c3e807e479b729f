"""Drivers on a serial line: RTU framing over a pair of pseudo-terminals joined like a null modem.

A pymodbus ``ModbusSerialServer`` holds one end with two devices (an RS-485 line); the drivers
open the other end through ``SerialTransport``, so the serial client path (pyserial, RTU frames,
one transaction at a time for every unit id on the line) runs for real. Line settings are 8N1:
Linux ptys refuse some termios settings (parity) that a real adapter takes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tty
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymodbus.server import ModbusSerialServer

from controller.core.errors import EvsiteError
from controller.core.site import DeviceSpec, SerialTransport
from drivers.modbus.bus import BusPool
from drivers.modbus.client import silent_interval_s
from drivers.modbus.meter import RegisterMapMeter
from tests.drivers.modbus_loopback import FakeDevice, f32, sim_device

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


@asynccontextmanager
async def null_modem() -> AsyncIterator[tuple[str, str]]:
    """Two pty slave paths; bytes written to one come out of the other."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (m1, m2, s1, s2):
        tty.setraw(fd)
    loop = asyncio.get_running_loop()

    def relay(src: int, dst: int) -> Callable[[], None]:
        def move() -> None:
            try:
                data = os.read(src, 4096)
            except OSError:
                return
            os.write(dst, data)

        return move

    loop.add_reader(m1, relay(m1, m2))
    loop.add_reader(m2, relay(m2, m1))
    try:
        yield os.ttyname(s1), os.ttyname(s2)
    finally:
        loop.remove_reader(m1)
        loop.remove_reader(m2)
        for fd in (m1, m2, s1, s2):
            os.close(fd)


def meter_device(unit_id: int, current_a: float) -> FakeDevice:
    dev = FakeDevice(unit_id=unit_id)
    dev.define("input", 0x00, 0x11)
    dev.define("input", 0x34, 0x35)
    dev.define("input", 0x48, 0x49)
    for i in range(3):
        dev.set("input", 0x06 + 2 * i, f32(current_a + i))
    return dev


def test_two_meters_share_one_serial_line() -> None:
    async def main() -> None:
        devs = [meter_device(1, 10.0), meter_device(2, 20.0)]
        stamps: list[float] = []

        def stamp(_fc: int, _address: int, _count: int) -> None:
            stamps.append(time.monotonic())

        for d in devs:
            d.refuse = stamp
        async with null_modem() as (device_end, controller_end):
            server = ModbusSerialServer(
                [sim_device(d) for d in devs], port=device_end, baudrate=19200
            )
            await server.serve_forever(background=True)
            line = SerialTransport(port=controller_end, baudrate=19200)
            pool = BusPool()
            meters = [
                RegisterMapMeter(
                    DeviceSpec(
                        id=f"m{u}",
                        driver="eastron_sdm630",
                        transport=line,
                        unit_id=u,
                        timeout_s=0.5,
                    ),
                    "eastron_sdm630",
                    pool=pool,
                )
                for u in (1, 2)
            ]
            try:
                assert meters[0].client is meters[1].client
                assert meters[0].client.inter_frame_gap_s == pytest.approx(silent_interval_s(line))
                readings = await asyncio.gather(*(m.read(now_s=0.0) for m in meters))
                # Unit 9 is not on the line. The simulator answers "device failure" where a real
                # line stays silent; either way there is no reading, and the bus carries on.
                absent = RegisterMapMeter(
                    DeviceSpec(
                        id="m9", driver="eastron_sdm630", transport=line, unit_id=9, timeout_s=0.2
                    ),
                    "eastron_sdm630",
                    pool=pool,
                )
                with pytest.raises(EvsiteError):
                    await absent.read(now_s=0.0)
                await absent.close()
                again = await meters[0].read(now_s=1.0)
            finally:
                for m in meters:
                    await m.close()
                await server.shutdown()  # type: ignore[no-untyped-call]
        assert readings[0].current_a == pytest.approx((10.0, 11.0, 12.0))
        assert readings[1].current_a == pytest.approx((20.0, 21.0, 22.0))
        assert again.current_a == pytest.approx((10.0, 11.0, 12.0))
        assert len(pool) == 0
        assert len(stamps) >= 6

    run(main)
