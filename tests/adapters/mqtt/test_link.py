"""The MQTT link in this process against a real mosquitto: telemetry, retained topics, events
from the outbox, commands (MQTT 5 and the 3.1.1 fallback), the outbox bound, TLS.

The link runs on an event loop here (as in `evsite run`), with a real SlotBook and outbox on a
state file in tmp_path; the status document it publishes is built by controller.app.status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.mqtt.link import CHANNEL, MqttLink
from controller.adapters.mqtt.settings import MqttSettings, TlsFiles
from controller.app.cloud import CloudLink, cloud_commands
from controller.app.slots import SlotBook
from controller.app.status import build_status
from controller.config import load_config_text
from controller.core.slots import SlotSource
from controller.store.db import Database
from controller.store.outbox import AlarmCode, Outbox, OutboxFull
from tests.adapters.mqtt.backend import CloudClient
from tests.adapters.mqtt.broker import Broker, TlsMaterial, free_port

SITE = "site-a"
PREFIX = f"evsite/v1/{SITE}"
SITE_YAML = """\
site: {id: site-a, timezone: Europe/Berlin}
grid: {rating_a: 32, worst_case_non_ev_a: 5}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 127.0.0.1, port: 1502},
     circuit: grid, phase_rotation: L1L2L3, max_current_a: 16, fallback_current_a: 6}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 127.0.0.1, port: 1503},
     circuit: grid, phase_rotation: L2L3L1, max_current_a: 16, fallback_current_a: 6}
mqtt: {host: 127.0.0.1, port: 1883}
"""


class Harness:
    """A link as `evsite run` wires it, minus the devices: SlotBook, outbox, status."""

    def __init__(self, tmp: Path, port: int, **settings: Any) -> None:
        config = load_config_text(SITE_YAML)
        assert config.mqtt is not None
        self.site = config.site
        defaults: dict[str, Any] = {
            "port": port,
            "keepalive_s": 5,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "telemetry_interval_s": 0.2,
        }
        self.settings = dataclasses.replace(config.mqtt, **{**defaults, **settings})
        self.db = Database.in_state_dir(tmp / "state")
        self.outbox = Outbox(self.db)
        self.book = SlotBook(self.db, self.site)
        now = datetime.now(UTC)
        self.status: dict[str, Any] = build_status(
            site=self.site,
            wall=now,
            now_s=0.0,
            started_s=0.0,
            allocation=None,
            meters={},
            evses={},
            written_a={},
            health={},
        )
        self.link = MqttLink(
            self.settings,
            site=self.site,
            outbox=self.outbox,
            status=lambda: self.status,
            commands=cloud_commands(self.book, lambda: self.status),
            version="test",
        )

    def close(self) -> None:
        self.db.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


def _events(cloud: CloudClient) -> list[dict[str, Any]]:
    return [m.json() for m in cloud.on("") if "/events/" in m.topic]


def test_birth_meta_state_and_telemetry_at_the_configured_rate(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    h = Harness(tmp_path, broker.port, telemetry_interval_s=0.2)
    cloud = cloud_factory(broker.port, f"{PREFIX}/#")

    async def scenario() -> None:
        await h.link.start()
        await until(lambda: len(cloud.on("/telemetry")) >= 2, what="telemetry")
        n0, t0 = len(cloud.on("/telemetry")), time.monotonic()
        await asyncio.sleep(3.0)
        rate = (len(cloud.on("/telemetry")) - n0) / (time.monotonic() - t0)
        assert 4.0 <= rate <= 5.5, rate  # 0.2 s: 5 a second
        document = cloud.on("/telemetry")[-1].json()
        assert set(document) == {"ts", "mode", "site", "connectors"}
        assert set(document["connectors"]) == {"cp1", "cp2"}
        assert set(document["connectors"]["cp1"]) == {
            "state", "current_a", "power_w", "energy_wh", "limit_a", "bound",
        }  # fmt: skip
        assert len(document["site"]["allocated_a"]) == 3

        # A connector's state changes: one retained message for it, none for the other.
        before = len(cloud.on("/state/cp2"))
        h.status = {
            **h.status,
            "connectors": [
                {**c, "state": "charging"} if c["id"] == "cp1" else c
                for c in h.status["connectors"]
            ],
        }
        await until(lambda: any(m.json()["state"] == "charging" for m in cloud.on("/state/cp1")))
        await asyncio.sleep(0.5)
        assert len(cloud.on("/state/cp2")) == before
        await h.link.close()

    asyncio.run(scenario())
    birth = cloud.on("/status")[0].json()
    assert birth["state"] == "online" and birth["version"] == "test"
    meta = cloud.on("/meta")[0].json()
    assert [c["id"] for c in meta["connectors"]] == ["cp1", "cp2"]
    assert meta["connectors"][1]["rotation"] == "L2L3L1"
    assert meta["circuits"][0] == {
        "id": "grid", "parent": None, "rating_a": 32.0, "margin_a": 0.0, "metered": False,
    }  # fmt: skip
    assert "limit_set" in meta["commands"] and "fault_raised" in meta["events"]
    assert cloud.on("/status")[-1].json() == {
        "state": "offline", "boot_id": birth["boot_id"], "reason": "stopped",
    }  # fmt: skip
    # A client that comes later finds the retained topics: the goodbye, meta, states.
    late = cloud_factory(broker.port, f"{PREFIX}/#")
    late.wait_for("/status", lambda m: m.retain and m.json()["state"] == "offline")
    late.wait_for("/meta", lambda m: m.retain)
    assert late.wait_for("/state/cp1", lambda m: m.retain).json()["state"] == "charging"
    assert not late.on("/telemetry")  # never retained
    h.close()


def test_events_are_sent_in_order_and_removed_only_when_acknowledged(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    h = Harness(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/events/#")

    async def scenario() -> None:
        # Queued while the link is not even started: they wait on disk.
        for i in range(30):
            h.link.emit("limit_changed", {"n": i})
        assert h.outbox.count(CHANNEL) == 30
        await h.link.start()
        await until(lambda: len(_events(cloud)) >= 30, what="30 events")
        await until(lambda: h.outbox.count(CHANNEL) == 0, what="outbox drained")
        await h.link.close()

    asyncio.run(scenario())
    events = _events(cloud)
    assert [e["data"]["n"] for e in events] == list(range(30))
    first = events[0]
    assert set(first) == {"id", "ts", "kind", "site", "data"}
    assert first["kind"] == "limit_changed" and first["site"] == SITE
    assert len({e["id"] for e in events}) == 30
    h.close()


def test_outbox_bound_raises_the_alarm_and_drops_nothing(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    broker.stop()  # the backend is away while events pile up
    h = Harness(tmp_path, broker.port, outbox_max_events=50)
    cloud: CloudClient | None = None

    async def scenario() -> None:
        nonlocal cloud
        await h.link.start()
        for i in range(44):
            h.link.emit("test", {"n": i})
        assert h.outbox.alarms() == ()
        h.link.emit("test", {"n": 44})  # 45 of 50: the alarm is up before the bound refuses
        assert [a.code for a in h.outbox.alarms()] == [AlarmCode.OUTBOX_FULL]
        h.link.emit_many("test", [{"n": n} for n in range(45, 50)])
        with pytest.raises(OutboxFull):
            h.link.emit("test", {"n": 50})
        assert h.outbox.count(CHANNEL) == 50
        assert h.link.status_document()["state"] in ("connecting", "disconnected")

        await asyncio.to_thread(broker.start)
        cloud = await asyncio.to_thread(cloud_factory, broker.port, f"{PREFIX}/events/#")
        await until(lambda: h.outbox.count(CHANNEL) == 0, 15.0, "the outbox drained")
        assert h.outbox.alarms() == ()
        await until(lambda: len(_events(cloud)) == 50, what="50 events")
        await h.link.close()

    asyncio.run(scenario())
    assert cloud is not None
    assert [e["data"]["n"] for e in _events(cloud)] == list(range(50))
    h.close()


def _command(
    cloud: CloudClient, name: str, payload: dict[str, Any] | bytes, corr: str, **kw: Any
) -> dict[str, Any]:
    cloud.request(
        f"{PREFIX}/cmd/{name}",
        payload,
        response_topic=f"{PREFIX}/reply/cloud-0",
        correlation=corr.encode(),
        **kw,
    )
    return cloud.reply(corr.encode())


def test_commands_round_trip_over_mqtt5_and_bad_ones_change_nothing(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    h = Harness(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/reply/#", f"{PREFIX}/events/#")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    async def scenario() -> None:
        await h.link.start()
        await until(lambda: h.link.status_document()["state"] == "connected")

        def exchange() -> None:
            ok = _command(cloud, "limit_set", {"current_a": 20, "note": "peak"}, "c1")
            assert ok["ok"] is True and ok["command"] == "limit_set"
            assert ok["result"]["slot"]["source"] == "cloud"
            assert ok["result"]["slot"]["current_a"] == 20.0
            # Above the rating: accepted, clamped by the engine, and said so.
            high = _command(cloud, "limit_set", {"id": "hi", "power_kw": 50}, "c2")
            assert "the ratings always win" in high["result"]["notes"][0]

            bad: dict[str, tuple[dict[str, Any], str]] = {
                "c3": ({"current_a": "20"}, "current_a"),
                "c4": ({"current_a": 20, "colour": "red"}, "colour"),
                "c5": ({"current_a": 20, "ends_at": "2030-01-01T10:00"}, "ends_at"),
                "c6": ({"current_a": 10, "power_kw": 5}, "power_kw"),
                "c7": ({"current_a": 10, "scope": "circuit:nowhere"}, "scope"),
                "c8": ({"current_a": -1}, "current_a"),
                "c9": ({"current_a": 10, "ends_at": "2001-01-01T00:00:00+00:00"}, "ends_at"),
            }
            for corr, (payload, field) in bad.items():
                answer = _command(cloud, "limit_set", payload, corr)
                assert answer["ok"] is False and answer["field"] == field, answer
                assert field in answer["error"]
            not_json = _command(cloud, "limit_set", b"{current_a: 3", "c10")
            assert not_json["ok"] is False and "not JSON" in not_json["error"]
            unknown = _command(cloud, "limit_raise", {}, "c11")
            assert "unknown command 'limit_raise'" in unknown["error"]
            retained = _command(cloud, "limit_set", {"current_a": 7}, "c12", retain=True)
            assert "retained" in retained["error"]

            dr = {
                "id": "dr-1",
                "power_kw": 11,
                "floor_kw": 4.2,
                "starts_at": datetime.now(UTC).isoformat(),
                "ends_at": later,
            }
            dr_ok = _command(cloud, "demand_response_set", dr, "c13")
            assert dr_ok["ok"] and dr_ok["result"]["slot"]["floor_w"] == 4200.0
            no_end = _command(
                cloud, "demand_response_set", {k: v for k, v in dr.items() if k != "ends_at"}, "c14"
            )
            assert no_end["field"] == "ends_at" and "missing" in no_end["error"]
            gone = _command(cloud, "limit_clear", {"id": "hi"}, "c15")
            assert [s["id"] for s in gone["result"]["cleared"]] == ["hi"]
            missing = _command(cloud, "limit_clear", {"id": "hi"}, "c16")
            assert missing["field"] == "id" and "no cloud limit 'hi'" in missing["error"]
            status = _command(cloud, "status_get", {}, "c17")
            assert status["ok"] and status["result"]["status"]["site"]["id"] == SITE

        await asyncio.to_thread(exchange)
        await h.link.close()

    asyncio.run(scenario())
    slots = {(s.source, s.id): s for s in h.book.slots()}
    # Exactly what was accepted, nothing of the refused ones (current 7, 10, -1, "20").
    assert set(slots) == {(SlotSource.CLOUD, "site"), (SlotSource.DEMAND_RESPONSE, "dr-1")}
    assert slots[(SlotSource.CLOUD, "site")].current_a == 20.0
    assert slots[(SlotSource.DEMAND_RESPONSE, "dr-1")].floor_w == 4200.0
    # ... and they are on disk: a new book over the same file has them.
    assert {(s.source, s.id) for s in SlotBook(h.db, h.site).slots()} == set(slots)
    h.close()


def test_commands_over_mqtt311_carry_reply_to_and_correlation_id(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    h = Harness(tmp_path, broker.port, protocol="3.1.1")
    cloud = cloud_factory(broker.port, f"{PREFIX}/reply/#", protocol="3.1.1")
    reply_to = f"{PREFIX}/reply/backend-7"

    async def scenario() -> None:
        await h.link.start()
        await until(lambda: h.link.status_document()["state"] == "connected")

        def exchange() -> None:
            def send(payload: dict[str, Any]) -> None:
                import json

                cloud.client.publish(f"{PREFIX}/cmd/limit_set", json.dumps(payload), qos=1)

            send({"power_kw": 11, "reply_to": reply_to, "correlation_id": "r-1"})
            ok = cloud.wait_for(
                "/reply/backend-7", lambda m: m.json().get("correlation_id") == "r-1"
            )
            assert ok.json()["ok"] is True
            assert ok.json()["result"]["slot"]["power_w"] == 11000.0
            send({"power_kw": "11", "reply_to": reply_to, "correlation_id": "r-2"})
            bad = cloud.wait_for(
                "/reply/backend-7", lambda m: m.json().get("correlation_id") == "r-2"
            )
            assert bad.json()["field"] == "power_kw"
            # A reply_to outside the site's reply/ tree: never written to, nothing applied.
            send({"current_a": 6, "reply_to": "evsite/v1/other-site/reply/x"})
            time.sleep(0.5)
            assert len(cloud.on("/reply/backend-7")) == 2

        await asyncio.to_thread(exchange)
        await h.link.close()

    asyncio.run(scenario())
    (slot,) = h.book.slots()
    assert slot.power_w == 11000.0 and slot.current_a is None
    h.close()


def test_tls_with_a_test_ca_and_a_client_certificate(
    tmp_path: Path, tls_broker: Broker, tls_material: TlsMaterial,
    cloud_factory: Callable[..., CloudClient],
) -> None:  # fmt: skip
    t = tls_material
    good = TlsFiles(ca_file=t.ca_file, cert_file=t.client_cert, key_file=t.client_key)
    h = Harness(tmp_path / "good", tls_broker.port, tls=good)
    wrong_ca = dataclasses.replace(good, ca_file=t.other_ca_file)
    impostor = Harness(tmp_path / "bad", tls_broker.port, tls=wrong_ca, client_id="impostor")
    cloud = cloud_factory(tls_broker.port, f"{PREFIX}/events/#", tls=t)

    async def scenario() -> None:
        await h.link.start()
        await impostor.link.start()
        h.link.emit("config_changed", {"sha256": "abc"})
        await until(lambda: h.outbox.count(CHANNEL) == 0, what="event over TLS")
        await until(lambda: impostor.link.last_error is not None, what="the impostor's error")
        await asyncio.sleep(0.5)
        await h.link.close()
        await impostor.link.close()

    asyncio.run(scenario())
    assert [e["kind"] for e in _events(cloud)] == ["config_changed"]
    # Server verification is always on: a broker certificate from another CA is refused.
    assert impostor.link.connects == 0
    assert "CERTIFICATE_VERIFY_FAILED" in (impostor.link.last_error or "")
    h.close()
    impostor.close()


def test_the_cloud_link_turns_limit_changes_into_events_and_shows_alarms(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    config = load_config_text(SITE_YAML)
    assert config.mqtt is not None
    settings: MqttSettings = dataclasses.replace(
        config.mqtt, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    db = Database.in_state_dir(tmp_path)
    outbox = Outbox(db)
    book = SlotBook(db, config.site)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(SITE_YAML)
    status: dict[str, Any] = {"mode": "normal", "notes": []}
    cloud_link = CloudLink(
        settings, site=config.site, db=db, outbox=outbox, book=book,
        status=lambda: status, config_source=site_file,
    )  # fmt: skip
    cloud = cloud_factory(broker.port, f"{PREFIX}/events/#")

    async def scenario() -> None:
        await cloud_link.start()
        cloud_link.on_tick(status)
        book.set(source=SlotSource.OVERRIDE, id="site", current_a=10.0)
        book.clear(SlotSource.OVERRIDE, "site")
        status["mode"] = "fallback"
        cloud_link.on_tick(status)
        await until(lambda: len(_events(cloud)) >= 5, what="five events")
        cloud_link.on_tick(status)  # the next tick shows the link's state
        assert status["mqtt"]["state"] == "connected"
        assert status["outbox"] == {"alarms": []}
        await cloud_link.close()

    asyncio.run(scenario())
    kinds = [(e["kind"], e["data"].get("action") or e["data"].get("new")) for e in _events(cloud)]
    assert kinds == [
        ("config_changed", None),
        ("mode_changed", "normal"),
        ("limit_changed", "set"),
        ("limit_changed", "cleared"),
        ("mode_changed", "fallback"),
    ]
    # The same file at the next start: no config_changed again.
    assert db.marker("config_sha256") == _events(cloud)[0]["data"]["sha256"]
    db.close()


def test_a_broker_that_is_not_there_costs_the_event_loop_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path, free_port(), reconnect_min_s=0.05, reconnect_max_s=0.2)

    async def scenario() -> None:
        await h.link.start()
        lags = []
        for _ in range(40):
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)
        assert max(lags) < 0.05, max(lags)
        assert h.link.status_document()["state"] == "disconnected"
        assert "Connection refused" in (h.link.last_error or "")
        await h.link.close()

    asyncio.run(scenario())
    h.close()
