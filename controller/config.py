"""Config layer (the edge): one YAML site file -> validated, typed, immutable core objects.

``load_config`` reads the file, validates it with pydantic (the only place pydantic sees the
site) and converts it once into the dataclasses of ``controller.core.site``. Every problem is
collected, not just the first, each as ``FILE:LINE: key.path: message`` so that a technician can
fix a file in one pass. Invariant I5 (the fallback currents fit every circuit node on every
phase, after phase rotation) is checked here, before the controller ever drives an EVSE.

The core never imports this module; the composition root and the CLI do.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import time
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path, PurePosixPath
from types import MappingProxyType, UnionType
from typing import Annotated, Any, Literal, NoReturn, Protocol, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from controller.adapters.mqtt.settings import MqttSettings, TlsFiles
from controller.adapters.ocpp.keys import KEYS, KeyError_, check_value
from controller.adapters.ocpp.settings import OcppSettings, OcppTls
from controller.core.errors import ConfigError
from controller.core.sessions import SessionSettings
from controller.core.site import (
    PHASE_NAMES,
    PHASES,
    Circuit,
    Connector,
    ControlSettings,
    DeviceSpec,
    EvKind,
    LoadManagement,
    SerialTransport,
    Site,
    TcpTransport,
    Transport,
    parse_rotation,
)
from controller.core.slots import TouPeriod
from controller.core.tariff import DEFAULT_PREAUTH_CENTS, Tariff, TouPrice, round_half_up
from drivers.modbus.registermap import DeviceKind, load_map_file
from drivers.registry import (
    EVSE_DRIVERS,
    GENERIC_EVSE,
    GENERIC_METER,
    METER_DRIVERS,
    capabilities,
    line_time_s,
)
from drivers.terminal.profile import PROFILES as TERMINAL_PROFILES
from drivers.terminal.settings import SerialLink, TcpLink, TerminalSettings

__all__ = [
    "ROOT_CIRCUIT_ID",
    "STANDARD_BAUDRATES",
    "ConfigReport",
    "ConfigUnreadable",
    "FallbackLoad",
    "LoadedConfig",
    "LogFormat",
    "ServiceSettings",
    "TariffPayload",
    "check_config",
    "check_config_text",
    "fallback_loads",
    "load_config",
    "load_config_text",
    "tariff_from_payload",
]

ROOT_CIRCUIT_ID = "grid"
STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
LogFormat = Literal["auto", "console", "json"]

# A key path into the YAML document: ("evses", 2, "max_current_a") is evses[2].max_current_a.
KeyPath = tuple[str | int, ...]

# Sums of floats (6.1 + 6.2 + ...) must not fail I5 by a rounding error.
_EPS = 1e-9
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
# YAML 1.1 reads an unquoted 22:00 as the base-60 number 1320; nobody means that in a site file.
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
# Aliases can make a tiny file expand into a huge document ("billion laughs").
_MAX_NODES = 100_000


# --------------------------------------------------------------------------------------------
# Public results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """How the service runs on the gateway: its directories, control socket and log format."""

    state_dir: Path = Path("/var/lib/evsite")
    runtime_dir: Path = Path("/run/evsite")
    socket_group: str | None = None
    socket_mode: int = 0o660
    log_format: LogFormat = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedConfig:
    """A site file that passed every check. ``warnings`` are formatted like problems."""

    site: Site
    service: ServiceSettings
    warnings: tuple[str, ...]
    source: Path
    mqtt: MqttSettings | None = None  # None: no cloud link over MQTT
    ocpp: OcppSettings | None = None  # None: no OCPP link
    tariff: Tariff | None = None  # None: no tariff, no card payments
    terminal: TerminalSettings | None = None  # None: no payment terminal
    sessions: SessionSettings = field(default_factory=SessionSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigReport:
    """Everything a check found: the problems, the warnings, and the config when it is valid."""

    source: Path
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    config: LoadedConfig | None

    @property
    def ok(self) -> bool:
        return self.config is not None


class ConfigUnreadable(ConfigError):
    """The config file could not be read at all (missing, no permission, a directory)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackLoad:
    """I5 for one circuit node and one grid phase: the fallback currents against the limit.

    ``limit_a`` is rating - worst-case non-EV load - margin; ``connectors`` lists the connectors
    under the node (sub-boards included) that draw on this phase with a non-zero fallback.
    """

    circuit: str
    phase: int
    sum_a: float
    limit_a: float
    connectors: tuple[tuple[str, float], ...]

    @property
    def fits(self) -> bool:
        return self.sum_a <= self.limit_a + _EPS


def fallback_loads(site: Site) -> tuple[FallbackLoad, ...]:
    """I5 figures for every circuit node (root first) and every grid phase."""
    return _fallback_loads(site.circuits, site.connectors)


def _fallback_loads(
    circuits: Sequence[Circuit], connectors: Sequence[Connector]
) -> tuple[FallbackLoad, ...]:
    parent = {c.id: c.parent for c in circuits}

    def path_to_root(circuit_id: str) -> set[str]:
        seen: set[str] = set()
        node: str | None = circuit_id
        while node is not None and node not in seen:
            seen.add(node)
            node = parent.get(node)
        return seen

    chains = {k.id: path_to_root(k.circuit) for k in connectors}
    loads: list[FallbackLoad] = []
    for circuit in circuits:
        under = [k for k in connectors if circuit.id in chains[k.id]]
        for phase in PHASES:
            drawing = tuple(
                (k.id, k.orphaned_current_a)
                for k in under
                if phase in k.grid_phases and k.orphaned_current_a > 0
            )
            loads.append(
                FallbackLoad(
                    circuit=circuit.id,
                    phase=phase,
                    sum_a=math.fsum(a for _, a in drawing),
                    limit_a=circuit.rating_a
                    - circuit.worst_case_non_ev_a[phase]
                    - circuit.margin_a,
                    connectors=drawing,
                )
            )
    return tuple(loads)


def load_config(path: Path) -> LoadedConfig:
    """Read, validate and convert a site file. Raises ConfigError listing every problem."""
    report = check_config(path)
    if report.config is None:
        raise ConfigError(list(report.problems))
    return report.config


def load_config_text(text: str, *, source: Path = Path("<string>")) -> LoadedConfig:
    """Like ``load_config`` for text already in memory (tests, golden scenarios)."""
    report = check_config_text(text, source=source)
    if report.config is None:
        raise ConfigError(list(report.problems))
    return report.config


def check_config(path: Path) -> ConfigReport:
    """Check a site file without raising for its content; raises ConfigUnreadable only."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigUnreadable([f"{path}: cannot read the file: {reason}"]) from exc
    label = str(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = f"{label}:{line}: YAML syntax error: the file is not UTF-8 text ({exc.reason})"
        return ConfigReport(source=path, problems=(problem,), warnings=(), config=None)
    return _Loader(label, path).run(text)


def check_config_text(text: str, *, source: Path = Path("<string>")) -> ConfigReport:
    """Like ``check_config`` for text already in memory."""
    return _Loader(str(source), source).run(text)


# --------------------------------------------------------------------------------------------
# The file format as pydantic models (validation only; nothing outside this module sees them)
# --------------------------------------------------------------------------------------------

# strict: "32" is not 32 and true is not 1; a float field still takes an int.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_GROUP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_SERIAL_PORT_RE = re.compile(r"/dev/\S*[^/\s]")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

# One error type for every rule of ours: its message is shown as it is.
_OWN_ERROR = "evsite_rule"


def _fail(message: str) -> NoReturn:
    # The message goes in as context so that braces in a value are not read as a template.
    raise PydanticCustomError(_OWN_ERROR, "{message}", {"message": message})


def _valid_id(value: str) -> str:
    if not _ID_RE.fullmatch(value):
        _fail(
            "an id is 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit;"
            f" got {value!r}"
        )
    return value


def _valid_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        message = f"unknown time zone {value!r}; use an IANA name like 'Europe/Berlin'"
        names = sorted(zoneinfo.available_timezones())
        same_but_case = [n for n in names if n.lower() == value.lower()]
        guess = same_but_case[0] if same_but_case else _closest(value, names)
        _fail(f"{message} (did you mean {guess!r}?)" if guess else message)
    return value


def _per_phase(value: object) -> object:
    """``20`` -> (20, 20, 20); ``[2, 0, 0]`` -> (2, 0, 0)."""
    numbers: list[float]
    if isinstance(value, int | float) and not isinstance(value, bool):
        numbers = [value] * 3
    elif isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value):
        numbers = [float(v) for v in value]
    else:
        _fail(f"expected a number or a list of three numbers [L1, L2, L3], got {_show(value)}")
    if any(not math.isfinite(v) or v < 0 for v in numbers):
        _fail(f"must be >= 0 on every phase, got {_show(value)}")
    return tuple(float(v) for v in numbers)


def _none_as_empty_mapping(value: object) -> object:
    return {} if value is None else value


def _octal_text(value: object) -> object:
    """``"0660"`` / ``"0o660"`` -> 0o660 (YAML 1.1 reads an unquoted 0660 as octal itself)."""
    if isinstance(value, str) and re.fullmatch(r"(0o|0)?[0-7]{1,4}", value.strip()):
        return int(value.strip().removeprefix("0o"), 8)
    return value


def _valid_mode(value: int) -> int:
    if not 0 <= value <= 0o777:
        _fail(
            f"must be a file mode within 0000..0777, got {value} (octal {value:o}); "
            "write it as 0660 or '0o660'"
        )
    return value


def _valid_group(value: str) -> str:
    if not _GROUP_RE.fullmatch(value):
        _fail(f"{value!r} is not a valid group name")
    return value


def _absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        _fail(f"must be an absolute path, got {value!r}")
    return value


def _valid_client_id(value: str) -> str:
    if not _CLIENT_ID_RE.fullmatch(value):
        _fail(
            "a client id is 1 to 64 letters, digits, '_', '-', '.' or ':' (brokers may refuse "
            f"others); got {value!r}"
        )
    return value


_TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def _valid_topic_prefix(value: str) -> str:
    if not _TOPIC_PREFIX_RE.fullmatch(value):
        _fail(
            "a topic prefix is one or more levels of letters, digits, '_', '-' or '.' "
            f"separated by '/' (no wildcards, no leading or trailing '/'); got {value!r}"
        )
    return value


def _valid_rotation(value: str) -> str:
    try:
        parse_rotation(value)
    except ValueError as exc:
        _fail(str(exc))
    return value


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DAY_GROUPS: Mapping[str, frozenset[int]] = MappingProxyType(
    {
        "weekdays": frozenset(range(1, 6)),
        "weekend": frozenset({6, 7}),
        "daily": frozenset(range(1, 8)),
    }
)


def _valid_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        _fail(
            "a name is 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit;"
            f" got {value!r}"
        )
    return value


def _day_number(word: object) -> int:
    if not isinstance(word, str):
        _fail(f"expected day names like mon, tue, ...; got {_show(word)} in the list")
    text = word.strip().lower()
    if text in DAY_NAMES:
        return DAY_NAMES.index(text) + 1
    if text in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(text) + 1
    message = f"unknown day {word!r}; use {', '.join(DAY_NAMES)}"
    guess = _closest(text, [*DAY_NAMES, *DAY_GROUPS])
    _fail(f"{message} (did you mean {guess!r}?)" if guess else message)


def _days(value: object) -> object:
    """``weekdays`` / ``weekend`` / ``daily``, one day, or a list of days -> ISO weekdays."""
    if isinstance(value, str):
        group = DAY_GROUPS.get(value.strip().lower())
        return group if group is not None else frozenset({_day_number(value)})
    if isinstance(value, list):
        if not value:
            _fail("no days listed; list days like [mon, tue] or write weekdays, weekend or daily")
        return frozenset(_day_number(v) for v in value)
    _fail(
        "expected a list of days like [mon, tue] or one of 'weekdays', 'weekend', 'daily', "
        f"got {_show(value)}"
    )


def _valid_start(value: str) -> str:
    if value == "24:00":
        _fail("24:00 is only an end (midnight at the end of the day); a start of 00:00 is it")
    if not _HHMM_RE.fullmatch(value):
        _fail(f"expected a time as 'HH:MM' (00:00..23:59), got {value!r}{_two_digits(value)}")
    return value


def _valid_end(value: str) -> str:
    if value != "24:00" and not _HHMM_RE.fullmatch(value):
        _fail(
            "expected a time as 'HH:MM' (00:00..23:59, or 24:00 for midnight), "
            f"got {value!r}{_two_digits(value)}"
        )
    return value


def _two_digits(value: str) -> str:
    return f" (write '0{value}')" if _HHMM_RE.fullmatch(f"0{value}") else ""


def _clock_time(text: str) -> time:
    """``"22:00"`` -> 22:00; ``"24:00"`` -> 00:00 (midnight at the end of the day)."""
    hours, minutes = (int(part) for part in text.split(":"))
    return time(0) if hours == 24 else time(hours, minutes)


def _valid_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    # All digits and dots but no IP address: a mistyped address, not a host name.
    if (
        not value
        or len(value) > 253
        or re.fullmatch(r"[0-9.]+", value)
        or not all(_HOST_LABEL_RE.fullmatch(p) for p in value.removesuffix(".").split("."))
    ):
        _fail(f"{value!r} is not an IP address or host name")
    return value


def _valid_tcp_port(value: int) -> int:
    if not 1 <= value <= 65535:
        _fail(f"TCP port must be within 1..65535, got {value}")
    return value


def _valid_serial_port(value: str) -> str:
    if not _SERIAL_PORT_RE.fullmatch(value):
        _fail(
            "serial port must be a device path like /dev/ttyUSB0 or /dev/serial/by-id/..., "
            f"got {value!r}"
        )
    return value


def _valid_baudrate(value: int) -> int:
    if value not in STANDARD_BAUDRATES:
        rates = ", ".join(str(b) for b in STANDARD_BAUDRATES)
        _fail(f"{value} is not a standard baud rate; use one of {rates}")
    return value


def _valid_parity(value: str) -> str:
    if value not in ("N", "E", "O"):
        _fail(f"must be N (none), E (even) or O (odd), got {value!r}")
    return value


def _one_of(*allowed: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value not in allowed:
            _fail(f"must be {' or '.join(str(a) for a in allowed)}, got {value}")
        return value

    return check


def _driver_check(
    kind: str, known: Mapping[str, str], other: Mapping[str, str]
) -> Callable[[str], str]:
    other_kind = "EVSE" if kind == "meter" else "meter"

    def check(value: str) -> str:
        if value in known:
            return value
        if value in other:
            message = f"{value!r} is {_a(other_kind)} driver, not {_a(kind)} driver"
        else:
            message = f"unknown {kind} driver {value!r}"
            guess = _closest(value, sorted(known))
            if guess is not None:
                message += f" (did you mean {guess!r}?)"
        _fail(f"{message}; known {kind} drivers: {', '.join(sorted(known))}")

    return check


Id = Annotated[str, AfterValidator(_valid_id)]
PerPhase = Annotated[tuple[float, float, float], BeforeValidator(_per_phase)]
Days = Annotated[frozenset[int], BeforeValidator(_days)]
Options = Annotated[dict[str, object], BeforeValidator(_none_as_empty_mapping)]


class _SiteModel(BaseModel):
    model_config = _STRICT
    id: Id
    name: str | None = None
    timezone: Annotated[str, AfterValidator(_valid_timezone)]
    nominal_voltage_v: float = Field(default=230.0, ge=100, le=500)


class _GridModel(BaseModel):
    model_config = _STRICT
    rating_a: float = Field(gt=0)
    margin_a: float = Field(default=0.0, ge=0)
    meter: str | None = None
    worst_case_non_ev_a: PerPhase = (0.0, 0.0, 0.0)
    exports: bool = False
    meter_export_positive: bool = False


class _CircuitModel(BaseModel):
    model_config = _STRICT
    id: Id
    parent: str = ROOT_CIRCUIT_ID
    rating_a: float = Field(gt=0)
    margin_a: float = Field(default=0.0, ge=0)
    meter: str | None = None
    worst_case_non_ev_a: PerPhase = (0.0, 0.0, 0.0)


class _TcpModel(BaseModel):
    model_config = _STRICT
    type: Literal["tcp"]
    host: Annotated[str, AfterValidator(_valid_host)]
    port: Annotated[int, AfterValidator(_valid_tcp_port)] = 502
    rtu_over_tcp: bool = False


class _SerialModel(BaseModel):
    model_config = _STRICT
    type: Literal["serial"]
    port: Annotated[str, AfterValidator(_valid_serial_port)]
    baudrate: Annotated[int, AfterValidator(_valid_baudrate)] = 9600
    parity: Annotated[str, AfterValidator(_valid_parity)] = "N"
    stopbits: Annotated[int, AfterValidator(_one_of(1, 2))] = 1
    bytesize: Annotated[int, AfterValidator(_one_of(7, 8))] = 8


_TRANSPORT_MODELS: dict[str, type[BaseModel]] = {"tcp": _TcpModel, "serial": _SerialModel}
TransportModel = Annotated[_TcpModel | _SerialModel, Field(discriminator="type")]


class _MeterModel(BaseModel):
    model_config = _STRICT
    id: Id
    driver: Annotated[str, AfterValidator(_driver_check("meter", METER_DRIVERS, EVSE_DRIVERS))]
    transport: TransportModel
    unit_id: int = 1
    timeout_s: float = Field(default=0.5, gt=0, le=10)
    options: Options = Field(default_factory=dict)


class _EvseModel(BaseModel):
    model_config = _STRICT
    id: Id
    driver: Annotated[str, AfterValidator(_driver_check("EVSE", EVSE_DRIVERS, METER_DRIVERS))]
    transport: TransportModel
    unit_id: int = 1
    timeout_s: float = Field(default=0.5, gt=0, le=10)
    options: Options = Field(default_factory=dict)
    circuit: str = ROOT_CIRCUIT_ID
    phase_rotation: Annotated[str, AfterValidator(_valid_rotation)] = "L1L2L3"
    min_current_a: float = Field(default=6.0, ge=6)
    max_current_a: float = Field(default=32.0, gt=0)
    fallback_current_a: float = Field(default=6.0, ge=0)
    priority_tier: int = Field(default=0, ge=0)
    ev_kind: Literal["auto", "1p", "3p"] = "auto"
    unwatched_cap_a: float | None = Field(default=None, ge=0)


_DeviceModel = _MeterModel | _EvseModel


class _ControlModel(BaseModel):
    model_config = _STRICT
    tick_s: float = Field(default=1.0, gt=0, le=60)
    meter_stale_s: float = Field(default=3.0, gt=0)
    fallback_after_s: float = Field(default=10.0, gt=0)
    evse_stale_s: float = Field(default=5.0, gt=0)
    meter_frozen_s: float = Field(default=ControlSettings().meter_frozen_s, gt=0)
    cap_unwatched: bool = True


# The defaults are the core's own, so the file format and the engine cannot drift apart.
_LM = LoadManagement()


class _LoadManagementModel(BaseModel):
    """``load_management:``, one key per field of core ``LoadManagement``, same names."""

    model_config = _STRICT
    ramp_step_a: float = Field(default=_LM.ramp_step_a, gt=0)
    ramp_period_s: float = Field(default=_LM.ramp_period_s, gt=0)
    follow_tolerance_a: float = Field(default=_LM.follow_tolerance_a, ge=0)
    settle_s: float = Field(default=_LM.settle_s, ge=0)
    increase_deadband_a: float = Field(default=_LM.increase_deadband_a, ge=0)
    resume_margin_a: float = Field(default=_LM.resume_margin_a, ge=0)
    min_on_s: float = Field(default=_LM.min_on_s, ge=0)
    min_off_s: float = Field(default=_LM.min_off_s, ge=0)
    rotation_s: float = Field(default=_LM.rotation_s, ge=0)
    unused_threshold_a: float = Field(default=_LM.unused_threshold_a, ge=0)
    unused_after_s: float = Field(default=_LM.unused_after_s, ge=0)
    unused_headroom_a: float = Field(default=_LM.unused_headroom_a, ge=0)
    detect_on_a: float = Field(default=_LM.detect_on_a, ge=0)
    detect_off_a: float = Field(default=_LM.detect_off_a, ge=0)
    detect_after_s: float = Field(default=_LM.detect_after_s, ge=0)
    unbalanced_limit_a: float | None = Field(default=_LM.unbalanced_limit_a, ge=6)


class _TimeOfUseModel(BaseModel):
    """One item of ``time_of_use:``: a site power cap on some days between two clock times."""

    model_config = _STRICT
    name: Annotated[str, AfterValidator(_valid_name)]
    days: Days
    start: Annotated[str, AfterValidator(_valid_start)]
    end: Annotated[str, AfterValidator(_valid_end)]
    power_kw: float = Field(gt=0)


class _ServiceModel(BaseModel):
    model_config = _STRICT
    state_dir: Annotated[str, AfterValidator(_absolute)] = "/var/lib/evsite"
    runtime_dir: Annotated[str, AfterValidator(_absolute)] = "/run/evsite"
    socket_group: Annotated[str, AfterValidator(_valid_group)] | None = None
    socket_mode: Annotated[int, BeforeValidator(_octal_text), AfterValidator(_valid_mode)] = 0o660
    log_format: LogFormat = "auto"


class _SessionsModel(BaseModel):
    """``sessions:``: how a charging session starts (docs/configuration.md)."""

    model_config = _STRICT
    free_vend: bool = True
    connection_timeout_s: float = Field(default=60.0, gt=0, le=3600)


class _TlsModel(BaseModel):
    model_config = _STRICT
    ca_file: Annotated[str, AfterValidator(_absolute)]
    cert_file: Annotated[str, AfterValidator(_absolute)] | None = None
    key_file: Annotated[str, AfterValidator(_absolute)] | None = None


class _MqttModel(BaseModel):
    """``mqtt:``: the link to the cloud backend (docs/mqtt.md)."""

    model_config = _STRICT
    host: Annotated[str, AfterValidator(_valid_host)]
    port: Annotated[int, AfterValidator(_valid_tcp_port)] | None = None
    tls: _TlsModel | None = None
    credentials_file: Annotated[str, AfterValidator(_absolute)] | None = None
    client_id: Annotated[str, AfterValidator(_valid_client_id)] | None = None
    keepalive_s: int = Field(default=30, ge=1, le=65535)
    telemetry_interval_s: float = Field(default=1.0, ge=0.1)
    outbox_max_events: int = Field(default=100_000, ge=1)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    protocol: Literal[5, "3.1.1"] = 5
    allow_test_injection: bool = False
    home_assistant: bool = False  # Home Assistant MQTT discovery (docs/mqtt.md)
    home_assistant_prefix: Annotated[str, AfterValidator(_valid_topic_prefix)] = "homeassistant"


# Finer than a hundredth of a cent per unit is a slip (or a binary float's tail), not a price.
_MAX_PRICE_DECIMALS = 4
_CURRENCY_RE = re.compile(r"[A-Z]{3}")


def _exact_amount(value: object) -> object:
    """A price or amount as an exact Decimal: ``0.39`` (YAML and JSON read a binary float; its
    shortest text is what was written), ``"0.39"`` or ``1``; finite, >= 0, at most 4 decimals."""
    shown = str(value) if isinstance(value, Decimal) else _show(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        _fail(f"expected a number, got {shown}")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        _fail(f"expected a number, got {shown}")
    if not amount.is_finite():
        _fail(f"must be a finite number, got {shown}")
    if amount < 0:
        _fail(f"must be >= 0, got {shown}")
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > _MAX_PRICE_DECIMALS:
        _fail(f"at most {_MAX_PRICE_DECIMALS} decimal places, got {shown}")
    return amount


def _valid_vat(value: Decimal) -> Decimal:
    if value > 100:
        _fail(f"must be within 0..100 (percent), got {value}")
    return value


def _valid_currency(value: str) -> str:
    if not _CURRENCY_RE.fullmatch(value):
        hint = f" (write {value.upper()!r})" if _CURRENCY_RE.fullmatch(value.upper()) else ""
        _fail(
            f"expected an ISO 4217 currency code of three capital letters like 'EUR', "
            f"got {value!r}{hint}"
        )
    return value


Amount = Annotated[Decimal, BeforeValidator(_exact_amount)]


class _TariffTouModel(BaseModel):
    """One item of ``tariff.time_of_use:``: an energy price on some days between two times."""

    model_config = _STRICT
    name: Annotated[str, AfterValidator(_valid_name)]
    days: Days
    start: Annotated[str, AfterValidator(_valid_start)]
    end: Annotated[str, AfterValidator(_valid_end)]
    price_per_kwh: Amount


class TariffPayload(BaseModel):
    """A tariff as the cloud sends it (JSON), for ``tariff_from_payload``: the keys of the site
    file's ``tariff:`` except ``preauth_cap_cents``, which stays the site's own."""

    model_config = _STRICT
    id: Id
    name: str | None = None
    currency: Annotated[str, AfterValidator(_valid_currency)]
    vat_rate_pct: Annotated[Decimal, BeforeValidator(_exact_amount), AfterValidator(_valid_vat)]
    price_per_kwh: Amount
    time_of_use: list[_TariffTouModel] = Field(default_factory=list)
    price_per_minute: Amount = Decimal(0)
    session_fee: Amount = Decimal(0)
    idle_fee_per_minute: Amount = Decimal(0)
    idle_grace_min: Amount = Decimal(0)
    preauth_cents: int = Field(default=DEFAULT_PREAUTH_CENTS, gt=0)


class _TerminalModel(BaseModel):
    """``terminal:``: the site's ZVT payment terminal (docs/configuration.md, payments.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: Id = "terminal"
    port: Annotated[str, AfterValidator(_valid_serial_port)] | None = None
    host: Annotated[str, AfterValidator(_valid_host)] | None = None
    tcp_port: Annotated[int, AfterValidator(_valid_tcp_port)] = 20007
    baudrate: Annotated[int, AfterValidator(_valid_baudrate)] = 9600
    parity: Annotated[str, AfterValidator(_valid_parity)] = "N"
    stopbits: Annotated[int, AfterValidator(_one_of(1, 2))] = 2
    profile: Literal["generic", "feig_cvend", "book_total"] = "generic"
    password: int = Field(default=0, ge=0, le=999999)
    connectors: list[str] | None = None
    t1_s: float = Field(default=0.2, gt=0, le=10)
    t3_s: float = Field(default=5.0, gt=0, le=60)
    t4_s: float = Field(default=180.0, gt=0, le=600)
    stop_headroom_s: float = Field(default=5.0, gt=0, le=600)
    retry_s: float = Field(default=30.0, gt=0, le=3600)
    usage_save_s: float = Field(default=10.0, gt=0, le=600)
    preauth_on_plug_in: bool = False
    end_of_day_every_s: float = Field(default=86_400.0, ge=60, le=7 * 86_400)


_OCPP_IDENTITY_RE = re.compile(r"[A-Za-z0-9_.*+|@-]{1,48}")
_OCPP_TEXT_MAX = {"vendor": 20, "model": 20, "serial": 25, "firmware": 50, "anonymous_id_tag": 20}


def _valid_ocpp_identity(value: str) -> str:
    if not _OCPP_IDENTITY_RE.fullmatch(value):
        _fail(
            "an OCPP identity is 1 to 48 letters, digits or _ . * + | @ - (no ':' and no '/'); "
            f"got {value!r}"
        )
    return value


def _valid_ws_url(value: str) -> str:
    if not re.fullmatch(r"wss?://[^/\s:@]+(:[0-9]{1,5})?(/[^\s?#@]*)?", value):
        _fail(
            "the CSMS endpoint without the identity, like wss://csms.example.com/ocpp "
            f"(no credentials in it: use credentials_file); got {value!r}"
        )
    return value


class _OcppModel(BaseModel):
    """``ocpp:``: the OCPP 1.6J link to the operator's backend (docs/ocpp.md)."""

    model_config = _STRICT
    url: Annotated[str, AfterValidator(_valid_ws_url)]
    identity: Annotated[str, AfterValidator(_valid_ocpp_identity)] | None = None
    vendor: str = "evsite"
    model: str = "evsite-gateway"
    serial: str | None = None
    firmware: str | None = None
    topology: Literal["gateway", "per_evse"] = "gateway"
    security_profile: Literal[0, 1, 2, 3] | None = None
    tls: _TlsModel | None = None
    credentials_file: Annotated[str, AfterValidator(_absolute)] | None = None
    keys: dict[str, str | int | bool] = Field(default_factory=dict)
    call_timeout_s: float = Field(default=30.0, gt=0, le=600)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    outbox_max_messages: int = Field(default=100_000, ge=1)
    anonymous_id_tag: str = "evsite"


class _TariffModel(TariffPayload):
    """``tariff:`` in the site file (docs/configuration.md, docs/payments.md)."""

    preauth_cap_cents: Annotated[int, Field(gt=0)] | None = None


_SECTIONS: dict[str, type[BaseModel]] = {
    "site": _SiteModel,
    "grid": _GridModel,
    "circuits": _CircuitModel,
    "meters": _MeterModel,
    "evses": _EvseModel,
    "control": _ControlModel,
    "load_management": _LoadManagementModel,
    "time_of_use": _TimeOfUseModel,
    "service": _ServiceModel,
    "sessions": _SessionsModel,
    "mqtt": _MqttModel,
    "ocpp": _OcppModel,
    "tariff": _TariffModel,
    "terminal": _TerminalModel,
}
_REQUIRED_SECTIONS = ("site", "grid")

# Extra words for a range error on a field whose limit has a reason worth saying.
_RANGE_HINTS = {
    "min_current_a": "IEC 61851 allows no charging current below 6 A",
    "nominal_voltage_v": "the phase-to-neutral voltage, e.g. 230",
    "unbalanced_limit_a": "or null for no limit",
}

# Fields that hold names: a number there was probably meant as text.
_NAME_FIELDS = ("id", "name", "parent", "circuit", "meter", "socket_group", "host", "driver")
# Fields that hold a clock time: a number there was probably meant as 'HH:MM'.
_TIME_FIELDS = ("start", "end")

M = TypeVar("M", bound=BaseModel)
W = TypeVar("W")  # an item of a weekly schedule: TouPeriod, TouPrice


class _WeeklyItem(Protocol):
    """A validated item of a weekly schedule (``time_of_use`` periods, tariff prices)."""

    @property
    def name(self) -> str: ...
    @property
    def start(self) -> str: ...
    @property
    def end(self) -> str: ...


# --------------------------------------------------------------------------------------------
# Rendering values and paths in messages
# --------------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _n(value: float) -> str:
    return f"{value:g}"


def _show(value: object) -> str:
    """A value as the technician wrote it in YAML."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return repr(value)


def _format_path(path: KeyPath) -> str:
    text = ""
    for element in path:
        if isinstance(element, int):
            text += f"[{element}]"
        else:
            text += f".{element}" if text else element
    return text or "(top level)"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_TYPE_WORDS = {
    "float_type": "a number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "string_type": "text",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _closest(word: str, choices: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown_key_message(key: object, valid: Sequence[str]) -> str:
    text = f"unknown key {key!r}"
    guess = _closest(str(key), valid)
    if guess is not None:
        return f"{text}; did you mean {guess!r}?"
    if valid:
        return f"{text}; valid keys here: {', '.join(valid)}"
    return text


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model that validated the mapping at ``loc`` (to list its keys for a typo)."""
    current: object = model
    for element in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(element))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) in (Union, UnionType):
            # A discriminated union puts its tag ("tcp") into the error location.
            current = _TRANSPORT_MODELS.get(str(element))
        elif get_origin(current) in (list, dict) and get_args(current):
            current = get_args(current)[-1]
        else:
            return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


# --------------------------------------------------------------------------------------------
# The loader: YAML -> data with lines -> pydantic -> cross checks -> core objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Finding:
    line: int
    text: str


class _Loader:
    def __init__(self, label: str, source: Path) -> None:
        self.label = label
        self.source = source
        self.lines: dict[KeyPath, int] = {(): 1}
        self.data: object = None
        self.problems: list[_Finding] = []
        self.warnings: list[_Finding] = []
        self.evse_paths: dict[str, KeyPath] = {}
        self._nodes = 0
        self._open: set[int] = set()  # nodes being built, to catch an alias inside itself

    # -- reporting ---------------------------------------------------------------------------

    def line_of(self, path: KeyPath) -> int:
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path]

    def where(self, path: KeyPath) -> str:
        return f"{_format_path(path)} (line {self.line_of(path)})"

    def error(self, path: KeyPath, message: str) -> None:
        line = self.line_of(path)
        self.problems.append(
            _Finding(line, f"{self.label}:{line}: {_format_path(path)}: {message}")
        )

    def warn(self, path: KeyPath, message: str) -> None:
        line = self.line_of(path)
        self.warnings.append(
            _Finding(line, f"{self.label}:{line}: {_format_path(path)}: {message}")
        )

    def report(self, config: LoadedConfig | None) -> ConfigReport:
        def ordered(found: list[_Finding]) -> tuple[str, ...]:
            return tuple(f.text for f in sorted(found, key=lambda f: f.line))

        problems = ordered(self.problems)
        warnings = ordered(self.warnings)
        if problems:
            config = None
        elif config is not None:
            # replace(): every other field (mqtt, tariff, ...) comes along as it is.
            config = replace(config, warnings=warnings)
        return ConfigReport(source=self.source, problems=problems, warnings=warnings, config=config)

    # -- YAML --------------------------------------------------------------------------------

    def run(self, text: str) -> ConfigReport:
        try:
            self.data = self.compose(text)
        except yaml.MarkedYAMLError as exc:
            self.problems.append(_Finding(1, self.syntax_error(exc)))
            return self.report(None)
        except yaml.reader.ReaderError as exc:
            line = text[: exc.position].count("\n") + 1
            char = exc.character
            shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
            problem = f"unacceptable character {shown}: {exc.reason}"
            self.problems.append(
                _Finding(line, f"{self.label}:{line}: YAML syntax error: {problem}")
            )
            return self.report(None)
        except _BadDocument as exc:
            problem = f"{self.label}:{exc.line}: YAML syntax error: {exc.problem}"
            self.problems.append(_Finding(exc.line, problem))
            return self.report(None)
        return self.report(self.check())

    def syntax_error(self, exc: yaml.MarkedYAMLError) -> str:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        if exc.context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        elif exc.context:
            problem += f" ({exc.context})"
        return f"{self.label}:{line}: YAML syntax error: {problem}"

    def compose(self, text: str) -> object:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            return None if node is None else self.build(loader, node, ())
        finally:
            loader.dispose()

    def build(self, loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath) -> object:
        """Plain data from a node, recording the line of every key path on the way."""
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise _BadDocument(
                f"the document expands to more than {_MAX_NODES} values (aliases?)", 1
            )
        if id(node) in self._open:
            raise _BadDocument("an alias refers to a value that contains it", _line(node))
        self._open.add(id(node))
        try:
            return self.build_inner(loader, node, path)
        finally:
            self._open.discard(id(node))

    def build_inner(self, loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath) -> object:
        if isinstance(node, yaml.CollectionNode) and node.tag not in (_MAP_TAG, _SEQ_TAG):
            raise _BadDocument(f"unsupported tag {node.tag!r}", _line(node))
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # resolves "<<" merge keys like yaml.safe_load does
            mapping: dict[str, object] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    where = _format_path(path)
                    message = f"key {_show(key)} is not text; quote it"
                    self.problems.append(_Finding(line, f"{self.label}:{line}: {where}: {message}"))
                    continue
                child = (*path, key)
                if key in mapping:
                    first = self.lines[child]
                    self.problems.append(
                        _Finding(
                            line,
                            f"{self.label}:{line}: {_format_path(child)}: duplicate key "
                            f"{key!r} (first at line {first}); YAML would keep only the last",
                        )
                    )
                    continue
                self.lines[child] = line
                mapping[key] = self.build(loader, value_node, child)
            return mapping
        if isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS and ":" in node.value:
            return node.value
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            for index, item_node in enumerate(node.value):
                child = (*path, index)
                self.lines[child] = item_node.start_mark.line + 1
                items.append(self.build(loader, item_node, child))
            return items
        return loader.construct_object(node, deep=True)

    # -- pydantic ----------------------------------------------------------------------------

    def validate(self, model: type[M], path: KeyPath, raw: object) -> M | None:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                self.pydantic_error(model, path, err)
            return None

    def data_path(self, base: KeyPath, loc: Sequence[str | int]) -> KeyPath:
        """pydantic's ``loc`` as a path into the data: union tags dropped, missing keys kept."""
        node: object = self.data
        for element in base:
            node = node[element] if isinstance(node, dict | list) else None  # type: ignore[index]
        path = list(base)
        for i, element in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, dict):
                if element in node:
                    path.append(element)
                    node = node[element]
                elif last:
                    path.append(element)
            elif isinstance(node, list) and isinstance(element, int) and element < len(node):
                path.append(element)
                node = node[element]
            else:
                break
        return tuple(path)

    def pydantic_error(self, model: type[BaseModel], base: KeyPath, err: ErrorDetails) -> None:
        loc = err["loc"]
        kind = err["type"]
        value = err.get("input")
        ctx = err.get("ctx") or {}
        path = self.data_path(base, loc)
        field_name = str(path[-1]) if path else ""
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            valid = list(owner.model_fields) if owner is not None else []
            self.error(path, _unknown_key_message(loc[-1], valid))
        elif kind == "missing":
            self.error(path, "missing required key")
        elif kind == "union_tag_invalid":
            self.error(
                (*path, "type"),
                f"unknown transport type {ctx.get('tag')!r}; use 'tcp' or 'serial'",
            )
        elif kind == "union_tag_not_found":
            self.error((*path, "type"), "missing required key (transport type: tcp or serial)")
        elif kind in _TYPE_WORDS:
            message = f"expected {_TYPE_WORDS[kind]}, got {_show(value)}"
            if kind in ("float_type", "int_type") and isinstance(value, str):
                if _looks_numeric(value):
                    message += " (quoted text; remove the quotes)"
            elif kind == "string_type" and _is_number(value) and field_name in _NAME_FIELDS:
                message += f" (a number; quote it: '{value}')"
            elif kind == "string_type" and field_name in _TIME_FIELDS:
                message += " (write a time as 'HH:MM', e.g. '22:00')"
            self.error(path, message)
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op, bound = {
                "greater_than": (">", ctx.get("gt")),
                "greater_than_equal": (">=", ctx.get("ge")),
                "less_than": ("<", ctx.get("lt")),
                "less_than_equal": ("<=", ctx.get("le")),
            }[kind]
            message = f"must be {op} {_n(float(bound or 0))}, got {_show(value)}"
            hint = _RANGE_HINTS.get(field_name)
            self.error(path, f"{message} ({hint})" if hint else message)
        elif kind == "finite_number":
            self.error(path, f"must be a finite number, got {_show(value)}")
        elif kind == "literal_error":
            self.error(path, f"must be {ctx.get('expected')}, got {_show(value)}")
        elif kind == _OWN_ERROR:
            self.error(path, err["msg"])
        else:
            message = err["msg"][:1].lower() + err["msg"][1:]
            self.error(path, f"{message}, got {_show(value)}")

    # -- the checks --------------------------------------------------------------------------

    def check(self) -> LoadedConfig | None:
        root = self.data
        if root is None:
            self.error((), "the file is empty; expected the sections site, grid, evses, ...")
            return None
        if not isinstance(root, dict):
            self.error((), f"expected a mapping of sections (site, grid, ...), got {_show(root)}")
            return None
        for key in root:
            if key not in _SECTIONS:
                self.error((key,), _unknown_key_message(key, list(_SECTIONS)))
        for key in _REQUIRED_SECTIONS:
            if key not in root:
                self.error((key,), "missing required section")

        # 1. Each section and item on its own: every field's type and range.
        site_m = self.section(_SiteModel, "site")
        grid_m = self.section(_GridModel, "grid")
        control_m = self.section(_ControlModel, "control")
        load_m = self.section(_LoadManagementModel, "load_management")
        service_m = self.section(_ServiceModel, "service")
        sessions_m = self.section(_SessionsModel, "sessions")
        mqtt_m = (
            self.validate(_MqttModel, ("mqtt",), root["mqtt"])
            if root.get("mqtt") is not None
            else None
        )
        tariff_m = (
            self.validate(_TariffModel, ("tariff",), root["tariff"])
            if root.get("tariff") is not None
            else None
        )
        terminal_m = (
            self.validate(_TerminalModel, ("terminal",), root["terminal"])
            if root.get("terminal") is not None
            else None
        )
        ocpp_m = (
            self.validate(_OcppModel, ("ocpp",), root["ocpp"])
            if root.get("ocpp") is not None
            else None
        )
        circuits = self.items(_CircuitModel, "circuits")
        meters = self.items(_MeterModel, "meters")
        evses = self.items(_EvseModel, "evses")
        periods = self.items(_TimeOfUseModel, "time_of_use")
        if root.get("evses") in (None, []):
            self.warn(("evses",), "no EVSEs configured; the controller will only read meters")

        # 2. References between items, from the raw ids so that one bad item does not hide
        # (or fake) a problem in another.
        self.check_device_ids()
        self.check_meter_references()
        tree_sound = self.check_circuit_references()
        self.check_evse_circuits()

        # 3. Rules across fields of one validated item, and across validated items.
        control = self.check_control(control_m)
        load_management = self.load_management(load_m)
        time_of_use = self.time_of_use(periods)
        tariff = (
            self.tariff(("tariff",), tariff_m, tariff_m.preauth_cap_cents)
            if tariff_m is not None
            else None
        )
        if grid_m is not None:
            self.check_grid_export(grid_m)
        self.check_buses([*meters, *evses], control)
        self.cap_unwatched = control_m.cap_unwatched if control_m is not None else True
        meter_specs = tuple(self.device_spec(path, m) for path, m in meters)
        connectors = [self.connector(path, e) for path, e in evses]
        self.check_line_capacity(meter_specs, connectors, evses, control)
        tree = None
        if tree_sound and grid_m is not None and len(circuits) == len(self.raw_list("circuits")):
            tree = self.circuit_tree(grid_m, circuits)
            self.check_fallbacks(tree, [k for k in connectors if k.circuit in tree])

        if (
            self.problems
            or site_m is None
            or grid_m is None
            or tree is None
            or service_m is None
            or load_management is None
            or time_of_use is None
        ):
            return None
        site = Site(
            id=site_m.id,
            name=site_m.name if site_m.name is not None else site_m.id,
            timezone=site_m.timezone,
            nominal_voltage_v=site_m.nominal_voltage_v,
            circuits=tuple(c for c, _ in tree.values()),
            meters=meter_specs,
            connectors=tuple(connectors),
            control=control,
            load_management=load_management,
            exports=grid_m.exports,
            meter_export_positive=grid_m.meter_export_positive,
            time_of_use=time_of_use,
        )
        service = ServiceSettings(
            state_dir=Path(service_m.state_dir),
            runtime_dir=Path(service_m.runtime_dir),
            socket_group=service_m.socket_group,
            socket_mode=service_m.socket_mode,
            log_format=service_m.log_format,
        )
        mqtt = self.mqtt(mqtt_m, site.id) if mqtt_m is not None else None
        ocpp = self.ocpp(ocpp_m, site.id) if ocpp_m is not None else None
        sessions = (
            SessionSettings(
                free_vend=sessions_m.free_vend,
                connection_timeout_s=sessions_m.connection_timeout_s,
            )
            if sessions_m is not None
            else SessionSettings()
        )
        terminal = (
            self.terminal(terminal_m, site, tariff, sessions) if terminal_m is not None else None
        )
        if self.problems:
            return None
        return LoadedConfig(
            site=site,
            service=service,
            warnings=(),
            source=self.source,
            mqtt=mqtt,
            tariff=tariff,
            sessions=sessions,
            terminal=terminal,
            ocpp=ocpp,
        )

    def ocpp(self, m: _OcppModel, site_id: str) -> OcppSettings | None:
        base: KeyPath = ("ocpp",)
        secure = m.url.startswith("wss://")
        profile = m.security_profile if m.security_profile is not None else (2 if secure else 0)
        if profile >= 2 and not secure:
            self.error(
                (*base, "url"),
                f"security profile {profile} needs a wss:// URL (TLS); ws:// would be a downgrade",
            )
        if profile < 2 and secure:
            self.error(
                (*base, "security_profile"),
                f"{profile} is for ws://; a wss:// URL is security profile 2 or 3",
            )
        if profile in (1, 2) and m.credentials_file is None:
            self.error(
                (*base, "credentials_file"),
                f"security profile {profile} needs the AuthorizationKey "
                "(a file with authorization_key: ...)",
            )
        if m.credentials_file is not None and not Path(m.credentials_file).is_file():
            self.error((*base, "credentials_file"), f"no such file: {m.credentials_file}")
        if profile == 0 and m.credentials_file is not None:
            self.warn(
                (*base, "security_profile"),
                "0 sends no credentials: the credentials file is not used (profile 1 sends them)",
            )
        tls = None
        if profile >= 2:
            if m.tls is None:
                self.error((*base, "tls"), "missing: wss:// needs tls: {ca_file: ...}")
            else:
                if profile == 3 and (m.tls.cert_file is None or m.tls.key_file is None):
                    self.error(
                        (*base, "tls"),
                        "security profile 3 (mutual TLS) needs cert_file and key_file",
                    )
                for key in ("ca_file", "cert_file", "key_file"):
                    name = getattr(m.tls, key)
                    if name is not None and not Path(name).is_file():
                        self.error((*base, "tls", key), f"no such file: {name}")
                tls = OcppTls(
                    ca_file=Path(m.tls.ca_file),
                    cert_file=Path(m.tls.cert_file) if m.tls.cert_file else None,
                    key_file=Path(m.tls.key_file) if m.tls.key_file else None,
                )
        elif m.tls is not None:
            self.error((*base, "tls"), f"security profile {profile} uses no TLS (ws://)")
        if profile < 2 and not _is_loopback(_host_of(m.url)):
            self.warn(
                (*base, "url"),
                "ws:// without TLS: transactions and idTags go to the CSMS in clear text",
            )
        if m.reconnect_min_s > m.reconnect_max_s:
            self.error(
                (*base, "reconnect_max_s"),
                f"{_n(m.reconnect_max_s)} s is shorter than reconnect_min_s "
                f"{_n(m.reconnect_min_s)} s",
            )
        for field_name, limit in _OCPP_TEXT_MAX.items():
            value = getattr(m, field_name)
            if value is not None and not 0 < len(value) <= limit:
                self.error(
                    (*base, field_name), f"1 to {limit} characters (OCPP 1.6), got {value!r}"
                )
        keys: dict[str, str] = {}
        for name, raw in m.keys.items():
            spec = KEYS.get(name)
            path = (*base, "keys", name)
            if spec is None:
                self.error(
                    path, _unknown_key_message(name, [k for k, s in KEYS.items() if s.writable])
                )
                continue
            if not spec.writable or name == "AuthorizationKey":
                self.error(
                    path,
                    "read-only: evsite sets it"
                    if name != "AuthorizationKey"
                    else "put the AuthorizationKey in credentials_file, not in the site file",
                )
                continue
            text = str(raw).lower() if isinstance(raw, bool) else str(raw)
            try:
                keys[name] = check_value(spec, text)
            except KeyError_ as exc:
                self.error(path, str(exc))
        identity = m.identity if m.identity is not None else site_id
        return OcppSettings(
            url=m.url,
            identity=identity,
            vendor=m.vendor,
            model=m.model,
            serial=m.serial,
            firmware=m.firmware,
            topology=m.topology,
            security_profile=profile,
            tls=tls,
            credentials_file=Path(m.credentials_file) if m.credentials_file else None,
            keys=keys,
            call_timeout_s=m.call_timeout_s,
            reconnect_min_s=m.reconnect_min_s,
            reconnect_max_s=m.reconnect_max_s,
            outbox_max_messages=m.outbox_max_messages,
            anonymous_id_tag=m.anonymous_id_tag,
        )

    def terminal(
        self, m: _TerminalModel, site: Site, tariff: Tariff | None, sessions: SessionSettings
    ) -> TerminalSettings | None:
        base: KeyPath = ("terminal",)
        if (m.port is None) == (m.host is None):
            self.error(base, "give either port (a serial terminal) or host (ZVT over TCP)")
            return None
        if tariff is None:
            self.error(base, "card payments need a tariff: add a tariff: section")
        if sessions.free_vend:
            self.error(
                base,
                "card payments need sessions.free_vend: false (with free vend, plugging in "
                "already starts a session nobody pays for)",
            )
        known = [c.id for c in site.connectors]
        served: tuple[str, ...] | None = None
        if m.connectors is not None:
            for i, cid in enumerate(m.connectors):
                if cid not in known:
                    self.error((*base, "connectors", i), f"no connector {cid!r} (evses: {known})")
            if not m.connectors:
                self.error((*base, "connectors"), "an empty list: name at least one connector")
            served = tuple(m.connectors)
        if m.host is not None and not _is_loopback(m.host):
            self.warn(
                (*base, "host"),
                "ZVT over TCP is not encrypted: keep the terminal on the gateway's own network",
            )
        if m.password == 0:
            self.warn((*base, "password"), "000000: set the terminal's own ECR password")
        link: SerialLink | TcpLink = (
            SerialLink(port=m.port, baudrate=m.baudrate, parity=m.parity, stopbits=m.stopbits)
            if m.port is not None
            else TcpLink(host=m.host or "", port=m.tcp_port)
        )
        assert m.profile in TERMINAL_PROFILES
        return TerminalSettings(
            id=m.id,
            link=link,
            profile=m.profile,
            password=m.password,
            connectors=served,
            t1_s=m.t1_s,
            t3_s=m.t3_s,
            t4_s=m.t4_s,
            stop_headroom_s=m.stop_headroom_s,
            retry_s=m.retry_s,
            usage_save_s=m.usage_save_s,
            preauth_on_plug_in=m.preauth_on_plug_in,
            end_of_day_every_s=m.end_of_day_every_s,
        )

    def mqtt(self, m: _MqttModel, site_id: str) -> MqttSettings | None:
        base: KeyPath = ("mqtt",)
        if m.reconnect_min_s > m.reconnect_max_s:
            self.error(
                (*base, "reconnect_max_s"),
                f"{_n(m.reconnect_max_s)} s is shorter than reconnect_min_s "
                f"{_n(m.reconnect_min_s)} s",
            )
        tls = None
        if m.tls is not None:
            if (m.tls.cert_file is None) != (m.tls.key_file is None):
                given, missing = (
                    ("cert_file", "key_file")
                    if m.tls.key_file is None
                    else ("key_file", "cert_file")
                )
                self.error((*base, "tls", missing), f"missing: {given} needs {missing} with it")
            for key in ("ca_file", "cert_file", "key_file"):
                name = getattr(m.tls, key)
                if name is not None and not Path(name).is_file():
                    self.error((*base, "tls", key), f"no such file: {name}")
            tls = TlsFiles(
                ca_file=Path(m.tls.ca_file),
                cert_file=Path(m.tls.cert_file) if m.tls.cert_file else None,
                key_file=Path(m.tls.key_file) if m.tls.key_file else None,
            )
        elif not _is_loopback(m.host):
            self.warn(
                (*base, "host"),
                f"no tls: telemetry, commands and the credentials go to {m.host} in clear text; "
                "add tls: {ca_file: ...}",
            )
        if m.credentials_file is not None and not Path(m.credentials_file).is_file():
            self.error((*base, "credentials_file"), f"no such file: {m.credentials_file}")
        if m.allow_test_injection:
            self.warn(
                (*base, "allow_test_injection"),
                "test event injection is on: for test rigs only, never on a real site",
            )
        return MqttSettings(
            host=m.host,
            port=m.port if m.port is not None else (8883 if tls is not None else 1883),
            client_id=m.client_id if m.client_id is not None else f"evsite-{site_id}",
            tls=tls,
            credentials_file=Path(m.credentials_file) if m.credentials_file else None,
            keepalive_s=m.keepalive_s,
            telemetry_interval_s=m.telemetry_interval_s,
            outbox_max_events=m.outbox_max_events,
            reconnect_min_s=m.reconnect_min_s,
            reconnect_max_s=m.reconnect_max_s,
            protocol="5" if m.protocol == 5 else "3.1.1",
            allow_test_injection=m.allow_test_injection,
            home_assistant=m.home_assistant,
            home_assistant_prefix=m.home_assistant_prefix,
        )

    def section(self, model: type[M], key: str) -> M | None:
        root = self.data
        assert isinstance(root, dict)
        if key not in root:
            return None if key in _REQUIRED_SECTIONS else model.model_validate({})
        raw = root[key]
        if raw is None and key not in _REQUIRED_SECTIONS:
            raw = {}
        return self.validate(model, (key,), raw)

    def items(self, model: type[M], key: str) -> list[tuple[KeyPath, M]]:
        root = self.data
        assert isinstance(root, dict)
        raw = root.get(key)
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.error((key,), f"expected a list (items starting with '- '), got {_show(raw)}")
            return []
        found: list[tuple[KeyPath, M]] = []
        for index, item in enumerate(raw):
            validated = self.validate(model, (key, index), item)
            if validated is not None:
                found.append(((key, index), validated))
        return found

    # -- references, on the raw data ---------------------------------------------------------

    def raw_list(self, key: str) -> list[object]:
        root = self.data
        raw = root.get(key) if isinstance(root, dict) else None
        return raw if isinstance(raw, list) else []

    def raw_items(self, key: str) -> list[_RawItem]:
        return [
            _RawItem((key, i), item)
            for i, item in enumerate(self.raw_list(key))
            if isinstance(item, dict)
        ]

    def raw_grid(self) -> _RawItem | None:
        root = self.data
        grid = root.get(ROOT_CIRCUIT_ID) if isinstance(root, dict) else None
        return _RawItem((ROOT_CIRCUIT_ID,), grid) if isinstance(grid, dict) else None

    def check_device_ids(self) -> None:
        first: dict[str, KeyPath] = {}
        devices = [*self.raw_items("meters"), *self.raw_items("evses")]
        for item in sorted(devices, key=lambda d: self.line_of(d.path)):
            device_id = item.text("id")
            if device_id is None:
                continue
            if device_id in first:
                self.error(
                    (*item.path, "id"),
                    f"duplicate device id {device_id!r}, already used by "
                    f"{self.where(first[device_id])}; ids are unique across meters and evses",
                )
            else:
                first[device_id] = item.path

    def check_meter_references(self) -> None:
        meter_ids: dict[str, KeyPath] = {}
        for item in self.raw_items("meters"):
            meter_id = item.text("id")
            if meter_id is not None:
                meter_ids.setdefault(meter_id, item.path)
        evse_ids = {item.text("id") for item in self.raw_items("evses")}
        grid = self.raw_grid()
        owners = [*([grid] if grid is not None else []), *self.raw_items("circuits")]
        used: dict[str, KeyPath] = {}
        for item in owners:
            ref = item.text("meter")
            if ref is None:
                continue
            if ref in meter_ids:
                if ref in used:
                    self.error(
                        (*item.path, "meter"),
                        f"meter {ref!r} already measures {self.where(used[ref])}; one meter "
                        "measures one circuit node",
                    )
                else:
                    used[ref] = item.path
            elif ref in evse_ids:
                self.error((*item.path, "meter"), f"{ref!r} is an EVSE, not a meter")
            else:
                defined = ", ".join(meter_ids) if meter_ids else "none (see meters:)"
                self.error(
                    (*item.path, "meter"), f"unknown meter {ref!r}; defined meters: {defined}"
                )
        for meter_id, path in meter_ids.items():
            if meter_id not in used:
                self.warn(
                    (*path, "id"),
                    f"meter {meter_id!r} is the meter of neither grid nor any circuit; it limits "
                    "nothing",
                )

    def check_circuit_references(self) -> bool:
        """Ids, parents and cycles of the circuit tree; True when the tree is sound."""
        sound = True
        parents: dict[str, str | None] = {}
        paths: dict[str, KeyPath] = {}
        for item in self.raw_items("circuits"):
            circuit_id = item.text("id")
            if circuit_id is None:
                sound = False
            elif circuit_id == ROOT_CIRCUIT_ID:
                self.error(
                    (*item.path, "id"),
                    f"{ROOT_CIRCUIT_ID!r} is the root circuit (the grid: section); "
                    "choose another id",
                )
                sound = False
            elif circuit_id in paths:
                self.error(
                    (*item.path, "id"),
                    f"duplicate circuit id {circuit_id!r}, already used by "
                    f"{self.where(paths[circuit_id])}",
                )
                sound = False
            else:
                paths[circuit_id] = item.path
                parents[circuit_id] = item.text("parent", ROOT_CIRCUIT_ID)

        known = [ROOT_CIRCUIT_ID, *paths]
        for circuit_id, parent in parents.items():
            if parent is None:
                sound = False  # not text: reported by its type check
            elif parent not in known:
                sound = False
                self.error(
                    (*paths[circuit_id], "parent"),
                    f"unknown parent circuit {parent!r}; known circuits: {', '.join(known)}",
                )

        in_cycle: set[str] = set()
        for start in parents:
            trail: list[str] = []
            node: str | None = start
            while node in parents and node not in trail:
                trail.append(node)
                node = parents[node]
            if node in trail and node not in in_cycle:
                cycle = trail[trail.index(node) :]
                in_cycle.update(cycle)
                sound = False
                shown = " -> ".join([*cycle, cycle[0]])
                self.error(
                    (*paths[cycle[0]], "parent"),
                    f"the circuit tree has a cycle: {shown}; every circuit's parents must lead "
                    f"up to {ROOT_CIRCUIT_ID!r}",
                )
        return sound

    def check_evse_circuits(self) -> None:
        known = [ROOT_CIRCUIT_ID]
        for item in self.raw_items("circuits"):
            circuit_id = item.text("id")
            if circuit_id is not None and circuit_id not in known:
                known.append(circuit_id)
        for item in self.raw_items("evses"):
            circuit = item.text("circuit", ROOT_CIRCUIT_ID)
            if circuit is not None and circuit not in known:
                self.error(
                    (*item.path, "circuit"),
                    f"unknown circuit {circuit!r}; known circuits: {', '.join(known)}",
                )

    # -- rules across fields and items, on validated data ------------------------------------

    def check_control(self, control_m: _ControlModel | None) -> ControlSettings:
        if control_m is None:
            return ControlSettings()
        c = control_m
        if c.meter_stale_s < c.tick_s:
            self.error(
                ("control", "meter_stale_s"),
                f"{_n(c.meter_stale_s)} s is shorter than tick_s {_n(c.tick_s)} s; every meter "
                "reading would count as stale",
            )
        if c.evse_stale_s < c.tick_s:
            self.error(
                ("control", "evse_stale_s"),
                f"{_n(c.evse_stale_s)} s is shorter than tick_s {_n(c.tick_s)} s; every EVSE "
                "reading would count as stale",
            )
        if c.fallback_after_s < c.meter_stale_s:
            self.error(
                ("control", "fallback_after_s"),
                f"{_n(c.fallback_after_s)} s is shorter than meter_stale_s "
                f"{_n(c.meter_stale_s)} s; the fallback comes after the meter is stale",
            )
        if c.meter_frozen_s <= c.tick_s:
            self.error(
                ("control", "meter_frozen_s"),
                f"{_n(c.meter_frozen_s)} s is not longer than tick_s {_n(c.tick_s)} s; two "
                "readings in a row that agree would already count as a frozen meter",
            )
        return ControlSettings(
            tick_s=c.tick_s,
            meter_stale_s=c.meter_stale_s,
            fallback_after_s=c.fallback_after_s,
            evse_stale_s=c.evse_stale_s,
            meter_frozen_s=c.meter_frozen_s,
        )

    def load_management(self, model: _LoadManagementModel | None) -> LoadManagement | None:
        if model is None:
            return None
        if model.detect_off_a >= model.detect_on_a:
            self.warn(
                ("load_management", "detect_off_a"),
                f"{_n(model.detect_off_a)} A is not below detect_on_a "
                f"{_n(model.detect_on_a)} A; an EV drawing on all three phases may be taken "
                "for a 1-phase one",
            )
        return LoadManagement(**model.model_dump())

    def check_grid_export(self, grid_m: _GridModel) -> None:
        if grid_m.meter is not None:
            return
        for key in ("exports", "meter_export_positive"):
            if getattr(grid_m, key):
                self.warn(
                    (ROOT_CIRCUIT_ID, key),
                    "ignored: the grid has no meter, so there is no export to see",
                )

    def weekly_schedule(
        self,
        items: Sequence[tuple[KeyPath, _WeeklyItem]],
        *,
        noun: str,
        build: Callable[[Any], W],
        period_of: Callable[[W], TouPeriod],
        value_key: str,
        lowest: Callable[[W, W], str],
    ) -> tuple[bool, list[tuple[KeyPath, W]]]:
        """The rules every weekly schedule shares (time-of-use caps, tariff prices): unique
        names, no empty period, a warning where two overlap. Returns (sound, the items built)."""
        built: list[tuple[KeyPath, W]] = []
        names: dict[str, KeyPath] = {}
        sound = True
        for path, t in items:
            if t.name in names:
                sound = False
                self.error(
                    (*path, "name"),
                    f"duplicate time-of-use name {t.name!r}, already used by "
                    f"{self.where(names[t.name])}",
                )
            names.setdefault(t.name, path)
            if t.start == t.end:
                sound = False
                self.error(
                    (*path, "end"),
                    f"the {noun} starts and ends at {t.start}; it would last no time (a whole "
                    "day is start '00:00', end '24:00')",
                )
                continue
            item = build(t)
            for other_path, other in built:
                overlap = _first_overlap(period_of(other), period_of(item))
                if overlap is not None:
                    self.warn(
                        path,
                        f"overlaps {period_of(other).name!r} at {self.where(other_path)} on "
                        f"{overlap}; where {noun}s overlap the lowest {value_key} applies "
                        f"({lowest(other, item)} there)",
                    )
            built.append((path, item))
        return sound, built

    def time_of_use(
        self, periods: list[tuple[KeyPath, _TimeOfUseModel]]
    ) -> tuple[TouPeriod, ...] | None:
        """The weekly schedule; None when an item is invalid (reported)."""
        sound, built = self.weekly_schedule(
            periods,
            noun="period",
            build=lambda t: TouPeriod(
                days=t.days,
                start=_clock_time(t.start),
                end=_clock_time(t.end),
                power_w=t.power_kw * 1000.0,
                name=t.name,
            ),
            period_of=lambda p: p,
            value_key="power_kw",
            lowest=lambda a, b: f"{_n(min(a.power_w, b.power_w) / 1000.0)} kW",
        )
        if not sound or len(periods) != len(self.raw_list("time_of_use")):
            return None
        return tuple(p for _, p in built)

    def tariff(self, base: KeyPath, m: TariffPayload, cap_cents: int | None) -> Tariff | None:
        """The tariff, after the rules across its fields; None when one fails (reported)."""
        sound, built = self.weekly_schedule(
            [((*base, "time_of_use", i), t) for i, t in enumerate(m.time_of_use)],
            noun="price",
            build=lambda t: TouPrice(
                name=t.name,
                days=t.days,
                start=_clock_time(t.start),
                end=_clock_time(t.end),
                price_per_kwh=t.price_per_kwh,
            ),
            period_of=_as_period,
            value_key="price_per_kwh",
            lowest=lambda a, b: str(min(a.price_per_kwh, b.price_per_kwh)),
        )
        preauth_cents = m.preauth_cents
        if cap_cents is not None and preauth_cents > cap_cents:
            self.warn(
                (*base, "preauth_cents"),
                f"{preauth_cents} cents is above preauth_cap_cents {cap_cents}; "
                f"{cap_cents} cents is pre-authorised",
            )
            preauth_cents = cap_cents
        fee_cents = round_half_up(Fraction(m.session_fee) * 100)
        if fee_cents >= preauth_cents:
            sound = False
            self.error(
                (*base, "session_fee"),
                f"{m.session_fee} {m.currency} ({fee_cents} cents) leaves nothing of the "
                f"{preauth_cents} cents pre-authorised for charging; raise preauth_cents or "
                "lower the fee",
            )
        if not sound:
            return None
        return Tariff(
            id=m.id,
            name=m.name if m.name is not None else m.id,
            currency=m.currency,
            vat_rate_pct=m.vat_rate_pct,
            price_per_kwh=m.price_per_kwh,
            time_of_use=tuple(p for _, p in built),
            price_per_minute=m.price_per_minute,
            session_fee=m.session_fee,
            idle_fee_per_minute=m.idle_fee_per_minute,
            idle_grace_min=m.idle_grace_min,
            preauth_cents=m.preauth_cents,
            preauth_cap_cents=cap_cents,
        )

    def device_spec(self, path: KeyPath, device: _DeviceModel) -> DeviceSpec:
        t = device.transport
        transport: Transport
        if isinstance(t, _TcpModel):
            if not 0 <= device.unit_id <= 255:
                self.error((*path, "unit_id"), f"must be within 0..255, got {device.unit_id}")
            transport = TcpTransport(host=t.host, port=t.port, rtu_over_tcp=t.rtu_over_tcp)
        else:
            if not 1 <= device.unit_id <= 247:
                self.error(
                    (*path, "unit_id"),
                    f"must be within 1..247 on a serial line (0 is broadcast), "
                    f"got {device.unit_id}",
                )
            transport = SerialTransport(
                port=t.port,
                baudrate=t.baudrate,
                parity=t.parity,
                stopbits=t.stopbits,
                bytesize=t.bytesize,
            )
        return DeviceSpec(
            id=device.id,
            driver=device.driver,
            transport=transport,
            unit_id=device.unit_id,
            timeout_s=device.timeout_s,
            options=MappingProxyType(self.device_options(path, device)),
        )

    def device_options(self, path: KeyPath, device: _DeviceModel) -> dict[str, object]:
        """The driver options, with a site's own register map resolved beside the config."""
        options = dict(device.options)
        key_path = (*path, "options", "register_map")
        ref = options.get("register_map")
        if device.driver not in (GENERIC_METER, GENERIC_EVSE):
            if ref is not None:
                self.warn(
                    key_path,
                    f"ignored: {device.driver} uses its built-in register map; only "
                    f"{GENERIC_METER} and {GENERIC_EVSE} read a map file",
                )
            return options
        if ref is None:
            self.error(
                key_path,
                f"missing: driver {device.driver} needs the path of a register map file (YAML)",
            )
            return options
        if not isinstance(ref, str) or not ref.strip():
            self.error(key_path, f"expected the path of a register map file, got {_show(ref)}")
            return options
        map_path = Path(ref)
        if not map_path.is_absolute():
            map_path = self.source.resolve().parent / map_path
        options["register_map"] = str(map_path)
        try:
            register_map = load_map_file(map_path)
        except ConfigError as exc:
            for problem in exc.problems:
                self.error(key_path, f"bad register map: {problem}")
            return options
        expected = DeviceKind.EVSE if device.driver == GENERIC_EVSE else DeviceKind.METER
        if register_map.kind != expected:
            self.error(
                key_path,
                f"{map_path} describes {_a(str(register_map.kind))}, but {device.driver} needs "
                f"{_a(str(expected))} map",
            )
        return options

    def connector(self, path: KeyPath, e: _EvseModel) -> Connector:
        spec = self.device_spec(path, e)
        self.evse_paths[e.id] = path
        if e.min_current_a > e.max_current_a:
            self.error(
                (*path, "min_current_a"),
                f"min_current_a {_n(e.min_current_a)} A is above max_current_a "
                f"{_n(e.max_current_a)} A",
            )
        fallback = e.fallback_current_a
        if fallback != 0 and (
            fallback < min(e.min_current_a, e.max_current_a) or fallback > e.max_current_a
        ):
            self.error(
                (*path, "fallback_current_a"),
                f"{_n(fallback)} A must be 0 (stop charging) or within min_current_a.."
                f"max_current_a ({_n(e.min_current_a)}..{_n(e.max_current_a)} A)",
            )
        return Connector(
            id=e.id,
            evse=spec,
            circuit=e.circuit,
            grid_phases=parse_rotation(e.phase_rotation),
            min_current_a=e.min_current_a,
            max_current_a=e.max_current_a,
            fallback_current_a=fallback,
            priority_tier=e.priority_tier,
            ev_kind=self.ev_kind(path, e),
            unwatched_cap_a=self.unwatched_cap(path, e, spec.options),
        )

    def unwatched_cap(
        self, path: KeyPath, e: _EvseModel, options: Mapping[str, object]
    ) -> float | None:
        """An EVSE without a controller watchdog keeps its last limit if evsite dies: cap it."""
        ref = options.get("register_map")
        try:
            caps = capabilities(e.driver, register_map=ref if isinstance(ref, str) else None)
        except ConfigError:
            return None  # an unknown driver or a bad map is reported elsewhere
        if caps.has_watchdog:
            if e.unwatched_cap_a is not None:
                self.warn(
                    (*path, "unwatched_cap_a"),
                    f"ignored: {e.driver} has a watchdog that applies the fallback current",
                )
            return None
        if not self.cap_unwatched:
            self.warn(
                (*path, "driver"),
                f"{caps.model} has no controller watchdog and control.cap_unwatched is off: if "
                f"evsite dies it keeps its last limit (up to {_n(e.max_current_a)} A), which "
                "the fallback check cannot cover",
            )
            return None
        cap = e.unwatched_cap_a if e.unwatched_cap_a is not None else e.fallback_current_a
        self.warn(
            (*path, "driver"),
            f"{caps.model} has no controller watchdog: its limit is capped at {_n(cap)} A "
            "(unwatched_cap_a) so that the site holds if evsite dies",
        )
        return cap

    def ev_kind(self, path: KeyPath, e: _EvseModel) -> EvKind:
        kind = EvKind(e.ev_kind)
        if len(parse_rotation(e.phase_rotation)) == 3 or kind is EvKind.AUTO:
            return kind
        if kind is EvKind.THREE_PHASE:
            self.error(
                (*path, "ev_kind"),
                f"'3p' on a 1-phase EVSE (phase_rotation {e.phase_rotation!r}): every EV "
                "draws on its one phase; use auto or 1p",
            )
        else:
            self.warn(
                (*path, "ev_kind"),
                f"has no effect on a 1-phase EVSE (phase_rotation {e.phase_rotation!r}): "
                "every EV draws on its one phase",
            )
        return kind

    def check_buses(
        self, devices: Sequence[tuple[KeyPath, _DeviceModel]], control: ControlSettings
    ) -> None:
        """One RS-485 line has one set of settings; one address is one device."""
        line_settings: dict[str, tuple[KeyPath, tuple[int, str, int, int]]] = {}
        line_timeouts: dict[str, float] = {}
        addresses: dict[tuple[str, int], KeyPath] = {}
        for path, device in sorted(devices, key=lambda d: self.line_of(d[0])):
            t = device.transport
            if isinstance(t, _SerialModel):
                settings = (t.baudrate, t.parity, t.stopbits, t.bytesize)
                if t.port in line_settings and line_settings[t.port][1] != settings:
                    first_path, (baud, parity, stop, size) = line_settings[t.port]
                    self.error(
                        (*path, "transport"),
                        f"serial line {t.port} is set to {baud} {size}{parity}{stop} by "
                        f"{self.where(first_path)}; every device on one line must use the same "
                        "baud rate, parity, stop bits and byte size",
                    )
                line_settings.setdefault(t.port, (path, settings))
                line_timeouts[t.port] = line_timeouts.get(t.port, 0.0) + device.timeout_s
                bus = t.port
            else:
                bus = f"{t.host}:{t.port}"
            address = (bus, device.unit_id)
            if address in addresses:
                self.error(
                    (*path, "unit_id"),
                    f"unit_id {device.unit_id} on {bus} is already used by "
                    f"{self.where(addresses[address])}",
                )
            else:
                addresses[address] = path
            if device.timeout_s >= control.tick_s:
                self.warn(
                    (*path, "timeout_s"),
                    f"{_n(device.timeout_s)} s is not shorter than tick_s {_n(control.tick_s)} s;"
                    " a dead device would stretch every tick",
                )
        for port, total in line_timeouts.items():
            if total > control.tick_s + _EPS:
                first_path = line_settings[port][0]
                self.warn(
                    (*first_path, "transport"),
                    f"the timeouts of all devices on {port} add up to {_n(total)} s, more than "
                    f"tick_s {_n(control.tick_s)} s; if they all stop answering, a tick overruns",
                )

    def check_line_capacity(
        self,
        meters: Sequence[DeviceSpec],
        connectors: Sequence[Connector],
        evses: Sequence[tuple[KeyPath, _EvseModel]],
        control: ControlSettings,
    ) -> None:
        """Warn when a serial line cannot poll its meters every tick and each EVSE within its
        staleness budget (EVSEs are read round-robin on a slow line), or cannot send a
        decrease to every EVSE on it within one tick. Figures: wire time + 2 x t3.5 + 20 ms
        turnaround per transaction (drivers/modbus/timing.py)."""
        paths = {e.id: path for path, e in evses}
        lines: dict[str, list[tuple[DeviceSpec, bool]]] = {}
        for spec in meters:
            if isinstance(spec.transport, SerialTransport):
                lines.setdefault(spec.transport.port, []).append((spec, False))
        for conn in connectors:
            if isinstance(conn.evse.transport, SerialTransport):
                lines.setdefault(conn.evse.transport.port, []).append((conn.evse, True))
        for port, members in lines.items():
            evse_specs = [spec for spec, is_evse in members if is_evse]
            if not evse_specs:
                continue
            meter_s = sum(line_time_s(spec)[0] for spec, is_evse in members if not is_evse)
            reads_s = sum(line_time_s(spec)[0] for spec in evse_specs)
            writes_s = sum(line_time_s(spec)[1] for spec in evse_specs)
            where = (*paths[evse_specs[0].id], "transport")
            budget_s = 0.7 * control.tick_s - meter_s
            # Each EVSE must be read before its reading counts as stale.
            rounds = max(1.0, (control.evse_stale_s - control.tick_s) / control.tick_s)
            if budget_s <= 0 or reads_s > budget_s * rounds:
                self.warn(
                    where,
                    f"serial line {port} cannot keep up: its meters take {meter_s * 1000:.0f} ms "
                    f"a tick and reading its {len(evse_specs)} EVSEs {reads_s * 1000:.0f} ms, "
                    f"so an EVSE is not read within evse_stale_s {_n(control.evse_stale_s)} s; "
                    "use a faster baud rate, fewer devices on the line, or the meter on a line "
                    "of its own",
                )
            elif meter_s + writes_s > control.tick_s:
                self.warn(
                    where,
                    f"serial line {port}: a decrease to all {len(evse_specs)} EVSEs at once takes "
                    f"{(meter_s + writes_s) * 1000:.0f} ms with the meters, more than one tick",
                )

    def circuit_tree(
        self, grid_m: _GridModel, circuits: list[tuple[KeyPath, _CircuitModel]]
    ) -> dict[str, tuple[Circuit, KeyPath]]:
        """The circuit nodes, root first, then parents before children, else in file order."""
        tree: dict[str, tuple[Circuit, KeyPath]] = {
            ROOT_CIRCUIT_ID: (
                Circuit(
                    id=ROOT_CIRCUIT_ID,
                    parent=None,
                    rating_a=grid_m.rating_a,
                    margin_a=grid_m.margin_a,
                    meter=grid_m.meter,
                    worst_case_non_ev_a=grid_m.worst_case_non_ev_a,
                ),
                (ROOT_CIRCUIT_ID,),
            )
        }
        pending = list(circuits)
        while pending:
            for path, c in pending:
                if c.parent in tree:
                    circuit = Circuit(
                        id=c.id,
                        parent=c.parent,
                        rating_a=c.rating_a,
                        margin_a=c.margin_a,
                        meter=c.meter,
                        worst_case_non_ev_a=c.worst_case_non_ev_a,
                    )
                    tree[c.id] = (circuit, path)
            pending = [(p, c) for p, c in pending if c.id not in tree]
        for circuit, path in tree.values():
            if circuit.parent is not None:
                parent = tree[circuit.parent][0]
                if circuit.rating_a > parent.rating_a:
                    self.warn(
                        (*path, "rating_a"),
                        f"{_n(circuit.rating_a)} A is above the {_n(parent.rating_a)} A of its "
                        f"parent {parent.id!r}; the parent's rating limits it anyway",
                    )
        grid = tree[ROOT_CIRCUIT_ID][0]
        if grid.meter is None and not any(grid.worst_case_non_ev_a):
            self.warn(
                (ROOT_CIRCUIT_ID,),
                "the grid has no meter and worst_case_non_ev_a is 0: the controller assumes the "
                "site draws nothing but EV charging",
            )
        return tree

    def check_fallbacks(
        self, tree: dict[str, tuple[Circuit, KeyPath]], connectors: list[Connector]
    ) -> None:
        """I5, plus a warning for a connector whose maximum no circuit above it could carry."""
        for k in connectors:
            chain: list[Circuit] = []
            node: str | None = k.circuit
            while node is not None:
                circuit = tree[node][0]
                chain.append(circuit)
                node = circuit.parent
            tightest = min(chain, key=lambda c: c.rating_a)
            if k.max_current_a > tightest.rating_a:
                self.warn(
                    (*self.evse_paths[k.id], "max_current_a"),
                    f"{_n(k.max_current_a)} A is above the {_n(tightest.rating_a)} A rating of "
                    f"circuit {tightest.id!r}; the controller never gives it more than that",
                )
        for load in _fallback_loads([c for c, _ in tree.values()], connectors):
            if load.fits:
                continue
            circuit, path = tree[load.circuit]
            drawing = ", ".join(f"{cid} {_n(a)} A" for cid, a in load.connectors) or "none"
            self.error(
                path,
                f"fallback currents do not fit circuit {circuit.id!r} on phase "
                f"{PHASE_NAMES[load.phase]} (I5): sum {_n(load.sum_a)} A > limit "
                f"{_n(load.limit_a)} A = rating {_n(circuit.rating_a)} A - worst-case non-EV "
                f"{_n(circuit.worst_case_non_ev_a[load.phase])} A - margin "
                f"{_n(circuit.margin_a)} A; connectors: {drawing}",
            )


@dataclass(frozen=True, slots=True)
class _RawItem:
    """A mapping from the file before validation, for checks of references between items."""

    path: KeyPath
    data: dict[str, object]

    def text(self, key: str, default: str | None = None) -> str | None:
        """The value when it is text (or the default when absent); None when it is not text."""
        value = self.data.get(key, default)
        return value if isinstance(value, str) else None


class _BadDocument(Exception):
    """Valid YAML syntax that still cannot become plain data (recursive or huge)."""

    def __init__(self, problem: str, line: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


def _week_intervals(period: TouPeriod) -> list[tuple[int, int]]:
    """The minutes of the week (Monday 00:00 = 0) a period covers, as TouPeriod.covers does."""
    day_min = 24 * 60
    start = period.start.hour * 60 + period.start.minute
    end = period.end.hour * 60 + period.end.minute
    spans: list[tuple[int, int]] = []
    for day in sorted(period.days):
        base = (day - 1) * day_min
        if end == 0 or start < end:
            spans.append((base + start, base + (end or day_min)))
        else:  # over midnight: the morning part belongs to the next day (Sunday -> Monday)
            spans.append((base + start, base + day_min))
            next_base = (day % 7) * day_min
            spans.append((next_base, next_base + end))
    return spans


def _first_overlap(a: TouPeriod, b: TouPeriod) -> str | None:
    """Where two periods first overlap in the week, as ``"mon 17:00-18:00"``; None if never."""
    found = [
        (max(a0, b0), min(a1, b1))
        for a0, a1 in _week_intervals(a)
        for b0, b1 in _week_intervals(b)
        if max(a0, b0) < min(a1, b1)
    ]
    if not found:
        return None
    begin, end = min(found)

    def clock(minute: int) -> str:
        minute -= (begin // 1440) * 1440
        return f"{minute // 60:02d}:{minute % 60:02d}"

    return f"{DAY_NAMES[begin // 1440]} {clock(begin)}-{clock(end)}"


def _as_period(price: TouPrice) -> TouPeriod:
    """A time-of-use price as a schedule period, for the overlap check they share."""
    return TouPeriod(
        days=price.days, start=price.start, end=price.end, power_w=0.0, name=price.name
    )


def _no_json_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows")


_PAYLOAD_LABEL = "tariff update"


def tariff_from_payload(
    payload: bytes | str | Mapping[str, object], *, preauth_cap_cents: int | None = None
) -> Tariff:
    """A tariff from the cloud (JSON text or parsed data), checked as the site file's is.

    ``preauth_cap_cents`` is the site's cap (its configured tariff's): an update can lower the
    pre-authorisation, never raise it above the cap. JSON numbers are read as exact decimals.
    Raises ConfigError whose problems read ``tariff update: key.path: message``.
    """
    data: object
    if isinstance(payload, bytes | str):
        try:
            data = json.loads(payload, parse_float=Decimal, parse_constant=_no_json_constant)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigError([f"{_PAYLOAD_LABEL}: not valid JSON: {exc}"]) from exc
    else:
        data = dict(payload)
    loader = _Loader(_PAYLOAD_LABEL, Path("<payload>"))
    loader.data = data
    model = loader.validate(TariffPayload, (), data)
    tariff = loader.tariff((), model, preauth_cap_cents) if model is not None else None
    # A payload has no lines: "tariff update:1: key: ..." -> "tariff update: key: ...".
    problems = [
        f.text.replace(f"{_PAYLOAD_LABEL}:{f.line}: ", f"{_PAYLOAD_LABEL}: ", 1)
        for f in loader.problems
    ]
    if problems or tariff is None:
        raise ConfigError(problems)
    return tariff


def _host_of(url: str) -> str:
    netloc = url.split("://", 1)[-1].split("/", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "AEIOUaeiou" else f"a {word}"
