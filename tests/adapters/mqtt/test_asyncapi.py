"""docs/asyncapi.yaml against docs/mqtt.md and against the code.

- the AsyncAPI document parses, says 3.0.0, and every reference in it resolves;
- every topic, command and event kind that docs/mqtt.md names is a channel there, and its
  commands and events are exactly those the site has;
- every JSON example of docs/mqtt.md parses and validates (jsonschema) against the schema of the
  message its comment names, every message has an example, and a command's example arguments
  pass the site's own validation;
- what the site really sends (meta, status, Home Assistant configs, the answers to commands and
  the events they cause) validates against the same schemas.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from controller.adapters.mqtt import payloads
from controller.adapters.mqtt.commands import RESERVED_KEYS, CommandTable, Request
from controller.adapters.mqtt.home_assistant import discovery
from controller.adapters.mqtt.link import CHANNEL
from controller.app.cloud import cloud_commands
from controller.config import tariff_from_payload
from controller.core.model import EvseState
from tests.adapters.mqtt.test_cloud_sessions import NEW_TARIFF, PREFIX, Site

ROOT = Path(__file__).resolve().parents[3]
DOC = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
PAGE = (ROOT / "docs" / "mqtt.md").read_text()
MESSAGES: dict[str, Any] = DOC["components"]["messages"]
_EXAMPLE_RE = re.compile(
    r"(?:<!-- schema: (?P<name>[^ ]+)[^>]*-->\n)?```json\n(?P<body>.*?)\n```", re.S
)


def _resolve(pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = DOC
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def validator(message: str) -> Draft7Validator:
    """The payload schema of a message, its references resolved within the document."""
    schema = {"$ref": f"#/components/messages/{message}/payload", "components": DOC["components"]}
    return Draft7Validator(schema)


def check(message: str, payload: Any) -> None:
    errors = sorted(validator(message).iter_errors(payload), key=lambda e: list(e.path))
    assert not errors, f"{message}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
    )


def examples() -> list[tuple[str | None, str]]:
    return [(m["name"], m["body"]) for m in _EXAMPLE_RE.finditer(PAGE)]


def _addresses() -> set[str]:
    return {c["address"] for c in DOC["channels"].values()}


def _documented_commands() -> list[str]:
    section = PAGE[PAGE.index("## Commands") : PAGE.index("## Several sources")]
    return re.findall(r"^### `([a-z_]+)`", section, re.M)


def _documented_event_kinds() -> list[str]:
    table = PAGE[PAGE.index("| Kind | When |") :]
    table = table[: table.index("\n\n")]
    return re.findall(r"^\| `([a-z_]+)` \|", table, re.M)


def _site_commands(tmp_path: Path) -> dict[str, Any]:
    s = Site(tmp_path, 1883)
    return cloud_commands(s.book, lambda: s.status, desk=s.desk, tariffs=s.tariffs)


def test_the_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    for ref in _refs(DOC):
        _resolve(ref)  # raises KeyError when it does not
    for name, op in DOC["operations"].items():
        assert op["action"] in ("send", "receive"), name
    Draft7Validator.check_schema({"components": DOC["components"]})


def test_every_topic_command_and_event_of_the_page_is_a_channel(tmp_path: Path) -> None:
    addresses = _addresses()
    table = PAGE[PAGE.index("## Topic tree") : PAGE.index("## Retained topics")]
    for topic in re.findall(r"^\| `([^`]+)` \|", table, re.M):
        if topic.startswith("<prefix>"):
            assert "{prefix}/sensor/{node_id}/{object_id}/config" in addresses
            continue
        generic = "evsite/v1/{site_id}/" + re.sub(r"<([a-z_]+)>", r"{\1}", topic)
        if generic.endswith("/{kind}") or generic.endswith("/{name}"):
            continue  # one channel per kind / command, checked below
        assert generic in addresses, topic
    commands = _documented_commands()
    kinds = _documented_event_kinds()
    assert commands and kinds
    for name in commands:
        assert f"evsite/v1/{{site_id}}/cmd/{name}" in addresses, name
        assert f"cmd.{name}" in MESSAGES and f"reply.{name}" in MESSAGES, name
        assert DOC["operations"][name]["action"] == "receive"
    for kind in kinds:
        assert f"evsite/v1/{{site_id}}/events/{kind}" in addresses, kind
    # ... and they are what the site has: its commands, its event kinds.
    assert sorted(commands) == sorted(_site_commands(tmp_path))
    assert sorted(kinds) == sorted(payloads.EVENT_KINDS)
    channel_kinds = {a.rsplit("/", 1)[1] for a in addresses if "/events/" in a}
    assert channel_kinds == set(payloads.EVENT_KINDS)


def test_the_request_schemas_have_the_fields_the_site_takes(tmp_path: Path) -> None:
    for name, spec in _site_commands(tmp_path).items():
        schema = MESSAGES[f"cmd.{name}"]["payload"]
        if "$ref" in schema:
            schema = _resolve(schema["$ref"])
        documented = set(schema["properties"]) - set(RESERVED_KEYS)
        assert documented == set(spec.payload.model_fields), name
        assert schema["additionalProperties"] is False, name
        required = {f for f, info in spec.payload.model_fields.items() if info.is_required()}
        assert set(schema.get("required", [])) == required, name


def test_every_example_of_the_page_validates_against_its_message(tmp_path: Path) -> None:
    found = examples()
    assert len(found) >= 40
    covered: set[str] = set()
    specs = _site_commands(tmp_path)
    for name, body in found:
        payload = json.loads(body)  # every JSON block of the page is JSON
        assert name is not None, f"a JSON example without its schema comment: {body[:80]}"
        if name == "none":
            continue
        assert name in MESSAGES, name
        check(name, payload)
        covered.add(name)
        if name.startswith("cmd."):
            command = name.removeprefix("cmd.")
            if command == "tariff_set":
                tariff_from_payload(body)  # exact decimals, as the site reads it
            else:
                specs[command].payload.model_validate_json(body)
    assert covered == set(MESSAGES), sorted(set(MESSAGES) - covered)


def test_what_the_site_really_sends_validates(tmp_path: Path) -> None:
    s = Site(tmp_path, 1883)
    check("meta", json.loads(s.cloud.link._meta))
    check("status", json.loads(payloads.status_offline(boot_id=s.cloud.link.boot_id,
                                                       reason="stopped")))  # fmt: skip
    for item in discovery(s.site, prefix="homeassistant", version="0.1.0"):
        check("ha.discovery", json.loads(item.payload))
    table = CommandTable(s.cloud.link.topics, s.cloud.link._table.commands)

    async def send(name: str, arguments: dict[str, Any]) -> None:
        outcome = await table.handle(
            Request(
                topic=f"{PREFIX}/cmd/{name}",
                payload=json.dumps(arguments).encode(),
                response_topic=f"{PREFIX}/reply/backend",
            )
        )
        assert outcome.reply is not None
        check(f"reply.{name}", json.loads(outcome.reply.payload))

    async def session() -> None:
        s.tick(cp1=EvseState.B)
        await send("session_start", {"connector": "cp1", "id_tag": "app-1", "priority_tier": 1})
        await send("session_start", {"connector": "cp9"})
        s.tick(cp1=EvseState.C)
        await send("session_tier", {"connector": "cp1", "priority_tier": None})
        await send("session_stop", {"connector": "cp1"})
        await send("availability_set", {"connector": "cp2", "available": False})
        s.tick()
        await send("tariff_set", NEW_TARIFF)
        await send("tariff_set", {**NEW_TARIFF, "currency": "euro"})
        await send("tariff_clear", {})
        await send("limit_set", {"current_a": 10, "duration_s": 60})
        await send("limit_clear", {"all": True})
        window = {"starts_at": "2030-01-01T10:00:00+01:00", "ends_at": "2030-01-01T12:00:00+01:00"}
        await send("demand_response_set", {"id": "dr", "power_kw": 5, "floor_kw": 4.2, **window})
        await send("demand_response_clear", {"id": "dr"})
        await send("status_get", {})
        s.cloud.on_payment({"payment_id": "p", "status": "captured", "amount_cents": 5})

    asyncio.run(session())
    kinds = []
    for row in s.outbox.peek(CHANNEL, 1000, after_seq=0):
        event = json.loads(row.payload)
        check(f"event.{event['kind']}", event)
        kinds.append(event["kind"])
    assert {"session_started", "session_ended", "availability_changed", "tariff_changed",
            "limit_changed", "payment"} <= set(kinds)  # fmt: skip
    s.db.close()


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        ("cmd.session_start", {"connector": "cp1", "priority_tier": 12}),
        ("cmd.availability_set", {"connector": "cp1"}),
        ("event.payment", {"id": "x"}),
        ("reply.session_stop", {"command": "session_stop", "ok": True, "result": {}}),
    ],
)
def test_the_schemas_refuse_what_the_site_refuses(message: str, payload: Any) -> None:
    assert list(validator(message).iter_errors(payload))
