"""Home Assistant MQTT discovery against a real mosquitto: the retained configs a Home Assistant
would find, their templates rendered (with jinja2, as Home Assistant renders them) against the
telemetry the site really publishes, a configurable prefix, and their removal when switched off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from controller.adapters.mqtt import payloads
from controller.adapters.mqtt.home_assistant import discovery
from controller.app.cloud import HA_MARKER, CloudLink
from controller.app.slots import SlotBook
from controller.config import load_config_text
from controller.store.db import Database
from controller.store.outbox import Outbox
from tests.adapters.mqtt.backend import CloudClient
from tests.adapters.mqtt.broker import Broker
from tests.adapters.mqtt.test_link import SITE_YAML

SITE = "site-a"
NODE = f"evsite_{SITE}"  # HA allows letters, digits, _ and - in a node id


def _link(tmp: Path, port: int, **settings: Any) -> tuple[CloudLink, Database]:
    config = load_config_text(SITE_YAML)
    assert config.mqtt is not None
    mqtt = dataclasses.replace(
        config.mqtt, port=port, reconnect_min_s=0.1, reconnect_max_s=0.5, **settings
    )
    db = Database.in_state_dir(tmp / "state")
    link = CloudLink(
        mqtt, site=config.site, db=db, outbox=Outbox(db), book=SlotBook(db, config.site),
        status=lambda: {"mode": "normal"},
    )  # fmt: skip
    return link, db


def _run(link: CloudLink, done: Callable[[], bool]) -> None:
    async def scenario() -> None:
        await link.start()
        deadline = asyncio.get_running_loop().time() + 10.0
        while not done():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.05)
        await link.close()

    asyncio.run(scenario())


def _retained_configs(port: int, factory: Callable[..., CloudClient], prefix: str) -> Any:
    """What a Home Assistant that starts now finds: the retained configs under its prefix."""
    late = factory(port, f"{prefix}/#")
    time.sleep(0.5)  # retained messages arrive right after the subscription
    return {m.topic: m.json() for m in late.on("/config") if m.retain and m.payload}


def test_discovery_configs_render_the_real_telemetry_and_go_away_when_switched_off(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    link, db = _link(tmp_path, broker.port, home_assistant=True)
    _run(link, lambda: db.marker(HA_MARKER) not in (None, "[]") and link._discovery_task is not None
         and link._discovery_task.done())  # fmt: skip
    db.close()
    configs = _retained_configs(broker.port, cloud_factory, "homeassistant")
    expected = {f"homeassistant/sensor/{NODE}/{o}/config" for o in (
        "grid_current_l1", "grid_current_l2", "grid_current_l3",
        "cp1_current", "cp1_limit", "cp1_state", "cp2_current", "cp2_limit", "cp2_state",
    )}  # fmt: skip
    assert set(configs) == expected
    l2 = configs[f"homeassistant/sensor/{NODE}/grid_current_l2/config"]
    assert l2["state_topic"] == f"evsite/v1/{SITE}/telemetry"
    assert l2["availability_topic"] == f"evsite/v1/{SITE}/status"
    assert l2["unit_of_measurement"] == "A" and l2["device_class"] == "current"
    assert l2["unique_id"] == f"{NODE}_grid_current_l2"
    assert l2["device"]["identifiers"] == [NODE]

    # The templates, rendered as Home Assistant does, against a telemetry document the site
    # builds (and the availability template against the real birth message).
    telemetry = json.loads(
        payloads.dumps(
            {
                "site": {"current_a": [16.1, 15.2, 15.1]},
                "connectors": {
                    "cp1": {"state": "C", "current_a": [6.0, 7.5, 6.1], "limit_a": 9.2},
                    "cp2": {"state": "A", "current_a": [0.0, 0.0, 0.0], "limit_a": 0.0},
                },
            }
        )
    )
    env = jinja2.Environment(autoescape=False)

    def render(object_id: str, value_json: Any, key: str = "value_template") -> str:
        config = configs[f"homeassistant/sensor/{NODE}/{object_id}/config"]
        return env.from_string(config[key]).render(value_json=value_json)

    assert render("grid_current_l2", telemetry) == "15.2"
    assert render("cp1_current", telemetry) == "7.5"
    assert render("cp1_limit", telemetry) == "9.2"
    assert render("cp1_state", telemetry) == "C"
    assert render("cp2_state", telemetry) == "A"
    birth = json.loads(payloads.status_online(boot_id="b", version="t", since=datetime.now(UTC)))
    assert render("cp1_state", birth, "availability_template") == "online"

    # Switched off: every config published before is removed from the broker.
    again, db = _link(tmp_path, broker.port, home_assistant=False)
    _run(again, lambda: db.marker(HA_MARKER) == "[]")
    db.close()
    assert _retained_configs(broker.port, cloud_factory, "homeassistant") == {}


def test_discovery_under_a_configured_prefix(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    link, db = _link(tmp_path, broker.port, home_assistant=True, home_assistant_prefix="ha/disc")
    _run(link, lambda: link._discovery_task is not None and link._discovery_task.done())
    assert link._discovery_task is not None and link._discovery_task.result() is True
    db.close()
    configs = _retained_configs(broker.port, cloud_factory, "ha/disc")
    assert len(configs) == 9
    assert all(t.startswith(f"ha/disc/sensor/{NODE}/") for t in configs)


def test_discovery_names_are_safe_for_any_site_and_connector_id() -> None:
    config = load_config_text(
        SITE_YAML.replace("id: site-a", "id: lot.7").replace("id: cp1", "id: bay.1")
    )
    items = discovery(config.site, prefix="homeassistant", version="t")
    assert items[0].topic == "homeassistant/sensor/evsite_lot_7/grid_current_l1/config"
    assert {i.topic.split("/")[3] for i in items} >= {"bay_1_current", "bay_1_state"}
    bay = json.loads(next(i.payload for i in items if "bay_1_limit" in i.topic))
    assert bay["value_template"] == '{{ value_json.connectors["bay.1"].limit_a }}'
