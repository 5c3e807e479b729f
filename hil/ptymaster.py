"""hil: run a program as the master of simulated RS-485 lines from another process.

``python -m hil.ptymaster MODULE [ARGS...]`` runs ``MODULE`` as ``__main__`` (like
``python -m MODULE ARGS``) after ``hil.devices.rtu.install_master_shim()``: the process's ptys
then take even or odd parity as a USB RS-485 adapter would (Linux ptys refuse it, so pyserial
cannot open one at 8E1), and the settings it asks for are published for the simulated line to
check. The program itself is unchanged; end-to-end tests start the real controller this way,
e.g. ``python -m hil.ptymaster controller.cli.main run -c site.yaml``.
"""

from __future__ import annotations

import runpy
import sys

from hil.devices.rtu import install_master_shim


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m hil.ptymaster MODULE [ARGS...]", file=sys.stderr)
        raise SystemExit(2)
    install_master_shim()
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
