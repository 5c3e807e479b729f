"""Drivers layer (sans-IO ZVT codec): APDUs, BMP fields, BCD numbers and the TLV container.

An APDU is ``CLASS INSTR LEN data``; ``LEN`` is one byte for 0..254 bytes of data, else ``FF``
followed by the length in two bytes, low byte first (extended length, e.g. a long 06 D3 text
block).

The data of most APDUs is a list of BMPs, each a one-byte tag and a value whose size the tag
fixes: a fixed number of bytes (amount 04: 6 bytes of BCD cents), an LLVAR (two length bytes
``F<d> F<d>`` = 0..99 bytes), an LLLVAR (three, 0..999), or BMP 06, the TLV container, whose
length is BER-like: ``< 80`` one byte, ``81 xx``, ``82 xx xx`` (big-endian). An unknown BMP tag
cannot be skipped (its size is unknown), so it ends the parse as a ``RemoteProtocolError``.

Inside the TLV container each item is ``tag length value``: a tag whose first byte has its low
five bits all set continues in the next byte(s), each with bit 8 set while more follow; bit 6
of the first byte marks a constructed item whose value is itself a list of items (for example
23, a list of receipt numbers in 08 items; 25, the lines of a text block in 07 items).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from drivers.terminal.zvt.errors import LocalProtocolError, RemoteProtocolError

EXTENDED_LENGTH = 0xFF
MAX_DATA_BYTES = 0xFFFF


@dataclass(frozen=True, slots=True)
class Apdu:
    """One application message: class byte ``cla``, instruction ``ins``, and its data."""

    cla: int
    ins: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if not (0 <= self.cla <= 0xFF and 0 <= self.ins <= 0xFF):
            raise LocalProtocolError("class and instruction are single bytes")
        if len(self.data) > MAX_DATA_BYTES:
            raise LocalProtocolError(f"APDU data of {len(self.data)} bytes exceeds 65535")

    @property
    def code(self) -> tuple[int, int]:
        return (self.cla, self.ins)

    def describe(self) -> str:
        """Class and instruction in hex ("06 22"): safe to log, unlike the data."""
        return f"{self.cla:02X} {self.ins:02X}"

    def encode(self) -> bytes:
        n = len(self.data)
        if n < EXTENDED_LENGTH:
            header = bytes([self.cla, self.ins, n])
        else:
            header = bytes([self.cla, self.ins, EXTENDED_LENGTH, n & 0xFF, n >> 8])
        return header + self.data


def decode_apdu(raw: bytes) -> Apdu:
    """Exactly one APDU; its length byte(s) must agree with the bytes given."""
    if len(raw) < 3:
        raise RemoteProtocolError(f"APDU of {len(raw)} bytes is shorter than its header")
    if raw[2] == EXTENDED_LENGTH:
        if len(raw) < 5:
            raise RemoteProtocolError("APDU with an extended length is cut short")
        n, start = raw[3] | (raw[4] << 8), 5
    else:
        n, start = raw[2], 3
    if len(raw) - start != n:
        raise RemoteProtocolError(
            f"APDU {raw[0]:02X} {raw[1]:02X} announces {n} data bytes, carries {len(raw) - start}"
        )
    return Apdu(raw[0], raw[1], bytes(raw[start:]))


# --- BCD --------------------------------------------------------------------------------------


def bcd_encode(value: int, size: int) -> bytes:
    """``value`` as ``size`` bytes of packed BCD, most significant digit first."""
    digits = str(value)
    if value < 0 or len(digits) > 2 * size:
        raise LocalProtocolError(f"{value} does not fit {size} bytes of BCD")
    return bytes.fromhex(digits.rjust(2 * size, "0"))


def bcd_digits(raw: bytes) -> str:
    """Packed BCD as a string of digits (keeps leading zeros: a terminal id "00012345")."""
    text = raw.hex()
    if not text.isdigit():
        raise RemoteProtocolError("a BCD field holds a nibble that is not a decimal digit")
    return text


def bcd_decode(raw: bytes) -> int:
    return int(bcd_digits(raw)) if raw else 0


# --- BMPs -------------------------------------------------------------------------------------

TLV_BMP = 0x06

# Fixed sizes in bytes (ZVT BMP table, as ecrterm's bitmaps.py and EVerest's packets.rs read it).
BMP_FIXED_BYTES: dict[int, int] = {
    0x01: 1,  # timeout
    0x02: 1,  # max. status infos
    0x03: 1,  # service byte
    0x04: 6,  # amount, BCD cents
    0x05: 1,  # pump number
    0x0B: 3,  # trace number, BCD
    0x0C: 3,  # time hhmmss, BCD
    0x0D: 2,  # date MMDD, BCD
    0x0E: 2,  # expiry date YYMM (card data: parsed, never kept)
    0x17: 2,  # card sequence number (card data: never kept)
    0x19: 1,  # payment type / card type / status byte
    0x27: 1,  # result code
    0x29: 4,  # terminal id, BCD
    0x2A: 15,  # VU number, ASCII
    0x37: 3,  # trace number of the original transaction
    0x3A: 2,  # CVV (card data: never kept)
    0x3B: 8,  # AID authorisation attribute
    0x3D: 3,  # password, BCD
    0x49: 2,  # currency code, BCD (09 78 = EUR)
    0x87: 2,  # receipt number, BCD (FF FF: "none" / "list the open ones")
    0x88: 3,  # turnover record number
    0x8A: 1,  # ZVT card type
    0x8C: 1,  # card type id of the network operator
    0xA0: 1,  # result code of the host
    0xAA: 3,  # date YYMMDD
    0xBA: 5,  # AID parameter
    0xD0: 1,
    0xD2: 1,
    0xD3: 1,
    0xE0: 1,
    0xE9: 1,
    0xEA: 1,
    0xEB: 8,
    0xF0: 1,
    0xF9: 1,
    0xFA: 1,
    0xFB: 1,
    0xFC: 1,
}
BMP_LLVAR: frozenset[int] = frozenset(
    {0x22, 0x23, 0x2D, 0x8B, 0xA7, 0xD1, *range(0xE1, 0xE9), *range(0xF1, 0xF9)}
)
BMP_LLLVAR: frozenset[int] = frozenset({0x24, 0x2E, 0x3C, 0x60, 0x92, 0x9A, 0xAF})


@dataclass(frozen=True, slots=True)
class Bmp:
    """One BMP: its tag and its value (for LL/LLLVAR without the length, for 06 the contents)."""

    tag: int
    value: bytes


def encode_var_length(n: int, digits: int) -> bytes:
    """An LLVAR (2 digits) or LLLVAR (3 digits) length: one ``F<d>`` byte per decimal digit."""
    text = str(n)
    if n < 0 or len(text) > digits:
        raise LocalProtocolError(f"{n} bytes do not fit a {'L' * digits}VAR")
    return bytes(0xF0 | int(d) for d in text.rjust(digits, "0"))


def _var_length(raw: bytes, at: int, digits: int) -> int:
    if at + digits > len(raw):
        raise RemoteProtocolError("a variable-length BMP is cut short in its length")
    n = 0
    for byte in raw[at : at + digits]:
        if byte & 0xF0 != 0xF0 or byte & 0x0F > 9:
            raise RemoteProtocolError("a variable-length BMP has a malformed length byte")
        n = 10 * n + (byte & 0x0F)
    return n


def encode_tlv_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82, n >> 8, n & 0xFF])
    raise LocalProtocolError(f"TLV length {n} exceeds 65535")


def _tlv_length(raw: bytes, at: int) -> tuple[int, int]:
    """(length, offset of the value) for the TLV length at ``raw[at]``."""
    if at >= len(raw):
        raise RemoteProtocolError("a TLV length is missing")
    first = raw[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    if count not in (1, 2) or at + 1 + count > len(raw):
        raise RemoteProtocolError("a TLV length is malformed or cut short")
    n = int.from_bytes(raw[at + 1 : at + 1 + count], "big")
    return n, at + 1 + count


def encode_bmp(tag: int, value: bytes) -> bytes:
    """One BMP on the wire; the value must have the size its tag requires."""
    if tag == TLV_BMP:
        return bytes([tag]) + encode_tlv_length(len(value)) + value
    if tag in BMP_LLVAR:
        return bytes([tag]) + encode_var_length(len(value), 2) + value
    if tag in BMP_LLLVAR:
        return bytes([tag]) + encode_var_length(len(value), 3) + value
    size = BMP_FIXED_BYTES.get(tag)
    if size is None:
        raise LocalProtocolError(f"BMP {tag:02X} is not known to this codec")
    if len(value) != size:
        raise LocalProtocolError(f"BMP {tag:02X} takes {size} bytes, got {len(value)}")
    return bytes([tag]) + value


def encode_bmps(bmps: Iterable[Bmp]) -> bytes:
    return b"".join(encode_bmp(b.tag, b.value) for b in bmps)


def parse_bmps(data: bytes) -> tuple[Bmp, ...]:
    """Every BMP in ``data``, in order; an unknown tag or a short value is a remote error."""
    out: list[Bmp] = []
    at = 0
    while at < len(data):
        tag = data[at]
        at += 1
        if tag == TLV_BMP:
            n, at = _tlv_length(data, at)
        elif tag in BMP_LLVAR:
            n = _var_length(data, at, 2)
            at += 2
        elif tag in BMP_LLLVAR:
            n = _var_length(data, at, 3)
            at += 3
        elif tag in BMP_FIXED_BYTES:
            n = BMP_FIXED_BYTES[tag]
        else:
            raise RemoteProtocolError(f"unknown BMP {tag:02X}: the rest cannot be parsed")
        if at + n > len(data):
            raise RemoteProtocolError(f"BMP {tag:02X} is cut short")
        out.append(Bmp(tag, data[at : at + n]))
        at += n
    return tuple(out)


# --- TLV --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV item: a primitive one has a ``value``, a constructed one ``children``."""

    tag: int
    value: bytes = b""
    children: tuple[Tlv, ...] = ()

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    def encode(self) -> bytes:
        content = encode_tlv(self.children) if self.constructed else self.value
        return tag_bytes(self.tag) + encode_tlv_length(len(content)) + content


def tag_bytes(tag: int) -> bytes:
    """The wire form of a tag, checking that its continuation bits are consistent."""
    raw = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    multi = raw[0] & 0x1F == 0x1F
    if (
        (len(raw) > 1) != multi
        or any(b & 0x80 == 0 for b in raw[1:-1])
        or (raw[-1] & 0x80 and multi)
    ):
        raise LocalProtocolError(f"{tag:X} is not a well-formed TLV tag")
    return raw


def is_constructed(tag: int) -> bool:
    first = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")[0]
    return bool(first & 0x20)


def _read_tag(raw: bytes, at: int) -> tuple[int, int]:
    if at >= len(raw):
        raise RemoteProtocolError("a TLV tag is missing")
    first = raw[at]
    tag, at = first, at + 1
    if first & 0x1F == 0x1F:
        while True:
            if at >= len(raw):
                raise RemoteProtocolError("a TLV tag is cut short")
            byte = raw[at]
            tag, at = (tag << 8) | byte, at + 1
            if not byte & 0x80:
                break
            if tag > 0xFFFFFF:
                raise RemoteProtocolError("a TLV tag is longer than three bytes")
    return tag, at


def parse_tlv(raw: bytes) -> tuple[Tlv, ...]:
    """The items of a TLV container's contents, constructed items parsed recursively."""
    out: list[Tlv] = []
    at = 0
    while at < len(raw):
        tag, at = _read_tag(raw, at)
        n, at = _tlv_length(raw, at)
        if at + n > len(raw):
            raise RemoteProtocolError(f"TLV item {tag:X} is cut short")
        value = raw[at : at + n]
        at += n
        if is_constructed(tag):
            out.append(Tlv(tag, children=parse_tlv(value)))
        else:
            out.append(Tlv(tag, value))
    return tuple(out)


def encode_tlv(items: Iterable[Tlv]) -> bytes:
    return b"".join(item.encode() for item in items)


def walk_tlv(items: Iterable[Tlv]) -> Iterator[Tlv]:
    """Every item, depth first, constructed ones before their children."""
    for item in items:
        yield item
        yield from walk_tlv(item.children)
