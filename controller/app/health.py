"""App layer: per-device health (online/offline with the reason), logged on transitions only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("evsite.devices")


@dataclass(slots=True)
class DeviceHealth:
    device: str
    online: bool = False
    last_ok_s: float | None = None
    last_error: str | None = None
    failures_in_row: int = 0
    seen: bool = field(default=False)

    def ok(self, now_s: float) -> None:
        if not self.online:
            log.info("device_online", device=self.device, after_failures=self.failures_in_row)
        self.online = True
        self.seen = True
        self.last_ok_s = now_s
        self.failures_in_row = 0

    def failed(self, error: str) -> None:
        self.failures_in_row += 1
        self.last_error = error
        if self.online or not self.seen:
            log.warning("device_offline", device=self.device, reason=error)
        self.online = False
        self.seen = True

    def as_dict(self, now_s: float) -> dict[str, Any]:
        return {
            "online": self.online,
            "last_ok_age_s": None if self.last_ok_s is None else round(now_s - self.last_ok_s, 2),
            "last_error": self.last_error,
            "failures_in_row": self.failures_in_row,
        }
