"""Small scenarios built in code for the hil tests."""

from __future__ import annotations

from typing import Any

from hil.scenario import Scenario, scenario_from_dict


def make_scenario(
    evses: list[dict[str, Any]],
    *,
    building: list[list[float]] | None = None,
    steps: list[dict[str, Any]] | None = None,
    noise_a: float = 0.0,
    rating_a: float = 32.0,
) -> Scenario:
    """A scenario with a constant (or stepped) building load and the given EVSEs."""
    if steps is None:
        steps = [{"at_s": 0, "current_a": (building or [[0, 0, 0]])[0]}]
    return scenario_from_dict(
        {
            "name": "t",
            "site": {"id": "t", "grid_rating_a": rating_a, "grid_margin_a": 1},
            "building": {"steps": steps, "noise_a": noise_a, "seed": 3},
            "evses": evses,
        }
    )


def ev(**overrides: Any) -> dict[str, Any]:
    """An EV visit with sensible defaults."""
    base: dict[str, Any] = {
        "arrival_s": 0,
        "departure_s": None,
        "phases": 3,
        "max_current_a": 16,
        "energy_need_wh": 100000,
        "response_lag_s": 3,
    }
    base.update(overrides)
    return base


def evse(evse_id: str = "cp1", rotation: str = "L1L2L3", **overrides: Any) -> dict[str, Any]:
    """An EVSE entry with sensible defaults."""
    base: dict[str, Any] = {
        "id": evse_id,
        "phase_rotation": rotation,
        "max_current_a": 32,
        "safe_current_a": 6,
        "validity_time_s": 60,
    }
    base.update(overrides)
    return base
