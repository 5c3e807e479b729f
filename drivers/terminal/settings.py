"""Drivers layer: a site's payment terminal as its config describes it (``terminal:``).

Built by controller.config from the site file; turned into a ``ZvtTerminal`` by ``build``.
The payment shell's own timings (when to stop before the pre-auth runs out, how often to
retry a settlement) travel with it, since they belong to this terminal's payments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from drivers.terminal.profile import PROFILES
from drivers.terminal.transport import SerialLink, TcpLink, TerminalLink, ZvtTerminal
from drivers.terminal.zvt import Timeouts


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalSettings:
    id: str = "terminal"
    link: TerminalLink
    profile: str = "generic"
    password: int = 0
    # The connectors it takes payments for, in config order (None: every connector).
    connectors: tuple[str, ...] | None = None
    t1_s: float = 0.2
    t3_s: float = 5.0
    t4_s: float = 180.0
    # The longest the controller may take to stop an EV after a tick's check: the pre-auth
    # stop rule projects the worst case over this (controller.core.tariff.must_stop).
    stop_headroom_s: float = 5.0
    # A settlement or enquiry the terminal could not take is tried again after this.
    retry_s: float = 30.0
    # How often a running session's priced usage is written (and always on every end).
    usage_save_s: float = 10.0
    # Unattended chargers: a car plugged in at a served connector starts the pre-authorisation
    # by itself (the terminal then asks for the card), once per plug-in.
    preauth_on_plug_in: bool = False
    # End of day (06 50: the terminal sends its day's bookings to the acquirer) at least this
    # often, and only with no payment open; besides whenever the terminal asks (status F0).
    end_of_day_every_s: float = 86_400.0

    def describe(self) -> str:
        return self.link.describe()


def build(settings: TerminalSettings) -> ZvtTerminal:
    base = PROFILES[settings.profile]
    return ZvtTerminal(
        settings.link,
        profile=replace(base, password=settings.password),
        timeouts=Timeouts(t1_s=settings.t1_s, t3_s=settings.t3_s, t4_s=settings.t4_s),
    )


__all__ = ["SerialLink", "TcpLink", "TerminalSettings", "build"]
