"""The sans-IO parts of the MQTT link: topics, payloads, the command table, credentials."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.mqtt import payloads
from controller.adapters.mqtt.commands import (
    CommandRejected,
    CommandSpec,
    CommandTable,
    LimitSet,
    NoArguments,
    Outcome,
    Request,
)
from controller.adapters.mqtt.link import CredentialsError, load_credentials
from controller.adapters.mqtt.topics import Topics

T = Topics("site-1")


def test_topics_stay_inside_the_site_prefix() -> None:
    assert T.status == "evsite/v1/site-1/status"
    assert T.event("fault_raised") == "evsite/v1/site-1/events/fault_raised"
    assert T.state("cp1") == "evsite/v1/site-1/state/cp1"
    assert T.commands == "evsite/v1/site-1/cmd/+"
    assert T.command_name("evsite/v1/site-1/cmd/limit_set") == "limit_set"
    assert T.command_name("evsite/v1/site-2/cmd/limit_set") is None
    assert T.is_reply_topic("evsite/v1/site-1/reply/backend-7")
    assert not T.is_reply_topic("evsite/v1/site-1/reply/a/b")
    assert not T.is_reply_topic("evsite/v1/site-2/reply/x")
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError):
            Topics(bad)
        with pytest.raises(ValueError):
            T.event(bad)


def test_the_envelope_and_an_empty_status() -> None:
    ts = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    doc = json.loads(
        payloads.envelope(event_id="e1", ts=ts, kind="mode_changed", site_id="s", data={"a": 1})
    )
    assert doc == {
        "id": "e1", "ts": "2026-11-29T12:00:00.000+00:00", "kind": "mode_changed",
        "site": "s", "data": {"a": 1},
    }  # fmt: skip
    with pytest.raises(ValueError):
        payloads.envelope(event_id="e", ts=ts, kind="Bad Kind", site_id="s", data=None)
    assert payloads.telemetry({}, ts) is None  # before the first tick: nothing to send


def _table(**commands: CommandSpec[Any]) -> CommandTable:
    return CommandTable(T, commands)


def _handle(table: CommandTable, request: Request) -> Outcome:
    return asyncio.run(table.handle(request))


def test_a_refused_command_never_reaches_its_handler() -> None:
    calls: list[LimitSet] = []

    def run(req: LimitSet) -> dict[str, Any]:
        calls.append(req)
        return {"done": True}

    table = _table(limit_set=CommandSpec(LimitSet, run))
    topic = "evsite/v1/site-1/cmd/limit_set"
    for payload, field in (
        (b'{"current_a": "6"}', "current_a"),
        (b'{"current_a": NaN}', "current_a"),
        (b'{"current_a": 6, "extra": 1}', "extra"),
        (b'{"current_a": 6, "starts_at": "12:00"}', "starts_at"),
    ):
        out = _handle(
            table, Request(topic=topic, payload=payload, response_topic="r", correlation_data=b"c")
        )
        assert not out.ok and out.field == field, (payload, out)
        assert out.reply is not None and out.reply.correlation_data == b"c"
        assert json.loads(out.reply.payload)["field"] == field
    assert calls == []
    ok = _handle(table, Request(topic=topic, payload=b'{"current_a": 6}', response_topic="r"))
    assert ok.ok and len(calls) == 1
    assert json.loads(ok.reply.payload if ok.reply else b"") == {
        "command": "limit_set", "ok": True, "result": {"done": True},
    }  # fmt: skip


def test_the_311_fallback_routes_and_checks_reply_to() -> None:
    async def status(_: NoArguments) -> dict[str, Any]:  # a handler may be a coroutine
        return {"status": "fine"}

    table = _table(status_get=CommandSpec(NoArguments, status))
    topic = "evsite/v1/site-1/cmd/status_get"
    body = {"reply_to": "evsite/v1/site-1/reply/b", "correlation_id": "x-1"}
    out = _handle(table, Request(topic=topic, payload=json.dumps(body).encode()))
    assert out.reply is not None and out.reply.topic == "evsite/v1/site-1/reply/b"
    assert json.loads(out.reply.payload)["correlation_id"] == "x-1"
    assert json.loads(out.reply.payload)["result"] == {"status": "fine"}
    outside = {"reply_to": "evsite/v1/other/reply/b"}
    out = _handle(table, Request(topic=topic, payload=json.dumps(outside).encode()))
    assert not out.ok and out.field == "reply_to" and out.reply is None
    nobody = _handle(table, Request(topic=topic, payload=b"{}"))
    assert nobody.ok and nobody.reply is None
    retained = _handle(
        table, Request(topic=topic, payload=b"{}", retained=True, response_topic="r")
    )
    assert not retained.ok and "retained" in (retained.error or "")


def test_handler_refusals_keep_their_field() -> None:
    def run(_: NoArguments) -> dict[str, Any]:
        raise CommandRejected("scope: no circuit 'x'", field="scope")

    out = _handle(
        _table(c=CommandSpec(NoArguments, run)),
        Request(topic="evsite/v1/site-1/cmd/c", payload=b"", response_topic="r"),
    )
    assert (out.ok, out.field, out.error) == (False, "scope", "scope: no circuit 'x'")


def test_credentials_errors_never_show_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("username: site-1\npassword: hunter2\n")
    creds = load_credentials(path)
    assert (creds.username, creds.password) == ("site-1", "hunter2")
    assert "hunter2" not in repr(creds)
    for text in ("username: u\npassword: hunter2\ncolour: x\n", "password: hunter2\n", "[hunter2"):
        path.write_text(text)
        with pytest.raises(CredentialsError) as err:
            load_credentials(path)
        assert "hunter2" not in str(err.value)
    with pytest.raises(CredentialsError, match="cannot read"):
        load_credentials(tmp_path / "missing.yaml")
