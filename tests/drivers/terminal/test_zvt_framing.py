"""ZVT link framing: CRC-16/KERMIT, DLE stuffing, the serial deframer and the TCP splitter.

The verified vector (reference §1, Portalum issue #56, a PAYONE P400) must pass; round trips
run against hil's independent framing too, in both directions.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.terminal.zvt.apdu import Apdu, decode_apdu
from drivers.terminal.zvt.framing import (
    ApduSplitter,
    BadFrame,
    GoodFrame,
    LinkAck,
    LinkNak,
    SerialDeframer,
    crc16_kermit,
    encode_frame,
    frame_crc,
)
from hil.terminal import wire

VERIFIED_FRAME = bytes.fromhex("10 02 06 01 07 04 00 00 00 00 01 90 10 03 76 57")
VERIFIED_APDU = bytes.fromhex("06 01 07 04 00 00 00 00 01 90")  # authorisation EUR 1.90


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        if at >= len(data):
            break
        out.append(data[at : at + size])
        at += size
    if at < len(data):
        out.append(data[at:])
    return out


def test_crc16_kermit_check_value() -> None:
    assert crc16_kermit(b"123456789") == 0x2189  # the catalogue's check value
    assert wire.crc_kermit(b"123456789") == 0x2189  # hil's bitwise implementation agrees


def test_verified_vector_portalum_56_encodes_and_decodes() -> None:
    assert encode_frame(VERIFIED_APDU) == VERIFIED_FRAME
    assert frame_crc(VERIFIED_APDU) == 0x5776  # sent low byte first: 76 57
    assert SerialDeframer().feed(VERIFIED_FRAME) == [GoodFrame(VERIFIED_APDU)]
    apdu = decode_apdu(VERIFIED_APDU)
    assert (apdu.cla, apdu.ins, apdu.data.hex()) == (0x06, 0x01, "04000000000190")


def test_verified_vector_with_one_bit_flipped_is_a_bad_frame() -> None:
    for i in range(2, len(VERIFIED_FRAME)):
        if i in (12, 13):  # DLE ETX: flipping those makes a different (unterminated) frame
            continue
        broken = bytearray(VERIFIED_FRAME)
        broken[i] ^= 0x01
        items = SerialDeframer().feed(bytes(broken))
        assert not any(isinstance(x, GoodFrame) for x in items), i


def test_case03_dle_in_the_amount_and_receipt_is_doubled() -> None:
    apdu = bytes.fromhex("06 23 0A 87 00 10 04 00 00 00 00 10 00")  # receipt 0010, EUR 10.00
    framed = encode_frame(apdu)
    assert framed.count(b"\x10\x10") == 2
    assert framed == wire.frame(apdu)
    assert SerialDeframer().feed(framed) == [GoodFrame(apdu)]


def _apdu_with_crc_byte(byte: int, position: int) -> bytes:
    """A receipt-number APDU whose CRC has ``byte`` at ``position`` (0 low, 1 high)."""
    for receipt in range(10000):
        apdu = bytes.fromhex("06 25 03 87") + bytes.fromhex(f"{receipt:04d}")
        crc = frame_crc(apdu)
        if (crc >> (8 * position)) & 0xFF == byte:
            return apdu
    raise AssertionError("no such receipt number")


def test_case03_crc_bytes_equal_to_10_or_03_are_not_stuffed_and_still_parse() -> None:
    for byte in (0x10, 0x03):
        for position in (0, 1):
            apdu = _apdu_with_crc_byte(byte, position)
            framed = encode_frame(apdu)
            assert framed[-2 + position] == byte and framed.endswith(
                bytes([frame_crc(apdu) & 0xFF, frame_crc(apdu) >> 8])
            )
            assert framed == wire.frame(apdu)
            # followed by an ACK byte and another frame: nothing is swallowed
            items = SerialDeframer().feed(framed + b"\x06" + framed)
            assert items == [GoodFrame(apdu), LinkAck(), GoodFrame(apdu)]


def test_case03_a_terminal_that_stuffs_a_crc_byte_of_10_is_understood() -> None:
    for position in (0, 1):
        apdu = _apdu_with_crc_byte(0x10, position)
        framed = encode_frame(apdu)
        stuffed = framed[:-2] + framed[-2:].replace(b"\x10", b"\x10\x10")
        assert len(stuffed) == len(framed) + 1
        assert SerialDeframer().feed(stuffed + b"\x15") == [GoodFrame(apdu), LinkNak()]


def test_case04_junk_ack_nak_and_a_truncated_frame() -> None:
    d = SerialDeframer()
    good = encode_frame(bytes.fromhex("80 00 00"))
    items = d.feed(b"\xff\x00\x06\x15\x10\x41" + good[:5] + good)
    assert items == [
        LinkAck(),
        LinkNak(),
        BadFrame("frame cut short (a new frame began)"),
        GoodFrame(bytes.fromhex("80 00 00")),
    ]
    assert d.junk_bytes == 4  # ff 00, and the DLE + 41 that started nothing


def test_case04_t1_discards_a_partial_frame() -> None:
    d = SerialDeframer()
    assert d.feed(encode_frame(VERIFIED_APDU)[:6]) == []
    assert d.in_frame
    assert d.discard_partial() == BadFrame("frame cut short (T1 expired between bytes)")
    assert not d.in_frame and d.discard_partial() is None
    assert d.feed(VERIFIED_FRAME) == [GoodFrame(VERIFIED_APDU)]


def test_a_crc_mismatch_is_a_bad_frame_and_the_next_frame_still_parses() -> None:
    d = SerialDeframer()
    bad = wire.frame(VERIFIED_APDU, corrupt_crc=True)
    assert d.feed(bad + VERIFIED_FRAME) == [BadFrame("CRC mismatch"), GoodFrame(VERIFIED_APDU)]


def test_case05_extended_length_apdus_split_on_tcp() -> None:
    long = Apdu(0x06, 0xD3, bytes(300)).encode()
    assert long[:5] == bytes([0x06, 0xD3, 0xFF, 300 & 0xFF, 300 >> 8])
    short = bytes.fromhex("80 00 00")
    s = ApduSplitter()
    assert s.feed(long[:4]) == []
    assert s.feed(long[4:] + short[:1]) == [long]
    assert s.feed(short[1:]) == [short] and s.pending_bytes == 0


@given(apdu=st.binary(min_size=3, max_size=400), sizes=st.lists(st.integers(1, 64)))
def test_any_apdu_survives_framing_in_any_chunking(apdu: bytes, sizes: list[int]) -> None:
    framed = encode_frame(apdu)
    assert framed == wire.frame(apdu)  # the two implementations agree byte for byte
    d = SerialDeframer()
    items = [item for part in chunks(framed, sizes) for item in d.feed(part)]
    assert items == [GoodFrame(apdu)]
    reader = wire.FrameReader()
    assert reader.feed(framed) == [wire.Received("frame", apdu)]


@given(
    datas=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    sizes=st.lists(st.integers(1, 100)),
)
def test_any_apdu_stream_splits_on_tcp(datas: list[bytes], sizes: list[int]) -> None:
    apdus = [Apdu(0x04, 0x0F, d).encode() for d in datas]
    assert apdus == [wire.apdu(0x04, 0x0F, d) for d in datas]
    s = ApduSplitter()
    got = [a for part in chunks(b"".join(apdus), sizes) for a in s.feed(part)]
    assert got == apdus
    assert [decode_apdu(a).data for a in got] == datas
