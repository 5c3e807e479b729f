"""CLI layer: the human view of the status document (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

_STATE_STYLE = {"A": "dim", "B": "yellow", "C": "green", "D": "green", "E": "red", "F": "red"}


def _f(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.1f}{unit}"


def render_status(status: dict[str, Any]) -> Group:
    site = status["site"]
    mode = status["mode"]
    mode_style = {"normal": "green", "hold": "yellow", "fallback": "bold red"}.get(mode, "yellow")
    head = Text.assemble(
        (f"{site['name']} ({site['id']})", "bold"),
        f"  {status['time']}  mode ",
        (mode, mode_style),
        f"  tick {status.get('tick', {}).get('last_ms', '-')} ms",
    )
    parts: list[Any] = [head]
    for note in status.get("notes", []):
        parts.append(Text(f"  {note}", style="yellow"))

    for circuit in status["circuits"]:
        table = Table(title=f"circuit {circuit['id']}", title_justify="left", expand=False)
        for col in ("phase", "rating A", "measured A", "non-EV A", "allocated A", "headroom A"):
            table.add_column(col, justify="right")
        for ph in circuit["phases"]:
            headroom = ph["headroom_a"]
            style = "red" if headroom is not None and headroom < 0 else ""
            table.add_row(
                ph["phase"],
                _f(ph["rating_a"]),
                _f(ph["measured_a"]),
                _f(ph["non_ev_a"]),
                _f(ph["allocated_a"]),
                Text(_f(headroom), style=style),
            )
        parts.append(table)

    sessions = status.get("sessions") or {}
    ct = Table(title="connectors", title_justify="left")
    for col in ("id", "state", "I L1/L2/L3 A", "limit A", "fair share A", "bound by", "rotation",
                "tier"):  # fmt: skip
        ct.add_column(col)
    if sessions:
        ct.add_column("session", no_wrap=True)
    for c in status["connectors"]:
        cur = c["current_a"]
        state = c["state"] if c["online"] else f"{c['state']} (offline)"
        ct.add_row(
            c["id"],
            Text(state, style=_STATE_STYLE.get(c["state"], "red")),
            "-" if cur is None else " / ".join(f"{v:.1f}" for v in cur),
            _f(c["limit_a"]),
            _f(c.get("target_a")),
            c["bound_by"] or "-",
            c["rotation"],
            str(c["priority_tier"]),
            *([session_cell(sessions.get(c["id"]))] if sessions else []),
        )
    parts.append(ct)
    for fault in status.get("faults", []):
        parts.append(
            Text(
                f"fault {fault['code']} {fault['subject']}: {fault['detail']} "
                f"(since {fault['raised_at']})",
                style="bold red",
            )
        )
    offline = [d["id"] for d in status.get("devices", []) if not d["online"]]
    if offline:
        parts.append(Text(f"offline: {', '.join(offline)}", style="red"))
    mqtt = status.get("mqtt")
    if mqtt:
        line = (
            f"cloud (MQTT {mqtt['broker']}): {mqtt['state']}, {mqtt['events_queued']} events queued"
        )
        if mqtt.get("last_error") and mqtt["state"] != "connected":
            line += f" ({mqtt['last_error']})"
        parts.append(Text(line, style="green" if mqtt["state"] == "connected" else "yellow"))
    parts.extend(ocpp_lines(status.get("ocpp")))
    return Group(*parts)


def ocpp_lines(ocpp: dict[str, Any] | None) -> list[Text]:
    """One line per OCPP charge point: its state, what waits for the CSMS, the last error."""
    if not ocpp:
        return []
    if ocpp.get("state") == "misconfigured":
        return [Text(f"OCPP: not started ({ocpp.get('last_error')})", style="red")]
    lines = []
    for st in ocpp.get("stations", []):
        line = f"OCPP {st['identity']} ({st['url']}): {st['state']}, "
        line += f"{st['messages_queued']} transaction messages queued"
        if st.get("messages_dropped"):
            line += f", {st['messages_dropped']} dropped"
        if st.get("last_error") and st["state"] != "online":
            line += f" ({st['last_error']})"
        lines.append(Text(line, style="green" if st["state"] == "online" else "yellow"))
    return lines


_PHASE_STYLE = {"active": "green", "pending": "yellow", "authorised": "cyan", "finishing": "dim"}


def session_cell(entry: dict[str, Any] | None) -> Text:
    """A connector's session phase, and its availability when it is out of service."""
    if entry is None:
        return Text("-")
    session = entry.get("session")
    if session is None:
        text = Text("-")
    else:
        text = Text(session["phase"], style=_PHASE_STYLE.get(session["phase"], ""))
    if not entry.get("available", True):
        text.append(" unavailable", style="red")
    elif "availability_scheduled" in entry:
        text.append(" (off after)", style="yellow")
    return text
