"""ZVT APDUs, BCD, BMPs (fixed, LLVAR, LLLVAR) and the TLV container 06, with round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.terminal.zvt.apdu import (
    BMP_FIXED_BYTES,
    BMP_LLLVAR,
    BMP_LLVAR,
    Apdu,
    Bmp,
    Tlv,
    bcd_decode,
    bcd_encode,
    decode_apdu,
    encode_bmps,
    encode_tlv,
    encode_tlv_length,
    encode_var_length,
    parse_bmps,
    parse_tlv,
    tag_bytes,
)
from drivers.terminal.zvt.errors import LocalProtocolError, RemoteProtocolError
from hil.terminal import wire


@pytest.mark.parametrize("n", [0, 1, 254, 255, 256, 1000, 65535])
def test_case05_lengths_switch_to_ff_lo_hi_from_255(n: int) -> None:
    raw = Apdu(0x06, 0xD3, bytes(n)).encode()
    assert raw == wire.apdu(0x06, 0xD3, bytes(n))
    if n < 255:
        assert raw[2] == n and len(raw) == 3 + n
    else:
        assert raw[2:5] == bytes([0xFF, n & 0xFF, n >> 8]) and len(raw) == 5 + n
    assert decode_apdu(raw) == Apdu(0x06, 0xD3, bytes(n))


def test_apdu_length_disagreeing_with_the_frame_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="announces 4 data bytes, carries 3"):
        decode_apdu(bytes.fromhex("04 0F 04 27 00 87"))
    with pytest.raises(RemoteProtocolError):
        decode_apdu(bytes.fromhex("06 D3 FF 01"))
    with pytest.raises(LocalProtocolError):
        Apdu(0x06, 0xD3, bytes(65536))


def test_bcd_amounts_and_numbers() -> None:
    assert bcd_encode(190, 6) == bytes.fromhex("00 00 00 00 01 90")
    assert bcd_encode(999_999_999_999, 6) == bytes.fromhex("99" * 6)
    assert bcd_decode(bytes.fromhex("00 00 00 00 25 00")) == 2500
    with pytest.raises(LocalProtocolError):
        bcd_encode(1_000_000_000_000, 6)
    with pytest.raises(LocalProtocolError):
        bcd_encode(-1, 2)
    with pytest.raises(RemoteProtocolError, match="not a decimal digit"):
        bcd_decode(b"\x1a")


@given(value=st.integers(0, 10**12 - 1))
def test_bcd_round_trip_and_hil_agrees(value: int) -> None:
    raw = bcd_encode(value, 6)
    assert raw == wire.bcd(value, 6)
    assert bcd_decode(raw) == value == wire.from_bcd(raw)


def test_bmps_fixed_llvar_lllvar_and_tlv() -> None:
    data = (
        bytes.fromhex("04 00 00 00 00 25 00")  # amount: fixed, 6 bytes
        + bytes.fromhex("8B F0 F4")
        + b"visa"  # card name: LLVAR
        + bytes.fromhex("3C F0 F0 F3")
        + b"abc"  # additional text: LLLVAR
        + bytes.fromhex("06 04 1F 07 01 02")  # TLV container
    )
    assert parse_bmps(data) == (
        Bmp(0x04, bytes.fromhex("00 00 00 00 25 00")),
        Bmp(0x8B, b"visa"),
        Bmp(0x3C, b"abc"),
        Bmp(0x06, bytes.fromhex("1F 07 01 02")),
    )
    assert encode_bmps(parse_bmps(data)) == data
    with pytest.raises(RemoteProtocolError, match="cut short"):
        parse_bmps(data[:-1])


def test_an_unknown_bmp_stops_the_parse() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown BMP 99"):
        parse_bmps(bytes.fromhex("27 00 99 01"))


def test_var_and_tlv_lengths() -> None:
    assert encode_var_length(7, 2) == bytes.fromhex("F0 F7")
    assert encode_var_length(123, 3) == bytes.fromhex("F1 F2 F3")
    with pytest.raises(LocalProtocolError):
        encode_var_length(100, 2)
    assert encode_tlv_length(0x7F) == b"\x7f"
    assert encode_tlv_length(0x80) == b"\x81\x80"
    assert encode_tlv_length(0x1234) == b"\x82\x12\x34"
    assert wire.tlv_length(0x80) == b"\x81\x80" and wire.tlv_length(300) == b"\x82\x01\x2c"
    with pytest.raises(RemoteProtocolError, match="malformed length byte"):
        parse_bmps(bytes.fromhex("22 F0 0A 00"))


def test_tlv_tags_one_two_three_bytes_and_constructed_items() -> None:
    raw = bytes.fromhex("1F 07 01 02 25 08 07 02 41 42 07 02 43 44 1F 81 01 00")
    assert parse_tlv(raw) == (
        Tlv(0x1F07, b"\x02"),
        Tlv(0x25, children=(Tlv(0x07, b"AB"), Tlv(0x07, b"CD"))),
        Tlv(0x1F8101, b""),
    )
    assert encode_tlv(parse_tlv(raw)) == raw
    for bad in (0x1F, 0x9F81, 0x1F80):  # continuation missing, too early, or dangling
        with pytest.raises(LocalProtocolError):
            tag_bytes(bad)
    with pytest.raises(RemoteProtocolError):
        parse_tlv(bytes.fromhex("25 05 07 02 41"))  # constructed item cut short
    with pytest.raises(RemoteProtocolError):
        parse_tlv(bytes.fromhex("1F 87"))  # tag cut short


# --- round trips ----------------------------------------------------------------------------

_single = st.integers(0, 0xFF).filter(lambda b: b & 0x1F != 0x1F)
_two = st.tuples(st.integers(0, 0xFF).map(lambda b: b | 0x1F), st.integers(0, 0x7F)).map(
    lambda t: (t[0] << 8) | t[1]
)
_three = st.tuples(
    st.integers(0, 0xFF).map(lambda b: b | 0x1F), st.integers(0x80, 0xFF), st.integers(0, 0x7F)
).map(lambda t: (t[0] << 16) | (t[1] << 8) | t[2])
_tags = st.one_of(_single, _two, _three)


def _constructed(tag: int) -> bool:
    return bool(tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")[0] & 0x20)


_primitive = st.builds(
    Tlv,
    _tags.filter(lambda t: not _constructed(t)),
    st.binary(max_size=300),
)
tlv_items = st.recursive(
    _primitive,
    lambda inner: st.builds(
        lambda tag, kids: Tlv(tag, children=tuple(kids)),
        _tags.filter(_constructed),
        st.lists(inner, max_size=4),
    ),
    max_leaves=12,
)


@given(items=st.lists(tlv_items, max_size=5))
def test_tlv_round_trip(items: list[Tlv]) -> None:
    raw = encode_tlv(items)
    assert parse_tlv(raw) == tuple(items)


_fixed = st.sampled_from(sorted(BMP_FIXED_BYTES)).flatmap(
    lambda tag: st.binary(min_size=BMP_FIXED_BYTES[tag], max_size=BMP_FIXED_BYTES[tag]).map(
        lambda v: Bmp(tag, v)
    )
)
_ll = st.builds(Bmp, st.sampled_from(sorted(BMP_LLVAR)), st.binary(max_size=99))
_lll = st.builds(Bmp, st.sampled_from(sorted(BMP_LLLVAR)), st.binary(max_size=999))
_container = st.lists(tlv_items, max_size=3).map(lambda items: Bmp(0x06, encode_tlv(items)))


@given(bmps=st.lists(st.one_of(_fixed, _ll, _lll, _container), max_size=8))
def test_bmp_list_round_trip(bmps: list[Bmp]) -> None:
    assert parse_bmps(encode_bmps(bmps)) == tuple(bmps)
