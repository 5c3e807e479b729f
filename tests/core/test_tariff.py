"""Tests of controller.core.tariff: exact cost in cents, bands, idle, resets, the stop rule.

Every figure is worked out by hand in a comment next to it (prices include VAT, 1 EUR = 100
cents). Time is an argument: the samples carry aware datetimes in Europe/Berlin.
"""

from __future__ import annotations

import itertools
from datetime import datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.tariff import (
    DEFAULT_BAND,
    DEFAULT_PREAUTH_CENTS,
    Tariff,
    TouPrice,
    Usage,
    cost,
    must_stop,
    preauth_amount_cents,
    price_display,
    price_text,
    round_half_up,
)

BERLIN = ZoneInfo("Europe/Berlin")
DAILY = frozenset(range(1, 8))
D = Decimal


def at(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def tariff(**changes: object) -> Tariff:
    values: dict[str, object] = {
        "id": "std",
        "currency": "EUR",
        "vat_rate_pct": D("19"),
        "price_per_kwh": D("0.39"),
    }
    values.update(changes)
    return Tariff(**values)  # type: ignore[arg-type]


NIGHT = TouPrice(name="night", days=DAILY, start=time(22), end=time(6), price_per_kwh=D("0.29"))


def energy_session(t: Tariff, wh: int, begin: datetime, end: datetime) -> Usage:
    u = Usage.start(at=begin, energy_register_wh=1_000_000, drawing=True)
    return u.record(t, at=end, energy_register_wh=1_000_000 + wh, drawing=True)


# --- rounding ---------------------------------------------------------------------------------


def test_round_half_up() -> None:
    assert round_half_up(Fraction(1, 2)) == 1
    assert round_half_up(Fraction(117, 2)) == 59  # 58.5 -> 59 (round() would give 58)
    assert round_half_up(Fraction(5849, 100)) == 58
    assert round_half_up(Fraction(0)) == 0
    assert round_half_up(Fraction(-1, 2)) == -1


def test_worked_example_12_345_kwh_at_0_39() -> None:
    # 12.345 kWh x 0.39 EUR = 4.81455 EUR = 481.455 cents -> 481
    t = tariff()
    u = energy_session(t, 12_345, at(2026, 11, 30, 10, 0), at(2026, 11, 30, 12, 0))
    c = cost(t, u)
    assert c.exact_energy_cents == Fraction(481455, 1000)
    assert c.energy_cents == c.total_cents == 481
    # VAT in the gross: 481 x 19/119 = 76.798... -> 77; net 404
    assert (c.vat_cents, c.net_cents) == (77, 404)


def test_exactly_half_a_cent_rounds_up() -> None:
    # 1.5 kWh x 0.39 = 0.585 EUR = 58.5 cents -> 59. In floats 0.585 * 100 = 58.49999...: 58.
    t = tariff()
    u = energy_session(t, 1500, at(2026, 11, 30, 10, 0), at(2026, 11, 30, 11, 0))
    assert cost(t, u).exact_total_cents == Fraction(117, 2)
    assert cost(t, u).total_cents == 59
    assert round(0.585 * 100) == 58  # what binary floats would have billed


def test_rounding_happens_once_and_the_parts_add_up() -> None:
    # Energy 0.104 kWh x 1.00 = 10.4 cents; time 10.4 min x 0.01 = 10.4 cents; sum 20.8 -> 21.
    # Rounding each part first would give 10 + 10 = 20. The parts are apportioned by largest
    # remainder: both have .4, the tie goes to the first (energy): 11 + 10 = 21.
    t = tariff(price_per_kwh=D("1.00"), price_per_minute=D("0.01"))
    begin = at(2026, 11, 30, 10, 0)
    u = energy_session(t, 104, begin, begin + timedelta(minutes=10, seconds=24))
    c = cost(t, u)
    assert c.exact_energy_cents == Fraction(104, 10) and c.exact_time_cents == Fraction(104, 10)
    assert c.total_cents == 21
    assert (c.energy_cents, c.time_cents) == (11, 10)
    assert c.energy_cents + c.time_cents + c.idle_fee_cents + c.session_fee_cents == 21


def test_session_fee_and_per_minute_price() -> None:
    # Fee 0.50 EUR = 50 cents; 90 s at 0.05 EUR/min = 1.5 min x 5 cents = 7.5 cents;
    # 0.3 kWh x 0.39 = 11.7 cents. Exact total 69.2 -> 69.
    t = tariff(session_fee=D("0.50"), price_per_minute=D("0.05"))
    begin = at(2026, 11, 30, 10, 0)
    u = energy_session(t, 300, begin, begin + timedelta(seconds=90))
    c = cost(t, u)
    assert c.exact_total_cents == Fraction(692, 10)
    assert c.total_cents == 69
    # Remainders: energy .7, time .5, fee 0; floors 11 + 7 + 50 = 68, one cent to energy.
    assert (c.energy_cents, c.time_cents, c.session_fee_cents) == (12, 7, 50)


def test_zero_vat_and_a_session_with_nothing_used() -> None:
    t = tariff(vat_rate_pct=D(0), session_fee=D("1"))
    u = Usage.start(at=at(2026, 11, 30, 10, 0), energy_register_wh=5, drawing=True)
    c = cost(t, u)
    assert (c.total_cents, c.vat_cents, c.net_cents, c.energy_wh) == (100, 0, 100, 0)


# --- time-of-use bands ---------------------------------------------------------------------


def test_interval_across_a_band_boundary_is_split_by_time() -> None:
    # 21:55 -> 22:05 with 2 kWh: 5 min before 22:00 at 0.39, 5 min after at 0.29.
    # 1 kWh x 0.39 + 1 kWh x 0.29 = 39 + 29 = 68 cents.
    t = tariff(time_of_use=(NIGHT,))
    u = energy_session(t, 2000, at(2026, 11, 30, 21, 55), at(2026, 11, 30, 22, 5))
    assert [(b.name, b.energy_wh) for b in u.bands] == [(DEFAULT_BAND, 1000), ("night", 1000)]
    assert cost(t, u).total_cents == 68


@pytest.mark.timeout(60)  # walking it minute by minute would take many minutes
def test_a_gap_of_years_is_split_by_the_weekly_pattern_without_walking_it() -> None:
    # A clock jump of ~56 years (a gateway without RTC getting NTP time): the weekly schedule
    # gives 8 of 24 hours to night every day, so a third of the energy is night energy; and it
    # must not walk 29 million minutes to find that out.
    t = tariff(time_of_use=(NIGHT,))
    begin = at(1970, 1, 5, 0, 0)  # a Monday 00:00
    end = begin + timedelta(weeks=52 * 56)
    u = energy_session(t, 3_000_000, begin, end)
    night = {b.name: b.energy_wh for b in u.bands}["night"]
    assert abs(float(night) - 1_000_000) < 1_000_000 * 0.01  # DST makes it not exact


def test_a_split_that_is_not_whole_wh_stays_exact() -> None:
    # 21:59:30 -> 22:00:45, 10 Wh: 30 s of 75 s before 22:00 -> 4 Wh, 45 s -> 6 Wh.
    # 4 Wh x 0.39 + 6 Wh x 0.29 = 0.156 + 0.174 = 0.33 cents -> 0. Then a third of a Wh:
    t = tariff(time_of_use=(NIGHT,))
    u = energy_session(t, 10, at(2026, 11, 30, 21, 59, 30), at(2026, 11, 30, 22, 0, 45))
    assert [b.energy_wh for b in u.bands] == [4, 6]
    u = energy_session(t, 1, at(2026, 11, 30, 21, 59, 40), at(2026, 11, 30, 22, 0, 40))
    assert [b.energy_wh for b in u.bands] == [Fraction(1, 3), Fraction(2, 3)]


def test_over_midnight_the_morning_belongs_to_the_next_day() -> None:
    # Saturday only, 22:00-06:00: Saturday 23:50 -> Sunday 00:10 is night throughout;
    # Sunday 23:50 -> Monday 00:10 is not (Sunday is not listed).
    sat_night = TouPrice(
        name="sat-night", days=frozenset({6}), start=time(22), end=time(6), price_per_kwh=D("0.2")
    )
    t = tariff(time_of_use=(sat_night,))
    u = energy_session(t, 1000, at(2026, 11, 28, 23, 50), at(2026, 11, 29, 0, 10))
    assert [b.name for b in u.bands] == ["sat-night"]
    assert cost(t, u).total_cents == 20  # 1 kWh x 0.20
    u = energy_session(t, 1000, at(2026, 11, 29, 5, 50), at(2026, 11, 29, 6, 10))
    assert [(b.name, b.energy_wh) for b in u.bands] == [("sat-night", 500), (DEFAULT_BAND, 500)]
    u = energy_session(t, 1000, at(2026, 11, 29, 23, 50), at(2026, 11, 30, 0, 10))
    assert [b.name for b in u.bands] == [DEFAULT_BAND]


def test_end_at_midnight_and_overlaps_take_the_lowest_price() -> None:
    evening = TouPrice(
        name="evening", days=DAILY, start=time(18), end=time(0), price_per_kwh=D("0.50")
    )
    cheap = TouPrice(name="cheap", days=DAILY, start=time(23), end=time(0), price_per_kwh=D("0.1"))
    t = tariff(time_of_use=(evening, cheap))
    assert t.band_at(at(2026, 11, 30, 17, 59)) == (DEFAULT_BAND, D("0.39"))
    assert t.band_at(at(2026, 11, 30, 18, 0)) == ("evening", D("0.50"))
    assert t.band_at(at(2026, 11, 30, 23, 30)) == ("cheap", D("0.1"))
    assert t.band_at(at(2026, 12, 1, 0, 0)) == (DEFAULT_BAND, D("0.39"))
    assert t.max_price_per_kwh == D("0.50")


def test_dst_autumn_the_repeated_hour_is_billed_at_its_real_length() -> None:
    # 2026-10-25, Berlin falls back at 03:00 CEST to 02:00 CET: 01:00 CEST (23:00 UTC) to
    # 04:00 CET (03:00 UTC) is 4 real hours, not 3. Band "early" 00:00-03:00 local: from
    # 23:00 UTC until local 03:00 CET = 02:00 UTC, i.e. 3 real hours; then 1 hour default.
    # 4 kWh pro rata: 3 kWh x 0.29 + 1 kWh x 0.39 = 87 + 39 = 126 cents;
    # time 240 min x 0.01 = 240 cents. Total 366.
    early = TouPrice(name="early", days=DAILY, start=time(0), end=time(3), price_per_kwh=D("0.29"))
    t = tariff(time_of_use=(early,), price_per_minute=D("0.01"))
    u = energy_session(t, 4000, at(2026, 10, 25, 1, 0), at(2026, 10, 25, 4, 0))
    assert u.session_s == 4 * 3600
    assert [(b.name, b.energy_wh) for b in u.bands] == [("early", 3000), (DEFAULT_BAND, 1000)]
    c = cost(t, u)
    assert (c.energy_cents, c.time_cents, c.total_cents) == (126, 240, 366)


def test_dst_autumn_same_wall_time_twice_is_an_hour_apart() -> None:
    # 02:30 CEST (fold 0) and 02:30 CET (fold 1) share a tzinfo, so naive subtraction says 0 s;
    # the session lasted an hour: 60 min x 0.01 = 60 cents.
    t = tariff(price_per_minute=D("0.01"))
    u = energy_session(t, 0, at(2026, 10, 25, 2, 30), at(2026, 10, 25, 2, 30, fold=1))
    assert u.session_s == 3600 and cost(t, u).total_cents == 60


def test_dst_spring_the_missing_hour_is_not_billed() -> None:
    # 2026-03-29, 02:00 CET jumps to 03:00 CEST: 01:00 CET (00:00 UTC) to 04:00 CEST (02:00 UTC)
    # is 2 real hours. "early" 00:00-03:00 local lasts from 00:00 UTC to the jump at 01:00 UTC:
    # 1 hour. 2 kWh: 1 kWh x 0.29 + 1 kWh x 0.39 = 68 cents.
    early = TouPrice(name="early", days=DAILY, start=time(0), end=time(3), price_per_kwh=D("0.29"))
    t = tariff(time_of_use=(early,))
    u = energy_session(t, 2000, at(2026, 3, 29, 1, 0), at(2026, 3, 29, 4, 0))
    assert u.session_s == 2 * 3600
    assert [(b.name, b.energy_wh) for b in u.bands] == [("early", 1000), (DEFAULT_BAND, 1000)]
    assert cost(t, u).total_cents == 68


def test_a_band_that_starts_inside_the_skipped_hour_starts_at_the_jump() -> None:
    # Band from 02:30 on 2026-03-29: local time jumps from 01:59:59 CET to 03:00 CEST, so the
    # band begins at the jump (01:00 UTC). 00:30 UTC -> 01:30 UTC, 1 kWh: half before, half in.
    late = TouPrice(
        name="late", days=DAILY, start=time(2, 30), end=time(0), price_per_kwh=D("0.19")
    )
    t = tariff(time_of_use=(late,))
    utc = ZoneInfo("UTC")
    begin = datetime(2026, 3, 29, 0, 30, tzinfo=utc).astimezone(BERLIN)
    end = datetime(2026, 3, 29, 1, 30, tzinfo=utc).astimezone(BERLIN)
    u = energy_session(t, 1000, begin, end)
    assert [(b.name, b.energy_wh) for b in u.bands] == [(DEFAULT_BAND, 500), ("late", 500)]


# --- idle ----------------------------------------------------------------------------------


def minutes(u: Usage, t: Tariff, begin: datetime, count: int, wh: int, *, drawing: bool) -> Usage:
    """``count`` one-minute samples after ``begin``, each adding ``wh`` to the register."""
    for i in range(1, count + 1):
        u = u.record(
            t,
            at=begin + timedelta(minutes=i),
            energy_register_wh=u.register_wh + wh,
            drawing=drawing,
        )
    return u


def test_idle_fee_after_the_grace() -> None:
    # Charges 10:00-10:30 (30 x 100 Wh = 3 kWh; the 10:30 sample still shows it drawing), then
    # plugged without drawing: the run starts at the first sample that shows it, 10:31, and
    # goes on until 11:31: idle 60 min, grace 30 min -> 30 min x 0.10 = 3.00 EUR = 300 cents.
    # Energy 3 kWh x 0.39 = 117 cents. Total 417.
    t = tariff(idle_fee_per_minute=D("0.10"), idle_grace_min=D(30))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=True)
    u = minutes(u, t, begin, 30, 100, drawing=True)
    u = minutes(u, t, begin + timedelta(minutes=30), 61, 0, drawing=False)
    assert u.idle_run_s() == 60 * 60
    c = cost(t, u)
    assert c.billable_idle_s == 30 * 60
    assert (c.energy_cents, c.idle_fee_cents, c.total_cents) == (117, 300, 417)


def test_idle_runs_within_the_grace_are_free_and_each_run_has_its_own_grace() -> None:
    # Idle 10:00-10:20 (free), charge until the 10:30 sample, idle from the 10:31 sample to
    # 11:16: 45 min, 15 past the grace: 15 x 0.10 = 150 cents.
    t = tariff(price_per_kwh=D(0), idle_fee_per_minute=D("0.10"), idle_grace_min=D(30))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=False)
    u = minutes(u, t, begin, 20, 0, drawing=False)
    assert cost(t, u).total_cents == 0
    u = minutes(u, t, begin + timedelta(minutes=20), 10, 50, drawing=True)
    u = minutes(u, t, begin + timedelta(minutes=30), 46, 0, drawing=False)
    assert cost(t, u).billable_idle_s == 15 * 60
    assert cost(t, u).total_cents == 150


def test_a_pause_by_the_site_is_not_idle() -> None:
    t = tariff(idle_fee_per_minute=D("1"), idle_grace_min=D(0))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=True)
    for i in range(1, 61):
        u = u.record(
            t, at=begin + timedelta(minutes=i), energy_register_wh=0, drawing=False, held=True
        )
    assert cost(t, u).billable_idle_s == 0


def test_energy_in_an_interval_ends_an_idle_run_even_if_the_flag_says_not_drawing() -> None:
    # A 10-minute gap with energy: the EV drew at some point in it, so no idle is billed
    # for the gap; the run begins again at the sample that says not drawing.
    t = tariff(idle_fee_per_minute=D("1"), idle_grace_min=D(0))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=False)
    u = u.record(t, at=begin + timedelta(minutes=10), energy_register_wh=500, drawing=False)
    # the run 10:00-10:00 closed (0 s); a new run starts at 10:10
    assert cost(t, u).billable_idle_s == 0
    u = u.record(t, at=begin + timedelta(minutes=12), energy_register_wh=500, drawing=False)
    assert cost(t, u).billable_idle_s == 120


def test_an_ev_that_never_draws_is_idle_from_the_start() -> None:
    # Plugged 10:00, never draws, grace 15 min, until 10:45: 30 min x 0.20 = 600 cents.
    t = tariff(idle_fee_per_minute=D("0.20"), idle_grace_min=D(15))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=False)
    u = minutes(u, t, begin, 45, 0, drawing=False)
    assert cost(t, u).total_cents == 600


# --- the register --------------------------------------------------------------------------


def test_a_register_reset_adds_nothing_and_counting_goes_on() -> None:
    # 5000 -> 5600 (600 Wh), reset to 100 (nothing), 100 -> 600 (500 Wh): 1.1 kWh x 0.39 = 42.9
    # cents -> 43.
    t = tariff()
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=5000, drawing=True)
    for minute, register in ((1, 5600), (2, 100), (3, 600)):
        u = u.record(
            t, at=begin + timedelta(minutes=minute), energy_register_wh=register, drawing=True
        )
    assert u.energy_wh == 1100 and u.register_resets == 1
    assert cost(t, u).total_cents == 43


def test_a_clock_set_back_adds_no_time_and_keeps_the_energy() -> None:
    t = tariff(price_per_minute=D("0.01"))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=True)
    u = u.record(t, at=begin + timedelta(minutes=10), energy_register_wh=100, drawing=True)
    u = u.record(t, at=begin + timedelta(minutes=5), energy_register_wh=200, drawing=True)
    assert u.session_s == 600 and u.energy_wh == 200
    assert u.last_at == begin + timedelta(minutes=10)


def test_a_gap_is_attributed_pro_rata_and_registers_may_be_decimal() -> None:
    # A 2-hour gap 21:00 -> 23:00 with 2.5 kWh (register in kWh x 1000 as Decimal):
    # 1.25 kWh x 0.39 + 1.25 kWh x 0.29 = 48.75 + 36.25 = 85 cents.
    t = tariff(time_of_use=(NIGHT,))
    u = Usage.start(at=at(2026, 11, 30, 21, 0), energy_register_wh=D("1000.5"), drawing=True)
    u = u.record(t, at=at(2026, 11, 30, 23, 0), energy_register_wh=D("3500.5"), drawing=True)
    assert [b.energy_wh for b in u.bands] == [1250, 1250]
    assert cost(t, u).total_cents == 85


def test_naive_times_and_bad_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        Usage.start(at=datetime(2026, 11, 30, 10, 0), energy_register_wh=0)  # noqa: DTZ001
    with pytest.raises(ValueError, match="finite"):
        Usage.start(at=at(2026, 11, 30), energy_register_wh=float("nan"))
    with pytest.raises(ValueError, match="currency"):
        tariff(currency="eur")
    with pytest.raises(ValueError, match=r"0\.\.100"):
        tariff(vat_rate_pct=D(101))
    with pytest.raises(ValueError, match="price_per_kwh"):
        tariff(price_per_kwh=D("-0.01"))
    with pytest.raises(ValueError, match="starts and ends"):
        TouPrice(name="x", days=DAILY, start=time(8), end=time(8), price_per_kwh=D(1))


# --- pre-authorisation and the stop rule ---------------------------------------------------


def test_preauth_amount_is_the_tariffs_but_never_above_the_cap() -> None:
    assert preauth_amount_cents(tariff()) == DEFAULT_PREAUTH_CENTS == 2500
    assert preauth_amount_cents(tariff(preauth_cents=5000, preauth_cap_cents=3000)) == 3000
    assert preauth_amount_cents(tariff(preauth_cents=2000, preauth_cap_cents=3000)) == 2000


def test_must_stop_before_the_next_minute_would_pass_the_preauth() -> None:
    # Pre-auth 10.00 EUR at 0.39/kWh and 11 kW. One minute at 11 kW = 183.33 Wh = 7.15 cents.
    # After 25.0 kWh (975 cents) the next minute could make 982.15 -> 982 <= 1000: go on.
    # After 25.5 kWh (994.5 cents) it could make 1001.65 -> 1002 > 1000: stop now.
    t = tariff()
    begin = at(2026, 11, 30, 10, 0)
    go = energy_session(t, 25_000, begin, begin + timedelta(hours=2))
    assert not must_stop(t, go, 1000, headroom_s=60, power_w=11_000)
    stop = energy_session(t, 25_500, begin, begin + timedelta(hours=2))
    assert must_stop(t, stop, 1000, headroom_s=60, power_w=11_000)
    # Without power_w the last interval's mean power is used: 25.5 kWh in 2 h = 12.75 kW.
    assert stop.last_power_w == 12_750
    assert must_stop(t, stop, 1000, headroom_s=60)


def test_must_stop_counts_the_idle_fee_that_is_coming() -> None:
    # Idle 29 min of a 30 min grace, fee 1.00/min, pre-auth 1.00: the next 2 minutes could
    # bill 1 min past the grace = 100 cents -> 100, not above: go on; 3 minutes: 200 > 100.
    t = tariff(idle_fee_per_minute=D("1.00"), idle_grace_min=D(30))
    begin = at(2026, 11, 30, 10, 0)
    u = Usage.start(at=begin, energy_register_wh=0, drawing=False)
    u = minutes(u, t, begin, 29, 0, drawing=False)
    assert not must_stop(t, u, 100, headroom_s=120, power_w=0)
    assert must_stop(t, u, 100, headroom_s=180, power_w=0)


# --- what the driver sees ------------------------------------------------------------------


def test_price_display_has_every_part_as_exact_text() -> None:
    t = tariff(
        name="Standard",
        time_of_use=(NIGHT,),
        price_per_minute=D("0.02"),
        session_fee=D("0.5"),
        idle_fee_per_minute=D("0.10"),
        idle_grace_min=D(60),
        preauth_cents=5000,
        preauth_cap_cents=4000,
    )
    shown = price_display(t)
    assert shown["currency"] == "EUR" and shown["vat_rate_pct"] == "19"
    assert shown["prices_include_vat"] is True
    assert shown["price_per_kwh"] == "0.39" and shown["session_fee"] == "0.50"
    assert shown["time_of_use"] == [
        {
            "name": "night",
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": "22:00",
            "end": "06:00",
            "price_per_kwh": "0.29",
        }
    ]
    assert shown["preauth_cents"] == 4000 and shown["preauth"] == "40.00"
    assert price_text(t) == (
        "0.39 EUR/kWh; 0.29 EUR/kWh night daily 22:00-06:00; 0.02 EUR/min; "
        "session fee 0.50 EUR; idle fee 0.10 EUR/min after 60 min (incl. 19 % VAT); "
        "pre-authorisation 40.00 EUR"
    )


# --- properties ----------------------------------------------------------------------------

PRICES = st.decimals(min_value=0, max_value=2, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    tou: tuple[TouPrice, ...] = ()
    if draw(st.booleans()):
        start = time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 30])))
        end = time(draw(st.integers(0, 23)), 15)
        tou = (
            TouPrice(
                name="band",
                days=frozenset(draw(st.sets(st.integers(1, 7), min_size=1))),
                start=start,
                end=end,
                price_per_kwh=draw(PRICES),
            ),
        )
    return tariff(
        price_per_kwh=draw(PRICES),
        time_of_use=tou,
        price_per_minute=draw(PRICES),
        session_fee=draw(st.decimals(min_value=0, max_value=1, places=2)),
        idle_fee_per_minute=draw(PRICES),
        idle_grace_min=D(draw(st.integers(0, 30))),
    )


# (seconds since the last sample, Wh since the last sample, drawing, held); a negative Wh is a
# register reset to that many Wh below the last reading.
STEPS = st.lists(
    st.tuples(st.integers(-30, 600), st.integers(-500, 3000), st.booleans(), st.booleans()),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(t=tariffs(), steps=STEPS, start_hour=st.integers(0, 23))
def test_cost_is_monotonic_rounded_once_and_adds_up(
    t: Tariff, steps: list[tuple[int, int, bool, bool]], start_hour: int
) -> None:
    wall = at(2026, 10, 24, start_hour, 0)  # over the autumn DST change for late starts
    u = Usage.start(at=wall, energy_register_wh=10_000, drawing=True)
    previous = cost(t, u)
    for seconds, wh, drawing, held in steps:
        wall += timedelta(seconds=seconds)
        u = u.record(
            t,
            at=wall,
            energy_register_wh=max(Fraction(0), u.register_wh + wh),
            drawing=drawing,
            held=held,
        )
        c = cost(t, u)
        # monotonic in energy and time, every part and the total
        assert c.exact_total_cents >= previous.exact_total_cents
        assert c.total_cents >= previous.total_cents
        assert c.energy_wh >= previous.energy_wh and c.session_s >= previous.session_s
        # rounded once: the total is the half-up rounding of the exact sum, parts add up
        assert c.total_cents == round_half_up(c.exact_total_cents)
        parts = (c.energy_cents, c.time_cents, c.idle_fee_cents, c.session_fee_cents)
        exact = (
            c.exact_energy_cents,
            c.exact_time_cents,
            c.exact_idle_fee_cents,
            c.exact_session_fee_cents,
        )
        assert sum(parts) == c.total_cents
        assert all(abs(p - e) < 1 for p, e in zip(parts, exact, strict=True))
        assert c.vat_cents + c.net_cents == c.total_cents and 0 <= c.vat_cents <= c.total_cents
        previous = c


@settings(max_examples=200, deadline=None)
@given(
    t=tariffs(),
    preauth=st.integers(1, 800),
    power_w=st.integers(0, 22_000),
    headroom_s=st.integers(1, 120),
    steps=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans(), st.booleans()),
        max_size=20,
    ),
)
def test_stopping_by_must_stop_keeps_the_cost_within_the_preauth(
    t: Tariff,
    preauth: int,
    power_w: int,
    headroom_s: int,
    steps: list[tuple[int, int, bool, bool]],
) -> None:
    # The EV never draws more than power_w and samples come at most headroom_s apart: then a
    # session that is stopped as soon as must_stop says so never costs more than the pre-auth.
    wall = at(2026, 11, 30, 21, 50)
    u = Usage.start(at=wall, energy_register_wh=0, drawing=True)
    if must_stop(t, u, preauth, headroom_s=headroom_s, power_w=power_w):
        return  # not even the session fee fits: no session starts
    # The steps repeat, so that most sessions run long enough to reach the pre-auth.
    for time_pick, energy_pick, drawing, held in itertools.islice(itertools.cycle(steps), 400):
        seconds = time_pick % (headroom_s + 1)
        wh = Fraction(energy_pick % 1000, 1000) * power_w * seconds / 3600
        wall += timedelta(seconds=seconds)
        u = u.record(t, at=wall, energy_register_wh=u.register_wh + wh, drawing=drawing, held=held)
        c = cost(t, u)
        assert c.total_cents <= preauth  # so the capture is the whole cost
        if must_stop(t, u, preauth, headroom_s=headroom_s, power_w=power_w):
            break
