"""The ZVT transport against the hil terminal simulator, over a real pty pair and over TCP.

Every command of a charge session, end to end, checked against the simulator's own ledger.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from drivers.terminal.errors import TerminalRefused
from drivers.terminal.profile import PROFILES
from drivers.terminal.zvt import (
    Intermediate,
    PreAuthorisation,
    Registration,
    StatusInformation,
)
from drivers.terminal.zvt.commands import CONFIG_PRINT_LINES, DEFAULT_CONFIG_BYTE
from hil.terminal import Ledger
from tests.drivers.terminal.rig import KINDS, fast_script, rig, run


@pytest.mark.parametrize("kind", KINDS)
def test_registration_and_status_enquiry(kind: str) -> None:
    async def main() -> None:
        async with rig(kind, register=False) as (sim, term):
            result = await term.register()
            assert result.completion is not None
            assert result.completion.terminal_id == "52523535"
            assert sim.config_byte == DEFAULT_CONFIG_BYTE
            status = await term.status()
            assert status.terminal_status == 0x00
            assert status.software_version == "hil-zvt-sim 1.0"
            assert sim.counters.commands == ["06 00", "05 01"]

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_pre_auth_then_capture_by_partial_reversal(kind: str) -> None:
    async def main() -> None:
        async with rig(kind) as (sim, term):
            printed: list[str] = []
            approval = await term.pre_authorise(2500, on_print=printed.append)
            assert approval.approved and approval.amount_cents == 2500
            assert approval.receipt_number is not None
            assert approval.masked_pan == "559884******8074"
            assert "PRE-AUTHORISATION" in printed and "Card 559884******8074" in printed
            receipt = approval.receipt_number
            assert sim.ledger.open_receipts() == [receipt]

            result = await term.settle(
                receipt_number=receipt, pre_authorised_cents=2500, final_cents=1234
            )
            assert result.status is not None and result.status.amount_cents == 1234
            assert "EUR 12.34" in result.receipt_lines
            pre = sim.ledger.pre_auths[receipt]
            assert (pre.state, pre.captured_cents) == ("captured", 1234)
            (capture,) = sim.ledger.captures(receipt)
            assert capture.kind == "partial_reversal" and capture.amount_cents == 2500 - 1234
            assert sim.ledger.open_receipts() == []

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_pre_auth_then_capture_by_book_total(kind: str) -> None:
    async def main() -> None:
        async with rig(kind, profile=PROFILES["book_total"]) as (sim, term):
            approval = await term.pre_authorise(5000)
            assert approval.receipt_number is not None
            await term.settle(
                receipt_number=approval.receipt_number,
                pre_authorised_cents=5000,
                final_cents=4321,
            )
            (capture,) = sim.ledger.captures(approval.receipt_number)
            assert capture.kind == "book_total" and capture.amount_cents == 4321
            assert sim.ledger.pre_auths[approval.receipt_number].captured_cents == 4321
            assert sim.counters.commands[-1] == "06 24"

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_pre_auth_reversal_releases_everything(kind: str) -> None:
    async def main() -> None:
        async with rig(kind) as (sim, term):
            approval = await term.pre_authorise(2500)
            assert approval.receipt_number is not None
            result = await term.release(approval.receipt_number)
            assert result.status is not None and result.status.amount_cents == 2500
            assert sim.ledger.pre_auths[approval.receipt_number].state == "released"
            assert sim.ledger.captures(approval.receipt_number) == []

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_open_pre_auth_enquiry_and_end_of_day(kind: str) -> None:
    async def main() -> None:
        async with rig(kind) as (sim, term):
            assert await term.open_pre_auths() == ()
            first = await term.pre_authorise(1000)
            second = await term.pre_authorise(2000)
            assert first.receipt_number is not None and second.receipt_number is not None
            assert await term.open_pre_auths() == (first.receipt_number, second.receipt_number)

            # never an end of day with pre-auths open: the terminal refuses with the list
            with pytest.raises(TerminalRefused) as refused:
                await term.end_of_day()
            assert refused.value.result_code == 0xB8
            assert refused.value.open_receipts == (first.receipt_number, second.receipt_number)

            await term.settle(
                receipt_number=first.receipt_number, pre_authorised_cents=1000, final_cents=700
            )
            await term.release(second.receipt_number)
            assert await term.open_pre_auths() == ()
            day = await term.end_of_day()
            assert day.status is not None and day.status.amount_cents == 700
            assert sim.ledger.entries[-1].kind == "end_of_day"
            assert all(p.settled for p in sim.ledger.pre_auths.values() if p.state == "captured")

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_abort_while_the_terminal_waits_for_the_card(kind: str) -> None:
    async def main() -> None:
        script = fast_script(intermediates=50, intermediate_interval_s=0.05)
        async with rig(kind, script=script) as (sim, term):
            waiting = asyncio.Event()

            def on_intermediate(event: Intermediate) -> None:
                waiting.set()

            task = asyncio.create_task(
                term.run(PreAuthorisation(amount_cents=2500), on_intermediate=on_intermediate)
            )
            await asyncio.wait_for(waiting.wait(), 2.0)
            assert await term.abort()
            with pytest.raises(TerminalRefused) as refused:
                await task
            assert refused.value.result_code == 0x6C
            assert sim.ledger.open_receipts() == []
            assert sim.ledger.entries[-1].result_code == 0x6C
            assert not await term.abort()  # nothing runs any more
            await term.status()  # and the link is fine

    run(main)


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux ptys")
def test_receipts_line_by_line_when_registered_for_06_d1() -> None:
    async def main() -> None:
        async with rig("pty", register=False) as (_sim, term):
            await term.run(
                Registration(password=0, config_byte=DEFAULT_CONFIG_BYTE | CONFIG_PRINT_LINES)
            )
            lines: list[str] = []
            await term.pre_authorise(990, on_print=lines.append)
            assert lines[0] == "EVSITE HIL TERMINAL" and lines[-1] == "APPROVED"
            assert "EUR 9.90" in lines

    run(main)


def test_the_result_keeps_the_status_information_and_no_card_data() -> None:
    async def main() -> None:
        async with rig("tcp") as (_sim, term):
            result = await term.run(PreAuthorisation(amount_cents=2500))
            status = result.status
            assert isinstance(status, StatusInformation)
            assert status.receipt_number == result.receipt_number
            assert "2912" not in repr(result)  # the expiry date the simulator sent

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_open_pre_auths_left_from_before_are_listed_and_released(kind: str) -> None:
    async def main() -> None:
        books = Ledger()
        left = [books.open_pre_auth(2500, 978).receipt_number for _ in range(2)]
        async with rig(kind, ledger=books) as (sim, term):
            assert await term.open_pre_auths() == tuple(left)
            for receipt in left:
                await term.release(receipt)
            assert await term.open_pre_auths() == ()
            assert [p.state for p in sim.ledger.pre_auths.values()] == ["released"] * 2

    run(main)
