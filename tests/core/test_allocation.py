"""The engine on examples a technician would recognise; properties live in test_properties.py."""

from __future__ import annotations

import math
from dataclasses import replace

from controller.core.allocation import allocate
from controller.core.model import Allocation, Bound, Session
from controller.core.site import Site
from tests.core.sites import evse, settle, site, snap

C3 = (0.0, 0.0, 0.0)


def _targets(a: Allocation) -> dict[str, float | None]:
    return {k: v.target_a for k, v in a.limits.items()}


def test_three_evs_share_a_32a_site_equally() -> None:
    s = site([evse("a"), evse("b"), evse("c")], rating_a=32)
    a = allocate(s, snap(10, (2.0, 2.0, 2.0), {k: ("C", C3) for k in "abc"}))
    assert a.mode == "normal"
    # 32 - 2 A of building load = 30 A shared by three: 10 A each
    assert _targets(a) == {"a": 10.0, "b": 10.0, "c": 10.0}
    assert a.limits["a"].node == "grid"


def test_steady_state_reaches_the_fair_share() -> None:
    s = site([evse("a"), evse("b"), evse("c")], rating_a=32)
    a = settle(s, building_a=(2.0, 2.0, 2.0), vehicles="abc", ticks=60)
    assert [a.current_a(k) for k in "abc"] == [10.0, 10.0, 10.0]
    assert a.limits["a"].bound is Bound.CIRCUIT


def test_one_phase_ev_on_a_loaded_phase_gets_only_what_that_phase_has() -> None:
    s = site([evse("a", phases=(0,)), evse("b")], rating_a=32)
    a = allocate(s, snap(10, (20.0, 0.0, 0.0), {"a": ("C", C3), "b": ("C", C3)}))
    # L1 has 12 A left for both; L2/L3 have 32 A but b also needs L1.
    assert _targets(a) == {"a": 6.0, "b": 6.0}


def test_below_minimum_pauses_the_lowest_tier_first() -> None:
    # 14 - 4 = 10 A: two minimums of 6 A do not fit; the tier-0 connector pauses.
    s = site([evse("a", priority_tier=1), evse("b")], rating_a=14)
    a = allocate(s, snap(10, (4.0, 4.0, 4.0), {"a": ("C", C3), "b": ("C", C3)}))
    assert a.limits["a"].target_a == 10.0
    assert a.current_a("b") == 0.0 and a.limits["b"].bound is Bound.BELOW_MIN


def test_connector_max_frees_capacity_for_others() -> None:
    s = site([evse("a", max_current_a=10), evse("b")], rating_a=40)
    a = allocate(s, snap(10, C3, {"a": ("C", C3), "b": ("C", C3)}))
    assert _targets(a) == {"a": 10.0, "b": 30.0}
    assert a.limits["a"].bound is Bound.CONNECTOR_MAX


def test_no_vehicle_gets_zero() -> None:
    s = site([evse("a"), evse("b")], rating_a=32)
    a = allocate(s, snap(10, C3, {"a": ("A", C3), "b": ("C", C3)}))
    assert a.current_a("a") == 0.0 and a.limits["a"].bound is Bound.NO_VEHICLE
    assert a.limits["b"].target_a == 32.0


def test_startup_and_stale_meter_ladder() -> None:
    s = site([evse("a", fallback_current_a=6.0)], rating_a=32)
    first = allocate(s, snap(0, None, {"a": ("C", C3)}))
    assert first.mode == "startup" and first.current_a("a") == 6.0
    normal = settle(s, building_a=(5.0, 5.0, 5.0), vehicles="a", ticks=40)
    assert normal.current_a("a") == 27.0
    t = 100.0
    # Meter late by 5 s and now showing less load: hold, never increase.
    late = allocate(s, snap(t + 5, (0.0, 0.0, 0.0), {"a": ("C", (27,) * 3)}, meter_at_s=t), normal)
    assert late.mode == "hold" and late.current_a("a") == 27.0
    stale = allocate(s, snap(t + 15, (5.0,) * 3, {"a": ("C", (27,) * 3)}, meter_at_s=t), late)
    assert stale.mode == "fallback" and stale.current_a("a") == 6.0
    assert stale.limits["a"].bound is Bound.FALLBACK
    assert any(f.code == "meter_stale" and f.subject == "m" for f in stale.faults)


def test_offline_evse_keeps_a_reservation() -> None:
    s = site([evse("a", fallback_current_a=6.0), evse("b")], rating_a=32)
    sn = snap(10, C3, {"b": ("C", C3)}, written={"a": 16.0})
    a = allocate(s, sn)
    assert a.limits["a"].bound is Bound.EVSE_OFFLINE
    assert a.limits["b"].target_a == 16.0  # 32 - a's last written 16 A


def test_an_offline_evse_whose_session_may_not_draw_gets_0_a() -> None:
    # Its reads fail (or come too late) but a write may still get through: a stopped, unpaid or
    # unavailable connector must not be handed its fallback current.
    s = site([evse("a", fallback_current_a=6.0), evse("b")], rating_a=32)
    for hold in ("stopped", "not_authorised", "unavailable"):
        sn = replace(
            snap(10, C3, {"b": ("C", C3)}, written={"a": 0.0}),
            sessions={"a": Session(charging_allowed=False, hold=hold)},
        )
        a = allocate(s, sn)
        assert a.limits["a"].bound is Bound.EVSE_OFFLINE and a.current_a("a") == 0.0, hold
    # A session that may draw keeps the fallback current, as before.
    sn = replace(snap(10, C3, {"b": ("C", C3)}), sessions={"a": Session()})
    assert allocate(s, sn).current_a("a") == 6.0


def test_implausible_meter_counts_as_missing() -> None:
    s = site([evse("a")], rating_a=32)
    ok = allocate(s, snap(10, (1.0, 1.0, 1.0), {"a": ("C", C3)}))
    bad = allocate(s, snap(11, (math.nan, 1.0, 1.0), {"a": ("C", C3)}), ok)
    assert bad.mode == "hold"
    assert bad.current_a("a") <= ok.current_a("a")
    assert any(f.code == "meter_implausible" for f in bad.faults)


def test_increases_ramp_and_wait_for_the_ev_decreases_go_out_at_once(
) -> None:  # fmt: skip
    s: Site = site([evse("a")], rating_a=32)
    lm = s.load_management
    a0 = allocate(s, snap(0, (0.0,) * 3, {"a": ("C", C3)}))
    assert a0.current_a("a") == 6.0 + lm.ramp_step_a  # from the fallback, one ramp step
    # The EV has not followed yet (draws 0): no further increase.
    a1 = allocate(s, snap(6, (0.0,) * 3, {"a": ("C", C3)}), a0)
    assert a1.current_a("a") == a0.current_a("a") and a1.limits["a"].bound is Bound.SETTLING
    # It follows: the next step goes out after the ramp period.
    drawing = (12.0, 12.0, 12.0)
    a2 = allocate(s, snap(7, drawing, {"a": ("C", drawing)}), a1)
    assert a2.current_a("a") == 18.0 and a2.limits["a"].bound is Bound.RAMP
    # A load step: the decrease goes out at once, whatever the ramp.
    a3 = allocate(s, snap(8, (37.0, 37.0, 37.0), {"a": ("C", drawing)}), a2)  # 25 A non-EV
    assert a3.current_a("a") == 7.0


def test_ev_overcurrent_after_7_s_and_stuck_contactor_after_2_s() -> None:
    s = site([evse("a"), evse("b")], rating_a=63)
    prev = None
    over = (17.0, 17.0, 17.0)  # limit 10 A: 10 * 1.1 + 0.5 = 11.5 A allowed
    for t in range(10):
        prev = allocate(
            s,
            snap(100 + t, (20.0 + 0.01 * t,) * 3, {"a": ("C", over), "b": ("A", (3.0, 0, 0))},
                 written={"a": 10.0, "b": 0.0}),
            prev,
        )  # fmt: skip
        codes = {(f.code, f.subject) for f in prev.faults}
        assert (("ev_overcurrent", "a") in codes) == (t >= 7), t
        assert (("stuck_contactor", "b") in codes) == (t >= 2), t
