"""End to end: the EVSEs' own watchdogs while the real controller runs, and after SIGKILL.

Two Heidelbergs on an RS-485 line (19200 8E1; watchdog 6000 ms, programmed by evsite over the
box's factory 15 s), an Alfen (validity time 6 s, a station setting), a Vestel (failsafe
timeout 6 s, programmed; alive register) and a Schneider (life bit, 6 s) over TCP, every EV
charging well above the 6 A fallback current. While the controller runs (more than three
watchdog periods) no EVSE may fall into its failsafe; once it is killed with SIGKILL (no
shutdown path, nothing written) every one of them must apply its fallback current within its
timeout, plus a small margin for this test's polling.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hil.scenario import Scenario, scenario_from_dict
from tests.e2e.rig import running_site

pytestmark = [
    pytest.mark.slow,
    pytest.mark.hil,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys"),
]

WATCHDOG_S = 6.0
FALLBACK_A = 6.0
RUN_S = 3 * WATCHDOG_S + 2.0  # more than three watchdog periods after the first write
MARGIN_S = 0.5  # this test samples the simulator every 0.1 s from another thread


def _scenario() -> Scenario:
    def ev(arrival_s: float) -> dict[str, Any]:
        return {"arrival_s": arrival_s, "phases": 3, "max_current_a": 32,
                "energy_need_wh": 80000, "response_lag_s": 1}  # fmt: skip

    common = {"safe_current_a": FALLBACK_A, "ev": ev(0.5)}
    return scenario_from_dict(
        {
            "name": "watchdog",
            "site": {"grid_rating_a": 100, "grid_margin_a": 1},
            "building": {"steps": [{"at_s": 0, "current_a": [3, 3, 3]}]},
            "lines": [{"id": "bus", "baudrate": 19200, "parity": "E"}],
            "evses": [
                {
                    "id": "hd1",
                    "model": "heidelberg",
                    "line": "bus",
                    "unit_id": 1,
                    "max_current_a": 16,
                    "watchdog_timeout_s": WATCHDOG_S,
                    **common,
                },
                {
                    "id": "hd2",
                    "model": "heidelberg",
                    "line": "bus",
                    "unit_id": 2,
                    "max_current_a": 16,
                    "watchdog_timeout_s": WATCHDOG_S,
                    **common,
                },
                {
                    "id": "alfen",
                    "model": "alfen",
                    "max_current_a": 32,
                    "validity_time_s": WATCHDOG_S,
                    **common,
                },
                {
                    "id": "vestel",
                    "model": "vestel",
                    "max_current_a": 32,
                    "watchdog_timeout_s": WATCHDOG_S,
                    **common,
                },
                {
                    "id": "schneider",
                    "model": "schneider",
                    "max_current_a": 32,
                    "watchdog_timeout_s": WATCHDOG_S,
                    **common,
                },
            ],
        }
    )


def test_every_watchdog_is_fed_while_running_and_bites_after_sigkill(tmp_path: Path) -> None:
    scenario = _scenario()
    ids = [e.id for e in scenario.evses]
    with running_site(tmp_path, scenario, pty_master=True) as (sim, ctl):
        # 1. Running: wait for the first writes, then watch for 3+ watchdog periods.
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            snap = sim.do(sim.site.snapshot)
            if all(snap["evses"][i]["setpoint_a"] is not None for i in ids):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the controller wrote no limit to every EVSE: {snap['evses']}")
        start = snap["t_s"]
        expired_while_running = []
        while snap["t_s"] < start + RUN_S:
            snap = sim.do(sim.site.snapshot)
            expired_while_running += [
                (snap["t_s"], i) for i in ids if snap["evses"][i]["watchdog_expired"]
            ]
            time.sleep(0.1)
        running = snap
        cps = {i: sim.site.boxes[i].cp for i in ("hd1", "hd2", "vestel")}
        boxes = {i: (cp.watchdog_timeout_s, cp.failsafe_current_a) for i, cp in cps.items()}

        # 2. SIGKILL, then every EVSE must fall back within its timeout.
        killed_at = sim.do(sim.site.now_s)
        ctl.kill()
        fell_back: dict[str, tuple[float, dict[str, Any]]] = {}
        while len(fell_back) < len(ids) and sim.do(sim.site.now_s) < killed_at + 3 * WATCHDOG_S:
            snap = sim.do(sim.site.snapshot)
            for i in ids:
                if i not in fell_back and snap["evses"][i]["watchdog_expired"]:
                    fell_back[i] = (snap["t_s"], snap["evses"][i])
            time.sleep(0.1)
        last_s = max((at for at, _ in fell_back.values()), default=killed_at)
        while sim.do(sim.site.now_s) < last_s + 1.5:  # the EVs' response lag is 1 s
            time.sleep(0.1)
        settled = sim.do(sim.site.snapshot)

    assert not expired_while_running, expired_while_running[:5]
    for i in ids:
        ev = running["evses"][i]
        assert ev["state"] == "C2" and ev["applied_limit_a"] > FALLBACK_A + 1, (i, ev)
    # evsite programmed the boxes' watchdog and failsafe current over their factory values
    assert boxes == {i: (WATCHDOG_S, FALLBACK_A) for i in ("hd1", "hd2", "vestel")}

    assert set(fell_back) == set(ids), f"never fell back: {set(ids) - set(fell_back)}"
    for i, (at_s, ev) in fell_back.items():
        assert at_s - killed_at <= WATCHDOG_S + MARGIN_S, (i, at_s - killed_at)
        assert ev["applied_limit_a"] == pytest.approx(FALLBACK_A), (i, ev)
    # and the EVs follow (response lag 1 s)
    for i in ids:
        assert max(settled["evses"][i]["ev_current_a"]) <= FALLBACK_A + 1e-6, (i, settled)
