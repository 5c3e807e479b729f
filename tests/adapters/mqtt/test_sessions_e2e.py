"""End to end: sessions, availability, the tariff and limits commanded over MQTT to the real
`evsite run` with the simulated site, and what of it survives a restart of the process.

The site runs without free vend, so the car that arrives at cp1 waits for an app start
(``session_start``). Accepted settings persist: after SIGTERM and a new start, the session
(its tier), cp3's availability, the cloud's tariff (in the retained meta) and the cloud's limit
are all still in force, and the session stopped over MQTT after the restart is recorded as
stopped by mqtt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli.client import request
from tests.adapters.mqtt.backend import CloudClient
from tests.adapters.mqtt.broker import Broker, wait_until
from tests.adapters.mqtt.test_mqtt_e2e import PREFIX, simulated_site, write_config
from tests.e2e.rig import Controller

pytestmark = [pytest.mark.slow, pytest.mark.hil]

TARIFF = {
    "id": "standard",
    "currency": "EUR",
    "vat_rate_pct": 19,
    "price_per_kwh": 0.39,
    "preauth_cents": 3000,
    "preauth_cap_cents": 5000,
}
CLOUD_TARIFF = {"id": "app-2026", "currency": "EUR", "vat_rate_pct": 19, "price_per_kwh": 0.49}


def _command(cloud: CloudClient, name: str, payload: dict[str, Any], corr: str) -> Any:
    cloud.request(
        f"{PREFIX}/cmd/{name}", payload, response_topic=f"{PREFIX}/reply/backend",
        correlation=corr.encode(),
    )  # fmt: skip
    answer = cloud.reply(corr.encode())
    assert answer["ok"] is True, answer
    return answer["result"]


def _sessions(ctl: Controller) -> dict[str, Any]:
    answer = request(ctl.socket, "session_list")
    assert answer["ok"], answer
    connectors: dict[str, Any] = answer["connectors"]
    return connectors


def _cloud_limits(ctl: Controller) -> list[dict[str, Any]]:
    answer = request(ctl.socket, "limit_list")
    return [s for s in answer["slots"] if s["source"] == "cloud"]


def test_commanded_settings_persist_across_a_restart_of_the_real_process(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    cloud = cloud_factory(broker.port, f"{PREFIX}/#", client_id="backend")
    with simulated_site(tmp_path) as sim:
        config = write_config(tmp_path, sim, broker.port)
        document = yaml.safe_load(config.read_text())
        document["sessions"] = {"free_vend": False}
        document["tariff"] = TARIFF
        config.write_text(yaml.safe_dump(document, sort_keys=False))

        ctl = Controller(config, tmp_path / "evsite.log")
        try:
            ctl.wait_socket()
            meta = cloud.wait_for("/meta").json()
            assert (
                meta["tariff"]["tariff_id"] == "standard" and meta["tariff"]["source"] == "config"
            )
            assert {"session_start", "tariff_set", "availability_set"} <= set(meta["commands"])
            wait_until(lambda: _sessions(ctl)["cp1"]["session"] is not None, 15.0, "cp1 plugged")
            assert _sessions(ctl)["cp1"]["session"]["phase"] == "pending"  # no free vend

            started = _command(
                cloud, "session_start", {"connector": "cp1", "id_tag": "app-7", "priority_tier": 1},
                "start",
            )["session"]  # fmt: skip
            assert started["phase"] == "active" and started["method"] == "remote"
            _command(cloud, "session_tier", {"connector": "cp1", "priority_tier": 2}, "tier")
            _command(cloud, "availability_set", {"connector": "cp3", "available": False}, "off")
            _command(cloud, "tariff_set", CLOUD_TARIFF, "tariff")
            _command(cloud, "limit_set", {"current_a": 12, "note": "e2e"}, "limit")
            event = cloud.wait_for("/events/session_started").json()["data"]
            assert event["id"] == started["id"] and event["id_tag"] == "app-7"
            change = cloud.wait_for("/events/availability_changed").json()["data"]
            assert change == {"connector": "cp3", "available": False, "by": "mqtt"}
            cloud.wait_for("/events/tariff_changed")
            cloud.wait_for("/meta", lambda m: m.json()["tariff"]["tariff_id"] == "app-2026")
        finally:
            assert ctl.terminate() == 0

        n_meta = len(cloud.on("/meta"))
        again = Controller(config, tmp_path / "evsite-2.log")
        try:
            again.wait_socket()
            # Published at the new connection: the cloud's tariff is still the one in force.
            wait_until(lambda: len(cloud.on("/meta")) > n_meta, 15.0, "meta after the restart")
            assert cloud.on("/meta")[-1].json()["tariff"]["tariff_id"] == "app-2026"

            def resumed() -> bool:
                session = _sessions(again)["cp1"]["session"]
                return session is not None and session["id"] == started["id"]

            wait_until(resumed, 15.0, "cp1's session resumed")
            connectors = _sessions(again)
            assert connectors["cp1"]["session"]["phase"] == "active"
            assert connectors["cp1"]["session"]["priority_tier"] == 2
            assert connectors["cp3"]["available"] is False
            assert connectors["cp3"]["session"] is None  # inoperative: its car waits unserved
            (limit,) = _cloud_limits(again)
            assert limit["current_a"] == 12.0 and limit["active"] is True

            # The car charges (under the cloud's 12 A) before the app stops it.
            wait_until(lambda: _sessions(again)["cp1"]["session"]["energy_wh"] > 0, 20.0, "energy")
            ended = _command(cloud, "session_stop", {"connector": "cp1"}, "stop")["session"]
            assert ended["stop_reason"] == "Remote" and ended["stopped_by"] == "mqtt"
            event = cloud.wait_for("/events/session_ended").json()["data"]
            assert event["id"] == started["id"] and event["energy_wh"] > 0
        finally:
            assert again.terminate() == 0
    # The backend saw one start and one end of that session, with the same id.
    assert [e.json()["data"]["id"] for e in cloud.on("/events/session_started")] == [started["id"]]
    assert [e.json()["data"]["id"] for e in cloud.on("/events/session_ended")] == [started["id"]]
    print(json.dumps({"energy_wh": event["energy_wh"]}))
