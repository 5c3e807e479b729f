"""Drivers layer: an EVSE controller driven by its register map (implements core ``Evse``).

Everything model-specific is in the map's ``evse:`` section: the setpoint field and its pause
value (or an enable switch), where the fallback (safe) current lives and whether evsite may
programme it, the watchdog (timeout, where it comes from, what fraction of it to refresh at,
and the alive register it is fed through, if any), constants written once at start, and the
state: one field's values, or rules over several fields. For example the
Alfen map says: setpoint HR 1210 float32 in one FC16, safe current HR 1212 configured on the
station (read back, compared, never written), validity time from ``options.validity_time_s``
(default 60 s), refresh at a third of it.
"""

from __future__ import annotations

import math

from controller.core.errors import ConfigError
from controller.core.model import ZERO3, EvseReading, EvseState
from controller.core.site import DeviceSpec
from drivers.modbus.bus import BusPool
from drivers.modbus.device import RegisterMapDevice, number, number_option
from drivers.modbus.registermap import DeviceKind, EvseSpec, RegisterMap, RegType, encode_value


class RegisterMapEvse(RegisterMapDevice):
    """``RegisterMapEvse(spec, "alfen_ng9xx", pool=pool)``: an EVSE from a map name or map."""

    kind = DeviceKind.EVSE

    def __init__(
        self,
        spec: DeviceSpec,
        register_map: RegisterMap | str,
        *,
        pool: BusPool | None = None,
    ) -> None:
        super().__init__(spec, register_map, pool=pool)
        evse = self.register_map.evse
        if evse is None:  # parse_map guarantees it for an EVSE map; keep mypy and readers sure
            raise ConfigError([f"{self.register_map.source}: no evse: section"])
        self._evse: EvseSpec = evse
        wd = evse.watchdog
        self._watchdog_timeout_s: float | None = None
        if wd is not None:
            timeout = wd.default_timeout_s
            if wd.timeout_option is not None:
                timeout = number_option(spec, wd.timeout_option, wd.default_timeout_s) or timeout
            self._watchdog_timeout_s = timeout
            if wd.timeout_field is not None:
                try:
                    encode_value(self.register_map.field(wd.timeout_field), timeout)
                except ValueError as exc:
                    raise ConfigError(
                        [f"device {spec.id}: watchdog timeout {timeout:g} s does not fit: {exc}"]
                    ) from exc
        # What ``setup`` found that deserves a technician's look; it does not stop the site.
        self.setup_warnings: list[str] = []
        # The fallback current the device itself reports (None until ``setup`` read it).
        self.device_fallback_current_a: float | None = None

    @property
    def watchdog_timeout_s(self) -> float | None:
        """How long the EVSE keeps a written limit without a refresh (None: no watchdog)."""
        return self._watchdog_timeout_s

    @property
    def watchdog_refresh_s(self) -> float | None:
        wd = self._evse.watchdog
        if wd is None or self._watchdog_timeout_s is None:
            return None
        return self._watchdog_timeout_s * wd.refresh_fraction

    async def setup(self, fallback_current_a: float) -> None:
        """Programme what the model lets us; read back and compare what it does not.

        A fallback current configured on the device that differs from the site's by more than
        the map's tolerance is recorded in ``setup_warnings`` (the site still runs; the
        technician fixes the station). Bus errors propagate (DeviceUnavailable: try again).
        """
        warnings: list[str] = []
        for w in self._evse.setup_writes:
            await self.write_field(w.field, w.value)
        wd = self._evse.watchdog
        if wd is not None and wd.timeout_field is not None and self._watchdog_timeout_s:
            await self.write_field(wd.timeout_field, self._watchdog_timeout_s)
            back = number({"t": await self.read_field(wd.timeout_field)}, "t")
            resolution_s = abs(self.register_map.field(wd.timeout_field).scale)
            if back is None or not abs(back - self._watchdog_timeout_s) <= resolution_s:
                warnings.append(
                    f"{self.name}: the watchdog timeout reads back as {back} s, "
                    f"not the {self._watchdog_timeout_s:g} s written"
                )
        fb = self._evse.fallback
        if fb is None or fb.field is None:
            warnings.append(
                f"{self.name}: the model has no fallback current register; "
                f"it cannot be set to {fallback_current_a:g} A"
            )
        elif fb.programme:
            await self.write_field(fb.field, fallback_current_a)
            device_a = number({fb.field: await self.read_field(fb.field)}, fb.field)
            self.device_fallback_current_a = device_a
            if device_a is None or not abs(device_a - fallback_current_a) <= fb.tolerance_a:
                warnings.append(
                    f"{self.name}: the fallback current ({fb.field}) reads back as {device_a} A, "
                    f"not the {fallback_current_a:g} A written"
                )
        else:
            device_a = number({fb.field: await self.read_field(fb.field)}, fb.field)
            self.device_fallback_current_a = device_a
            if device_a is None or not math.isfinite(device_a):
                warnings.append(f"{self.name}: the device reports no fallback current ({fb.field})")
            elif abs(device_a - fallback_current_a) > fb.tolerance_a:
                warnings.append(
                    f"{self.name}: the device's fallback current ({fb.field}) is {device_a:g} A "
                    f"but the site config says {fallback_current_a:g} A; set it on the device"
                )
        if wd is None:
            warnings.append(
                f"{self.name}: the model has no watchdog; a dead controller leaves "
                "its last limit in force"
            )
        self.setup_warnings = warnings

    async def read(self, now_s: float) -> EvseReading:
        values = await self.read_fields()
        letter = self._evse.state_letter(values, self.register_map.get("state"))
        state = EvseState(letter) if letter is not None else EvseState.UNKNOWN
        currents = [number(values, f"current_l{i}_a") for i in (1, 2, 3)]
        return EvseReading(
            at_s=now_s,
            state=state,
            current_a=(
                (currents[0] or 0.0, currents[1] or 0.0, currents[2] or 0.0)
                if any(c is not None for c in currents)
                else ZERO3
            ),
            power_w=number(values, "power_w") or 0.0,
            energy_wh=number(values, "energy_wh") or 0.0,
            applied_limit_a=number(values, "applied_limit_a"),
        )

    async def write_limit(self, current_a: float) -> None:
        """Write the limit; 0 pauses (the map's pause value). ValueError: negative or NaN."""
        if not math.isfinite(current_a) or current_a < 0:
            raise ValueError(f"{self.name}: limit {current_a!r} A is not a finite number >= 0")
        sp = self._evse.setpoint
        enable = self._evse.enable
        current_a = self._quantise(sp.field, current_a)
        if enable is None:
            await self.write_field(sp.field, sp.pause_value if current_a == 0 else current_a)
        elif current_a == 0:
            await self.write_field(enable.field, enable.off_value)
        else:
            await self.write_field(sp.field, current_a)
            await self.write_field(enable.field, enable.on_value)
        await self.feed_watchdog()

    def _quantise(self, field_name: str, current_a: float) -> float:
        """Round a limit DOWN to what the register can hold (whole amps, 0.1 A, ...): encoding
        rounds to nearest, and 21.7 A written as 22 A would overload a circuit by 0.3 A per
        connector."""
        field = self.register_map.field(field_name)
        if field.type in (RegType.FLOAT32, RegType.FLOAT64) or field.scale <= 0:
            return current_a
        return round(math.floor(current_a / field.scale + 1e-9) * field.scale, 9)

    async def feed_watchdog(self) -> None:
        """Write the model's alive / life-bit register, if its watchdog has one.

        Skipped when the last poll read a value the map lists as "not watched" (a Schneider
        life bit reading 2). Rewriting the limit feeds the other models.
        """
        wd = self._evse.watchdog
        if wd is None or wd.feed is None:
            return
        last = self.last_values.get(wd.feed.field)
        if isinstance(last, int) and last in wd.feed.skip_when_read:
            return
        await self.write_field(wd.feed.field, wd.feed.value)
