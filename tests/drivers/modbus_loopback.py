"""Test support: real pymodbus servers on loopback with registers set by hand from the reference.

Nothing here imports the drivers' maps or codec: register contents are written with ``struct``
straight from reference/modbus.md, so a wrong address, type or word order in a map cannot pass
on both sides.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# --- reference encodings (independent of drivers.modbus.registermap) --------------------------


def f32(x: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", x))
    return [hi, lo]


def f64(x: float) -> list[int]:
    return list(struct.unpack(">HHHH", struct.pack(">d", x)))


def u32(x: int) -> list[int]:
    return [(x >> 16) & 0xFFFF, x & 0xFFFF]


def text(s: str, registers: int) -> list[int]:
    data = s.encode("ascii").ljust(2 * registers, b"\x00")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def f32_from(regs: list[int]) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0])


# --- a device with hand-set registers -----------------------------------------------------------

Refusal = Callable[[int, int, int], ExcCodes | None]  # (function code, address, count)


@dataclass
class FakeDevice:
    """Registers by address; tests change them between reads. Writes are recorded."""

    unit_id: int
    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    writes: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (fc, addr, values)
    reads: list[tuple[int, int, int]] = field(default_factory=list)  # (fc, addr, count)
    refuse: Refusal | None = None
    delay_s: float = 0.0

    def set(self, table: str, address: int, words: list[int]) -> None:
        regs = self.holding if table == "holding" else self.input
        for i, w in enumerate(words):
            regs[address + i] = w

    def define(self, table: str, first: int, last: int) -> None:
        """Make ``first..last`` readable (zero) without changing values already set."""
        regs = self.holding if table == "holding" else self.input
        for a in range(first, last + 1):
            regs.setdefault(a, 0)


def _blocks(regs: dict[int, int]) -> list[SimData]:
    if not regs:
        # the simulator needs one block per table; a lone register far away keeps it empty
        return [SimData(address=65000, values=[0], datatype=DataType.REGISTERS)]
    out: list[SimData] = []
    addrs = sorted(regs)
    start = prev = addrs[0]
    for a in [*addrs[1:], None]:
        if a is not None and a == prev + 1:
            prev = a
            continue
        out.append(
            SimData(
                address=start,
                values=[regs[x] for x in range(start, prev + 1)],
                datatype=DataType.REGISTERS,
            )
        )
        if a is not None:
            start = prev = a
    return out


def sim_device(dev: FakeDevice) -> SimDevice:
    async def action(  # noqa: PLR0917 - the simulator's callback signature
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if dev.delay_s:
            await asyncio.sleep(dev.delay_s)
        if dev.refuse is not None and (code := dev.refuse(function_code, address, count)):
            return code
        regs = dev.input if function_code == 4 else dev.holding
        if set_values is not None and function_code in (6, 16):
            values = [int(v) for v in set_values]
            dev.writes.append((function_code, address, values))
            for i, v in enumerate(values):
                regs[address + i] = v
            return None
        dev.reads.append((function_code, address, count))
        for a in range(address, address + count):
            current_registers[a - start_address] = regs.get(a, 0)
        return None

    bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
    return SimDevice(
        id=dev.unit_id,
        simdata=(bits, bits, _blocks(dev.holding), _blocks(dev.input)),
        action=action,
    )


@asynccontextmanager
async def modbus_server(
    devices: list[FakeDevice], *, framer: FramerType = FramerType.SOCKET, port: int = 0
) -> AsyncIterator[int]:
    """Serve ``devices`` on 127.0.0.1 (``port`` 0: any free port); yields the port."""
    server = ModbusTcpServer(
        [sim_device(d) for d in devices], address=("127.0.0.1", port), framer=framer
    )
    await server.serve_forever(background=True)
    port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    try:
        yield port
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP connections, reads everything, never answers."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(1024):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
