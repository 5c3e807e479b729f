"""hil scenarios: the shipped files load, fit the fallback rule, and bad files are refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hil.scenario import (
    ScenarioError,
    fallback_headroom_a,
    load_scenario,
    parse_phase_rotation,
    scenario_from_dict,
    shipped_scenarios,
)

HIL = Path(__file__).resolve().parents[2] / "hil"


def test_shipped_scenarios_load_and_fallback_currents_fit_the_grid() -> None:
    names = {path.stem for path in shipped_scenarios()}
    assert {"demo", "e2e"} <= names
    for path in shipped_scenarios():
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert min(fallback_headroom_a(scenario)) >= 0, path.name


def test_demo_and_e2e_have_what_the_tests_rely_on() -> None:
    for name in ("demo", "e2e"):
        scenario = load_scenario(name)
        assert len(scenario.evses) == 3
        assert all(e.evs for e in scenario.evses)
        assert any(v.phases == 1 for e in scenario.evses for v in e.evs)
        assert scenario.site.grid_rating_a == 32
        assert len(scenario.building.steps) >= 2
    e2e = load_scenario("e2e")
    times = [v.arrival_s for e in e2e.evses for v in e.evs]
    times += [v.departure_s for e in e2e.evses for v in e.evs if v.departure_s is not None]
    times += [s.at_s for s in e2e.building.steps[1:]]
    assert max(times) <= 20


def test_phase_rotation_parsing() -> None:
    assert parse_phase_rotation("L1L2L3") == (0, 1, 2)
    assert parse_phase_rotation("L2L3L1") == (1, 2, 0)
    assert parse_phase_rotation("L3") == (2,)
    for bad in ("L1L1L2", "L1L2", "L4", "l1l2l3", ""):
        with pytest.raises(ScenarioError):
            parse_phase_rotation(bad)


def _doc(**evse_overrides: object) -> dict[str, object]:
    evse: dict[str, object] = {"id": "cp1", "max_current_a": 32}
    evse.update(evse_overrides)
    return {
        "name": "x",
        "site": {"grid_rating_a": 32},
        "building": {"steps": [{"at_s": 0, "current_a": [1, 2, 3]}]},
        "evses": [evse],
    }


def test_invalid_scenarios_name_the_offending_key() -> None:
    assert scenario_from_dict(_doc()).evses[0].safe_current_a == 6
    cases = {
        "evses[0].phase_rotaton: unknown key": _doc(phase_rotaton="L1L2L3"),
        "evses[0].ev.phases: must be 1 or 3": _doc(
            ev={"arrival_s": 0, "phases": 2, "max_current_a": 16, "energy_need_wh": 1}
        ),
        "evses[0].safe_current_a: above max_current_a": _doc(safe_current_a=40),
        "evses[0].ev.departure_s: must be after arrival_s": _doc(
            ev={"arrival_s": 5, "departure_s": 5, "max_current_a": 16, "energy_need_wh": 1}
        ),
    }
    for message, doc in cases.items():
        with pytest.raises(ScenarioError) as info:
            scenario_from_dict(doc)
        assert message in str(info.value)
    with pytest.raises(ScenarioError, match="no scenario file"):
        load_scenario("no-such-scenario")


def test_hil_imports_nothing_from_the_product() -> None:
    offences = []
    for path in sorted(HIL.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offences += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in ("drivers", "controller")
            ]
    assert not offences
