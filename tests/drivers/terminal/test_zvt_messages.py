"""ZVT commands and terminal messages: the reference's real frames, round trips, card data.

Real frames: reference §1/§2 (Portalum #56; EVerest/zvt's recorded Feig cVEND traffic, whose
06 22 the reference gives up to its TLV: the TLV here is what EVerest decodes from that blob),
the open-pre-auth answers of ecrterm's tests, and 04 0F / 06 0F frames from EVerest's tests.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.terminal.zvt import (
    Abort,
    AbortRequest,
    Ack,
    BookTotal,
    CaptureMode,
    Completion,
    EndOfDay,
    Intermediate,
    LocalProtocolError,
    Nak,
    OpenPreAuthEnquiry,
    PartialReversal,
    PreAuthorisation,
    PreAuthReversal,
    PrintBlock,
    PrintLine,
    Registration,
    StatusEnquiry,
    StatusInformation,
    Tlv,
    Unknown,
    decode_apdu,
    decode_message,
    parse_command,
    result_text,
    settlement_command,
)
from drivers.terminal.zvt.commands import Command
from drivers.terminal.zvt.events import RESULT_CODES, mask_pan


def hexb(text: str) -> bytes:
    return bytes.fromhex(text)


def message(text: str) -> object:
    return decode_message(decode_apdu(hexb(text)))


# --- commands: the reference's recorded frames ------------------------------------------------

REAL_COMMANDS: list[tuple[str, Command]] = [
    ("06 00 06 12 34 56 DE 09 78", Registration(password=123456, config_byte=0xDE)),
    (
        "06 22 1E 19 40 49 09 78 04 00 00 00 00 25 00"
        " 06 10 E9 0E 1F 62 02 41 43 1F 63 06 33 38 34 48 48 32",
        PreAuthorisation(
            amount_cents=2500,
            tlv=(Tlv(0xE9, children=(Tlv(0x1F62, b"AC"), Tlv(0x1F63, b"384HH2"))),),
        ),
    ),
    ("06 25 08 19 40 87 02 31 49 09 78", PreAuthReversal(receipt_number=231)),
    ("06 23 03 87 FF FF", OpenPreAuthEnquiry()),
    ("06 50 03 12 34 56", EndOfDay(password=123456)),
]


@pytest.mark.parametrize(("raw", "command"), REAL_COMMANDS, ids=lambda x: str(x)[:5])
def test_real_command_frames_decode_and_encode_byte_for_byte(raw: str, command: Command) -> None:
    assert parse_command(decode_apdu(hexb(raw))) == command
    assert command.to_apdu().encode() == hexb(raw)


def test_other_commands_on_the_wire() -> None:
    assert StatusEnquiry(password=123456).to_apdu().encode() == hexb("05 01 03 12 34 56")
    assert AbortRequest().to_apdu().encode() == hexb("06 B0 00")
    assert PartialReversal(receipt_number=491, release_cents=1205).to_apdu().encode() == hexb(
        "06 23 0F 87 04 91 04 00 00 00 00 12 05 19 40 49 09 78"
    )
    assert BookTotal(receipt_number=10, amount_cents=1000).to_apdu().encode() == hexb(
        "06 24 0F 87 00 10 04 00 00 00 00 10 00 19 40 49 09 78"
    )


def test_commands_refuse_what_the_wire_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        PreAuthorisation(amount_cents=10**12)
    with pytest.raises(LocalProtocolError):
        PartialReversal(receipt_number=10000, release_cents=0)
    with pytest.raises(LocalProtocolError):
        Registration(password=1_000_000)
    with pytest.raises(LocalProtocolError):
        PreAuthorisation(amount_cents=-1)


amounts = st.integers(0, 999_999_999_999)
receipts = st.integers(0, 9999)
currencies = st.integers(0, 9999)
optional_byte = st.none() | st.integers(0, 255)
commands = st.one_of(
    st.builds(
        Registration,
        password=st.integers(0, 999_999),
        config_byte=st.integers(0, 255),
        currency_code=currencies.filter(lambda c: c // 100 not in (3, 6)),
        service_byte=optional_byte,
    ),
    st.builds(
        StatusEnquiry, password=st.none() | st.integers(0, 999_999), service_byte=optional_byte
    ),
    st.builds(
        PreAuthorisation, amount_cents=amounts, currency_code=currencies, payment_type=optional_byte
    ),
    st.builds(
        PartialReversal,
        receipt_number=receipts,
        release_cents=amounts,
        currency_code=currencies,
        payment_type=optional_byte,
    ),
    st.builds(
        BookTotal,
        receipt_number=receipts,
        amount_cents=amounts,
        currency_code=currencies,
        payment_type=optional_byte,
    ),
    st.builds(
        PreAuthReversal,
        receipt_number=receipts,
        currency_code=currencies,
        payment_type=optional_byte,
    ),
    st.builds(EndOfDay, password=st.integers(0, 999_999)),
    st.just(OpenPreAuthEnquiry()),
    st.just(AbortRequest()),
)


@given(command=commands)
def test_every_command_round_trips(command: Command) -> None:
    raw = command.to_apdu().encode()
    assert parse_command(decode_apdu(raw)) == command


# --- terminal messages ----------------------------------------------------------------------------


def test_acks_refusals_and_intermediates() -> None:
    assert message("80 00 00") == Ack()
    assert message("84 9C 00") == Nak(result_code=0x9C)
    assert message("04 FF 02 17 00") == Intermediate(status_code=0x17)  # EVerest blob
    assert message("04 FF 02 0A 45") == Intermediate(status_code=0x0A, timeout_s=45)
    assert message("06 C6 00") == Unknown(cla=0x06, ins=0xC6)


def test_real_status_information_with_tlv_keeps_only_what_is_not_card_data() -> None:
    # EVerest/zvt test: a card read (TLV 4C UID, 1F4C..1F50): no field of ours is card data
    raw = (
        "04 0F 22 27 00 06 1E 4C 0A 00 00 00 04 63 C8 B2 AE 4F 80 1F 4C 01 01"
        " 1F 4D 02 00 03 1F 4F 02 44 00 1F 50 01 00"
    )
    assert message(raw) == StatusInformation(result_code=0)


def test_real_status_information_with_nested_tlv_lists_parses() -> None:
    raw = hexb(
        "04 0F 64 27 00 06 60 4C 0A 00 00 00 00 00 00 08 FF 69 14 1F 45 0C 0C 78 80 74 03 80"
        " 31 C0 73 D6 31 C0 1F 4C 01 01 1F 4D 02 FE 04 1F 4F 02 04 00 1F 50 01 20 60 0B 43 09"
        " A0 00 00 00 59 45 43 01 00 60 0C 43 0A A0 00 00 03 59 10 10 02 80 01 60 0B 43 09 D2"
        " 76 00 00 25 47 41 01 00 60 09 43 07 A0 00 00 00 04 10 10"
    )
    assert decode_message(decode_apdu(raw)) == StatusInformation(result_code=0)


def test_approved_pre_auth_status_information() -> None:
    body = hexb(
        "27 00 04 00 00 00 00 25 00 49 09 78 0C 10 37 20 0D 04 21"
        " 22 F0 F8 47 11 00 EE EE EE 80 04 17 00 02 87 02 49 0B 00 10 12"
        " 19 60 29 52 52 35 35 0E 26 12 8A 05 8C 00 8B F0 F8 67 69 72 6F 63 61 72 64"
        " 3B 30 31 38 33 37 32 00 00"
    )
    status = decode_message(decode_apdu(bytes([0x04, 0x0F, len(body)]) + body))
    assert status == StatusInformation(
        result_code=0,
        amount_cents=2500,
        currency_code=978,
        receipt_number=249,
        trace_number=1012,
        terminal_id="52523535",
        masked_pan="471100******8004",
        payment_type=0x60,
        card_type=5,
        card_name="girocard",
        aid="018372",
        date_mmdd="0421",
        time_hhmmss="103720",
    )
    assert isinstance(status, StatusInformation) and status.approved


def test_completions_after_registration_and_after_a_status_enquiry() -> None:
    assert message("06 0F 0A 19 10 29 52 52 35 35 49 09 78") == Completion(  # EVerest blob
        status_byte=0x10, terminal_id="52523535", currency_code=978
    )
    version = b"GER-APP-v2.0.9;cS02.01.01-10.10-2-2;CC26"
    body = b"\xf0\xf4\xf0" + version + b"\xf0" + bytes.fromhex("06 07 1F 44 04 52 52 35 35")
    raw = bytes([0x06, 0x0F, len(body)]) + body
    assert decode_message(decode_apdu(raw)) == Completion(
        software_version=version.decode(), terminal_status=0xF0, terminal_id="52523535"
    )


def test_print_line_and_print_block() -> None:
    assert message("06 D1 05 80 48 61 6C 6C") == PrintLine(attribute=0x80, text="Hall")
    block = "06 D3 10 06 0E 1F 07 01 02 25 08 07 02 4F 4B 07 02 8E 21"
    assert message(block) == PrintBlock(receipt_type=2, lines=("OK", "Ä!"))  # cp437 8E


# --- case 16: the three forms of the open pre-auth answer ----------------------------------------


@pytest.mark.parametrize(
    ("raw", "open_receipts"),
    [
        ("06 1E 04 B8 87 FF FF", ()),  # none open (reference §2)
        ("06 1E 04 B8 87 01 23", (123,)),  # one, in BMP 87
        ("06 1E 0D B8 06 0A 23 08 08 02 01 23 08 02 45 67", (123, 4567)),  # a TLV list
        ("06 1E 10 B8 87 01 23 06 0A 23 08 08 02 45 67 08 02 78 90", (123, 4567, 7890)),
    ],
)
def test_case16_every_form_of_the_open_pre_auth_answer(
    raw: str, open_receipts: tuple[int, ...]
) -> None:
    answer = message(raw)
    assert answer == Abort(result_code=0xB8, open_receipts=open_receipts)


def test_case07_result_codes_have_names() -> None:
    for code in (0x6C, 0x64, 0xA0, 0xA5, 0xB4, 0xB5, 0xB7, 0xB8):  # the reference's table
        assert code in RESULT_CODES
    assert result_text(0xB4) == "already reversed"
    assert result_text(0x42) == "result code 42"
    assert message("06 1E 01 6C") == Abort(result_code=0x6C)
    assert message("06 1E 03 6F 09 78") == Abort(result_code=0x6F, currency_code=978)


# --- case 12: the final amount ------------------------------------------------------------------


def test_case12_final_amount_zero_releases_and_more_than_pre_auth_is_refused() -> None:
    release = settlement_command(
        CaptureMode.PARTIAL_REVERSAL, receipt_number=7, pre_authorised_cents=2500, final_cents=0
    )
    assert release == PreAuthReversal(receipt_number=7)
    for mode in CaptureMode:
        with pytest.raises(LocalProtocolError, match="never exceeds"):
            settlement_command(mode, receipt_number=7, pre_authorised_cents=2500, final_cents=2501)
    assert settlement_command(
        CaptureMode.PARTIAL_REVERSAL, receipt_number=7, pre_authorised_cents=2500, final_cents=1234
    ) == PartialReversal(receipt_number=7, release_cents=1266)
    assert settlement_command(
        CaptureMode.PARTIAL_REVERSAL, receipt_number=7, pre_authorised_cents=2500, final_cents=2500
    ) == PartialReversal(receipt_number=7, release_cents=0)
    assert settlement_command(
        CaptureMode.BOOK_TOTAL, receipt_number=7, pre_authorised_cents=2500, final_cents=1234
    ) == BookTotal(receipt_number=7, amount_cents=1234)


# --- case 17: no PAN, no card data ---------------------------------------------------------------


def test_case17_pan_is_masked_whatever_the_terminal_sends() -> None:
    assert mask_pan(hexb("55 98 84 EE EE EE 80 74")) == "559884******8074"
    assert mask_pan(hexb("55 98 84 55 55 54 80 74")) == "559884******8074"  # sent in clear
    assert mask_pan(hexb("47 11 00 80 05 75 70 38 00 4F")) == "471100*********8004"
    assert mask_pan(hexb("12 34 56 78")) == "****5678"  # short: the last four only
    assert mask_pan(hexb("12 3F")) == "***"


def test_case17_track_data_expiry_and_sequence_number_are_dropped() -> None:
    track2 = "23 F1 F9 67 25 90 44 11 00 10 00 14 2D 24 12 20 12 38 60 13 86 0F"
    body = hexb("27 00 22 F0 F8 55 98 84 55 55 54 80 74 0E 24 05 17 00 01 " + track2 + " 3A 01 23")
    status = decode_message(decode_apdu(bytes([0x04, 0x0F, len(body)]) + body))
    assert isinstance(status, StatusInformation)
    values = [str(v) for v in dataclasses.asdict(status).values() if v is not None]
    text = repr(status) + " ".join(values)
    for secret in ("5598845555548074", "555554", "2405", "6725904411", "0123"):
        assert secret not in text
    assert status.masked_pan == "559884******8074"
