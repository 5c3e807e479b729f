"""Drivers layer (sans-IO ZVT codec): the commands the ECR (evsite) sends to the terminal.

Each command is a frozen value with ``to_apdu()``; ``parse_command`` reads one back (tests,
traces, and the reference's recorded frames). The BMP order follows recorded traffic where the
reference has it (Registration, Pre-authorisation, Pre-auth reversal, End of day); terminals
accept any order.

| code     | command               | data                                                      |
|----------|-----------------------|-----------------------------------------------------------|
| 06 00    | Registration          | password (3 BCD), config byte, currency (2 BCD) [03] [06] |
| 05 01    | Status enquiry        | [password] [03 service byte]                              |
| 06 22    | Pre-authorisation     | 19 payment type, 49 currency, 04 amount [06]              |
| 06 23    | Partial reversal      | 87 receipt, 04 amount **to release** [19] [49]            |
| 06 23    | Open pre-auth enquiry | 87 FF FF (no real receipt: the terminal lists open ones)  |
| 06 24    | Book total            | 87 receipt, 04 amount **used** [19] [49]                  |
| 06 25    | Pre-auth reversal     | 19, 87 receipt, 49 (releases everything)                  |
| 06 50    | End of day            | password                                                  |
| 06 B0    | Abort                 | (none) - only while a command runs                        |

``settlement_command`` turns "pre-authorised P, the session cost F" into the one command the
terminal profile wants: 06 25 when F is 0, else 06 23 releasing P - F or 06 24 booking F. It
refuses F > P: a capture never exceeds its pre-authorisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from drivers.terminal.zvt.apdu import (
    TLV_BMP,
    Apdu,
    Bmp,
    Tlv,
    bcd_decode,
    bcd_encode,
    encode_bmps,
    encode_tlv,
    parse_bmps,
    parse_tlv,
)
from drivers.terminal.zvt.errors import LocalProtocolError, RemoteProtocolError

EUR = 978
MAX_AMOUNT_CENTS = 999_999_999_999  # 6 bytes of BCD
NO_RECEIPT = 0xFFFF  # BMP 87 = FF FF: not a BCD number; "none" / "list the open ones"
PAYMENT_TYPE_TERMINAL_DECIDES = 0x40  # BMP 19 as recorded in Feig cVEND traffic

# Registration config byte (ecrterm ``ConfigByte``; the reference's §2).
CONFIG_ECR_PRINTS_PAYMENT_RECEIPT = 0x02
CONFIG_ECR_PRINTS_ADMIN_RECEIPT = 0x04
CONFIG_INTERMEDIATE_STATUS = 0x08
CONFIG_ECR_CONTROLS_PAYMENT = 0x10
CONFIG_ECR_CONTROLS_ADMIN = 0x20
CONFIG_PRINT_LINES = 0x80  # receipts line by line (06 D1) instead of text blocks (06 D3)
# Receipts come to us as text blocks, with intermediate status, and nothing starts on the
# terminal unless we ask (an unattended charger has no cashier).
DEFAULT_CONFIG_BYTE = (
    CONFIG_ECR_PRINTS_PAYMENT_RECEIPT
    | CONFIG_ECR_PRINTS_ADMIN_RECEIPT
    | CONFIG_INTERMEDIATE_STATUS
    | CONFIG_ECR_CONTROLS_PAYMENT
    | CONFIG_ECR_CONTROLS_ADMIN
)


def _check_byte(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{name} {value} is not a byte")


def _check_range(name: str, value: int, top: int) -> None:
    if not 0 <= value <= top:
        raise LocalProtocolError(f"{name} {value} is outside 0..{top}")


def _receipt_bytes(receipt_number: int) -> bytes:
    if receipt_number == NO_RECEIPT:
        return b"\xff\xff"
    return bcd_encode(receipt_number, 2)


def _receipt_from(raw: bytes) -> int:
    return NO_RECEIPT if raw == b"\xff\xff" else bcd_decode(raw)


def _currency(bmps: dict[int, bytes]) -> int:
    return bcd_decode(bmps[0x49]) if 0x49 in bmps else EUR


def _tlv_bmp(items: tuple[Tlv, ...]) -> list[Bmp]:
    return [Bmp(TLV_BMP, encode_tlv(items))] if items else []


class CaptureMode(StrEnum):
    """How a terminal captures part of a pre-authorisation (chosen by its profile)."""

    PARTIAL_REVERSAL = "partial_reversal"  # 06 23 with the amount to *release* (Feig, EVerest)
    BOOK_TOTAL = "book_total"  # 06 24 with the amount *used* (ecrterm)


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """06 00: log on with the password, say who prints and controls what, fix the currency."""

    name: ClassVar[str] = "registration"
    moves_money: ClassVar[bool] = False
    password: int
    config_byte: int = DEFAULT_CONFIG_BYTE
    currency_code: int = EUR
    service_byte: int | None = None
    tlv: tuple[Tlv, ...] = ()

    def __post_init__(self) -> None:
        _check_range("password", self.password, 999_999)
        _check_byte("config byte", self.config_byte)
        _check_range("currency code", self.currency_code, 9999)
        _check_byte("service byte", self.service_byte)

    def to_apdu(self) -> Apdu:
        data = bcd_encode(self.password, 3) + bytes([self.config_byte])
        data += bcd_encode(self.currency_code, 2)
        bmps = [Bmp(0x03, bytes([self.service_byte]))] if self.service_byte is not None else []
        return Apdu(0x06, 0x00, data + encode_bmps([*bmps, *_tlv_bmp(self.tlv)]))


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusEnquiry:
    """05 01: is the terminal ready (answered in 06 0F: 00 ready, F0 end of day needed...)."""

    name: ClassVar[str] = "status_enquiry"
    moves_money: ClassVar[bool] = False
    password: int | None = None
    service_byte: int | None = None

    def __post_init__(self) -> None:
        if self.password is not None:
            _check_range("password", self.password, 999_999)
        _check_byte("service byte", self.service_byte)

    def to_apdu(self) -> Apdu:
        data = b"" if self.password is None else bcd_encode(self.password, 3)
        if self.service_byte is not None:
            data += encode_bmps([Bmp(0x03, bytes([self.service_byte]))])
        return Apdu(0x05, 0x01, data)


@dataclass(frozen=True, slots=True, kw_only=True)
class PreAuthorisation:
    """06 22: reserve ``amount_cents`` on the card; the receipt number comes back in 04 0F."""

    name: ClassVar[str] = "pre_authorisation"
    moves_money: ClassVar[bool] = True
    amount_cents: int
    currency_code: int = EUR
    payment_type: int | None = PAYMENT_TYPE_TERMINAL_DECIDES
    tlv: tuple[Tlv, ...] = ()  # terminal-specific extras (Feig: E9 with a BMP60 token)

    def __post_init__(self) -> None:
        _check_range("amount_cents", self.amount_cents, MAX_AMOUNT_CENTS)
        _check_range("currency code", self.currency_code, 9999)
        _check_byte("payment type", self.payment_type)

    def to_apdu(self) -> Apdu:
        bmps = [] if self.payment_type is None else [Bmp(0x19, bytes([self.payment_type]))]
        bmps += [
            Bmp(0x49, bcd_encode(self.currency_code, 2)),
            Bmp(0x04, bcd_encode(self.amount_cents, 6)),
            *_tlv_bmp(self.tlv),
        ]
        return Apdu(0x06, 0x22, encode_bmps(bmps))


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialReversal:
    """06 23: capture a pre-authorisation by releasing ``release_cents`` of it (0 = keep all)."""

    name: ClassVar[str] = "partial_reversal"
    moves_money: ClassVar[bool] = True
    receipt_number: int
    release_cents: int
    currency_code: int = EUR
    payment_type: int | None = PAYMENT_TYPE_TERMINAL_DECIDES
    tlv: tuple[Tlv, ...] = ()

    def __post_init__(self) -> None:
        _check_range("receipt number", self.receipt_number, 9999)
        _check_range("release_cents", self.release_cents, MAX_AMOUNT_CENTS)
        _check_range("currency code", self.currency_code, 9999)
        _check_byte("payment type", self.payment_type)

    def to_apdu(self) -> Apdu:
        bmps = [
            Bmp(0x87, bcd_encode(self.receipt_number, 2)),
            Bmp(0x04, bcd_encode(self.release_cents, 6)),
        ]
        if self.payment_type is not None:
            bmps.append(Bmp(0x19, bytes([self.payment_type])))
        bmps += [Bmp(0x49, bcd_encode(self.currency_code, 2)), *_tlv_bmp(self.tlv)]
        return Apdu(0x06, 0x23, encode_bmps(bmps))


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenPreAuthEnquiry:
    """06 23 03 87 FF FF: which pre-authorisations are still open (answered by 06 1E B8 ...)."""

    name: ClassVar[str] = "open_pre_auth_enquiry"
    moves_money: ClassVar[bool] = False

    def to_apdu(self) -> Apdu:
        return Apdu(0x06, 0x23, encode_bmps([Bmp(0x87, _receipt_bytes(NO_RECEIPT))]))


@dataclass(frozen=True, slots=True, kw_only=True)
class BookTotal:
    """06 24: capture ``amount_cents`` (the amount used) of a pre-authorisation."""

    name: ClassVar[str] = "book_total"
    moves_money: ClassVar[bool] = True
    receipt_number: int
    amount_cents: int
    currency_code: int = EUR
    payment_type: int | None = PAYMENT_TYPE_TERMINAL_DECIDES

    def __post_init__(self) -> None:
        _check_range("receipt number", self.receipt_number, 9999)
        _check_range("amount_cents", self.amount_cents, MAX_AMOUNT_CENTS)
        _check_range("currency code", self.currency_code, 9999)
        _check_byte("payment type", self.payment_type)

    def to_apdu(self) -> Apdu:
        bmps = [
            Bmp(0x87, bcd_encode(self.receipt_number, 2)),
            Bmp(0x04, bcd_encode(self.amount_cents, 6)),
        ]
        if self.payment_type is not None:
            bmps.append(Bmp(0x19, bytes([self.payment_type])))
        bmps.append(Bmp(0x49, bcd_encode(self.currency_code, 2)))
        return Apdu(0x06, 0x24, encode_bmps(bmps))


@dataclass(frozen=True, slots=True, kw_only=True)
class PreAuthReversal:
    """06 25: release a whole pre-authorisation (nothing was drawn, or an orphan)."""

    name: ClassVar[str] = "pre_auth_reversal"
    moves_money: ClassVar[bool] = True
    receipt_number: int
    currency_code: int = EUR
    payment_type: int | None = PAYMENT_TYPE_TERMINAL_DECIDES

    def __post_init__(self) -> None:
        _check_range("receipt number", self.receipt_number, 9999)
        _check_range("currency code", self.currency_code, 9999)
        _check_byte("payment type", self.payment_type)

    def to_apdu(self) -> Apdu:
        bmps = [] if self.payment_type is None else [Bmp(0x19, bytes([self.payment_type]))]
        bmps += [
            Bmp(0x87, bcd_encode(self.receipt_number, 2)),
            Bmp(0x49, bcd_encode(self.currency_code, 2)),
        ]
        return Apdu(0x06, 0x25, encode_bmps(bmps))


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfDay:
    """06 50: send the day's bookings to the host (never while a pre-auth is open)."""

    name: ClassVar[str] = "end_of_day"
    moves_money: ClassVar[bool] = False
    password: int

    def __post_init__(self) -> None:
        _check_range("password", self.password, 999_999)

    def to_apdu(self) -> Apdu:
        return Apdu(0x06, 0x50, bcd_encode(self.password, 3))


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortRequest:
    """06 B0: ask the terminal to abort the command in progress (it may refuse, or be late)."""

    name: ClassVar[str] = "abort"
    moves_money: ClassVar[bool] = False

    def to_apdu(self) -> Apdu:
        return Apdu(0x06, 0xB0, b"")


Command = (
    Registration
    | StatusEnquiry
    | PreAuthorisation
    | PartialReversal
    | OpenPreAuthEnquiry
    | BookTotal
    | PreAuthReversal
    | EndOfDay
    | AbortRequest
)


def settlement_command(
    mode: CaptureMode,
    *,
    receipt_number: int,
    pre_authorised_cents: int,
    final_cents: int,
    currency_code: int = EUR,
) -> PartialReversal | BookTotal | PreAuthReversal:
    """The one command that ends a pre-authorisation at ``final_cents``."""
    if final_cents < 0:
        raise LocalProtocolError(f"final amount {final_cents} cents is negative")
    if final_cents > pre_authorised_cents:
        raise LocalProtocolError(
            f"final amount {final_cents} cents exceeds the pre-authorised "
            f"{pre_authorised_cents} cents: a capture never exceeds its pre-authorisation"
        )
    if final_cents == 0:
        return PreAuthReversal(receipt_number=receipt_number, currency_code=currency_code)
    if mode is CaptureMode.BOOK_TOTAL:
        return BookTotal(
            receipt_number=receipt_number, amount_cents=final_cents, currency_code=currency_code
        )
    return PartialReversal(
        receipt_number=receipt_number,
        release_cents=pre_authorised_cents - final_cents,
        currency_code=currency_code,
    )


# --- reading commands back ---------------------------------------------------------------------


def _bmp_map(data: bytes) -> tuple[dict[int, bytes], tuple[Tlv, ...]]:
    bmps = parse_bmps(data)
    values = {b.tag: b.value for b in bmps if b.tag != TLV_BMP}
    tlv = next((parse_tlv(b.value) for b in bmps if b.tag == TLV_BMP), ())
    return values, tlv


def _split_leading(data: bytes, size: int) -> tuple[bytes | None, bytes]:
    """An untagged leading field of ``size`` bytes, if the data is not BMPs from the start."""
    if len(data) != size:
        try:
            parse_bmps(data)
        except RemoteProtocolError:
            pass
        else:
            return None, data
    if len(data) < size:
        return None, data
    return data[:size], data[size:]


def _payment_type(values: dict[int, bytes]) -> int | None:
    return values[0x19][0] if 0x19 in values else None


def parse_command(apdu: Apdu) -> Command:
    """The command an APDU from the ECR carries (a ``RemoteProtocolError`` if none)."""
    code, data = apdu.code, apdu.data
    if code == (0x06, 0x00):
        if len(data) < 4:
            raise RemoteProtocolError("registration without password and config byte")
        rest = data[4:]
        currency = EUR
        if len(rest) >= 2 and rest[0] not in (0x03, TLV_BMP):
            currency, rest = bcd_decode(rest[:2]), rest[2:]
        values, tlv = _bmp_map(rest)
        service = values[0x03][0] if 0x03 in values else None
        return Registration(
            password=bcd_decode(data[:3]),
            config_byte=data[3],
            currency_code=currency,
            service_byte=service,
            tlv=tlv,
        )
    if code == (0x05, 0x01):
        password_raw, rest = _split_leading(data, 3)
        values, _ = _bmp_map(rest)
        return StatusEnquiry(
            password=None if password_raw is None else bcd_decode(password_raw),
            service_byte=values[0x03][0] if 0x03 in values else None,
        )
    if code == (0x06, 0x50):
        return EndOfDay(password=bcd_decode(data[:3]))
    if code == (0x06, 0xB0):
        return AbortRequest()
    values, tlv = _bmp_map(data)
    if code == (0x06, 0x22):
        if 0x04 not in values:
            raise RemoteProtocolError("pre-authorisation without an amount")
        return PreAuthorisation(
            amount_cents=bcd_decode(values[0x04]),
            currency_code=_currency(values),
            payment_type=_payment_type(values),
            tlv=tlv,
        )
    if code in ((0x06, 0x23), (0x06, 0x24), (0x06, 0x25)):
        if 0x87 not in values:
            raise RemoteProtocolError(f"{apdu.describe()} without a receipt number")
        receipt = _receipt_from(values[0x87])
        if code == (0x06, 0x23) and receipt == NO_RECEIPT:
            return OpenPreAuthEnquiry()
        if code == (0x06, 0x25):
            return PreAuthReversal(
                receipt_number=receipt,
                currency_code=_currency(values),
                payment_type=_payment_type(values),
            )
        amount = bcd_decode(values[0x04]) if 0x04 in values else 0
        if code == (0x06, 0x23):
            return PartialReversal(
                receipt_number=receipt,
                release_cents=amount,
                currency_code=_currency(values),
                payment_type=_payment_type(values),
                tlv=tlv,
            )
        return BookTotal(
            receipt_number=receipt,
            amount_cents=amount,
            currency_code=_currency(values),
            payment_type=_payment_type(values),
        )
    raise RemoteProtocolError(f"{apdu.describe()} is not a command this codec sends")
