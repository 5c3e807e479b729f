"""The skeleton allocator: examples a technician would recognise, and invariants I1, I2, I4."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings

from controller.core.allocation import allocate
from controller.core.model import Bound
from controller.core.site import Site
from tests.core.sites import evse, site, sites_and_snapshots, snap

C3 = (0.0, 0.0, 0.0)


def test_three_evs_share_a_32a_site_equally() -> None:
    s = site([evse("a"), evse("b"), evse("c")], rating_a=32)
    a = allocate(s, snap(10, (2.0, 2.0, 2.0), {k: ("C", C3) for k in "abc"}))
    assert a.mode == "normal"
    # 32 - 2 A of building load = 30 A shared by three: 10 A each
    assert [a.current_a(k) for k in "abc"] == [10.0, 10.0, 10.0]
    assert a.limits["a"].bound is Bound.CIRCUIT and a.limits["a"].node == "grid"


def test_one_phase_ev_on_a_loaded_phase_gets_only_what_that_phase_has() -> None:
    s = site([evse("a", phases=(0,)), evse("b")], rating_a=32)
    a = allocate(s, snap(10, (20.0, 0.0, 0.0), {"a": ("C", C3), "b": ("C", C3)}))
    # L1 has 12 A left for both; L2/L3 have 32 A but b also needs L1.
    assert a.current_a("a") == 6.0 and a.current_a("b") == 6.0


def test_below_minimum_pauses_the_lowest_tier_first() -> None:
    # 14 - 4 = 10 A: two minimums of 6 A do not fit; the tier-0 connector pauses.
    s = site([evse("a", priority_tier=1), evse("b")], rating_a=14)
    a = allocate(s, snap(10, (4.0, 4.0, 4.0), {"a": ("C", C3), "b": ("C", C3)}))
    assert a.current_a("a") == 10.0
    assert a.current_a("b") == 0.0 and a.limits["b"].bound is Bound.BELOW_MIN


def test_connector_max_frees_capacity_for_others() -> None:
    s = site([evse("a", max_current_a=10), evse("b")], rating_a=40)
    a = allocate(s, snap(10, C3, {"a": ("C", C3), "b": ("C", C3)}))
    assert a.current_a("a") == 10.0 and a.limits["a"].bound is Bound.CONNECTOR_MAX
    assert a.current_a("b") == 30.0


def test_no_vehicle_gets_zero() -> None:
    s = site([evse("a"), evse("b")], rating_a=32)
    a = allocate(s, snap(10, C3, {"a": ("A", C3), "b": ("C", C3)}))
    assert a.current_a("a") == 0.0 and a.limits["a"].bound is Bound.NO_VEHICLE
    assert a.current_a("b") == 32.0


def test_startup_and_stale_meter_ladder() -> None:
    s = site([evse("a", fallback_current_a=6.0)], rating_a=32)
    first = allocate(s, snap(0, None, {"a": ("C", C3)}))
    assert first.mode == "startup" and first.current_a("a") == 6.0
    normal = allocate(s, snap(10, (5.0, 5.0, 5.0), {"a": ("C", C3)}), first)
    assert normal.current_a("a") == 27.0
    # Meter late by 5 s and now showing less load: hold, never increase.
    late = allocate(s, snap(15, (0.0, 0.0, 0.0), {"a": ("C", C3)}, meter_at_s=10), normal)
    assert late.mode == "hold" and late.current_a("a") == 27.0
    # ... but decreases still go out.
    late2 = allocate(s, snap(14, (20.0, 20.0, 20.0), {"a": ("C", C3)}, meter_at_s=10), normal)
    assert late2.current_a("a") <= 12.0 + 1e-9
    stale = allocate(s, snap(25, (5.0, 5.0, 5.0), {"a": ("C", C3)}, meter_at_s=10), late)
    assert stale.mode == "fallback" and stale.current_a("a") == 6.0
    assert stale.limits["a"].bound is Bound.FALLBACK


def test_offline_evse_keeps_a_reservation() -> None:
    s = site([evse("a", fallback_current_a=6.0), evse("b")], rating_a=32)
    sn = snap(10, C3, {"b": ("C", C3)}, written={"a": 16.0})
    a = allocate(s, sn)
    assert a.limits["a"].bound is Bound.EVSE_OFFLINE
    assert a.current_a("b") == 16.0  # 32 - a's last written 16 A


def test_implausible_meter_counts_as_missing() -> None:
    s = site([evse("a")], rating_a=32)
    ok = allocate(s, snap(10, (1.0, 1.0, 1.0), {"a": ("C", C3)}))
    bad = allocate(s, snap(11, (math.nan, 1.0, 1.0), {"a": ("C", C3)}), ok)
    assert bad.current_a("a") <= ok.current_a("a")


def _check_i1_i2(
    s: Site, alloc_limits: dict[str, float], available: dict[str, tuple[float, ...]]
) -> None:
    for node in s.circuits:
        for p in range(3):
            total = sum(
                alloc_limits[k.id] for k in s.connectors_under(node.id) if p in k.grid_phases
            )
            assert total <= max(available[node.id][p], 0.0) + 1e-6, (node.id, p, total)
    for k in s.connectors:
        i = alloc_limits[k.id]
        assert i == 0.0 or k.min_current_a - 1e-9 <= i <= k.max_current_a + 1e-9, (k.id, i)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites_and_snapshots())
def test_i1_i2_hold_on_random_trees(case: tuple[Site, object]) -> None:
    s, sn = case
    a = allocate(s, sn)  # type: ignore[arg-type]
    assert a.mode == "normal"
    limits = {k: v.current_a for k, v in a.limits.items()}
    _check_i1_i2(s, limits, {n: v.available_a for n, v in a.nodes.items()})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites_and_snapshots())
def test_i4_a_late_meter_never_raises_anything(case: tuple[Site, object]) -> None:
    s, sn = case
    before = allocate(s, sn)  # type: ignore[arg-type]
    late = snap(
        1004.0,
        (0.0, 0.0, 0.0),
        {k: ("C", (0.0, 0.0, 0.0)) for k in sn.evses},  # type: ignore[attr-defined]
        meter_at_s=1000.0,
    )
    after = allocate(s, late, before)
    for k in s.connectors:
        if before.limits[k.id].bound is not Bound.NO_VEHICLE:
            assert after.current_a(k.id) <= before.current_a(k.id) + 1e-9


def test_small_increases_wait_decreases_go_out_at_once() -> None:
    s = site([evse("a")], rating_a=32)
    first = allocate(s, snap(10, (10.0, 10.0, 10.0), {"a": ("C", C3)}))
    assert first.current_a("a") == 22.0
    # 0.6 A less building load: not worth a write (meter noise), the limit stays.
    wobble = allocate(s, snap(11, (9.4, 9.4, 9.4), {"a": ("C", C3)}), first)
    assert wobble.current_a("a") == 22.0
    # 0.3 A more load: the limit drops at once.
    down = allocate(s, snap(12, (10.3, 10.3, 10.3), {"a": ("C", C3)}), wobble)
    assert down.current_a("a") == 21.7
    # 2 A less load: a real change goes out.
    up = allocate(s, snap(13, (8.3, 8.3, 8.3), {"a": ("C", C3)}), down)
    assert up.current_a("a") == 23.7
