"""End to end: charging sessions with the real `evsite run` against the simulated site.

What a site operator would check at the charger: with authorisation required, a car plugged in
does not charge until a session is started (`evsite session start`); `evsite session stop`
takes the EVSE to 0 A and the car stops drawing; unplugging closes the session with the
reason Local and the energy it charged. And across a controller crash (SIGKILL): a car still
plugged in when it comes back continues the same session; one that left meanwhile has its
session ended with PowerLoss and the last meter value the controller had saved.

Cars are plugged in and unplugged by the test at run time (SimulatedSite.plug_in/unplug);
the session records are read from the state file as `evsite report` or a backend would see
them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from hil.scenario import EvSpec, Scenario, scenario_from_dict
from tests.e2e.rig import Controller, SimThread

pytestmark = [pytest.mark.slow, pytest.mark.hil]

T = TypeVar("T")
CAR = EvSpec(
    arrival_s=0, departure_s=None, phases=3, max_current_a=16, energy_need_wh=80_000,
    response_lag_s=1.0,
)  # fmt: skip


def _scenario() -> Scenario:
    evse = {"max_current_a": 32, "safe_current_a": 6, "validity_time_s": 30, "evs": []}
    return scenario_from_dict(
        {
            "name": "sessions",
            "site": {"grid_rating_a": 63, "grid_margin_a": 1},
            "building": {"steps": [{"at_s": 0, "current_a": [3, 3, 3]}]},
            "evses": [{"id": "cp1", **evse}, {"id": "cp2", **evse}],
        }
    )


class Site:
    def __init__(self, tmp: Path, sim: SimThread, config: Path) -> None:
        self.tmp = tmp
        self.sim = sim
        self.config = config
        self.runs = 0
        self.ctl = self.start()

    def start(self) -> Controller:
        self.runs += 1
        ctl = Controller(self.config, self.tmp / f"evsite-{self.runs}.log")
        ctl.wait_socket()
        return ctl

    def evse(self, cid: str) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.sim.do(self.sim.site.snapshot)
        return dict(snapshot["evses"][cid])

    def connector(self, cid: str) -> dict[str, Any]:
        status = self.ctl.status()
        row = next(c for c in status["connectors"] if c["id"] == cid)
        return {**row, **(status.get("sessions") or {}).get(cid, {})}

    def rows(self) -> dict[str, dict[str, Any]]:
        conn = sqlite3.connect(self.tmp / "state" / "evsite.sqlite3")
        conn.row_factory = sqlite3.Row
        try:
            return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM sessions")}
        finally:
            conn.close()

    def wait(self, what: str, check: Callable[[], T | None], timeout_s: float = 15.0) -> T:
        deadline = time.monotonic() + timeout_s
        last: T | None = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.3)
        raise AssertionError(
            f"{what}: not within {timeout_s:g} s\n{self.ctl.log_path.read_text()[-3000:]}"
        )


@contextmanager
def site(tmp: Path, *, free_vend: bool) -> Iterator[Site]:
    sim = SimThread(_scenario(), tmp / "trace.jsonl")
    s: Site | None = None
    try:
        config = sim.site.site_config(state_dir=tmp / "state", runtime_dir=tmp / "run")
        config["sessions"] = {"free_vend": free_vend}
        path = tmp / "site.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        s = Site(tmp, sim, path)
        yield s
    finally:
        if s is not None:
            s.ctl.terminate()
        sim.close()


def test_authorisation_required_start_stop_unplug(tmp_path: Path) -> None:
    with site(tmp_path, free_vend=False) as s:
        s.wait("the controller runs", lambda: s.ctl.status()["mode"] == "normal")
        s.sim.do(lambda: s.sim.site.plug_in("cp1", CAR))

        # Plugged in, not authorised: 0 A written, the car does not draw.
        waiting = s.wait(
            "cp1 held as not authorised",
            lambda: (c := s.connector("cp1"))["bound"] == "not_authorised" and c,
        )
        assert waiting["session"]["phase"] == "pending" and waiting["limit_a"] == 0
        time.sleep(2.0)  # longer than the car's response lag
        ev = s.evse("cp1")
        assert ev["state"] == "B2" and max(ev["ev_current_a"]) == 0, ev
        assert ev["setpoint_a"] == 0

        out = s.ctl.cli("session", "start", "cp1")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("cp1: session ") and "started" in out.stdout
        charging = s.wait("cp1 charges", lambda: max(s.evse("cp1")["ev_current_a"]) >= 6)
        assert charging
        status = s.connector("cp1")
        assert status["session"]["phase"] == "active" and status["limit_a"] >= 6

        time.sleep(3.0)  # let it charge a little
        out = s.ctl.cli("session", "stop", "cp1")
        assert out.returncode == 0, out.stderr
        assert "stopped (Local)" in out.stdout
        s.wait(
            "the EVSE goes to 0 A and the car stops drawing",
            lambda: (e := s.evse("cp1"))["setpoint_a"] == 0 and max(e["ev_current_a"]) == 0,
        )
        stopped = s.connector("cp1")
        assert stopped["bound"] == "stopped" and stopped["session"]["phase"] == "finishing"

        s.sim.do(lambda: s.sim.site.unplug("cp1"))
        s.wait("the session closes", lambda: s.connector("cp1")["session"] is None)
        (row,) = s.rows().values()
        assert (row["phase"], row["stop_reason"], row["stopped_by"], row["method"]) == (
            "closed",
            "Local",
            "cli",
            "technician",
        )
        energy_wh = row["meter_stop_wh"] - row["meter_start_wh"]
        # ~3 s at up to 16 A x 3 x 230 V (11 kW): some Wh, not nothing and not more than it drew.
        assert 1.0 < energy_wh < 11_040 * 8 / 3600, row
        assert row["meter_stop_wh"] <= s.evse("cp1")["energy_wh"] + 0.5


def test_sigkill_car_still_plugged_continues_car_gone_ends_with_power_loss(
    tmp_path: Path,
) -> None:
    with site(tmp_path, free_vend=True) as s:
        s.wait("the controller runs", lambda: s.ctl.status()["mode"] == "normal")
        s.sim.do(lambda: s.sim.site.plug_in("cp1", CAR))
        s.sim.do(lambda: s.sim.site.plug_in("cp2", CAR))
        s.wait(
            "both charge",
            lambda: all(max(s.evse(c)["ev_current_a"]) >= 6 for c in ("cp1", "cp2")),
        )
        ids = {c: s.connector(c)["session"]["id"] for c in ("cp1", "cp2")}
        # A meter value saved while charging (METER_SAVE_PERIOD_S): what a PowerLoss ends with.
        s.wait(
            "a meter value on disk",
            lambda: all(r["meter_last_wh"] > r["meter_start_wh"] for r in s.rows().values()),
        )

        s.ctl.kill()
        on_disk = s.rows()
        assert {r["phase"] for r in on_disk.values()} == {"active"}
        s.sim.do(lambda: s.sim.site.unplug("cp2"))
        time.sleep(1.0)
        s.ctl.terminate()
        s.ctl = s.start()

        s.wait("cp2's session ended", lambda: s.rows()[ids["cp2"]]["phase"] == "closed")
        rows = s.rows()
        gone = rows[ids["cp2"]]
        assert (gone["stop_reason"], gone["stopped_by"]) == ("PowerLoss", "controller")
        assert gone["meter_stop_wh"] == on_disk[ids["cp2"]]["meter_last_wh"]

        cont = s.wait("cp1 charges on", lambda: (c := s.connector("cp1"))["limit_a"] >= 6 and c)
        assert cont["session"]["id"] == ids["cp1"] and cont["session"]["phase"] == "active"
        assert rows[ids["cp1"]]["phase"] == "active"
        assert len(rows) == 2  # no new session for the car that stayed
        assert s.connector("cp2")["session"] is None
