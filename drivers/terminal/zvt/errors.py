"""Drivers layer (sans-IO ZVT codec): its exceptions, split by whose fault it is (as in h11).

``LocalProtocolError``: we asked for something the protocol cannot carry or the state does not
allow (an amount past 12 BCD digits, a second command while one is in flight). A bug on our
side; retrying will not help.

``RemoteProtocolError``: the terminal sent something we cannot accept (an APDU whose length
disagrees with its frame, an unknown BMP, too many corrupt frames in a row), or went silent
past a timer (``ZvtTimeout``). A single corrupt frame is *not* an error: it is answered with a
NAK and the retransmission is awaited.

Messages never carry frame contents: a frame may hold card data, and exceptions get logged.
``command_delivered`` tells the shell whether the terminal may have started the command (its
frame went out at least once), so a money-moving command's outcome is then unknown.
"""

from __future__ import annotations


class ZvtError(Exception):
    """Root of the codec's errors; the transport converts every one to a core error."""


class LocalProtocolError(ZvtError):
    """Our side broke the protocol (a bug or an impossible request): do not retry as is."""


class RemoteProtocolError(ZvtError):
    """The terminal broke the protocol or stopped answering."""

    def __init__(self, message: str, *, command_delivered: bool = False) -> None:
        super().__init__(message)
        self.command_delivered = command_delivered


class ZvtTimeout(RemoteProtocolError):
    """A ZVT timer ran out: T1 (between bytes), T3 (acknowledgement) or T4 (completion)."""

    def __init__(self, message: str, *, timer: str, command_delivered: bool = False) -> None:
        super().__init__(message, command_delivered=command_delivered)
        self.timer = timer
