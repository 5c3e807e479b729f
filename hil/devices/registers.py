"""hil: 16-bit register encodings written for the simulators (independent of drivers/).

Big-endian throughout: the high byte first in each register and the high word first across
registers, the order the Eastron and Alfen maps use. Pure functions, no I/O.
"""

from __future__ import annotations

import math
import struct


def float32_to_registers(value: float) -> list[int]:
    """IEEE-754 single precision, high word first."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def registers_to_float32(registers: list[int]) -> float:
    """Inverse of `float32_to_registers`; needs exactly two registers."""
    if len(registers) != 2:
        raise ValueError(f"float32 needs 2 registers, got {len(registers)}")
    value: float = struct.unpack(">f", struct.pack(">HH", *registers))[0]
    return value


def float64_to_registers(value: float) -> list[int]:
    """IEEE-754 double precision, high word first (4 registers)."""
    return list(struct.unpack(">HHHH", struct.pack(">d", value)))


def registers_to_float64(registers: list[int]) -> float:
    """Inverse of `float64_to_registers`; needs exactly four registers."""
    if len(registers) != 4:
        raise ValueError(f"float64 needs 4 registers, got {len(registers)}")
    value: float = struct.unpack(">d", struct.pack(">HHHH", *registers))[0]
    return value


def uint32_to_registers(value: int) -> list[int]:
    """Unsigned 32-bit, high word first; clamps to the representable range."""
    clamped = min(max(int(value), 0), 0xFFFFFFFF)
    return [clamped >> 16, clamped & 0xFFFF]


def uint64_to_registers(value: int) -> list[int]:
    """Unsigned 64-bit, high word first (4 registers); clamps to the representable range."""
    clamped = min(max(int(value), 0), 0xFFFFFFFFFFFFFFFF)
    return [(clamped >> shift) & 0xFFFF for shift in (48, 32, 16, 0)]


def ascii_to_registers(text: str, count: int) -> list[int]:
    """ASCII text, two characters per register (first one in the high byte), NUL padded."""
    raw = text.encode("ascii")
    if len(raw) > 2 * count:
        raise ValueError(f"{text!r} does not fit in {count} registers")
    raw = raw.ljust(2 * count, b"\x00")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)]


def registers_to_ascii(registers: list[int]) -> str:
    """Inverse of `ascii_to_registers`, trailing NULs dropped."""
    raw = b"".join(bytes([(r >> 8) & 0xFF, r & 0xFF]) for r in registers)
    return raw.rstrip(b"\x00").decode("ascii")


def is_finite(value: float) -> bool:
    """True for a real number (written setpoints must not be NaN or infinite)."""
    return not (math.isnan(value) or math.isinf(value))
