"""hil command line: `python -m hil run ...` as a subprocess, and `python -m hil list`."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "hil", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ready_line(proc: subprocess.Popen[str], timeout_s: float = 15.0) -> str:
    """The first stdout line; fails instead of hanging when the simulator never gets ready."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert readable, "no ready line in time"
    return proc.stdout.readline()


def test_run_prints_ready_writes_config_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "cfg" / "site.yaml"
    proc = _start(
        "run", "hil/scenarios/demo.yaml", "--duration", "3", "--site-config-out", str(out),
        "--trace", str(tmp_path / "trace.jsonl"),
    )  # fmt: skip
    try:
        line = _ready_line(proc)
        assert line == f"hil ready {out}\n"
        config = yaml.safe_load(out.read_text())
        assert [e["id"] for e in config["evses"]] == ["cp1", "cp2", "cp3"]
        assert isinstance(config["meters"][0]["transport"]["port"], int)
        assert Path(config["service"]["state_dir"]).is_dir()
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.communicate()
    lines = (tmp_path / "trace.jsonl").read_text().splitlines()
    assert 4 <= len(lines) <= 8
    assert json.loads(lines[-1])["t_s"] >= 2.9


def test_run_without_config_prints_ports_and_stops_on_sigterm() -> None:
    proc = _start("run", "e2e")
    try:
        line = _ready_line(proc)
        assert line.startswith("hil ready ")
        ports = json.loads(line.removeprefix("hil ready "))
        assert set(ports) == {"grid_meter", "cp1", "cp2", "cp3"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert "Traceback" not in stderr


def test_list_names_the_shipped_scenarios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"demo", "e2e"} <= set(names)
