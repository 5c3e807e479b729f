"""The open pre-auth enquiry trusts only the terminal's list (06 1E B8 ...).

After the ECR restarts mid-command, a terminal may still finish the old command on the line:
its 04 0F and 06 0F then end our enquiry's exchange. That completion says nothing about what
is open; reading it as "none open" would leave an orphaned pre-authorisation behind.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.terminal.errors import TerminalUnavailable
from drivers.terminal.transport import CommandResult, TcpLink, ZvtTerminal
from drivers.terminal.zvt import Completion


def test_an_enquiry_ended_by_a_plain_completion_is_no_answer() -> None:
    terminal = ZvtTerminal(TcpLink(host="127.0.0.1", port=1))

    async def stale(command: Any, **_: Any) -> CommandResult:
        return CommandResult(command=command.name, completion=Completion())

    terminal.run = stale  # type: ignore[method-assign]
    with pytest.raises(TerminalUnavailable, match="without the list"):
        asyncio.run(terminal.open_pre_auths())
