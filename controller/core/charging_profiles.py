"""Core layer: OCPP 1.6 Smart Charging as pure functions (profiles, stacking, composite schedules).

The OCPP adapter stores the charging profiles a CSMS sends in a ``ProfileSet`` through these
functions, answers SetChargingProfile, ClearChargingProfile and GetCompositeSchedule with them,
and turns the profiles in force into limit slots for the load-management engine
(``profile_slots``). Nothing here does I/O or reads a clock: every instant is an argument (an
aware datetime), every result a value. docs/ocpp.md ("Smart charging") states the rules.

Rules (OCPP 1.6 edition 2, §3.13 and §5.5, §5.7, §5.16):

- Purposes: ChargePointMaxProfile (connector 0 only; caps all connectors together),
  TxDefaultProfile (connector 0: every connector; connector n: that one), TxProfile (connector
  n > 0, only while a transaction runs there; it ends with the transaction).
- Within a purpose the profile with the highest stackLevel whose validity (validFrom..validTo)
  and schedule (start..start + duration) cover the instant prevails; where it does not cover,
  the next lower level does. A connector's own TxDefaultProfile beats one on connector 0 at the
  same stackLevel ("replaced only for that specific connector").
- A connector's limit is min(TxProfile, else TxDefaultProfile; ChargePointMaxProfile).

Instants are handled as integer microseconds since the epoch (UTC), so breakpoints are exact
and daylight-saving changes cannot bend the arithmetic: a daily recurrence is 86 400 s of real
time, as OCPP's own note on DST expects.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any, TypeVar

from controller.core.errors import PermanentError
from controller.core.slots import SITE, LimitSlot, SlotSource


class ProfileError(PermanentError):
    """A charging profile is malformed or means nothing; ``field`` names the OCPP field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> ProfileError:
        """The same error, its field named from an outer object (``csChargingProfiles.``...)."""
        return ProfileError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


class Purpose(StrEnum):
    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    A = "A"  # amps per phase
    W = "W"  # watts, total over the phases in use


class ProfileStatus(StrEnum):
    """SetChargingProfile.conf status (1.6 ChargingProfileStatus)."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    NOT_SUPPORTED = "NotSupported"


class ClearStatus(StrEnum):
    """ClearChargingProfile.conf status."""

    ACCEPTED = "Accepted"
    UNKNOWN = "Unknown"


_E = TypeVar("_E", bound=StrEnum)

_S = 1_000_000  # microseconds per second: instants and offsets are integers of microseconds
_RECURRENCE_S = {Recurrency.DAILY: 86_400, Recurrency.WEEKLY: 7 * 86_400}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
DEFAULT_PHASES = 3  # OCPP 1.6: numberPhases is 3 unless the period says otherwise


def floor_tenth(value: float) -> float:
    """Round down to a multiple of 0.1 (OCPP's ``multipleOf 0.1``); never up, so a reported or
    applied limit never grows by rounding. The inner round() drops binary dust first
    (11000 W -> A -> W comes back as 10999.999999999998, which is 11000.0)."""
    return round(math.floor(round(value * 10.0, 6)) / 10.0, 1)


def _is_tenth(value: float) -> bool:
    # 0.1 has no exact binary form: 16.1 * 10 is 161.00000000000003, still a multiple
    scaled = value * 10.0
    return abs(scaled - round(scaled)) <= 1e-6


def _us(when: datetime, name: str = "time") -> int:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, not {when!r}")
    # Aware datetimes with a different tzinfo subtract in UTC: exact, DST-proof.
    return (when - _EPOCH) // _ONE_US


def _dt(us: int, tz: tzinfo | None = UTC) -> datetime:
    return (_EPOCH + timedelta(microseconds=us)).astimezone(tz)


# -- the profile types ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulePeriod:
    """One chargingSchedulePeriod: from ``start_period_s`` after the schedule's start, at most
    ``limit`` (in the schedule's ``rate_unit``), charging on ``number_phases`` phases."""

    start_period_s: int
    limit: float
    number_phases: int = DEFAULT_PHASES


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingSchedule:
    """An OCPP 1.6 chargingSchedule. ``duration_s`` None: the last period holds forever (for a
    Recurring profile: to the end of the day or week)."""

    rate_unit: RateUnit
    periods: tuple[SchedulePeriod, ...]
    duration_s: int | None = None
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None

    def __post_init__(self) -> None:
        # Errors name the OCPP field under the profile (the caller prefixes csChargingProfiles).
        if self.duration_s is not None and self.duration_s <= 0:
            raise ProfileError(
                "chargingSchedule.duration",
                f"must be > 0 s (leave it out for no end), not {self.duration_s}",
            )
        if self.start_schedule is not None and self.start_schedule.utcoffset() is None:
            raise ProfileError("chargingSchedule.startSchedule", "needs a time zone (or Z)")
        if not self.periods:
            raise ProfileError("chargingSchedule.chargingSchedulePeriod", "has no period")
        previous = -1
        for i, period in enumerate(self.periods):
            where = f"chargingSchedule.chargingSchedulePeriod[{i}]"
            if i == 0 and period.start_period_s != 0:
                raise ProfileError(
                    f"{where}.startPeriod",
                    f"the first period must start at 0, not {period.start_period_s}",
                )
            if period.start_period_s <= previous:
                raise ProfileError(
                    f"{where}.startPeriod",
                    f"periods must start in increasing order: {period.start_period_s} "
                    f"after {previous}",
                )
            previous = period.start_period_s
            _check_rate(f"{where}.limit", period.limit)
            if period.number_phases not in (1, 2, 3):
                raise ProfileError(
                    f"{where}.numberPhases", f"must be 1, 2 or 3, not {period.number_phases}"
                )
        if self.min_charging_rate is not None:
            _check_rate("chargingSchedule.minChargingRate", self.min_charging_rate)


def _check_rate(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ProfileError(name, f"must be a finite number >= 0, not {value!r}")
    # The 1.6 schema says multipleOf 0.1 (for A and W alike). We reject rather than round: the
    # CSMS then learns its value was not taken, and the answer is the same whether or not the
    # adapter ran the schema validation first.
    if not _is_tenth(value):
        raise ProfileError(name, f"must be a multiple of 0.1, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingProfile:
    """An OCPP 1.6 ChargingProfile as installed on ``connector_id`` (0 = the charge point).

    ``installed_at`` is set by ``install``: a ChargePointMaxProfile whose schedule has no start
    of its own begins then (or at validFrom).
    """

    connector_id: int
    charging_profile_id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedule: ChargingSchedule
    transaction_id: int | None = None
    recurrency_kind: Recurrency | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    installed_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.connector_id < 0:
            raise ProfileError("connectorId", f"must be >= 0, not {self.connector_id}")
        if self.charging_profile_id < 0:
            raise ProfileError("chargingProfileId", f"must be >= 0, not {self.charging_profile_id}")
        if self.stack_level < 0:
            raise ProfileError("stackLevel", f"must be >= 0, not {self.stack_level}")
        if self.transaction_id is not None and self.purpose is not Purpose.TX:
            raise ProfileError("transactionId", "only a TxProfile names a transaction")
        if self.kind is Kind.RECURRING:
            if self.recurrency_kind is None:
                raise ProfileError("recurrencyKind", "a Recurring profile needs Daily or Weekly")
            if self.schedule.start_schedule is None:
                # Without it there is no telling where the day or week begins.
                raise ProfileError(
                    "chargingSchedule.startSchedule",
                    "a Recurring profile needs the start of its first day or week",
                )
        for name, when in (("validFrom", self.valid_from), ("validTo", self.valid_to)):
            if when is not None and when.utcoffset() is None:
                raise ProfileError(name, "needs a time zone (or Z)")
        if (
            self.valid_from is not None
            and self.valid_to is not None
            and self.valid_to <= self.valid_from
        ):
            raise ProfileError("validTo", "must be after validFrom")

    @property
    def recurrence_s(self) -> int | None:
        if self.kind is not Kind.RECURRING or self.recurrency_kind is None:
            return None
        return _RECURRENCE_S[self.recurrency_kind]


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveTransaction:
    """A transaction running on a connector. ``transaction_id`` is None until the CSMS gave one
    (a transaction started offline)."""

    transaction_id: int | None
    started_at: datetime


# -- OCPP JSON <-> types --------------------------------------------------------------------


def _get(payload: Mapping[str, Any], key: str, kinds: tuple[type, ...], required: bool) -> Any:
    value = payload.get(key)
    if value is None:
        if required:
            raise ProfileError(key, "is required")
        return None
    # bool is an int in Python, never in JSON's sense
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ProfileError(key, f"must be {' or '.join(k.__name__ for k in kinds)}: {value!r}")
    return value


def _integer(payload: Mapping[str, Any], key: str, required: bool = False) -> int | None:
    value = _get(payload, key, (int, float), required)
    if value is None:
        return None
    if isinstance(value, float):
        if not value.is_integer():
            raise ProfileError(key, f"must be an integer, not {value!r}")
        return int(value)
    return int(value)


def _number(payload: Mapping[str, Any], key: str, required: bool = False) -> float | None:
    value = _get(payload, key, (int, float), required)
    return None if value is None else float(value)


def _enum(
    payload: Mapping[str, Any], key: str, enum: type[_E], required: bool = False
) -> _E | None:
    value = _get(payload, key, (str,), required)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise ProfileError(key, f"must be one of {allowed}, not {value!r}") from None


def _time(payload: Mapping[str, Any], key: str) -> datetime | None:
    value = _get(payload, key, (str,), False)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ProfileError(key, f"is not an ISO 8601 date-time: {value!r}") from None
    if parsed.utcoffset() is None:
        raise ProfileError(key, f"needs a time zone (or Z): {value!r}")
    return parsed


def _no_extra(payload: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    extra = sorted(set(payload) - set(allowed))
    if extra:
        raise ProfileError(where, f"unknown field(s) {', '.join(extra)}")


_PROFILE_KEYS = (
    "chargingProfileId",
    "transactionId",
    "stackLevel",
    "chargingProfilePurpose",
    "chargingProfileKind",
    "recurrencyKind",
    "validFrom",
    "validTo",
    "chargingSchedule",
)
_SCHEDULE_KEYS = (
    "duration",
    "startSchedule",
    "chargingRateUnit",
    "chargingSchedulePeriod",
    "minChargingRate",
)


def _schedule_from_ocpp(payload: Mapping[str, Any]) -> ChargingSchedule:
    _no_extra(payload, _SCHEDULE_KEYS, "")
    unit = _enum(payload, "chargingRateUnit", RateUnit, required=True)
    raw = payload.get("chargingSchedulePeriod")
    if not isinstance(raw, list):
        raise ProfileError("chargingSchedulePeriod", "is required: a list of periods")
    periods = []
    for i, item in enumerate(raw):
        where = f"chargingSchedulePeriod[{i}]"
        if not isinstance(item, Mapping):
            raise ProfileError(where, "must be an object")
        try:
            _no_extra(item, ("startPeriod", "limit", "numberPhases"), "")
            start = _integer(item, "startPeriod", required=True)
            limit = _number(item, "limit", required=True)
            phases = _integer(item, "numberPhases")
        except ProfileError as e:
            raise e.within(where) from None
        assert start is not None and limit is not None
        periods.append(
            SchedulePeriod(
                start_period_s=start,
                limit=limit,
                number_phases=DEFAULT_PHASES if phases is None else phases,
            )
        )
    assert unit is not None
    return ChargingSchedule(
        rate_unit=unit,
        periods=tuple(periods),
        duration_s=_integer(payload, "duration"),
        start_schedule=_time(payload, "startSchedule"),
        min_charging_rate=_number(payload, "minChargingRate"),
    )


def profile_from_ocpp(payload: Mapping[str, Any], *, connector_id: int) -> ChargingProfile:
    """A ChargingProfile from its OCPP 1.6 JSON object (as in csChargingProfiles, or the
    chargingProfile of RemoteStartTransaction). Raises ProfileError naming the field."""
    if not isinstance(payload, Mapping):
        raise ProfileError("", "a charging profile must be an object")
    _no_extra(payload, _PROFILE_KEYS, "")
    raw_schedule = payload.get("chargingSchedule")
    if not isinstance(raw_schedule, Mapping):
        raise ProfileError("chargingSchedule", "is required: an object")
    try:
        schedule = _schedule_from_ocpp(raw_schedule)
    except ProfileError as e:
        # the schedule's own checks already say "chargingSchedule."
        if e.field.startswith("chargingSchedule."):
            raise
        raise e.within("chargingSchedule") from None
    profile_id = _integer(payload, "chargingProfileId", required=True)
    stack_level = _integer(payload, "stackLevel", required=True)
    purpose = _enum(payload, "chargingProfilePurpose", Purpose, required=True)
    kind = _enum(payload, "chargingProfileKind", Kind, required=True)
    assert profile_id is not None and stack_level is not None
    assert purpose is not None and kind is not None
    return ChargingProfile(
        connector_id=connector_id,
        charging_profile_id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        kind=kind,
        schedule=schedule,
        transaction_id=_integer(payload, "transactionId"),
        recurrency_kind=_enum(payload, "recurrencyKind", Recurrency),
        valid_from=_time(payload, "validFrom"),
        valid_to=_time(payload, "validTo"),
    )


def from_ocpp(payload: Mapping[str, Any]) -> ChargingProfile:
    """The profile of a SetChargingProfile.req payload ``{connectorId, csChargingProfiles}``.

    Raises ProfileError naming the field (``csChargingProfiles.chargingSchedule...``) for what
    the schema cannot express: periods not starting at 0 or not increasing, a Recurring profile
    without recurrencyKind or startSchedule, a limit that is not a multiple of 0.1, negative
    values, validTo not after validFrom, numberPhases outside 1..3.
    """
    _no_extra(payload, ("connectorId", "csChargingProfiles"), "")
    connector_id = _integer(payload, "connectorId", required=True)
    assert connector_id is not None
    if connector_id < 0:
        raise ProfileError("connectorId", f"must be >= 0, not {connector_id}")
    inner = payload.get("csChargingProfiles")
    if not isinstance(inner, Mapping):
        raise ProfileError("csChargingProfiles", "is required: an object")
    try:
        return profile_from_ocpp(inner, connector_id=connector_id)
    except ProfileError as e:
        raise e.within("csChargingProfiles") from None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number_out(value: float) -> int | float:
    # 11000.0 goes out as 11000: what CSMSs send and expect to read back
    return int(value) if value.is_integer() else value


def profile_to_ocpp(profile: ChargingProfile) -> dict[str, Any]:
    """The OCPP 1.6 JSON object of a profile (csChargingProfiles / chargingProfile)."""
    s = profile.schedule
    schedule: dict[str, Any] = {"chargingRateUnit": s.rate_unit.value}
    if s.duration_s is not None:
        schedule["duration"] = s.duration_s
    if s.start_schedule is not None:
        schedule["startSchedule"] = _iso(s.start_schedule)
    schedule["chargingSchedulePeriod"] = [
        {
            "startPeriod": p.start_period_s,
            "limit": _number_out(p.limit),
            "numberPhases": p.number_phases,
        }
        for p in s.periods
    ]
    if s.min_charging_rate is not None:
        schedule["minChargingRate"] = _number_out(s.min_charging_rate)
    out: dict[str, Any] = {"chargingProfileId": profile.charging_profile_id}
    if profile.transaction_id is not None:
        out["transactionId"] = profile.transaction_id
    out["stackLevel"] = profile.stack_level
    out["chargingProfilePurpose"] = profile.purpose.value
    out["chargingProfileKind"] = profile.kind.value
    if profile.recurrency_kind is not None:
        out["recurrencyKind"] = profile.recurrency_kind.value
    if profile.valid_from is not None:
        out["validFrom"] = _iso(profile.valid_from)
    if profile.valid_to is not None:
        out["validTo"] = _iso(profile.valid_to)
    out["chargingSchedule"] = schedule
    return out


def to_ocpp(profile: ChargingProfile) -> dict[str, Any]:
    """The SetChargingProfile.req payload that installs ``profile`` where it is installed."""
    return {"connectorId": profile.connector_id, "csChargingProfiles": profile_to_ocpp(profile)}


def to_record(profile: ChargingProfile) -> dict[str, Any]:
    """What to persist of an installed profile: its SetChargingProfile.req payload plus
    ``installedAt`` (OCPP does not carry it; a ChargePointMaxProfile may start then)."""
    out = to_ocpp(profile)
    if profile.installed_at is not None:
        out["installedAt"] = _iso(profile.installed_at)
    return out


def from_record(record: Mapping[str, Any]) -> ChargingProfile:
    """The profile ``to_record`` wrote (raises ProfileError if the record is damaged)."""
    installed_at = _time(record, "installedAt")
    payload = {k: v for k, v in record.items() if k != "installedAt"}
    return replace(from_ocpp(payload), installed_at=installed_at)


# -- installing and clearing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSet:
    """The charging profiles installed on the charge point, in installation order."""

    profiles: tuple[ChargingProfile, ...] = ()

    def __len__(self) -> int:
        return len(self.profiles)

    def __iter__(self) -> Iterator[ChargingProfile]:
        return iter(self.profiles)

    def by_id(self, charging_profile_id: int) -> ChargingProfile | None:
        return next(
            (p for p in self.profiles if p.charging_profile_id == charging_profile_id), None
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileRules:
    """What this charge point supports; the adapter reports the same values as the 1.6 keys
    ChargeProfileMaxStackLevel, MaxChargingProfilesInstalled, ChargingScheduleMaxPeriods and
    ChargingScheduleAllowedChargingRateUnit."""

    connector_count: int
    max_stack_level: int = 10
    max_profiles: int = 50
    max_periods: int = 48
    allowed_units: frozenset[RateUnit] = frozenset({RateUnit.A, RateUnit.W})


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The answer to SetChargingProfile: its status and, for the log, why."""

    status: ProfileStatus
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is ProfileStatus.ACCEPTED


def _rejected(reason: str) -> Verdict:
    return Verdict(status=ProfileStatus.REJECTED, reason=reason)


def install(
    profiles: ProfileSet,
    profile: ChargingProfile,
    *,
    at: datetime,
    transactions: Mapping[int, ActiveTransaction],
    rules: ProfileRules,
    remote_start: bool = False,
) -> tuple[ProfileSet, Verdict]:
    """SetChargingProfile: the new set and the verdict (the set is unchanged when Rejected).

    A profile with the same chargingProfileId (on any connector) is replaced, and so is one
    with the same stackLevel and purpose on the same connector. ``remote_start``: the profile
    came with RemoteStartTransaction; it must be a TxProfile without transactionId and is kept
    for the transaction about to start on its connector.
    """
    _us(at, "at")
    c = profile.connector_id
    if c > rules.connector_count:
        return profiles, _rejected(f"connector {c} does not exist")
    if profile.stack_level > rules.max_stack_level:
        return profiles, _rejected(
            f"stackLevel {profile.stack_level} is above ChargeProfileMaxStackLevel "
            f"{rules.max_stack_level}"
        )
    if len(profile.schedule.periods) > rules.max_periods:
        return profiles, _rejected(
            f"{len(profile.schedule.periods)} periods, ChargingScheduleMaxPeriods is "
            f"{rules.max_periods}"
        )
    if profile.schedule.rate_unit not in rules.allowed_units:
        return profiles, _rejected(f"charging rate unit {profile.schedule.rate_unit} not allowed")
    if profile.purpose is Purpose.CHARGE_POINT_MAX and c != 0:
        return profiles, _rejected("a ChargePointMaxProfile can only be set on connector 0")
    if remote_start:
        if profile.purpose is not Purpose.TX:
            return profiles, _rejected("a profile in RemoteStartTransaction must be a TxProfile")
        if profile.transaction_id is not None:
            return profiles, _rejected("a profile in RemoteStartTransaction has no transactionId")
    if profile.purpose is Purpose.TX:
        if c == 0:
            return profiles, _rejected("a TxProfile can only be set on a connector > 0")
        tx = transactions.get(c)
        if tx is None and not remote_start:
            return profiles, _rejected(f"no transaction is active on connector {c}")
        if (
            tx is not None
            and profile.transaction_id is not None
            and tx.transaction_id is not None
            and profile.transaction_id != tx.transaction_id
        ):
            return profiles, _rejected(
                f"transactionId {profile.transaction_id} is not the transaction "
                f"{tx.transaction_id} active on connector {c}"
            )
    kept = tuple(
        p
        for p in profiles.profiles
        if p.charging_profile_id != profile.charging_profile_id
        and not (
            p.connector_id == c
            and p.stack_level == profile.stack_level
            and p.purpose is profile.purpose
        )
    )
    if len(kept) + 1 > rules.max_profiles:
        return profiles, _rejected(f"MaxChargingProfilesInstalled ({rules.max_profiles}) reached")
    replaced = len(profiles.profiles) - len(kept)
    new = ProfileSet(profiles=(*kept, replace(profile, installed_at=at)))
    reason = f"replaces {replaced} profile(s)" if replaced else ""
    return new, Verdict(status=ProfileStatus.ACCEPTED, reason=reason)


def clear(
    profiles: ProfileSet,
    *,
    charging_profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: Purpose | None = None,
    stack_level: int | None = None,
) -> tuple[ProfileSet, ClearStatus]:
    """ClearChargingProfile. With an id: that profile (the other criteria are then ignored: the
    id names one profile). Without: every profile matching all the criteria given (connector 0
    means the profiles installed on connector 0); with none given, every profile. Accepted if
    anything was removed, else Unknown."""
    if charging_profile_id is not None:
        kept = tuple(p for p in profiles.profiles if p.charging_profile_id != charging_profile_id)
    else:
        kept = tuple(
            p
            for p in profiles.profiles
            if not (
                (connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.purpose is purpose)
                and (stack_level is None or p.stack_level == stack_level)
            )
        )
    if len(kept) == len(profiles.profiles):
        return profiles, ClearStatus.UNKNOWN
    return ProfileSet(profiles=kept), ClearStatus.ACCEPTED


def clear_from_ocpp(
    profiles: ProfileSet, payload: Mapping[str, Any]
) -> tuple[ProfileSet, ClearStatus]:
    """``clear`` with a ClearChargingProfile.req payload (id, connectorId, purpose, level)."""
    _no_extra(payload, ("id", "connectorId", "chargingProfilePurpose", "stackLevel"), "")
    return clear(
        profiles,
        charging_profile_id=_integer(payload, "id"),
        connector_id=_integer(payload, "connectorId"),
        purpose=_enum(payload, "chargingProfilePurpose", Purpose),
        stack_level=_integer(payload, "stackLevel"),
    )


def end_transaction(profiles: ProfileSet, connector_id: int) -> ProfileSet:
    """The transaction on ``connector_id`` ended (or a remote start never became one): its
    TxProfiles go (1.6 §3.13.1: they apply for the duration of the transaction only)."""
    return ProfileSet(
        profiles=tuple(
            p
            for p in profiles.profiles
            if not (p.purpose is Purpose.TX and p.connector_id == connector_id)
        )
    )


# -- evaluation -----------------------------------------------------------------------------

_MAX, _TX, _DEFAULT = 0, 1, 2  # the groups a connector's profiles fall into


@dataclass(frozen=True, slots=True)
class _Entry:
    profile: ChargingProfile
    anchor_us: int  # where the schedule's offset 0 lies for this connector
    group: int


def _anchor_us(p: ChargingProfile, tx: ActiveTransaction | None, idle_us: int) -> int:
    """Where a schedule starts. Absolute/Recurring: startSchedule. Relative, and Absolute
    without startSchedule ("relative to start of charging", 1.6 ChargingSchedule): the
    transaction's start; with no transaction, ``idle_us`` (as if one started then). A
    ChargePointMaxProfile belongs to no transaction: validFrom, else its installation."""
    start = p.schedule.start_schedule
    if start is not None and p.kind is not Kind.RELATIVE:
        return _us(start)
    if p.purpose is Purpose.CHARGE_POINT_MAX:
        for when in (p.valid_from, p.installed_at):
            if when is not None:
                return _us(when)
        return idle_us
    return _us(tx.started_at, "started_at") if tx is not None else idle_us


def _entries(
    profiles: ProfileSet,
    connector_id: int,
    transactions: Mapping[int, ActiveTransaction],
    idle_us: int,
) -> list[_Entry]:
    """The profiles that can bear on ``connector_id`` (0: the charge point), with anchors."""
    tx = transactions.get(connector_id) if connector_id > 0 else None
    out = []
    for p in profiles.profiles:
        if p.purpose is Purpose.CHARGE_POINT_MAX:
            if p.connector_id == 0:
                out.append(_Entry(p, _anchor_us(p, None, idle_us), _MAX))
        elif connector_id == 0:
            continue  # Tx and TxDefault profiles limit connectors, not the charge point
        elif p.purpose is Purpose.TX_DEFAULT:
            if p.connector_id in (0, connector_id):
                out.append(_Entry(p, _anchor_us(p, tx, idle_us), _DEFAULT))
        elif p.connector_id == connector_id and tx is not None:
            ids = (p.transaction_id, tx.transaction_id)
            if None in ids or ids[0] == ids[1]:
                out.append(_Entry(p, _anchor_us(p, tx, idle_us), _TX))
    return out


def _period_at(e: _Entry, t_us: int) -> SchedulePeriod | None:
    """The period of one profile in force at ``t_us``, None where it does not cover."""
    p = e.profile
    if p.valid_from is not None and t_us < _us(p.valid_from):
        return None
    if p.valid_to is not None and t_us >= _us(p.valid_to):
        return None
    offset = t_us - e.anchor_us
    if offset < 0:
        return None  # before the schedule starts (a Recurring one too: it starts there)
    sched = p.schedule
    length_s: float = sched.duration_s if sched.duration_s is not None else math.inf
    recurrence = p.recurrence_s
    if recurrence is not None:
        # Periods or a duration beyond the recurrence are not executed (1.6 §5.16.4)
        offset %= recurrence * _S
        length_s = min(length_s, recurrence)
    if offset >= length_s * _S:
        return None  # past its duration: the next lower stack level applies
    i = bisect_right(sched.periods, offset, key=lambda q: q.start_period_s * _S)
    return sched.periods[i - 1]


def _breakpoints(e: _Entry, lo_us: int, hi_us: int) -> set[int]:
    """Every instant at which this profile's answer may change: all of them for a one-off
    schedule, those within [lo, hi] (and a recurrence either side) for a Recurring one."""
    p = e.profile
    out = set()
    for when in (p.valid_from, p.valid_to):
        if when is not None:
            out.add(_us(when))
    sched = p.schedule
    recurrence = p.recurrence_s
    if recurrence is None:
        out.update(e.anchor_us + q.start_period_s * _S for q in sched.periods)
        if sched.duration_s is not None:
            out.add(e.anchor_us + sched.duration_s * _S)
        return out
    r_us = recurrence * _S
    out.add(e.anchor_us)  # the first occurrence, however far [lo, hi] lies before it
    length = min(sched.duration_s or recurrence, recurrence)
    first = max(0, (lo_us - e.anchor_us) // r_us - 1)
    last = (hi_us - e.anchor_us) // r_us + 1
    for k in range(first, last + 1):
        base = e.anchor_us + k * r_us
        out.update(
            base + q.start_period_s * _S for q in sched.periods if q.start_period_s < recurrence
        )
        if length < recurrence:
            out.add(base + length * _S)
    return out


def _amps(period: SchedulePeriod, unit: RateUnit, nominal_voltage_v: float) -> float:
    if unit is RateUnit.A:
        return period.limit
    return period.limit / (nominal_voltage_v * period.number_phases)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prevailing:
    profile: ChargingProfile
    period: SchedulePeriod


def _prevailing(
    entries: Sequence[_Entry], t_us: int, groups: tuple[int, ...]
) -> _Prevailing | None:
    """Highest stackLevel in force among ``groups``; at equal levels a connector's own
    TxDefaultProfile beats the one on connector 0."""
    best: tuple[tuple[int, int], _Prevailing] | None = None
    for e in entries:
        if e.group not in groups:
            continue
        period = _period_at(e, t_us)
        if period is None:
            continue
        key = (e.profile.stack_level, 1 if e.profile.connector_id else 0)
        if best is None or key > best[0]:
            best = (key, _Prevailing(profile=e.profile, period=period))
    return best[1] if best is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileLimit:
    """What the profiles impose at one instant: ``current_a`` per phase on ``number_phases``
    phases (the phases in use: the Tx/TxDefault period's numberPhases, else the
    ChargePointMaxProfile's). ``profile`` is the one that binds (the lowest)."""

    current_a: float
    number_phases: int
    profile: ChargingProfile

    def power_w(self, nominal_voltage_v: float) -> float:
        return self.current_a * nominal_voltage_v * self.number_phases


def _limit(entries: Sequence[_Entry], t_us: int, nominal_voltage_v: float) -> ProfileLimit | None:
    cap = _prevailing(entries, t_us, (_MAX,))
    # A TxProfile overrules the TxDefaultProfiles for its transaction; the purposes never mix
    # in one stack.
    own = _prevailing(entries, t_us, (_TX,)) or _prevailing(entries, t_us, (_DEFAULT,))
    parts = [x for x in (own, cap) if x is not None]
    if not parts:
        return None
    phases = parts[0].period.number_phases
    binding = min(
        parts, key=lambda x: _amps(x.period, x.profile.schedule.rate_unit, nominal_voltage_v)
    )
    return ProfileLimit(
        current_a=_amps(binding.period, binding.profile.schedule.rate_unit, nominal_voltage_v),
        number_phases=phases,
        profile=binding.profile,
    )


def limit_at(
    profiles: ProfileSet,
    connector_id: int,
    at: datetime,
    *,
    transactions: Mapping[int, ActiveTransaction],
    nominal_voltage_v: float,
    idle_start: datetime | None = None,
) -> ProfileLimit | None:
    """The limit the profiles impose on ``connector_id`` at ``at`` (None: no profile applies).

    Connector 0: the prevailing ChargePointMaxProfile. Connector n: the prevailing TxProfile of
    its transaction, else its prevailing TxDefaultProfile (its own or connector 0's), and then
    the minimum with the ChargePointMaxProfile. A W limit is converted to A per phase with
    ``nominal_voltage_v`` and the period's numberPhases. A connector without a transaction
    evaluates Relative schedules as if one started at ``idle_start`` (default: ``at``).
    """
    t = _us(at, "at")
    idle = _us(idle_start, "idle_start") if idle_start is not None else t
    return _limit(_entries(profiles, connector_id, transactions, idle), t, nominal_voltage_v)


# -- composite schedules --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Cap:
    """A limit from elsewhere in the site (connector maximum, circuit rating, a time-of-use or
    cloud slot), in amps per phase, during [starts_at, ends_at) (None: open)."""

    current_a: float
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    note: str = ""


# A cap that changes over time: at an instant, its value in A per phase (None: no cap) and the
# next instant it may change (None: never), so the composite finds its breakpoints exactly.
CapFunction = Callable[[datetime], tuple[float | None, datetime | None]]


def caps_from_slots(
    slots: Iterable[LimitSlot],
    *,
    scopes: Collection[str],
    nominal_voltage_v: float,
    number_phases: int = DEFAULT_PHASES,
) -> tuple[Cap, ...]:
    """Limit slots as caps for a composite schedule: those whose scope is in ``scopes`` (e.g.
    ``{"site", "circuit:garage", "connector:cp1"}`` for cp1: a cap on a group also bounds each
    member). A power slot counts over ``number_phases`` at the nominal voltage; a
    demand-response floor lifts it as the engine does."""
    out = []
    for slot in slots:
        if slot.scope not in scopes:
            continue
        if slot.current_a is not None:
            amps = slot.current_a
        else:
            assert slot.power_w is not None
            power = max(slot.power_w, slot.floor_w or 0.0)
            amps = power / (nominal_voltage_v * number_phases)
        out.append(
            Cap(current_a=amps, starts_at=slot.starts_at, ends_at=slot.ends_at, note=slot.key)
        )
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompositePeriod:
    start_period_s: int
    limit: float  # in the composite's rate unit, a multiple of 0.1 (rounded down)
    number_phases: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CompositeSchedule:
    """The GetCompositeSchedule answer: periods from ``schedule_start`` (whole seconds)."""

    connector_id: int
    schedule_start: datetime
    duration_s: int
    rate_unit: RateUnit
    periods: tuple[CompositePeriod, ...]

    def period_at(self, at: datetime) -> CompositePeriod:
        """The period in force at ``at`` (which must lie within the schedule)."""
        offset = (_us(at) - _us(self.schedule_start)) / _S
        if not 0 <= offset < max(self.duration_s, 1):
            raise ValueError(f"{at} is outside the composite schedule")
        starts = [p.start_period_s for p in self.periods]
        return self.periods[bisect_right(starts, offset) - 1]

    def to_ocpp(self) -> dict[str, Any]:
        """The GetCompositeSchedule.conf payload (status Accepted)."""
        return {
            "status": "Accepted",
            "connectorId": self.connector_id,
            "scheduleStart": _iso(self.schedule_start),
            "chargingSchedule": {
                "duration": self.duration_s,
                "startSchedule": _iso(self.schedule_start),
                "chargingRateUnit": self.rate_unit.value,
                "chargingSchedulePeriod": [
                    {
                        "startPeriod": p.start_period_s,
                        "limit": _number_out(p.limit),
                        "numberPhases": p.number_phases,
                    }
                    for p in self.periods
                ],
            },
        }


def _cap_points(
    caps: Sequence[Cap | CapFunction], lo_us: int, hi_us: int, tz: tzinfo | None
) -> set[int]:
    out = set()
    for cap in caps:
        if isinstance(cap, Cap):
            for when in (cap.starts_at, cap.ends_at):
                if when is not None:
                    out.add(_us(when, "cap bound"))
            continue
        t = lo_us
        while t < hi_us:
            _, nxt = cap(_dt(t, tz))
            if nxt is None:
                break
            n = _us(nxt, "cap change")
            if n <= t:
                raise ValueError(f"a cap function's next change {nxt} is not after {_dt(t, tz)}")
            out.add(n)
            t = n
    return out


def _caps_at(
    caps: Sequence[Cap | CapFunction], t_us: int, tz: tzinfo | None
) -> tuple[float, str] | None:
    best: tuple[float, str] | None = None
    for cap in caps:
        if isinstance(cap, Cap):
            if cap.starts_at is not None and t_us < _us(cap.starts_at):
                continue
            if cap.ends_at is not None and t_us >= _us(cap.ends_at):
                continue
            value, note = cap.current_a, cap.note
        else:
            got, _ = cap(_dt(t_us, tz))
            if got is None:
                continue
            value, note = got, "cap"
        if best is None or value < best[0]:
            best = (value, note)
    return best


def composite_schedule(
    profiles: ProfileSet,
    connector_id: int,
    start: datetime,
    duration_s: int,
    *,
    transactions: Mapping[int, ActiveTransaction],
    nominal_voltage_v: float,
    ceiling_a: float,
    rate_unit: RateUnit = RateUnit.A,
    caps: Sequence[Cap | CapFunction] = (),
    default_phases: int = DEFAULT_PHASES,
) -> CompositeSchedule:
    """GetCompositeSchedule for ``connector_id`` (0: the charge point) over
    [start, start + duration_s), ``start`` taken down to the whole second.

    At every instant the limit is the minimum of ``limit_at`` (the profiles), ``ceiling_a``
    (what the connector or charge point can draw with no profile at all: the connector's
    maximum, the site's rating) and every cap in force, so the answer says what the site will
    actually allow. Breakpoints are found exactly (period starts, durations, recurrences,
    validity bounds, cap changes); a breakpoint inside a second makes that whole second take the
    lower value (startPeriod is an integer). Limits are in ``rate_unit`` (W: A x nominal voltage
    x the phases in use), rounded down to 0.1; equal neighbouring periods are merged. A
    connector without a transaction is answered as if one started at ``start``.
    """
    if duration_s < 0:
        raise ValueError(f"duration must be >= 0 s, not {duration_s}")
    start = start.replace(microsecond=0)
    tz = start.tzinfo
    lo = _us(start, "start")
    hi = lo + max(duration_s, 1) * _S
    entries = _entries(profiles, connector_id, transactions, lo)
    points = {lo}
    for e in entries:
        points.update(b for b in _breakpoints(e, lo, hi) if lo < b < hi)
    points.update(b for b in _cap_points(caps, lo, hi, tz) if lo < b < hi)
    ordered = sorted(points)

    # Exact pieces: (offset in us, amps, phases)
    pieces: list[tuple[int, float, int]] = []
    for t in ordered:
        lim = _limit(entries, t, nominal_voltage_v)
        amps = ceiling_a
        phases = default_phases
        if lim is not None:
            amps, phases = min(amps, lim.current_a), lim.number_phases
        cap = _caps_at(caps, t, tz)
        if cap is not None:
            amps = min(amps, cap[0])
        pieces.append((t - lo, max(0.0, amps), phases))

    # Onto whole seconds: a second holding a breakpoint takes the lowest value within it.
    offsets = [p[0] for p in pieces]
    grid = sorted(
        {0}
        | {o // _S for o in offsets}
        | {-(-o // _S) for o in offsets if -(-o // _S) < max(duration_s, 1)}
    )
    volts_x = {n: nominal_voltage_v * n for n in (1, 2, 3, default_phases)}
    periods: list[CompositePeriod] = []
    for i, second in enumerate(grid):
        end = grid[i + 1] if i + 1 < len(grid) else max(duration_s, 1)
        first = bisect_right(offsets, second * _S) - 1
        last = bisect_right(offsets, end * _S - 1) - 1
        # lowest in the unit asked for: with phases changing, fewer amps can be more watts
        value, phases = min(
            (
                pieces[j][1] if rate_unit is RateUnit.A else pieces[j][1] * volts_x[pieces[j][2]],
                pieces[j][2],
            )
            for j in range(first, last + 1)
        )
        period = CompositePeriod(
            start_period_s=second, limit=floor_tenth(value), number_phases=phases
        )
        if periods and (periods[-1].limit, periods[-1].number_phases) == (
            period.limit,
            period.number_phases,
        ):
            continue
        periods.append(period)
    return CompositeSchedule(
        connector_id=connector_id,
        schedule_start=start,
        duration_s=duration_s,
        rate_unit=rate_unit,
        periods=tuple(periods),
    )


# -- limit slots for the engine -------------------------------------------------------------


def _bounds(entries: Sequence[_Entry], t_us: int) -> tuple[int | None, int | None]:
    """The breakpoints around ``t_us``: the last at or before it, the first after it. (A
    recurring profile's occurrences either side of t are among its breakpoints for [t, t].)"""
    points: set[int] = set()
    for e in entries:
        points |= _breakpoints(e, t_us, t_us)
    before = [b for b in points if b <= t_us]
    after = [b for b in points if b > t_us]
    return (max(before) if before else None, min(after) if after else None)


def _slot(
    *,
    slot_id: str,
    scope: str,
    found: _Prevailing,
    entries: Sequence[_Entry],
    t_us: int,
    tz: tzinfo | None,
) -> LimitSlot:
    p, period = found.profile, found.period
    lo, hi = _bounds(entries, t_us)
    unit = p.schedule.rate_unit
    # A power limit stays a power limit: the engine spreads it over the phases each EV really
    # uses (numberPhases only says what the CSMS expects).
    return LimitSlot(
        id=slot_id,
        source=SlotSource.OCPP,
        scope=scope,
        current_a=period.limit if unit is RateUnit.A else None,
        power_w=period.limit if unit is RateUnit.W else None,
        starts_at=_dt(lo, tz) if lo is not None else None,
        ends_at=_dt(hi, tz) if hi is not None else None,
        note=f"{p.purpose.value} {p.charging_profile_id} (connector {p.connector_id}, "
        f"stack level {p.stack_level}): {period.limit:g} {unit.value}",
    )


def profile_slots(
    profiles: ProfileSet,
    at: datetime,
    *,
    transactions: Mapping[int, ActiveTransaction],
    connector_ids: Mapping[int, str],
) -> tuple[LimitSlot, ...]:
    """The profiles in force at ``at`` as limit slots for the engine (source ``ocpp``).

    - The prevailing ChargePointMaxProfile: slot ``max``, scope ``site`` (all connectors
      together, per phase in A or in total in W).
    - Per connector (``connector_ids`` maps OCPP connector numbers to the site's connector
      ids): its prevailing TxProfile, else TxDefaultProfile: slot ``connector-<n>``, scope
      ``connector:<id>``.

    ``starts_at``/``ends_at`` are the bounds of the current piece (the nearest breakpoints of
    the profiles behind the slot), so the engine drops a slot once its piece is over; call again
    by then (at the earliest ``ends_at``) for the next. The engine takes the minimum with the
    ratings and every other slot: a profile never raises anything.
    """
    t = _us(at, "at")
    tz = at.tzinfo
    out = []
    site_entries = [e for e in _entries(profiles, 0, transactions, t) if e.group == _MAX]
    found = _prevailing(site_entries, t, (_MAX,))
    if found is not None:
        out.append(
            _slot(slot_id="max", scope=SITE, found=found, entries=site_entries, t_us=t, tz=tz)
        )
    # Connectors with no profile of their own and no transaction all see connector 0's
    # TxDefaultProfiles alike: work each case out once (sites with many idle connectors).
    own = {p.connector_id for p in profiles.profiles if p.connector_id > 0}
    shared: dict[object, LimitSlot | None] = {}
    for number, cid in sorted(connector_ids.items()):
        if number <= 0:
            continue
        key = (number,) if number in own or number in transactions else ()
        if key not in shared:
            entries = [e for e in _entries(profiles, number, transactions, t) if e.group != _MAX]
            found = _prevailing(entries, t, (_TX,)) or _prevailing(entries, t, (_DEFAULT,))
            shared[key] = (
                None
                if found is None
                else _slot(slot_id="", scope="", found=found, entries=entries, t_us=t, tz=tz)
            )
        slot = shared[key]
        if slot is not None:
            out.append(replace(slot, id=f"connector-{number}", scope=f"connector:{cid}"))
    return tuple(out)


def next_change(
    profiles: ProfileSet,
    at: datetime,
    *,
    transactions: Mapping[int, ActiveTransaction],
    connector_ids: Collection[int],
) -> datetime | None:
    """The first instant after ``at`` at which ``profile_slots`` may answer differently, None
    if never (until the profiles or the transactions change, which the shell knows). A profile
    that comes into force later has no slot yet: this is when to look again."""
    t = _us(at, "at")
    points: set[int] = set()
    for number in {0, *connector_ids}:
        if number < 0:
            continue
        for e in _entries(profiles, number, transactions, t):
            points |= _breakpoints(e, t, t)
    after = [b for b in points if b > t]
    return _dt(min(after), at.tzinfo) if after else None


__all__ = [
    "DEFAULT_PHASES",
    "ActiveTransaction",
    "Cap",
    "CapFunction",
    "ChargingProfile",
    "ChargingSchedule",
    "ClearStatus",
    "CompositePeriod",
    "CompositeSchedule",
    "Kind",
    "ProfileError",
    "ProfileLimit",
    "ProfileRules",
    "ProfileSet",
    "ProfileStatus",
    "Purpose",
    "RateUnit",
    "Recurrency",
    "SchedulePeriod",
    "Verdict",
    "caps_from_slots",
    "clear",
    "clear_from_ocpp",
    "composite_schedule",
    "end_transaction",
    "floor_tenth",
    "from_ocpp",
    "from_record",
    "install",
    "limit_at",
    "next_change",
    "profile_from_ocpp",
    "profile_slots",
    "profile_to_ocpp",
    "to_ocpp",
    "to_record",
]
