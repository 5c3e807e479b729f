"""hil SimulatedSite on real buses: models on an RS-485 pty line and on TCP, and the config.

A scenario may put Heidelbergs (and the grid meter) on RS-485 lines and the other models on
loopback TCP; ``site_config()`` writes the matching evsite config (the serial port is the pty),
and the drivers built from that config drive the site's physics. A controller in another
process opens the pty at even parity through ``python -m hil.ptymaster``, and the line checks
the settings it asked for.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_config_text
from controller.core.errors import DeviceUnavailable
from controller.core.model import EvseState
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.registry import build_evse, build_meter
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.rtu import LineSettings, RtuLine
from hil.scenario import scenario_from_dict
from hil.site import SimulatedSite

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")

ROOT = Path(__file__).resolve().parents[2]


def test_mixed_scenario_config_names_every_link(tmp_path: Path) -> None:
    async def main() -> None:
        async with SimulatedSite("mixed") as site:
            config = site.site_config(state_dir=tmp_path, runtime_dir=tmp_path)
            ports, lines = site.ports, site.serial_ports
            snap = site.snapshot()
        assert set(ports) == {"alfen1", "bender1", "vestel1", "schneider1", "charx1"}
        meter = config["meters"][0]
        assert meter["transport"] == {
            "type": "serial",
            "port": lines["rs485-meter"],
            "baudrate": 9600,
            "parity": "N",
            "stopbits": 1,
        }
        evses = {e["id"]: e for e in config["evses"]}
        assert evses["hd2"]["transport"]["port"] == lines["rs485-evse"]
        assert evses["hd2"]["transport"]["parity"] == "E" and evses["hd2"]["unit_id"] == 2
        assert evses["hd2"]["driver"] == "heidelberg_ec"
        assert evses["hd2"]["options"] == {"watchdog_timeout_s": 15}
        assert evses["vestel1"]["options"] == {"failsafe_timeout_s": 20}
        assert evses["schneider1"]["options"] == {"life_bit_timeout_s": 6}
        assert evses["alfen1"]["options"] == {"validity_time_s": 30}
        assert evses["bender1"]["unit_id"] == 255 and evses["bender1"]["unwatched_cap_a"] == 10
        assert evses["charx1"]["driver"] == "phoenix_charx" and "options" not in evses["charx1"]
        # the controller accepts it as it is
        import yaml

        loaded = load_config_text(yaml.safe_dump(config))
        assert len(loaded.site.connectors) == 8
        box = snap["evses"]["hd1"]
        assert box["model"] == "heidelberg" and box["watchdog_timeout_s"] == 15.0
        assert box["setpoint_a"] is None and box["watchdog_expired"] is False
        assert snap["evses"]["alfen1"]["model"] == "alfen"

    asyncio.run(main())


def _small() -> dict[str, Any]:
    ev = {"arrival_s": 0, "phases": 3, "max_current_a": 16, "energy_need_wh": 9000,
          "response_lag_s": 0.2}  # fmt: skip
    return {
        "name": "small",
        "site": {"grid_rating_a": 63},
        "building": {"steps": [{"at_s": 0, "current_a": [2, 2, 2]}]},
        "lines": [
            {"id": "evse-bus", "baudrate": 19200, "parity": "E", "turnaround_s": 0.002},
            {"id": "meter-bus", "baudrate": 9600, "parity": "N"},
        ],
        "grid_meter": {"line": "meter-bus", "timeout_s": 0.3},
        "evses": [
            {
                "id": "hd1",
                "model": "heidelberg",
                "line": "evse-bus",
                "max_current_a": 16,
                "safe_current_a": 6,
                "watchdog_timeout_s": 5,
                "ev": ev,
            },
            {
                "id": "hd2",
                "model": "heidelberg",
                "line": "evse-bus",
                "unit_id": 2,
                "phase_rotation": "L2",
                "max_current_a": 16,
                "safe_current_a": 6,
                "ev": ev,
            },
            {"id": "ve1", "model": "vestel", "max_current_a": 32, "safe_current_a": 6, "ev": ev},
        ],
    }


def test_drivers_built_from_the_config_drive_the_physics(tmp_path: Path) -> None:
    async def main() -> None:
        import yaml

        async with SimulatedSite(scenario_from_dict(_small())) as site:
            config = site.site_config(state_dir=tmp_path, runtime_dir=tmp_path)
            loaded = load_config_text(yaml.safe_dump(config)).site
            pool = BusPool()
            meter = build_meter(loaded.meters[0], pool=pool)
            evses = {c.id: build_evse(c.evse, pool=pool) for c in loaded.connectors}
            for cid, evse in evses.items():
                assert isinstance(evse, RegisterMapEvse)
                await evse.setup(
                    next(c for c in loaded.connectors if c.id == cid).fallback_current_a
                )
            await evses["hd1"].write_limit(10.0)
            await evses["hd2"].write_limit(8.0)
            await evses["ve1"].write_limit(12.0)
            await asyncio.sleep(0.6)  # the EVs follow after 0.2 s
            readings = {cid: await e.read(site.now_s()) for cid, e in evses.items()}
            grid = await meter.read(site.now_s())
            snap = site.snapshot()
            hd1 = site.boxes["hd1"].cp
            programmed = (hd1.watchdog_timeout_s, hd1.failsafe_current_a)
            site.fail_meter(silent=True)
            with pytest.raises(DeviceUnavailable):
                await meter.read(site.now_s())
            site.restore_meter()
            assert (await meter.read(site.now_s())).current_a == pytest.approx(
                snap["grid_current_a"], abs=0.5
            )
            line = site.lines["evse-bus"]
            mismatches = line.counters.line_mismatch
            await meter.close()
            for evse in evses.values():
                await evse.close()
        assert programmed == (5.0, 6.0)
        assert readings["hd1"].state is EvseState.C
        assert readings["hd1"].current_a == pytest.approx((10.0, 10.0, 10.0))
        assert readings["hd2"].current_a[0] == pytest.approx(8.0)
        assert readings["ve1"].current_a == pytest.approx((12.0, 12.0, 12.0))
        assert snap["evses"]["hd2"]["applied_limit_a"] == 8.0
        assert snap["evses"]["ve1"]["ev_current_a"] == [12.0, 12.0, 12.0]
        # building 2 A + hd1 10 + ve1 12 on every phase, hd2 (1-phase on grid L2) 8 on L2
        assert grid.current_a == pytest.approx((24.0, 32.0, 24.0), abs=0.2)
        assert mismatches == 0

    asyncio.run(main())


def _client(port: str, parity: str, *, shim: bool) -> str:
    client = "tests.hil.pty_client"
    launcher = ["-m", "hil.ptymaster", client] if shim else ["-m", client]
    out = subprocess.run(
        [sys.executable, *launcher, port, "19200", parity, "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_master_in_another_process_is_checked_in_full_through_ptymaster() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    line = RtuLine([HeidelbergBox().device], line=LineSettings(baudrate=19200, parity="E"))

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    call(line.start())
    try:
        first = _client(line.port, "E", shim=False)
        again = _client(line.port, "E", shim=False)
        even = _client(line.port, "E", shim=True)
        none = _client(line.port, "N", shim=True)
        mismatches = line.counters.line_mismatch
    finally:
        call(line.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    # Linux drops PARENB on a pty (the line cannot tell even from none), and refuses it when
    # nothing else changes: the second open (or a reconnect) at 8E1 fails; a USB adapter would not
    assert first.startswith("reply 010402")
    assert again.startswith("cannot open")
    assert even.startswith("reply 010402")  # unit 1, FC04, 2 bytes: state 2 (A1)
    # an 8N1 master on an 8E1 line: the box sees parity errors and stays silent
    assert none == "silence" and mismatches == 1
