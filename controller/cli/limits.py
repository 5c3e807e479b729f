"""CLI layer: ``evsite limit set|clear|list``, technician overrides through the service's socket.

An override is a limit slot of source ``override``: a cap on EV charging for the site, one
circuit node or one connector, in A per phase or in kW, optionally from and until a time. The
service checks and stores it (it survives restarts) before it answers; the engine takes the
minimum over all slots and never lets one rise above the configured ratings.

Times given without an offset are the site's local time (the service knows its time zone).
Exit status: 0 done, 1 the service refused the request, 2 bad command line, 3 no service.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from controller.cli.client import request
from controller.cli.output import EXIT_OK, print_json, refused

# The service names the payload field at fault; the technician typed an option.
_OPTION_OF_FIELD = {
    "scope": "--site/--circuit/--connector",
    "current_a": "--current",
    "power_w": "--power",
    "starts_at": "--from",
    "ends_at": "--until",
    "duration_s": "--for",
    "id": "--id",
    "note": "--note",
}

_DURATION_RE = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?"
)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """``2h`` -> 7200.0, ``1h30m`` -> 5400.0, ``45s`` -> 45.0 (argparse type: usage error)."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groupdict().values()):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with a unit, like 2h, 30m, 1h30m, 90s, 1d"
        )
    seconds = sum(float(v) * _UNIT_S[k] for k, v in match.groupdict().items() if v)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be longer than 0")
    return seconds


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_target: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add ``limit`` and its subcommands to the ``evsite`` parser.

    ``run(args)`` resolves the socket from the target options and calls ``args.limit_func``.
    """
    p = sub.add_parser("limit", help="set, clear or list technician limit overrides")
    lsub = p.add_subparsers(dest="limit_command", required=True, metavar="SUBCOMMAND")

    ps = lsub.add_parser(
        "set",
        help="cap EV charging of the site, a circuit or a connector",
        description="Cap EV charging of the site, a circuit node or a connector. The cap never "
        "raises anything above the configured ratings. Times without an offset are the site's "
        "local time.",
    )
    scope = ps.add_mutually_exclusive_group(required=True)
    scope.add_argument("--site", action="store_true", help="the whole site")
    scope.add_argument("--circuit", metavar="ID", help="one circuit node (e.g. grid, carport)")
    scope.add_argument("--connector", metavar="ID", help="one connector (its EVSE's id)")
    value = ps.add_mutually_exclusive_group(required=True)
    value.add_argument("--current", type=float, metavar="A", help="amperes per phase")
    value.add_argument("--power", type=float, metavar="KW", help="kilowatts in total")
    end = ps.add_mutually_exclusive_group()
    end.add_argument(
        "--for", dest="duration", type=parse_duration, metavar="DURATION", help="e.g. 2h, 30m"
    )
    end.add_argument("--until", metavar="ISO-8601", help="e.g. 2026-11-29T18:00, or 18:00 today")
    ps.add_argument(
        "--from", dest="start", metavar="ISO-8601", help="start later than now (same forms)"
    )
    ps.add_argument("--id", metavar="NAME", help="name of the override (default: its scope)")
    ps.add_argument("--note", default="", help="why, for whoever looks next")
    ps.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_target(ps)
    ps.set_defaults(func=run, limit_func=limit_set)

    pc = lsub.add_parser("clear", help="remove an override, or all of them")
    which = pc.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="NAME", help="the override's id (see `evsite limit list`)")
    which.add_argument("--all", action="store_true", help="every override")
    pc.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_target(pc)
    pc.set_defaults(func=run, limit_func=limit_clear)

    pl = lsub.add_parser("list", help="list the limit slots and which apply now")
    pl.add_argument("--json", action="store_true", help="print the slots as JSON")
    add_target(pl)
    pl.set_defaults(func=run, limit_func=limit_list)


# --------------------------------------------------------------------------------------------
# The subcommands
# --------------------------------------------------------------------------------------------


def limit_set(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.site:
        scope = "site"
    elif args.circuit is not None:
        scope = f"circuit:{args.circuit}"
    else:
        scope = f"connector:{args.connector}"
    payload: dict[str, Any] = {"scope": scope, "note": args.note}
    if args.current is not None:
        payload["current_a"] = args.current
    else:
        payload["power_w"] = args.power * 1000.0
    if args.id is not None:
        payload["id"] = args.id
    if args.start is not None:
        payload["starts_at"] = args.start
    if args.until is not None:
        payload["ends_at"] = args.until
    if args.duration is not None:
        payload["duration_s"] = args.duration
    answer = request(path, "limit_set", **payload)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    slot = answer["slot"]
    verb = "replaced" if answer.get("replaced") else "set"
    out.write(
        f"override {slot['id']!r} {verb}: {_scope_text(slot['scope'])} at most "
        f"{_value_text(slot)}, {_window_text(slot)}"
        f"{'' if slot['active'] else ' (not yet active)'}\n"
    )
    for note in answer.get("notes", []):
        out.write(f"note: {note}\n")
    return EXIT_OK


def limit_clear(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    payload: dict[str, Any] = {"all": True} if args.all else {"id": args.id}
    answer = request(path, "limit_clear", **payload)
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    cleared = answer.get("cleared", [])
    if not cleared:
        out.write("no overrides to clear\n")
    for slot in cleared:
        out.write(f"override {slot['id']!r} cleared ({_scope_text(slot['scope'])})\n")
    return EXIT_OK


def limit_list(path: Path, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from rich.console import Console
    from rich.table import Table

    answer = request(path, "limit_list")
    if not answer.get("ok"):
        return _refused(answer, args.json, out)
    if args.json:
        print_json(answer, out)
        return EXIT_OK
    slots = answer.get("slots", [])
    console = Console(file=out, highlight=False, width=None if out.isatty() else 120)
    if not slots:
        console.print("no limit slots set")
        return EXIT_OK
    table = Table(
        title=f"limit slots (times in {answer.get('timezone', 'site time')})",
        title_justify="left",
    )
    for column in ("active", "source", "id", "scope", "value", "window"):
        table.add_column(column, no_wrap=True)
    table.add_column("note")
    for slot in slots:
        table.add_row(
            "[green]yes[/green]" if slot["active"] else "no",
            slot["source"],
            slot["id"],
            _scope_text(slot["scope"]),
            _value_text(slot),
            _window_text(slot),
            slot.get("note") or "",
        )
    console.print(table)
    active = sum(1 for s in slots if s["active"])
    console.print(f"{len(slots)} slot{'s' if len(slots) != 1 else ''}, {active} active now")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _refused(answer: dict[str, Any], as_json: bool, out: TextIO) -> int:
    return refused(answer, as_json=as_json, out=out, options=_OPTION_OF_FIELD)


def _scope_text(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return f"{kind} {name}" if name else kind


def _value_text(slot: dict[str, Any]) -> str:
    if slot.get("current_a") is not None:
        return f"{slot['current_a']:g} A per phase"
    text = f"{slot['power_w'] / 1000:g} kW"
    if slot.get("floor_w") is not None:
        text += f" (floor {slot['floor_w'] / 1000:g} kW)"
    return text


def _time_text(iso: str) -> str:
    """``2026-11-29T18:00:00+01:00`` -> ``2026-11-29 18:00`` (the site's local time)."""
    date, _, clock = iso.partition("T")
    return f"{date} {clock[:5]}"


def _window_text(slot: dict[str, Any]) -> str:
    starts, ends = slot.get("starts_at"), slot.get("ends_at")
    if starts and ends:
        until = _time_text(ends)
        if until[:10] == _time_text(starts)[:10]:
            until = until[11:]  # same day: the clock time says it
        return f"from {_time_text(starts)} until {until}"
    if ends:
        return f"until {_time_text(ends)}"
    if starts:
        return f"from {_time_text(starts)}, open-ended"
    return "open-ended"
