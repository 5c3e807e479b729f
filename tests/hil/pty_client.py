"""Test helper: a master in another process. Reads a Heidelberg's state (IR 5) once.

``python -m tests.hil.pty_client PORT BAUD PARITY UNIT`` prints ``reply <hex>``, ``silence``,
or ``cannot open: <error>``; tests/hil/test_site_buses.py runs it plain and through
``python -m hil.ptymaster``.
"""

from __future__ import annotations

import sys
import termios
import time

import serial

from hil.devices.rtu import crc_ok, rtu_frame


def main(argv: list[str]) -> int:
    port, baud, parity, unit = argv[0], int(argv[1]), argv[2], int(argv[3])
    try:
        link = serial.Serial(port, baud, parity=parity, timeout=0.3)
    except (serial.SerialException, OSError, termios.error) as exc:
        print(f"cannot open: {exc}")
        return 0
    with link:
        link.write(rtu_frame(unit, bytes([4, 0, 5, 0, 1])))
        deadline = time.monotonic() + 1.0
        reply = b""
        while time.monotonic() < deadline and len(reply) < 7:
            reply += link.read(7 - len(reply))
    print(f"reply {reply.hex()}" if reply and crc_ok(reply) else "silence")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
