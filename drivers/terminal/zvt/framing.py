"""Drivers layer (sans-IO ZVT codec): link framing on a serial line and APDU splitting on TCP.

Serial (RS-232, 9600 8N2 by default)::

    10 02 | APDU with every 10 doubled | 10 03 | CRC-lo CRC-hi

The CRC is CRC-16/KERMIT (polynomial 0x1021 reflected = 0x8408, initial value 0, no final
xor; check value 0x2189 for "123456789") over the *unstuffed* APDU followed by the ETX byte 03,
sent low byte first. The CRC bytes are not stuffed; a terminal that stuffs a CRC byte equal to
10 anyway is still understood: the expected CRC tells the two readings apart for the low byte,
and a lone 10 after a complete frame (the stuffing of a high byte) is skipped as noise. Outside
a frame, a single byte 06 acknowledges the last frame (ACK) and 15 asks for it again (NAK);
anything else there is line noise and skipped.

TCP (port 20007): bare APDUs back to back, no DLE, CRC, ACK or NAK; an APDU's own length
(``LEN``, or ``FF lo hi`` for an extended length) delimits it.

Nothing here keeps a clock: the connection (``connection.py``) asks ``SerialDeframer.in_frame``
to run the T1 inter-byte timer and calls ``discard_partial`` when it expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DLE = 0x10
STX = 0x02
ETX = 0x03
ACK = 0x06
NAK = 0x15

# The longest APDU: class, instruction, FF, 2-byte length, 65535 bytes of data.
MAX_APDU_BYTES = 5 + 0xFFFF


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_kermit(data: bytes, crc: int = 0) -> int:
    """CRC-16/KERMIT of ``data`` (pass a previous result as ``crc`` to continue it)."""
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def frame_crc(apdu: bytes) -> int:
    """The CRC a serial frame carries for ``apdu``: over the unstuffed APDU and the ETX."""
    return crc16_kermit(bytes([ETX]), crc16_kermit(apdu))


def encode_frame(apdu: bytes) -> bytes:
    """The serial frame for one APDU: DLE STX, the stuffed APDU, DLE ETX, CRC low then high."""
    crc = frame_crc(apdu)
    stuffed = apdu.replace(bytes([DLE]), bytes([DLE, DLE]))
    return bytes([DLE, STX]) + stuffed + bytes([DLE, ETX, crc & 0xFF, crc >> 8])


# --- what the serial line yields ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkAck:
    """A single 06 outside a frame: the last frame we sent arrived intact."""


@dataclass(frozen=True, slots=True)
class LinkNak:
    """A single 15 outside a frame: the last frame we sent arrived corrupt; send it again."""


@dataclass(frozen=True, slots=True)
class GoodFrame:
    """A complete frame whose CRC matches; ``apdu`` is unstuffed."""

    apdu: bytes


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that cannot be used (CRC mismatch, cut short, bad DLE sequence): NAK it.

    ``reason`` names the fault only; the frame's bytes are dropped (they may hold card data).
    """

    reason: str


SerialItem = LinkAck | LinkNak | GoodFrame | BadFrame


class _State(Enum):
    HUNT = "hunt"  # between frames
    HUNT_DLE = "hunt_dle"  # a DLE between frames: STX starts a frame
    DATA = "data"  # inside a frame
    DATA_DLE = "data_dle"  # a DLE inside a frame: DLE (data), ETX (end) or STX (restart)
    CRC = "crc"  # after DLE ETX: the two CRC bytes (three when a terminal stuffed one)


class SerialDeframer:
    """Bytes from the serial line in, ``SerialItem``s out; keeps partial frames between calls."""

    def __init__(self, *, max_apdu_bytes: int = MAX_APDU_BYTES) -> None:
        self._max = max_apdu_bytes
        self._state = _State.HUNT
        self._apdu = bytearray()
        self._crc = bytearray()
        self._pushback: int | None = None
        self.junk_bytes = 0  # bytes outside any frame that were neither ACK nor NAK

    @property
    def in_frame(self) -> bool:
        """A frame has started and not ended: the T1 inter-byte timer runs."""
        return self._state in (_State.DATA, _State.DATA_DLE, _State.CRC) or (
            self._state is _State.HUNT_DLE
        )

    def discard_partial(self) -> BadFrame | None:
        """T1 expired: drop the frame in progress (a BadFrame to NAK), if it had begun."""
        started = self._state in (_State.DATA, _State.DATA_DLE, _State.CRC)
        if self._state is _State.HUNT_DLE:
            self.junk_bytes += 1
        self._reset()
        return BadFrame("frame cut short (T1 expired between bytes)") if started else None

    def feed(self, data: bytes) -> list[SerialItem]:
        items: list[SerialItem] = []
        for byte in data:
            item = self._byte(byte)
            if item is not None:
                items.append(item)
                # A CRC check that looked at a third byte that was not part of the frame
                # hands that byte back to the hunt.
                if self._pushback is not None:
                    again, self._pushback = self._pushback, None
                    more = self._byte(again)
                    if more is not None:
                        items.append(more)
        return items

    def _reset(self) -> None:
        self._state = _State.HUNT
        self._apdu.clear()
        self._crc.clear()

    def _byte(self, byte: int) -> SerialItem | None:
        state = self._state
        if state is _State.HUNT:
            if byte == ACK:
                return LinkAck()
            if byte == NAK:
                return LinkNak()
            if byte == DLE:
                self._state = _State.HUNT_DLE
            else:
                self.junk_bytes += 1
            return None
        if state is _State.HUNT_DLE:
            if byte == STX:
                self._state = _State.DATA
                self._apdu.clear()
            elif byte == DLE:
                self.junk_bytes += 1  # stay: this DLE may start a frame
            else:
                # A lone DLE (noise, or a terminal's stuffing of a CRC byte 10 that already
                # matched): drop it, and read this byte afresh (it may be an ACK or NAK).
                self.junk_bytes += 1
                self._state = _State.HUNT
                return self._byte(byte)
            return None
        if state is _State.DATA:
            if byte == DLE:
                self._state = _State.DATA_DLE
                return None
            self._apdu.append(byte)
            if len(self._apdu) > self._max:
                self._reset()
                return BadFrame("frame longer than the longest APDU")
            return None
        if state is _State.DATA_DLE:
            if byte == DLE:
                self._apdu.append(DLE)
                self._state = _State.DATA
                return None
            if byte == ETX:
                self._state = _State.CRC
                self._crc.clear()
                return None
            if byte == STX:
                # A new frame began before this one ended: this one is lost, the new one counts.
                self._apdu.clear()
                self._state = _State.DATA
                return BadFrame("frame cut short (a new frame began)")
            self._reset()
            return BadFrame("invalid DLE sequence inside a frame")
        return self._crc_byte(byte)

    def _crc_byte(self, byte: int) -> SerialItem | None:
        self._crc.append(byte)
        if len(self._crc) < 2:
            return None
        expected = frame_crc(bytes(self._apdu))
        lo, hi = expected & 0xFF, expected >> 8
        got = bytes(self._crc)
        if len(got) == 2:
            if got == bytes([lo, hi]):
                return self._good()
            stuffed_lo = lo == DLE and got == bytes([DLE, DLE])
            stuffed_hi = hi == DLE and got == bytes([lo, DLE])
            if stuffed_lo or stuffed_hi:
                return None  # a third byte decides
            self._reset()
            return BadFrame("CRC mismatch")
        # Three bytes: a terminal that stuffs a CRC byte equal to DLE.
        if (lo == DLE and byte == hi) or (hi == DLE and byte == DLE):
            return self._good()
        self._reset()
        self._pushback = byte
        return BadFrame("CRC mismatch")

    def _good(self) -> GoodFrame:
        apdu = bytes(self._apdu)
        self._reset()
        return GoodFrame(apdu)


# --- TCP ------------------------------------------------------------------------------------


def apdu_total_length(buffer: bytes | bytearray) -> int | None:
    """The length of the APDU at the start of ``buffer``, or None until its header is complete."""
    if len(buffer) < 3:
        return None
    if buffer[2] != 0xFF:
        return 3 + buffer[2]
    if len(buffer) < 5:
        return None
    return 5 + (buffer[3] | (buffer[4] << 8))


class ApduSplitter:
    """A TCP byte stream in, whole APDUs out (their lengths delimit them)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer.extend(data)
        out: list[bytes] = []
        while True:
            total = apdu_total_length(self._buffer)
            if total is None or len(self._buffer) < total:
                return out
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]
