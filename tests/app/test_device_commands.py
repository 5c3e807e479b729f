"""The service's `bus_scan` and `device_read` commands, and the gate that keeps them between ticks.

The service's devices are real drivers on a paced RS-485 pty (two Heidelbergs at 19200 8E1)
and loopback TCP; a ticker stands in for the control loop (it takes the bus for its reads and
then tells the gate the tick is over). Checked: a scan goes through the service's own client
of the line and never overlaps a tick; a busy line, a second scan and other line settings are
refused; a line the service does not use is opened for the scan and closed after it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.app.control_socket import ControlSocket
from controller.app.device_commands import TickGate, device_commands
from controller.config import load_config_text
from drivers.modbus.bus import BusPool
from drivers.registry import build_evse, build_meter
from hil.devices.bender import BenderController
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.modbus import TcpServer, quiet_pymodbus
from hil.devices.rtu import LineSettings, RtuLine
from hil.devices.sdm630 import sdm630_device

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")

TICK_S = 0.3


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_gate_lets_a_request_through_only_if_it_ends_before_the_next_tick() -> None:
    async def main() -> None:
        clock = FakeClock()
        gate = TickGate(tick_s=1.0, clock=clock, guard_s=0.0)
        assert not gate.fits(0.1)  # no tick yet: the next one could start any moment
        gate.tick_done(tick_ms=200.0)  # the tick ran 99.8 .. 100.0; the next starts at 100.8
        assert gate.fits(0.8) and not gate.fits(0.81)
        await gate.window(0.5)  # returns at once
        clock.t = 100.5
        waiter = asyncio.create_task(gate.window(0.5))  # 100.5 + 0.5 > 100.8: wait a tick
        await asyncio.sleep(0.01)
        assert not waiter.done()
        clock.t = 101.0
        gate.tick_done(tick_ms=200.0)  # next tick at 101.8
        await asyncio.wait_for(waiter, 1.0)
        # a request longer than any window goes right after a tick, after three misses
        waiter = asyncio.create_task(gate.window(5.0))
        for _ in range(3):
            await asyncio.sleep(0.01)
            assert not waiter.done()
            gate.tick_done(tick_ms=200.0)
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(main())


SITE = """\
site: {{id: t, timezone: Europe/Berlin}}
grid: {{rating_a: 100, worst_case_non_ev_a: 10, meter: grid_meter}}
meters:
  - {{id: grid_meter, driver: eastron_sdm630, transport: {{type: tcp, host: 127.0.0.1,
      port: {meter_port}}}, timeout_s: 0.3}}
evses:
  - {{id: hd1, driver: heidelberg_ec, unit_id: 1, max_current_a: 16, timeout_s: 0.3,
      transport: {{type: serial, port: {port}, baudrate: 19200, parity: E}}}}
  - {{id: hd2, driver: heidelberg_ec, unit_id: 2, max_current_a: 16, timeout_s: 0.3,
      transport: {{type: serial, port: {port}, baudrate: 19200, parity: E}}}}
"""


@asynccontextmanager
async def service(tmp_path: Path, max_tick_units: int = 4) -> AsyncIterator[tuple[Any, ...]]:
    quiet_pymodbus()
    boxes = [HeidelbergBox(unit_id=u) for u in (1, 2)]
    line = RtuLine([b.device for b in boxes], line=LineSettings(baudrate=19200, parity="E"))
    meter = TcpServer([sdm630_device()])
    await line.start()
    await meter.start()
    site = load_config_text(SITE.format(port=line.port, meter_port=meter.port)).site
    pool = BusPool()
    meters = {m.id: build_meter(m, pool=pool) for m in site.meters}
    evses = {c.id: build_evse(c.evse, pool=pool) for c in site.connectors}
    gate = TickGate(tick_s=TICK_S)
    ticks: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()

    async def ticker() -> None:
        # the control loop: read everything, then tell the gate; one tick every TICK_S
        while True:
            start = loop.time()
            await asyncio.gather(
                *(m.read(start) for m in meters.values()), *(e.read(start) for e in evses.values())
            )
            end = loop.time()
            ticks.append((start, end))
            gate.tick_done((end - start) * 1000.0)
            await asyncio.sleep(max(0.0, start + TICK_S - loop.time()))

    task = asyncio.create_task(ticker())
    sock = ControlSocket(
        tmp_path / "evsite.sock",
        status=dict,
        commands=device_commands(
            site=site,
            meters=meters,
            evses=evses,
            pool=pool,
            gate=gate,
            max_tick_units=max_tick_units,
        ),
    )

    async def ask(cmd: str, **args: Any) -> dict[str, Any]:
        answer = await sock._answer(json.dumps({"cmd": cmd, **args}).encode())
        assert json.loads(json.dumps(answer)) == answer
        return answer

    try:
        yield ask, line, pool, ticks
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for meter_ in meters.values():
            await meter_.close()
        for evse in evses.values():
            await evse.close()
        await line.stop()
        await meter.stop()


def _serial(line: RtuLine, **extra: Any) -> dict[str, Any]:
    return {"port": line.port, "baudrate": 19200, "parity": "E", **extra}


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def overlaps(a: tuple[float, float], b: tuple[float, float], slack_s: float = 0.005) -> bool:
    return a[0] < b[1] - slack_s and b[0] < a[1] - slack_s


def test_scan_goes_through_the_services_client_between_ticks(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(tmp_path) as (ask, line, pool, ticks):
            await asyncio.sleep(2 * TICK_S)
            client = next(c for c in pool.buses() if c.describe().startswith(line.port))
            loop = asyncio.get_running_loop()
            probes: list[tuple[float, float]] = []
            read = client.read_registers

            async def traced(*args: Any, **kwargs: Any) -> list[int]:
                start = loop.time()
                try:
                    words: list[int] = await read(*args, **kwargs)
                    return words
                finally:
                    if kwargs.get("timeout_s") is not None:  # the scanner's probes
                        probes.append((start, loop.time()))

            client.read_registers = traced
            before = client.counters.transactions
            frames_before = line.counters.frames
            first_tick = len(ticks)
            answer = await ask("bus_scan", **_serial(line, units=[1, 2, 3, 4]))
            during = ticks[first_tick:]
            after = client.counters.transactions
        assert answer["ok"], answer
        assert answer["via"] == "service" and answer["shared_with"] == ["hd1", "hd2"]
        scan = answer["scan"]
        assert {u["unit_id"]: u["identified"] for u in scan["found"]} == {
            1: "heidelberg_ec",
            2: "heidelberg_ec",
        }
        # every probe went through the service's own client of the line (one owner)
        assert after - before >= scan["requests"]
        assert line.counters.frames - frames_before >= scan["requests"]
        # between ticks: no probe overlapped a tick, and the scan spanned several ticks
        assert len(probes) == scan["requests"] and len(during) >= 2
        clashes = [(p, t) for p in probes for t in during if overlaps(p, t)]
        assert not clashes, clashes

    run(main)


def test_busy_lines_other_settings_and_a_second_scan_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(tmp_path, max_tick_units=1) as (ask, line, _pool, _ticks):
            busy = await ask("bus_scan", **_serial(line, units=[5]))
            forced = await ask("bus_scan", **_serial(line, units=[5], force=True))
            retune = await ask("bus_scan", port=line.port, baudrate=9600, parity="N", units=[1])
            first = asyncio.create_task(ask("bus_scan", **_serial(line, units=[5, 6], force=True)))
            await asyncio.sleep(0.05)
            second = await ask("bus_scan", **_serial(line, units=[7], force=True))
            await first
            missing = await ask("bus_scan", port=line.port, units=[1])
            both = await ask("bus_scan", **_serial(line, host="127.0.0.1", units=[1]))
        assert busy["ok"] is False and busy["field"] == "force"
        assert "2 devices" in busy["error"] and "--force" in busy["error"]
        assert forced["ok"] and forced["scan"]["found"] == []
        assert retune["ok"] is False and "other line settings" in retune["error"]
        assert second["ok"] is False and "already running" in second["error"]
        assert missing["ok"] is False and missing["field"] == "baudrate"
        assert both["ok"] is False and both["field"] == "port"

    run(main)


def test_a_bus_the_service_does_not_use_is_opened_for_the_scan_only(tmp_path: Path) -> None:
    async def main() -> None:
        other = TcpServer([BenderController().device])
        port = await other.start()
        try:
            async with service(tmp_path) as (ask, _line, pool, _ticks):
                buses = len(pool)
                answer = await ask("bus_scan", host="127.0.0.1", tcp_port=port, units=[1, 255])
                assert len(pool) == buses  # nothing of the scan stays in the service's pool
        finally:
            await other.stop()
        assert answer["ok"] and answer["shared_with"] == []
        assert [(u["unit_id"], u["identified"]) for u in answer["scan"]["found"]] == [
            (255, "bender_cc612")
        ]

    run(main)


def test_device_read_through_the_service(tmp_path: Path) -> None:
    async def main() -> None:
        async with service(tmp_path) as (ask, line, _pool, _ticks):
            hd = await ask("device_read", device="hd2")
            meter = await ask("device_read", device="grid_meter")
            unknown = await ask("device_read", device="cp9")
        assert hd["ok"] and hd["via"] == "service"
        device = hd["device"]
        assert device["driver"] == "heidelberg_ec" and device["unit_id"] == 2
        assert device["bus"] == f"{line.port} 19200 8E1" and device["state"] == "A"
        assert {f["name"] for f in device["fields"]} >= {"state", "current_l1_a", "energy_wh"}
        volts = next(f for f in meter["device"]["fields"] if f["name"] == "voltage_l1_v")
        assert volts["value"] == pytest.approx(230.0) and volts["unit"] == "V"
        assert unknown["ok"] is False and unknown["field"] == "device"
        assert "grid_meter, hd1, hd2" in unknown["error"]

    run(main)
