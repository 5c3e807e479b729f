"""Test support: the hil simulators served for the drivers, over loopback TCP and pty RTU lines.

The simulators come from hil/devices (written from the reference on their own); this module
only starts and stops them and builds the ``DeviceSpec`` a site config would give the driver.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from controller.core.site import DeviceSpec, SerialTransport, TcpTransport
from hil.devices.modbus import RegisterDevice, TcpServer, quiet_pymodbus
from hil.devices.rtu import LineSettings, RtuLine

LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")

LINE_9600_8N1 = LineSettings(baudrate=9600, parity="N", stopbits=1)
LINE_19200_8E1 = LineSettings(baudrate=19200, parity="E", stopbits=1)


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


@asynccontextmanager
async def tcp(devices: Sequence[RegisterDevice]) -> AsyncIterator[TcpServer]:
    """The devices behind one loopback Modbus TCP server (one port, several unit ids)."""
    quiet_pymodbus()
    server = TcpServer(devices)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def rtu(
    devices: Sequence[RegisterDevice], line: LineSettings, *, turnaround_s: float = 0.0
) -> AsyncIterator[RtuLine]:
    """The devices on one simulated RS-485 line (a pty)."""
    async with RtuLine(devices, line=line, turnaround_s=turnaround_s) as bus:
        yield bus


def tcp_spec(
    server: TcpServer,
    driver: str,
    *,
    unit_id: int,
    timeout_s: float = 0.3,
    **options: object,
) -> DeviceSpec:
    return DeviceSpec(
        id=f"{driver}-{unit_id}",
        driver=driver,
        transport=TcpTransport(host="127.0.0.1", port=server.port),
        unit_id=unit_id,
        timeout_s=timeout_s,
        options=options,
    )


def rtu_spec(
    bus: RtuLine,
    driver: str,
    *,
    unit_id: int,
    line: LineSettings,
    timeout_s: float = 0.3,
    **options: object,
) -> DeviceSpec:
    return DeviceSpec(
        id=f"{driver}-{unit_id}",
        driver=driver,
        transport=SerialTransport(
            port=bus.port,
            baudrate=line.baudrate,
            parity=line.parity,
            stopbits=line.stopbits,
            bytesize=line.bytesize,
        ),
        unit_id=unit_id,
        timeout_s=timeout_s,
        options=options,
    )
