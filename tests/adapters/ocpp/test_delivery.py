"""Transaction messages that the CSMS refuses, a disk that refuses writes, Basic auth on ws://
(security profile 1) and the per-EVSE topology, against the strict test central system."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.core.sessions import SessionRefused
from tests.adapters.ocpp.csms import CALL, CentralSystem
from tests.adapters.ocpp.rig import Site, settings, until

ID = "CP_1"


def test_a_refused_message_is_retried_per_the_keys_and_then_delivered(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"T": "Accepted"}, next_transaction_id=300)
    csms.configure_action("StartTransaction", reject="InternalError", times=2)

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await site.desk.present_id_tag("cp1", "T", by="rfid")
            await until(lambda: site.desk.record("cp1").ocpp_transaction_id == 300, 10)
            starts = csms.messages(ID, "StartTransaction", "from_cp", CALL)
            assert len(starts) == 3  # refused twice, then taken
            # RetryInterval x attempt: 1 s, then 2 s between them.
            at = [datetime.fromisoformat(m.ts.replace("Z", "+00:00")) for m in starts]
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(at)]
            assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
            mv = await csms.wait_for_async("MeterValues", timeout_s=4)
            assert mv.payload["transactionId"] == 300

    asyncio.run(scenario())


def test_a_message_refused_every_time_is_dropped_with_its_followers_and_an_event(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"T": "Accepted"})
    csms.configure_action("StartTransaction", reject="InternalError")  # every time
    keys = {"TransactionMessageAttempts": "2", "MeterValueSampleInterval": "0"}

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID), keys=keys)) as site:
            await csms.wait_for_async("BootNotification")
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await site.desk.present_id_tag("cp1", "T", by="rfid")
            site.unplug("cp1")
            await until(lambda: site.outbox.count("ocpp") == 0, 10, what="the outbox to empty")
            assert len(csms.messages(ID, "StartTransaction", "from_cp", CALL)) == 2
            # Without a transactionId there is nothing to stop at the CSMS: never sent.
            assert csms.messages(ID, "StopTransaction", "from_cp", CALL) == []
            assert site.station.dropped == 2
            events = [e for e in site.db.recent_events() if e[1] == "ocpp_message_dropped"]
            assert {json.loads(e[3])["action"] for e in events} == {
                "StartTransaction",
                "StopTransaction",
            }

    asyncio.run(scenario())


def test_a_disk_that_refuses_writes_blocks_new_transactions_and_loses_nothing(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"T": "Accepted"}, next_transaction_id=90)
    keys = {"MeterValueSampleInterval": "0"}

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID), keys=keys)) as site:
            await csms.wait_for_async("BootNotification")
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await site.desk.present_id_tag("cp1", "T", by="rfid")
            await until(lambda: site.desk.record("cp1").ocpp_transaction_id == 90)
            site.db.connection.execute("PRAGMA query_only = ON")  # as a full disk does
            site.unplug("cp1")
            # The desk holds the transaction's end until it is on disk; the alarm is up.
            await until(lambda: site.desk.conditions() != [], what="the store alarm")
            await asyncio.sleep(0.5)
            site.plug("cp2")
            await asyncio.sleep(0.3)
            try:
                await site.desk.present_id_tag("cp2", "T", by="rfid")
            except SessionRefused as exc:
                assert "cannot" in str(exc)
            else:
                raise AssertionError("a transaction started that could not be stored")
            assert csms.messages(ID, "StopTransaction", "from_cp", CALL) == []
            site.db.connection.execute("PRAGMA query_only = OFF")
            stop = await csms.wait_for_async("StopTransaction", timeout_s=5)
            assert stop.payload["transactionId"] == 90
            assert stop.payload["reason"] == "EVDisconnected"
            await until(lambda: site.desk.conditions() == [], what="the alarm to clear")
            await until(lambda: site.outbox.count("ocpp") == 0, what="the outbox to drain")

    asyncio.run(scenario())


def test_security_profile_1_sends_basic_auth_and_per_evse_charge_points(
    csms_factory: Any, tmp_path: Path
) -> None:
    key = "0123456789ABCDEF0123"
    csms: CentralSystem = csms_factory(password=key)
    csms.start()
    key_file = tmp_path / "key.yaml"
    key_file.write_text(f"authorization_key: {key}\n")
    base = settings(csms.url(ID).rsplit("/", 1)[0])
    ocpp = replace(
        base, security_profile=1, credentials_file=key_file, topology="per_evse", identity="S"
    )

    async def scenario() -> None:
        async with Site(tmp_path / "state", ocpp) as site:
            for identity in ("S-cp1", "S-cp2"):
                boot = await csms.wait_for_async("BootNotification", identity=identity)
                assert boot.payload["chargePointVendor"] == "evsite"
                await csms.wait_for_async(
                    "StatusNotification", lambda p: p["connectorId"] == 1, identity=identity
                )
            conf = await csms.call_async(
                "S-cp2", "GetConfiguration", {"key": ["NumberOfConnectors"]}
            )
            assert conf["configurationKey"][0]["value"] == "1"
            # Each per-EVSE charge point has its own keys.
            change = {"key": "HeartbeatInterval", "value": "77"}
            assert await csms.call_async("S-cp2", "ChangeConfiguration", change) == {
                "status": "Accepted"
            }
            one = await csms.call_async("S-cp1", "GetConfiguration", {"key": ["HeartbeatInterval"]})
            assert one["configurationKey"][0]["value"] != "77"
            rotation = await csms.call_async(
                "S-cp2", "GetConfiguration", {"key": ["ConnectorPhaseRotation"]}
            )
            assert rotation["configurationKey"][0]["value"] == "1.RST"
            # A ChargePointMaxProfile of one per-EVSE charge point caps that EVSE only.
            profile = {
                "connectorId": 0,
                "csChargingProfiles": {
                    "chargingProfileId": 1, "stackLevel": 0,
                    "chargingProfilePurpose": "ChargePointMaxProfile",
                    "chargingProfileKind": "Absolute",
                    "chargingSchedule": {"chargingRateUnit": "A",
                                         "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                     "limit": 10}]},
                },
            }  # fmt: skip
            assert await csms.call_async("S-cp2", "SetChargingProfile", profile) == {
                "status": "Accepted"
            }
            assert [(s.id, s.scope, s.current_a) for s in site.slots()] == [
                ("S-cp2:max", "connector:cp2", 10.0)
            ]

    asyncio.run(scenario())


def test_a_pending_boot_is_retried_after_its_interval_and_nothing_else_goes_meanwhile(
    csms_factory: Any, tmp_path: Path
) -> None:
    csms: CentralSystem = csms_factory(boot_status="Pending", heartbeat_interval_s=1)
    csms.start()

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            # Pending: the CSMS may configure the charge point, which sends nothing else.
            conf = await csms.call_async(ID, "GetConfiguration", {"key": ["NumberOfConnectors"]})
            assert conf["configurationKey"][0]["value"] == "2"
            await asyncio.sleep(1.5)
            assert len(csms.messages(ID, "BootNotification", "from_cp", CALL)) >= 2
            assert csms.messages(ID, "StatusNotification", "from_cp", CALL) == []
            assert site.station.boot_status == "Pending"
            csms.configure(boot_status="Accepted")
            await csms.wait_for_async("StatusNotification", timeout_s=4)
            await until(lambda: site.station.online)

    asyncio.run(scenario())


def test_a_start_whose_answer_was_stored_before_a_crash_is_not_sent_again(
    csms: CentralSystem, tmp_path: Path
) -> None:
    """The window between storing StartTransaction.conf's transactionId and removing the row:
    after a crash there, the row must not open a second transaction at the CSMS."""
    csms.configure(id_tags={"T": "Accepted"}, next_transaction_id=400)
    state = tmp_path / "state"
    keys = {"MeterValueSampleInterval": "0"}

    async def first() -> str:
        async with Site(state, settings(csms.url(ID), keys=keys)) as site:
            await csms.wait_for_async("BootNotification")
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await site.desk.present_id_tag("cp1", "T", by="rfid")
            await until(lambda: site.desk.record("cp1").ocpp_transaction_id == 400)
            session = site.desk.record("cp1").id
            # Put the row back as if the ack had not reached the disk.
            start = csms.messages(ID, "StartTransaction", "from_cp", CALL)[0].payload
            site.outbox.append(
                "ocpp", "StartTransaction", json.dumps({"session": session, "payload": start})
            )
            return session

    session = asyncio.run(first())

    async def second() -> None:
        async with Site(state, settings(csms.url(ID), keys=keys)) as site:
            site.plug("cp1")
            await until(lambda: site.station.online, what="online")
            await until(lambda: site.outbox.count("ocpp") == 0)
            assert len(csms.messages(ID, "StartTransaction", "from_cp", CALL)) == 1
            assert site.desk.record("cp1").id == session

    asyncio.run(second())


def test_a_csms_that_stops_answering_is_reported_and_the_connection_renewed(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(heartbeat_interval_s=1)
    csms.configure_action("Heartbeat", no_reply=True)

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            await until(lambda: "did not answer within 3 s" in str(site.station.last_error), 8)
            csms.configure_action("Heartbeat")
            await until(lambda: len([e for e in csms.events(ID) if e.event == "connected"]) >= 2, 5)
            await until(lambda: site.station.online)
            # Booted once per run: the new connection sends the statuses, not a second boot.
            assert len(csms.messages(ID, "BootNotification", "from_cp", CALL)) == 1

    asyncio.run(scenario())
