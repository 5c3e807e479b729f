"""End to end, the load-management engine in the real `evsite run` process (about 60 s):
two EVs share fairly, a priority (tier 2) EV is served first, the grid meter goes silent and
every EVSE falls back to its fallback current with a fault raised, and when the meter returns
the currents ramp back up rather than jump."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.rig import read_trace, running_site

pytestmark = [pytest.mark.slow, pytest.mark.hil]

RESPONSE_WINDOW_S = 10.0
FALLBACK_A = 6.0


def _wait_until(sim: Any, t_s: float) -> None:
    while sim.do(sim.site.now_s) < t_s:
        time.sleep(0.2)


def _limits(status: dict[str, Any]) -> dict[str, float]:
    return {c["id"]: c["limit_a"] for c in status["connectors"]}


def test_fair_then_priority_then_fallback_and_recovery(tmp_path: Path) -> None:
    with running_site(tmp_path, "priority") as (sim, ctl):
        # Two tier-0 EVs alone: equal shares of 32 - 1 - 4 = 27 A.
        _wait_until(sim, 9.0)
        before = ctl.status()
        lim = _limits(before)
        assert lim["cp1"] == pytest.approx(lim["cp2"], abs=0.11)
        assert lim["cp1"] >= 12.0
        assert lim["fleet"] == 0.0

        # The fleet EV arrives at 10 s: everything above the minimums goes to tier 2.
        _wait_until(sim, 28.0)
        served = ctl.status()
        lim = _limits(served)
        assert lim["cp1"] == pytest.approx(6.0) and lim["cp2"] == pytest.approx(6.0)
        assert lim["fleet"] >= 14.0, served["connectors"]
        assert served["mode"] == "normal"

        # The meter goes silent at 30 s: hold, then fallback past 10 s, with a fault.
        sim.do(lambda: sim.site.fail_meter(silent=True))
        _wait_until(sim, 42.5)
        stale = ctl.status()
        assert stale["mode"] == "fallback"
        assert set(_limits(stale).values()) == {FALLBACK_A}
        assert any(f["code"] == "meter_stale" for f in stale["faults"]), stale["faults"]
        evses = sim.do(sim.site.snapshot)["evses"]
        assert all(e["setpoint_a"] == pytest.approx(FALLBACK_A) for e in evses.values())

        # Back at 45 s: recovery ramps up from the fallback current.
        sim.do(sim.site.restore_meter)
        _wait_until(sim, 47.0)
        recovered = ctl.status()
        assert recovered["mode"] == "normal"
        assert not any(f["code"] == "meter_stale" for f in recovered["faults"])
        faults = json.loads(ctl.cli("faults", "--json").stdout)
        cleared = [f for f in faults["cleared"] if f["code"] == "meter_stale"]
        assert cleared and cleared[0]["subject"] == "grid_meter" and cleared[0]["cleared_at"]
        _wait_until(sim, 56.0)
    trace = read_trace(tmp_path / "trace.jsonl")

    # The grid held its rating outside the response window after each change.
    excuses = [
        ev["at_s"]
        for line in trace
        for ev in line["events"]
        if ev["kind"] in ("arrival", "departure", "building_step")
        or (ev["kind"].startswith("limit_") and abs(ev["new_a"] - ev["old_a"]) >= 1.0)
    ]
    for line in trace:
        if any(e <= line["t_s"] <= e + RESPONSE_WINDOW_S for e in excuses):
            continue
        assert max(line["grid_current_a"]) <= 32.0 + 1e-6, line

    # After the meter returned, no EVSE jumped: each increase is at most one ramp step (6 A).
    after = [line for line in trace if line["t_s"] >= 45.0]
    for evse in ("cp1", "cp2", "fleet"):
        points = [line["evses"][evse]["setpoint_a"] for line in after]
        steps = [b - a for a, b in itertools.pairwise(points) if a is not None and b]
        assert max(steps, default=0.0) <= 6.0 + 1e-6, (evse, points)
    fleet_after = [line["evses"]["fleet"]["setpoint_a"] for line in after]
    assert max(fleet_after) > FALLBACK_A, "the priority EV ramps up again after recovery"
