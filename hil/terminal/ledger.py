"""hil: the simulated terminal's own books, the record that tests check the controller against.

Every pre-authorisation the terminal approved, how it ended (captured for how much, or
released), and every command it refused, in order. Receipt and trace numbers are the
terminal's, counted up as a real one does. With a ``path`` the ledger is a JSON file rewritten
(atomically) on every change, so it survives a simulated power loss and a restart of the
process that runs the simulator: open pre-authorisations are still open after a "reboot".
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class PreAuth:
    """One pre-authorisation: ``state`` open, captured or released."""

    receipt_number: int
    trace_number: int
    amount_cents: int
    currency_code: int
    state: str = "open"
    captured_cents: int = 0
    settled: bool = False  # booked in an end of day


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the journal: what was asked, and what the terminal did."""

    seq: int
    kind: str  # pre_auth, partial_reversal, book_total, pre_auth_reversal, end_of_day, ...
    receipt_number: int | None  # the pre-auth it concerns
    amount_cents: int | None
    result_code: int  # 0 done, else the refusal's result code
    new_receipt_number: int | None = None  # the receipt the terminal gave this booking


@dataclass(slots=True)
class Ledger:
    path: Path | None = None
    next_receipt: int = 1
    next_trace: int = 1
    pre_auths: dict[int, PreAuth] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        if not path.exists():
            return cls(path=path)
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(
            path=path,
            next_receipt=raw["next_receipt"],
            next_trace=raw["next_trace"],
            pre_auths={p["receipt_number"]: PreAuth(**p) for p in raw["pre_auths"]},
            entries=[Entry(**e) for e in raw["entries"]],
        )

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "next_receipt": self.next_receipt,
            "next_trace": self.next_trace,
            "pre_auths": [asdict(p) for p in self.pre_auths.values()],
            "entries": [asdict(e) for e in self.entries],
        }
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    # --- bookkeeping -------------------------------------------------------------------------

    def receipt(self) -> int:
        n = self.next_receipt
        self.next_receipt = n % 9999 + 1
        return n

    def trace(self) -> int:
        n = self.next_trace
        self.next_trace = n % 999_999 + 1
        return n

    def record(
        self,
        kind: str,
        *,
        receipt_number: int | None = None,
        amount_cents: int | None = None,
        result_code: int = 0,
        new_receipt_number: int | None = None,
    ) -> Entry:
        entry = Entry(
            seq=len(self.entries) + 1,
            kind=kind,
            receipt_number=receipt_number,
            amount_cents=amount_cents,
            result_code=result_code,
            new_receipt_number=new_receipt_number,
        )
        self.entries.append(entry)
        self.save()
        return entry

    def open_pre_auth(self, amount_cents: int, currency_code: int) -> PreAuth:
        pre = PreAuth(
            receipt_number=self.receipt(),
            trace_number=self.trace(),
            amount_cents=amount_cents,
            currency_code=currency_code,
        )
        self.pre_auths[pre.receipt_number] = pre
        self.record("pre_auth", receipt_number=pre.receipt_number, amount_cents=amount_cents)
        return pre

    # --- what tests read ---------------------------------------------------------------------

    def open_receipts(self) -> list[int]:
        return [r for r, p in self.pre_auths.items() if p.state == "open"]

    def captures(self, receipt_number: int) -> list[Entry]:
        """Successful captures of one pre-authorisation (more than one would be a double)."""
        return [
            e
            for e in self.entries
            if e.receipt_number == receipt_number
            and e.kind in ("partial_reversal", "book_total")
            and e.result_code == 0
        ]

    def refusals(self, kind: str | None = None) -> list[Entry]:
        return [e for e in self.entries if e.result_code != 0 and kind in (None, e.kind)]

    def captured_total_cents(self) -> int:
        return sum(p.captured_cents for p in self.pre_auths.values() if p.state == "captured")
