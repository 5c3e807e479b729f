"""Test support: the hil terminal simulator on a pty or TCP, and the driver pointed at it.

Timers are shortened (T3 0.3 s, T4 1 s, the simulator's own T3 0.3 s) so that the failure
cases cost seconds, not minutes; the protocol is otherwise the real one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers.terminal.profile import TerminalProfile
from drivers.terminal.transport import SerialLink, TcpLink, ZvtTerminal
from drivers.terminal.zvt import Timeouts, Unsolicited
from hil.terminal import Ledger, Script, SimulatedTerminal

FAST = Timeouts(t1_s=0.1, t3_s=0.3, t4_s=1.0)
QUICK = Timeouts(t1_s=0.05, t3_s=0.2, t4_s=0.5)  # for tests that wait for a timer to expire
LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")
KINDS = [pytest.param("pty", marks=LINUX_ONLY), "tcp"]


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def fast_script(**changes: Any) -> Script:
    return Script(answer_timeout_s=0.3, **changes)


@asynccontextmanager
async def rig(
    kind: str,
    *,
    script: Script | None = None,
    ledger: Ledger | None = None,
    timeouts: Timeouts = FAST,
    profile: TerminalProfile | None = None,
    register: bool = True,
    on_unsolicited: Callable[[Unsolicited], None] | None = None,
) -> AsyncIterator[tuple[SimulatedTerminal, ZvtTerminal]]:
    """A simulator and a registered driver on one link; both stopped afterwards."""
    sim = SimulatedTerminal(script=script or fast_script(), ledger=ledger)
    link: SerialLink | TcpLink
    if kind == "pty":
        link = SerialLink(port=await sim.start_pty())
    else:
        link = TcpLink(host="127.0.0.1", port=await sim.start_tcp(), connect_timeout_s=1.0)
    terminal = ZvtTerminal(link, timeouts=timeouts, profile=profile, on_unsolicited=on_unsolicited)
    try:
        if register:
            await terminal.register()
        yield sim, terminal
    finally:
        await terminal.close()
        await sim.stop()
