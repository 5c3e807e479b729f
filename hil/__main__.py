"""hil: command line for the simulated site: `python -m hil run SCENARIO` and `python -m hil list`.

`run` serves the scenario on loopback until SIGINT/SIGTERM (or --duration), optionally writing
the evsite site config that points at it, and prints exactly one line `hil ready <...>` on
stdout once every server listens, so a test or a Makefile can wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import yaml

from hil.scenario import ScenarioError, load_scenario, shipped_scenarios
from hil.site import SimulatedSite


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m hil", description="evsite simulated charge site"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve a scenario on loopback Modbus TCP and RS-485 ptys")
    run.add_argument("scenario", help="scenario file, or the name of a shipped one (e.g. demo)")
    run.add_argument(
        "--port-base", type=int, default=0, help="first port (0: free ports from the OS)"
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--site-config-out", type=Path, help="write the evsite site config YAML here")
    run.add_argument(
        "--state-dir", type=Path, help="service.state_dir (default: beside the config)"
    )
    run.add_argument(
        "--runtime-dir", type=Path, help="service.runtime_dir (default: beside the config)"
    )
    run.add_argument("--trace", type=Path, help="write a JSON line per 0.5 s here")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument(
        "--status-every", type=float, default=0.0, help="status line to stderr every S s"
    )
    commands.add_parser("list", help="list the shipped scenarios")
    commands.add_parser(
        "demo", add_help=False, help="simulated site + the real controller, live status"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from hil.demo import main as demo_main  # noqa: PLC0415 - only this command needs it

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "list":
        return _list()
    try:
        return asyncio.run(_run(args))
    except ScenarioError as exc:
        print(f"hil: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hil: {exc}", file=sys.stderr)
        return 1


def _list() -> int:
    for path in shipped_scenarios():
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            print(f"{path.stem:12} INVALID: {exc}")
            continue
        print(f"{scenario.name:12} {len(scenario.evses)} EVSEs  {scenario.description}  ({path})")
    return 0


async def _run(args: argparse.Namespace) -> int:
    site = SimulatedSite(
        args.scenario, port_base=args.port_base, host=args.host, trace_path=args.trace
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await site.start()
    try:
        if args.site_config_out is not None:
            out = _write_site_config(site, args.site_config_out, args.state_dir, args.runtime_dir)
            print(f"hil ready {out}", flush=True)
        else:
            print(f"hil ready {json.dumps({**site.ports, **site.serial_ports})}", flush=True)
        status_task = (
            asyncio.create_task(_status(site, args.status_every)) if args.status_every > 0 else None
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
        if status_task is not None:
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
    finally:
        await site.stop()
    return 0


def _write_site_config(
    site: SimulatedSite, out: Path, state_dir: Path | None, runtime_dir: Path | None
) -> Path:
    """Write the evsite config (directories default to beside it) atomically; return its path."""
    state = (state_dir or out.parent / "state").resolve()
    runtime = (runtime_dir or out.parent / "run").resolve()
    for directory in (state, runtime, out.parent):
        directory.mkdir(parents=True, exist_ok=True)
    config = site.site_config(state_dir=state, runtime_dir=runtime)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    partial.replace(out)
    return out


async def _status(site: SimulatedSite, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        snap = site.snapshot()
        grid = "/".join(f"{c:.1f}" for c in snap["grid_current_a"])
        evses = "  ".join(
            f"{evse_id}:{e['state']} {e['applied_limit_a']:.0f}A->"
            + "/".join(f"{c:.0f}" for c in e["ev_current_a"])
            for evse_id, e in snap["evses"].items()
        )
        print(f"t={snap['t_s']:6.1f}s grid {grid} A  {evses}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
