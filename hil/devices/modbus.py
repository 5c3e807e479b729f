"""hil: a loopback Modbus TCP server for one simulated device (pymodbus 3.16 SimDevice).

The device supplies its register map as data (`render`: address -> 16-bit word, computed at
read time) and decides about writes (`write`: None to accept, or a Modbus exception code).
Addresses outside the declared ranges answer exception 2 (illegal data address), as on the
real devices. Test hooks make the device go silent (requests get no reply at all) or answer
every request with exception 4 (slave device failure).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FC_READ_HOLDING = 3
FC_READ_INPUT = 4
FC_WRITE_SINGLE = 6
FC_WRITE_MULTIPLE = 16

EXC_ILLEGAL_FUNCTION = 1
EXC_ILLEGAL_ADDRESS = 2
EXC_ILLEGAL_VALUE = 3
EXC_DEVICE_FAILURE = 4

Render = Callable[[int], Mapping[int, int]]
"""Given the function code of a read, the current register words by address."""
Write = Callable[[int, int, list[int]], int | None]
"""(function code, address, words) -> None to accept, else the Modbus exception code."""


class Fault(enum.Enum):
    """How the device misbehaves, for fail-safe tests."""

    NONE = "none"
    SILENT = "silent"  # takes the request, never answers (the client times out)
    EXCEPTION = "exception"  # answers every request with exception 4


def quiet_pymodbus() -> None:
    """Mute pymodbus's logger: its server side logs tracebacks for requests we refuse on purpose."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)


class DeviceServer:
    """One Modbus TCP server serving one unit id with holding and/or input registers."""

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
        self.name = name
        self.unit_id = unit_id
        self.fault = Fault.NONE
        self._render = render
        self._write = write
        self._holding = list(holding)
        self._inputs = list(inputs)
        self._server: ModbusTcpServer | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The TCP port, once started."""
        if self._server is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0: a free port chosen by the OS) and return the port."""
        device = SimDevice(
            self.unit_id,
            simdata=(
                # pymodbus needs every table non-empty; no coil or discrete input is modelled,
                # so one padding block sits at the top of the bit address space.
                [SimData(65520, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(65520, values=[False] * 16, datatype=DataType.BITS)],
                _blocks(self._holding),
                _blocks(self._inputs),
            ),
            action=self._action,
        )
        server = ModbusTcpServer(device, address=(host, port), trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None)
        if not sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise OSError(f"{self.name}: could not listen on {host}:{port}")
        self._port = int(sockets[0].getsockname()[1])
        self._server = server
        return self._port

    async def stop(self) -> None:
        """Stop listening and drop the connections."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # Dropping the outgoing frame is how a silent device is modelled: the request was
        # taken off the wire, the client waits for a reply that never comes.
        if sending and self.fault is Fault.SILENT:
            return b""
        return data

    async def _action(  # noqa: PLR0917 - the signature pymodbus calls SimDevice actions with
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.fault is Fault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if values is not None:
            if self._write is None:
                return ExcCodes.ILLEGAL_FUNCTION
            code = self._write(function_code, address, [int(v) for v in values])
            return None if code is None else ExcCodes(code)
        words = self._render(function_code)
        for offset in range(count):
            word = words.get(address + offset)
            if word is not None:
                registers[address + offset - start_address] = word & 0xFFFF
        return None


def _blocks(ranges: Sequence[range]) -> list[SimData]:
    if not ranges:
        # An all-invalid table: every address answers exception 2.
        return [SimData(0, datatype=DataType.INVALID)]
    return [
        SimData(r.start, count=len(r), values=0, datatype=DataType.REGISTERS)
        for r in sorted(ranges, key=lambda r: r.start)
    ]
