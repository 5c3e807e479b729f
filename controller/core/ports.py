"""Core layer: the ports the shell plugs devices into (typing.Protocol, no I/O here).

Drivers implement them; the control loop depends only on them. Methods raise
``DeviceUnavailable`` (retryable) or ``DeviceError`` (permanent) from controller.core.errors.
"""

from __future__ import annotations

from typing import Protocol

from controller.core.model import EvseReading, MeterReading


class Meter(Protocol):
    """A 3-phase meter."""

    @property
    def name(self) -> str: ...

    async def read(self, now_s: float) -> MeterReading:
        """Read currents (and what else the model has); stamp the reading with ``now_s``."""
        ...

    async def close(self) -> None: ...


class Evse(Protocol):
    """An EVSE controller that accepts a current limit over its bus."""

    @property
    def name(self) -> str: ...

    @property
    def watchdog_refresh_s(self) -> float | None:
        """Rewrite the limit at least this often so the EVSE's own watchdog stays fed (None: no
        watchdog, no refresh needed)."""
        ...

    async def setup(self, fallback_current_a: float) -> None:
        """Programme the fallback current and watchdog where the model allows it."""
        ...

    async def read(self, now_s: float) -> EvseReading: ...

    async def write_limit(self, current_a: float) -> None:
        """Set the charging current limit; 0 pauses charging."""
        ...

    async def close(self) -> None: ...
