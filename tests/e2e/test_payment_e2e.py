"""End to end: card payments with the real `evsite run` process, SIGKILLed at each step.

The simulated site (an Alfen socket whose EV arrives at 1 s and stays) and the simulated ZVT
terminal (hil.terminal on TCP, with its own ledger) run in this test process; the controller is
the real console script. For each step of the payment flow the controller is killed with
SIGKILL there (no shutdown, nothing flushed), started again on the same state file, and the
driver's session is finished. Then the outcome is checked against the terminal's own record:

- no pre-authorisation is left open, none is captured twice;
- every capture equals the tariff's price for the metered energy and time of its session,
  computed here on its own from the session's rows (flat prices: energy, time, session fee);
- the session's priced cost, the journal's capture and `evsite report` agree to the cent.

Kill points: after the pre-auth was sent (the terminal booked it; the 04 0F never came), while
charging, after the capture was sent (the terminal acknowledged it, books it after we died),
and before the receipt is stored (the terminal booked the capture and sent its 04 0F with the
receipt, no completion yet).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.core.tariff import round_half_up
from hil.scenario import scenario_from_dict
from hil.terminal import Ledger, Script, SimulatedTerminal, Step
from tests.e2e.rig import Controller, SimThread

pytestmark = [pytest.mark.slow, pytest.mark.hil]

PRICE_PER_KWH = Decimal("3.90")
PRICE_PER_MINUTE = Decimal("0.60")
SESSION_FEE = Decimal("0.50")
PREAUTH_CENTS = 5000

SCENARIO = {
    "name": "payment_e2e",
    "site": {"id": "paid", "timezone": "Europe/Berlin", "grid_rating_a": 63},
    "building": {"steps": [{"at_s": 0, "current_a": [2, 2, 2]}], "noise_a": 0.2, "seed": 3},
    "evses": [
        {
            "id": "cp1",
            "max_current_a": 16,
            "safe_current_a": 6,
            "validity_time_s": 60,
            "ev": {"arrival_s": 1, "departure_s": None, "phases": 3, "max_current_a": 16,
                   "energy_need_wh": 80000, "response_lag_s": 1},
        }
    ],
}  # fmt: skip


def expected_cents(energy_wh: Fraction, seconds: Fraction) -> int:
    """The tariff's price, written out on its own (not through core.tariff.cost)."""
    return round_half_up(
        energy_wh * Fraction(PRICE_PER_KWH) / 10
        + seconds * Fraction(PRICE_PER_MINUTE) * 100 / 60
        + Fraction(SESSION_FEE) * 100
    )


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sim = SimThread(scenario_from_dict(SCENARIO), tmp / "trace.jsonl")
        self.ledger = Ledger()
        self.term = SimulatedTerminal(script=Script(answer_timeout_s=0.5), ledger=self.ledger)
        port = self.sim.call(self.term.start_tcp())
        config = self.sim.site.site_config(state_dir=tmp / "state", runtime_dir=tmp / "run")
        config["control"] = {**config.get("control", {}), "tick_s": 0.5}
        config["sessions"] = {"free_vend": False}
        config["tariff"] = {
            "id": "e2e", "currency": "EUR", "vat_rate_pct": 19,
            "price_per_kwh": str(PRICE_PER_KWH), "price_per_minute": str(PRICE_PER_MINUTE),
            "session_fee": str(SESSION_FEE), "preauth_cents": PREAUTH_CENTS,
        }  # fmt: skip
        config["terminal"] = {
            "host": "127.0.0.1", "tcp_port": port, "password": 123456, "t3_s": 1.0,
            "t4_s": 4.0, "retry_s": 0.5, "usage_save_s": 1.0, "stop_headroom_s": 3.0,
        }  # fmt: skip
        self.config = tmp / "site.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.db = tmp / "state" / "evsite.sqlite3"
        self.ctl: Controller | None = None
        self.runs = 0

    def start(self) -> Controller:
        self.runs += 1
        self.ctl = Controller(self.config, self.tmp / f"evsite-{self.runs}.log")
        self.ctl.wait_socket()
        self.until(lambda: bool(self.payments()["terminal"]["ready"]), "payments ready")
        return self.ctl

    def kill_and_restart(self) -> Controller:
        assert self.ctl is not None
        self.ctl.kill()
        self.ctl.terminate()
        # the dead process's socket file stays behind; wait for the new one
        self.ctl.socket.unlink(missing_ok=True)
        return self.start()

    def term_do(self, fn: Callable[[], Any]) -> Any:
        return self.sim.do(fn)

    def script(self, **changes: Any) -> None:
        def apply() -> None:
            for k, v in changes.items():
                setattr(self.term.script, k, v)

        self.sim.do(apply)

    def cli(self, *args: str) -> Any:
        assert self.ctl is not None
        out = self.ctl.cli(*args)
        assert out.returncode in (0, 1), out.stderr
        return out

    def payments(self) -> dict[str, Any]:
        out = self.cli("payments", "--json")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def session(self) -> dict[str, Any] | None:
        out = self.cli("session", "list", "--json")
        data: dict[str, Any] = json.loads(out.stdout)
        found: dict[str, Any] | None = data["connectors"]["cp1"]["session"]
        return found

    def until(self, what: Callable[[], bool], label: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            if time.monotonic() > deadline:
                logs = "" if self.ctl is None else self.ctl.log_path.read_text()[-4000:]
                raise AssertionError(f"timed out waiting for {label}\n{logs}")
            time.sleep(0.2)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql)]
        finally:
            conn.close()

    def pay(self) -> dict[str, Any]:
        """A card presented with no connector named: the waiting car's connector takes it."""
        out = self.cli("pay", "--json", "--timeout", "20")
        payment: dict[str, Any] = json.loads(out.stdout)
        return payment

    def waiting(self) -> bool:
        s = self.session()
        return s is not None and s["phase"] == "pending"

    def charging(self) -> bool:
        s = self.session()
        return s is not None and s["phase"] == "active" and s["energy_wh"] > 0

    def captured_or_released(self) -> bool:
        live = self.payments()["terminal"]["live"]
        return not live

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.terminate()
        self.sim.call(self.term.stop())
        self.sim.close()


@contextmanager
def paid_site(tmp: Path) -> Iterator[Site]:
    site = Site(tmp)
    try:
        site.start()
        yield site
    finally:
        site.close()


def finish(site: Site, *, charge_s: float = 3.0) -> None:
    """Charge a little more, stop at the site, wait for the settlement."""
    site.until(site.charging, "charging")
    time.sleep(charge_s)
    out = site.cli("session", "stop", "cp1")
    assert out.returncode == 0, out.stderr
    site.until(site.captured_or_released, "settled")


def _captured_cents(ledger: Ledger, receipt: int) -> int:
    return ledger.pre_auths[receipt].captured_cents


def check_books(site: Site) -> None:
    """The terminal's ledger against the journal, the session rows, the tariff, the report."""
    ledger = site.term_do(lambda: site.ledger)
    assert site.term_do(ledger.open_receipts) == [], "an orphaned pre-authorisation"
    captured_receipts = []
    for receipt in list(site.term_do(lambda: dict(ledger.pre_auths))):
        caps = site.term_do(functools.partial(ledger.captures, receipt))
        assert len(caps) <= 1, f"receipt {receipt} captured {len(caps)} times"
        if caps:
            captured_receipts.append(receipt)
    payments = {
        p["receipt_number"]: p for p in site.rows("SELECT * FROM payments WHERE state = 'captured'")
    }
    assert sorted(payments) == sorted(captured_receipts)
    start = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    report_out = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "report", "-c", str(site.config),
         "--from", "2000-01-01", "--to", "2100-01-01", "--format", "json"],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    report = json.loads(report_out.stdout)
    by_id = {s["id"]: s for s in report["sessions"]}
    assert start  # the report covers every session
    for receipt in captured_receipts:
        p = payments[receipt]
        (s,) = site.rows(f"SELECT * FROM sessions WHERE id = '{p['session_id']}'")
        energy = Fraction(str(s["meter_stop_wh"])) - Fraction(str(s["meter_start_wh"]))
        began = datetime.fromisoformat(s["started_at"])
        ended = datetime.fromisoformat(s["ended_at"])
        seconds = Fraction((ended - began) // timedelta(microseconds=1), 1_000_000)
        price = expected_cents(energy, seconds)
        booked = site.term_do(functools.partial(_captured_cents, ledger, receipt))
        assert energy > 0 and price > 50
        assert booked == p["captured_cents"] == p["cost_cents"] == price, (booked, p, price)
        (cost,) = site.rows(f"SELECT * FROM session_costs WHERE session_id = '{s['id']}'")
        assert cost["total_cents"] == price and cost["final"] == 1
        line = by_id[s["id"]]
        assert line["captured_cents"] == line["cost_cents"] == line["revenue_cents"] == price
        assert line["masked_pan"] == "559884******8074" and line["receipt_number"] == receipt
    assert report["totals"]["captured_cents"] == sum(
        payments[r]["captured_cents"] for r in captured_receipts
    ) == site.term_do(ledger.captured_total_cents)  # fmt: skip


def test_killed_after_the_pre_auth_was_sent_the_orphan_is_released(tmp_path: Path) -> None:
    with paid_site(tmp_path) as site:
        site.until(site.waiting, "the car waiting for a payment")
        site.script(pause_at=Step.BOOKED, pause_s=3.0)
        site.cli("pay", "cp1", "--no-wait")
        site.until(lambda: bool(site.term_do(site.ledger.open_receipts)), "the terminal booked")
        site.kill_and_restart()  # the 04 0F never reached the controller
        site.script(pause_at=None)
        site.until(lambda: not site.term_do(site.ledger.open_receipts), "the orphan released")
        (first,) = site.rows("SELECT * FROM payments WHERE reason IS NOT 'orphan'")
        assert first["state"] == "failed"
        # the driver presents the card again: a new pre-auth, a session, a capture
        site.until(site.waiting, "the car waiting for a payment")
        paid = site.pay()
        assert paid["state"] == "charging", paid
        finish(site)
        check_books(site)
        states = [x.state for x in site.term_do(lambda: list(site.ledger.pre_auths.values()))]
        assert sorted(states) == ["captured", "released"]


def test_killed_while_charging_the_session_goes_on_and_is_captured(tmp_path: Path) -> None:
    with paid_site(tmp_path) as site:
        # the price a driver sees before the session starts
        shown = site.cli("tariff").stdout
        assert "3.90 EUR/kWh" in shown and "pre-authorisation 50.00 EUR" in shown, shown
        site.until(site.waiting, "the car waiting for a payment")
        paid = site.pay()
        assert paid["state"] == "charging", paid
        site.until(site.charging, "charging")
        time.sleep(3.0)
        site.kill_and_restart()  # the EV goes on at the Alfen's safe current meanwhile
        s = site.session()
        assert s is not None and s["payment_id"] == paid["id"], s
        finish(site)
        check_books(site)


@pytest.mark.parametrize(
    ("step", "label"),
    [(Step.ACK, "after the capture was sent"), (Step.STATUS, "before the receipt is stored")],
)
def test_killed_during_the_capture_no_double_capture(
    step: Step, label: str, tmp_path: Path
) -> None:
    with paid_site(tmp_path) as site:
        site.until(site.waiting, "the car waiting for a payment")
        paid = site.pay()
        assert paid["state"] == "charging", paid
        site.until(site.charging, "charging")
        time.sleep(3.0)
        site.script(pause_at=step, pause_s=3.0)
        commands_before = site.term_do(lambda: list(site.term.counters.commands)).count("06 23")
        assert site.cli("session", "stop", "cp1").returncode == 0

        def reached() -> bool:
            commands = site.term_do(lambda: list(site.term.counters.commands))
            if step is Step.ACK:
                return bool(commands.count("06 23") > commands_before)
            entries = site.term_do(lambda: list(site.ledger.entries))
            return any(e.kind == "partial_reversal" and e.result_code == 0 for e in entries)

        site.until(reached, label)
        rows = site.rows(f"SELECT state FROM payments WHERE id = '{paid['id']}'")
        assert rows[0]["state"] == "capture_sent"
        site.kill_and_restart()
        site.script(pause_at=None)
        site.until(site.captured_or_released, "settled after the restart")
        check_books(site)
        (row,) = site.rows(f"SELECT * FROM payments WHERE id = '{paid['id']}'")
        assert row["state"] == "captured"
