"""End to end: a technician's limit override steers the real process, is named as the binding
limit in `evsite status`, and survives a restart of the controller."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.rig import Controller, running_site

pytestmark = [pytest.mark.slow, pytest.mark.hil]


def _wait_until(sim: Any, t_s: float) -> None:
    while sim.do(sim.site.now_s) < t_s:
        time.sleep(0.2)


def _connectors(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in status["connectors"]}


def test_override_lowers_names_itself_and_survives_a_restart(tmp_path: Path) -> None:
    with running_site(tmp_path, "priority") as (sim, ctl):
        _wait_until(sim, 6.0)
        out = ctl.cli("limit", "set", "--site", "--current", "14", "--note", "fuse work")
        assert out.returncode == 0, out.stdout + out.stderr
        time.sleep(2.5)
        conns = _connectors(ctl.status())
        # cp1 and cp2 share the 14 A cap: 7 A each, bound by the override, not the grid.
        for cid in ("cp1", "cp2"):
            assert conns[cid]["limit_a"] == pytest.approx(7.0), conns[cid]
            assert conns[cid]["bound_by"] == "slot override:site"
        setpoints = sim.do(sim.site.snapshot)["evses"]
        assert setpoints["cp1"]["setpoint_a"] == pytest.approx(7.0)

        # A restart: the override is still there and still applied.
        assert ctl.terminate() == 0
        again = Controller(ctl.config, tmp_path / "evsite-2.log")
        try:
            again.wait_socket()
            listed = json.loads(again.cli("limit", "list", "--json").stdout)
            assert any(s["id"] == "site" and s["current_a"] == 14.0 for s in listed["slots"])
            _wait_until(sim, 16.0)
            conns = _connectors(again.status())
            # The fleet EV (tier 2) arrived at 10 s: under the 14 A cap it comes first, and
            # the EVs together stay within the cap on every phase.
            assert sum(conns[c]["limit_a"] for c in ("cp1", "cp2", "fleet")) <= 14.0 + 1e-9
            # 6 + 6 + 6 > 14: one tier-0 EV pauses, the other holds its minimum at the cap.
            tier0 = sorted((conns[c]["limit_a"], conns[c]["bound_by"]) for c in ("cp1", "cp2"))
            assert tier0[0][0] == 0.0 and tier0[1][0] == 6.0, tier0
            assert "override:site" in tier0[1][1], tier0
            assert conns["fleet"]["limit_a"] >= 6.0
            # Cleared: the fleet EV is free to ramp up to its share of the grid again.
            assert again.cli("limit", "clear", "--id", "site").returncode == 0
            time.sleep(8.0)
            conns = _connectors(again.status())
            assert conns["fleet"]["limit_a"] > 8.0, conns["fleet"]
        finally:
            again.terminate()
