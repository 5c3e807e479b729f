"""hil: the ZVT wire as the simulated terminal speaks it, written from the reference on its own.

Nothing here comes from ``drivers/``: the CRC is computed bit by bit (the product uses a
table), framing and parsing are separate code, so a mistake cannot pass on both sides.

Serial frame (reference §1): ``10 02`` APDU-with-10-doubled ``10 03`` CRC-lo CRC-hi; the CRC
is CRC-16/KERMIT (reflected 0x1021, init 0) over the unstuffed APDU plus ``03``; the CRC bytes
are not stuffed. A single ``06`` acknowledges a frame, ``15`` rejects it. Over TCP the bare
APDUs travel. APDU: CLASS INSTR LEN data, LEN ``FF lo hi`` when 255 or more.
"""

from __future__ import annotations

from dataclasses import dataclass

DLE, STX, ETX, ACK, NAK = 0x10, 0x02, 0x03, 0x06, 0x15


def crc_kermit(data: bytes) -> int:
    """CRC-16/KERMIT, one bit at a time: poly 0x1021 reflected (0x8408), init 0, no xor out."""
    crc = 0x0000
    for byte in data:
        for bit in range(8):
            mix = (crc ^ (byte >> bit)) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8408
    return crc


def frame(apdu: bytes, *, corrupt_crc: bool = False) -> bytes:
    crc = crc_kermit(apdu + bytes([ETX]))
    if corrupt_crc:
        crc ^= 0x5A5A
    body = bytearray()
    for byte in apdu:
        body.append(byte)
        if byte == DLE:
            body.append(DLE)
    return bytes([DLE, STX]) + bytes(body) + bytes([DLE, ETX, crc & 0xFF, (crc >> 8) & 0xFF])


def apdu(cla: int, ins: int, data: bytes = b"") -> bytes:
    if len(data) >= 0xFF:
        return bytes([cla, ins, 0xFF, len(data) % 256, len(data) // 256]) + data
    return bytes([cla, ins, len(data)]) + data


def apdu_size(buf: bytes | bytearray) -> int | None:
    if len(buf) < 3:
        return None
    if buf[2] < 0xFF:
        return 3 + buf[2]
    if len(buf) < 5:
        return None
    return 5 + buf[3] + 256 * buf[4]


@dataclass(frozen=True, slots=True)
class Received:
    """One thing the serial line carried: "ack", "nak", "frame" (with its APDU) or "bad"."""

    kind: str
    apdu: bytes = b""


class FrameReader:
    """The terminal's receiver: bytes in, ``Received`` items out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._dle = False
        self._crc: bytearray | None = None

    @property
    def mid_frame(self) -> bool:
        return self._in_frame or self._dle

    def reset(self) -> None:
        self._buf.clear()
        self._in_frame = self._dle = False
        self._crc = None

    def feed(self, data: bytes) -> list[Received]:
        out: list[Received] = []
        for byte in data:
            got = self._one(byte)
            if got is not None:
                out.append(got)
        return out

    def _one(self, byte: int) -> Received | None:
        if self._crc is not None:
            self._crc.append(byte)
            if len(self._crc) < 2:
                return None
            body = bytes(self._buf)
            ok = crc_kermit(body + bytes([ETX])) == self._crc[0] + 256 * self._crc[1]
            self.reset()
            return Received("frame", body) if ok else Received("bad")
        if not self._in_frame:
            if self._dle:
                self._dle = False
                if byte == STX:
                    self._in_frame = True
                    self._buf.clear()
                return None
            if byte == ACK:
                return Received("ack")
            if byte == NAK:
                return Received("nak")
            if byte == DLE:
                self._dle = True
            return None
        if self._dle:
            self._dle = False
            if byte == DLE:
                self._buf.append(DLE)
            elif byte == ETX:
                self._crc = bytearray()
            else:
                self.reset()
                return Received("bad")
            return None
        if byte == DLE:
            self._dle = True
        else:
            self._buf.append(byte)
        return None


class ApduReader:
    """The terminal's TCP receiver: a byte stream in, APDUs out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while (size := apdu_size(self._buf)) is not None and len(self._buf) >= size:
            out.append(bytes(self._buf[:size]))
            del self._buf[:size]
        return out


def split_apdu(raw: bytes) -> tuple[int, int, bytes]:
    """(class, instruction, data) of one APDU."""
    if len(raw) >= 5 and raw[2] == 0xFF:
        return raw[0], raw[1], raw[5:]
    return raw[0], raw[1], raw[3:]


# --- BMP building and reading -------------------------------------------------------------------


def bcd(value: int, size: int) -> bytes:
    text = f"{value:0{2 * size}d}"
    if len(text) > 2 * size:
        raise ValueError(f"{value} does not fit {size} BCD bytes")
    return bytes(int(text[i : i + 2], 16) for i in range(0, len(text), 2))


def from_bcd(raw: bytes) -> int:
    return int("".join(f"{b >> 4}{b & 0x0F}" for b in raw) or "0")


def llvar(value: bytes) -> bytes:
    n = len(value)
    return bytes([0xF0 | (n // 10), 0xF0 | (n % 10)]) + value


def lllvar(value: bytes) -> bytes:
    n = len(value)
    return bytes([0xF0 | (n // 100), 0xF0 | (n // 10 % 10), 0xF0 | (n % 10)]) + value


def tlv_length(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    if n < 256:
        return bytes([0x81, n])
    return bytes([0x82, n // 256, n % 256])


def tlv(tag: bytes, value: bytes) -> bytes:
    return tag + tlv_length(len(value)) + value


def tlv_container(content: bytes) -> bytes:
    """BMP 06 around TLV items."""
    return b"\x06" + tlv_length(len(content)) + content


# The BMPs the terminal must read from commands, with the size of each (-2: LLVAR,
# -3: LLLVAR, -1: the TLV container).
_COMMAND_BMPS = {
    0x01: 1,
    0x02: 1,
    0x03: 1,
    0x04: 6,
    0x05: 1,
    0x06: -1,
    0x0B: 3,
    0x0E: 2,
    0x19: 1,
    0x22: -2,
    0x23: -2,
    0x29: 4,
    0x3B: 8,
    0x3C: -3,
    0x49: 2,
    0x87: 2,
    0x8A: 1,
}


def read_bmps(data: bytes) -> dict[int, bytes]:
    """The BMPs of a command's data, by tag (values without their length prefix)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        tag = data[i]
        size = _COMMAND_BMPS.get(tag)
        if size is None:
            raise ValueError(f"BMP {tag:02X} unknown to the terminal")
        i += 1
        if size == -1:
            n = data[i]
            i += 1
            if n & 0x80:
                count = n & 0x7F
                n = int.from_bytes(data[i : i + count], "big")
                i += count
        elif size in (-2, -3):
            digits = -size
            n = int("".join(str(b & 0x0F) for b in data[i : i + digits]))
            i += digits
        else:
            n = size
        if i + n > len(data):
            raise ValueError(f"BMP {tag:02X} cut short")
        out[tag] = data[i : i + n]
        i += n
    return out
