"""Adapters layer: the OCPP 1.6 configuration keys of the charge point, and where they live.

Every key this charge point knows is in ``KEYS``: its type, whether the CSMS may change it,
its default. Values come from three places, the later winning:

1. the default here (or, for keys evsite derives, such as NumberOfConnectors, the site);
2. the site file (``ocpp.keys``, and ``ocpp.credentials_file`` for AuthorizationKey);
3. what the CSMS set with ChangeConfiguration, stored in ``<state_dir>/ocpp-keys.json``
   (mode 0600: it holds AuthorizationKey) together with the site-file value it was set
   against. An override wins until the site file's value itself changes: a technician who
   edits the file then gets what they wrote.

GetConfiguration: an unknown key is listed in ``unknownKey``; AuthorizationKey is write-only
(its value is never returned, never logged). ChangeConfiguration: an unknown key gets
NotSupported, a read-only one Rejected, a malformed value Rejected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from controller.core.errors import PermanentError

KEYS_FILENAME = "ocpp-keys.json"

MEASURANDS = (
    "Energy.Active.Import.Register",
    "Current.Import",
    "Power.Active.Import",
    "Current.Offered",
)
PROFILES = "Core,SmartCharging,RemoteTrigger,LocalAuthListManagement,Reservation"


class KeyType(StrEnum):
    BOOL = "bool"
    INT = "int"
    MEASURANDS = "measurands"  # comma-separated list of supported measurands
    TEXT = "text"
    SECRET = "secret"  # write-only text (AuthorizationKey)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    name: str
    type: KeyType
    writable: bool
    default: str
    minimum: int = 0
    maximum: int = 2**31 - 1


def _k(name: str, type_: KeyType, writable: bool, default: str, **kw: int) -> KeySpec:
    return KeySpec(name=name, type=type_, writable=writable, default=default, **kw)


B, N, M, T = KeyType.BOOL, KeyType.INT, KeyType.MEASURANDS, KeyType.TEXT
_ALL = (
    # Core profile (1.6 §9.1)
    _k("AllowOfflineTxForUnknownId", B, True, "false"),
    _k("AuthorizationCacheEnabled", B, True, "true"),
    _k("AuthorizeRemoteTxRequests", B, False, "false"),
    _k("ClockAlignedDataInterval", N, True, "0", maximum=86_400),
    _k("ConnectionTimeOut", N, False, "60"),  # the site file's sessions.connection_timeout_s
    _k("ConnectorPhaseRotation", T, False, ""),  # from the site file's phase rotations
    _k("GetConfigurationMaxKeys", N, False, "64"),
    _k("HeartbeatInterval", N, True, "300", minimum=1, maximum=86_400),
    _k("LocalAuthorizeOffline", B, True, "true"),
    _k("LocalPreAuthorize", B, True, "false"),
    _k("MeterValuesAlignedData", M, True, "Energy.Active.Import.Register"),
    _k("MeterValuesSampledData", M, True, ",".join(MEASURANDS)),
    _k("MeterValueSampleInterval", N, True, "60", maximum=86_400),
    _k("NumberOfConnectors", N, False, "0"),  # from the site
    _k("ResetRetries", N, False, "0"),
    _k("StopTransactionOnEVSideDisconnect", B, False, "true"),
    _k("StopTransactionOnInvalidId", B, True, "true"),
    _k("StopTxnAlignedData", M, True, ""),
    _k("StopTxnSampledData", M, True, "Energy.Active.Import.Register"),
    _k("SupportedFeatureProfiles", T, False, PROFILES),
    _k("TransactionMessageAttempts", N, True, "3", minimum=1, maximum=100),
    _k("TransactionMessageRetryInterval", N, True, "60", minimum=1, maximum=86_400),
    _k("UnlockConnectorOnEVSideDisconnect", B, False, "true"),
    _k("WebSocketPingInterval", N, True, "30", maximum=3600),
    # Local Auth List Management
    _k("LocalAuthListEnabled", B, True, "true"),
    _k("LocalAuthListMaxLength", N, False, "10000"),
    _k("SendLocalListMaxLength", N, False, "1000"),
    # Reservation
    _k("ReserveConnectorZeroSupported", B, False, "false"),
    # Smart Charging
    _k("ChargeProfileMaxStackLevel", N, False, "10"),
    _k("ChargingScheduleAllowedChargingRateUnit", T, False, "Current,Power"),
    _k("ChargingScheduleMaxPeriods", N, False, "48"),
    _k("MaxChargingProfilesInstalled", N, False, "50"),
    # Security whitepaper (1.6 edition 2)
    _k("SecurityProfile", N, False, "0"),
    _k("AuthorizationKey", KeyType.SECRET, True, ""),
)
KEYS: Mapping[str, KeySpec] = {k.name: k for k in _ALL}


class KeyError_(PermanentError):
    """A key value that is not valid for its key (the site file's or the CSMS's)."""


def check_value(spec: KeySpec, value: str) -> str:
    """The value in its normal spelling, or KeyError_ saying why it is not one."""
    text = value.strip()
    if spec.type is KeyType.BOOL:
        if text.lower() not in ("true", "false"):
            raise KeyError_(f"{spec.name} is true or false, not {value!r}")
        return text.lower()
    if spec.type is KeyType.INT:
        try:
            number = int(text)
        except ValueError:
            raise KeyError_(f"{spec.name} is a whole number, not {value!r}") from None
        if not spec.minimum <= number <= spec.maximum:
            raise KeyError_(f"{spec.name} is within {spec.minimum}..{spec.maximum}, not {number}")
        return str(number)
    if spec.type is KeyType.MEASURANDS:
        items = [m.strip() for m in text.split(",") if m.strip()]
        unknown = [m for m in items if m not in MEASURANDS]
        if unknown:
            raise KeyError_(
                f"{spec.name}: {', '.join(unknown)} not supported (supported: "
                f"{', '.join(MEASURANDS)})"
            )
        return ",".join(items)
    if spec.type is KeyType.SECRET:
        # 1.6 security whitepaper: the Basic auth password, at most 40 characters; shorter than
        # 16 is no secret worth the name.
        if not 16 <= len(value) <= 40 or not value.isascii() or not value.isprintable():
            raise KeyError_(f"{spec.name} is 16 to 40 printable ASCII characters")
        return value
    return value


class KeysFileError(PermanentError):
    """The keys file cannot be read or written (its contents are never quoted)."""


def _digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeResult:
    status: str  # ChangeConfiguration.conf: Accepted, Rejected, NotSupported
    reason: str = ""


class ConfigurationKeys:
    """The key values of one charge point (shared by the charge points of a per-EVSE site)."""

    def __init__(
        self,
        path: Path,
        *,
        site_values: Mapping[str, str],
        fixed: Mapping[str, str],
    ) -> None:
        """site_values: the site file's values (already checked); fixed: the read-only values
        evsite derives (NumberOfConnectors, SecurityProfile, ...)."""
        self.path = path
        self._site = dict(site_values)
        self._fixed = dict(fixed)
        self._overrides: dict[str, dict[str, str | None]] = {}
        self.listeners: list[Callable[[str, str], None]] = []
        self._load()

    # -- reading -----------------------------------------------------------------------------

    def _baseline(self, name: str) -> str | None:
        """The site file's value of a key (None: not in the file)."""
        return self._site.get(name)

    def _baseline_mark(self, name: str) -> str | None:
        base = self._baseline(name)
        if base is None:
            return None
        return _digest(base) if KEYS[name].type is KeyType.SECRET else base

    def get(self, name: str) -> str:
        spec = KEYS[name]
        if name in self._fixed:
            return self._fixed[name]
        override = self._overrides.get(name)
        if override is not None and override.get("site") == self._baseline_mark(name):
            value = override.get("value")
            if isinstance(value, str):
                return value
        base = self._baseline(name)
        return base if base is not None else spec.default

    def flag(self, name: str) -> bool:
        return self.get(name) == "true"

    def number(self, name: str) -> int:
        return int(self.get(name))

    def items(self, name: str) -> list[str]:
        return [m for m in self.get(name).split(",") if m]

    def secret(self, name: str) -> str | None:
        value = self.get(name)
        return value or None

    def configuration(self, names: Iterable[str] | None) -> dict[str, Any]:
        """The GetConfiguration.conf payload for ``names`` (None or empty: every key)."""
        wanted = list(names or [])
        known = [n for n in wanted if n in KEYS] if wanted else list(KEYS)
        unknown = [n for n in wanted if n not in KEYS]
        entries = []
        for name in known:
            spec = KEYS[name]
            entry: dict[str, Any] = {"key": name, "readonly": not spec.writable}
            if spec.type is not KeyType.SECRET:  # write-only: never read back
                entry["value"] = self.get(name)
            entries.append(entry)
        out: dict[str, Any] = {"configurationKey": entries}
        if unknown:
            out["unknownKey"] = unknown
        return out

    # -- writing -----------------------------------------------------------------------------

    def change(self, name: str, value: str) -> ChangeResult:
        """ChangeConfiguration: checked, stored (0600), then in force."""
        spec = KEYS.get(name)
        if spec is None:
            return ChangeResult(status="NotSupported", reason=f"unknown key {name}")
        if not spec.writable or name in self._fixed:
            return ChangeResult(status="Rejected", reason=f"{name} is read-only")
        try:
            normal = check_value(spec, value)
        except KeyError_ as exc:
            return ChangeResult(status="Rejected", reason=str(exc))
        before = dict(self._overrides)
        self._overrides[name] = {"value": normal, "site": self._baseline_mark(name)}
        try:
            self._save()
        except KeysFileError as exc:
            self._overrides = before
            return ChangeResult(status="Rejected", reason=str(exc))
        for listener in self.listeners:
            listener(name, normal)
        return ChangeResult(status="Accepted")

    # -- the file ----------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise KeysFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            document = json.loads(text)
        except ValueError:
            raise KeysFileError(f"{self.path} is not JSON; remove it to start over") from None
        overrides = document.get("overrides") if isinstance(document, dict) else None
        if not isinstance(overrides, dict):
            raise KeysFileError(f"{self.path} has no 'overrides'; remove it to start over")
        for name, entry in overrides.items():
            if name in KEYS and isinstance(entry, dict):
                self._overrides[name] = {
                    "value": entry.get("value") if isinstance(entry.get("value"), str) else None,
                    "site": entry.get("site") if isinstance(entry.get("site"), str) else None,
                }

    def _save(self) -> None:
        """Atomically, fsync'd, mode 0600 from the first byte (it may hold AuthorizationKey)."""
        directory = self.path.parent
        body = json.dumps({"overrides": self._overrides}, indent=1, sort_keys=True)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".ocpp-keys.", dir=directory)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise KeysFileError(f"cannot write {self.path}: {exc.strerror or exc}") from None
