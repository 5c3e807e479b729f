"""hil: `make demo`, the simulated site and the real controller side by side.

Starts ``python -m hil run <scenario>`` (the simulated meter and EVSEs on loopback), then the
real ``evsite run`` process against the site config the simulator wrote, and shows
``evsite status --watch`` until Ctrl-C. With ``--duration N`` it runs N seconds without a
terminal view and prints the final status. Everything lives in a work directory (``.demo/``):
the site config, the controller's state and socket, its log and the simulator's trace.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def _evsite(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller.cli.main", *args]


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("hil ready"):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise SystemExit(f"demo: the simulated site did not start (exit code {proc.poll()})")


def _stop(proc: subprocess.Popen[str] | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil demo", description=__doc__)
    parser.add_argument("--scenario", default="demo", help="scenario name or YAML path")
    parser.add_argument("--duration", type=float, default=None, help="run N s, print status")
    parser.add_argument("--workdir", default=".demo", help="where the demo keeps its files")
    args = parser.parse_args(argv)

    scenario = Path(args.scenario)
    if not scenario.exists():
        scenario = SCENARIOS / f"{args.scenario}.yaml"
    work = Path(args.workdir).resolve()
    (work / "state").mkdir(parents=True, exist_ok=True)
    (work / "run").mkdir(parents=True, exist_ok=True)
    config = work / "site.yaml"
    sim_cmd = [
        sys.executable, "-m", "hil", "run", str(scenario),
        "--port-base", "0",
        "--site-config-out", str(config),
        "--state-dir", str(work / "state"),
        "--runtime-dir", str(work / "run"),
        "--trace", str(work / "trace.jsonl"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim: subprocess.Popen[str] | None = None
    ctl: subprocess.Popen[str] | None = None
    try:
        sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, text=True, env=env)
        _wait_ready(sim, 30.0)
        print(f"demo: simulated site up ({scenario.name}); controller log in {work}/evsite.log")
        with (work / "evsite.log").open("w") as log:
            ctl = subprocess.Popen(
                _evsite("run", "-c", str(config), "--log-format", "json"),
                stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
            )  # fmt: skip
        sock = work / "run" / "evsite.sock"
        deadline = time.monotonic() + 20.0
        while not sock.exists() and time.monotonic() < deadline:
            if ctl.poll() is not None:
                print(f"demo: evsite exited early; see {work}/evsite.log", file=sys.stderr)
                return 1
            time.sleep(0.2)
        if args.duration is None:
            with contextlib.suppress(KeyboardInterrupt):
                subprocess.run(_evsite("status", "--watch", "--socket", str(sock)), check=False)
            return 0
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            if ctl.poll() is not None or sim.poll() is not None:
                print("demo: a process exited early; see the log", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return subprocess.run(_evsite("status", "--socket", str(sock)), check=False).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(ctl)
        _stop(sim)
