"""hil's RS-485 line on a pty, at the frame level: CRC, framing, pacing, line settings, faults.

The master here is plain pyserial (no pymodbus), writing frames byte for byte, so the line's
own behaviour is what is tested.
"""

from __future__ import annotations

import asyncio
import sys
import termios
import time
from collections.abc import Awaitable, Callable

import pytest
import serial

from hil.devices.modbus import Fault, RegisterDevice
from hil.devices.rtu import (
    LineSettings,
    RtuLine,
    crc16_modbus,
    crc_ok,
    rtu_frame,
    settings_from_termios,
    split_frames,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")

LINE = LineSettings(baudrate=19200, parity="E")


def test_crc_known_vectors() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # the CRC-16/MODBUS check value
    assert rtu_frame(1, bytes.fromhex("0300000001")) == bytes.fromhex("010300000001840a")
    assert crc_ok(bytes.fromhex("010300000001840a"))
    assert not crc_ok(bytes.fromhex("010300000001840b"))


def test_split_frames_by_function_code() -> None:
    read = rtu_frame(1, bytes.fromhex("0400050001"))
    write = rtu_frame(2, bytes.fromhex("1001050001020064"))
    assert split_frames(read + write) == [read, write]
    assert split_frames(read + b"\x07") == [read, b"\x07"]
    assert split_frames(b"\x01\x2b\x00") == [b"\x01\x2b\x00"]


def test_line_timing() -> None:
    assert LineSettings(baudrate=9600).char_time_s == pytest.approx(10 / 9600)
    assert LINE.char_time_s == pytest.approx(11 / 19200)
    assert LINE.silent_interval_s == pytest.approx(3.5 * 11 / 19200)
    assert LineSettings(baudrate=38400).silent_interval_s == 0.00175


def device(unit_id: int, writes: list[tuple[int, int, list[int]]] | None = None) -> RegisterDevice:
    regs = {a: (unit_id << 8) | (a & 0xFF) for a in range(0, 200)}

    def write(fc: int, address: int, values: list[int]) -> int | None:
        if writes is not None:
            writes.append((fc, address, values))
        return None

    return RegisterDevice(
        name=f"d{unit_id}",
        unit_id=unit_id,
        render=lambda _fc: regs,
        write=write,
        holding=(range(0, 200),),
        inputs=(range(0, 200),),
    )


Body = Callable[[RtuLine, serial.Serial], Awaitable[None]]


def with_line(devices: list[RegisterDevice], master: LineSettings, body: Body) -> None:
    async def main() -> None:
        async with RtuLine(devices, line=LINE) as line:
            port = serial.Serial(
                line.port,
                baudrate=master.baudrate,
                parity=master.parity,
                stopbits=master.stopbits,
                timeout=0.3,
            )
            try:
                await body(line, port)
            finally:
                port.close()

    asyncio.run(main())


async def transact(port: serial.Serial, frame: bytes, expect: int) -> bytes:
    port.reset_input_buffer()
    port.write(frame)
    return bytes(await asyncio.to_thread(port.read, expect))


def test_reads_with_pacing_at_the_wire_rate() -> None:
    async def body(line: RtuLine, port: serial.Serial) -> None:
        request = rtu_frame(1, bytes([4, 0, 0, 0, 125]))
        t0 = time.monotonic()
        reply = await transact(port, request, 5 + 250)
        elapsed = time.monotonic() - t0
        assert crc_ok(reply) and reply[:3] == bytes([1, 4, 250])
        assert reply[3:5] == bytes([1, 0]) and reply[5:7] == bytes([1, 1])
        wire_s = (8 + 255) * LINE.char_time_s + LINE.silent_interval_s
        assert wire_s <= elapsed <= wire_s + 0.05

    with_line([device(1)], LINE, body)


def test_multidrop_unknown_unit_and_broadcast() -> None:
    writes: list[tuple[int, int, list[int]]] = []

    async def body(line: RtuLine, port: serial.Serial) -> None:
        one = await transact(port, rtu_frame(1, bytes([3, 0, 10, 0, 1])), 7)
        two = await transact(port, rtu_frame(2, bytes([3, 0, 10, 0, 1])), 7)
        assert one[3:5] == bytes([1, 10]) and two[3:5] == bytes([2, 10])
        assert await transact(port, rtu_frame(9, bytes([3, 0, 10, 0, 1])), 7) == b""
        assert await transact(port, rtu_frame(0, bytes([6, 0, 20, 0, 42])), 8) == b""
        assert line.counters.no_device == 1

    with_line([device(1, writes), device(2, writes)], LINE, body)
    assert writes == [(6, 20, [42]), (6, 20, [42])]


def test_exception_replies() -> None:
    async def body(line: RtuLine, port: serial.Serial) -> None:
        outside = await transact(port, rtu_frame(1, bytes([3, 0, 250, 0, 2])), 5)
        assert crc_ok(outside) and outside[1:3] == bytes([0x83, 2])
        unknown_fc = await transact(port, rtu_frame(1, bytes([0x2B, 0x0E, 1, 0])), 5)
        assert crc_ok(unknown_fc) and unknown_fc[1:3] == bytes([0xAB, 1])
        line.device(1).inject(Fault.EXCEPTION, count=1, exception_code=6)
        busy = await transact(port, rtu_frame(1, bytes([3, 0, 0, 0, 1])), 5)
        assert busy[1:3] == bytes([0x83, 6])

    with_line([device(1)], LINE, body)


def test_corrupt_garbage_silent_and_slow() -> None:
    async def body(line: RtuLine, port: serial.Serial) -> None:
        request = rtu_frame(1, bytes([4, 0, 0, 0, 1]))
        d = line.device(1)
        d.inject(Fault.CORRUPT, count=1)
        bad = await transact(port, request, 7)
        assert len(bad) == 7 and not crc_ok(bad) and bad[:5] == bytes([1, 4, 2, 1, 0])
        d.inject(Fault.GARBAGE, count=1)
        garbage = await transact(port, request, 7)
        assert len(garbage) == 7 and garbage != rtu_frame(1, bytes([4, 2, 1, 0]))
        d.inject(Fault.SILENT, count=1)
        assert await transact(port, request, 7) == b""
        d.inject(Fault.SLOW, count=1, delay_s=0.1)
        t0 = time.monotonic()
        slow = await transact(port, request, 7)
        assert crc_ok(slow) and time.monotonic() - t0 >= 0.1
        good = await transact(port, request, 7)
        assert crc_ok(good)
        assert d.requests == 5

    with_line([device(1)], LINE, body)


def test_a_bad_crc_from_the_master_gets_no_answer() -> None:
    async def body(line: RtuLine, port: serial.Serial) -> None:
        frame = bytearray(rtu_frame(1, bytes([4, 0, 0, 0, 1])))
        frame[-1] ^= 0x55
        assert await transact(port, bytes(frame), 7) == b""
        assert line.counters.bad_crc == 1 and line.device(1).requests == 0

    with_line([device(1)], LINE, body)


@pytest.mark.parametrize(
    "master",
    [
        LineSettings(baudrate=19200, parity="N"),
        LineSettings(baudrate=19200, parity="O"),
        LineSettings(baudrate=9600, parity="E"),
        LineSettings(baudrate=19200, parity="E", stopbits=2),
    ],
)
def test_the_line_reads_the_masters_settings_and_drops_a_mismatch(master: LineSettings) -> None:
    async def body(line: RtuLine, port: serial.Serial) -> None:
        seen = line.master_settings()
        assert (seen.baudrate, seen.parity, seen.stopbits) == (
            master.baudrate,
            master.parity,
            master.stopbits,
        )
        assert await transact(port, rtu_frame(1, bytes([4, 0, 0, 0, 1])), 7) == b""
        assert line.counters.line_mismatch == 1

    with_line([device(1)], master, body)


def test_the_pty_itself_forgets_even_parity() -> None:
    """Why the line wraps tcsetattr: Linux ptys clear PARENB (odd parity and the rest stay)."""

    async def body(line: RtuLine, port: serial.Serial) -> None:
        raw = termios.tcgetattr(port.fileno())
        from_pty = settings_from_termios(raw, parity_known=False)
        assert from_pty.baudrate == 19200 and from_pty.parity is None
        assert line.master_settings().parity == "E"  # what the master asked for
        reply = await transact(port, rtu_frame(1, bytes([4, 0, 0, 0, 1])), 7)
        assert crc_ok(reply)

    with_line([device(1)], LINE, body)


def test_a_sleeping_device_does_not_answer() -> None:
    asleep = [True]
    d = RegisterDevice(
        name="sleepy",
        unit_id=1,
        render=lambda _fc: {0: 7},
        inputs=(range(0, 1),),
        asleep=lambda: asleep[0],
    )

    async def body(line: RtuLine, port: serial.Serial) -> None:
        request = rtu_frame(1, bytes([4, 0, 0, 0, 1]))
        assert await transact(port, request, 7) == b""
        asleep[0] = False
        assert (await transact(port, request, 7))[3:5] == bytes([0, 7])

    with_line([d], LINE, body)
