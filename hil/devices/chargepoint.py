"""hil: what a simulated EVSE does, apart from its registers: limit, watchdog, failsafe, the EV.

``ChargePoint`` is pure (time is an argument, ``t_s``); each EVSE model (Heidelberg, Bender,
Phoenix, Vestel, Schneider) puts its own register map and write rules around one. The rules,
as the simulators read reference/modbus.md:

- The applied limit is the last setpoint (capped at the station maximum), or the failsafe
  current before the first write and while in failsafe. A disabled charge point offers 0 A.
- Watchdog (when ``watchdog_timeout_s`` is set): every ``feed`` restarts it; once it expires
  the charge point is in failsafe, and it stays there until fed again plus ``recover_s`` (the
  Heidelberg needs about 10 s to leave state F).
- The EV draws ``min(applied limit, its own maximum)`` on its phases while the offer is at least
  ``min_current_a`` (6 A); below that it pauses. Energy is integrated by ``advance``.
- States: A (no EV), B (EV, not drawing), C (drawing), or a forced ``error_state`` (E/F).
"""

from __future__ import annotations

from dataclasses import dataclass

ZERO3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ev:
    """The plugged-in vehicle: how much it can take, on how many phases."""

    max_current_a: float = 16.0
    phases: int = 3


class ChargePoint:
    """One connector's control logic and its EV."""

    def __init__(
        self,
        *,
        max_current_a: float = 32.0,
        min_current_a: float = 6.0,
        voltage_v: float = 230.0,
        failsafe_current_a: float = 0.0,
        watchdog_timeout_s: float | None = None,
        recover_s: float = 0.0,
        ev: Ev | None = None,
        energy_wh: float = 0.0,
    ) -> None:
        self.max_current_a = max_current_a
        self.min_current_a = min_current_a
        self.voltage_v = voltage_v
        self.failsafe_current_a = failsafe_current_a
        self.watchdog_timeout_s = watchdog_timeout_s
        self.recover_s = recover_s
        self.ev = ev
        self.energy_wh = energy_wh
        self.setpoint_a: float | None = None
        self.enabled = True
        self.error_state: str | None = None  # "E" or "F" to force a fault state
        self.writes: list[tuple[float, float]] = []  # (t_s, setpoint) history, for tests
        self._last_feed_s: float | None = None
        self._recover_until_s = float("-inf")
        self._advanced_to_s: float | None = None

    # --- the controller's side -----------------------------------------------------------------

    def write_setpoint(self, current_a: float, t_s: float) -> None:
        self.advance(t_s)
        self.setpoint_a = current_a
        self.writes.append((t_s, current_a))

    def feed(self, t_s: float) -> None:
        """The watchdog sees the controller alive at ``t_s``."""
        self.advance(t_s)
        if self.watchdog_expired(t_s):
            self._recover_until_s = t_s + self.recover_s
        self._last_feed_s = t_s

    def watchdog_expired(self, t_s: float) -> bool:
        timeout = self.watchdog_timeout_s
        if not timeout or self._last_feed_s is None:
            return False  # off, or not armed before the first feed
        return t_s - self._last_feed_s > timeout

    @property
    def last_feed_s(self) -> float | None:
        """When the watchdog was last fed (None: never, not armed)."""
        return self._last_feed_s

    def watchdog_remaining_s(self, t_s: float) -> float | None:
        """Seconds until the watchdog expires; None without one or before it is armed."""
        timeout = self.watchdog_timeout_s
        if not timeout or self._last_feed_s is None:
            return None
        return max(0.0, self._last_feed_s + timeout - t_s)

    def in_failsafe(self, t_s: float) -> bool:
        return self.watchdog_expired(t_s) or t_s < self._recover_until_s

    def applied_limit_a(self, t_s: float) -> float:
        if not self.enabled:
            return 0.0
        if self.in_failsafe(t_s) or self.setpoint_a is None:
            wanted = self.failsafe_current_a
        else:
            wanted = self.setpoint_a
        return max(0.0, min(wanted, self.max_current_a))

    # --- the EV's side --------------------------------------------------------------------------

    def plug(self, ev: Ev, t_s: float) -> None:
        self.advance(t_s)
        self.ev = ev

    def unplug(self, t_s: float) -> None:
        self.advance(t_s)
        self.ev = None

    def current_a(self, t_s: float) -> tuple[float, float, float]:
        ev = self.ev
        offer = self.applied_limit_a(t_s)
        if ev is None or self.error_state is not None or offer < self.min_current_a:
            return ZERO3
        i = min(offer, ev.max_current_a)
        return (i, i if ev.phases == 3 else 0.0, i if ev.phases == 3 else 0.0)

    def power_w(self, t_s: float) -> float:
        return sum(self.current_a(t_s)) * self.voltage_v

    def state(self, t_s: float) -> str:
        if self.error_state is not None:
            return self.error_state
        if self.ev is None:
            return "A"
        return "C" if any(self.current_a(t_s)) else "B"

    def advance(self, t_s: float) -> None:
        """Integrate the energy up to ``t_s`` (the power in between is taken as constant)."""
        last = self._advanced_to_s
        self._advanced_to_s = t_s
        if last is not None and t_s > last:
            # the watchdog may have expired in between; the power at the start holds until then
            self.energy_wh += self.power_w(last) * (t_s - last) / 3600.0

    def energy_at_wh(self, t_s: float) -> float:
        """The energy counter as of ``t_s``."""
        self.advance(t_s)
        return self.energy_wh
