"""`evsite pay`'s exit status: 0 only when a session started (or, with --no-wait, once the
terminal has the payment); a wait that timed out is not a started session."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

from controller.cli import payments as cli


def _answers(state: str) -> Any:
    payment = {
        "id": "p1", "state": state, "created_at": "2026-11-29T08:00:00+01:00",
        "connector": "cp1", "preauth_cents": 2500, "captured_cents": None,
        "masked_pan": None, "receipt_number": None, "reason": None,
    }  # fmt: skip

    def request(_socket: Path, command: str, **_kw: Any) -> dict[str, Any]:
        if command == "payment_start":
            return {"ok": True, "payment": dict(payment, state="preauth_sent"), "price": None}
        return {"ok": True, "payment": payment}

    return request


@pytest.mark.parametrize(
    ("final_state", "no_wait", "status"),
    [
        ("charging", False, 0),
        ("declined", False, 1),
        ("preauth_sent", False, 1),  # the terminal never answered within --timeout
        ("preauth_sent", True, 0),
    ],
)
def test_pay_exit_status(
    monkeypatch: pytest.MonkeyPatch, final_state: str, no_wait: bool, status: int
) -> None:
    monkeypatch.setattr(cli, "request", _answers(final_state))
    args = argparse.Namespace(connector="cp1", no_wait=no_wait, timeout=0.3, json=False)
    assert cli.pay(Path("/nowhere"), args, out=io.StringIO()) == status
