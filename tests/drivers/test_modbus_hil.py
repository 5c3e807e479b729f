"""Drivers against the hil simulators (written on their own from the reference), via the registry.

The simulated SDM630 and Alfen sockets never see the drivers' maps, so these tests check the
maps and the codec against an independent reading of reference/modbus.md, with behaviour:
validity time, safe current, meter faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from controller.core.errors import DeviceError, DeviceUnavailable
from controller.core.model import EvseState
from controller.core.site import DeviceSpec, TcpTransport
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.registry import build_evse, build_meter

hil_site = pytest.importorskip("hil.site")
hil_scenario = pytest.importorskip("hil.scenario")

pytestmark = pytest.mark.hil


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def scenario(*, ev: dict[str, Any] | None = None, validity_time_s: float = 60.0) -> Any:
    evse: dict[str, Any] = {
        "id": "cp1",
        "phase_rotation": "L1L2L3",
        "max_current_a": 32,
        "safe_current_a": 6,
        "validity_time_s": validity_time_s,
    }
    if ev is not None:
        evse["ev"] = ev
    return hil_scenario.scenario_from_dict(
        {
            "name": "drivers",
            "site": {"id": "drivers", "grid_rating_a": 63, "grid_margin_a": 1},
            "building": {"steps": [{"at_s": 0, "current_a": [5, 3, 4]}], "noise_a": 0, "seed": 1},
            "evses": [evse],
        }
    )


def specs(site: Any, *, timeout_s: float = 0.3) -> tuple[DeviceSpec, DeviceSpec]:
    s = site.scenario
    meter = DeviceSpec(
        id="grid_meter",
        driver="eastron_sdm630",
        transport=TcpTransport(host=site.host, port=site.ports["grid_meter"]),
        unit_id=s.meter.unit_id,
        timeout_s=timeout_s,
    )
    e = s.evses[0]
    evse = DeviceSpec(
        id=e.id,
        driver="alfen_ng9xx",
        transport=TcpTransport(host=site.host, port=site.ports[e.id]),
        unit_id=e.unit_id,
        timeout_s=timeout_s,
        options={"validity_time_s": e.validity_time_s},
    )
    return meter, evse


def test_meter_matches_the_simulated_grid() -> None:
    async def main() -> None:
        pool = BusPool()
        async with hil_site.SimulatedSite(scenario()) as site:
            meter_spec, _ = specs(site)
            meter = build_meter(meter_spec, pool=pool)
            await asyncio.sleep(0.3)
            r = await meter.read(now_s=1.0)
            snap = site.snapshot()
            await meter.close()
        assert r.current_a == pytest.approx((5.0, 3.0, 4.0), abs=0.01)
        assert r.current_a == pytest.approx(tuple(snap["grid_current_a"]), abs=0.01)
        assert all(200 < v < 260 for v in r.voltage_v)
        assert r.power_w == pytest.approx(
            sum(i * v for i, v in zip(r.current_a, r.voltage_v, strict=True)), rel=0.05
        )
        assert r.energy_import_wh >= 0.0
        assert len(pool) == 0

    run(main)


def test_alfen_without_ev_setup_write_and_read_back() -> None:
    async def main() -> None:
        pool = BusPool()
        async with hil_site.SimulatedSite(scenario()) as site:
            _, evse_spec = specs(site)
            evse = build_evse(evse_spec, pool=pool)
            assert isinstance(evse, RegisterMapEvse)
            first = await evse.read(now_s=0.0)
            await evse.setup(6.0)
            assert evse.setup_warnings == []
            await evse.setup(8.0)
            assert evse.setup_warnings and "6 A" in evse.setup_warnings[0]
            await evse.write_limit(10.0)
            after = await evse.read(now_s=1.0)
            await asyncio.sleep(0.25)  # the snapshot is the physics' state, stepped every 0.1 s
            snap = site.snapshot()["evses"]["cp1"]
            remaining = evse.last_values["validity_remaining_s"]
            await evse.write_limit(0.0)
            await asyncio.sleep(0.25)
            paused = site.snapshot()["evses"]["cp1"]
            await evse.close()
        assert first.state is EvseState.A
        assert first.applied_limit_a == pytest.approx(6.0)  # safe current before any write
        assert snap["setpoint_a"] == pytest.approx(10.0) and snap["setpoint_in_force"]
        assert after.applied_limit_a == pytest.approx(10.0)
        assert 58 <= float(remaining) <= 60
        assert paused["setpoint_a"] == pytest.approx(0.0)
        assert evse.watchdog_refresh_s == pytest.approx(60 * 0.333)

    run(main)


def test_alfen_with_ev_charging_follows_the_limit() -> None:
    ev = {
        "arrival_s": 0,
        "departure_s": None,
        "phases": 3,
        "max_current_a": 16,
        "energy_need_wh": 100000,
        "response_lag_s": 0.2,
    }

    async def main() -> None:
        async with hil_site.SimulatedSite(scenario(ev=ev)) as site:
            _, evse_spec = specs(site)
            evse = build_evse(evse_spec, pool=BusPool())
            await evse.write_limit(12.0)
            deadline = time.monotonic() + 5.0
            while True:
                r = await evse.read(now_s=0.0)
                if r.state is EvseState.C and min(r.current_a) > 11.0:
                    break
                assert time.monotonic() < deadline, r
                await asyncio.sleep(0.1)
            snap = site.snapshot()["evses"]["cp1"]
            await evse.close()
        assert EvseState(snap["state"][0]) is EvseState.C
        assert r.current_a == pytest.approx((12.0, 12.0, 12.0), abs=0.5)
        assert r.power_w > 0 and r.energy_wh >= 0

    run(main)


def test_alfen_falls_back_to_safe_current_when_validity_expires() -> None:
    async def main() -> None:
        async with hil_site.SimulatedSite(scenario(validity_time_s=1.0)) as site:
            _, evse_spec = specs(site)
            evse = build_evse(evse_spec, pool=BusPool())
            assert evse.watchdog_refresh_s == pytest.approx(0.333)
            await evse.write_limit(16.0)
            in_force = await evse.read(now_s=0.0)
            await asyncio.sleep(1.3)
            expired = await evse.read(now_s=1.3)
            await evse.close()
        assert in_force.applied_limit_a == pytest.approx(16.0)
        assert expired.applied_limit_a == pytest.approx(6.0)

    run(main)


def test_meter_faults_map_to_core_errors() -> None:
    async def main() -> None:
        async with hil_site.SimulatedSite(scenario()) as site:
            meter_spec, _ = specs(site, timeout_s=0.2)
            meter = build_meter(meter_spec, pool=BusPool())
            await meter.read(now_s=0.0)
            site.fail_meter(silent=True)
            t0 = time.monotonic()
            with pytest.raises(DeviceUnavailable):
                await meter.read(now_s=1.0)
            assert time.monotonic() - t0 <= 0.2 * 1.5 + 0.2  # slack for a busy CI host
            site.fail_meter(silent=False)  # exception 4 (server device failure)
            with pytest.raises(DeviceError):
                await meter.read(now_s=2.0)
            site.restore_meter()
            deadline = time.monotonic() + 3.0
            while True:
                try:
                    r = await meter.read(now_s=3.0)
                    break
                except DeviceUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            await meter.close()
        assert r.current_a == pytest.approx((5.0, 3.0, 4.0), abs=0.01)

    run(main)
