"""Benchmarks of the MQTT link (issue 6), against a real mosquitto on 127.0.0.1.

- ``mqtt_outbox``: events through the persistent outbox to the broker: ``events_per_s`` from
  the first append to the last PUBACK removed from the outbox (a burst appended in one
  transaction, then published at QoS 1 within the broker's Receive Maximum), and
  ``appends_per_s``, one event per transaction, each fsync'd (synchronous=FULL) before the
  next: the rate at which the site can queue events one by one on this disk.
- ``mqtt_telemetry``: the CPU cost of telemetry at 50 connectors: process CPU time per
  message (status -> compact JSON -> paho, network thread included), as a share of one core at
  the default 1 s interval, and the payload size.

Skipped, with a note on stderr, without mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from controller.adapters.mqtt.link import CHANNEL, MqttLink
from controller.adapters.mqtt.payloads import telemetry
from controller.adapters.mqtt.settings import MqttSettings
from controller.app.status import build_status
from controller.core.allocation import allocate
from controller.core.site import Site
from controller.store.db import Database
from controller.store.outbox import Outbox
from tests.adapters.mqtt.broker import MOSQUITTO, Broker
from tests.bench.sitegen import generate

BURST = 20_000
SINGLE_APPENDS = 2_000
TELEMETRY_CONNECTORS = 50
TELEMETRY_RUN_S = 3.0
TELEMETRY_FAST_INTERVAL_S = 0.01  # many messages in a short run; the cost is per message


def _status(site: Site) -> dict[str, Any]:
    _, snap = generate(len(site.connectors))
    allocation = allocate(site, snap)
    return build_status(
        site=site,
        wall=datetime.now(UTC),
        now_s=snap.now_s,
        started_s=0.0,
        allocation=allocation,
        meters=snap.meters,
        evses=snap.evses,
        written_a={},
        health={},
    )


def _link(tmp: Path, port: int, site: Site, status: dict[str, Any], **kw: Any) -> MqttLink:
    settings = MqttSettings(
        host="127.0.0.1",
        port=port,
        client_id=f"bench-{tmp.name}",
        keepalive_s=10,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
        outbox_max_events=BURST * 2,
        **kw,
    )
    db = Database.in_state_dir(tmp)
    return MqttLink(
        settings, site=site, outbox=Outbox(db), status=lambda: status, commands={}, version="bench"
    )


async def _until(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the broker did not take the events in time")
        await asyncio.sleep(0.005)


def bench_outbox(port: int, tmp: Path) -> dict[str, object]:
    site, _ = generate(10)
    link = _link(tmp, port, site, {}, telemetry_interval_s=3600.0)

    async def run() -> tuple[float, float]:
        await link.start()
        await _until(lambda: link.state.value == "connected", 10.0)
        t0 = time.perf_counter()
        link.emit_many("test", [{"n": n} for n in range(BURST)])
        await _until(lambda: link.outbox.count(CHANNEL) == 0, 120.0)
        burst_s = time.perf_counter() - t0
        await link.close()
        # One by one, each on disk before the next (no broker involved).
        t1 = time.perf_counter()
        for n in range(SINGLE_APPENDS):
            link.emit("test", {"n": n})
        single_s = time.perf_counter() - t1
        return burst_s, single_s

    burst_s, single_s = asyncio.run(run())
    return {
        "bench": "mqtt_outbox",
        "events": BURST,
        "events_per_s": round(BURST / burst_s),
        "appends_per_s": round(SINGLE_APPENDS / single_s),
        "in_flight_max": link.status_document()["window"],
    }


def bench_telemetry(port: int, tmp: Path) -> dict[str, object]:
    site, _ = generate(TELEMETRY_CONNECTORS)
    status = _status(site)
    body = telemetry(status, datetime.now(UTC))
    assert body is not None
    link = _link(tmp, port, site, status, telemetry_interval_s=TELEMETRY_FAST_INTERVAL_S)

    async def run() -> tuple[float, int]:
        await link.start()
        await _until(lambda: link.telemetry_sent > 0, 10.0)
        cpu0, sent0 = time.process_time(), link.telemetry_sent
        await asyncio.sleep(TELEMETRY_RUN_S)
        cpu, sent = time.process_time() - cpu0, link.telemetry_sent - sent0
        await link.close()
        return cpu, sent

    cpu_s, sent = asyncio.run(run())
    per_message_s = cpu_s / sent
    return {
        "bench": "mqtt_telemetry",
        "connectors": TELEMETRY_CONNECTORS,
        "interval_s": 1.0,
        "cpu_pct_one_core": round(per_message_s * 100.0, 3),
        "cpu_ms_per_message": round(per_message_s * 1000.0, 3),
        "payload_bytes": len(body),
    }


def _quiet_logs() -> None:
    """The link runs in this process: its logs go to stderr, warnings only (stdout is rows)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def rows() -> Iterator[dict[str, object]]:
    _quiet_logs()
    if MOSQUITTO is None:
        print("mqtt_outbox, mqtt_telemetry skipped: mosquitto is not installed", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="evsite-bench-mqtt-") as tmp:
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        try:
            yield bench_outbox(broker.port, Path(tmp) / "outbox")
            yield bench_telemetry(broker.port, Path(tmp) / "telemetry")
        finally:
            broker.kill()


if __name__ == "__main__":
    import json

    for row in rows():
        print(json.dumps(row), flush=True)
