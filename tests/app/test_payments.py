"""Card payments end to end in-process: the payment shell, the session desk, the SQLite journal
and the real ZVT driver, against the simulated terminal (hil.terminal) on a pty or on TCP.

What is checked is what a driver, an operator or an auditor would see: the terminal's own
ledger (what the card was charged), the journal rows on disk (read over a connection of our
own, as the next run or `evsite report` would), the session at the connector. A "crash" drops
the controller's memory and its tasks at once and starts a new one on the same state file;
the simulated terminal and its ledger live on, as a real terminal does.

Named ``test_caseNN_...`` after reference/payment.md §8 where they cover a failure case at the
level of the payment flow and its journal (the link-level ones are in
tests/drivers/terminal/test_transport_failures.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog

from controller.app.payments import PaymentDesk, PaymentRefused, SessionPricing
from controller.app.sessions import SessionDesk
from controller.config import load_config_text
from controller.core.model import EvseReading, EvseState, Session
from controller.core.payment import PaymentState
from controller.core.sessions import (
    AuthMethod,
    SessionPhase,
    SessionRefused,
    SessionSettings,
    StopReason,
)
from controller.core.tariff import Tariff, round_half_up
from controller.store.db import Database
from controller.store.journal import PaymentJournal
from controller.store.sessions import SessionStore
from drivers.terminal.settings import SerialLink, TcpLink, TerminalSettings, build
from hil.terminal import Entry, Ledger, Script, SimulatedTerminal, Step
from tests.drivers.terminal.rig import KINDS

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=BERLIN)

SITE = load_config_text(
    """\
site: {id: pay, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}, max_current_a: 16}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}, max_current_a: 16}
"""
).site

# 0.39 EUR/kWh + 0.05 EUR/min + 0.50 EUR per session, 19 % VAT included; 25.00 pre-auth.
TARIFF = Tariff(
    id="std",
    currency="EUR",
    vat_rate_pct=Decimal(19),
    price_per_kwh=Decimal("0.39"),
    price_per_minute=Decimal("0.05"),
    session_fee=Decimal("0.50"),
    preauth_cents=2500,
)
POWER_W = 11_000.0  # what an EV draws while allowed: 16 A x 3 x 230 V (about)


def expected_cents(tariff: Tariff, energy_wh: Fraction, seconds: Fraction) -> int:
    """The price of a flat tariff, written out on its own (not through core.tariff.cost)."""
    exact = (
        energy_wh * Fraction(tariff.price_per_kwh) / 10
        + seconds * Fraction(tariff.price_per_minute) * 100 / 60
        + Fraction(tariff.session_fee) * 100
    )
    return round_half_up(exact)


class WatchedLedger(Ledger):
    """The terminal's books; ``on_book`` sees each booking as the terminal makes it."""

    on_book: Callable[[str, int | None], None] | None = None

    def record(self, kind: str, **kw: Any) -> Entry:
        entry = super().record(kind, **kw)
        if self.on_book is not None and entry.result_code == 0:
            self.on_book(kind, entry.receipt_number)
        return entry


@dataclass
class Rig:
    """One controller (desk + pricing + payments) on a state file, and the cars it sees."""

    path: Path
    sim: SimulatedTerminal
    link: SerialLink | TcpLink
    tariff: Tariff = TARIFF
    stop_headroom_s: float = 2.0
    preauth_on_plug_in: bool = False
    end_of_day_every_s: float = 86_400.0
    now_s: float = 1000.0
    cars: dict[str, bool] = field(default_factory=lambda: {"cp1": False, "cp2": False})
    energy_wh: dict[str, float] = field(default_factory=lambda: {"cp1": 5_000.0, "cp2": 0.0})
    engine: dict[str, Session] = field(default_factory=dict)
    full: set[str] = field(default_factory=set)  # EVs that are full: plugged in, not drawing
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    db: Database = field(init=False)
    desk: SessionDesk = field(init=False)
    pricing: SessionPricing = field(init=False)
    payments: PaymentDesk = field(init=False)
    journal: PaymentJournal = field(init=False)

    async def boot(self) -> None:
        self.db = Database(self.path)
        self.desk = SessionDesk(
            site=SITE,
            store=SessionStore(self.db),
            settings=SessionSettings(free_vend=False, connection_timeout_s=60.0),
            clock=lambda: self.now_s,
            wall_clock=self.wall,
            new_id=lambda: f"s{next(self.ids)}",
        )
        self.desk.restore(clean_shutdown=False)
        self.journal = PaymentJournal(self.db, tz=BERLIN)
        self.pricing = SessionPricing(
            site=SITE,
            desk=self.desk,
            journal=self.journal,
            tariff=lambda: self.tariff,
            clock=lambda: self.now_s,
            save_period_s=5.0,
        )
        settings = TerminalSettings(
            link=self.link, t1_s=0.1, t3_s=0.3, t4_s=1.0, retry_s=0.05,
            stop_headroom_s=self.stop_headroom_s, preauth_on_plug_in=self.preauth_on_plug_in,
            end_of_day_every_s=self.end_of_day_every_s,
        )  # fmt: skip
        self.payments = PaymentDesk(
            settings=settings,
            terminal=build(settings),
            journal=self.journal,
            desk=self.desk,
            pricing=self.pricing,
            site=SITE,
            clock=lambda: self.now_s,
            wall_clock=self.wall,
            new_id=lambda: f"p{next(self.ids)}",
        )
        self.payments.listeners.append(self.events.append)
        await self.payments.start()

    async def ready(self) -> None:
        await asyncio.wait_for(self.payments.ready.wait(), 10.0)

    async def crash(self) -> None:
        """The controller dies: tasks gone mid-command, memory gone; the file stays."""
        for task in list(self.payments._tasks):
            task.cancel()
        await asyncio.sleep(0)
        await self.payments.terminal.close()
        self.db.close()

    async def restart(self) -> None:
        await self.crash()
        await self.sim.wait_idle(10.0)
        await self.boot()
        await self.ready()

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now_s)

    def reading(self, cid: str) -> EvseReading:
        drawing = self.draws(cid)
        return EvseReading(
            at_s=self.now_s,
            state=EvseState.C if drawing else EvseState.B if self.cars[cid] else EvseState.A,
            current_a=(16.0, 16.0, 16.0) if drawing else (0.0, 0.0, 0.0),
            energy_wh=self.energy_wh[cid],
        )

    def draws(self, cid: str) -> bool:
        """The EV draws when the engine let its connector draw at the last tick."""
        session = self.engine.get(cid)
        return (
            self.cars[cid]
            and cid not in self.full
            and session is not None
            and session.charging_allowed
        )

    def tick(self, dt_s: float = 1.0) -> None:
        """One control tick, as ControlLoop.tick and run.py's on_tick do it."""
        self.now_s += dt_s
        for cid in self.cars:
            if self.draws(cid):
                self.energy_wh[cid] += POWER_W * dt_s / 3600.0
        readings = {cid: self.reading(cid) for cid in self.cars}
        self.engine = dict(self.desk.observe(readings, self.now_s, self.wall()))
        self.pricing.on_tick(readings, None, self.wall())
        self.payments.on_tick()

    async def until(self, what: Callable[[], bool], timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not what():
            assert loop.time() < deadline, "timed out"
            await asyncio.sleep(0.01)

    def rows(self) -> list[dict[str, Any]]:
        """The journal as another process reads it."""
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM payments ORDER BY created_at")]
        finally:
            conn.close()

    def row(self, payment_id: str) -> dict[str, Any]:
        (found,) = [r for r in self.rows() if r["id"] == payment_id]
        return found

    def session_row(self, session_id: str) -> dict[str, Any]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            r = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
            return dict(r)
        finally:
            conn.close()

    def settled(self) -> bool:
        return not self.payments.live() or all(
            p.state is PaymentState.CHARGING for p in self.payments.live()
        )


@asynccontextmanager
async def rig(
    kind: str, tmp_path: Path, *, script: Script | None = None, **kw: Any
) -> AsyncIterator[Rig]:
    ledger = WatchedLedger()
    sim = SimulatedTerminal(script=script or Script(answer_timeout_s=0.3), ledger=ledger)
    link: SerialLink | TcpLink
    if kind == "pty":
        link = SerialLink(port=await sim.start_pty())
    else:
        link = TcpLink(host="127.0.0.1", port=await sim.start_tcp(), connect_timeout_s=1.0)
    r = Rig(path=tmp_path / "evsite.sqlite3", sim=sim, link=link, **kw)
    await r.boot()
    try:
        yield r
    finally:
        await r.payments.close()
        r.db.close()
        await sim.stop()


def run(coro: Callable[[], Any]) -> None:
    asyncio.run(coro())


def metered(session: dict[str, Any]) -> tuple[Fraction, Fraction]:
    """A stored session's energy (Wh) and whole seconds, as the tariff prices them."""
    energy = Fraction(str(session["meter_stop_wh"])) - Fraction(str(session["meter_start_wh"]))
    ended = datetime.fromisoformat(session["ended_at"])
    started = datetime.fromisoformat(session["started_at"])
    return energy, Fraction(int((ended - started).total_seconds()))


async def charge(r: Rig, cid: str, seconds: int) -> str:
    """Plug in, pay by card at the terminal, charge ``seconds``; returns the payment id."""
    r.cars[cid] = True
    r.tick()
    assert r.desk.record(cid) is not None
    assert r.desk.record(cid).phase is SessionPhase.PENDING  # type: ignore[union-attr]
    p = await r.payments.present_card(None, by="test")
    assert p.state is PaymentState.CHARGING, p
    for _ in range(seconds):
        r.tick()
    return p.id


# --- the flow -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_card_pre_auth_charge_capture_at_the_tariff_price(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(kind, tmp_path) as r:
            await r.ready()
            seen: list[tuple[str, str]] = []

            def at_booking(what: str, _receipt: int | None) -> None:
                # the moment the terminal books: the journal must already say so
                seen.append((what, r.rows()[-1]["state"]))

            r.sim.ledger.on_book = at_booking  # type: ignore[attr-defined]
            energy_before = r.energy_wh["cp1"]
            pid = await charge(r, "cp1", seconds=90)
            rec = r.desk.record("cp1")
            assert rec is not None and rec.method is AuthMethod.CARD and rec.payment_id == pid
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "captured")

            row = r.row(pid)
            session = r.session_row(row["session_id"])
            energy, seconds = metered(session)
            assert float(energy) == pytest.approx(r.energy_wh["cp1"] - energy_before)
            price = expected_cents(TARIFF, energy, seconds)
            assert 0 < price < 2500
            assert row["cost_cents"] == row["final_cents"] == row["captured_cents"] == price
            # the terminal's own books: one pre-auth of 25.00, captured once at the price
            receipt = row["receipt_number"]
            assert r.sim.ledger.pre_auths[receipt].amount_cents == 2500
            assert r.sim.ledger.pre_auths[receipt].state == "captured"
            assert r.sim.ledger.pre_auths[receipt].captured_cents == price
            assert len(r.sim.ledger.captures(receipt)) == 1
            # journal before the command: the terminal booked each with the intent on disk
            assert seen == [("pre_auth", "preauth_sent"), ("partial_reversal", "capture_sent")]
            # receipts kept as text (masked PAN only) and published
            assert "PRE-AUTHORISATION" in row["receipt_text"] and "CAPTURE" in row["receipt_text"]
            assert "559884******8074" in row["receipt_text"]
            assert row["masked_pan"] == "559884******8074"
            kinds = [e["event"] for e in r.events]
            assert kinds == [
                "payment_authorised", "payment_charging", "payment_session_ended",
                "payment_captured",
            ]  # fmt: skip
            captured = r.events[-1]
            assert captured["payment"]["captured_cents"] == price
            assert "CAPTURE" in captured["payment"]["receipt_text"]
            assert r.events[2]["cost"]["total_cents"] == price
            # and the session's stored cost agrees to the cent
            cost = r.journal.cost(row["session_id"])
            assert cost is not None and cost.final and cost.total_cents == price

    run(main)


def test_case12_nothing_drawn_releases_the_whole_pre_auth(tmp_path: Path) -> None:
    free_time = Tariff(id="e", currency="EUR", vat_rate_pct=Decimal(19),
                       price_per_kwh=Decimal("0.39"), preauth_cents=3000)  # fmt: skip

    async def main() -> None:
        async with rig("tcp", tmp_path, tariff=free_time) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=0)
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "released")
            row = r.row(pid)
            assert row["cost_cents"] == 0 and row["captured_cents"] == 0
            assert r.sim.ledger.pre_auths[row["receipt_number"]].state == "released"
            assert r.sim.ledger.captured_total_cents() == 0

    run(main)


def test_case12_the_session_stops_before_its_cost_passes_the_pre_auth(tmp_path: Path) -> None:
    # 5.00 EUR/kWh with an idle fee and a 2.00 EUR pre-auth: about 30 Wh, a few seconds at 11 kW
    dear = Tariff(id="d", currency="EUR", vat_rate_pct=Decimal(19), price_per_kwh=Decimal(5),
                  idle_fee_per_minute=Decimal("0.10"), preauth_cents=200)  # fmt: skip

    async def main() -> None:
        async with rig("tcp", tmp_path, tariff=dear) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=200)
            rec = r.desk.record("cp1")
            assert rec is not None and rec.phase is SessionPhase.FINISHING
            assert rec.stop_reason is StopReason.OTHER and rec.stopped_by == "payment"
            assert not r.engine["cp1"].charging_allowed  # no current after the stop
            await r.until(lambda: r.row(pid)["state"] == "captured")
            row = r.row(pid)
            assert 150 < row["cost_cents"] <= 200  # stopped close to, never past, the pre-auth
            assert row["captured_cents"] == row["cost_cents"]
            assert r.sim.ledger.captured_total_cents() == row["cost_cents"]

    run(main)


def test_case11_the_same_stop_twice_captures_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=30)
            r.desk.stop("cp1", reason=StopReason.REMOTE, by="mqtt")
            with pytest.raises(SessionRefused):
                r.desk.stop("cp1", reason=StopReason.REMOTE, by="mqtt")
            r.tick()
            await r.until(lambda: r.row(pid)["state"] == "captured")
            r.cars["cp1"] = False  # the car leaves: the session closes, nothing more is taken
            r.tick()
            await asyncio.sleep(0.2)
            receipt = r.row(pid)["receipt_number"]
            assert len(r.sim.ledger.captures(receipt)) == 1
            assert len([e for e in r.events if e["event"] == "payment_captured"]) == 1

    run(main)


def test_case07_a_declined_card_starts_no_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path, script=Script(answer_timeout_s=0.3)) as r:
            await r.ready()
            r.sim.script.decline_code = 0x6C
            r.cars["cp1"] = True
            r.tick()
            p = await r.payments.present_card("cp1", by="test")
            assert p.state is PaymentState.DECLINED and p.result_code == 0x6C
            r.tick()
            rec = r.desk.record("cp1")
            assert rec is not None and rec.phase is SessionPhase.PENDING
            assert not r.engine["cp1"].charging_allowed
            assert r.sim.ledger.open_receipts() == []
            assert r.row(p.id)["state"] == "declined"
            # the next card works
            p2 = await r.payments.present_card("cp1", by="test")
            assert p2.state is PaymentState.CHARGING

    run(main)


def test_case18_two_connectors_one_terminal_serialised_most_recent_car_first(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            r.sim.script.intermediates = 3  # the terminal takes a moment to read each card
            r.cars["cp1"] = True
            r.tick()
            r.cars["cp2"] = True
            r.tick()
            first = r.payments.begin(None, by="test")
            second = r.payments.begin(None, by="test")
            await r.until(
                lambda: all(
                    r.row(p.id)["state"] not in ("preauth_sent", "authorised")
                    for p in (first, second)
                )
            )
            assert r.row(first.id)["connector"] == "cp2"  # plugged in last: paid first
            assert r.row(second.id)["connector"] == "cp1"
            assert r.sim.counters.commands.count("06 22") == 2
            assert not r.sim.ledger.refusals()  # never 84 83: one command at a time
            assert {r.desk.record(c).method for c in ("cp1", "cp2")} == {AuthMethod.CARD}  # type: ignore[union-attr]
            # a third card with no car waiting is refused before the terminal hears of it
            with pytest.raises(PaymentRefused, match="no car waits"):
                r.payments.begin(None, by="test")
            assert r.sim.counters.commands.count("06 22") == 2

    run(main)


def test_a_card_the_desk_would_refuse_is_refused_before_the_terminal_hears_of_it(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            r.cars["cp1"] = True
            r.tick()
            # cp1 is reserved for another idTag (an OCPP reservation): no card session there.
            r.desk.holds.append(lambda cid, tag: "reserved" if cid == "cp1" else None)
            with pytest.raises(PaymentRefused, match="reserved"):
                r.payments.begin("cp1", by="test")
            with pytest.raises(PaymentRefused, match="no car waits"):
                r.payments.begin(None, by="test")  # the only waiting car is at cp1
            r.desk.holds.clear()
            r.desk.gates.append(lambda method: "outbox full" if method is AuthMethod.CARD else None)
            with pytest.raises(PaymentRefused, match="outbox full"):
                r.payments.begin("cp1", by="test")
            assert r.sim.counters.commands.count("06 22") == 0  # no card was pre-authorised
            assert r.rows() == []

    run(main)


# --- crashes and lost answers -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_case08_crash_between_06_22_and_04_0f_the_orphan_is_released(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with rig(kind, tmp_path) as r:
            await r.ready()
            r.sim.script.pause_at, r.sim.script.pause_s = Step.BOOKED, 0.5
            r.cars["cp1"] = True
            r.tick()
            p = r.payments.begin("cp1", by="test")
            await r.until(lambda: bool(r.sim.ledger.open_receipts()))
            assert r.row(p.id)["state"] == "preauth_sent"
            await r.restart()  # killed while the terminal was booking
            await r.until(r.settled)
            assert r.sim.ledger.open_receipts() == []
            (orphan,) = r.sim.ledger.pre_auths.values()
            assert orphan.state == "released"
            assert r.row(p.id)["state"] == "failed"
            rec = r.desk.record("cp1")
            assert rec is None or rec.method is not AuthMethod.CARD

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_case19_approved_but_no_result_is_released_never_charged(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        script = Script(answer_timeout_s=0.3, power_loss_at=Step.BOOKED, power_loss_on=0x22,
                        reboot_after_s=0.5)  # fmt: skip
        async with rig(kind, tmp_path, script=script) as r:
            await r.ready()
            r.cars["cp1"] = True
            r.tick()
            p = await r.payments.present_card("cp1", by="test")
            await r.until(lambda: r.row(p.id)["state"] == "failed", timeout_s=15)
            await r.until(lambda: r.sim.ledger.open_receipts() == [], timeout_s=15)
            assert [x.state for x in r.sim.ledger.pre_auths.values()] == ["released"]
            assert r.sim.ledger.captured_total_cents() == 0
            r.tick()
            rec = r.desk.record("cp1")
            assert rec is not None and rec.phase is SessionPhase.PENDING  # no session paid

    run(main)


def test_case06_t4_expires_after_06_22_then_the_late_approval_is_released(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            r.sim.script.pause_at, r.sim.script.pause_s = Step.ACK, 1.5  # past T4 (1 s)
            r.cars["cp1"] = True
            r.tick()
            p = await r.payments.present_card("cp1", by="test")
            r.sim.script.pause_at = None  # the terminal is quick again after this one
            assert p.state is PaymentState.PREAUTH_SENT or p.state is PaymentState.FAILED
            await r.until(lambda: r.row(p.id)["state"] == "failed", timeout_s=15)
            await r.sim.wait_idle(10)
            # whatever the terminal did after we gave up is found (a later enquiry, once its
            # T4 ran out) and released
            for _ in range(100):
                r.tick()
                await asyncio.sleep(0.05)
                if r.sim.ledger.pre_auths and not r.sim.ledger.open_receipts():
                    break
            assert r.sim.ledger.pre_auths, "the terminal booked the late approval"
            assert r.sim.ledger.open_receipts() == []
            assert r.sim.ledger.captured_total_cents() == 0

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_case09_crash_while_charging_the_session_goes_on_and_is_captured_in_full(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with rig(kind, tmp_path) as r:
            await r.ready()
            start_wh = r.energy_wh["cp1"]
            pid = await charge(r, "cp1", seconds=40)
            await r.restart()  # killed while charging; the car stays plugged in
            for _ in range(3):  # the EVSE's fallback current while the controller was away
                r.energy_wh["cp1"] += POWER_W / 3600.0
            for _ in range(40):
                r.tick()
            rec = r.desk.record("cp1")
            assert rec is not None and rec.payment_id == pid and rec.phase is SessionPhase.ACTIVE
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "captured")
            row = r.row(pid)
            session = r.session_row(row["session_id"])
            energy, seconds = metered(session)
            assert float(energy) == pytest.approx(r.energy_wh["cp1"] - start_wh)
            assert row["captured_cents"] == expected_cents(TARIFF, energy, seconds)
            assert r.sim.ledger.captured_total_cents() == row["captured_cents"]

    run(main)


def test_case09_the_car_left_while_the_controller_was_down_captured_at_restart(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=30)
            await r.crash()
            r.cars["cp1"] = False
            await r.boot()
            await r.ready()
            r.tick()  # the first reading: the car is gone, the session ends (PowerLoss)
            await r.until(lambda: r.row(pid)["state"] == "captured")
            row = r.row(pid)
            assert r.session_row(row["session_id"])["stop_reason"] == "PowerLoss"
            assert row["captured_cents"] == row["cost_cents"] > 0
            assert r.sim.ledger.captured_total_cents() == row["captured_cents"]

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_case10_crash_after_the_capture_was_sent_no_double_capture(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with rig(kind, tmp_path) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=20)
            r.sim.script.pause_at, r.sim.script.pause_s = Step.BOOKED, 0.5
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: len(r.sim.ledger.refusals()) > 0 or any(
                e.kind == "partial_reversal" for e in r.sim.ledger.entries))  # fmt: skip
            assert r.row(pid)["state"] == "capture_sent"
            await r.restart()  # killed after the terminal booked the capture
            await r.until(lambda: r.row(pid)["state"] == "captured")
            receipt = r.row(pid)["receipt_number"]
            assert len(r.sim.ledger.captures(receipt)) == 1
            assert r.sim.counters.commands.count("06 23") >= 2  # the enquiry, never a 2nd capture
            assert [e.kind for e in r.sim.ledger.entries].count("partial_reversal") == 1
            assert r.row(pid)["captured_cents"] == r.sim.ledger.captured_total_cents()

    run(main)


def test_case10_capture_answer_lost_the_enquiry_confirms_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=20)
            r.sim.script.power_loss_at, r.sim.script.power_loss_on = Step.BOOKED, 0x23
            r.sim.script.reboot_after_s = 0.3
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "captured", timeout_s=15)
            assert r.row(pid)["reason"] == "confirmed_by_enquiry"
            receipt = r.row(pid)["receipt_number"]
            assert len(r.sim.ledger.captures(receipt)) == 1

    run(main)


# --- start-up, the terminal's state, the journal ----------------------------------------------


@pytest.mark.parametrize("form", ["bmp", "tlv", "both"])
def test_case16_open_pre_auths_left_before_are_released_at_start_up(
    form: str, tmp_path: Path
) -> None:
    async def main() -> None:
        ledger = WatchedLedger()
        left = [ledger.open_pre_auth(2500, 978).receipt_number for _ in range(2)]
        sim = SimulatedTerminal(script=Script(answer_timeout_s=0.3, open_list_form=form),
                                ledger=ledger)  # fmt: skip
        link = TcpLink(host="127.0.0.1", port=await sim.start_tcp(), connect_timeout_s=1.0)
        r = Rig(path=tmp_path / "evsite.sqlite3", sim=sim, link=link)
        await r.boot()
        try:
            await r.ready()
            await r.until(lambda: sim.ledger.open_receipts() == [])
            assert all(sim.ledger.pre_auths[x].state == "released" for x in left)
            orphan_rows = [row for row in r.rows() if row["reason"] == "orphan"]
            assert sorted(row["receipt_number"] for row in orphan_rows) == sorted(left)
            assert all(row["state"] == "released" for row in orphan_rows)
        finally:
            await r.payments.close()
            r.db.close()
            await sim.stop()

    run(main)


def test_case13_end_of_day_at_start_up_only_with_nothing_open(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path, script=Script(answer_timeout_s=0.3,
                                                      terminal_status=0xF0)) as r:  # fmt: skip
            await r.ready()
            await r.until(lambda: any(e.kind == "end_of_day" for e in r.sim.ledger.entries))
            assert r.sim.ledger.refusals("end_of_day") == []

    run(main)


@pytest.mark.parametrize("status", [0x51, 0xC2, 0xE4])
def test_case13_a_terminal_that_needs_service_takes_no_payment(status: int, tmp_path: Path) -> None:
    async def main() -> None:
        script = Script(answer_timeout_s=0.3, terminal_status=status)
        async with rig("tcp", tmp_path, script=script) as r:
            await r.ready()
            r.cars["cp1"] = True
            r.tick()
            with pytest.raises(PaymentRefused, match="needs service"):
                r.payments.begin("cp1", by="test")
            assert "06 22" not in r.sim.counters.commands
            # serviced: the terminal reports ready again and payments resume, no restart
            r.sim.script.terminal_status = 0x00
            for _ in range(50):
                r.tick()
                await asyncio.sleep(0.02)
                if r.payments.terminal_status == 0:
                    break
            p = await r.payments.present_card("cp1", by="test")
            assert p.state is PaymentState.CHARGING

    run(main)


def test_case14_terminal_gone_the_payment_fails_and_nothing_is_held(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            await r.sim.stop()  # the cable is pulled
            r.cars["cp1"] = True
            r.tick()
            p = await r.payments.present_card("cp1", by="test")
            assert p.state is PaymentState.FAILED and p.reason == "terminal_unavailable"
            rec = r.desk.record("cp1")
            assert rec is not None and rec.phase is SessionPhase.PENDING

    run(main)


def test_journal_cannot_be_written_no_new_payment_starts(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            r.cars["cp1"] = True
            r.tick()
            conn = r.db.connection
            conn.execute("PRAGMA query_only = ON")  # the disk is full / read-only: writes fail
            with pytest.raises(PaymentRefused, match="journal cannot be written"):
                r.payments.begin("cp1", by="test")
            assert "06 22" not in r.sim.counters.commands  # nothing reached the terminal
            # and no card session can start by any other road either
            with pytest.raises(SessionRefused, match="journal cannot be written"):
                r.desk.start("cp1", method=AuthMethod.CARD, by="test")
            conn.execute("PRAGMA query_only = OFF")  # space again
            r.now_s += 10
            r.tick()
            p = await r.payments.present_card("cp1", by="test")
            assert p.state is PaymentState.CHARGING

    run(main)


def test_case17_no_card_data_in_the_journal_or_the_logs(tmp_path: Path) -> None:
    async def main() -> None:
        with structlog.testing.capture_logs() as logs:
            async with rig("tcp", tmp_path) as r:
                await r.ready()
                pid = await charge(r, "cp1", seconds=10)
                r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
                await r.until(lambda: r.row(pid)["state"] == "captured")
        raw = (tmp_path / "evsite.sqlite3").read_bytes()
        wal = tmp_path / "evsite.sqlite3-wal"
        if wal.exists():
            raw += wal.read_bytes()
        text = raw.decode("latin-1") + repr(logs)
        # the simulated card's expiry (BMP 0E 2912) and sequence number never got this far
        assert "2912" not in text.replace("-", "")  # expiry
        assert "559884EEEEEE8074" not in text  # even the terminal's own nibbles are re-masked
        for entry in logs:
            pan = entry.get("masked_pan")
            if pan is not None:
                assert pan == "559884******8074"
        assert any(e.get("masked_pan") == "559884******8074" for e in logs)

    run(main)


def test_usage_saved_and_a_tariff_change_does_not_reprice_a_running_session(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=20)
            r.tariff = Tariff(id="x", currency="EUR", vat_rate_pct=Decimal(19),
                              price_per_kwh=Decimal(9), preauth_cents=2500)  # fmt: skip
            for _ in range(10):
                r.tick()
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "captured")
            cost = r.journal.cost(r.row(pid)["session_id"])
            assert cost is not None and cost.tariff.id == "std"

    run(main)


def test_rfid_sessions_are_priced_too_and_the_report_agrees_to_the_cent(tmp_path: Path) -> None:
    import contextlib
    import io
    import json

    from controller.cli.main import main as evsite

    def report(fmt: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = evsite(
                [
                    "report",
                    "--db",
                    str(tmp_path / "evsite.sqlite3"),
                    "--tz",
                    "Europe/Berlin",
                    "--from",
                    "2026-11-29",
                    "--to",
                    "2026-11-29",
                    "--format",
                    fmt,
                ]
            )
        assert code == 0
        return out.getvalue()

    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=60)
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "captured")
            # an RFID card accepted by the backend: the same session record, its own method
            r.cars["cp2"] = True
            r.tick()
            rfid = r.desk.start("cp2", method=AuthMethod.ID_TAG, by="ocpp", id_tag="TAG1")
            for _ in range(40):
                r.tick()
            r.desk.stop("cp2", reason=StopReason.REMOTE, by="ocpp")
            card = r.row(pid)
            rfid_cost = r.journal.cost(rfid.id)
            ledger_total = r.sim.ledger.captured_total_cents()

        doc = json.loads(report("json"))
        lines = {s["connector"]: s for s in doc["sessions"]}
        assert lines["cp1"]["method"] == "card" and lines["cp2"]["method"] == "id_tag"
        assert (
            lines["cp1"]["captured_cents"] == card["captured_cents"] == lines["cp1"]["cost_cents"]
        )
        assert lines["cp1"]["captured_cents"] == ledger_total
        assert lines["cp1"]["masked_pan"] == "559884******8074"
        assert lines["cp1"]["receipt_number"] == card["receipt_number"]
        assert rfid_cost is not None and rfid_cost.final
        assert lines["cp2"]["cost_cents"] == rfid_cost.total_cents > 0
        assert lines["cp2"]["captured_cents"] is None
        assert lines["cp2"]["revenue_cents"] == rfid_cost.total_cents
        parts = ("energy_cents", "time_cents", "idle_fee_cents", "session_fee_cents")
        for s in lines.values():
            assert sum(s[p] for p in parts) == s["cost_cents"]
        totals = doc["totals"]
        assert totals["sessions"] == 2
        assert totals["revenue_cents"] == card["captured_cents"] + rfid_cost.total_cents
        assert doc["connectors"][0]["connector"] == "cp1"
        csv_rows = report("csv").strip().splitlines()
        assert len(csv_rows) == 3 and csv_rows[0].startswith("id,connector,started_at")
        table = report("table")
        assert "cp2" in table and "peak hours" in table and "559884******8074" in table

    run(main)


def test_case12_an_idle_car_is_stopped_before_the_idle_fee_passes_the_pre_auth(
    tmp_path: Path,
) -> None:
    # 1.00 EUR per idle minute after 1 minute of grace; 3.00 EUR pre-authorised
    idle = Tariff(
        id="i",
        currency="EUR",
        vat_rate_pct=Decimal(19),
        price_per_kwh=Decimal("0.39"),
        idle_fee_per_minute=Decimal(1),
        idle_grace_min=Decimal(1),
        preauth_cents=300,
    )

    async def main() -> None:
        async with rig("tcp", tmp_path, tariff=idle) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=30)
            r.full.add("cp1")  # the battery is full; the car stays plugged in
            for _ in range(600):
                r.tick()
                rec = r.desk.record("cp1")
                if rec is not None and rec.phase is SessionPhase.FINISHING:
                    break
            rec = r.desk.record("cp1")
            assert rec is not None and rec.phase is SessionPhase.FINISHING
            assert rec.stopped_by == "payment"
            await r.until(lambda: r.row(pid)["state"] == "captured")
            row = r.row(pid)
            cost = r.journal.cost(row["session_id"])
            assert cost is not None and cost.idle_fee_cents > 150  # the fee did the stopping
            assert row["captured_cents"] == row["cost_cents"] == cost.total_cents <= 300
            assert r.sim.ledger.captured_total_cents() == row["captured_cents"]

    run(main)


class Killed(BaseException):
    """The process dies right here (a BaseException: nothing on the way catches it)."""


@pytest.mark.parametrize(
    "state",
    ["preauth_sent", "authorised", "charging", "session_ended", "capture_sent", "captured"],
)
def test_killed_right_after_each_journal_write_every_pre_auth_ends_once(
    state: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            save = r.journal.save
            armed = [True]

            def dying_save(p: Any) -> None:
                save(p)
                if armed[0] and p.state.value == state:
                    armed[0] = False
                    raise Killed

            r.journal.save = dying_save  # type: ignore[method-assign]
            r.cars["cp1"] = True
            r.tick()
            with contextlib.suppress(Killed):
                r.payments.begin("cp1", by="test")
            await asyncio.sleep(0.3)  # the pre-auth (if it went out) and the session start
            for _ in range(20):
                r.tick()
            with contextlib.suppress(Killed, SessionRefused):
                r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await asyncio.sleep(0.3)  # the capture, if it got that far
            assert not armed[0], "the kill point was never reached"
            await r.restart()
            for _ in range(5):
                r.tick()
            rec = r.desk.record("cp1")
            if rec is not None and rec.phase is SessionPhase.ACTIVE:
                r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: not r.payments.live(), timeout_s=15)

            ledger = r.sim.ledger
            assert ledger.open_receipts() == [], "an orphaned pre-authorisation"
            for receipt in ledger.pre_auths:
                assert len(ledger.captures(receipt)) <= 1
            for row in r.rows():
                if row["state"] == "captured":
                    cost = r.journal.cost(row["session_id"])
                    assert cost is not None
                    booked = ledger.pre_auths[row["receipt_number"]].captured_cents
                    assert booked == row["captured_cents"] == cost.total_cents > 0
            captured = [row for row in r.rows() if row["state"] == "captured"]
            charged = state in ("charging", "session_ended", "capture_sent", "captured")
            assert len(captured) == (1 if charged else 0), r.rows()

    run(main)


def test_paid_before_plugging_in_and_no_car_came_the_pre_auth_is_released(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path) as r:
            await r.ready()
            p = await r.payments.present_card("cp2", by="test")  # paid first, car not there
            assert p.state is PaymentState.CHARGING
            rec = r.desk.record("cp2")
            assert rec is not None and rec.phase is SessionPhase.AUTHORISED
            r.tick(61.0)  # past connection_timeout_s: the authorisation lapses
            await r.until(lambda: r.row(p.id)["state"] == "released")
            assert r.sim.ledger.pre_auths[r.row(p.id)["receipt_number"]].state == "released"
            assert r.sim.ledger.captured_total_cents() == 0

    run(main)


@pytest.mark.parametrize("kind", ["tcp"])
def test_an_unattended_charger_asks_for_the_card_when_a_car_plugs_in_once_per_plug_in(
    kind: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with rig(kind, tmp_path, preauth_on_plug_in=True) as r:
            await r.ready()
            # The first driver's card is declined: no session, and no second attempt by itself.
            r.sim.script.decline_code = 0x6C
            r.cars["cp1"] = True
            r.tick()
            await r.until(lambda: any(row["state"] == "declined" for row in r.rows()))
            for _ in range(5):
                r.tick()
                await asyncio.sleep(0.05)
            assert r.sim.counters.commands.count("06 22") == 1
            assert r.desk.record("cp1").phase is SessionPhase.PENDING  # type: ignore[union-attr]
            # Plugged in again: a new session, a new attempt, approved, charging.
            r.cars["cp1"] = False
            r.tick()
            r.cars["cp1"] = True
            r.tick()
            await r.until(lambda: any(row["state"] == "charging" for row in r.rows()))
            rec = r.desk.record("cp1")
            assert rec is not None and rec.phase is SessionPhase.ACTIVE
            assert rec.method is AuthMethod.CARD
            assert r.sim.counters.commands.count("06 22") == 2

    run(main)


def test_end_of_day_runs_daily_but_never_while_a_paid_session_is_open(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig("tcp", tmp_path, end_of_day_every_s=3600.0) as r:
            await r.ready()
            pid = await charge(r, "cp1", seconds=10)
            for _ in range(4):  # a day passes while the paid session runs: no end of day
                r.tick(dt_s=1800.0)
                await asyncio.sleep(0.05)
            assert "06 50" not in r.sim.counters.commands
            r.desk.stop("cp1", reason=StopReason.LOCAL, by="test")
            await r.until(lambda: r.row(pid)["state"] == "captured")
            r.tick()  # nothing open any more: the overdue end of day runs
            await r.until(lambda: "06 50" in r.sim.counters.commands)
            count = r.sim.counters.commands.count("06 50")
            r.tick(dt_s=600.0)  # not again within the hour
            await asyncio.sleep(0.2)
            assert r.sim.counters.commands.count("06 50") == count
            r.tick(dt_s=3600.0)
            await r.until(lambda: r.sim.counters.commands.count("06 50") == count + 1)

    run(main)
