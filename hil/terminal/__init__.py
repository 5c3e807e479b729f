"""hil: a simulated ZVT payment terminal (pty or TCP) with its own ledger and fault scripts.

Written from the reference (../shared/reference/payment.md) on its own: nothing here imports
the product's ZVT codec, so a wrong CRC or BMP cannot pass on both sides.
"""

from hil.terminal.ledger import Entry, Ledger, PreAuth
from hil.terminal.simulator import Script, SimulatedTerminal, Step, TerminalCounters

__all__ = [
    "Entry",
    "Ledger",
    "PreAuth",
    "Script",
    "SimulatedTerminal",
    "Step",
    "TerminalCounters",
]
