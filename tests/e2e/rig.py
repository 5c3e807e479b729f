"""End-to-end rig: the simulated site in a background thread and the real `evsite` process.

The simulator runs in this test process (its own asyncio loop in a thread) so a test can read
its ground truth at the moment it asks the controller; the controller is the real console
script in a subprocess, talking Modbus TCP to the simulator on loopback, and Modbus RTU on the
simulator's RS-485 lines (ptys). A scenario with lines needs ``pty_master=True``: the
controller then starts through ``python -m hil.ptymaster`` so that it can open a pty at even
parity as it would a USB RS-485 adapter (Linux ptys refuse parity; see hil/devices/rtu.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hil.scenario import Scenario
from hil.site import SimulatedSite

T = TypeVar("T")


class SimThread:
    """A SimulatedSite on its own event loop in a daemon thread."""

    def __init__(self, scenario: Scenario | str, trace: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.site = SimulatedSite(scenario, trace_path=trace, trace_interval_s=0.25)
        self.call(self.site.start())

    def call(self, coro: Any, timeout_s: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def do(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the simulator's loop (its state is not thread-safe)."""
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except Exception as exc:  # pragma: no cover - surfaced to the test
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(5.0)

    def close(self) -> None:
        self.call(self.site.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


class Controller:
    """The real `evsite run` process."""

    def __init__(self, config: Path, log: Path, *, pty_master: bool = False) -> None:
        self.config = config
        self.log_path = log
        self.socket = (
            Path(yaml.safe_load(config.read_text())["service"]["runtime_dir"]) / "evsite.sock"
        )
        self._log = log.open("w")
        launcher = ["-m", "hil.ptymaster", "controller.cli.main"] if pty_master else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(launcher or ["-m", "controller.cli.main"]),
                "run",
                "-c",
                str(config),
                "--log-format",
                "json",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_socket(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"evsite exited early:\n{self.log_path.read_text()}"
            if self.socket.exists():
                return
            time.sleep(0.1)
        raise AssertionError(f"no socket after {timeout_s} s:\n{self.log_path.read_text()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", *args, "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def kill(self) -> None:
        """SIGKILL: the controller dies without a word (no fallback written, nothing closed)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10.0)

    def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            start = line.find("{")
            if start >= 0:
                try:
                    events.append(json.loads(line[start:]))
                except json.JSONDecodeError:
                    continue
        return events


@contextmanager
def running_site(
    tmp: Path, scenario: Scenario | str, *, pty_master: bool = False
) -> Iterator[tuple[SimThread, Controller]]:
    sim = SimThread(scenario, tmp / "trace.jsonl")
    ctl: Controller | None = None
    try:
        config = sim.site.site_config(state_dir=tmp / "state", runtime_dir=tmp / "run")
        path = tmp / "site.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        ctl = Controller(path, tmp / "evsite.log", pty_master=pty_master)
        ctl.wait_socket()
        yield sim, ctl
    finally:
        if ctl is not None:
            ctl.terminate()
        sim.close()


def read_trace(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
