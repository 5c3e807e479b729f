"""Drivers layer: what a payment-terminal command can end in, as core errors.

The codec's own errors (``drivers.terminal.zvt.errors``) never leave the transport; they become
one of these. What matters to the payment session is whether money may have moved:

- ``TerminalRefused`` (permanent, ``DeviceError``): the terminal answered "no" (a declined
  card, 84 xx, 06 1E xx). Nothing was booked by this command. ``result_code`` says why;
  ``open_receipts`` is the terminal's list of open pre-auths when it sent one (06 1E B8).
- ``TerminalBusy`` (retryable): the terminal answered "not now" (receiver not ready, please
  wait, no connection to the host). Nothing was booked; the same command may work later.
- ``TerminalUnavailable`` (retryable): no usable answer, and nothing that moves money was
  delivered (the port is gone, a registration or status enquiry got no answer).
- ``PaymentOutcomeUnknown`` (retryable): a command that moves money went out and no final
  answer came back (T3/T4, link lost, garbage). The terminal may have booked it: reconcile
  with the open pre-auth enquiry before doing anything else with that payment.
- ``TerminalMisuse`` (permanent): we asked for something the protocol cannot carry.

Messages name the command and the fault, never frame contents or card data.
"""

from __future__ import annotations

from controller.core.errors import DeviceError, DeviceUnavailable


class TerminalUnavailable(DeviceUnavailable):
    """No usable answer from the terminal; no money-moving command reached it."""


class PaymentOutcomeUnknown(DeviceUnavailable):
    """A money-moving command went out without a final answer: reconcile before going on."""

    def __init__(self, message: str, *, command: str) -> None:
        super().__init__(message)
        self.command = command


class TerminalBusy(DeviceUnavailable):
    """The terminal refused with a "not now" result code; nothing was booked."""

    def __init__(self, message: str, *, command: str, result_code: int) -> None:
        super().__init__(message)
        self.command = command
        self.result_code = result_code


class TerminalRefused(DeviceError):
    """The terminal refused or declined the command; nothing was booked by it."""

    def __init__(
        self,
        message: str,
        *,
        command: str,
        result_code: int,
        open_receipts: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message)
        self.command = command
        self.result_code = result_code
        self.open_receipts = open_receipts


class TerminalMisuse(DeviceError):
    """We asked the terminal for something the protocol cannot express (a bug on our side)."""
