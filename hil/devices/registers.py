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


# --- integers and word order (the Carlo Gavazzi, Phoenix and Schneider maps put the LOW word
# first; SunSpec, ABB, Bender and Heidelberg the high word) -------------------------------------


def _words(data: bytes, *, low_word_first: bool) -> list[int]:
    words = [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    return words[::-1] if low_word_first else words


def _clamp(value: int, lo: int, hi: int) -> int:
    return min(max(int(value), lo), hi)


def u16(value: int) -> list[int]:
    """Unsigned 16-bit; clamps to 0..65535."""
    return [_clamp(value, 0, 0xFFFF)]


def i16(value: int) -> list[int]:
    """Signed 16-bit two's complement; clamps to -32768..32767."""
    return [_clamp(value, -0x8000, 0x7FFF) & 0xFFFF]


def i32(value: int, *, low_word_first: bool = False) -> list[int]:
    """Signed 32-bit, two registers; clamps to the representable range."""
    raw = struct.pack(">i", _clamp(value, -(2**31), 2**31 - 1))
    return _words(raw, low_word_first=low_word_first)


def u32(value: int, *, low_word_first: bool = False) -> list[int]:
    """Unsigned 32-bit, two registers; clamps to the representable range."""
    raw = struct.pack(">I", _clamp(value, 0, 2**32 - 1))
    return _words(raw, low_word_first=low_word_first)


def i64(value: int, *, low_word_first: bool = False) -> list[int]:
    """Signed 64-bit, four registers."""
    raw = struct.pack(">q", _clamp(value, -(2**63), 2**63 - 1))
    return _words(raw, low_word_first=low_word_first)


def u64(value: int, *, low_word_first: bool = False) -> list[int]:
    """Unsigned 64-bit, four registers."""
    raw = struct.pack(">Q", _clamp(value, 0, 2**64 - 1))
    return _words(raw, low_word_first=low_word_first)


def f32(value: float, *, low_word_first: bool = False) -> list[int]:
    """IEEE-754 single precision, two registers."""
    return _words(struct.pack(">f", value), low_word_first=low_word_first)


def words_to_int(registers: list[int], *, signed: bool = False) -> int:
    """Registers, high word first, as one integer (for reading back written values)."""
    value = 0
    for r in registers:
        value = (value << 16) | (r & 0xFFFF)
    if signed and registers and registers[0] & 0x8000:
        value -= 1 << (16 * len(registers))
    return value
