"""Adapters layer: Home Assistant MQTT discovery for a site (optional, ``mqtt.home_assistant``).

Sans-IO: the site in, the retained discovery messages out. Every sensor reads the site's own
``telemetry`` topic (no extra traffic: Home Assistant picks its value out with a template) and
is available while the site's retained ``status`` says ``online``:

- ``Grid current L1`` .. ``L3``: the measured current per phase at the grid connection (A)
- per connector: ``<id> current`` (the highest of its phases, A), ``<id> limit`` (A, the limit
  in force) and ``<id> state`` (IEC 61851 A..F)

Config topics are ``<prefix>/sensor/evsite_<site>/<object>/config`` (retained), so that one
broker ACL line per site covers them: ``pattern write homeassistant/+/evsite_%u/#``. Switched
off, the site publishes an empty retained message on each config topic it published before,
which removes the entity from Home Assistant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controller.adapters.mqtt.payloads import dumps
from controller.adapters.mqtt.topics import Topics
from controller.core.site import Site

DEFAULT_PREFIX = "homeassistant"
_SAFE_RE = re.compile(r"[^A-Za-z0-9_-]")


def node_id(site_id: str) -> str:
    """The discovery node of a site: ``evsite_<site id>``, characters HA refuses as ``_``."""
    return "evsite_" + _SAFE_RE.sub("_", site_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    """One retained discovery message."""

    topic: str
    payload: str


def discovery(site: Site, *, prefix: str, version: str) -> list[Discovery]:
    """The discovery config of every sensor of the site, in a stable order."""
    topics = Topics(site.id)
    node = node_id(site.id)
    device = {
        "identifiers": [node],
        "name": site.name or site.id,
        "manufacturer": "evsite",
        "model": "EV charge site controller",
        "sw_version": version,
    }
    common = {
        "state_topic": topics.telemetry,
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    amps = {"device_class": "current", "unit_of_measurement": "A", "state_class": "measurement"}
    sensors: list[tuple[str, dict[str, object]]] = []
    for i, phase in enumerate(("L1", "L2", "L3")):
        sensors.append(
            (
                f"grid_current_{phase.lower()}",
                {
                    "name": f"Grid current {phase}",
                    "value_template": f"{{{{ value_json.site.current_a[{i}] }}}}",
                    **amps,
                },
            )
        )
    for connector in site.connectors:
        cid = connector.id
        safe = _SAFE_RE.sub("_", cid)
        conn = f"value_json.connectors[{dumps(cid)}]"
        sensors += [
            (
                f"{safe}_current",
                {
                    "name": f"{cid} current",
                    "value_template": f"{{{{ {conn}.current_a | max }}}}",
                    **amps,
                },
            ),
            (
                f"{safe}_limit",
                {"name": f"{cid} limit", "value_template": f"{{{{ {conn}.limit_a }}}}", **amps},
            ),
            (
                f"{safe}_state",
                {
                    "name": f"{cid} state",
                    "value_template": f"{{{{ {conn}.state }}}}",
                    "icon": "mdi:ev-station",
                },
            ),
        ]
    out = []
    for object_id, config in sensors:
        unique_id = f"{node}_{object_id}"
        body = {**config, **common, "unique_id": unique_id}
        out.append(
            Discovery(topic=f"{prefix}/sensor/{node}/{object_id}/config", payload=dumps(body))
        )
    return out
