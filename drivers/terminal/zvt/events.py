"""Drivers layer (sans-IO ZVT codec): what the terminal says, as typed frozen events.

| APDU     | event               | meaning                                                     |
|----------|---------------------|-------------------------------------------------------------|
| 80 00    | ``Ack``             | command accepted (or, to a 06 B0, the abort is accepted)    |
| 84 xx    | ``Nak``             | command refused, ``xx`` is the result code                  |
| 04 FF    | ``Intermediate``    | "insert card", "please wait"...; may extend T4              |
| 04 0F    | ``StatusInformation``| the outcome: result code, amount, receipt, trace, masked PAN|
| 06 D1    | ``PrintLine``       | one receipt line                                            |
| 06 D3    | ``PrintBlock``      | a whole receipt (TLV 25 of 07 lines)                        |
| 06 0F    | ``Completion``      | the command is over; the terminal is idle again             |
| 06 1E    | ``Abort``           | the command failed with a result code (06 23 FFFF: the list)|

**Card data.** A status information may carry the PAN, track data, expiry date, card sequence
number and chip data. Only the PAN survives, and only masked: digits the terminal sent as ``E``
stay hidden, and whatever it sent, no more than the first six and the last four digits are ever
shown. Everything else card-related is parsed past and dropped here, so it cannot reach a log,
a journal or an exception.

The result-code names are those of ZVT chapter 10 (as EVerest's ``constants.rs`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.terminal.zvt.apdu import (
    TLV_BMP,
    Apdu,
    Tlv,
    bcd_decode,
    bcd_digits,
    parse_bmps,
    parse_tlv,
    walk_tlv,
)
from drivers.terminal.zvt.commands import NO_RECEIPT
from drivers.terminal.zvt.errors import RemoteProtocolError

# Receipts and display texts: ZVT's default character set is code page 437.
TEXT_ENCODING = "cp437"

RESULT_CODES: dict[int, str] = {
    0x00: "success",
    0x64: "card not readable",
    0x65: "card data not present",
    0x66: "processing error",
    0x67: "function not permitted for ec and Maestro cards",
    0x68: "function not permitted for credit and tank cards",
    0x6A: "turnover file full",
    0x6B: "function deactivated (PT not registered)",
    0x6C: "abort via timeout or abort key",
    0x6E: "card in blocked list",
    0x6F: "wrong currency",
    0x71: "credit not sufficient",
    0x72: "chip error",
    0x73: "card data incorrect",
    0x74: "DUKPT engine exhausted",
    0x75: "text not authentic",
    0x76: "PAN not in white list",
    0x77: "end-of-day batch not possible",
    0x78: "card expired",
    0x79: "card not yet valid",
    0x7A: "card unknown",
    0x7B: "fallback to magnetic stripe not possible (girocard)",
    0x7C: "fallback to magnetic stripe not possible",
    0x7D: "communication error",
    0x7E: "fallback to magnetic stripe not possible, debit advice possible",
    0x83: "function not possible",
    0x85: "key missing",
    0x89: "PIN pad defective",
    0x9A: "ZVT protocol error",
    0x9B: "error from dial-up / communication fault",
    0x9C: "please wait",
    0xA0: "receiver not ready",
    0xA1: "remote station does not respond",
    0xA3: "no connection",
    0xA4: "submission of Geldkarte not possible",
    0xA5: "function not allowed due to PCI-DSS/P2PE rules",
    0xB1: "memory full",
    0xB2: "merchant journal full",
    0xB4: "already reversed",
    0xB5: "reversal not possible",
    0xB7: "pre-authorisation incorrect (amount too high) or amount wrong",
    0xB8: "error pre-authorisation",
    0xBF: "voltage supply too low",
    0xC0: "card locking mechanism defective",
    0xC1: "merchant card locked",
    0xC2: "diagnosis required",
    0xC3: "maximum amount exceeded",
    0xC4: "card profile invalid",
    0xC5: "payment method not supported",
    0xC6: "currency not applicable",
    0xC8: "amount too small",
    0xC9: "max. transaction amount too small",
    0xCB: "function only allowed in euro",
    0xCC: "printer not ready",
    0xCD: "cashback not possible",
    0xD2: "function not permitted for service cards",
    0xDC: "card inserted",
    0xDD: "error during card eject",
    0xDE: "error during card insertion",
    0xE0: "remote maintenance activated",
    0xE2: "card reader does not answer",
    0xE3: "shutter closed",
    0xE4: "terminal activation required",
    0xE7: "min. one goods group not found",
    0xE8: "no goods groups table loaded",
    0xE9: "restriction code not permitted",
    0xEA: "card code not permitted",
    0xEB: "function not executable (PIN algorithm unknown)",
    0xEC: "PIN processing not possible",
    0xED: "PIN pad defective",
    0xF0: "open end-of-day batch present",
    0xF1: "ec-cash/Maestro offline error",
    0xF5: "OPT error",
    0xF6: "OPT data not available",
    0xFA: "error transmitting offline transactions",
    0xFB: "turnover data set defective",
    0xFC: "necessary device not present or defective",
    0xFD: "baud rate not supported",
    0xFE: "register unknown",
    0xFF: "system error",
}

# Codes that say "not now" rather than "no": the same request may succeed a little later.
RETRYABLE_RESULT_CODES: frozenset[int] = frozenset({0x7D, 0x9B, 0x9C, 0xA0, 0xA1, 0xA3})

# Terminal status in the status enquiry's completion (the reference's §2).
TERMINAL_STATUS: dict[int, str] = {
    0x00: "ready",
    0x51: "initialisation needed",
    0xC2: "diagnosis needed",
    0xE4: "activation needed",
    0xF0: "end of day needed",
}


def result_text(code: int) -> str:
    return RESULT_CODES.get(code, f"result code {code:02X}")


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """80 00 00: the terminal accepted our command (``to_abort``: our 06 B0)."""

    to_abort: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Nak:
    """84 xx: the terminal refused our command (``to_abort``: refused to abort)."""

    result_code: int
    to_abort: bool = False

    @property
    def result_text(self) -> str:
        return result_text(self.result_code)


@dataclass(frozen=True, slots=True, kw_only=True)
class Intermediate:
    """04 FF: a status to show the customer; ``timeout_s`` (if any) extends our T4 wait."""

    status_code: int
    timeout_s: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusInformation:
    """04 0F: the outcome of a payment command, card data reduced to the masked PAN."""

    result_code: int | None = None
    amount_cents: int | None = None
    currency_code: int | None = None
    receipt_number: int | None = None
    trace_number: int | None = None
    terminal_id: str | None = None
    masked_pan: str | None = None
    payment_type: int | None = None  # BMP 19
    card_type: int | None = None  # BMP 8A, ZVT card type
    card_name: str | None = None  # BMP 8B, e.g. "girocard"
    aid: str | None = None  # BMP 3B, authorisation attribute
    vu_number: str | None = None  # BMP 2A, merchant number at the acquirer
    date_mmdd: str | None = None
    time_hhmmss: str | None = None
    max_pre_auth_cents: int | None = None  # TLV 1F0B (read card)

    @property
    def approved(self) -> bool:
        return self.result_code == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PrintLine:
    """06 D1: one receipt line (``attribute`` bit 0x80 marks the last line of a receipt)."""

    attribute: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PrintBlock:
    """06 D3: a whole receipt as lines; ``receipt_type`` (TLV 1F07) 1 merchant, 2 customer."""

    receipt_type: int | None
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """06 0F: the command ended well; the terminal is master no more.

    After a status enquiry it carries ``software_version`` and ``terminal_status`` (00 ready,
    51, C2, E4, F0: see ``TERMINAL_STATUS``); after other commands optional BMPs.
    """

    result_code: int | None = None
    status_byte: int | None = None
    terminal_id: str | None = None
    currency_code: int | None = None
    software_version: str | None = None
    terminal_status: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """06 1E: the command failed with ``result_code``; B8 also lists the open pre-auths."""

    result_code: int
    open_receipts: tuple[int, ...] = ()
    currency_code: int | None = None

    @property
    def result_text(self) -> str:
        return result_text(self.result_code)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unknown:
    """A message this codec does not know; answered 84 83 (function not possible)."""

    cla: int
    ins: int


PtMessage = (
    Ack | Nak | Intermediate | StatusInformation | PrintLine | PrintBlock | Completion | Abort
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsolicited:
    """A message from the terminal while no command of ours ran (already answered)."""

    message: PtMessage | Unknown


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be decided until more bytes arrive (or a timer fires)."""


NEED_DATA = NeedData()

Event = PtMessage | Unknown | Unsolicited


# --- decoding ---------------------------------------------------------------------------------


def mask_pan(raw: bytes) -> str:
    """BMP 22 as a masked PAN: E nibbles are hidden digits, F pads; then at most 6 + 4 shown."""
    chars = []
    for nibble in raw.hex():
        if nibble == "f":
            continue
        chars.append(nibble if nibble.isdigit() else "*")
    n = len(chars)
    shown = set(range(n - 4, n)) if n > 4 else set()
    if n >= 13:
        shown |= set(range(6))
    return "".join(c if i in shown else "*" for i, c in enumerate(chars))


def _text(raw: bytes) -> str:
    return raw.decode(TEXT_ENCODING)


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip()


def _receipts_from_tlv(items: tuple[Tlv, ...]) -> list[int]:
    out = []
    for item in walk_tlv(items):
        if item.tag == 0x23:
            out += [bcd_decode(c.value) for c in item.children if c.tag == 0x08]
    return out


def _status_information(data: bytes) -> StatusInformation:
    fields: dict[str, object] = {}
    for bmp in parse_bmps(data):
        tag, value = bmp.tag, bmp.value
        if tag == 0x27:
            fields["result_code"] = value[0]
        elif tag == 0x04:
            fields["amount_cents"] = bcd_decode(value)
        elif tag == 0x49:
            fields["currency_code"] = bcd_decode(value)
        elif tag == 0x87 and value != b"\xff\xff":
            fields["receipt_number"] = bcd_decode(value)
        elif tag == 0x0B:
            fields["trace_number"] = bcd_decode(value)
        elif tag == 0x29:
            fields["terminal_id"] = bcd_digits(value)
        elif tag == 0x22:
            fields["masked_pan"] = mask_pan(value)
        elif tag == 0x19:
            fields["payment_type"] = value[0]
        elif tag == 0x8A:
            fields["card_type"] = value[0]
        elif tag == 0x8B:
            fields["card_name"] = _ascii(value)
        elif tag == 0x3B:
            fields["aid"] = value.rstrip(b"\x00").decode("ascii", errors="replace")
        elif tag == 0x2A:
            fields["vu_number"] = _ascii(value)
        elif tag == 0x0D:
            fields["date_mmdd"] = bcd_digits(value)
        elif tag == 0x0C:
            fields["time_hhmmss"] = bcd_digits(value)
        elif tag == TLV_BMP:
            for item in walk_tlv(parse_tlv(value)):
                if item.tag == 0x1F0B:
                    fields["max_pre_auth_cents"] = bcd_decode(item.value)
        # Everything else (track data 23/24/2D, expiry 0E, sequence number 17, CVV 3A, chip
        # data, additional text 3C, other TLV items) is dropped unread.
    return StatusInformation(**fields)  # type: ignore[arg-type]


def _completion(data: bytes) -> Completion:
    # After a status enquiry: software version (LLLVAR, untagged) and the terminal status byte.
    if len(data) >= 4 and all(0xF0 <= b <= 0xF9 for b in data[:3]):
        n = int("".join(str(b & 0x0F) for b in data[:3]))
        if 3 + n + 1 > len(data):
            raise RemoteProtocolError("06 0F: software version or terminal status cut short")
        version = _ascii(data[3 : 3 + n])
        status = data[3 + n]
        rest = data[4 + n :]
        terminal_id = None
        for bmp in parse_bmps(rest):
            if bmp.tag == TLV_BMP:
                for item in walk_tlv(parse_tlv(bmp.value)):
                    if item.tag == 0x1F44:
                        terminal_id = bcd_digits(item.value)
        return Completion(software_version=version, terminal_status=status, terminal_id=terminal_id)
    fields: dict[str, object] = {}
    for bmp in parse_bmps(data):
        if bmp.tag == 0x27:
            fields["result_code"] = bmp.value[0]
        elif bmp.tag == 0x19:
            fields["status_byte"] = bmp.value[0]
        elif bmp.tag == 0x29:
            fields["terminal_id"] = bcd_digits(bmp.value)
        elif bmp.tag == 0x49:
            fields["currency_code"] = bcd_decode(bmp.value)
    return Completion(**fields)  # type: ignore[arg-type]


def _abort(data: bytes) -> Abort:
    if not data:
        raise RemoteProtocolError("06 1E without a result code")
    code, rest = data[0], data[1:]
    currency = None
    if code == 0x6F and len(rest) >= 2 and rest[0] not in (0x87, TLV_BMP):
        currency, rest = bcd_decode(rest[:2]), rest[2:]  # "wrong currency" names the right one
    receipts: list[int] = []
    for bmp in parse_bmps(rest):
        if bmp.tag == 0x87 and bmp.value != b"\xff\xff":
            receipts.append(bcd_decode(bmp.value))
        elif bmp.tag == TLV_BMP:
            receipts += _receipts_from_tlv(parse_tlv(bmp.value))
    unique = tuple(dict.fromkeys(r for r in receipts if r != NO_RECEIPT))
    return Abort(result_code=code, open_receipts=unique, currency_code=currency)


def _print_block(data: bytes) -> PrintBlock:
    receipt_type = None
    lines: list[str] = []
    for bmp in parse_bmps(data):
        if bmp.tag != TLV_BMP:
            continue
        for item in parse_tlv(bmp.value):
            if item.tag == 0x1F07 and item.value:
                receipt_type = item.value[0]
            elif item.tag == 0x25:
                lines += [_text(c.value) for c in item.children if c.tag == 0x07]
    return PrintBlock(receipt_type=receipt_type, lines=tuple(lines))


def decode_message(apdu: Apdu) -> PtMessage | Unknown:
    """The event an APDU from the terminal carries; malformed content is a remote error."""
    cla, ins, data = apdu.cla, apdu.ins, apdu.data
    if cla == 0x80 and ins == 0x00:
        return Ack()
    if cla == 0x84:
        # 84 xx: xx is the result code (84 9C "more time" and 84 9D "change amount" included).
        return Nak(result_code=ins)
    if cla == 0x04 and ins == 0xFF:
        if not data:
            raise RemoteProtocolError("04 FF without a status byte")
        timeout_s = bcd_decode(data[1:2]) if len(data) >= 2 else None
        return Intermediate(status_code=data[0], timeout_s=timeout_s or None)
    if cla == 0x04 and ins == 0x0F:
        return _status_information(data)
    if cla == 0x06 and ins == 0xD1:
        if not data:
            raise RemoteProtocolError("06 D1 without an attribute byte")
        return PrintLine(attribute=data[0], text=_text(data[1:]))
    if cla == 0x06 and ins == 0xD3:
        return _print_block(data)
    if cla == 0x06 and ins == 0x0F:
        return _completion(data)
    if cla == 0x06 and ins == 0x1E:
        return _abort(data)
    return Unknown(cla=cla, ins=ins)
