"""Drivers layer: a payment terminal's profile, the settings that differ between models.

The one that matters most is how a pre-authorisation is captured: by partial reversal (06 23,
the amount to *release*; Feig cVEND as EVerest drives it) or by book total (06 24, the amount
*used*; ecrterm). The registration password, config byte and currency complete it.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.terminal.zvt.commands import (
    DEFAULT_CONFIG_BYTE,
    EUR,
    PAYMENT_TYPE_TERMINAL_DECIDES,
    CaptureMode,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalProfile:
    """How to talk to one terminal model (see docs/payments.md)."""

    name: str = "generic"
    capture_mode: CaptureMode = CaptureMode.PARTIAL_REVERSAL
    password: int = 0  # the terminal's ECR password (recorded Feig traffic uses 123456)
    config_byte: int = DEFAULT_CONFIG_BYTE
    currency_code: int = EUR
    payment_type: int | None = PAYMENT_TYPE_TERMINAL_DECIDES


PROFILES: dict[str, TerminalProfile] = {
    "generic": TerminalProfile(),
    "feig_cvend": TerminalProfile(name="feig_cvend"),
    "book_total": TerminalProfile(name="book_total", capture_mode=CaptureMode.BOOK_TOTAL),
}
