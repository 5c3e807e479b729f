"""`evsite bus scan` and `evsite device read` from the command line, with and without a service.

The simulators run in a thread with their own event loop (an RS-485 pty at 19200 8E1 with two
Heidelbergs and a device no map knows; Modbus TCP for the others). Without a service (no socket)
the commands open the line themselves; with one they ask it, and a refusal exits 1 naming the
option. Real `evsite run` processes are in tests/e2e/test_mixed_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from controller.app.control_socket import ControlSocket
from controller.app.device_commands import TickGate, device_commands
from controller.cli.main import main
from controller.config import load_config_text
from drivers.modbus.bus import BusPool
from hil.devices.bender import BenderController
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.modbus import RegisterDevice, TcpServer, quiet_pymodbus
from hil.devices.rtu import LineSettings, RtuLine

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread: the simulators (and a service) live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30.0)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


class Sims:
    def __init__(self, line: RtuLine, tcp: TcpServer) -> None:
        self.line = line
        self.tcp = tcp


@pytest.fixture
def sims() -> Iterator[tuple[LoopThread, Sims]]:
    quiet_pymodbus()
    bg = LoopThread()
    unknown = RegisterDevice(
        name="unknown", unit_id=9, render=lambda _fc: {0: 7}, holding=(range(1),)
    )
    line = RtuLine(
        [HeidelbergBox(unit_id=1).device, HeidelbergBox(unit_id=2).device, unknown],
        line=LineSettings(baudrate=19200, parity="E"),
    )
    tcp = TcpServer([BenderController().device])
    bg.call(line.start())
    bg.call(tcp.start())
    try:
        yield bg, Sims(line, tcp)
    finally:
        bg.call(line.stop())
        bg.call(tcp.stop())
        bg.close()


def nowhere() -> str:
    return str(Path(tempfile.mkdtemp(prefix="evs-")) / "evsite.sock")


def test_bus_scan_without_a_service_opens_the_line_itself(
    sims: tuple[LoopThread, Sims], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sim = sims
    port = sim.line.port
    args = ["bus", "scan", "--port", port, "--baud", "19200", "--parity", "E", "--units", "1-10"]
    assert main([*args, "--json", "--socket", nowhere()]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["via"] == "direct"
    units = {u["unit_id"]: u["identified"] for u in answer["scan"]["found"]}
    assert units == {1: "heidelberg_ec", 2: "heidelberg_ec", 9: None}

    assert main([*args, "--socket", nowhere()]) == 0
    text = capsys.readouterr().out
    assert "3 of 10 unit ids answer" in text and "scanned directly" in text
    assert "Heidelberg Energy Control" in text and "not identified" in text

    tcp = ["bus", "scan", "--host", "127.0.0.1", "--tcp-port", str(sim.tcp.port), "--json"]
    assert main([*tcp, "--units", "1,255", "--socket", nowhere()]) == 0
    found = json.loads(capsys.readouterr().out)["scan"]["found"]
    assert [(u["unit_id"], u["identified"]) for u in found] == [(255, "bender_cc612")]


def test_bus_scan_usage_and_an_unreachable_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["bus", "scan", "--port", "/dev/ttyUSB9", "--socket", nowhere()])
    assert usage.value.code == 2
    assert "--port needs --baud and --parity" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bus", "scan", "--host", "h", "--units", "1-300"])
    capsys.readouterr()
    code = main(
        ["bus", "scan", "--port", "/dev/evsite-none", "--baud", "9600", "--parity", "N",
         "--units", "1-2", "--socket", nowhere()]
    )  # fmt: skip
    assert code == 1
    assert "could not reach the bus" in capsys.readouterr().out


def test_device_read_without_a_service_reads_from_the_config(
    sims: tuple[LoopThread, Sims], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sim = sims
    config = {
        "site": {"id": "t", "timezone": "Europe/Berlin"},
        "grid": {"rating_a": 63, "worst_case_non_ev_a": 10},
        "evses": [
            {
                "id": "hd2",
                "driver": "heidelberg_ec",
                "unit_id": 2,
                "max_current_a": 16,
                "transport": {
                    "type": "serial",
                    "port": sim.line.port,
                    "baudrate": 19200,
                    "parity": "E",
                },
            }
        ],
        "service": {"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["device", "read", "hd2", "-c", str(path), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["via"] == "direct" and answer["device"]["unit_id"] == 2
    assert answer["device"]["state"] == "A"
    assert main(["device", "read", "hd2", "-c", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Heidelberg Energy Control (heidelberg_ec), unit 2" in text
    assert "current_l1_a" in text and "input 6 u16 x0.1" in text

    assert main(["device", "read", "nope", "-c", str(path)]) == 1
    assert "no device 'nope'; devices: hd2" in capsys.readouterr().err
    assert main(["device", "read", "hd2", "--socket", nowhere()]) == 1
    assert "give -c site.yaml" in capsys.readouterr().err


def test_bus_scan_and_device_read_go_through_a_running_service(
    sims: tuple[LoopThread, Sims], capsys: pytest.CaptureFixture[str]
) -> None:
    bg, sim = sims
    site = load_config_text(
        f"""\
site: {{id: t, timezone: Europe/Berlin}}
grid: {{rating_a: 63, worst_case_non_ev_a: 10}}
evses:
  - {{id: b1, driver: bender_cc612, unit_id: 255, max_current_a: 16,
      transport: {{type: tcp, host: 127.0.0.1, port: {sim.tcp.port}}}}}
"""
    ).site
    from drivers.registry import build_evse

    socket_path = Path(tempfile.mkdtemp(prefix="evs-")) / "evsite.sock"

    async def start() -> tuple[ControlSocket, Any, TickGate]:
        pool = BusPool()
        evses = {c.id: build_evse(c.evse, pool=pool) for c in site.connectors}
        gate = TickGate(tick_s=0.2)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.2)
                gate.tick_done(1.0)

        task = asyncio.get_running_loop().create_task(ticker())
        commands = device_commands(site=site, meters={}, evses=evses, pool=pool, gate=gate)
        sock = ControlSocket(socket_path, status=dict, commands=commands)
        await sock.start()
        return sock, (task, evses), gate

    sock, (task, evses), _ = bg.call(start())
    try:
        tcp = ["bus", "scan", "--host", "127.0.0.1", "--tcp-port", str(sim.tcp.port)]
        assert main([*tcp, "--units", "255", "--socket", str(socket_path)]) == 0
        text = capsys.readouterr().out
        assert "scanned through the service" in text and "the service reads b1" in text
        assert main(["device", "read", "b1", "--json", "--socket", str(socket_path)]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["via"] == "service" and answer["device"]["model"] == "Bender CC612/CC613"
        assert main(["device", "read", "b9", "--socket", str(socket_path)]) == 1
        assert "evsite: refused (NAME): no device 'b9'" in capsys.readouterr().err
    finally:

        async def stop() -> None:
            task.cancel()
            await sock.close()
            for e in evses.values():
                await e.close()

        bg.call(stop())
