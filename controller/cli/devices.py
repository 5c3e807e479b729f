"""CLI layer: ``evsite bus scan`` and ``evsite device read``, a technician's look at the buses.

``bus scan`` lists the unit ids that answer on a serial line or a Modbus TCP host and names the
known models among them (from the register maps' ``identify:`` tests); ``device read NAME``
prints every polled field of a configured device, decoded, with units.

While the service runs both go through its socket: it owns every bus it drives (one owner per
RS-485 line; some EVSEs accept a single Modbus master) and fits the requests between its ticks.
When no service listens (no socket, or a stale one), the command opens the line itself. Any
other trouble with the socket (permission denied, no answer) stops the command instead: the
service may be driving that line.

Exit status: 0 done, 1 refused / not reachable / nothing could be read, 2 bad command line,
3 the service's socket is there but unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from controller.cli.client import ServiceNotRunning, request
from controller.cli.output import print_json, refused

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_OPTION_OF_FIELD = {
    "port": "--port/--host",
    "baudrate": "--baud",
    "parity": "--parity",
    "stopbits": "--stopbits",
    "units": "--units",
    "unit_timeout_s": "--timeout-s",
    "force": "--force",
    "device": "NAME",
}


def _units(text: str) -> tuple[int, ...]:
    from drivers.modbus.scan import parse_units

    try:
        return parse_units(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: seconds, e.g. 0.1") from exc
    if not 0 < value <= 2:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: more than 0, at most 2 s")
    return value


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_target: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add ``bus scan`` and ``device read`` to the ``evsite`` parser.

    ``run(args)`` resolves the socket from the target options and calls ``args.tool_func``.
    """
    p = sub.add_parser("bus", help="look at a Modbus bus: which units answer, which models")
    bsub = p.add_subparsers(dest="bus_command", required=True, metavar="SUBCOMMAND")
    ps = bsub.add_parser(
        "scan",
        help="list the unit ids that answer on a serial line or a TCP host",
        description="Probe unit ids on a serial line (RTU) or a Modbus TCP host and identify "
        "known models from the register maps. While the service runs the scan goes through it "
        "(between its ticks); otherwise the line is opened here.",
    )
    line = ps.add_mutually_exclusive_group(required=True)
    line.add_argument("--port", metavar="DEVICE", help="serial port, e.g. /dev/ttyUSB0")
    line.add_argument("--host", help="Modbus TCP host: a device or an RS-485 gateway")
    ps.add_argument("--baud", type=int, metavar="N", help="baud rate (serial, required)")
    ps.add_argument("--parity", choices=["N", "E", "O"], help="parity (serial, required)")
    ps.add_argument("--stopbits", type=int, choices=[1, 2], default=1, help="stop bits")
    ps.add_argument("--tcp-port", type=int, default=502, metavar="N", help="TCP port (502)")
    ps.add_argument(
        "--rtu-over-tcp", action="store_true", help="the gateway passes RTU frames through"
    )
    ps.add_argument(
        "--units",
        type=_units,
        metavar="LIST",
        help="unit ids, e.g. 1-247 or 1,2,10-12 (default 1-247; over TCP also 255)",
    )
    ps.add_argument(
        "--timeout-s",
        type=_timeout,
        default=0.1,
        metavar="S",
        help="how long to wait for each unit (default 0.1 s)",
    )
    ps.add_argument(
        "--force", action="store_true", help="scan a line the service reads many devices on"
    )
    ps.add_argument("--json", action="store_true", help="print the result as JSON")
    add_target(ps)
    ps.set_defaults(func=run, tool_func=bus_scan, parser=ps)

    p = sub.add_parser("device", help="look at one configured device")
    dsub = p.add_subparsers(dest="device_command", required=True, metavar="SUBCOMMAND")
    pr = dsub.add_parser(
        "read",
        help="print the decoded values of a configured device",
        description="Read every polled field of a configured meter or EVSE and print it "
        "decoded, with units. Nothing is written. Through the service while it runs, else "
        "directly (then -c site.yaml is needed).",
    )
    pr.add_argument("name", help="the device's id in the site config")
    pr.add_argument("--json", action="store_true", help="print the values as JSON")
    add_target(pr)
    pr.set_defaults(func=run, tool_func=device_read, parser=pr)


# --------------------------------------------------------------------------------------------
# bus scan
# --------------------------------------------------------------------------------------------


def bus_scan(path: Path, args: argparse.Namespace, out: TextIO | None = None) -> int:
    from controller.core.site import SerialTransport, TcpTransport, Transport
    from drivers.modbus.scan import default_units

    out = out or sys.stdout
    if args.port is not None and (args.baud is None or args.parity is None):
        args.parser.error("--port needs --baud and --parity (e.g. --baud 19200 --parity E)")
    transport: Transport
    payload: dict[str, Any]
    if args.port is not None:
        transport = SerialTransport(
            port=args.port, baudrate=args.baud, parity=args.parity, stopbits=args.stopbits
        )
        payload = {
            "port": args.port,
            "baudrate": args.baud,
            "parity": args.parity,
            "stopbits": args.stopbits,
        }
    else:
        transport = TcpTransport(host=args.host, port=args.tcp_port, rtu_over_tcp=args.rtu_over_tcp)
        payload = {"host": args.host, "tcp_port": args.tcp_port, "rtu_over_tcp": args.rtu_over_tcp}
    units = args.units if args.units is not None else default_units(transport)
    payload.update(units=list(units), unit_timeout_s=args.timeout_s, force=args.force)
    # The service fits probes between ticks: allow for that, and for the identification reads.
    wait_s = 30.0 + len(units) * (1.5 * args.timeout_s + 0.05) * 3
    try:
        answer = request(path, "bus_scan", timeout_s=wait_s, **payload)
    except ServiceNotRunning:
        answer = {
            "ok": True,
            "via": "direct",
            "scan": asyncio.run(_scan_direct(transport, units, args.timeout_s)),
        }
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    scan = answer["scan"]
    if args.json:
        print_json(answer, out)
    else:
        _print_scan(answer, out)
    return EXIT_FAILED if scan.get("link_error") and not scan["found"] else EXIT_OK


async def _scan_direct(transport: Any, units: tuple[int, ...], timeout_s: float) -> dict[str, Any]:
    from drivers.modbus.client import ModbusClient
    from drivers.modbus.scan import BusScanner

    client = ModbusClient(transport, timeout_s=max(timeout_s, 0.3))
    try:
        report = await BusScanner(client, timeout_s=timeout_s).scan(units)
    finally:
        await client.close()
    return report.as_dict()


def _print_scan(answer: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    scan = answer["scan"]
    console = Console(file=out, highlight=False, width=None if out.isatty() else 120)
    found = scan["found"]
    via = "through the service" if answer.get("via") == "service" else "directly"
    console.print(
        f"{scan['bus']}: {len(found)} of {scan['units_probed']} unit ids answer "
        f"({scan['elapsed_s']:g} s, {scan['requests']} requests, {scan['timeouts']} "
        f"timeouts at {scan['timeout_s']:g} s; scanned {via})"
    )
    if answer.get("shared_with"):
        console.print(f"the service reads {', '.join(answer['shared_with'])} on this bus")
    if scan.get("link_error"):
        console.print(f"[red]could not reach the bus: {scan['link_error']}[/red]")
    if not found:
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("unit", "model", "driver", "evidence"):
        table.add_column(column, no_wrap=column != "evidence")
    for unit in found:
        models = unit["models"]
        if not models:
            table.add_row(str(unit["unit_id"]), "[dim]not identified[/dim]", "", unit["answer"])
            continue
        for i, m in enumerate(models):
            model = m["model"] if len(models) == 1 else f"{m['model']} [yellow](or)[/yellow]"
            table.add_row(
                str(unit["unit_id"]) if i == 0 else "",
                model,
                m["driver"],
                ", ".join(m["evidence"]),
            )
    console.print(table)


# --------------------------------------------------------------------------------------------
# device read
# --------------------------------------------------------------------------------------------


def device_read(path: Path, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        answer = request(path, "device_read", timeout_s=30.0, device=args.name)
    except ServiceNotRunning as exc:
        if args.config is None:
            print(
                f"evsite: {exc}; give -c site.yaml to read the device directly",
                file=sys.stderr,
            )
            return EXIT_FAILED
        answer = asyncio.run(_read_direct(Path(args.config), args.name))
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
    else:
        _print_readout(answer, out)
    return EXIT_OK


async def _read_direct(config_path: Path, name: str) -> dict[str, Any]:
    from controller.config import load_config
    from controller.core.errors import EvsiteError
    from drivers.modbus.bus import BusPool
    from drivers.modbus.device import RegisterMapDevice
    from drivers.modbus.readout import read_out
    from drivers.registry import build_evse, build_meter

    site = load_config(config_path).site
    meters = {m.id: m for m in site.meters}
    evses = {c.id: c.evse for c in site.connectors}
    if name not in meters and name not in evses:
        known = ", ".join(sorted([*meters, *evses]))
        return {
            "ok": False,
            "via": "direct",
            "error": f"no device {name!r}; devices: {known}",
            "field": "device",
        }
    pool = BusPool()
    device = (
        build_meter(meters[name], pool=pool)
        if name in meters
        else build_evse(evses[name], pool=pool)
    )
    try:
        if not isinstance(device, RegisterMapDevice):
            return {
                "ok": False,
                "via": "direct",
                "error": f"{name} is not a Modbus register-map device",
            }
        try:
            readout = await read_out(device)
        except EvsiteError as exc:
            return {"ok": False, "via": "direct", "error": f"{name}: {exc}"}
        return {"ok": True, "via": "direct", "device": readout.as_dict()}
    finally:
        await device.close()
        await pool.close_all()


def _print_readout(answer: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    d = answer["device"]
    via = "through the service" if answer.get("via") == "service" else "directly"
    console = Console(file=out, highlight=False, width=None if out.isatty() else 120)
    console.print(
        f"{d['device']}: {d['model']} ({d['driver']}), unit {d['unit_id']} on {d['bus']}, "
        f"read {via} in {d['elapsed_ms']:g} ms"
    )
    if d.get("state"):
        console.print(f"state: {d['state']}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("field", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("unit", no_wrap=True)
    table.add_column("register", no_wrap=True)
    table.add_column("description")
    for f in d["fields"]:
        value = f["text"] + (f" ({f['state']})" if f.get("state") else "")
        where = f"{f['table']} {f['address']} {f['type']}"
        if f["scale"] != 1:
            where += f" x{f['scale']:g}"
        table.add_row(f["name"], value, f["unit"], where, f.get("description") or "")
    console.print(table)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _refused(answer: dict[str, Any], as_json: bool, out: TextIO) -> int:
    return refused(
        answer,
        as_json=as_json,
        out=out,
        options=_OPTION_OF_FIELD,
        verb="failed" if answer.get("via") == "direct" else "refused",
    )
