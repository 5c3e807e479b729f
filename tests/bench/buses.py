"""Benchmarks of the device side (`make bench`, issue 4): the tick, the footprint, the RTU line.

- ``tick``: the real ``ControlLoop.tick`` (read the SDM630 and 50 Alfen sockets over loopback
  Modbus TCP, allocate, write what changed, build the status) against a 50-EVSE simulated site
  served by ``python -m hil run`` in a process of its own, so the simulators' CPU is not the
  tick's. Ticks are paced at ``TICK_PACE_S`` (not the service's 1 s) to keep ``make bench``
  short; the first ticks (connects, setup) are warm-up and not counted. Target p99 <= 250 ms.
- ``footprint``: the real ``evsite run`` process against the same site for ``FOOTPRINT_S``
  after a warm-up: its CPU time from /proc/PID/stat over the wall time (one core = 100 %), and
  its resident memory from /proc/PID/status (VmRSS at the end, VmHWM the peak). Targets
  <= 2 % and <= 80 MB.
- ``rtu``: the Heidelberg driver's own read (FC04, 14 input registers) round-robin over four
  boxes on a paced pty line at 19200 8E1 with zero turnaround. The wire limit of one
  transaction is (request + response bytes) x 11 bits / 19200 + 2 x t3.5 (Modbus over serial
  line, §2.5.1.1: 3.5 character times of silence after each frame). Target ratio >= 0.8.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
import yaml

from controller.app.service import ControlLoop
from controller.config import load_config
from controller.store.db import Database
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.registry import build_evse, build_meter
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.modbus import quiet_pymodbus
from hil.devices.rtu import LineSettings, RtuLine

EVSES = 50
TICKS = 60
WARMUP_TICKS = 3
TICK_PACE_S = 0.3
FOOTPRINT_WARMUP_S = 5.0
FOOTPRINT_S = 30.0
RTU_S = 5.0
RTU_BOXES = 4
ROOT = Path(__file__).resolve().parents[2]


def site_scenario(evses: int = EVSES) -> dict[str, Any]:
    """A car park of ``evses`` Alfen sockets (rotated phases), most with an EV charging."""
    rotations = ("L1L2L3", "L2L3L1", "L3L1L2")
    entries = []
    for i in range(evses):
        entry: dict[str, Any] = {
            "id": f"cp{i + 1:02d}",
            "phase_rotation": rotations[i % 3],
            "max_current_a": 32,
            "safe_current_a": 0,  # 50 x 6 A would not fit the connection's fallback rule
        }
        if i % 5 != 4:  # four in five plugged in, arriving over the first seconds
            entry["ev"] = {
                "arrival_s": 0.5 + (i % 10) * 0.3,
                "phases": 3 if i % 4 else 1,
                "max_current_a": 16 if i % 3 else 32,
                "energy_need_wh": 60000,
                "response_lag_s": 2,
            }
        entries.append(entry)
    return {
        "name": f"bench{evses}",
        "description": f"{evses} Alfen sockets on a 400 A connection (benchmarks)",
        "site": {"grid_rating_a": 400, "grid_margin_a": 2},
        "building": {"steps": [{"at_s": 0, "current_a": [30, 25, 28]}], "noise_a": 1, "seed": 3},
        "grid_meter": {"timeout_s": 0.5},
        "evses": entries,
    }


class SimProcess:
    """``python -m hil run`` serving a scenario, with the evsite config it wrote."""

    def __init__(self, workdir: Path, scenario: dict[str, Any]) -> None:
        self.dir = workdir
        path = workdir / "scenario.yaml"
        path.write_text(yaml.safe_dump(scenario, sort_keys=False))
        self.config = workdir / "site.yaml"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil", "run", str(path), "--site-config-out", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("hil ready"):
            self.close()
            raise RuntimeError(f"hil did not start: {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _p99(times: list[float]) -> float:
    return sorted(times)[int(0.99 * (len(times) - 1))]


async def _ticks(config_path: Path) -> list[float]:
    config = load_config(config_path)
    site = config.site
    pool = BusPool()
    meters = {m.id: build_meter(m, pool=pool) for m in site.meters}
    evses = {c.id: build_evse(c.evse, pool=pool) for c in site.connectors}
    db = Database.in_state_dir(config.service.state_dir)
    loop = ControlLoop(
        site=site, meters=meters, evses=evses, db=db, clock=time.monotonic, slots=None
    )
    times: list[float] = []
    try:
        await loop.start()
        for i in range(WARMUP_TICKS + TICKS):
            t0 = time.perf_counter()
            await loop.tick()
            elapsed = time.perf_counter() - t0
            if i >= WARMUP_TICKS:
                times.append(elapsed * 1000.0)
            await asyncio.sleep(max(0.0, TICK_PACE_S - elapsed))
    finally:
        await loop.close()
        await pool.close_all()
        db.close()
    return times


def _quiet_logs() -> None:
    """The loop runs in this process: its logs go to stderr, warnings only (stdout is rows)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def bench_tick(sim: SimProcess) -> dict[str, object]:
    quiet_pymodbus()
    _quiet_logs()
    times = asyncio.run(_ticks(sim.config))
    return {
        "bench": "tick",
        "evses": EVSES,
        "meters": 1,
        "ticks": len(times),
        "median_ms": round(statistics.median(times), 1),
        "p99_ms": round(_p99(times), 1),
        "max_ms": round(max(times), 1),
    }


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bench_footprint(sim: SimProcess) -> dict[str, object]:
    config = yaml.safe_load(sim.config.read_text())
    socket = Path(config["service"]["runtime_dir"]) / "evsite.sock"
    log = (sim.dir / "evsite.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "run", "-c", str(sim.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30.0
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"evsite did not start; see {sim.dir / 'evsite.log'}")
            time.sleep(0.1)
        time.sleep(FOOTPRINT_WARMUP_S)
        cpu0, wall0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(FOOTPRINT_S)
        cpu1, wall1 = _cpu_s(proc.pid), time.monotonic()
        rss_kb, peak_kb = _status_kb(proc.pid, "VmRSS"), _status_kb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return {
        "bench": "footprint",
        "connectors": EVSES,
        "seconds": FOOTPRINT_S,
        "cpu_pct_one_core": round(100.0 * (cpu1 - cpu0) / (wall1 - wall0), 2),
        "rss_mb": round(rss_kb / 1024.0, 1),
        "rss_peak_mb": round(peak_kb / 1024.0, 1),
    }


def wire_time_s(request_bytes: int, response_bytes: int, line: LineSettings) -> float:
    """One transaction on the wire: both frames and the silent interval after each."""
    return (request_bytes + response_bytes) * line.char_time_s + 2 * line.silent_interval_s


async def _rtu(line_settings: LineSettings) -> dict[str, object]:
    from controller.core.site import DeviceSpec, SerialTransport

    boxes = [HeidelbergBox(unit_id=u) for u in range(1, RTU_BOXES + 1)]
    async with RtuLine([b.device for b in boxes], line=line_settings, turnaround_s=0.0) as line:
        pool = BusPool()
        transport = SerialTransport(
            port=line.port, baudrate=line_settings.baudrate, parity=line_settings.parity
        )
        evses = [
            build_evse(
                DeviceSpec(
                    id=f"hd{b.device.unit_id}",
                    driver="heidelberg_ec",
                    transport=transport,
                    unit_id=b.device.unit_id,
                    timeout_s=0.3,
                ),
                pool=pool,
            )
            for b in boxes
        ]
        first = evses[0]
        assert isinstance(first, RegisterMapEvse)
        (block,) = first.read_plan  # the whole poll is one read
        request_bytes, response_bytes = 8, 5 + 2 * block.count
        client = first.client
        for evse in evses:  # open the port, first frames
            await evse.read(0.0)
        before = client.counters
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < RTU_S:
            await evses[i % len(evses)].read(0.0)
            i += 1
        elapsed = time.perf_counter() - start
        after = client.counters
        for evse in evses:
            await evse.close()
    done = after.transactions - before.transactions
    failed = after.failures - before.failures
    limit = 1.0 / wire_time_s(request_bytes, response_bytes, line_settings)
    rate = (done - failed) / elapsed
    return {
        "bench": "rtu",
        "baud": line_settings.baudrate,
        "framing": f"{line_settings.bytesize}{line_settings.parity}{line_settings.stopbits}",
        "request": f"FC04 {block.count} registers",
        "units": RTU_BOXES,
        "transactions_per_s": round(rate, 1),
        "wire_limit_per_s": round(limit, 1),
        "ratio_to_wire_limit": round(rate / limit, 3),
        "failures": failed,
    }


def bench_rtu() -> dict[str, object]:
    quiet_pymodbus()
    return asyncio.run(_rtu(LineSettings(baudrate=19200, parity="E", stopbits=1)))


def rows() -> Iterator[dict[str, object]]:
    """Every row of this module, one at a time as it is measured (tests/bench/run.py)."""
    with tempfile.TemporaryDirectory(prefix="evsite-bench-") as tmp:
        sim = SimProcess(Path(tmp), site_scenario())
        try:
            yield bench_tick(sim)
            yield bench_footprint(sim)
        finally:
            sim.close()
    if sys.platform == "linux":
        yield bench_rtu()
