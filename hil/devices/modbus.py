"""hil: simulated Modbus devices as data, their fault injection, and their Modbus TCP server.

A ``RegisterDevice`` is one unit id: its tables as data (``render``: address -> 16-bit word,
computed at request time; coils read 0/1), a rule for writes (``write``: None to accept, or a
Modbus exception code), the address ranges that exist (anything else answers exception 2, as on
the real devices) and an injected fault. ``execute`` and ``respond`` are sans-IO: a request in,
registers or a response PDU out. The same device serves over Modbus TCP (``TcpServer``, pymodbus
3.16's server with a ``SimDevice`` per unit id) and over RTU on a pseudo-terminal
(``hil.devices.rtu.RtuLine``, our own framing).

Faults (``RegisterDevice.inject``), the same on both transports:

- SILENT: takes the request, never answers (the client times out).
- EXCEPTION: answers with ``exception_code`` (default 4, server device failure).
- CORRUPT: answers a damaged frame: a wrong CRC on RTU, a wrong transaction id on TCP (TCP has
  no checksum; either way the client cannot take the reply and times out).
- GARBAGE: answers random bytes instead of a frame.
- SLOW: answers after ``delay_s`` (a reply later than the client's timeout is no reply).

``count`` limits a fault to the next N requests. A device dropping off and coming back is
SILENT and then NONE on a serial line, and ``TcpServer.drop_off`` / ``come_back`` on TCP (the
listening socket and every connection close, then the server listens on the same port again).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable, Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FC_READ_COILS = 1
FC_READ_HOLDING = 3
FC_READ_INPUT = 4
FC_WRITE_COIL = 5
FC_WRITE_SINGLE = 6
FC_WRITE_MULTIPLE = 16

EXC_ILLEGAL_FUNCTION = 1
EXC_ILLEGAL_ADDRESS = 2
EXC_ILLEGAL_VALUE = 3
EXC_DEVICE_FAILURE = 4

MAX_READ_REGISTERS = 125
MAX_WRITE_REGISTERS = 123
MAX_READ_COILS = 2000

Render = Callable[[int], Mapping[int, int]]
"""Given the function code of a read (1, 3 or 4), the current values by address."""
Write = Callable[[int, int, list[int]], int | None]
"""(function code, address, words or coil 0/1 values) -> None to accept, else an exception code."""


class Fault(enum.Enum):
    """How a device misbehaves, for fail-safe tests."""

    NONE = "none"
    SILENT = "silent"  # takes the request, never answers
    EXCEPTION = "exception"  # answers with the device's exception_code
    CORRUPT = "corrupt"  # a damaged reply: bad CRC (RTU), wrong transaction id (TCP)
    GARBAGE = "garbage"  # random bytes instead of a reply
    SLOW = "slow"  # the reply comes delay_s late


def quiet_pymodbus() -> None:
    """Mute pymodbus's logger: its server side logs tracebacks for requests we refuse on purpose."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)


class RegisterDevice:
    """One simulated Modbus device (unit id): tables as data, write rules, injected fault."""

    def __init__(
        self,
        *,
        name: str,
        unit_id: int,
        render: Render,
        write: Write | None = None,
        holding: Sequence[range] = (),
        inputs: Sequence[range] = (),
        coils: Sequence[range] = (),
        on_request: Callable[[], None] | None = None,
        asleep: Callable[[], bool] | None = None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"{name}: unit id {unit_id} is not 0..255")
        self.name = name
        self.unit_id = unit_id
        self._render = render
        self._write = write
        self.holding = tuple(holding)
        self.inputs = tuple(inputs)
        self.coils = tuple(coils)
        # called for every request the device takes off the line (e.g. to feed its watchdog)
        self._on_request = on_request
        # True while the device ignores the line altogether (e.g. a Heidelberg in standby)
        self._asleep = asleep
        self.fault = Fault.NONE
        self.fault_count: int | None = None
        self.delay_s = 0.0
        self.exception_code = EXC_DEVICE_FAILURE
        self.requests = 0  # requests addressed to this device and taken off the line
        self.replies = 0  # replies sent (a faulty reply counts)
        self._rng = random.Random(unit_id)

    # --- faults ---------------------------------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        count: int | None = None,
        delay_s: float | None = None,
        exception_code: int | None = None,
    ) -> None:
        """Misbehave from now on (``count``: for that many requests only)."""
        self.fault = fault
        self.fault_count = count
        if delay_s is not None:
            self.delay_s = delay_s
        if exception_code is not None:
            self.exception_code = exception_code

    def clear_fault(self) -> None:
        self.inject(Fault.NONE)

    def next_fault(self) -> Fault:
        """The fault for the request being handled (and one less left of a counted fault)."""
        fault = self.fault
        if fault is not Fault.NONE and self.fault_count is not None:
            self.fault_count -= 1
            if self.fault_count <= 0:
                self.clear_fault()
        return fault

    @property
    def is_asleep(self) -> bool:
        return self._asleep is not None and self._asleep()

    def garbage(self, length: int) -> bytes:
        """Random bytes (seeded per device, so a test run repeats)."""
        return bytes(self._rng.randrange(256) for _ in range(max(1, length)))

    # --- requests (sans-IO) ------------------------------------------------------------------

    def _ranges(self, function_code: int) -> tuple[range, ...]:
        if function_code in (FC_READ_COILS, FC_WRITE_COIL):
            return self.coils
        if function_code == FC_READ_INPUT:
            return self.inputs
        return self.holding

    def exists(self, function_code: int, address: int, count: int) -> bool:
        """Every address of the request lies in one declared range of its table."""
        return any(
            r.start <= address and address + count <= r.stop for r in self._ranges(function_code)
        )

    def execute(
        self, function_code: int, address: int, count: int, values: list[int] | None
    ) -> list[int] | int:
        """The values a read returns (registers, or 0/1 per coil), [] for an accepted write, or
        the Modbus exception code."""
        if self._on_request is not None:
            self._on_request()
        if function_code not in (
            FC_READ_COILS,
            FC_READ_HOLDING,
            FC_READ_INPUT,
            FC_WRITE_COIL,
            FC_WRITE_SINGLE,
            FC_WRITE_MULTIPLE,
        ):
            return EXC_ILLEGAL_FUNCTION
        if not self.exists(function_code, address, count):
            return EXC_ILLEGAL_ADDRESS
        if values is not None:
            if self._write is None:
                return EXC_ILLEGAL_FUNCTION
            try:
                code = self._write(function_code, address, list(values))
            except Exception:  # a model bug answers "device failure", as a box would
                return EXC_DEVICE_FAILURE
            return [] if code is None else code
        try:
            words = self._render(function_code)
        except Exception:  # as above
            return EXC_DEVICE_FAILURE
        return [int(words.get(a, 0)) & 0xFFFF for a in range(address, address + count)]

    def respond(self, pdu: bytes) -> bytes:
        """The response PDU to a request PDU (function code first, no unit id, no checksum)."""
        if not pdu:
            return bytes([0x80, EXC_ILLEGAL_FUNCTION])
        fc = pdu[0]

        def fail(code: int) -> bytes:
            return bytes([fc | 0x80, code])

        def word(i: int) -> int:
            return (pdu[i] << 8) | pdu[i + 1]

        if fc in (FC_READ_COILS, FC_READ_HOLDING, FC_READ_INPUT) and len(pdu) == 5:
            address, count = word(1), word(3)
            limit = MAX_READ_COILS if fc == FC_READ_COILS else MAX_READ_REGISTERS
            if not 1 <= count <= limit:
                return fail(EXC_ILLEGAL_VALUE)
            result = self.execute(fc, address, count, None)
            if isinstance(result, int):
                return fail(result)
            if fc == FC_READ_COILS:
                packed = bytearray((count + 7) // 8)
                for i, bit in enumerate(result):
                    if bit:
                        packed[i // 8] |= 1 << (i % 8)
                return bytes([fc, len(packed)]) + bytes(packed)
            return bytes([fc, 2 * count]) + b"".join(w.to_bytes(2, "big") for w in result)
        if fc == FC_WRITE_COIL and len(pdu) == 5:
            if word(3) not in (0x0000, 0xFF00):
                return fail(EXC_ILLEGAL_VALUE)
            result = self.execute(fc, word(1), 1, [1 if word(3) else 0])
            return fail(result) if isinstance(result, int) else pdu
        if fc == FC_WRITE_SINGLE and len(pdu) == 5:
            result = self.execute(fc, word(1), 1, [word(3)])
            return fail(result) if isinstance(result, int) else pdu
        if fc == FC_WRITE_MULTIPLE and len(pdu) >= 6:
            address, count, nbytes = word(1), word(3), pdu[5]
            if not 1 <= count <= MAX_WRITE_REGISTERS or nbytes != 2 * count:
                return fail(EXC_ILLEGAL_VALUE)
            if len(pdu) != 6 + nbytes:
                return fail(EXC_ILLEGAL_VALUE)
            values = [word(6 + 2 * i) for i in range(count)]
            result = self.execute(fc, address, count, values)
            return fail(result) if isinstance(result, int) else pdu[:5]
        return fail(EXC_ILLEGAL_FUNCTION)


# --- Modbus TCP (pymodbus server) ----------------------------------------------------------------


class TcpServer:
    """Modbus TCP on loopback for one or more devices (unit ids behind one address, a gateway)."""

    def __init__(self, devices: Sequence[RegisterDevice], *, name: str = "") -> None:
        if not devices:
            raise ValueError("a server needs at least one device")
        ids = [d.unit_id for d in devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"unit ids {ids} are not unique")
        self.devices = {d.unit_id: d for d in devices}
        self.name = name or devices[0].name
        self._server: ModbusTcpServer | None = None
        self._host = "127.0.0.1"
        self._port = 0
        # the fault chosen for a request in flight, applied to its reply (per unit id)
        self._pending: dict[int, Fault] = {}

    @property
    def port(self) -> int:
        """The TCP port, once started."""
        if not self._port:
            raise RuntimeError(f"{self.name}: not started")
        return self._port

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0: a free port chosen by the OS) and return the port."""
        server = ModbusTcpServer(
            [self._sim_device(d) for d in self.devices.values()],
            address=(host, port),
            trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None)
        if not sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise OSError(f"{self.name}: could not listen on {host}:{port}")
        self._host, self._port = host, int(sockets[0].getsockname()[1])
        self._server = server
        return self._port

    async def stop(self) -> None:
        """Stop listening and drop the connections."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def drop_off(self) -> None:
        """The device drops off the network: connections close, connects are refused."""
        await self.stop()

    async def come_back(self) -> None:
        """Back on the same port."""
        if self._server is None:
            await self.start(self._host, self._port)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or len(data) < 8:
            return data
        device = self.devices.get(data[6])
        if device is None:
            return data
        fault = self._pending.pop(device.unit_id, None)
        if fault is None:  # refused before our action ran (e.g. an address outside the map)
            fault = device.next_fault()
        if fault is Fault.SILENT:
            return b""
        device.replies += 1
        if fault is Fault.CORRUPT:
            tid = ((data[0] << 8) | data[1]) ^ 0x5A5A
            return bytes([tid >> 8, tid & 0xFF]) + data[2:]
        if fault is Fault.GARBAGE:
            return device.garbage(len(data))
        return data

    def _sim_device(self, device: RegisterDevice) -> SimDevice:
        async def action(  # noqa: PLR0917 - the signature pymodbus calls SimDevice actions with
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if values is None and function_code not in (
                FC_READ_COILS,
                FC_READ_HOLDING,
                FC_READ_INPUT,
            ):
                return None  # pymodbus reading back what a write just stored, for its echo
            if device.is_asleep:
                self._pending[device.unit_id] = Fault.SILENT
                return None
            device.requests += 1
            fault = device.next_fault()
            self._pending[device.unit_id] = fault
            if fault is Fault.SILENT:
                return None  # not taken off the wire: nothing happens, the reply is dropped
            if fault is Fault.SLOW:
                await asyncio.sleep(device.delay_s)
            if fault is Fault.EXCEPTION:
                return ExcCodes(device.exception_code)
            if function_code == FC_READ_COILS:
                # pymodbus keeps coils as bits of registers (coil c is bit c % 16 of register
                # c // 16) and passes the number of registers, not of coils: fill them all.
                count = (address // 16 + count) * 16 - address
                count = max(1, min(count, sum(len(r) for r in device.coils)))
                while count > 1 and not device.exists(function_code, address, count):
                    count -= 1
            written = None if values is None else [int(v) for v in values]
            result = device.execute(function_code, address, count, written)
            if isinstance(result, int):
                return ExcCodes(result)
            if values is not None:
                return None
            if function_code == FC_READ_COILS:
                for i, bit in enumerate(result):
                    c = address + i
                    index = c // 16 - start_address
                    mask = 1 << (c % 16)
                    registers[index] = (
                        (registers[index] | mask) if bit else (registers[index] & ~mask)
                    )
                return None
            for offset, word in enumerate(result):
                registers[address + offset - start_address] = word
            return None

        return SimDevice(
            device.unit_id,
            simdata=(
                _bit_blocks(device.coils),
                # no discrete input is modelled; pymodbus needs every table non-empty
                [SimData(4095, values=[False] * 16, datatype=DataType.BITS)],
                _blocks(device.holding),
                _blocks(device.inputs),
            ),
            action=action,
        )


def _blocks(ranges: Sequence[range]) -> list[SimData]:
    if not ranges:
        # An all-invalid table: every address answers exception 2.
        return [SimData(0, datatype=DataType.INVALID)]
    return [
        SimData(r.start, count=len(r), values=0, datatype=DataType.REGISTERS)
        for r in sorted(ranges, key=lambda r: r.start)
    ]


def _bit_blocks(ranges: Sequence[range]) -> list[SimData]:
    if not ranges:
        return [SimData(4095, values=[False] * 16, datatype=DataType.BITS)]
    # coil addresses; pymodbus pads each block to whole registers of 16 coils
    return [
        SimData(r.start, values=[False] * len(r), datatype=DataType.BITS)
        for r in sorted(ranges, key=lambda r: r.start)
    ]


class DeviceServer:
    """One device on its own Modbus TCP server (the SDM630 and Alfen simulators use this)."""

    def __init__(
        self,
        *,
        name: str,
        unit_id: int,
        render: Render,
        write: Write | None = None,
        holding: Sequence[range] = (),
        inputs: Sequence[range] = (),
    ) -> None:
        self.device = RegisterDevice(
            name=name, unit_id=unit_id, render=render, write=write, holding=holding, inputs=inputs
        )
        self.name = name
        self.unit_id = unit_id
        self._tcp = TcpServer([self.device], name=name)

    @property
    def fault(self) -> Fault:
        return self.device.fault

    @fault.setter
    def fault(self, value: Fault) -> None:
        self.device.inject(value)

    @property
    def port(self) -> int:
        return self._tcp.port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        return await self._tcp.start(host, port)

    async def stop(self) -> None:
        await self._tcp.stop()
