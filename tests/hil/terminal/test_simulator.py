"""hil's simulated ZVT terminal on its own: raw bytes from plain pyserial or a TCP socket.

No driver code here: the frames are built with hil's wire module and checked byte by byte, so
the simulator is tested against the reference, not against the codec it will test.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import serial

from hil.terminal import Ledger, Script, SimulatedTerminal, Step, wire

LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def test_own_crc_reproduces_the_verified_vector() -> None:
    apdu = bytes.fromhex("06 01 07 04 00 00 00 00 01 90")
    assert wire.frame(apdu) == bytes.fromhex("10 02 06 01 07 04 00 00 00 00 01 90 10 03 76 57")
    assert wire.crc_kermit(b"123456789") == 0x2189
    reader = wire.FrameReader()
    assert reader.feed(wire.frame(apdu)) == [wire.Received("frame", apdu)]
    assert reader.feed(wire.frame(apdu, corrupt_crc=True)) == [wire.Received("bad")]
    assert reader.feed(b"\x06\x15") == [wire.Received("ack"), wire.Received("nak")]


def test_bmp_helpers() -> None:
    assert wire.bcd(2500, 6) == bytes.fromhex("00 00 00 00 25 00")
    assert wire.from_bcd(bytes.fromhex("02 31")) == 231
    assert wire.llvar(b"ab") == b"\xf0\xf2ab"
    assert wire.lllvar(b"a" * 123)[:3] == b"\xf1\xf2\xf3"
    assert wire.read_bmps(bytes.fromhex("19 40 87 02 31 49 09 78")) == {
        0x19: b"\x40",
        0x87: b"\x02\x31",
        0x49: b"\x09\x78",
    }
    assert wire.apdu(0x06, 0xD3, bytes(300))[:5] == bytes.fromhex("06 D3 FF 2C 01")


# --- over TCP: the application layer ------------------------------------------------------


class Ecr:
    """A bare-bones ECR on TCP: send an APDU, collect the terminal's APDUs, ack each."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.apdus = wire.ApduReader()

    async def exchange(self, raw: bytes) -> list[bytes]:
        """Send a command; return everything up to 06 0F / 06 1E / 84 xx, acking with 80 00 00."""
        self.writer.write(raw)
        out: list[bytes] = []
        while True:
            data = await asyncio.wait_for(self.reader.read(4096), 2.0)
            assert data, "the terminal closed the connection"
            for apdu in self.apdus.feed(data):
                out.append(apdu)
                if apdu[0] not in (0x80, 0x84):
                    self.writer.write(wire.apdu(0x80, 0x00))
                if apdu[:2] in (b"\x06\x0f", b"\x06\x1e") or apdu[0] == 0x84:
                    return out


@asynccontextmanager
async def tcp_terminal(
    script: Script | None = None, ledger: Ledger | None = None
) -> AsyncIterator[tuple[SimulatedTerminal, Ecr]]:
    sim = SimulatedTerminal(script=script or Script(answer_timeout_s=0.3), ledger=ledger)
    port = await sim.start_tcp()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield sim, Ecr(reader, writer)
    finally:
        writer.close()
        await sim.stop()


def pre_auth(amount_cents: int) -> bytes:
    return wire.apdu(0x06, 0x22, b"\x04" + wire.bcd(amount_cents, 6) + b"\x49\x09\x78")


def receipt_of(status: bytes) -> int:
    return wire.from_bcd(status[status.index(b"\x87") + 1 :][:2])


def test_pre_auth_capture_and_a_second_capture_refused() -> None:
    async def main() -> None:
        async with tcp_terminal() as (sim, ecr):
            replies = await ecr.exchange(pre_auth(2500))
            assert replies[0] == wire.apdu(0x80, 0x00)
            status = replies[1]
            assert status[:2] == b"\x04\x0f" and b"\x27\x00" in status
            receipt = receipt_of(status)
            assert replies[-1][:2] == b"\x06\x0f"
            capture = wire.apdu(
                0x06, 0x23, b"\x87" + wire.bcd(receipt, 2) + b"\x04" + wire.bcd(1000, 6)
            )
            replies = await ecr.exchange(capture)
            assert replies[-1][:2] == b"\x06\x0f"
            assert sim.ledger.pre_auths[receipt].captured_cents == 1500
            # the same capture again: 06 1E B8 with the (empty) list, nothing booked
            replies = await ecr.exchange(capture)
            assert replies[-1] == wire.apdu(0x06, 0x1E, bytes.fromhex("B8 87 FF FF"))
            assert len(sim.ledger.captures(receipt)) == 1
            # a full release of it: already reversed
            release = wire.apdu(0x06, 0x25, b"\x87" + wire.bcd(receipt, 2))
            assert (await ecr.exchange(release))[-1] == wire.apdu(0x06, 0x1E, b"\xb4")
            assert [e.result_code for e in sim.ledger.refusals()] == [0xB8, 0xB4]

    run(main)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("bmp", "B8 87 00 01 06 06 23 04 08 02 00 02"),  # several: the first in 87
        ("tlv", "B8 06 0A 23 08 08 02 00 01 08 02 00 02"),
        ("both", "B8 87 00 01 06 06 23 04 08 02 00 02"),
    ],
)
def test_open_pre_auth_list_forms(form: str, expected: str) -> None:
    async def main() -> None:
        async with tcp_terminal(Script(answer_timeout_s=0.3, open_list_form=form)) as (_sim, ecr):
            await ecr.exchange(pre_auth(100))
            await ecr.exchange(pre_auth(200))
            replies = await ecr.exchange(bytes.fromhex("06 23 03 87 FF FF"))
            assert replies[-1] == wire.apdu(0x06, 0x1E, bytes.fromhex(expected))

    run(main)


def test_end_of_day_is_refused_while_a_pre_auth_is_open() -> None:
    async def main() -> None:
        async with tcp_terminal() as (_sim, ecr):
            await ecr.exchange(pre_auth(100))
            replies = await ecr.exchange(bytes.fromhex("06 50 03 12 34 56"))
            assert replies[-1] == wire.apdu(0x06, 0x1E, bytes.fromhex("B8 87 00 01"))

    run(main)


def test_power_loss_keeps_the_books(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "terminal.json"
        script = Script(answer_timeout_s=0.3, power_loss_at=Step.STATUS, power_loss_on=0x22)
        async with tcp_terminal(script, Ledger.load(path)) as (sim, ecr):
            with pytest.raises(AssertionError, match="closed the connection"):
                await ecr.exchange(pre_auth(2500))
            assert not sim.powered
            assert Ledger.load(path).open_receipts() == [1]
            await sim.power_on()
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.tcp_port)
            again = Ecr(reader, writer)
            replies = await again.exchange(bytes.fromhex("06 23 03 87 FF FF"))
            assert replies[-1] == wire.apdu(0x06, 0x1E, bytes.fromhex("B8 87 00 01"))
            writer.close()
        # a new simulator on the same file: the receipt counter goes on, the pre-auth is open
        reloaded = Ledger.load(path)
        assert reloaded.open_receipts() == [1] and reloaded.next_receipt == 2

    run(main)


# --- on a pty: the link layer, with plain pyserial ------------------------------------------


async def read_for(port: serial.Serial, seconds: float) -> bytes:
    out = b""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        out += port.read(4096)
        await asyncio.sleep(0.01)
    return out


@LINUX_ONLY
def test_serial_link_acks_nacks_and_line_settings() -> None:
    async def main() -> None:
        sim = SimulatedTerminal(script=Script(answer_timeout_s=0.3, nak_frames=1))
        path = await sim.start_pty()
        status = wire.frame(bytes.fromhex("05 01 00"))
        try:
            wrong = serial.Serial(path, 9600, stopbits=1, timeout=0)  # 8N1: the UART mismatch
            wrong.write(status)
            assert await read_for(wrong, 0.1) == b""
            assert sim.counters.line_mismatch_bytes == len(status)
            wrong.close()

            port = serial.Serial(path, 9600, stopbits=2, timeout=0)
            port.write(status)
            assert await read_for(port, 0.1) == b"\x15"  # scripted NAK
            port.write(status)
            got = await read_for(port, 0.1)
            assert got == b"\x06" + wire.frame(wire.apdu(0x80, 0x00))
            port.write(b"\x06")  # our ACK byte for its 80 00 00
            got = await read_for(port, 0.2)
            (completion,) = wire.FrameReader().feed(got)
            assert completion.apdu[:2] == b"\x06\x0f"
            port.write(b"\x15")  # NAK it: it comes again
            assert await read_for(port, 0.2) == got
            port.write(b"\x06" + wire.frame(wire.apdu(0x80, 0x00)))
            assert await read_for(port, 0.1) == b"\x06"
            assert sim.counters.repeats == 1 and sim.counters.naks_received == 1
            port.close()
        finally:
            await sim.stop()

    run(main)


@LINUX_ONLY
def test_power_loss_at_the_command_leaves_it_unacknowledged() -> None:
    async def main() -> None:
        script = Script(answer_timeout_s=0.3, power_loss_at=Step.COMMAND)
        sim = SimulatedTerminal(script=script)
        path = await sim.start_pty()
        try:
            port = serial.Serial(path, 9600, stopbits=2, timeout=0)
            port.write(wire.frame(pre_auth(100)))
            assert await read_for(port, 0.2) == b""
            assert not sim.powered and sim.ledger.entries == []
            await sim.power_on()
            port.write(wire.frame(bytes.fromhex("05 01 00")))
            assert (await read_for(port, 0.1)).startswith(b"\x06")
            port.close()
        finally:
            await sim.stop()

    run(main)


def test_command_line_serves_with_a_script_and_a_ledger(tmp_path: Path) -> None:
    async def main() -> None:
        ledger = tmp_path / "books.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hil.terminal",
            "--tcp",
            "0",
            "--ledger",
            str(ledger),
            "--set",
            "decline_code=0x6C",
            "--set",
            "answer_timeout_s=0.3",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
            assert line[:3] == ["hil", "terminal", "ready"]
            reader, writer = await asyncio.open_connection("127.0.0.1", int(line[3]))
            replies = await Ecr(reader, writer).exchange(pre_auth(100))
            assert replies[-1] == wire.apdu(0x06, 0x1E, b"\x6c")
            writer.close()
            assert Ledger.load(ledger).refusals() != []
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 5) == 0

    run(main)
