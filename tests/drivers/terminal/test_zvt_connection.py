"""The ZVT connection state machine, sans-IO: bytes and a hand-driven clock, no port, no sleep.

The terminal's side of each exchange is written with hil's own framing (``hil.terminal.wire``),
so these tests also check that the codec and the simulator agree on the wire. Tests named
``test_caseNN_...`` are the reference's §8 failure cases at this layer.
"""

from __future__ import annotations

import pytest

from drivers.terminal.zvt import (
    Abort,
    AbortRequest,
    Ack,
    Completion,
    Connection,
    Framing,
    Intermediate,
    LocalProtocolError,
    Nak,
    NeedData,
    PreAuthorisation,
    PrintBlock,
    RemoteProtocolError,
    State,
    StatusEnquiry,
    StatusInformation,
    Timeouts,
    Unknown,
    Unsolicited,
    ZvtTimeout,
)
from drivers.terminal.zvt.events import Event
from hil.terminal import wire

T = Timeouts(t1_s=0.1, t3_s=0.5, t4_s=2.0)
ACK_BYTE, NAK_BYTE = b"\x06", b"\x15"
PT_ACK = wire.apdu(0x80, 0x00)
ECR_ACK_FRAME = wire.frame(PT_ACK)
STATUS_OK = wire.apdu(
    0x04, 0x0F, b"\x27\x00\x04" + wire.bcd(2500, 6) + b"\x87" + wire.bcd(7, 2) + b"\x0b\x00\x00\x42"
)
COMPLETION = wire.apdu(0x06, 0x0F, b"\x27\x00")


def serial() -> Connection:
    return Connection(framing=Framing.SERIAL, timeouts=T)


def drain(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while not isinstance(event := conn.next_event(), NeedData):
        out.append(event)
    return out


def started(conn: Connection, now_s: float = 0.0) -> None:
    """A pre-auth sent, link-acked and accepted with 80 00 00."""
    out = conn.send(PreAuthorisation(amount_cents=2500), now_s=now_s)
    assert out == wire.frame(PreAuthorisation(amount_cents=2500).to_apdu().encode())
    conn.receive_data(ACK_BYTE, now_s=now_s + 0.01)
    conn.receive_data(wire.frame(PT_ACK), now_s=now_s + 0.02)
    assert drain(conn) == [Ack()]
    assert conn.data_to_send() == ACK_BYTE  # our link ACK for the terminal's 80 00 00
    assert conn.state is State.AWAITING_COMPLETION


def test_pre_auth_happy_path_on_a_serial_line() -> None:
    conn = serial()
    started(conn)
    conn.receive_data(wire.frame(STATUS_OK), now_s=0.1)
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation)
    assert (status.amount_cents, status.receipt_number, status.trace_number) == (2500, 7, 42)
    assert conn.data_to_send() == ACK_BYTE + ECR_ACK_FRAME  # link ACK, then our 80 00 00
    assert not conn.link_idle
    conn.receive_data(ACK_BYTE, now_s=0.11)
    assert conn.link_idle
    conn.receive_data(wire.frame(COMPLETION), now_s=0.2)
    assert drain(conn) == [Completion(result_code=0)]
    assert conn.data_to_send() == ACK_BYTE + ECR_ACK_FRAME
    assert conn.state is State.IDLE and conn.command is None
    conn.receive_data(ACK_BYTE, now_s=0.21)
    assert conn.link_idle and conn.timeout_deadline(0.3) is None
    assert conn.counters.retransmissions == 0


def test_tcp_carries_bare_apdus_without_link_bytes() -> None:
    conn = Connection(framing=Framing.TCP, timeouts=T)
    out = conn.send(StatusEnquiry(password=123456), now_s=0.0)
    assert out == bytes.fromhex("05 01 03 12 34 56")
    assert conn.timeout_deadline(0.0) == pytest.approx(0.5)  # T3 for 80 00 00 from the write
    conn.receive_data(PT_ACK + COMPLETION[:2], now_s=0.1)  # an APDU and a half
    assert drain(conn) == [Ack()]
    conn.receive_data(COMPLETION[2:], now_s=0.2)
    assert drain(conn) == [Completion(result_code=0)]
    assert conn.data_to_send() == PT_ACK  # 80 00 00, no 06 byte on TCP


def test_tcp_link_closed_mid_command_is_a_remote_error() -> None:
    conn = Connection(framing=Framing.TCP, timeouts=T)
    conn.send(PreAuthorisation(amount_cents=100), now_s=0.0)
    conn.receive_data(b"", now_s=0.1)
    with pytest.raises(RemoteProtocolError) as err:
        conn.next_event()
    assert err.value.command_delivered


def test_case01_bad_crc_is_nakked_and_the_retransmission_accepted() -> None:
    conn = serial()
    started(conn)
    conn.receive_data(wire.frame(STATUS_OK, corrupt_crc=True), now_s=0.1)
    assert drain(conn) == []
    assert conn.data_to_send() == NAK_BYTE
    conn.receive_data(wire.frame(STATUS_OK), now_s=0.15)
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation) and status.receipt_number == 7
    assert conn.counters.bad_frames_received == 1


def test_case01_gives_up_after_three_corrupt_frames_in_a_row() -> None:
    conn = serial()
    started(conn)
    for i in range(3):
        conn.receive_data(wire.frame(STATUS_OK, corrupt_crc=True), now_s=0.1 + i / 100)
        assert conn.data_to_send() == NAK_BYTE
        assert drain(conn) == []
    conn.receive_data(wire.frame(STATUS_OK, corrupt_crc=True), now_s=0.2)
    with pytest.raises(RemoteProtocolError, match="4 corrupt frames") as err:
        conn.next_event()
    assert err.value.command_delivered
    assert conn.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        conn.send(StatusEnquiry(), now_s=0.3)


def test_case02_nak_then_the_frame_goes_again_and_succeeds() -> None:
    conn = serial()
    frame = conn.send(StatusEnquiry(), now_s=0.0)
    conn.receive_data(NAK_BYTE, now_s=0.01)
    assert conn.data_to_send() == frame
    conn.receive_data(NAK_BYTE, now_s=0.02)
    assert conn.data_to_send() == frame
    conn.receive_data(ACK_BYTE + wire.frame(PT_ACK), now_s=0.03)
    assert drain(conn) == [Ack()]
    assert conn.counters.naks_received == 2 and conn.counters.retransmissions == 2


def test_case02_no_ack_within_t3_repeats_three_times_then_fails() -> None:
    conn = serial()
    frame = conn.send(PreAuthorisation(amount_cents=2500), now_s=0.0)
    assert conn.timeout_deadline(0.0) == pytest.approx(0.5)
    for attempt in range(1, 4):
        deadline = conn.timeout_deadline(0.5 * attempt)
        assert conn.data_to_send() == frame, f"repeat {attempt}"
        assert deadline == pytest.approx(0.5 * attempt + 0.5)
        assert drain(conn) == []
    assert conn.timeout_deadline(2.0) is None
    with pytest.raises(ZvtTimeout) as err:
        conn.next_event()
    assert err.value.timer == "T3" and err.value.command_delivered
    assert "4 transmissions" in str(err.value)
    assert conn.counters.t3_expiries == 4


def test_case02_no_80_00_00_within_t3_after_the_ack_byte() -> None:
    conn = serial()
    conn.send(StatusEnquiry(), now_s=0.0)
    conn.receive_data(ACK_BYTE, now_s=0.1)
    assert conn.timeout_deadline(0.2) == pytest.approx(0.6)
    conn.timeout_deadline(0.6)
    with pytest.raises(ZvtTimeout, match="no 80 00 00") as err:
        conn.next_event()
    assert err.value.timer == "T3"


def test_case03_dle_in_the_data_is_stuffed_and_read_back() -> None:
    conn = serial()
    started(conn)
    ten_euro = wire.apdu(0x04, 0x0F, b"\x27\x00\x04" + wire.bcd(1000, 6) + b"\x87\x00\x10")
    framed = wire.frame(ten_euro)
    assert b"\x10\x10" in framed[2:-4]  # both 10 bytes doubled on the wire
    conn.receive_data(framed, now_s=0.1)
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation)
    assert (status.amount_cents, status.receipt_number) == (1000, 10)


def test_case04_junk_before_the_frame_is_skipped() -> None:
    conn = serial()
    started(conn)
    conn.receive_data(b"\x00\xff\x42\x10\x41" + wire.frame(STATUS_OK), now_s=0.1)
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation)
    assert conn.counters.junk_bytes == 5
    assert conn.data_to_send() == ACK_BYTE + ECR_ACK_FRAME


def test_case04_a_frame_cut_short_is_nakked_when_t1_expires() -> None:
    conn = serial()
    started(conn)
    whole = wire.frame(STATUS_OK)
    conn.receive_data(whole[:9], now_s=0.10)
    assert conn.timeout_deadline(0.15) == pytest.approx(0.20)  # T1 after the last byte
    conn.timeout_deadline(0.21)
    assert conn.data_to_send() == NAK_BYTE
    conn.receive_data(whole, now_s=0.3)  # the terminal repeats it
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation)


def test_case04_a_new_frame_inside_a_frame_drops_the_first() -> None:
    conn = serial()
    started(conn)
    conn.receive_data(wire.frame(STATUS_OK)[:7] + wire.frame(STATUS_OK), now_s=0.1)
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation)
    assert conn.data_to_send() == NAK_BYTE + ACK_BYTE + ECR_ACK_FRAME


def test_case05_an_extended_length_text_block_arrives_whole() -> None:
    conn = serial()
    started(conn)
    lines = [f"receipt line {i:02d} ....................".encode() for i in range(20)]
    items = b"".join(wire.tlv(b"\x07", line) for line in lines)
    block = wire.apdu(0x06, 0xD3, wire.tlv_container(wire.tlv(b"\x25", items)))
    assert block[2] == 0xFF  # FF lo hi
    conn.receive_data(wire.frame(block), now_s=0.1)
    (printed,) = drain(conn)
    assert isinstance(printed, PrintBlock) and len(printed.lines) == 20


def test_case06_each_intermediate_restarts_t4_and_its_timeout_extends_it() -> None:
    conn = serial()
    started(conn, now_s=0.0)
    assert conn.response_deadline_s == pytest.approx(2.02)
    conn.receive_data(wire.frame(wire.apdu(0x04, 0xFF, b"\x17")), now_s=1.5)
    assert drain(conn) == [Intermediate(status_code=0x17)]
    assert conn.response_deadline_s == pytest.approx(3.5)
    conn.receive_data(ACK_BYTE, now_s=1.51)
    conn.receive_data(wire.frame(wire.apdu(0x04, 0xFF, b"\x17\x30")), now_s=3.0)  # 30 s (BCD)
    assert drain(conn) == [Intermediate(status_code=0x17, timeout_s=30)]
    assert conn.response_deadline_s == pytest.approx(33.0)
    conn.receive_data(ACK_BYTE, now_s=3.01)
    assert conn.timeout_deadline(32.9) == pytest.approx(33.0)


def test_case06_t4_expires_after_a_pre_auth() -> None:
    conn = serial()
    started(conn, now_s=0.0)
    assert conn.timeout_deadline(2.0) == pytest.approx(2.02)
    conn.timeout_deadline(2.03)
    with pytest.raises(ZvtTimeout) as err:
        conn.next_event()
    assert err.value.timer == "T4" and err.value.command_delivered


def test_case07_a_refusal_and_an_abort_end_the_command() -> None:
    conn = serial()
    conn.send(PreAuthorisation(amount_cents=2500), now_s=0.0)
    conn.receive_data(ACK_BYTE + wire.frame(wire.apdu(0x84, 0xA0)), now_s=0.1)
    assert drain(conn) == [Nak(result_code=0xA0)]
    assert conn.state is State.IDLE
    conn.data_to_send()
    started(conn, now_s=1.0)
    conn.receive_data(wire.frame(wire.apdu(0x06, 0x1E, b"\x64")), now_s=1.1)
    (abort,) = drain(conn)
    assert isinstance(abort, Abort) and abort.result_code == 0x64
    assert abort.result_text == "card not readable"
    assert conn.state is State.IDLE


def test_case15_a_message_while_idle_is_answered_and_reported() -> None:
    conn = serial()
    conn.receive_data(wire.frame(wire.apdu(0x04, 0xFF, b"\x17")), now_s=0.0)
    assert drain(conn) == [Unsolicited(message=Intermediate(status_code=0x17))]
    assert conn.data_to_send() == ACK_BYTE + ECR_ACK_FRAME
    conn.receive_data(wire.frame(wire.apdu(0x06, 0x99, b"\x01")), now_s=0.1)
    assert drain(conn) == [Unsolicited(message=Unknown(cla=0x06, ins=0x99))]
    conn.receive_data(ACK_BYTE, now_s=0.11)  # for our 80 00 00
    assert conn.data_to_send() == ACK_BYTE + wire.frame(wire.apdu(0x84, 0x83))
    assert conn.state is State.IDLE


def test_an_unknown_message_mid_command_gets_84_83_and_t4_restarts() -> None:
    conn = serial()
    started(conn)
    conn.receive_data(wire.frame(wire.apdu(0x06, 0xD8, b"\x00")), now_s=1.0)
    assert drain(conn) == [Unknown(cla=0x06, ins=0xD8)]
    assert conn.data_to_send() == ACK_BYTE + wire.frame(wire.apdu(0x84, 0x83))
    assert conn.response_deadline_s == pytest.approx(3.0)


def test_abort_request_is_answered_then_the_command_ends_6c() -> None:
    conn = serial()
    with pytest.raises(LocalProtocolError, match="no command"):
        conn.send(AbortRequest(), now_s=0.0)
    started(conn)
    out = conn.send(AbortRequest(), now_s=0.5)
    assert out == wire.frame(bytes.fromhex("06 B0 00"))
    with pytest.raises(LocalProtocolError, match="already pending"):
        conn.send(AbortRequest(), now_s=0.5)
    conn.receive_data(ACK_BYTE + wire.frame(PT_ACK), now_s=0.6)
    assert drain(conn) == [Ack(to_abort=True)]
    assert conn.data_to_send() == ACK_BYTE  # an 80 00 00 is not answered with 80 00 00
    conn.receive_data(wire.frame(wire.apdu(0x06, 0x1E, b"\x6c")), now_s=0.7)
    assert drain(conn) == [Abort(result_code=0x6C)]


def test_a_second_command_while_one_runs_is_a_local_error() -> None:
    conn = serial()
    started(conn)
    with pytest.raises(LocalProtocolError, match="still running"):
        conn.send(StatusEnquiry(), now_s=0.1)
    assert conn.state is State.AWAITING_COMPLETION  # the running command is unharmed


def test_our_last_80_00_00_unconfirmed_is_given_up_without_failing() -> None:
    conn = serial()
    started(conn)
    conn.receive_data(wire.frame(COMPLETION), now_s=0.1)
    assert drain(conn) == [Completion(result_code=0)]
    conn.data_to_send()
    for k in range(1, 5):
        conn.timeout_deadline(0.1 + 0.5 * k)
    assert drain(conn) == []  # no error: the command's result is already known
    assert conn.link_idle and conn.counters.unconfirmed_acks == 1
    conn.send(StatusEnquiry(), now_s=3.0)  # and the next command can go


def test_errors_name_the_fault_never_the_frame() -> None:
    conn = serial()
    started(conn)
    pan_frame = wire.apdu(0x04, 0x0F, b"\x22\xf0\xf8" + bytes.fromhex("5598845555548074"))
    conn.receive_data(wire.frame(pan_frame), now_s=0.1)  # LLVAR length F0 F8
    (status,) = drain(conn)
    assert isinstance(status, StatusInformation)
    assert status.masked_pan == "559884******8074"  # sent in clear, kept masked
    broken = wire.apdu(0x04, 0x0F, b"\x22\xf0\xf9" + bytes.fromhex("5598845555548074"))
    conn.receive_data(wire.frame(broken), now_s=0.2)
    with pytest.raises(RemoteProtocolError) as err:
        conn.next_event()
    assert "5598" not in str(err.value) and "8074" not in str(err.value)
