"""hil physics: EV lag, pause below 6 A, phase mapping, energy need, departure, determinism."""

from __future__ import annotations

import pytest

from hil.devices.alfen import AlfenStation
from hil.physics import ScheduledOffer, SiteModel
from hil.scenario import EvSpec
from tests.hil.builders import ev, evse, make_scenario


def run_to(model: SiteModel, until_s: float, step_s: float = 0.1) -> None:
    t = model.t_s
    while t < until_s - 1e-9:
        t = min(until_s, round(t + step_s, 6))
        model.advance(t)


def test_ev_follows_offer_after_its_lag_for_decreases_and_increases() -> None:
    scenario = make_scenario([evse(ev=ev(response_lag_s=3))])
    offer = ScheduledOffer([(0, 16), (10, 8), (20, 12)])
    model = SiteModel(scenario, {"cp1": offer})
    assert model.advance(2.9).evse("cp1").current_a == (0, 0, 0)  # plugged, not started yet
    assert model.state.evse("cp1").mode3_state == "B2"
    assert model.advance(3.0).evse("cp1").current_a == (16, 16, 16)
    assert model.state.evse("cp1").mode3_state == "C2"
    assert model.advance(12.9).evse("cp1").current_a == (16, 16, 16)  # decrease not seen yet
    assert model.state.evse("cp1").offered_limit_a == 8
    assert model.advance(13.0).evse("cp1").current_a == (8, 8, 8)
    assert model.advance(22.9).evse("cp1").current_a == (8, 8, 8)  # increase lags too
    assert model.advance(23.0).evse("cp1").current_a == (12, 12, 12)


def test_ev_current_is_capped_by_its_own_max() -> None:
    scenario = make_scenario([evse(ev=ev(max_current_a=10, response_lag_s=0))])
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 32)])})
    assert model.advance(1).evse("cp1").current_a == (10, 10, 10)


def test_ev_pauses_while_the_offer_is_below_6_a() -> None:
    scenario = make_scenario([evse(ev=ev(response_lag_s=1))])
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 5.9), (10, 6)])})
    state = model.advance(5).evse("cp1")
    assert state.current_a == (0, 0, 0)
    assert state.mode3_state == "B2"
    assert state.ev_present
    assert model.advance(11).evse("cp1").current_a == (6, 6, 6)


def test_one_phase_ev_draws_on_connector_l1_mapped_through_rotation() -> None:
    scenario = make_scenario(
        [evse("cp1", "L2L3L1", ev=ev(phases=1, response_lag_s=0))], building=[[1, 2, 3]]
    )
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 16)])})
    state = model.advance(1)
    assert state.evse("cp1").current_a == (16, 0, 0)
    assert state.grid_current_a == (1, 2 + 16, 3)


def test_three_phase_ev_on_one_phase_evse_uses_one_grid_phase() -> None:
    scenario = make_scenario([evse("cp1", "L3", ev=ev(phases=3, response_lag_s=0))])
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 10)])})
    state = model.advance(1)
    assert state.evse("cp1").current_a == (10, 0, 0)
    assert state.grid_current_a == (0, 0, 10)


def test_rotation_maps_each_connector_phase_to_its_grid_phase() -> None:
    scenario = make_scenario(
        [
            evse("cp1", "L1L2L3", ev=ev(response_lag_s=0, max_current_a=10)),
            evse("cp2", "L2L3L1", ev=ev(response_lag_s=0, max_current_a=16, phases=1)),
        ]
    )
    offers = {"cp1": ScheduledOffer([(0, 32)]), "cp2": ScheduledOffer([(0, 32)])}
    state = SiteModel(scenario, offers).advance(1)
    assert state.grid_current_a == (10, 26, 10)


def test_station_phase_switch_to_one_phase_reaches_the_ev_after_its_lag() -> None:
    scenario = make_scenario([evse(ev=ev(response_lag_s=2))])
    station = AlfenStation(max_current_a=32, safe_current_a=16, validity_time_s=60)
    model = SiteModel(scenario, {"cp1": station})
    assert model.advance(3).evse("cp1").current_a == (16, 16, 16)
    station.write_phases(1, 4.0)
    assert model.advance(5.9).evse("cp1").current_a == (16, 16, 16)
    assert model.advance(6.0).evse("cp1").current_a == (16, 0, 0)


def test_energy_need_reached_stops_the_ev_in_state_b() -> None:
    # 3 x 16 A x 230 V = 11.04 kW: 100 Wh take 32.6 s.
    scenario = make_scenario([evse(ev=ev(energy_need_wh=100, response_lag_s=0))])
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 16)])})
    run_to(model, 30)
    assert model.state.evse("cp1").mode3_state == "C2"
    run_to(model, 34)
    state = model.state.evse("cp1")
    assert state.mode3_state == "B2"
    assert state.current_a == (0, 0, 0)
    assert state.ev_full
    assert state.session_energy_wh == pytest.approx(100)
    assert state.energy_wh == pytest.approx(100, abs=1.5)
    assert [e.kind for e in model.drain_events()] == ["arrival", "ev_full"]


def test_departure_returns_to_state_a_and_a_second_visit_starts_fresh() -> None:
    visits = [ev(arrival_s=1, departure_s=5, response_lag_s=0, energy_need_wh=50),
              ev(arrival_s=8, response_lag_s=0)]  # fmt: skip
    scenario = make_scenario([evse(evs=visits)])
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 16)])})
    assert model.state.evse("cp1").mode3_state == "A"
    run_to(model, 4.9)
    assert model.state.evse("cp1").mode3_state == "C2"
    run_to(model, 5.0)
    state = model.state.evse("cp1")
    assert (state.mode3_state, state.current_a, state.ev_present) == ("A", (0, 0, 0), False)
    run_to(model, 8.0)
    assert model.state.evse("cp1").session_energy_wh == 0
    run_to(model, 9.0)
    assert model.state.evse("cp1").mode3_state == "C2"
    kinds = [(e.kind, e.at_s) for e in model.drain_events()]
    assert kinds == [("arrival", 1), ("departure", 5), ("arrival", 8)]


def test_building_steps_noise_and_override() -> None:
    steps = [{"at_s": 0, "current_a": [5, 3, 4]}, {"at_s": 20, "current_a": [20, 4, 6]}]
    scenario = make_scenario([evse()], steps=steps, noise_a=0.5)
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 6)])})
    for t in (0.0, 7.3, 19.9):
        assert all(
            abs(a - b) <= 0.5 for a, b in zip(model.building_current_a(t), (5, 3, 4), strict=True)
        )
    assert model.building_current_a(20.0)[0] == pytest.approx(20, abs=0.5)
    run_to(model, 21, step_s=0.5)
    assert [(e.kind, e.at_s, e.current_a) for e in model.drain_events()] == [
        ("building_step", 20, (20, 4, 6))
    ]
    model.set_building([1, 1, 1], 22)
    run_to(model, 23)
    assert model.state.building_current_a == pytest.approx((1, 1, 1), abs=0.5)


def test_limit_events_come_from_the_station_with_old_and_new_limit() -> None:
    scenario = make_scenario([evse(ev=ev())])
    station = AlfenStation(max_current_a=32, safe_current_a=6, validity_time_s=10)
    model = SiteModel(scenario, {"cp1": station})
    model.advance(1)
    model.drain_events()
    station.write_setpoint(16, 1.5)
    station.write_setpoint(10, 2.5)
    model.advance(3)
    run_to(model, 13)  # the setpoint written at 2.5 s expires at 12.5 s -> safe current 6 A
    events = [(e.kind, e.at_s, e.old_a, e.new_a) for e in model.drain_events()]
    assert events == [
        ("limit_increase", 1.5, 6, 16),
        ("limit_decrease", 2.5, 16, 10),
        ("limit_decrease", 12.5, 10, 6),
    ]


def test_advance_is_deterministic_and_independent_of_step_size() -> None:
    scenario = make_scenario(
        [evse("cp1", ev=ev(arrival_s=2)), evse("cp2", "L3", ev=ev(arrival_s=4, phases=1))],
        steps=[{"at_s": 0, "current_a": [5, 3, 4]}, {"at_s": 6, "current_a": [9, 3, 4]}],
        noise_a=0.4,
    )

    def offers() -> dict[str, ScheduledOffer]:
        return {"cp1": ScheduledOffer([(0, 6), (5, 13)]), "cp2": ScheduledOffer([(0, 20)])}

    fine, coarse = SiteModel(scenario, offers()), SiteModel(scenario, offers())
    for t in (1.0, 3.0, 5.0, 7.5, 9.0, 12.0):
        run_to(fine, t, step_s=0.1)
        a, b = fine.state, coarse.advance(t)
        assert a.grid_current_a == b.grid_current_a
        assert [e.mode3_state for e in a.evses] == [e.mode3_state for e in b.evses]
    assert fine.drain_events() == coarse.drain_events()


def test_time_cannot_run_backwards() -> None:
    model = SiteModel(make_scenario([evse()]), {"cp1": ScheduledOffer([(0, 6)])})
    model.advance(2)
    with pytest.raises(ValueError):
        model.advance(1)


def test_a_test_can_plug_in_and_unplug_an_ev_at_run_time() -> None:
    scenario = make_scenario([evse(evs=[])])
    model = SiteModel(scenario, {"cp1": ScheduledOffer([(0, 16)])})
    run_to(model, 2.0)
    assert model.state.evse("cp1").mode3_state == "A"
    car = EvSpec(arrival_s=0, departure_s=None, phases=3, max_current_a=16,
                 energy_need_wh=50_000, response_lag_s=0)  # fmt: skip
    model.plug_in("cp1", 2.0, car)
    with pytest.raises(ValueError, match="already plugged in"):
        model.plug_in("cp1", 2.5, car)
    run_to(model, 4.0)
    state = model.state.evse("cp1")
    assert (state.mode3_state, state.ev_present, state.current_a) == ("C2", True, (16, 16, 16))
    model.unplug("cp1", 4.0)
    run_to(model, 4.1)
    assert model.state.evse("cp1").mode3_state == "A"
    with pytest.raises(ValueError, match="no EV plugged in"):
        model.unplug("cp1", 5.0)
    model.plug_in("cp1", 6.0, car)  # a second car starts a fresh visit
    run_to(model, 7.0)
    assert model.state.evse("cp1").session_energy_wh == pytest.approx(16 * 3 * 230 / 3600, 0.1)
