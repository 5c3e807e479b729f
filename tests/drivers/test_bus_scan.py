"""`evsite bus scan` and `evsite device read` in the drivers: against the hil simulators.

The scanner probes unit ids on an RS-485 line (a paced pty at 19200 8E1, several unit ids, one
device no map knows) and on loopback Modbus TCP (every EVSE and meter model), identifying the
models from the maps' ``identify:`` tests alone. A silent unit costs the scan's own timeout,
not the bus's. ``read_out`` decodes every polled field of a configured device with its unit.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from controller.core.site import DeviceSpec, SerialTransport, TcpTransport
from drivers.modbus.bus import BusPool
from drivers.modbus.client import ModbusClient
from drivers.modbus.device import RegisterMapDevice
from drivers.modbus.readout import read_out
from drivers.modbus.registermap import builtin_map_names, load_builtin_map
from drivers.modbus.scan import BusScanner, ScanReport, default_units, parse_units, unit_of
from drivers.registry import build_evse, build_meter
from hil.devices.alfen import AlfenSocketServer, AlfenStation
from hil.devices.bender import BenderController
from hil.devices.chargepoint import ChargePoint, Ev
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.meters import MeterModel, MeterReading, SimulatedMeter
from hil.devices.modbus import Fault, RegisterDevice
from hil.devices.phoenix import PhoenixCharx, PhoenixEvEth
from hil.devices.rtu import LineSettings, RtuLine
from hil.devices.schneider import SchneiderEvlink
from hil.devices.sdm630 import sdm630_device
from hil.devices.vestel import VestelWallbox
from tests.drivers.sims import LINE_19200_8E1, LINUX_ONLY, run, tcp

READING = MeterReading(
    voltage_v=(231.0, 229.5, 230.2), current_a=(12.5, 8.0, 3.1), power_w=(2800.0, 1800.0, 700.0)
)


def unknown_device(unit_id: int) -> RegisterDevice:
    """A device no map describes: ten holding registers reading 0x1234."""
    return RegisterDevice(
        name="unknown",
        unit_id=unit_id,
        render=lambda _fc: dict.fromkeys(range(10), 0x1234),
        holding=(range(10),),
    )


def found(report: ScanReport) -> dict[int, str | None]:
    return {u.unit_id: u.identified for u in report.found}


async def scan_line(
    line: RtuLine, settings: LineSettings, units: list[int], timeout_s: float = 0.1
) -> ScanReport:
    transport = SerialTransport(
        port=line.port,
        baudrate=settings.baudrate,
        parity=settings.parity,
        stopbits=settings.stopbits,
    )
    client = ModbusClient(transport, timeout_s=0.5)
    try:
        return await BusScanner(client, timeout_s=timeout_s).scan(units)
    finally:
        await client.close()


@LINUX_ONLY
def test_rtu_scan_lists_every_unit_and_names_the_known_models() -> None:
    async def main() -> None:
        devices = [
            HeidelbergBox(unit_id=1).device,
            HeidelbergBox(unit_id=2).device,
            sdm630_device(lambda: READING, unit_id=7),
            SimulatedMeter(MeterModel.ABB_B23, lambda: READING, unit_id=9).device,
            unknown_device(12),
        ]
        async with RtuLine(devices, line=LINE_19200_8E1, turnaround_s=0.002) as line:
            report = await scan_line(line, LINE_19200_8E1, list(range(1, 14)))
            mismatches = line.counters.line_mismatch
        assert found(report) == {
            1: "heidelberg_ec",
            2: "heidelberg_ec",
            7: "eastron_sdm630",
            9: "abb_b23",
            12: None,
        }
        by_unit = {u.unit_id: u for u in report.found}
        assert by_unit[12].answer == "holding 0 = 4660" and by_unit[12].matches == ()
        assert by_unit[1].answer.startswith("exception 2")
        assert by_unit[7].matches[0].evidence == ("voltage_l1_v = 231 V", "current_l1_a = 12.5 A")
        assert "state = 2 (A)" in by_unit[1].matches[0].evidence
        assert mismatches == 0
        # 8 silent unit ids; the identification reads of the units that answered may also time
        # out (a map's registers absent and the device silent about it), but never more.
        assert report.timeouts >= 8 and report.link_error is None
        assert report.bus.endswith("19200 8E1")

    run(main)


@LINUX_ONLY
def test_a_silent_unit_costs_the_scans_timeout_not_the_buses() -> None:
    async def main() -> None:
        async with RtuLine([HeidelbergBox(unit_id=1).device], line=LINE_19200_8E1) as line:
            loop = asyncio.get_running_loop()
            start = loop.time()
            report = await scan_line(line, LINE_19200_8E1, list(range(20, 30)), timeout_s=0.05)
            elapsed = loop.time() - start
        assert report.found == () and report.timeouts == 10 and report.requests == 10
        # 10 x (0.05 s + t3.5): the bus client's own 0.5 s timeout would take 5 s
        assert elapsed < 1.5, elapsed

    run(main)


@LINUX_ONLY
def test_wrong_line_settings_find_nothing() -> None:
    async def main() -> None:
        async with RtuLine([HeidelbergBox(unit_id=1).device], line=LINE_19200_8E1) as line:
            report = await scan_line(line, LineSettings(baudrate=9600, parity="N"), [1, 2])
            assert line.counters.line_mismatch >= 1
        assert report.found == ()

    run(main)


def test_a_missing_port_is_reported_not_taken_for_silence() -> None:
    async def main() -> None:
        transport = SerialTransport(port="/dev/evsite-no-such-port", baudrate=9600)
        client = ModbusClient(transport, timeout_s=0.2, reconnect_delay_s=0.01)
        report = await BusScanner(client, timeout_s=0.05).scan([1, 2, 3])
        await client.close()
        assert report.found == ()
        assert report.link_error is not None and "cannot connect" in report.link_error

    run(main)


def _tcp_models() -> list[tuple[str, RegisterDevice]]:
    cp = ChargePoint(max_current_a=32.0, ev=Ev(max_current_a=16.0))
    return [
        ("bender_cc612", BenderController(cp).device),
        ("vestel_evc04", VestelWallbox().device),
        ("phoenix_ev_eth", PhoenixEvEth().device),
        ("phoenix_charx", PhoenixCharx().device),
        ("schneider_evlink", SchneiderEvlink().device),
        ("janitza_umg604", SimulatedMeter(MeterModel.JANITZA_UMG604, lambda: READING).device),
        (
            "sunspec_203",
            SimulatedMeter(MeterModel.SUNSPEC_203, lambda: READING, sunspec_base=0).device,
        ),
        (
            "sunspec_213",
            SimulatedMeter(MeterModel.SUNSPEC_213, lambda: READING, sunspec_base=50000).device,
        ),
    ]


@pytest.mark.parametrize("driver,device", _tcp_models(), ids=lambda v: str(v)[:20])
def test_tcp_scan_identifies_each_model(driver: str, device: RegisterDevice) -> None:
    async def main() -> None:
        async with tcp([device]) as server:
            client = ModbusClient(TcpTransport(host="127.0.0.1", port=server.port))
            report = await BusScanner(client).scan([1, 2, 255])
            await client.close()
        assert found(report) == {device.unit_id: driver}, report

    run(main)


def test_tcp_scan_of_an_alfen_and_of_twin_meters() -> None:
    async def main() -> None:
        station = AlfenStation(max_current_a=32.0, safe_current_a=6.0)
        socket = AlfenSocketServer(station, clock=lambda: 0.0)
        port = await socket.start()
        try:
            client = ModbusClient(TcpTransport(host="127.0.0.1", port=port))
            alfen = await BusScanner(client).scan([1, 2, 200])
            await client.close()
        finally:
            await socket.stop()
        assert found(alfen) == {1: "alfen_ng9xx"}
        assert alfen.found[0].matches[0].evidence == ("state = 'A' (A)", "phases = 3")

        # The EM24 and EM340 answer the same registers: both are named, neither is chosen.
        em24 = SimulatedMeter(MeterModel.EM24, lambda: READING, unit_id=3).device
        async with tcp([em24]) as server:
            client = ModbusClient(TcpTransport(host="127.0.0.1", port=server.port))
            twins = await BusScanner(client).scan([3])
            await client.close()
        unit = twins.found[0]
        assert unit.identified is None
        assert {m.driver for m in unit.matches} == {"carlo_gavazzi_em24", "carlo_gavazzi_em340"}

    run(main)


def test_every_builtin_map_can_be_identified() -> None:
    # a new built-in map needs an identify: section, or the scan would never name it
    for name in builtin_map_names():
        assert load_builtin_map(name).identify, name


def test_units_syntax_and_defaults() -> None:
    assert parse_units("1-3,7, 10-11") == (1, 2, 3, 7, 10, 11)
    assert parse_units("255") == (255,)
    for bad in ("", "0-300", "5-2", "a", "1,,2"):
        with pytest.raises(ValueError):
            parse_units(bad)
    assert default_units(TcpTransport(host="h"))[-2:] == (247, 255)
    assert default_units(SerialTransport(port="/dev/x"))[-1] == 247
    assert [unit_of(n) for n in ("current_l1_a", "energy_wh", "power_w", "state", "x_kwh")] == [
        "A",
        "Wh",
        "W",
        "",
        "kWh",
    ]


@LINUX_ONLY
def test_read_out_decodes_every_polled_field_with_units() -> None:
    async def main() -> None:
        box = HeidelbergBox(ChargePoint(max_current_a=16.0, ev=Ev(max_current_a=16.0)))
        box.cp.write_setpoint(10.0, box.clock())
        async with RtuLine([box.device], line=LINE_19200_8E1) as line:
            spec = DeviceSpec(
                id="hd1",
                driver="heidelberg_ec",
                transport=SerialTransport(port=line.port, baudrate=19200, parity="E"),
                unit_id=1,
                timeout_s=0.3,
            )
            pool = BusPool()
            device = build_evse(spec, pool=pool)
            assert isinstance(device, RegisterMapDevice)
            out = (await read_out(device)).as_dict()
            await device.close()
        assert out["model"] == "Heidelberg Energy Control" and out["state"] == "C"
        fields = {f["name"]: f for f in out["fields"]}
        assert "layout_version" not in fields  # not polled: a read is the tick's read
        assert fields["state"]["value"] == 7 and fields["state"]["state"] == "C"
        assert fields["current_l1_a"]["value"] == pytest.approx(10.0)
        assert fields["current_l1_a"]["unit"] == "A"
        assert fields["current_l1_a"]["table"] == "input" and fields["current_l1_a"]["scale"] == 0.1
        assert fields["energy_wh"]["unit"] == "Wh"

        # a SunSpec meter finds its model first; a NaN ("not implemented") is "no value"
        meter = SimulatedMeter(
            MeterModel.SUNSPEC_213,
            lambda: MeterReading(voltage_v=(230.0, math.nan, 230.0)),
            sunspec_base=0,
        )
        async with tcp([meter.device]) as server:
            spec = DeviceSpec(
                id="m",
                driver="sunspec_213",
                transport=TcpTransport(host="127.0.0.1", port=server.port),
                unit_id=1,
            )
            sunspec = build_meter(spec, pool=BusPool())
            assert isinstance(sunspec, RegisterMapDevice)
            got = (await read_out(sunspec)).as_dict()
            await sunspec.close()
        values = {f["name"]: f for f in got["fields"]}
        assert values["voltage_l1_v"]["value"] == pytest.approx(230.0)
        assert values["voltage_l2_v"]["value"] is None
        assert values["voltage_l2_v"]["text"] == "no value"

    run(main)


def test_silent_probes_do_not_close_a_shared_tcp_connection() -> None:
    # pymodbus closes a TCP connection after retries + 3 unanswered requests; a scan's probes
    # of absent units must not cut off the devices that share that connection with it.
    async def main() -> None:
        bender = BenderController()
        async with tcp([bender.device]) as server:
            client = ModbusClient(TcpTransport(host="127.0.0.1", port=server.port))
            await client.read_registers("holding", 122, 1, 255)
            connection = client._client  # the pymodbus client: to see it stay connected
            bender.device.inject(Fault.SILENT, count=8)
            scanner = BusScanner(client, timeout_s=0.05)
            connected = []
            for _ in range(8):
                assert await scanner.presence(255) is None
                connected.append(connection.connected)
            await client.read_registers("holding", 122, 1, 255)
            await client.close()
        assert connected == [True] * 8 and client.counters.timeouts == 8

    run(main)
