"""hil SimulatedSite: ports, config, live physics behind the servers, hooks, trace."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from hil.scenario import load_scenario
from hil.site import SimulatedSite
from tests.hil.builders import ev, evse, make_scenario


def f32(regs: Sequence[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *regs))[0]
    return value


def f32_regs(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def test_site_serves_meter_and_sockets_driven_by_physics(tmp_path: Path) -> None:
    scenario = make_scenario(
        [
            evse("cp1", "L1L2L3", ev=ev(arrival_s=0, response_lag_s=0.2)),
            evse("cp2", "L2", ev=ev(phases=1, response_lag_s=0.2), validity_time_s=1.5),
        ],
        building=[[5, 3, 4]],
    )
    trace = tmp_path / "trace.jsonl"

    async def main() -> None:
        async with SimulatedSite(scenario, trace_path=trace) as site:
            ports = site.ports
            assert set(ports) == {"grid_meter", "cp1", "cp2"}
            assert len(set(ports.values())) == 3
            meter = AsyncModbusTcpClient(
                "127.0.0.1", port=ports["grid_meter"], timeout=1, retries=0
            )
            cp2 = AsyncModbusTcpClient("127.0.0.1", port=ports["cp2"], timeout=1, retries=0)
            await meter.connect()
            await cp2.connect()
            try:
                await asyncio.sleep(0.5)  # past the EVs' lag: both draw the safe current (6 A)
                rr = await meter.read_input_registers(0x06, count=6, device_id=1)
                grid = [f32(rr.registers[i : i + 2]) for i in (0, 2, 4)]
                assert grid == pytest.approx([5 + 6, 3 + 6 + 6, 4 + 6])
                state = await cp2.read_holding_registers(1201, count=5, device_id=1)
                assert state.registers[0] == 0x4332  # "C2"

                assert not (await cp2.write_registers(1210, f32_regs(16), device_id=1)).isError()
                await asyncio.sleep(0.45)  # the lag has passed, the setpoint (1.5 s) still holds
                rr = await cp2.read_holding_registers(320, count=2, device_id=1)
                assert f32(rr.registers) == 16
                assert site.snapshot()["evses"]["cp2"]["applied_limit_a"] == 16
                rr = await meter.read_input_registers(0x08, count=2, device_id=1)
                assert f32(rr.registers) == pytest.approx(3 + 6 + 16)
                await asyncio.sleep(1.2)  # validity expired: back to the safe current
                rr = await cp2.read_holding_registers(1206, count=2, device_id=1)
                assert f32(rr.registers) == 6

                site.set_building([20, 3, 4])
                await asyncio.sleep(0.15)
                snap = site.snapshot()
                assert snap["building_current_a"] == [20, 3, 4]
                assert snap["grid_current_a"][0] == pytest.approx(26)

                site.fail_meter(silent=True)
                with pytest.raises(ModbusIOException):
                    await meter.read_input_registers(0x06, count=2, device_id=1)
                site.restore_meter()
            finally:
                meter.close()
                cp2.close()

    asyncio.run(main())
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) >= 4
    events = [e for line in lines for e in line["events"]]
    kinds = [e["kind"] for e in events]
    assert "limit_increase" in kinds and "limit_decrease" in kinds and "building_step" in kinds
    assert "meter_silent" in kinds and "meter_restored" in kinds
    increase = next(e for e in events if e["kind"] == "limit_increase")
    assert (increase["evse"], increase["old_a"], increase["new_a"]) == ("cp2", 6, 16)
    first = lines[0]
    assert {"t_s", "grid_current_a", "building_current_a", "grid_rating_a", "evses"} <= set(first)
    assert {"state", "setpoint_a", "applied_limit_a", "ev_current_a", "energy_wh"} <= set(
        first["evses"]["cp1"]
    )


def test_site_config_points_at_the_ports(tmp_path: Path) -> None:
    async def main() -> None:
        site = SimulatedSite("demo")
        with pytest.raises(RuntimeError):
            site.site_config(state_dir=tmp_path, runtime_dir=tmp_path)
        await site.start()
        try:
            config = site.site_config(state_dir=tmp_path / "s", runtime_dir=tmp_path / "r")
            again = yaml.safe_load(yaml.safe_dump(config))
            assert again == config
            assert config["grid"] == {"rating_a": 32, "margin_a": 1, "meter": "grid_meter"}
            assert config["meters"][0]["transport"]["port"] == site.ports["grid_meter"]
            assert config["meters"][0]["driver"] == "eastron_sdm630"
            by_id = {e["id"]: e for e in config["evses"]}
            assert set(by_id) == {"cp1", "cp2", "cp3"}
            assert by_id["cp2"]["transport"] == {
                "type": "tcp",
                "host": "127.0.0.1",
                "port": site.ports["cp2"],
            }
            assert by_id["cp2"]["phase_rotation"] == "L2L3L1"
            assert by_id["cp1"]["fallback_current_a"] == 6
            assert by_id["cp1"]["options"] == {"validity_time_s": 60}
            assert config["service"]["state_dir"] == str(tmp_path / "s")
            assert config["control"] == {"tick_s": 1, "meter_stale_s": 3, "fallback_after_s": 10}
        finally:
            await site.stop()

    asyncio.run(main())


def test_fixed_port_base_gives_consecutive_ports() -> None:
    async def main() -> None:
        scenario = load_scenario("e2e")
        probe = SimulatedSite(scenario)
        await probe.start()
        base = probe.ports["grid_meter"]
        await probe.stop()  # a port the OS just handed out is very likely free again
        site = SimulatedSite(scenario, port_base=base)
        try:
            await site.start()
        except OSError:
            pytest.skip(f"port range from {base} is in use")
        try:
            assert site.ports == {
                "grid_meter": base,
                "cp1": base + 1,
                "cp2": base + 2,
                "cp3": base + 3,
            }
        finally:
            await site.stop()

    asyncio.run(main())
