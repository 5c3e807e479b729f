"""App layer: the tariff in force at a site, one source for payments, the CLI and the cloud.

The site file's ``tariff:`` is the start. The cloud may replace it (MQTT ``tariff_set``): the
update is checked whole as the site file's tariff is (``controller.config.tariff_from_payload``;
the site's pre-authorisation cap stays the site file's), written to the state file, and only
then in force and announced to the ``listeners``. It survives restarts, as long as the site
file's tariff stays what it was when the update came: a site file whose tariff was edited since
wins (an installer's change on site is newer than the cloud's), and the cloud's is dropped.
``clear`` goes back to the site file's tariff.

    book = TariffBook(db, config.tariff)
    book.current()       # Tariff | None: what a session started now is charged
    book.update(payload, by="mqtt")   # raises ConfigError naming the key; nothing changes then
    book.listeners.append(fn)         # fn(TariffChange) after each change
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import structlog

from controller.config import tariff_from_payload
from controller.core.errors import ConfigError, PermanentError
from controller.core.tariff import Tariff, price_display
from controller.store.db import Database, StoreError

log = structlog.get_logger("evsite.tariffs")

MARKER = "cloud_tariff"  # markers row: the cloud's tariff, as JSON (see _stored)
TariffSource = Literal["config", "cloud"]


class TariffNotSaved(PermanentError):
    """The state file could not be written: the tariff in force did not change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TariffChange:
    """A change of the tariff in force (after it is stored)."""

    tariff: Tariff | None
    previous: Tariff | None
    source: TariffSource
    by: str  # mqtt, config (a cleared cloud tariff), ...
    at: datetime


def fingerprint(tariff: Tariff | None) -> str:
    """Identifies a site file's tariff: equal tariffs, equal fingerprints."""
    return hashlib.sha256(repr(tariff).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """The payload as JSON can hold it: exact decimals as their text (the checks read it)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TariffBook:
    """The tariff in force: the site file's, or the cloud's. Event loop thread only."""

    def __init__(
        self,
        db: Database,
        configured: Tariff | None,
        *,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._db = db
        self.configured = configured
        self._wall = wall
        self.listeners: list[Callable[[TariffChange], None]] = []
        self._cloud: Tariff | None = None
        self._updated_at: str | None = None
        self._updated_by: str | None = None
        self._restore()

    # -- reading -----------------------------------------------------------------------------

    def current(self) -> Tariff | None:
        """The tariff a session started now is charged by (None: the site has none)."""
        return self._cloud if self._cloud is not None else self.configured

    @property
    def source(self) -> TariffSource:
        return "cloud" if self._cloud is not None else "config"

    @property
    def cap_cents(self) -> int | None:
        """The site's own pre-authorisation cap, which a cloud tariff cannot raise."""
        return None if self.configured is None else self.configured.preauth_cap_cents

    def document(self) -> dict[str, Any] | None:
        """The tariff in force for meta and status: price_display plus where it came from."""
        tariff = self.current()
        if tariff is None:
            return None
        return {
            **price_display(tariff),
            "source": self.source,
            "updated_at": self._updated_at if self._cloud is not None else None,
        }

    # -- changes -----------------------------------------------------------------------------

    def check(self, payload: Mapping[str, Any] | str | bytes) -> Tariff:
        """The tariff a payload describes, checked; raises ConfigError. Changes nothing."""
        return tariff_from_payload(payload, preauth_cap_cents=self.cap_cents)

    def update(self, payload: Mapping[str, Any], *, by: str) -> Tariff:
        """Check, store, then put in force the cloud's tariff.

        Raises ConfigError (problems read ``tariff update: key: message``) or TariffNotSaved;
        the tariff in force is then unchanged.
        """
        tariff = self.check(payload)
        at = self._wall()
        stored = {
            "payload": _jsonable(payload),
            "base": fingerprint(self.configured),
            "at": at.isoformat(),
            "by": by,
        }
        self._write(json.dumps(stored, separators=(",", ":")), at)
        previous = self.current()
        self._cloud = tariff
        self._updated_at, self._updated_by = stored["at"], by
        log.info("tariff_updated", tariff=tariff.id, by=by, source="cloud")
        self._tell(TariffChange(tariff=tariff, previous=previous, source="cloud", by=by, at=at))
        return tariff

    def clear(self, *, by: str) -> Tariff | None:
        """Back to the site file's tariff; returns it (None: the site file has none)."""
        at = self._wall()
        self._write("{}", at)
        previous = self.current()
        had_cloud = self._cloud is not None
        self._cloud = None
        self._updated_at = self._updated_by = None
        if had_cloud:
            log.info("tariff_cleared", by=by, source="config")
            self._tell(
                TariffChange(
                    tariff=self.configured, previous=previous, source="config", by=by, at=at
                )
            )
        return self.configured

    # -- inside ------------------------------------------------------------------------------

    def _write(self, value: str, at: datetime) -> None:
        try:
            self._db.set_marker(MARKER, value, at.astimezone(UTC).isoformat())
        except StoreError as exc:
            raise TariffNotSaved(f"not saved, the tariff did not change: {exc}") from exc

    def _restore(self) -> None:
        text = self._db.marker(MARKER)
        if not text:
            return
        try:
            stored = json.loads(text)
        except ValueError:
            log.error("tariff_cloud_unreadable", detail="the stored cloud tariff is not JSON")
            return
        if not stored:
            return  # cleared
        if stored.get("base") != fingerprint(self.configured):
            log.warning(
                "tariff_cloud_superseded",
                detail="the site file's tariff changed since the cloud's update: the site "
                "file's is in force",
                cloud_update_at=stored.get("at"),
            )
            try:
                self._db.set_marker(MARKER, "{}", self._wall().astimezone(UTC).isoformat())
            except StoreError as exc:
                log.error("state_write_failed", error=str(exc))
            return
        try:
            self._cloud = self.check(stored["payload"])
        except (ConfigError, KeyError, TypeError) as exc:
            # A newer evsite's rules may refuse what an older one took: the site file's wins.
            log.error("tariff_cloud_unreadable", detail=str(exc))
            return
        self._updated_at, self._updated_by = stored.get("at"), stored.get("by")
        log.info("tariff_restored", tariff=self._cloud.id, source="cloud", at=self._updated_at)

    def _tell(self, change: TariffChange) -> None:
        for listener in self.listeners:
            try:
                listener(change)
            except Exception as exc:  # one broken listener must not stop the others
                log.error("tariff_listener_failed", error=repr(exc))
