"""`evsite session ...`, `evsite availability ...` and the session column of `evsite status`:
the real console script against a real ControlSocket over a real SessionDesk.

The socket and the desk live in a thread with their own event loop on a temporary state file,
wired as `evsite run` wires them; a test "ticks" the desk on that loop with the cars it wants
plugged in (as the control loop would with the EVSE readings) and runs the CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from controller.app.control_socket import ControlSocket
from controller.app.sessions import SessionDesk, session_commands
from controller.app.status import build_status
from controller.config import load_config_text
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import SessionSettings
from controller.store.db import Database
from controller.store.sessions import SessionStore

T = TypeVar("T")

SITE_YAML = """\
site: {id: demo, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}}
"""
SITE = load_config_text(SITE_YAML).site
BERLIN = ZoneInfo("Europe/Berlin")


def _evsite(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("evsite", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "controller.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Service:
    socket: Path
    state_file: Path
    loop: asyncio.AbstractEventLoop
    desk: SessionDesk

    def evsite(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _evsite(*args, "--socket", str(self.socket))

    def on_loop(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except Exception as exc:  # pragma: no cover - surfaced to the test
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(10)

    def tick(self, **cars: bool) -> None:
        """One control tick with these connectors' vehicles plugged in (True) or not."""

        def observe() -> None:
            now = time.monotonic()
            readings = {
                cid: EvseReading(
                    at_s=now, state=EvseState.B if cars.get(cid) else EvseState.A, energy_wh=5000.0
                )
                for cid in ("cp1", "cp2")
            }
            self.desk.observe(readings, now, datetime.now(BERLIN))

        self.on_loop(observe)

    def row(self, connector: str) -> dict[str, Any]:
        conn = sqlite3.connect(self.state_file)
        conn.row_factory = sqlite3.Row
        try:
            found = conn.execute(
                "SELECT * FROM sessions WHERE connector = ? ORDER BY updated_at DESC LIMIT 1",
                (connector,),
            ).fetchone()
        finally:
            conn.close()
        assert found is not None, f"no session row for {connector}"
        return dict(found)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    # AF_UNIX paths are limited to about 100 bytes: pytest's tmp_path can be longer.
    run_dir = Path(tempfile.mkdtemp(prefix="evs-"))
    socket_path = run_dir / "evsite.sock"
    state_file = tmp_path / "evsite.sqlite3"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, SessionDesk] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        db = Database(state_file)  # the connection belongs to the loop's thread
        desk = SessionDesk(
            site=SITE,
            store=SessionStore(db),
            settings=SessionSettings(free_vend=False),
            clock=time.monotonic,
            wall_clock=lambda: datetime.now(BERLIN),
        )
        desk.restore(clean_shutdown=True)
        holder["desk"] = desk

        def status() -> dict[str, Any]:
            doc = build_status(
                site=SITE,
                wall=datetime.now(BERLIN),
                now_s=time.monotonic(),
                started_s=time.monotonic(),
                allocation=None,
                meters={},
                evses={},
                written_a={},
                health={},
            )
            doc["sessions"] = desk.status_document()
            return doc

        sock = ControlSocket(socket_path, status=status, commands=session_commands(desk))
        loop.run_until_complete(sock.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(sock.close())
        db.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "the socket did not start"
    try:
        yield Service(socket_path, state_file, loop, holder["desk"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_start_a_waiting_car_then_stop_it(service: Service) -> None:
    service.tick(cp1=True)
    out = service.evsite("session", "list")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("│ cp")}
    assert "pending" in lines["cp1"] and "yes" in lines["cp1"]
    assert "-" in lines["cp2"]
    assert "2 connectors, 0 charging sessions running" in out.stdout

    out = service.evsite("session", "start", "cp1", "--tier", "2", "--id-tag", "FLEET7")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cp1: session ") and out.stdout.rstrip().endswith(" started")
    row = service.row("cp1")
    assert (row["phase"], row["method"], row["priority_tier"], row["id_tag"]) == (
        "active",
        "technician",
        2,
        "FLEET7",
    )

    out = service.evsite("session", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    cp1 = listed["connectors"]["cp1"]
    assert cp1["available"] is True and cp1["session"]["phase"] == "active"
    assert cp1["session"]["id"] == row["id"]
    assert listed["connectors"]["cp2"]["session"] is None

    out = service.evsite("session", "stop", "cp1")
    assert out.returncode == 0, out.stderr
    assert "stopped (Local), 0.00 kWh; the vehicle gets no current until it is unplugged" in (
        out.stdout
    )
    row = service.row("cp1")
    assert (row["phase"], row["stop_reason"], row["stopped_by"]) == ("finishing", "Local", "cli")

    out = service.evsite("session", "stop", "cp1")
    assert out.returncode == 1
    assert "evsite: refused: connector cp1: the session has already ended" in out.stderr


def test_start_before_the_car_comes_and_refusals(service: Service) -> None:
    out = service.evsite("session", "start", "cp2")
    assert out.returncode == 0, out.stderr
    assert "authorised, waiting for a vehicle" in out.stdout
    assert service.row("cp2")["phase"] == "authorised"

    out = service.evsite("session", "start", "cp2")
    assert out.returncode == 1
    assert "evsite: refused (CONNECTOR): connector cp2 already has an authorised session" in (
        out.stderr
    )

    out = service.evsite("session", "start", "cp9")
    assert out.returncode == 1 and "no connector 'cp9'" in out.stderr

    out = service.evsite("session", "start", "cp1", "--json", "--id-tag", "X" * 21)
    assert out.returncode == 1
    answer = json.loads(out.stdout)
    assert answer["ok"] is False and answer["field"] == "id_tag"

    out = service.evsite("session", "tag", "cp1", "CARD1")
    assert out.returncode == 1 and "nobody can authorise it" in out.stderr

    out = service.evsite("session", "stop", "cp1")
    assert out.returncode == 1 and "has no session to stop" in out.stderr

    out = service.evsite("session", "tier", "cp1", "3")
    assert out.returncode == 1 and "has no session" in out.stderr


def test_tier_of_a_running_session(service: Service) -> None:
    service.tick(cp1=True)
    assert service.evsite("session", "start", "cp1").returncode == 0
    out = service.evsite("session", "tier", "cp1", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("priority tier 4")
    assert service.row("cp1")["priority_tier"] == 4
    out = service.evsite("session", "tier", "cp1", "none")
    assert out.returncode == 0 and "priority tier the connector's" in out.stdout
    assert service.row("cp1")["priority_tier"] is None


def test_bad_command_lines_are_usage_errors(service: Service) -> None:
    for args in (
        ("session", "tier", "cp1", "11"),
        ("session", "start", "cp1", "--tier", "x"),
        ("availability", "cp1", "maybe"),
        ("session",),
        ("session", "stop"),
    ):
        out = service.evsite(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "usage:" in out.stderr


def test_no_service_is_exit_3(tmp_path: Path) -> None:
    out = _evsite("session", "list", "--socket", str(tmp_path / "none.sock"))
    assert out.returncode == 3
    assert "is the service running?" in out.stderr


def test_availability_off_now_or_at_the_end_of_the_session(service: Service) -> None:
    out = service.evsite("availability", "cp2", "off")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "cp2: out of service\n"
    service.tick(cp2=True)
    out = service.evsite("session", "start", "cp2")
    assert out.returncode == 1 and "connector cp2 is unavailable" in out.stderr

    service.tick(cp1=True)
    assert service.evsite("session", "start", "cp1").returncode == 0
    out = service.evsite("availability", "cp1", "off")
    assert out.returncode == 0, out.stderr
    assert "out of service once the running session ends (scheduled)" in out.stdout
    out = service.evsite("session", "list")
    assert "off at its end" in out.stdout

    status = service.evsite("status")
    assert status.returncode == 0, status.stderr
    rows = {ln.split()[1]: ln for ln in status.stdout.splitlines() if ln.startswith("│ cp")}
    assert "active (off after)" in rows["cp1"]
    assert "unavailable" in rows["cp2"]

    assert service.evsite("session", "stop", "cp1").returncode == 0
    service.tick(cp1=True)
    out = service.evsite("session", "list", "--json")
    assert json.loads(out.stdout)["connectors"]["cp1"]["available"] is False

    out = service.evsite("availability", "cp2", "on")
    assert out.returncode == 0 and out.stdout == "cp2: in service\n"
    service.tick(cp2=True)
    assert service.evsite("session", "start", "cp2").returncode == 0
