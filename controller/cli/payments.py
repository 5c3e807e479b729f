"""CLI layer: ``evsite tariff``, ``evsite pay``, ``evsite payments`` and ``evsite report``.

- ``evsite tariff`` shows the price a driver sees before a session (the running service's
  tariff in force; with ``-c FILE`` and no service, the site file's).
- ``evsite pay [CONNECTOR]`` presents a card: the terminal pre-authorises the tariff's amount and
  reads the card; an approval starts a card session at the connector (without one: at the
  connector whose car waits, the most recently plugged in). It prints the price first, then
  waits for the terminal's answer.
- ``evsite payments`` lists the journal's latest payments and the terminal's state.
- ``evsite report --from DATE --to DATE`` reads the state file directly (read-only: it works
  with the service stopped, and changes nothing): sessions, energy, revenue, occupancy per
  connector and peak hours, as a table, JSON or CSV. Dates are the site's local days, both
  included (``--to 2026-11-30`` runs to the end of that day); a date-time with an offset is
  taken as it is.

Exit status: 0 done, 1 refused / declined / failed, 2 bad command line, 3 no service.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from controller.cli.client import ServiceNotRunning, request
from controller.cli.output import EXIT_OK, EXIT_REFUSED
from controller.core.report import Report, SessionLine, summarise
from controller.store.db import DB_FILENAME
from controller.store.journal import carried_over, report_lines


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_target: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    p = sub.add_parser("tariff", help="the price shown before a session starts")
    p.add_argument("--json", action="store_true", help="print the price as JSON")
    add_target(p)
    p.set_defaults(func=run, tool_func=tariff)

    p = sub.add_parser("pay", help="present a card at the terminal for a connector")
    p.add_argument("connector", nargs="?", help="default: the car waiting, latest plugged in")
    p.add_argument("--no-wait", action="store_true", help="return once the terminal has it")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the card")
    p.add_argument("--json", action="store_true", help="print the payment as JSON")
    add_target(p)
    p.set_defaults(func=run, tool_func=pay)

    p = sub.add_parser("payments", help="the latest card payments and the terminal's state")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_target(p)
    p.set_defaults(func=run, tool_func=payments)

    p = sub.add_parser("report", help="sessions, energy, revenue, occupancy over a period")
    p.add_argument("--from", dest="start", required=True, help="first day (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", required=True, help="last day, included (YYYY-MM-DD)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="the site file (finds the state file and zone)")
    where.add_argument("--db", help=f"the state file itself ({DB_FILENAME})")
    p.add_argument("--tz", help="the site's timezone (with --db; default UTC)")
    p.set_defaults(func=report)


# --- tariff, pay, payments ----------------------------------------------------------------


def tariff(socket: Path, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    try:
        answer = request(socket, "tariff")
        price = answer.get("tariff")
    except ServiceNotRunning:
        if args.config is None:
            raise
        from controller.config import load_config
        from controller.core.tariff import price_display

        t = load_config(Path(args.config)).tariff
        price = None if t is None else price_display(t)
    if args.json:
        print(json.dumps(price, indent=2), file=out)
        return EXIT_OK
    if price is None:
        print("no tariff: charging is not priced at this site", file=out)
        return EXIT_OK
    print(price["text"], file=out)
    return EXIT_OK


def pay(socket: Path, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    req: dict[str, Any] = {} if args.connector is None else {"connector": args.connector}
    answer = request(socket, "payment_start", **req)
    if not answer.get("ok"):
        print(f"evsite: {answer.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    payment = answer["payment"]
    price = answer.get("price")
    if price is not None and not args.json:
        print(f"price: {price['text']}", file=out)
        print("present the card at the terminal", file=out)
    deadline = time.monotonic() + args.timeout
    while not args.no_wait and payment["state"] == "preauth_sent":
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
        got = request(socket, "payment_get", id=payment["id"])
        if got.get("ok"):
            payment = got["payment"]
    if args.json:
        print(json.dumps(payment, indent=2), file=out)
    else:
        print(_payment_line(payment), file=out)
    if payment["state"] == "preauth_sent":
        # The terminal has it (--no-wait), or its answer did not come in time: no session yet.
        return EXIT_OK if args.no_wait else EXIT_REFUSED
    return EXIT_OK if payment["state"] in ("authorised", "charging") else EXIT_REFUSED


def payments(socket: Path, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    answer = request(socket, "payment_list", limit=args.limit)
    if not answer.get("ok"):
        print(f"evsite: {answer.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps({k: answer[k] for k in ("terminal", "payments")}, indent=2), file=out)
        return EXIT_OK
    t = answer["terminal"]
    ready = "ready" if t["ready"] else "not ready"
    print(
        f"terminal {t['terminal']} ({t['link']}): {ready}, status {t['terminal_status']}", file=out
    )
    if t["journal_error"]:
        print(f"journal cannot be written: {t['journal_error']}", file=out)
    for p in answer["payments"]:
        print(_payment_line(p), file=out)
    return EXIT_OK


def _money(cents: int | None) -> str:
    return "-" if cents is None else f"{cents // 100}.{cents % 100:02d}"


def _payment_line(p: dict[str, Any]) -> str:
    parts = [
        p["created_at"][:19],
        p["id"][:8],
        p["state"],
        f"connector {p['connector'] or '-'}",
        f"pre-auth {_money(p['preauth_cents'])}",
    ]
    if p["captured_cents"] is not None:
        parts.append(f"captured {_money(p['captured_cents'])}")
    if p["masked_pan"]:
        parts.append(f"card {p['masked_pan']}")
    if p["receipt_number"] is not None:
        parts.append(f"receipt {p['receipt_number']:04d}")
    if p["reason"]:
        parts.append(f"({p['reason']})")
    return "  ".join(parts)


# --- report -------------------------------------------------------------------------------


def _bound(text: str, tz: ZoneInfo, *, end: bool) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)
    if end:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def report(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    if args.config is not None:
        from controller.config import load_config

        cfg = load_config(Path(args.config))
        db_path = cfg.service.state_dir / DB_FILENAME
        tz = ZoneInfo(cfg.site.timezone)
        connectors = [c.id for c in cfg.site.connectors]
    else:
        db_path = Path(args.db)
        tz = ZoneInfo(args.tz or "UTC")
        connectors = []
    try:
        start = _bound(args.start, tz, end=False)
        end = _bound(args.end, tz, end=True)
    except ValueError as exc:
        print(f"evsite: bad date: {exc}", file=sys.stderr)
        return 2
    if not db_path.exists():
        print(f"evsite: no state file at {db_path}", file=sys.stderr)
        return EXIT_REFUSED
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        lines = report_lines(conn, start, end)
        carried = carried_over(conn, start)
    except sqlite3.Error as exc:
        print(f"evsite: cannot read {db_path}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        conn.close()
    try:
        summary = summarise(
            lines, start=start, end=end, connectors=connectors, now=datetime.now(tz), tz=tz,
            carried=carried,
        )  # fmt: skip
    except ValueError as exc:
        print(f"evsite: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(report_document(summary), indent=2), file=out)
    elif args.format == "csv":
        _csv(summary, out)
    else:
        _table(summary, out)
    return EXIT_OK


def _line_document(s: SessionLine) -> dict[str, Any]:
    return {
        "id": s.id,
        "connector": s.connector,
        "started_at": s.started_at.isoformat(),
        "ended_at": None if s.ended_at is None else s.ended_at.isoformat(),
        "energy_kwh": round(s.energy_wh / 1000.0, 3),
        "method": s.method,
        "stop_reason": s.stop_reason,
        "currency": s.currency,
        "cost_cents": s.cost_cents,
        "energy_cents": s.energy_cents,
        "time_cents": s.time_cents,
        "idle_fee_cents": s.idle_fee_cents,
        "session_fee_cents": s.session_fee_cents,
        "vat_cents": s.vat_cents,
        "payment_state": s.payment_state,
        "preauth_cents": s.preauth_cents,
        "captured_cents": s.captured_cents,
        "revenue_cents": s.revenue_cents,
        "masked_pan": s.masked_pan,
        "card_name": s.card_name,
        "receipt_number": s.receipt_number,
        "trace_number": s.trace_number,
    }


def report_document(r: Report) -> dict[str, Any]:
    return {
        "from": r.start.isoformat(),
        "to": r.end.isoformat(),
        "totals": {
            "sessions": r.total_sessions,
            "energy_kwh": round(r.total_energy_wh / 1000.0, 3),
            "revenue_cents": r.total_revenue_cents,
            "captured_cents": r.total_captured_cents,
            "cost_cents": r.total_cost_cents,
        },
        "connectors": [
            {
                "connector": c.connector,
                "sessions": c.sessions,
                "energy_kwh": round(c.energy_wh / 1000.0, 3),
                "revenue_cents": c.revenue_cents,
                "captured_cents": c.captured_cents,
                "cost_cents": c.cost_cents,
                "occupancy_pct": round(c.occupancy_pct, 2),
            }
            for c in r.connectors
        ],
        "peak_hours": [
            {"hour": h, "energy_kwh": round(r.energy_by_hour_wh[h] / 1000.0, 3)}
            for h in r.peak_hours
        ],
        "energy_by_hour_kwh": [round(e / 1000.0, 3) for e in r.energy_by_hour_wh],
        "sessions": [_line_document(s) for s in r.sessions],
    }


def _csv(r: Report, out: TextIO) -> None:
    rows = [_line_document(s) for s in r.sessions]
    fields = list(_line_document(r.sessions[0]).keys()) if rows else ["id"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def _table(r: Report, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=160)
    console.print(f"report {r.start.isoformat()} .. {r.end.isoformat()}")
    t = Table(title="sessions", title_justify="left")
    for col in ("started", "ended", "connector", "kWh", "method", "cost", "energy", "time",
                "idle", "fee", "captured", "card", "receipt"):  # fmt: skip
        t.add_column(col)
    for s in r.sessions:
        t.add_row(
            s.started_at.isoformat(timespec="seconds"),
            "-" if s.ended_at is None else s.ended_at.isoformat(timespec="seconds"),
            s.connector,
            f"{s.energy_wh / 1000.0:.3f}",
            s.method or "-",
            _money(s.cost_cents),
            _money(s.energy_cents),
            _money(s.time_cents),
            _money(s.idle_fee_cents),
            _money(s.session_fee_cents),
            _money(s.captured_cents),
            s.masked_pan or "-",
            "-" if s.receipt_number is None else f"{s.receipt_number:04d}",
        )
    console.print(t)
    c = Table(title="connectors", title_justify="left")
    for col in ("connector", "sessions", "kWh", "revenue", "captured", "cost", "occupancy %"):
        c.add_column(col)
    for x in r.connectors:
        c.add_row(
            x.connector, str(x.sessions), f"{x.energy_wh / 1000.0:.3f}", _money(x.revenue_cents),
            _money(x.captured_cents), _money(x.cost_cents), f"{x.occupancy_pct:.1f}",
        )  # fmt: skip
    c.add_row(
        "total", str(r.total_sessions), f"{r.total_energy_wh / 1000.0:.3f}",
        _money(r.total_revenue_cents), _money(r.total_captured_cents),
        _money(r.total_cost_cents), "",
    )  # fmt: skip
    console.print(c)
    peaks = ", ".join(
        f"{h:02d}:00-{h + 1:02d}:00 {r.energy_by_hour_wh[h] / 1000.0:.3f} kWh" for h in r.peak_hours
    )
    console.print(f"peak hours: {peaks or '-'}")
