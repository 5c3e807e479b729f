"""The technician socket: 0660 from the first instant, JSON lines, bad requests answered."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.app.control_socket import ControlSocket, limit_commands
from controller.app.slots import SlotBook
from controller.cli.client import ServiceUnreachable, request
from controller.config import load_config_text
from controller.core.slots import SlotSource
from controller.store.db import Database


def _serve(path: Path, body: Callable[[], None]) -> None:
    async def main() -> None:
        sock = ControlSocket(path, status=lambda: {"mode": "normal"})
        await sock.start()
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o660, oct(mode)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, body)  # raises what the client body raised
        finally:
            await sock.close()

    asyncio.run(main())
    assert not path.exists()  # the socket file is removed on close


def test_status_ping_and_errors_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "run" / "evsite.sock"

    def client() -> None:
        assert request(path, "ping") == {"ok": True}
        assert request(path, "status") == {"ok": True, "status": {"mode": "normal"}}
        answer = request(path, "reboot")
        assert answer["ok"] is False and "unknown command 'reboot'" in answer["error"]
        assert "commands: ping, status" in answer["error"]
        answer = request(path, "status", verbose=True)
        assert answer == {"ok": False, "error": "unknown field 'verbose'", "field": "verbose"}
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"not json\n[1]\n")
            reader = s.makefile()
            lines = reader.readline(), reader.readline()
        assert "not JSON" in json.loads(lines[0])["error"]
        assert "must be an object" in json.loads(lines[1])["error"]

    _serve(path, client)


def test_client_says_clearly_when_the_service_is_not_running(tmp_path: Path) -> None:
    try:
        request(tmp_path / "nothing.sock", "status")
    except ServiceUnreachable as exc:
        assert "is the service running?" in str(exc)
    else:
        raise AssertionError("expected ServiceUnreachable")


# --- limit commands (dispatch and payload checks; the CLI tests cover the wire end to end) ----

SITE_YAML = """\
site: {id: demo, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}, max_current_a: 16}
time_of_use:
  - {name: allday, days: daily, start: "00:00", end: "24:00", power_kw: 30}
"""
# 11:00 in Berlin (UTC+1 in November)
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.fixture
def book(tmp_path: Path) -> Iterator[SlotBook]:
    db = Database.in_state_dir(tmp_path)
    yield SlotBook(db, load_config_text(SITE_YAML).site, wall=lambda: NOW)
    db.close()


def _ask(sock: ControlSocket, cmd: str, **args: Any) -> dict[str, Any]:
    answer = asyncio.run(sock._answer(json.dumps({"cmd": cmd, **args}).encode()))
    # What goes over the wire is JSON: the answer must survive it unchanged.
    assert json.loads(json.dumps(answer)) == answer
    return answer


def _socket(book: SlotBook) -> ControlSocket:
    return ControlSocket(Path("/nonexistent"), status=dict, commands=limit_commands(book))


def test_limit_set_list_clear(book: SlotBook) -> None:
    sock = _socket(book)
    answer = _ask(sock, "limit_set", scope="connector:cp1", current_a=20, duration_s=7200)
    assert answer["ok"] is True and answer["replaced"] is False
    assert answer["slot"] == {
        "source": "override",
        "id": "connector:cp1",  # the scope is the default id
        "scope": "connector:cp1",
        "current_a": 20.0,
        "power_w": None,
        "starts_at": None,
        "ends_at": "2026-11-29T13:00:00+01:00",  # site-local
        "floor_w": None,
        "note": "",
        "active": True,
    }
    assert answer["notes"] == [
        "20 A is above the 16 A max_current_a of connector 'cp1': it will be clamped to 16 A "
        "(the ratings always win)"
    ]
    later = _ask(sock, "limit_set", id="evening", power_w=11000, starts_at="2026-11-29T18:00")
    assert later["slot"]["starts_at"] == "2026-11-29T18:00:00+01:00"
    assert later["slot"]["active"] is False

    listed = _ask(sock, "limit_list")
    assert listed["now"] == "2026-11-29T11:00:00+01:00" and listed["timezone"] == "Europe/Berlin"
    assert [(s["source"], s["id"], s["active"]) for s in listed["slots"]] == [
        ("override", "connector:cp1", True),
        ("override", "evening", False),
        ("time_of_use", "allday", True),  # from the config, in force now
    ]

    cleared = _ask(sock, "limit_clear", id="evening")
    assert [s["id"] for s in cleared["cleared"]] == ["evening"]
    assert _ask(sock, "limit_clear", id="evening") == {
        "ok": False,
        "error": "no override 'evening'; overrides: connector:cp1",
        "field": "id",
    }
    assert [s["id"] for s in _ask(sock, "limit_clear", all=True)["cleared"]] == ["connector:cp1"]
    assert book.slots() == ()


@pytest.mark.parametrize(
    ("args", "field", "fragment"),
    [
        ({"current_a": "16"}, "current_a", "current_a: input should be a valid number"),
        ({"current_a": True}, "current_a", "valid number"),
        ({"current_a": 10, "amps": 10}, "amps", "unknown field 'amps'"),
        ({"current_a": 10, "scope": 7}, "scope", "valid string"),
        ({"current_a": -1}, "current_a", "finite number >= 0"),
        ({"current_a": 10, "scope": "connector:cp7"}, "scope", "no connector 'cp7'"),
        ({"current_a": 10, "ends_at": "tomorrow"}, "ends_at", "is not an ISO 8601 time"),
        ({"current_a": 10, "ends_at": "2026-11-29T10:59"}, "ends_at", "not in the future"),
        ({"current_a": 10, "starts_at": "2026-03-29T02:30"}, "starts_at", "does not exist"),
        (
            {"current_a": 10, "ends_at": "2026-11-29T18:00", "duration_s": 60},
            "duration_s",
            "not both",
        ),
        ({"current_a": 10, "duration_s": 0}, "duration_s", "must be a number of seconds > 0"),
        ({"current_a": 10, "duration_s": float("inf")}, "duration_s", "> 0"),
    ],
)
def test_limit_set_refusals_name_the_field(
    book: SlotBook, args: dict[str, Any], field: str, fragment: str
) -> None:
    answer = _ask(_socket(book), "limit_set", **args)
    assert answer["ok"] is False and answer["field"] == field
    assert fragment in answer["error"], answer["error"]
    assert book.slots() == ()


def test_limit_times_without_offset_are_site_local(book: SlotBook) -> None:
    sock = _socket(book)
    answer = _ask(sock, "limit_set", current_a=10, ends_at="18:30")  # today at the site
    assert answer["slot"]["ends_at"] == "2026-11-29T18:30:00+01:00"
    answer = _ask(sock, "limit_set", id="utc", current_a=10, ends_at="2026-11-29T18:30Z")
    assert answer["slot"]["ends_at"] == "2026-11-29T19:30:00+01:00"
    (slot,) = [s for s in book.slots() if s.id == "utc"]
    assert slot.ends_at == datetime(2026, 11, 29, 18, 30, tzinfo=UTC)
    answer = _ask(
        sock, "limit_set", id="window", current_a=10, starts_at="2026-12-01T08:00", duration_s=3600
    )
    assert answer["slot"]["ends_at"] == "2026-12-01T09:00:00+01:00"
    assert book.get(SlotSource.OVERRIDE, "window") is not None


def test_limit_clear_needs_exactly_one_of_id_and_all(book: SlotBook) -> None:
    sock = _socket(book)
    for args in ({}, {"id": "x", "all": True}):
        answer = _ask(sock, "limit_clear", **args)
        assert answer["ok"] is False and answer["field"] == "id"
    assert _ask(sock, "limit_clear", all=True) == {"ok": True, "cleared": []}


def test_a_failing_handler_is_answered_not_fatal(book: SlotBook) -> None:
    def boom() -> dict[str, Any]:
        raise RuntimeError("bug")

    sock = ControlSocket(Path("/nonexistent"), status=boom)
    answer = _ask(sock, "status")
    assert answer == {"ok": False, "error": "internal error in status: RuntimeError"}
    assert _ask(sock, "ping") == {"ok": True}
