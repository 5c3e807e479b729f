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


def test_models_lines_and_their_checks() -> None:
    mixed = load_scenario("mixed")
    by_id = {e.id: e for e in mixed.evses}
    assert {e.model for e in mixed.evses} == {
        "heidelberg", "alfen", "bender", "vestel", "schneider", "phoenix_charx",
    }  # fmt: skip
    assert [(e.line, e.unit_id) for e in mixed.evses if e.model == "heidelberg"] == [
        ("rs485-evse", 1), ("rs485-evse", 2), ("rs485-evse", 3),
    ]  # fmt: skip
    assert mixed.line("rs485-evse").parity == "E" and mixed.line("rs485-evse").baudrate == 19200
    assert mixed.meter.line == "rs485-meter"
    assert by_id["bender1"].unit_id == 255 and not by_id["bender1"].has_watchdog
    # an EVSE without a watchdog counts at its cap in the fallback rule
    bare = scenario_from_dict(_doc(model="bender", max_current_a=32, safe_current_a=6))
    capped = scenario_from_dict(
        _doc(model="bender", max_current_a=32, safe_current_a=6, unwatched_cap_a=20)
    )
    assert fallback_headroom_a(bare)[0] - fallback_headroom_a(capped)[0] == 14

    line = [{"id": "bus", "baudrate": 19200, "parity": "E"}]

    def with_lines(**evse: object) -> dict[str, object]:
        return {**_doc(**evse), "lines": line}

    cases = {
        "evses[0].model: one of": _doc(model="tesla"),
        "evses[0].line: a heidelberg sits on an RS-485 line": _doc(model="heidelberg"),
        "evses[0].line: a alfen is reached over Modbus TCP only": with_lines(line="bus"),
        "evses[cp1].line: no line 'bus2'": with_lines(
            model="heidelberg", line="bus2", max_current_a=16
        ),
        "a Heidelberg takes at most 16 A": with_lines(model="heidelberg", line="bus"),
        "watchdog_timeout_s: a bender takes nothing": _doc(model="bender", watchdog_timeout_s=5),
        "watchdog_timeout_s: a alfen takes validity_time_s": _doc(watchdog_timeout_s=5),
        "validity_time_s: Alfen only": _doc(model="vestel", validity_time_s=5),
        "unwatched_cap_a: a vestel has a watchdog": _doc(model="vestel", unwatched_cap_a=5),
        "evses[cp1].unit_id: 255 is not an RS-485 address": with_lines(
            model="heidelberg", line="bus", max_current_a=16, unit_id=255
        ),
        "lines[0].parity: one of N, E, O": {**_doc(), "lines": [{"id": "b", "parity": "X"}]},
    }
    for message, doc in cases.items():
        with pytest.raises(ScenarioError) as info:
            scenario_from_dict(doc)
        assert message in str(info.value), (message, str(info.value))
    two = with_lines(model="heidelberg", line="bus", max_current_a=16)
    assert isinstance(two["evses"], list)
    two["evses"] = [*two["evses"], {**two["evses"][0], "id": "cp2"}]
    with pytest.raises(ScenarioError, match="unit_id: 1 on line bus is taken by evses"):
        scenario_from_dict(two)
