"""Drivers layer: how long Modbus transactions take on a serial line (pure arithmetic).

A transaction costs the request and the response on the wire, a t3.5 silence after each frame
and the slave's turnaround (reference/modbus.md §4: 4 ms for a fast meter, 20-60 ms typical,
up to 100 ms for some EVSEs). `evsite config check` uses these figures to warn about a line that
cannot keep up, and the control loop to read the EVSEs of a slow line round-robin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from controller.core.site import SerialTransport, Transport
from drivers.modbus.registermap import ReadBlock, RegisterMap, Table

# A typical slave reply delay plus host latency; devices vary (see the module docstring).
TURNAROUND_S = 0.02


def char_bits(transport: SerialTransport) -> int:
    """Bits on the wire per byte: start + data + parity + stop."""
    return (
        1 + transport.bytesize + (0 if transport.parity.upper() == "N" else 1) + transport.stopbits
    )


def t35_s(transport: SerialTransport) -> float:
    """The RTU silent interval (fixed 1.75 ms above 19200 baud)."""
    if transport.baudrate > 19200:
        return 0.00175
    return 3.5 * char_bits(transport) / transport.baudrate


def transaction_s(
    transport: SerialTransport,
    request_bytes: int,
    response_bytes: int,
    turnaround_s: float = TURNAROUND_S,
) -> float:
    wire = (request_bytes + response_bytes) * char_bits(transport) / transport.baudrate
    return wire + 2 * t35_s(transport) + turnaround_s


def _response_bytes(block: ReadBlock) -> int:
    if block.table is Table.COIL:
        return 5 + math.ceil(block.count / 8)
    return 5 + 2 * block.count


def read_s(
    rmap: RegisterMap, transport: Transport, blocks: Iterable[ReadBlock] | None = None
) -> float:
    """One poll of a device (its read plan); 0 on TCP, where the line is not the limit."""
    if not isinstance(transport, SerialTransport):
        return 0.0
    plan = rmap.plan() if blocks is None else tuple(blocks)
    return sum(transaction_s(transport, 8, _response_bytes(b)) for b in plan)


def write_s(rmap: RegisterMap, transport: Transport) -> float:
    """One limit write (FC16 of the setpoint's registers); 0 on TCP."""
    if not isinstance(transport, SerialTransport) or rmap.evse is None:
        return 0.0
    field = rmap.field(rmap.evse.setpoint.field)
    registers = max(1, field.end - field.address)
    return transaction_s(transport, 9 + 2 * registers, 8)
