"""OCPP 1.6 smart charging (controller/core/charging_profiles.py): the rules on examples (the
spec's own where it has one), then hypothesis properties tying the composite schedule to the
instant-by-instant evaluation."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.core.allocation import allocate
from controller.core.charging_profiles import (
    ActiveTransaction,
    Cap,
    CapFunction,
    ChargingProfile,
    ChargingSchedule,
    ClearStatus,
    Kind,
    ProfileError,
    ProfileRules,
    ProfileSet,
    ProfileStatus,
    Purpose,
    RateUnit,
    Recurrency,
    SchedulePeriod,
    caps_from_slots,
    clear,
    clear_from_ocpp,
    composite_schedule,
    end_transaction,
    floor_tenth,
    from_ocpp,
    from_record,
    install,
    limit_at,
    next_change,
    profile_from_ocpp,
    profile_slots,
    to_ocpp,
    to_record,
)
from controller.core.slots import LimitSlot, SlotSource
from tests.core.sites import WALL, evse, site, snap

T0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
RULES = ProfileRules(connector_count=2)
V = 230.0
NO_TX: dict[int, ActiveTransaction] = {}
H = 3600


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def schedule(
    *periods: tuple[int, float] | tuple[int, float, int],
    unit: RateUnit = RateUnit.A,
    duration_s: int | None = None,
    start: datetime | None = None,
) -> ChargingSchedule:
    return ChargingSchedule(
        rate_unit=unit,
        periods=tuple(
            SchedulePeriod(start_period_s=p[0], limit=p[1], number_phases=p[2] if len(p) > 2 else 3)
            for p in periods
        ),
        duration_s=duration_s,
        start_schedule=start,
    )


def profile(
    pid: int,
    *,
    connector: int = 1,
    purpose: Purpose = Purpose.TX_DEFAULT,
    kind: Kind = Kind.ABSOLUTE,
    level: int = 0,
    sched: ChargingSchedule | None = None,
    **kw: Any,
) -> ChargingProfile:
    if sched is None:
        sched = schedule((0, 16.0), start=T0)
    return ChargingProfile(
        connector_id=connector,
        charging_profile_id=pid,
        stack_level=level,
        purpose=purpose,
        kind=kind,
        schedule=sched,
        **kw,
    )


def installed(
    *profiles: ChargingProfile,
    when: datetime = T0,
    tx: dict[int, ActiveTransaction] | None = None,
) -> ProfileSet:
    ps = ProfileSet()
    for p in profiles:
        ps, verdict = install(ps, p, at=when, transactions=tx or NO_TX, rules=RULES)
        assert verdict.accepted, verdict.reason
    return ps


def amps(
    ps: ProfileSet, connector: int, when: datetime, tx: dict[int, ActiveTransaction] | None = None
) -> float | None:
    lim = limit_at(ps, connector, when, transactions=tx or NO_TX, nominal_voltage_v=V)
    return None if lim is None else round(lim.current_a, 6)


# The 1.6 spec's example (§3.13.7): a daily default profile that limits the power to 6 kW
# between 08:00 and 20:00 (11 kW otherwise).
SPEC_EXAMPLE: dict[str, Any] = {
    "connectorId": 0,
    "csChargingProfiles": {
        "chargingProfileId": 100,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Recurring",
        "recurrencyKind": "Daily",
        "chargingSchedule": {
            "duration": 86400,
            "startSchedule": "2013-01-01T00:00Z",
            "chargingRateUnit": "W",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 11000, "numberPhases": 3},
                {"startPeriod": 28800, "limit": 6000, "numberPhases": 3},
                {"startPeriod": 72000, "limit": 11000, "numberPhases": 3},
            ],
        },
    },
}


def _payload(**changes: Any) -> dict[str, Any]:
    """A TxProfile payload for connector 1 with ``changes`` applied (dotted keys reach into the
    schedule: ``schedule__duration``)."""
    inner: dict[str, Any] = {
        "chargingProfileId": 7,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
        },
    }
    for change, value in changes.items():
        target, key = inner, change
        if change.startswith("schedule__"):
            target, key = inner["chargingSchedule"], change.removeprefix("schedule__")
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return {"connectorId": 1, "csChargingProfiles": inner}


# -- parsing --------------------------------------------------------------------------------


def test_the_spec_example_parses_and_round_trips() -> None:
    p = from_ocpp(SPEC_EXAMPLE)
    assert p.connector_id == 0 and p.charging_profile_id == 100
    assert p.purpose is Purpose.TX_DEFAULT and p.kind is Kind.RECURRING
    assert p.recurrency_kind is Recurrency.DAILY
    assert p.schedule.rate_unit is RateUnit.W and p.schedule.duration_s == 86400
    assert p.schedule.start_schedule == T0.replace(year=2013, month=1, day=1)
    assert [(q.start_period_s, q.limit) for q in p.schedule.periods] == [
        (0, 11000.0),
        (28800, 6000.0),
        (72000, 11000.0),
    ]
    assert from_ocpp(to_ocpp(p)) == p
    out = to_ocpp(p)["csChargingProfiles"]
    assert out["chargingSchedule"]["startSchedule"] == "2013-01-01T00:00:00Z"
    assert out["chargingSchedule"]["chargingSchedulePeriod"][1] == {
        "startPeriod": 28800,
        "limit": 6000,
        "numberPhases": 3,
    }


def test_number_phases_defaults_to_three_and_tenths_are_accepted() -> None:
    p = from_ocpp(_payload(schedule__chargingSchedulePeriod=[{"startPeriod": 0, "limit": 16.1}]))
    assert p.schedule.periods[0].number_phases == 3
    assert p.schedule.periods[0].limit == 16.1


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        (
            {"schedule__chargingSchedulePeriod": [{"startPeriod": 10, "limit": 6}]},
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].startPeriod",
            "must start at 0",
        ),
        (
            {
                "schedule__chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 6},
                    {"startPeriod": 600, "limit": 8},
                    {"startPeriod": 600, "limit": 10},
                ]
            },
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[2].startPeriod",
            "increasing",
        ),
        (
            {"chargingProfileKind": "Recurring", "schedule__startSchedule": "2026-11-29T00:00Z"},
            "csChargingProfiles.recurrencyKind",
            "Daily or Weekly",
        ),
        (
            {"chargingProfileKind": "Recurring", "recurrencyKind": "Daily"},
            "csChargingProfiles.chargingSchedule.startSchedule",
            "Recurring",
        ),
        (
            {"schedule__chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.25}]},
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit",
            "multiple of 0.1",
        ),
        (
            {
                "schedule__chargingRateUnit": "W",
                "schedule__chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.05}],
            },
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit",
            "multiple of 0.1",
        ),
        (
            {"schedule__chargingSchedulePeriod": [{"startPeriod": 0, "limit": -6}]},
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit",
            ">= 0",
        ),
        (
            {
                "schedule__chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 6, "numberPhases": 4}
                ]
            },
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].numberPhases",
            "1, 2 or 3",
        ),
        ({"stackLevel": -1}, "csChargingProfiles.stackLevel", ">= 0"),
        ({"chargingProfileId": -3}, "csChargingProfiles.chargingProfileId", ">= 0"),
        ({"schedule__duration": -60}, "csChargingProfiles.chargingSchedule.duration", "> 0"),
        (
            {"schedule__minChargingRate": -1},
            "csChargingProfiles.chargingSchedule.minChargingRate",
            ">= 0",
        ),
        (
            {"validFrom": "2026-11-29T10:00Z", "validTo": "2026-11-29T09:00Z"},
            "csChargingProfiles.validTo",
            "after validFrom",
        ),
        ({"validFrom": "2026-11-29T10:00"}, "csChargingProfiles.validFrom", "time zone"),
        ({"validFrom": "tomorrow"}, "csChargingProfiles.validFrom", "ISO 8601"),
        ({"stackLevel": True}, "csChargingProfiles.stackLevel", "must be"),
        ({"stackLevel": None}, "csChargingProfiles.stackLevel", "required"),
        ({"chargingProfileKind": "Sometimes"}, "csChargingProfiles.chargingProfileKind", "one of"),
        ({"colour": "red"}, "csChargingProfiles", "unknown field"),
        (
            {"chargingProfilePurpose": "TxDefaultProfile", "transactionId": 5},
            "csChargingProfiles.transactionId",
            "only a TxProfile",
        ),
        (
            {"schedule__chargingRateUnit": None},
            "csChargingProfiles.chargingSchedule.chargingRateUnit",
            "required",
        ),
        (
            {"schedule__chargingSchedulePeriod": []},
            "csChargingProfiles.chargingSchedule.chargingSchedulePeriod",
            "no period",
        ),
    ],
)
def test_semantic_errors_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ProfileError) as caught:
        from_ocpp(_payload(**changes))
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_payload_without_a_profile_or_connector_is_refused() -> None:
    with pytest.raises(ProfileError, match="csChargingProfiles"):
        from_ocpp({"connectorId": 1})
    with pytest.raises(ProfileError, match="connectorId"):
        from_ocpp({"csChargingProfiles": _payload()["csChargingProfiles"]})
    with pytest.raises(ProfileError, match="connectorId"):
        from_ocpp({**_payload(), "connectorId": -1})


def test_a_bare_profile_parses_for_a_remote_start() -> None:
    p = profile_from_ocpp(_payload()["csChargingProfiles"], connector_id=2)
    assert p.connector_id == 2 and p.purpose is Purpose.TX and p.transaction_id is None


# -- installation ---------------------------------------------------------------------------


def test_the_same_id_replaces_even_on_another_connector() -> None:
    ps = installed(profile(1, connector=1), profile(1, connector=2, level=3))
    assert [(p.connector_id, p.stack_level) for p in ps] == [(2, 3)]


def test_the_same_stack_level_and_purpose_replaces_on_the_same_connector_only() -> None:
    ps = installed(profile(1, connector=1), profile(2, connector=2), profile(3, connector=0))
    ps2, verdict = install(ps, profile(4, connector=1), at=T0, transactions=NO_TX, rules=RULES)
    assert verdict.accepted and "replaces 1" in verdict.reason
    assert sorted(p.charging_profile_id for p in ps2) == [2, 3, 4]
    # another purpose at the same level stays
    ps3 = installed(profile(5, connector=0, purpose=Purpose.CHARGE_POINT_MAX))
    ps3, _ = install(ps3, profile(6, connector=0), at=T0, transactions=NO_TX, rules=RULES)
    assert len(ps3) == 2
    assert ps2.by_id(4) is not None and ps2.by_id(4).installed_at == T0  # type: ignore[union-attr]


TX1 = {1: ActiveTransaction(transaction_id=42, started_at=at(600))}


@pytest.mark.parametrize(
    ("p", "tx", "remote", "words"),
    [
        (profile(1, connector=1, purpose=Purpose.CHARGE_POINT_MAX), NO_TX, False, "connector 0"),
        (profile(1, connector=0, purpose=Purpose.TX), TX1, False, "connector > 0"),
        (profile(1, connector=2, purpose=Purpose.TX), TX1, False, "no transaction"),
        (profile(1, purpose=Purpose.TX, transaction_id=41), TX1, False, "not the transaction"),
        (profile(1, connector=3), NO_TX, False, "does not exist"),
        (profile(1, level=11), NO_TX, False, "ChargeProfileMaxStackLevel"),
        (profile(1, purpose=Purpose.TX, transaction_id=42), NO_TX, True, "no transactionId"),
        (profile(1), NO_TX, True, "must be a TxProfile"),
        (
            profile(1, sched=schedule(*[(i * 60, 6.0) for i in range(49)], start=T0)),
            NO_TX,
            False,
            "ChargingScheduleMaxPeriods",
        ),
    ],
)
def test_rejected_profiles_leave_the_set_alone(
    p: ChargingProfile, tx: dict[int, ActiveTransaction], remote: bool, words: str
) -> None:
    before = installed(profile(99, connector=0))
    after, verdict = install(before, p, at=T0, transactions=tx, rules=RULES, remote_start=remote)
    assert verdict.status is ProfileStatus.REJECTED
    assert words in verdict.reason
    assert after is before


def test_tx_profiles_need_their_transaction() -> None:
    for tid in (None, 42):
        p = profile(1, purpose=Purpose.TX, transaction_id=tid)
        _, verdict = install(ProfileSet(), p, at=T0, transactions=TX1, rules=RULES)
        assert verdict.accepted
    # a transaction started offline has no id yet: nothing to compare, accepted
    offline = {1: ActiveTransaction(transaction_id=None, started_at=T0)}
    _, verdict = install(
        ProfileSet(), profile(1, purpose=Purpose.TX, transaction_id=7), at=T0,
        transactions=offline, rules=RULES,
    )  # fmt: skip
    assert verdict.accepted
    # RemoteStartTransaction: kept for the transaction about to start
    ps, verdict = install(
        ProfileSet(), profile(2, purpose=Purpose.TX), at=T0, transactions=NO_TX, rules=RULES,
        remote_start=True,
    )  # fmt: skip
    assert verdict.accepted and len(ps) == 1


def test_units_and_profile_count_follow_the_rules() -> None:
    only_a = replace(RULES, allowed_units=frozenset({RateUnit.A}), max_profiles=2)
    w = profile(1, sched=schedule((0, 11000.0), unit=RateUnit.W, start=T0))
    _, verdict = install(ProfileSet(), w, at=T0, transactions=NO_TX, rules=only_a)
    assert verdict.status is ProfileStatus.REJECTED and "unit" in verdict.reason
    ps = ProfileSet()
    for i in range(2):
        ps, verdict = install(ps, profile(i, level=i), at=T0, transactions=NO_TX, rules=only_a)
        assert verdict.accepted
    _, verdict = install(ps, profile(5, level=5), at=T0, transactions=NO_TX, rules=only_a)
    assert "MaxChargingProfilesInstalled" in verdict.reason
    # a replacement does not count twice
    _, verdict = install(ps, profile(6, level=1), at=T0, transactions=NO_TX, rules=only_a)
    assert verdict.accepted


def test_tx_profiles_end_with_their_transaction() -> None:
    ps = installed(
        profile(1, purpose=Purpose.TX),
        profile(2, connector=2, purpose=Purpose.TX),
        profile(3),
        tx={1: TX1[1], 2: ActiveTransaction(transaction_id=43, started_at=T0)},
    )
    left = end_transaction(ps, 1)
    assert sorted(p.charging_profile_id for p in left) == [2, 3]


# -- clearing -------------------------------------------------------------------------------


def _three() -> ProfileSet:
    return installed(
        profile(1, connector=0, purpose=Purpose.CHARGE_POINT_MAX, level=1),
        profile(2, connector=0, level=1),
        profile(3, connector=1, level=2),
    )


@pytest.mark.parametrize(
    ("criteria", "left", "status"),
    [
        ({"charging_profile_id": 2}, [1, 3], ClearStatus.ACCEPTED),
        ({"charging_profile_id": 9}, [1, 2, 3], ClearStatus.UNKNOWN),
        # an id names one profile: the other criteria do not narrow it
        ({"charging_profile_id": 3, "connector_id": 0}, [1, 2], ClearStatus.ACCEPTED),
        ({"connector_id": 0}, [3], ClearStatus.ACCEPTED),
        ({"purpose": Purpose.TX_DEFAULT}, [1], ClearStatus.ACCEPTED),
        ({"stack_level": 1}, [3], ClearStatus.ACCEPTED),
        ({"connector_id": 0, "purpose": Purpose.TX_DEFAULT}, [1, 3], ClearStatus.ACCEPTED),
        ({"connector_id": 1, "stack_level": 1}, [1, 2, 3], ClearStatus.UNKNOWN),
        ({"connector_id": 2}, [1, 2, 3], ClearStatus.UNKNOWN),
        ({}, [], ClearStatus.ACCEPTED),
    ],
)
def test_clear_charging_profile(
    criteria: dict[str, Any], left: list[int], status: ClearStatus
) -> None:
    ps, got = clear(_three(), **criteria)
    assert got is status
    assert sorted(p.charging_profile_id for p in ps) == left


def test_clear_on_an_empty_set_is_unknown_and_payloads_work() -> None:
    assert clear(ProfileSet())[1] is ClearStatus.UNKNOWN
    ps, got = clear_from_ocpp(
        _three(), {"connectorId": 0, "chargingProfilePurpose": "TxDefaultProfile"}
    )
    assert got is ClearStatus.ACCEPTED and sorted(p.charging_profile_id for p in ps) == [1, 3]
    with pytest.raises(ProfileError, match="chargingProfilePurpose"):
        clear_from_ocpp(ProfileSet(), {"chargingProfilePurpose": "Everything"})


# -- evaluation -----------------------------------------------------------------------------


def test_the_spec_example_limits_power_between_8_and_20_every_day() -> None:
    ps = installed(from_ocpp(SPEC_EXAMPLE))
    w = 230.0 * 3
    for day in (0, 1, 400):
        base = day * 86400
        assert amps(ps, 1, at(base + 8 * H - 1)) == round(11000 / w, 6)
        assert amps(ps, 2, at(base + 8 * H)) == round(6000 / w, 6)
        assert amps(ps, 1, at(base + 20 * H - 0.001)) == round(6000 / w, 6)
        assert amps(ps, 1, at(base + 20 * H)) == round(11000 / w, 6)
    # a TxDefaultProfile bears on connectors, not on the charge point as a whole
    assert amps(ps, 0, at(9 * H)) is None


def test_daily_recurrence_is_real_time_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 28, 0, 0, tzinfo=berlin)  # the night before summer time
    p = profile(1, kind=Kind.RECURRING, recurrency_kind=Recurrency.DAILY,
                sched=schedule((0, 6.0), (8 * H, 16.0), start=start))  # fmt: skip
    ps = installed(p)
    # 24 h of real time after the start is 01:00 local on the 29th (the clock jumped)
    assert amps(ps, 1, datetime(2026, 3, 29, 8, 59, tzinfo=berlin)) == 6.0
    assert amps(ps, 1, datetime(2026, 3, 29, 9, 0, tzinfo=berlin)) == 16.0


def test_a_higher_stack_level_wins_while_it_covers_then_the_lower_one_returns() -> None:
    base = profile(1, sched=schedule((0, 32.0), start=T0))
    boost = profile(2, level=1, sched=schedule((0, 10.0), duration_s=2 * H, start=at(H)))
    ps = installed(base, boost)
    assert amps(ps, 1, at(H - 1)) == 32.0  # before the higher one starts
    assert amps(ps, 1, at(H)) == 10.0
    assert amps(ps, 1, at(3 * H - 1)) == 10.0
    assert amps(ps, 1, at(3 * H)) == 32.0  # past its duration


def test_a_higher_level_may_raise_what_a_lower_one_allowed() -> None:
    ps = installed(
        profile(1, sched=schedule((0, 6.0), start=T0)),
        profile(2, level=1, sched=schedule((0, 20.0), start=T0)),
    )
    assert amps(ps, 1, at(10)) == 20.0


def test_validity_bounds_the_profile() -> None:
    base = profile(1, sched=schedule((0, 32.0), start=T0))
    later = profile(2, level=1, valid_from=at(H), valid_to=at(2 * H),
                    sched=schedule((0, 8.0), start=T0))  # fmt: skip
    ps = installed(base, later)
    assert [amps(ps, 1, at(s)) for s in (H - 1, H, 2 * H - 1, 2 * H)] == [32.0, 8.0, 8.0, 32.0]


def test_the_last_period_holds_without_a_duration_and_a_schedule_ends_with_it() -> None:
    forever = installed(profile(1, sched=schedule((0, 6.0), (600, 12.0), start=T0)))
    assert amps(forever, 1, at(10 * 86400)) == 12.0
    short = installed(profile(1, sched=schedule((0, 6.0), (600, 12.0), duration_s=300, start=T0)))
    assert amps(short, 1, at(299)) == 6.0
    assert amps(short, 1, at(300)) is None  # periods past the duration are not executed
    assert amps(short, 1, at(-1)) is None  # before the start


def test_recurring_periods_past_the_recurrence_are_not_executed() -> None:
    p = profile(1, kind=Kind.RECURRING, recurrency_kind=Recurrency.DAILY,
                sched=schedule((0, 6.0), (90000, 30.0), duration_s=200000, start=T0))  # fmt: skip
    ps = installed(p)
    assert amps(ps, 1, at(86399)) == 6.0
    assert amps(ps, 1, at(86400 + 3600 + 1)) == 6.0  # day 2 starts again at its first period


def test_a_recurring_schedule_shorter_than_its_day_falls_back() -> None:
    base = profile(1, sched=schedule((0, 32.0), start=T0))
    night = profile(2, level=1, kind=Kind.RECURRING, recurrency_kind=Recurrency.DAILY,
                    sched=schedule((0, 10.0), duration_s=6 * H, start=at(22 * H)))  # fmt: skip
    ps = installed(base, night)
    assert amps(ps, 1, at(21 * H)) == 32.0  # before its first occurrence
    assert amps(ps, 1, at(23 * H)) == 10.0
    assert amps(ps, 1, at(86400 + 3 * H)) == 10.0
    assert amps(ps, 1, at(86400 + 4 * H)) == 32.0
    assert amps(ps, 1, at(5 * 86400 + 23 * H)) == 10.0


def test_weekly_recurrence() -> None:
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    weekend = profile(1, kind=Kind.RECURRING, recurrency_kind=Recurrency.WEEKLY,
                      sched=schedule((0, 8.0), (5 * 86400, 32.0), start=monday))  # fmt: skip
    ps = installed(weekend)
    assert amps(ps, 1, datetime(2026, 12, 4, 23, tzinfo=UTC)) == 8.0  # Friday
    assert amps(ps, 1, datetime(2026, 12, 5, 1, tzinfo=UTC)) == 32.0  # Saturday
    assert amps(ps, 1, datetime(2026, 12, 7, 1, tzinfo=UTC)) == 8.0  # Monday again


def test_tx_profile_overrules_tx_default_for_its_transaction_only() -> None:
    tx = {1: ActiveTransaction(transaction_id=42, started_at=at(600))}
    default = profile(1, connector=0, level=5, sched=schedule((0, 10.0), start=T0))
    tx_profile = profile(2, purpose=Purpose.TX, transaction_id=42, kind=Kind.RELATIVE,
                         sched=schedule((0, 16.0), (H, 24.0)))  # fmt: skip
    ps = installed(default, tx_profile, tx=tx)
    # overrules even at a lower stack level and a higher limit: purposes do not stack together
    assert amps(ps, 1, at(700), tx) == 16.0
    assert amps(ps, 1, at(600 + H), tx) == 24.0  # relative to the transaction's start
    assert amps(ps, 2, at(700), tx) == 10.0  # the other connector keeps the default
    assert amps(ps, 1, at(700)) == 10.0  # without the transaction, the default again
    other = {1: ActiveTransaction(transaction_id=43, started_at=at(600))}
    assert amps(ps, 1, at(700), other) == 10.0  # another transaction's profile does not apply


def test_a_connectors_own_tx_default_beats_connector_0_at_the_same_level() -> None:
    everywhere = profile(1, connector=0, sched=schedule((0, 10.0), start=T0))
    mine = profile(2, connector=1, sched=schedule((0, 20.0), start=T0))
    ps = installed(everywhere, mine)
    assert amps(ps, 1, at(1)) == 20.0
    assert amps(ps, 2, at(1)) == 10.0
    # stack levels still rule: a higher level on connector 0 prevails over a lower own one
    holiday = profile(3, connector=0, level=1, sched=schedule((0, 6.0), duration_s=H, start=T0))
    ps = installed(everywhere, mine, holiday)
    assert amps(ps, 1, at(1)) == 6.0
    assert amps(ps, 1, at(H)) == 20.0


def test_charge_point_max_caps_every_connector_and_is_connector_0s_answer() -> None:
    cp_max = profile(1, connector=0, purpose=Purpose.CHARGE_POINT_MAX,
                     sched=schedule((0, 12.0), start=T0))  # fmt: skip
    ps = installed(cp_max, profile(2, sched=schedule((0, 16.0), start=T0)))
    assert amps(ps, 0, at(1)) == 12.0
    assert amps(ps, 1, at(1)) == 12.0  # min(TxDefault 16, max 12)
    assert amps(ps, 2, at(1)) == 12.0  # no TxDefault there: the max alone
    lim = limit_at(ps, 1, at(1), transactions=NO_TX, nominal_voltage_v=V)
    assert lim is not None and lim.profile.charging_profile_id == 1


def test_watts_convert_over_the_periods_phases() -> None:
    one_phase = profile(1, sched=schedule((0, 3680.0, 1), unit=RateUnit.W, start=T0))
    ps = installed(one_phase)
    lim = limit_at(ps, 1, at(1), transactions=NO_TX, nominal_voltage_v=V)
    assert lim is not None and lim.current_a == pytest.approx(16.0) and lim.number_phases == 1
    assert lim.power_w(V) == pytest.approx(3680.0)


def test_schedules_without_a_start_of_their_own() -> None:
    tx = {1: ActiveTransaction(transaction_id=42, started_at=at(1000))}
    # Absolute without startSchedule: "relative to start of charging" for Tx/TxDefault
    soft_start = profile(1, sched=schedule((0, 8.0), (600, 16.0)))
    ps = installed(soft_start)
    assert amps(ps, 1, at(1500), tx) == 8.0
    assert amps(ps, 1, at(1600), tx) == 16.0
    # no transaction: as if one started at the instant asked about (or idle_start)
    assert amps(ps, 1, at(50)) == 8.0
    lim = limit_at(ps, 1, at(650), transactions=NO_TX, nominal_voltage_v=V, idle_start=at(0))
    assert lim is not None and lim.current_a == 16.0
    # a ChargePointMaxProfile belongs to no transaction: from validFrom, else its installation
    cp_max = profile(2, connector=0, purpose=Purpose.CHARGE_POINT_MAX,
                     sched=schedule((0, 10.0), (600, 20.0)))  # fmt: skip
    ps = installed(cp_max, when=at(100))
    assert [amps(ps, 0, at(s)) for s in (99, 100, 699, 700)] == [None, 10.0, 10.0, 20.0]
    ps = installed(replace(cp_max, valid_from=at(50)), when=at(100))
    assert [amps(ps, 0, at(s)) for s in (49, 50, 649, 650)] == [None, 10.0, 10.0, 20.0]


def test_evaluation_wants_aware_times() -> None:
    with pytest.raises(ValueError, match="aware"):
        limit_at(ProfileSet(), 1, datetime(2026, 1, 1), transactions=NO_TX, nominal_voltage_v=V)  # noqa: DTZ001


# -- composite schedules --------------------------------------------------------------------


def test_composite_of_the_spec_example_in_watts_and_amps() -> None:
    ps = installed(from_ocpp(SPEC_EXAMPLE))
    start = at(6 * H + 0.4)  # fractions of the request time are dropped
    cs = composite_schedule(ps, 1, start, 86400, transactions=NO_TX, nominal_voltage_v=V,
                            ceiling_a=32.0, rate_unit=RateUnit.W)  # fmt: skip
    assert cs.schedule_start == at(6 * H)
    assert [(p.start_period_s, p.limit) for p in cs.periods] == [
        (0, 11000.0),
        (2 * H, 6000.0),
        (14 * H, 11000.0),
    ]
    ocpp = cs.to_ocpp()
    assert ocpp["status"] == "Accepted" and ocpp["scheduleStart"] == "2026-11-29T06:00:00Z"
    assert ocpp["chargingSchedule"]["chargingSchedulePeriod"][1] == {
        "startPeriod": 7200,
        "limit": 6000,
        "numberPhases": 3,
    }
    cs_a = composite_schedule(ps, 1, start, 86400, transactions=NO_TX, nominal_voltage_v=V,
                              ceiling_a=32.0)  # fmt: skip
    # 11000 W / (230 V x 3) = 15.94 A, 6000 W = 8.69 A: rounded down to 0.1 A
    assert [(p.start_period_s, p.limit) for p in cs_a.periods] == [
        (0, 15.9),
        (2 * H, 8.6),
        (14 * H, 15.9),
    ]


def test_composite_merges_equal_neighbours_and_applies_every_cap() -> None:
    ps = installed(
        profile(1, sched=schedule((0, 16.0), (600, 16.0), (1200, 20.0), start=T0)),
        profile(2, connector=0, purpose=Purpose.CHARGE_POINT_MAX,
                sched=schedule((0, 18.0), start=T0)),
    )  # fmt: skip

    def every_other_half_hour(when: datetime) -> tuple[float | None, datetime | None]:
        slot = int((when - T0).total_seconds()) // 1800
        nxt = T0 + timedelta(seconds=(slot + 1) * 1800)
        return (10.0 if slot % 2 else None), nxt

    caps: list[Cap | CapFunction] = [
        Cap(current_a=12.0, starts_at=at(2 * H), ends_at=at(3 * H)),
        every_other_half_hour,
    ]
    cs = composite_schedule(ps, 1, T0, 4 * H, transactions=NO_TX, nominal_voltage_v=V,
                            ceiling_a=32.0, caps=caps)  # fmt: skip
    assert [(p.start_period_s, p.limit) for p in cs.periods] == [
        (0, 16.0),  # TxDefault 16 (its two 16 A periods are one)
        (1200, 18.0),  # TxDefault 20, max 18
        (1800, 10.0),  # the cap function
        (3600, 18.0),
        (5400, 10.0),
        (7200, 12.0),  # the interval cap
        (9000, 10.0),
        (10800, 18.0),
        (12600, 10.0),
    ]
    # the whole charge point: only the ChargePointMaxProfile and the ceiling
    cp = composite_schedule(ps, 0, T0, 4 * H, transactions=NO_TX, nominal_voltage_v=V,
                            ceiling_a=16.0)  # fmt: skip
    assert [(p.start_period_s, p.limit) for p in cp.periods] == [(0, 16.0)]


def test_composite_without_profiles_is_the_ceiling() -> None:
    cs = composite_schedule(ProfileSet(), 2, T0, 600, transactions=NO_TX, nominal_voltage_v=V,
                            ceiling_a=32.0, rate_unit=RateUnit.W, default_phases=1)  # fmt: skip
    assert [(p.start_period_s, p.limit, p.number_phases) for p in cs.periods] == [(0, 7360.0, 1)]


def test_a_breakpoint_inside_a_second_gives_that_second_the_lower_value() -> None:
    tx = {1: ActiveTransaction(transaction_id=1, started_at=at(0.5))}
    rel = profile(1, purpose=Purpose.TX, kind=Kind.RELATIVE,
                  sched=schedule((0, 6.0), (10, 20.0), (20, 8.0)))  # fmt: skip
    ps = installed(rel, tx=tx)
    cs = composite_schedule(ps, 1, T0, 60, transactions=tx, nominal_voltage_v=V, ceiling_a=32.0)
    # 6 A from 0.5 s, 20 A from 10.5 s, 8 A from 20.5 s; nothing before 0.5 s
    assert [(p.start_period_s, p.limit) for p in cs.periods] == [
        (0, 6.0),
        (11, 20.0),
        (20, 8.0),
    ]


def test_composite_duration_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="duration"):
        composite_schedule(ProfileSet(), 1, T0, -1, transactions=NO_TX, nominal_voltage_v=V,
                           ceiling_a=32.0)  # fmt: skip


def test_caps_from_slots_take_the_scopes_asked_for() -> None:
    slots = [
        LimitSlot(id="a", source=SlotSource.CLOUD, current_a=20.0),
        LimitSlot(id="b", source=SlotSource.DEMAND_RESPONSE, power_w=2000.0, floor_w=4140.0,
                  starts_at=at(60)),
        LimitSlot(id="c", source=SlotSource.OVERRIDE, scope="connector:cp2", current_a=6.0),
    ]  # fmt: skip
    caps = caps_from_slots(slots, scopes={"site", "connector:cp1"}, nominal_voltage_v=V)
    assert [(c.current_a, c.starts_at, c.note) for c in caps] == [
        (20.0, None, "cloud:a"),
        (pytest.approx(6.0), at(60), "demand_response:b"),
    ]


# -- limit slots and the engine -------------------------------------------------------------


def test_profile_slots_carry_scope_value_and_the_current_pieces_bounds() -> None:
    tx = {1: ActiveTransaction(transaction_id=42, started_at=at(600))}
    ps = installed(
        profile(1, connector=0, purpose=Purpose.CHARGE_POINT_MAX,
                sched=schedule((0, 40.0), (8 * H, 25.0), start=T0)),
        profile(2, connector=0, sched=schedule((0, 11000.0), unit=RateUnit.W, start=T0)),
        profile(3, purpose=Purpose.TX, kind=Kind.RELATIVE, sched=schedule((0, 16.0), (H, 10.0))),
        tx=tx,
    )  # fmt: skip
    slots = profile_slots(ps, at(H), transactions=tx, connector_ids={1: "cp1", 2: "cp2"})
    by_id = {s.id: s for s in slots}
    assert set(by_id) == {"max", "connector-1", "connector-2"}
    assert all(s.source is SlotSource.OCPP for s in slots)
    site_slot = by_id["max"]
    assert (site_slot.scope, site_slot.current_a, site_slot.starts_at, site_slot.ends_at) == (
        "site", 40.0, T0, at(8 * H),
    )  # fmt: skip
    tx_slot = by_id["connector-1"]
    assert (tx_slot.scope, tx_slot.current_a, tx_slot.starts_at, tx_slot.ends_at) == (
        "connector:cp1", 16.0, at(600), at(600 + H),
    )  # fmt: skip
    default_slot = by_id["connector-2"]
    assert (default_slot.scope, default_slot.power_w, default_slot.current_a) == (
        "connector:cp2", 11000.0, None,
    )  # fmt: skip
    assert "TxProfile 3" in tx_slot.note
    # the slots follow the wall's time zone
    berlin = at(H).astimezone(ZoneInfo("Europe/Berlin"))
    (again, *_) = profile_slots(ps, berlin, transactions=tx, connector_ids={})
    assert again.ends_at is not None and again.ends_at.tzinfo == berlin.tzinfo


def test_next_change_says_when_to_look_again() -> None:
    later = profile(1, valid_from=at(2 * H), sched=schedule((0, 10.0), (H, 12.0), start=T0))
    ps = installed(later)
    assert profile_slots(ps, at(H), transactions=NO_TX, connector_ids={1: "cp1"}) == ()
    assert next_change(ps, at(H), transactions=NO_TX, connector_ids={1}) == at(2 * H)
    assert next_change(ps, at(2 * H), transactions=NO_TX, connector_ids={1}) is None
    assert next_change(ProfileSet(), at(0), transactions=NO_TX, connector_ids={1, 2}) is None


def _site_with_max(limit_a: float) -> tuple[float, float, dict[str, float | None]]:
    s = site([evse("a", min_current_a=5.0), evse("b", min_current_a=5.0)], rating_a=32)
    cp_max = profile(1, connector=0, purpose=Purpose.CHARGE_POINT_MAX,
                     sched=schedule((0, limit_a), start=WALL - timedelta(hours=1)))  # fmt: skip
    ps = installed(cp_max, when=WALL)
    slots = profile_slots(ps, WALL, transactions=NO_TX, connector_ids={1: "a", 2: "b"})
    sn = snap(10, (0.0, 0.0, 0.0), {"a": ("C", (0.0, 0.0, 0.0)), "b": ("C", (0.0, 0.0, 0.0))})
    plain = allocate(s, sn)
    limited = allocate(s, replace(sn, slots=slots))
    total = sum(x.target_a or 0.0 for x in limited.limits.values())
    base = sum(x.target_a or 0.0 for x in plain.limits.values())
    return base, total, {k: v.target_a for k, v in limited.limits.items()}


def test_a_charge_point_max_above_the_site_rating_changes_nothing() -> None:
    base, total, targets = _site_with_max(100.0)
    assert base == total == 32.0
    assert targets == {"a": 16.0, "b": 16.0}


def test_a_charge_point_max_of_10a_holds_the_site_ev_total_to_10a_per_phase() -> None:
    base, total, targets = _site_with_max(10.0)
    assert base == 32.0
    assert total == pytest.approx(10.0)
    assert targets == {"a": 5.0, "b": 5.0}


# -- properties -----------------------------------------------------------------------------

DAY = 86400
limits_a = st.integers(0, 630).map(lambda n: n / 10)
limits_w = st.integers(0, 440_000).map(lambda n: n / 10)


@st.composite
def random_schedules(draw: st.DrawFn, recurring: bool) -> ChargingSchedule:
    unit = draw(st.sampled_from(RateUnit))
    n = draw(st.integers(1, 4))
    gaps = draw(st.lists(st.integers(1, 6 * H), min_size=n - 1, max_size=n - 1))
    starts = [0]
    for g in gaps:
        starts.append(starts[-1] + g)
    lim = limits_a if unit is RateUnit.A else limits_w
    periods = tuple(
        SchedulePeriod(start_period_s=s, limit=draw(lim), number_phases=draw(st.integers(1, 3)))
        for s in starts
    )
    start = None
    if recurring or draw(st.booleans()):
        start = at(draw(st.integers(-2 * DAY, 2 * DAY)))
    return ChargingSchedule(
        rate_unit=unit,
        periods=periods,
        duration_s=draw(st.none() | st.integers(60, 2 * DAY)),
        start_schedule=start,
    )


@st.composite
def random_profiles(draw: st.DrawFn, pid: int) -> ChargingProfile:
    purpose = draw(st.sampled_from(Purpose))
    connector = {
        Purpose.CHARGE_POINT_MAX: 0,
        Purpose.TX_DEFAULT: draw(st.integers(0, 2)),
        Purpose.TX: draw(st.integers(1, 2)),
    }[purpose]
    kind = draw(st.sampled_from(Kind))
    valid_from = draw(st.none() | st.integers(-DAY, 2 * DAY).map(at))
    valid_to = None
    if draw(st.booleans()):
        valid_to = at(draw(st.integers(-DAY, 3 * DAY)))
        if valid_from is not None and valid_to <= valid_from:
            valid_to = valid_from + timedelta(seconds=draw(st.integers(1, DAY)))
    return ChargingProfile(
        connector_id=connector,
        charging_profile_id=pid,
        stack_level=draw(st.integers(0, 3)),
        purpose=purpose,
        kind=kind,
        transaction_id=draw(st.none() | st.integers(1, 3)) if purpose is Purpose.TX else None,
        recurrency_kind=draw(st.sampled_from(Recurrency)) if kind is Kind.RECURRING else None,
        schedule=draw(random_schedules(kind is Kind.RECURRING)),
        valid_from=valid_from,
        valid_to=valid_to,
    )


@st.composite
def profile_sets(draw: st.DrawFn) -> tuple[ProfileSet, dict[int, ActiveTransaction]]:
    tx: dict[int, ActiveTransaction] = {}
    for c in (1, 2):
        if draw(st.integers(0, 3)):  # mostly a transaction: TxProfiles need one
            tx[c] = ActiveTransaction(
                transaction_id=draw(st.none() | st.integers(1, 3)),
                started_at=at(draw(st.integers(-DAY, DAY))),
            )
    ps = ProfileSet()
    for pid in range(draw(st.integers(0, 6))):
        p = draw(random_profiles(pid))
        ps, _ = install(ps, p, at=at(draw(st.integers(-DAY, DAY))), transactions=tx, rules=RULES)
    return ps, tx


@st.composite
def cap_lists(draw: st.DrawFn) -> list[Cap | CapFunction]:
    caps: list[Cap | CapFunction] = []
    for _ in range(draw(st.integers(0, 3))):
        lo = draw(st.none() | st.integers(-DAY, 3 * DAY))
        hi = draw(st.none() | st.integers(-DAY, 3 * DAY))
        caps.append(
            Cap(
                current_a=draw(limits_a),
                starts_at=None if lo is None else at(lo),
                ends_at=None if hi is None else at(hi),
            )
        )
    if draw(st.booleans()):
        step = draw(st.integers(600, 4 * H))
        low, high = draw(limits_a), draw(limits_a)

        def steps(when: datetime) -> tuple[float | None, datetime | None]:
            k = math.floor((when - T0).total_seconds() / step)
            return (low if k % 2 else high), T0 + timedelta(seconds=(k + 1) * step)

        caps.append(steps)
    return caps


def _cap_at(caps: list[Cap | CapFunction], when: datetime) -> float:
    out = math.inf
    for cap in caps:
        if isinstance(cap, Cap):
            if (cap.starts_at is None or when >= cap.starts_at) and (
                cap.ends_at is None or when < cap.ends_at
            ):
                out = min(out, cap.current_a)
        else:
            value, _ = cap(when)
            if value is not None:
                out = min(out, value)
    return out


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    case=profile_sets(),
    caps=cap_lists(),
    connector=st.integers(0, 2),
    start_s=st.integers(-DAY, 2 * DAY),
    duration_s=st.integers(1, 2 * DAY),
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=12),
)
def test_composite_equals_the_evaluation_at_every_instant(
    *,
    case: tuple[ProfileSet, dict[int, ActiveTransaction]],
    caps: list[Cap | CapFunction],
    connector: int,
    start_s: int,
    duration_s: int,
    probes: list[float],
) -> None:
    ps, tx = case
    start = at(start_s)
    cs = composite_schedule(ps, connector, start, duration_s, transactions=tx,
                            nominal_voltage_v=V, ceiling_a=32.0, caps=caps)  # fmt: skip
    cs_w = composite_schedule(ps, connector, start, duration_s, transactions=tx,
                              nominal_voltage_v=V, ceiling_a=32.0, caps=caps,
                              rate_unit=RateUnit.W)  # fmt: skip
    assert cs.periods[0].start_period_s == 0
    assert all(a.start_period_s < b.start_period_s for a, b in pairwise(cs.periods))
    # instants at period starts (and just before them) and at random points
    offsets = [p.start_period_s for p in cs.periods] + [
        p.start_period_s - 1e-6 for p in cs.periods[1:]
    ]
    offsets += [f * duration_s for f in probes]
    for off in offsets:
        when = start + timedelta(microseconds=math.floor(off * 1e6))
        lim = limit_at(ps, connector, when, transactions=tx, nominal_voltage_v=V,
                       idle_start=start)  # fmt: skip
        expected = min(32.0, _cap_at(caps, when), math.inf if lim is None else lim.current_a)
        assert cs.period_at(when).limit == floor_tenth(expected), off
        phases = 3 if lim is None else lim.number_phases
        assert cs_w.period_at(when).limit == floor_tenth(expected * V * phases), off
        assert cs_w.period_at(when).number_phases == phases
        assert cs.period_at(when).limit <= _cap_at(caps, when)  # never above any cap


@FAST
@given(case=profile_sets(), extra=random_profiles(pid=1000), connector=st.integers(0, 2),
       start_s=st.integers(-DAY, 2 * DAY), installed_s=st.integers(-DAY, DAY))  # fmt: skip
def test_clearing_what_was_installed_restores_the_answer(
    case: tuple[ProfileSet, dict[int, ActiveTransaction]],
    extra: ChargingProfile,
    connector: int,
    start_s: int,
    installed_s: int,
) -> None:
    ps, tx = case
    after, verdict = install(ps, extra, at=at(installed_s), transactions=tx, rules=RULES)
    assume(verdict.accepted and len(after) == len(ps) + 1)  # nothing replaced

    def answer(profiles: ProfileSet) -> Any:
        return composite_schedule(profiles, connector, at(start_s), DAY, transactions=tx,
                                  nominal_voltage_v=V, ceiling_a=63.0).periods  # fmt: skip

    cleared, status = clear(after, charging_profile_id=1000)
    assert status is ClearStatus.ACCEPTED
    assert cleared == ps
    assert answer(cleared) == answer(ps)


@FAST
@given(
    tenths=st.integers(0, 1_000_000),
    phases=st.integers(1, 3),
    volts=st.sampled_from([110.0, 120.0, 220.0, 230.0, 240.0, 277.0]),
)
def test_watts_to_amps_to_watts_round_trips(tenths: int, phases: int, volts: float) -> None:
    watts = tenths / 10
    p = profile(1, sched=schedule((0, watts, phases), unit=RateUnit.W, start=T0))
    ps = installed(p)
    lim = limit_at(ps, 1, at(5), transactions=NO_TX, nominal_voltage_v=volts)
    assert lim is not None
    assert lim.power_w(volts) == pytest.approx(watts, rel=1e-12, abs=1e-9)
    cs = composite_schedule(ps, 1, T0, 60, transactions=NO_TX, nominal_voltage_v=volts,
                            ceiling_a=1e9, rate_unit=RateUnit.W)  # fmt: skip
    assert [(q.limit, q.number_phases) for q in cs.periods] == [(watts, phases)]


@FAST
@given(case=profile_sets())
def test_ocpp_json_round_trips(case: tuple[ProfileSet, dict[int, ActiveTransaction]]) -> None:
    ps, _ = case
    for p in ps:
        assert from_ocpp(to_ocpp(p)) == replace(p, installed_at=None)
        assert from_record(to_record(p)) == p  # what the adapter persists


@FAST
@given(
    case=profile_sets(),
    connector=st.integers(0, 2),
    start_us=st.integers(-DAY * 10**6, DAY * 10**6),
    shift_us=st.integers(1, 999_999),
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=8),
)
def test_with_fractional_times_the_composite_is_never_above_the_evaluation(
    case: tuple[ProfileSet, dict[int, ActiveTransaction]],
    connector: int,
    start_us: int,
    shift_us: int,
    probes: list[float],
) -> None:
    ps, tx = case
    # transactions that start within a second put breakpoints inside seconds
    tx = {c: replace(t, started_at=t.started_at + timedelta(microseconds=shift_us))
          for c, t in tx.items()}  # fmt: skip
    start = T0 + timedelta(microseconds=start_us)
    cs = composite_schedule(ps, connector, start, H, transactions=tx, nominal_voltage_v=V,
                            ceiling_a=32.0)  # fmt: skip
    cs_w = composite_schedule(ps, connector, start, H, transactions=tx, nominal_voltage_v=V,
                              ceiling_a=32.0, rate_unit=RateUnit.W)  # fmt: skip
    for f in probes:
        when = cs.schedule_start + timedelta(microseconds=math.floor(f * H * 1e6))
        lim = limit_at(ps, connector, when, transactions=tx, nominal_voltage_v=V,
                       idle_start=cs.schedule_start)  # fmt: skip
        allowed = min(32.0, math.inf if lim is None else lim.current_a)
        assert cs.period_at(when).limit <= allowed + 1e-9
        phases = 3 if lim is None else lim.number_phases
        assert cs_w.period_at(when).limit <= allowed * V * phases + 1e-6


def _between(lo: datetime, hi: datetime, f: float) -> datetime:
    """A point of [lo, hi) (whole microseconds: timedelta * float rounds, up to ``hi``)."""
    return lo + timedelta(microseconds=math.floor((hi - lo) / timedelta(microseconds=1) * f))


def _slot_values(
    ps: ProfileSet, when: datetime, tx: dict[int, ActiveTransaction]
) -> dict[str, tuple[float | None, float | None, str, str]]:
    slots = profile_slots(ps, when, transactions=tx, connector_ids={1: "cp1", 2: "cp2"})
    return {s.id: (s.current_a, s.power_w, s.scope, s.note) for s in slots}


@FAST
@given(
    case=profile_sets(),
    t_s=st.integers(-DAY, 3 * DAY),
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=6),
)
def test_slots_hold_for_their_piece_and_until_the_next_change(
    case: tuple[ProfileSet, dict[int, ActiveTransaction]], t_s: int, probes: list[float]
) -> None:
    ps, tx = case
    now = at(t_s)
    here = _slot_values(ps, now, tx)
    wide = timedelta(days=3)
    for slot in profile_slots(ps, now, transactions=tx, connector_ids={1: "cp1", 2: "cp2"}):
        assert slot.active(now)
        lo = slot.starts_at or now - wide
        hi = slot.ends_at or now + wide
        for f in probes:
            assert _slot_values(ps, _between(lo, hi, f), tx)[slot.id] == here[slot.id]
    nxt = next_change(ps, now, transactions=tx, connector_ids={1, 2}) or now + wide
    assert nxt > now
    for f in probes:
        assert _slot_values(ps, _between(now, nxt, f), tx) == here


def _oracle_amps(
    ps: ProfileSet,
    connector: int,
    when: datetime,
    tx: dict[int, ActiveTransaction],
    idle: datetime,
) -> float | None:
    """The precedence rules written out plainly (a second reading of docs/ocpp.md)."""
    active = tx.get(connector) if connector else None

    def start_of(p: ChargingProfile) -> datetime:
        if p.kind is not Kind.RELATIVE and p.schedule.start_schedule is not None:
            return p.schedule.start_schedule
        if p.purpose is Purpose.CHARGE_POINT_MAX:
            return p.valid_from or p.installed_at or idle
        return active.started_at if active is not None else idle

    def period(p: ChargingProfile) -> SchedulePeriod | None:
        if p.valid_from is not None and when < p.valid_from:
            return None
        if p.valid_to is not None and when >= p.valid_to:
            return None
        start = start_of(p)
        if when < start:
            return None
        elapsed = when - start
        end = timedelta(seconds=p.schedule.duration_s) if p.schedule.duration_s else None
        if p.kind is Kind.RECURRING:
            day = timedelta(days=1 if p.recurrency_kind is Recurrency.DAILY else 7)
            while elapsed >= day:
                elapsed -= day
            end = min(end, day) if end is not None else day
        if end is not None and elapsed >= end:
            return None
        return [q for q in p.schedule.periods if timedelta(seconds=q.start_period_s) <= elapsed][-1]

    def to_amps(p: ChargingProfile, q: SchedulePeriod) -> float:
        return q.limit if p.schedule.rate_unit is RateUnit.A else q.limit / (V * q.number_phases)

    def best(candidates: list[ChargingProfile]) -> float | None:
        live = [(p, q) for p in candidates if (q := period(p)) is not None]
        if not live:
            return None
        p, q = max(live, key=lambda pq: (pq[0].stack_level, pq[0].connector_id != 0))
        return to_amps(p, q)

    cp_max = best([p for p in ps if p.purpose is Purpose.CHARGE_POINT_MAX])
    if connector == 0:
        return cp_max
    own = None
    if active is not None:
        own = best([
            p for p in ps
            if p.purpose is Purpose.TX and p.connector_id == connector
            and (None in (p.transaction_id, active.transaction_id)
                 or p.transaction_id == active.transaction_id)
        ])  # fmt: skip
    if own is None:
        own = best([
            p for p in ps
            if p.purpose is Purpose.TX_DEFAULT and p.connector_id in (0, connector)
        ])  # fmt: skip
    values = [v for v in (own, cp_max) if v is not None]
    return min(values) if values else None


@FAST
@given(
    case=profile_sets(),
    connector=st.integers(0, 2),
    t_s=st.integers(-DAY, 3 * DAY),
    idle_s=st.integers(-DAY, 3 * DAY),
)
def test_limit_at_agrees_with_the_rules_written_out(
    case: tuple[ProfileSet, dict[int, ActiveTransaction]], connector: int, t_s: int, idle_s: int
) -> None:
    ps, tx = case
    lim = limit_at(ps, connector, at(t_s), transactions=tx, nominal_voltage_v=V,
                   idle_start=at(idle_s))  # fmt: skip
    expected = _oracle_amps(ps, connector, at(t_s), tx, at(idle_s))
    if expected is None:
        assert lim is None
    else:
        assert lim is not None and lim.current_a == pytest.approx(expected, rel=1e-12)
