"""`evsite limit set|clear|list`: the real console script against a real ControlSocket.

The socket is served in this process, in a thread with its own event loop, over a SlotBook on a
temporary state file, exactly as `evsite run` wires them; the CLI runs as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.app.control_socket import ControlSocket, limit_commands
from controller.app.slots import SlotBook
from controller.cli.limits import parse_duration
from controller.config import load_config_text
from controller.core.slots import LimitSlot, SlotSource
from controller.store.db import Database

SITE_YAML = """\
site: {id: demo, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
circuits:
  - {id: carport, rating_a: 32}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}, circuit: carport,
     max_current_a: 16}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}, circuit: carport}
"""


def _evsite(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("evsite", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "controller.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True, slots=True)
class Service:
    socket: Path
    state_file: Path

    def evsite(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _evsite(*args, "--socket", str(self.socket))

    def stored(self) -> dict[str, LimitSlot]:
        """The overrides in the state file, read over a connection of our own."""
        db = Database(self.state_file)
        try:
            return {s.id: s for s in db.load_slots() if s.source is SlotSource.OVERRIDE}
        finally:
            db.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    # AF_UNIX paths are limited to about 100 bytes: pytest's tmp_path can be longer.
    run_dir = Path(tempfile.mkdtemp(prefix="evs-"))
    socket_path = run_dir / "evsite.sock"
    state_file = tmp_path / "evsite.sqlite3"
    site = load_config_text(SITE_YAML).site
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        # The connection belongs to the loop's thread, as in the service.
        db = Database(state_file)
        sock = ControlSocket(socket_path, status=dict, commands=limit_commands(SlotBook(db, site)))
        loop.run_until_complete(sock.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(sock.close())
        db.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "the socket did not start"
    try:
        yield Service(socket=socket_path, state_file=state_file)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_set_list_clear(service: Service) -> None:
    out = service.evsite(
        "limit", "set", "--connector", "cp1", "--current", "20", "--for", "2h", "--note", "cable"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "override 'connector:cp1' set: connector cp1 at most 20 A per phase, until "
    )
    assert "note: 20 A is above the 16 A max_current_a of connector 'cp1'" in out.stdout

    out = service.evsite(
        "limit", "set", "--site", "--power", "11", "--from", "2099-01-01T18:00", "--id", "night"
    )
    assert out.returncode == 0, out.stderr
    assert "override 'night' set: site at most 11 kW, from 2099-01-01 18:00, open-ended" in (
        out.stdout
    )
    assert "(not yet active)" in out.stdout

    out = service.evsite("limit", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed["ok"] is True and listed["timezone"] == "Europe/Berlin"
    slots = {s["id"]: s for s in listed["slots"]}
    assert set(slots) == {"connector:cp1", "night"}
    cp1 = slots["connector:cp1"]
    assert (cp1["scope"], cp1["current_a"], cp1["note"], cp1["active"]) == (
        "connector:cp1",
        20.0,
        "cable",
        True,
    )
    ends_at = datetime.fromisoformat(cp1["ends_at"])
    left_s = (ends_at - datetime.now(UTC)).total_seconds()
    assert 7000 < left_s <= 7200
    night = slots["night"]
    assert night["power_w"] == 11000.0 and night["starts_at"] == "2099-01-01T18:00:00+01:00"
    assert night["active"] is False
    assert set(service.stored()) == {"connector:cp1", "night"}  # persisted before the answer

    out = service.evsite("limit", "list")
    assert out.returncode == 0, out.stderr
    assert "limit slots (times in Europe/Berlin)" in out.stdout
    assert "connector cp1" in out.stdout and "11 kW" in out.stdout
    assert "2 slots, 1 active now" in out.stdout

    out = service.evsite("limit", "clear", "--id", "night")
    assert (out.returncode, out.stdout) == (0, "override 'night' cleared (site)\n")
    out = service.evsite("limit", "clear", "--all", "--json")
    assert out.returncode == 0, out.stderr
    assert [s["id"] for s in json.loads(out.stdout)["cleared"]] == ["connector:cp1"]
    assert service.stored() == {}
    out = service.evsite("limit", "list")
    assert (out.returncode, out.stdout) == (0, "no limit slots set\n")


def test_set_json_and_replace(service: Service) -> None:
    first = service.evsite("limit", "set", "--circuit", "carport", "--current", "25", "--json")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["ok"] is True and answer["replaced"] is False and answer["notes"] == []
    assert answer["slot"]["id"] == "circuit:carport" and answer["slot"]["ends_at"] is None
    again = service.evsite("limit", "set", "--circuit", "carport", "--current", "20")
    assert again.returncode == 0 and "override 'circuit:carport' replaced" in again.stdout
    assert len(service.stored()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--connector", "cp9", "--current", "10"],
            "evsite: refused (--site/--circuit/--connector): no connector 'cp9'; "
            "connectors: cp1, cp2",
        ),
        (
            ["--site", "--current", "nan"],
            "evsite: refused (--current): current_a must be a finite number >= 0, not nan",
        ),
        (
            ["--site", "--current", "-5"],
            "evsite: refused (--current): current_a must be a finite number >= 0, not -5.0",
        ),
        (["--site", "--current", "10", "--until", "2020-01-01T00:00"], "is not in the future"),
        (["--site", "--current", "10", "--until", "soon"], "refused (--until): ends_at: 'soon'"),
        (["--site", "--current", "10", "--id", "a b"], "refused (--id): an id is 1 to 64"),
    ],
)
def test_refused_requests_exit_1_and_change_nothing(
    service: Service, args: list[str], message: str
) -> None:
    out = service.evsite("limit", "set", *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert message in out.stderr, out.stderr
    assert out.stdout == ""
    assert service.stored() == {}


def test_refused_with_json_prints_the_answer(service: Service) -> None:
    out = service.evsite("limit", "set", "--circuit", "shed", "--current", "10", "--json")
    assert out.returncode == 1
    answer = json.loads(out.stdout)
    assert answer["ok"] is False and answer["field"] == "scope"
    assert "no circuit 'shed'" in answer["error"]


def test_clear_of_an_unknown_id_exits_1(service: Service) -> None:
    out = service.evsite("limit", "clear", "--id", "nope")
    assert out.returncode == 1
    assert "evsite: refused (--id): no override 'nope'; there are none" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "--site", "--current", "10", "--for", "2x"], "argument --for: invalid duration"),
        (["set", "--site", "--connector", "cp1", "--current", "10"], "not allowed with argument"),
        (["set", "--site"], "one of the arguments --current --power is required"),
        (["set", "--current", "10"], "one of the arguments --site --circuit --connector"),
        (["set", "--site", "--current", "ten"], "argument --current: invalid float value"),
        (
            ["set", "--site", "--current", "10", "--for", "1h", "--until", "18:00"],
            "argument --until: not allowed with argument --for",
        ),
        (["clear"], "one of the arguments --id --all is required"),
    ],
)
def test_bad_command_lines_exit_2(service: Service, args: list[str], message: str) -> None:
    out = service.evsite("limit", *args)
    assert out.returncode == 2
    assert message in out.stderr, out.stderr
    assert service.stored() == {}


def test_without_a_service_exit_3(tmp_path: Path) -> None:
    for args in (
        ["set", "--site", "--current", "10"],
        ["clear", "--all"],
        ["list", "--json"],
    ):
        out = _evsite("limit", *args, "--socket", str(tmp_path / "evsite.sock"))
        assert out.returncode == 3
        assert "is the service running?" in out.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h", 7200), ("30m", 1800), ("1h30m", 5400), ("90s", 90), ("1d", 86400), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "2x", "h", "0m", "-1h", "2h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
