"""store/journal.py: payment rows and priced usage round-trip exactly, on disk when save returns,
and one receipt of a terminal is held by one live payment at most."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.core.payment import Payment, PaymentState
from controller.core.tariff import Tariff, TouPrice, Usage, cost
from controller.store.db import Database, StoreError
from controller.store.journal import PaymentJournal

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN)  # the night the clocks go back
TARIFF = Tariff(
    id="t",
    name="Night and day",
    currency="EUR",
    vat_rate_pct=Decimal("19"),
    price_per_kwh=Decimal("0.39"),
    price_per_minute=Decimal("0.0125"),
    session_fee=Decimal("0.5"),
    idle_fee_per_minute=Decimal("0.1"),
    idle_grace_min=Decimal(30),
    time_of_use=(
        TouPrice(
            name="night",
            days=frozenset({7}),
            start=time(22),
            end=time(6),
            price_per_kwh=Decimal("0.29"),
        ),
    ),
    preauth_cents=3000,
    preauth_cap_cents=5000,
)


def payment(**kw: object) -> Payment:
    base = Payment(
        id="p1",
        terminal="t1",
        state=PaymentState.CHARGING,
        preauth_cents=3000,
        created_at=T0,
        updated_at=T0,
        connector="cp1",
        session_id="s1",
        receipt_number=17,
        trace_number=4,
        masked_pan="559884******8074",
        card_name="MasterCard",
        receipt_text="PRE-AUTHORISATION\\nCard 559884******8074",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_payment_is_on_disk_when_save_returns_and_reads_back_the_same(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.sqlite3")
    journal = PaymentJournal(db, tz=BERLIN)
    p = payment()
    journal.save(p)
    other = sqlite3.connect(tmp_path / "s.sqlite3")  # another process's view
    assert other.execute("SELECT state, receipt_number FROM payments").fetchall() == [
        ("charging", 17)
    ]
    assert journal.get("p1") == p
    assert [x.id for x in journal.live()] == ["p1"]
    journal.save(replace(p, state=PaymentState.CAPTURED, captured_cents=1234))
    assert journal.live() == [] and journal.recent()[0].captured_cents == 1234


def test_one_live_payment_per_receipt(tmp_path: Path) -> None:
    journal = PaymentJournal(Database(tmp_path / "s.sqlite3"), tz=BERLIN)
    journal.save(payment())
    with pytest.raises(StoreError):
        journal.save(payment(id="p2"))
    # a final one may share it (receipt numbers wrap at 9999)
    journal.save(payment(id="p3", state=PaymentState.RELEASED))


def test_usage_and_tariff_round_trip_exactly(tmp_path: Path) -> None:
    journal = PaymentJournal(Database(tmp_path / "s.sqlite3"), tz=BERLIN)
    usage = Usage.start(at=T0, energy_register_wh=1000.1)
    for minutes, wh, drawing in [(10, 1333.3, True), (50, 1333.3, False), (95, 2000.05, True)]:
        usage = usage.record(
            TARIFF,
            at=T0 + timedelta(minutes=minutes),
            energy_register_wh=wh,
            drawing=drawing,
        )
    breakdown = cost(TARIFF, usage)
    journal.save_cost("s1", tariff=TARIFF, usage=usage, breakdown=breakdown, final=False)
    stored = journal.cost("s1")
    assert stored is not None and not stored.final
    assert stored.tariff == TARIFF
    assert stored.usage == usage
    assert stored.energy_wh == usage.energy_wh and isinstance(stored.energy_wh, Fraction)
    assert cost(stored.tariff, stored.usage) == breakdown
    assert stored.total_cents == breakdown.total_cents
