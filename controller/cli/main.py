"""CLI layer: `evsite` and its subcommands (argparse; every read command takes --json)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from controller import __version__
from controller.cli import devices, limits, payments, sessions
from controller.cli.client import ServiceUnreachable, request
from controller.core.errors import ConfigError

DEFAULT_SOCKET = Path("/run/evsite/evsite.sock")


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        from controller.config import load_config

        return Path(load_config(Path(args.config)).service.runtime_dir) / "evsite.sock"
    return DEFAULT_SOCKET


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.app.run import run

    return run(Path(args.config), log_format=args.log_format)


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from controller.cli.status_view import render_status

    path = _socket_path(args)
    if not args.watch:
        answer = request(path, "status")
        status = answer.get("status", {})
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            console = Console()
            if not console.is_terminal:  # a pipe or a log: do not wrap at 80 columns
                console = Console(width=120)
            console.print(render_status(status))
        return 0
    console = Console()
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        while True:
            try:
                live.update(render_status(request(path, "status")["status"]))
            except ServiceUnreachable as exc:
                live.update(f"[red]{exc}[/red]")
            time.sleep(args.interval)


def _cmd_limit(args: argparse.Namespace) -> int:
    return int(args.limit_func(_socket_path(args), args))


def _cmd_tool(args: argparse.Namespace) -> int:
    return int(args.tool_func(_socket_path(args), args))


def _cmd_faults(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    answer = request(_socket_path(args), "faults")
    if not answer.get("ok"):
        print(f"evsite: {answer.get('error')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"active": answer["active"], "cleared": answer["cleared"]}, indent=2))
        return 0
    rows = answer["active"] + (answer["cleared"] if args.all else [])
    if not rows:
        print("no active faults" if not args.all else "no faults since the service started")
        return 0
    table = Table(title="faults", title_justify="left")
    for col in ("code", "subject", "detail", "raised", "cleared", "times"):
        table.add_column(col)
    for f in rows:
        table.add_row(
            f["code"], f["subject"], f["detail"], f["raised_at"], f["cleared_at"] or "active",
            str(f["occurrences"]),
        )  # fmt: skip
    Console().print(table)
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from controller.cli.config_check import run_config_check

    return run_config_check(Path(args.file), as_json=args.json, out=sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evsite",
        description="Controller for EV charge sites: load management, devices, cloud links.",
    )
    parser.add_argument("--version", action="version", version=f"evsite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the controller service")
    p.add_argument("-c", "--config", required=True, help="site configuration (YAML)")
    p.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default=None,
        help="override the config's service.log_format",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="show the running service's state")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="refresh interval for --watch")
    _add_target(p)
    p.set_defaults(func=_cmd_status)

    limits.add_parser(sub, _add_target, _cmd_limit)
    sessions.add_parser(sub, _add_target, _cmd_tool)
    payments.add_parser(sub, _add_target, _cmd_tool)

    p = sub.add_parser("faults", help="show active (and with --all, cleared) faults")
    p.add_argument("--json", action="store_true", help="print active and cleared faults as JSON")
    p.add_argument("--all", action="store_true", help="include faults cleared since the start")
    _add_target(p)
    p.set_defaults(func=_cmd_faults)

    devices.add_parser(sub, _add_target, _cmd_tool)

    p = sub.add_parser("config", help="work with site configuration files")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    pc = csub.add_parser("check", help="validate a site configuration and summarise it")
    pc.add_argument("file", help="site configuration (YAML)")
    pc.add_argument("--json", action="store_true", help="print the result as JSON")
    pc.set_defaults(func=_cmd_config_check)
    return parser


def _add_target(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", help="find the service's socket from this site config")
    g.add_argument("--socket", help=f"the service's control socket (default {DEFAULT_SOCKET})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ServiceUnreachable as exc:
        print(f"evsite: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        # 78 (EX_CONFIG): the unit's RestartPreventExitStatus stops systemd retrying a bad file.
        return 78 if args.command == "run" else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
