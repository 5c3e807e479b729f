"""The cloud link as `evsite run` wires it (SlotBook, SessionDesk, TariffBook, outbox) against a
real mosquitto: session, availability and tariff commands, their events, the payment event, and
the outbox gate that refuses paid sessions while an event could not be queued.

The EVSEs are left out: the desk is fed readings by hand, as the control loop would each tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.adapters.mqtt.commands import CommandTable, Request
from controller.adapters.mqtt.link import CHANNEL
from controller.app.cloud import CloudLink, outbox_gate
from controller.app.sessions import SessionDesk
from controller.app.slots import SlotBook
from controller.app.tariffs import TariffBook
from controller.config import load_config_text
from controller.core.model import EvseReading, EvseState
from controller.core.sessions import AuthMethod, SessionPhase, SessionRefused, SessionSettings
from controller.store.db import Database
from controller.store.outbox import AlarmCode, Outbox
from controller.store.sessions import SessionStore
from tests.adapters.mqtt.backend import CloudClient
from tests.adapters.mqtt.broker import Broker

SITE = "site-b"
PREFIX = f"evsite/v1/{SITE}"
TZ = ZoneInfo("Europe/Berlin")
SITE_YAML = """\
site: {id: site-b, timezone: Europe/Berlin}
grid: {rating_a: 32, worst_case_non_ev_a: 5}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 127.0.0.1, port: 1502},
     circuit: grid, phase_rotation: L1L2L3, max_current_a: 16, fallback_current_a: 6}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 127.0.0.1, port: 1503},
     circuit: grid, phase_rotation: L2L3L1, max_current_a: 16, fallback_current_a: 6}
tariff:
  id: standard
  currency: EUR
  vat_rate_pct: 19
  price_per_kwh: 0.39
  preauth_cents: 3000
  preauth_cap_cents: 5000
mqtt: {host: 127.0.0.1, port: 1883}
"""
NEW_TARIFF = {
    "id": "winter-2026",
    "name": "Winter",
    "currency": "EUR",
    "vat_rate_pct": 19,
    "price_per_kwh": 0.45,
    "time_of_use": [
        {"name": "night", "days": "daily", "start": "22:00", "end": "06:00", "price_per_kwh": 0.3}
    ],
    "session_fee": 0.5,
}


class Site:
    """A site without devices: the books on a state file, the desk, the cloud link."""

    def __init__(self, tmp: Path, port: int, yaml_text: str = SITE_YAML, **settings: Any) -> None:
        config = load_config_text(yaml_text)
        assert config.mqtt is not None
        self.config = config
        self.site = config.site
        self.settings = dataclasses.replace(
            config.mqtt,
            **{"port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **settings},
        )
        self.db = Database.in_state_dir(tmp / "state")
        self.outbox = Outbox(self.db)
        self.book = SlotBook(self.db, self.site)
        self.now_s = 100.0
        self.desk = SessionDesk(
            site=self.site,
            store=SessionStore(self.db),
            settings=SessionSettings(free_vend=False),
            clock=lambda: self.now_s,
            wall_clock=lambda: datetime.now(TZ),
        )
        self.desk.restore(clean_shutdown=True)
        self.desk.gates.append(outbox_gate(self.outbox))
        self.tariffs = TariffBook(self.db, config.tariff)
        self.status: dict[str, Any] = {"mode": "normal", "notes": []}
        self.cloud = CloudLink(
            self.settings, site=self.site, db=self.db, outbox=self.outbox, book=self.book,
            status=lambda: self.status, desk=self.desk, tariffs=self.tariffs,
        )  # fmt: skip
        self.energy_wh = 1000.0

    def tick(self, **states: EvseState) -> None:
        """One control tick: readings to the desk, then the cloud link's look at the status."""
        self.now_s += 1.0
        self.energy_wh += 5.0
        readings = {
            cid: EvseReading(at_s=self.now_s, state=states.get(cid, EvseState.A),
                             energy_wh=self.energy_wh)
            for cid in ("cp1", "cp2")
        }  # fmt: skip
        self.desk.observe(readings, self.now_s, datetime.now(TZ))
        self.cloud.on_tick(self.status)


def events(cloud: CloudClient, kind: str) -> list[dict[str, Any]]:
    return [m.json() for m in cloud.on(f"/events/{kind}")]


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


def command(cloud: CloudClient, name: str, payload: dict[str, Any] | bytes, corr: str) -> Any:
    cloud.request(
        f"{PREFIX}/cmd/{name}", payload, response_topic=f"{PREFIX}/reply/backend",
        correlation=corr.encode(),
    )  # fmt: skip
    return cloud.reply(corr.encode())


def test_sessions_and_availability_from_the_cloud_and_their_events(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    s = Site(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/reply/#", f"{PREFIX}/events/#")

    async def scenario() -> None:
        await s.cloud.start()
        await until(lambda: s.cloud.link.status_document()["state"] == "connected")
        s.tick(cp1=EvseState.B)  # a car waits at cp1 (no free vend)
        assert s.desk.record("cp1").phase is SessionPhase.PENDING  # type: ignore[union-attr]

        # Refused before anything happens: each names its field.
        bad: dict[str, tuple[dict[str, Any], str]] = {
            "b1": ({"connector": "cp9"}, "connector"),
            "b2": ({"connector": "cp1", "priority_tier": "1"}, "priority_tier"),
            "b3": ({"connector": "cp1", "priority_tier": 10}, "priority_tier"),
            "b4": ({"connector": "cp1", "id_tag": "x" * 21}, "id_tag"),
            "b5": ({"connector": "cp1", "colour": "red"}, "colour"),
            "b6": ({}, "connector"),
        }
        for corr, (payload, field) in bad.items():
            answer = await asyncio.to_thread(command, cloud, "session_start", payload, corr)
            assert answer["ok"] is False and answer["field"] == field, answer
        assert s.desk.record("cp1").phase is SessionPhase.PENDING  # type: ignore[union-attr]

        started = await asyncio.to_thread(
            command, cloud, "session_start",
            {"connector": "cp1", "id_tag": "app-42", "priority_tier": 1}, "s1",
        )  # fmt: skip
        assert started["ok"] is True, started
        assert started["result"]["session"]["phase"] == "active"
        assert started["result"]["session"]["method"] == "remote"
        s.tick(cp1=EvseState.C)
        s.tick(cp1=EvseState.C)

        tier = await asyncio.to_thread(
            command, cloud, "session_tier", {"connector": "cp1", "priority_tier": 3}, "t1"
        )
        assert tier["ok"] and tier["result"]["session"]["priority_tier"] == 3
        no_session = await asyncio.to_thread(
            command, cloud, "session_tier", {"connector": "cp2", "priority_tier": 3}, "t2"
        )
        assert no_session["ok"] is False and no_session["field"] == "connector"
        missing_tier = await asyncio.to_thread(
            command, cloud, "session_tier", {"connector": "cp1"}, "t3"
        )
        assert missing_tier["field"] == "priority_tier"
        assert s.desk.record("cp1").priority_tier == 3  # type: ignore[union-attr]

        stopped = await asyncio.to_thread(
            command, cloud, "session_stop", {"connector": "cp1"}, "p1"
        )
        assert stopped["ok"] and stopped["result"]["session"]["stop_reason"] == "Remote"
        again = await asyncio.to_thread(command, cloud, "session_stop", {"connector": "cp1"}, "p2")
        assert again["ok"] is False and again["field"] == "connector"

        # Availability: from the cloud, and from the technician's socket ("cli").
        off = await asyncio.to_thread(
            command, cloud, "availability_set", {"connector": "cp2", "available": False}, "a1"
        )
        assert off["result"] == {"connector": "cp2", "available": False, "result": "accepted"}
        not_bool = await asyncio.to_thread(
            command, cloud, "availability_set", {"connector": "cp1", "available": "no"}, "a2"
        )
        assert not_bool["field"] == "available" and s.desk.available("cp1")
        s.tick()
        s.desk.set_availability("cp2", True, by="cli")
        s.tick()
        await until(lambda: len(events(cloud, "availability_changed")) == 2, what="2 changes")
        await until(lambda: len(events(cloud, "session_ended")) == 1, what="the end")
        await s.cloud.close()

    asyncio.run(scenario())
    (start,) = events(cloud, "session_started")
    (end,) = events(cloud, "session_ended")
    assert start["data"]["connector"] == "cp1" and start["data"]["method"] == "remote"
    assert start["data"]["id_tag"] == "app-42" and start["data"]["started_at"]
    assert end["data"]["id"] == start["data"]["id"]
    assert end["data"]["stop_reason"] == "Remote" and end["data"]["stopped_by"] == "mqtt"
    assert end["data"]["energy_wh"] == 10.0  # two ticks of 5 Wh after the start
    assert end["data"]["priority_tier"] == 3 and end["data"]["ended_at"]
    changes = [e["data"] for e in events(cloud, "availability_changed")]
    assert changes == [
        {"connector": "cp2", "available": False, "by": "mqtt"},
        {"connector": "cp2", "available": True, "by": "cli"},
    ]
    # What the desk recorded is on disk: who stopped it, the availability and its source.
    stored = SessionStore(s.db)
    assert stored.get(start["data"]["id"]).stopped_by == "mqtt"  # type: ignore[union-attr]
    assert stored.availability()["cp2"] == (True, "cli")
    s.db.close()


def test_tariff_update_is_checked_stored_shown_in_meta_and_survives_a_restart(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    s = Site(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/#")

    async def scenario() -> None:
        await s.cloud.start()
        await until(lambda: bool(cloud.on("/meta")), what="meta")
        first = cloud.on("/meta")[0].json()["tariff"]
        assert first["tariff_id"] == "standard" and first["price_per_kwh"] == "0.39"
        assert first["source"] == "config"
        bad = {
            "x1": ({**NEW_TARIFF, "currency": "EURO"}, "currency"),
            "x2": ({**NEW_TARIFF, "price_per_kwh": 0.45001}, "price_per_kwh"),
            "x3": ({k: v for k, v in NEW_TARIFF.items() if k != "vat_rate_pct"}, "vat_rate_pct"),
            "x4": ({**NEW_TARIFF, "colour": "red"}, "colour"),
            "x5": (
                {**NEW_TARIFF, "time_of_use": [{**NEW_TARIFF["time_of_use"][0],  # type: ignore[index]
                                                "price_per_kwh": -1}]},
                "time_of_use[0].price_per_kwh",
            ),
        }  # fmt: skip
        for corr, (payload, field) in bad.items():
            answer = await asyncio.to_thread(command, cloud, "tariff_set", payload, corr)
            assert answer["ok"] is False and answer["field"] == field, answer
            assert answer["error"].startswith(field), answer
        assert s.tariffs.current() == s.config.tariff  # nothing applied
        # Exact decimals: 0.45 is 0.45, not the nearest binary float.
        ok = await asyncio.to_thread(
            command, cloud, "tariff_set", json.dumps(NEW_TARIFF).encode(), "ok"
        )
        assert ok["ok"] is True, ok
        assert ok["result"]["tariff"]["price_per_kwh"] == "0.45"
        assert ok["result"]["tariff"]["source"] == "cloud"
        current = s.tariffs.current()
        assert current is not None and current.price_per_kwh == Decimal("0.45")
        assert current.preauth_cap_cents == 5000  # the site's cap stays
        await until(lambda: len(cloud.on("/meta")) >= 2, what="meta again")
        await until(lambda: bool(cloud.on("/events/tariff_changed")), what="the event")
        await s.cloud.close()

    asyncio.run(scenario())
    meta = cloud.on("/meta")[-1]
    assert meta.json()["tariff"]["tariff_id"] == "winter-2026"
    assert "night" in meta.json()["tariff"]["text"]
    (change,) = events(cloud, "tariff_changed")
    assert change["data"]["source"] == "cloud" and change["data"]["by"] == "mqtt"
    assert change["data"]["previous_tariff_id"] == "standard"
    assert change["data"]["tariff"]["session_fee"] == "0.50"
    late = cloud_factory(broker.port, f"{PREFIX}/meta")
    retained = late.wait_for("/meta", lambda m: m.retain).json()
    assert retained["tariff"]["tariff_id"] == "winter-2026"
    # A restart with the same site file: the cloud's tariff is still in force.
    again = TariffBook(s.db, s.config.tariff)
    assert again.current() == s.tariffs.current() and again.source == "cloud"
    # An installer edits the site file's tariff: the site file's wins from then on.
    edited = load_config_text(SITE_YAML.replace("0.39", "0.41")).tariff
    assert edited is not None
    newer = TariffBook(s.db, edited)
    assert newer.current() == edited and newer.source == "config"
    assert TariffBook(s.db, s.config.tariff).source == "config"  # dropped for good
    s.db.close()


def test_tariff_clear_goes_back_to_the_site_file(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    s = Site(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/reply/#")
    s.tariffs.update(NEW_TARIFF, by="mqtt")

    async def scenario() -> None:
        await s.cloud.start()
        await until(lambda: s.cloud.link.status_document()["state"] == "connected")
        answer = await asyncio.to_thread(command, cloud, "tariff_clear", {}, "c")
        assert answer["ok"] and answer["result"]["tariff"]["tariff_id"] == "standard"
        await s.cloud.close()

    asyncio.run(scenario())
    assert TariffBook(s.db, s.config.tariff).source == "config"
    s.db.close()


def test_paid_sessions_are_refused_while_the_outbox_alarm_is_up(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    broker.stop()  # the backend is away: events pile up
    s = Site(tmp_path, broker.port, outbox_max_events=20)
    cloud: CloudClient | None = None

    async def scenario() -> None:
        nonlocal cloud
        await s.cloud.start()
        s.tick(cp1=EvseState.B, cp2=EvseState.B)
        s.cloud.link.emit_many("test", [{"n": n} for n in range(18)])  # 90 % of 20
        assert [a.code for a in s.outbox.alarms()] == [AlarmCode.OUTBOX_FULL]
        for method in (AuthMethod.CARD, AuthMethod.REMOTE):
            with pytest.raises(SessionRefused, match="outbox_full"):
                s.desk.start("cp1", method=method, by="test")
        # The app start as the cloud sends it (handled as the link would, the broker being
        # away): refused with the reason, no field at fault.
        table = CommandTable(s.cloud.link.topics, s.cloud.link._table.commands)
        outcome = await table.handle(
            Request(topic=f"{PREFIX}/cmd/session_start", payload=b'{"connector": "cp1"}',
                    response_topic=f"{PREFIX}/reply/backend")
        )  # fmt: skip
        assert outcome.reply is not None
        answer = json.loads(outcome.reply.payload)
        assert answer["ok"] is False and "field" not in answer
        assert answer["error"].startswith("no paid sessions while the event outbox")
        assert s.desk.record("cp1").phase is SessionPhase.PENDING  # type: ignore[union-attr]
        # Not paid: a technician's start goes on; its events still have room below the bound.
        s.desk.start("cp2", method=AuthMethod.TECHNICIAN, by="cli")
        assert s.desk.record("cp2").phase is SessionPhase.ACTIVE  # type: ignore[union-attr]
        # The alarm falls once the backend took the events: paid sessions again.
        await asyncio.to_thread(broker.start)
        cloud = await asyncio.to_thread(cloud_factory, broker.port, f"{PREFIX}/events/#")
        await until(lambda: s.outbox.count(CHANNEL) == 0, 15.0, "the outbox drained")
        assert s.outbox.alarms() == ()
        s.desk.start("cp1", method=AuthMethod.CARD, by="terminal")
        assert s.desk.record("cp1").phase is SessionPhase.ACTIVE  # type: ignore[union-attr]
        seen = cloud
        await until(lambda: len(events(seen, "session_started")) == 2, what="two starts")
        await s.cloud.close()

    asyncio.run(scenario())
    s.db.close()


def test_payment_events_go_out_exact_and_never_with_card_data(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    s = Site(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/events/#")
    at = datetime(2026, 11, 29, 18, 5, tzinfo=UTC)

    async def scenario() -> None:
        event_id = s.cloud.on_payment(
            {"payment_id": "p-1", "session_id": "s-1", "connector": "cp1", "status": "captured",
             "amount_cents": 1234, "currency": "EUR", "price_per_kwh": Decimal("0.39"), "at": at}
        )  # fmt: skip
        assert event_id is not None
        with pytest.raises(ValueError, match="card data: pan"):
            s.cloud.on_payment({"payment_id": "p-2", "status": "captured", "pan": "4111..."})
        assert s.outbox.count(CHANNEL) == 1  # the refused one was never queued
        await s.cloud.start()
        await until(lambda: bool(events(cloud, "payment")), what="the payment event")
        await s.cloud.close()
        (payment,) = events(cloud, "payment")
        assert payment["id"] == event_id

    asyncio.run(scenario())
    (payment,) = events(cloud, "payment")
    assert payment["data"] == {
        "payment_id": "p-1", "session_id": "s-1", "connector": "cp1", "status": "captured",
        "amount_cents": 1234, "currency": "EUR", "price_per_kwh": "0.39",
        "at": "2026-11-29T18:05:00+00:00",
    }  # fmt: skip
    assert "4111" not in json.dumps(cloud.on(""), default=str)
    s.db.close()


def test_a_payment_desk_step_is_published_as_one_payment_event_with_its_receipt(
    tmp_path: Path, broker: Broker, cloud_factory: Callable[..., CloudClient]
) -> None:
    """What run.py wires: PaymentDesk.listeners -> CloudLink.on_payment_step."""
    s = Site(tmp_path, broker.port)
    cloud = cloud_factory(broker.port, f"{PREFIX}/events/#")
    step = {
        "event": "payment_captured",
        "payment": {
            "id": "pay-7", "terminal": "t1", "state": "captured", "connector": "cp1",
            "session_id": "s-7", "preauth_cents": 5000, "cost_cents": 487,
            "final_cents": 487, "captured_cents": 487, "receipt_number": 123,
            "masked_pan": "############1234", "receipt_text": "EUR 4,87\n####1234",
        },
        "cost": {"currency": "EUR", "total_cents": 487},
    }  # fmt: skip

    async def scenario() -> None:
        s.cloud.on_payment_step(step)
        # A step carrying card data is refused whole, never published.
        s.cloud.on_payment_step({"event": "payment_failed", "payment": {"id": "x", "pan": "4111"}})
        await s.cloud.start()
        await until(lambda: bool(events(cloud, "payment")), what="the payment event")
        await s.cloud.close()

    asyncio.run(scenario())
    (payment,) = events(cloud, "payment")
    data = payment["data"]
    assert (data["payment_id"], data["status"], data["amount_cents"]) == ("pay-7", "captured", 487)
    assert data["currency"] == "EUR" and data["receipt_text"] == "EUR 4,87\n####1234"
    assert "4111" not in json.dumps(cloud.on(""), default=str)
    s.db.close()
