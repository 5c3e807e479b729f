"""CLI layer: ``evsite session list|start|stop|tag|tier`` and ``evsite availability``.

The technician's hands on the charging sessions of a running service, through its socket: see
each connector's session, start one (as an authorisation: the car charges once it is plugged
in), stop one (the car gets no more current until it is unplugged), present an idTag as a card
reader would (the same idTag again stops the session it started), set a session's priority
tier, take a connector out of service or back. The service records every change, with "cli"
as the one who asked, before it answers. docs/sessions.md explains the phases.

Exit status: 0 done, 1 the service refused the request, 2 bad command line, 3 no service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from controller.cli.client import request
from controller.cli.output import EXIT_OK, print_json, refused

_OPTION_OF_FIELD = {"connector": "CONNECTOR", "id_tag": "--id-tag/TAG", "priority_tier": "TIER"}

_PHASE_TEXT = {
    "authorised": "authorised, waiting for a vehicle",
    "pending": "vehicle waiting for authorisation",
    "active": "charging session running",
    "finishing": "stopped, vehicle still plugged in (no current until it leaves)",
    "closed": "closed",
}


def _tier(text: str) -> int | None:
    if text.lower() in ("none", "default", "-"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(
            f"invalid tier {text!r}: 0 to 9 (higher goes first), or 'none' for the connector's"
        )
    return value


def _on_off(text: str) -> bool:
    value = text.lower()
    if value in ("on", "operative", "yes", "true"):
        return True
    if value in ("off", "inoperative", "no", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid availability {text!r}: on or off")


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_target: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add ``session`` and ``availability`` to the ``evsite`` parser.

    ``run(args)`` resolves the socket from the target options and calls ``args.tool_func``.
    """
    p = sub.add_parser("session", help="list, start or stop charging sessions")
    ssub = p.add_subparsers(dest="session_command", required=True, metavar="SUBCOMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        tool: Callable[..., int],
        *,
        connector: bool = True,
        help: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        """A subcommand with what they all share: the connector, --json, the target."""
        c = parent.add_parser(name, help=help, description=description)
        if connector:
            c.add_argument("connector", metavar="CONNECTOR", help="the connector (its EVSE's id)")
        c.add_argument("--json", action="store_true", help="print the answer as JSON")
        add_target(c)
        c.set_defaults(func=run, tool_func=tool)
        return c

    command(
        ssub,
        "list",
        session_list,
        connector=False,
        help="each connector's session and availability",
    )
    ps = command(
        ssub,
        "start",
        session_start,
        help="authorise charging at a connector",
        description="Authorise charging at a connector: a vehicle waiting there starts "
        "charging now; otherwise the first vehicle plugged in within the connection timeout "
        "does (sessions.connection_timeout_s).",
    )
    ps.add_argument("--id-tag", metavar="TAG", help="record the session under this idTag")
    ps.add_argument(
        "--tier", type=_tier, metavar="TIER", help="priority tier 0-9 (default: the connector's)"
    )
    command(
        ssub,
        "stop",
        session_stop,
        help="stop the session at a connector",
        description="End the session at a connector (stop reason Local). A vehicle still "
        "plugged in gets no current until it is unplugged.",
    )
    pg = command(
        ssub,
        "tag",
        session_tag,
        help="present an idTag at a connector, as its card reader would",
        description="Present an idTag at a connector as its card reader would: the idTag that "
        "started the running session stops it; any other is checked by the authorisers (the "
        "OCPP backend, its local list) and starts a session if accepted.",
    )
    pg.add_argument("id_tag", metavar="TAG", help="the idTag (up to 20 characters)")
    pr = command(
        ssub, "tier", session_tier, help="set the priority tier of the session at a connector"
    )
    pr.add_argument("tier", type=_tier, metavar="TIER", help="0-9 (higher goes first), or none")
    pa = command(
        sub,
        "availability",
        availability_set,
        help="take a connector out of service, or back",
        description="Take a connector out of service (off: no new session starts there, a "
        "plugged-in vehicle gets no current) or back into service (on). With a session "
        "running, off takes effect when it ends (scheduled).",
    )
    pa.add_argument("available", type=_on_off, metavar="on|off", help="on or off")


# --------------------------------------------------------------------------------------------
# The subcommands
# --------------------------------------------------------------------------------------------


def session_list(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from rich.console import Console
    from rich.table import Table

    answer = request(path, "session_list")
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    connectors: dict[str, Any] = answer.get("connectors", {})
    console = Console(file=out, highlight=False, width=None if out.isatty() else 120)
    table = Table(title="sessions", title_justify="left")
    for column in ("connector", "available", "phase", "method", "idTag", "tier", "started",
                   "energy kWh", "stop reason", "session"):  # fmt: skip
        table.add_column(column, no_wrap=True)
    for cid, entry in connectors.items():
        s = entry.get("session")
        available = "yes" if entry.get("available", True) else "[red]no[/red]"
        if entry.get("available", True) and "availability_scheduled" in entry:
            available = "[yellow]off at its end[/yellow]"
        if s is None:
            table.add_row(cid, available, "-", "", "", "", "", "", "", "")
            continue
        table.add_row(
            cid,
            available,
            s["phase"],
            s.get("method") or "",
            s.get("id_tag") or "",
            "" if s.get("priority_tier") is None else str(s["priority_tier"]),
            _time_text(s.get("started_at")),
            f"{s['energy_wh'] / 1000:.2f}" if s.get("started_at") else "",
            s.get("stop_reason") or "",
            s["id"][:8],
        )
    console.print(table)
    running = sum(
        1 for e in connectors.values() if (e.get("session") or {}).get("phase") == "active"
    )
    plural = "s" if running != 1 else ""
    console.print(f"{len(connectors)} connectors, {running} charging session{plural} running")
    return EXIT_OK


def session_start(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    payload: dict[str, Any] = {"connector": args.connector}
    if args.id_tag is not None:
        payload["id_tag"] = args.id_tag
    if args.tier is not None:
        payload["priority_tier"] = args.tier
    answer = request(path, "session_start", **payload)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    s = answer["session"]
    if s["phase"] == "active":
        out.write(f"{args.connector}: session {s['id'][:8]} started\n")
    else:
        out.write(
            f"{args.connector}: session {s['id'][:8]} {_PHASE_TEXT.get(s['phase'], s['phase'])}\n"
        )
    return EXIT_OK


def session_stop(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    answer = request(path, "session_stop", connector=args.connector)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    s = answer["session"]
    if s.get("started_at"):
        out.write(
            f"{args.connector}: session {s['id'][:8]} stopped ({s['stop_reason']}), "
            f"{s['energy_wh'] / 1000:.2f} kWh"
        )
        if s["phase"] == "finishing":
            out.write("; the vehicle gets no current until it is unplugged")
        out.write("\n")
    else:
        out.write(f"{args.connector}: session {s['id'][:8]} ended before it began charging\n")
    return EXIT_OK


def session_tag(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    answer = request(path, "session_tag", connector=args.connector, id_tag=args.id_tag)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    s = answer["session"]
    if answer.get("result") == "stopped":
        out.write(
            f"{args.connector}: idTag {args.id_tag} stopped session {s['id'][:8]}, "
            f"{s['energy_wh'] / 1000:.2f} kWh\n"
        )
    else:
        out.write(
            f"{args.connector}: idTag {args.id_tag} accepted: session {s['id'][:8]} "
            f"{'started' if s['phase'] == 'active' else _PHASE_TEXT.get(s['phase'], s['phase'])}\n"
        )
    return EXIT_OK


def session_tier(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    answer = request(path, "session_tier", connector=args.connector, priority_tier=args.tier)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    s = answer["session"]
    tier = "the connector's" if s.get("priority_tier") is None else str(s["priority_tier"])
    out.write(f"{args.connector}: session {s['id'][:8]} priority tier {tier}\n")
    return EXIT_OK


def availability_set(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    answer = request(path, "availability_set", connector=args.connector, available=args.available)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    if args.available:
        out.write(f"{args.connector}: in service\n")
    elif answer.get("result") == "scheduled":
        out.write(f"{args.connector}: out of service once the running session ends (scheduled)\n")
    else:
        out.write(f"{args.connector}: out of service\n")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _refused(answer: dict[str, Any], as_json: bool, out: TextIO) -> int:
    return refused(answer, as_json=as_json, out=out, options=_OPTION_OF_FIELD)


def _time_text(iso: str | None) -> str:
    """``2026-11-29T18:00:05+01:00`` -> ``2026-11-29 18:00`` (the site's local time)."""
    if not iso:
        return ""
    date, _, clock = iso.partition("T")
    return f"{date} {clock[:5]}"
