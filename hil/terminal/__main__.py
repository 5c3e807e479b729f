"""hil: serve the simulated ZVT terminal: `python -m hil.terminal (--pty | --tcp PORT) [...]`.

Prints one line `hil terminal ready <pty path | tcp port>` on stdout once it listens, then
serves until SIGINT/SIGTERM. ``--ledger FILE`` keeps the terminal's books in a JSON file, so a
test can read them while it runs and after it stops, and a restarted simulator carries on
with the same open pre-auths. ``--set NAME=VALUE`` sets a ``Script`` field (ints may be hex:
``--set decline_code=0x6C``, ``--set power_loss_at=booked``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path

from hil.terminal.ledger import Ledger
from hil.terminal.simulator import Script, SimulatedTerminal, Step


def _script(settings: list[str]) -> Script:
    script = Script()
    types = {f.name: f.type for f in dataclasses.fields(Script)}
    for item in settings:
        name, _, raw = item.partition("=")
        if name not in types:
            raise SystemExit(f"unknown script field {name!r}; known: {', '.join(types)}")
        kind = str(types[name])
        value: object
        if raw.lower() == "none":
            value = None
        elif "Step" in kind:
            value = Step(raw)
        elif "bytes" in kind:
            value = bytes.fromhex(raw)
        elif "float" in kind:
            value = float(raw)
        elif "int" in kind:
            value = int(raw, 0)
        else:
            value = raw
        setattr(script, name, value)
    return script


async def _serve(args: argparse.Namespace) -> None:
    ledger = Ledger.load(args.ledger) if args.ledger else Ledger()
    sim = SimulatedTerminal(ledger=ledger, script=_script(args.set), pace=not args.no_pace)
    where = await sim.start_pty() if args.pty else str(await sim.start_tcp(args.host, args.tcp))
    print(f"hil terminal ready {where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.terminal", description="simulated ZVT payment terminal"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    where.add_argument("--tcp", type=int, metavar="PORT", help="listen on this TCP port (0: any)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ledger", type=Path, help="keep the terminal's books in this file")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--no-pace", action="store_true", help="do not pace bytes at 9600 baud")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
