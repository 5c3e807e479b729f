"""The OCPP 1.6J link against the strict test central system (csms.py), on loopback.

Each test runs a real site (rig.Site: state file, SessionDesk, SlotBook, outbox, the app's
OcppLink) on an event loop and looks at what the central system saw: every frame both ways
is checked against the OCPP 1.6 schemas, and the fixture fails a test that leaves a violation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controller.core.sessions import SessionPhase, StopReason
from tests.adapters.ocpp.csms import CALL, CALLRESULT, CentralSystem
from tests.adapters.ocpp.rig import Site, settings, until

ID = "CP_1"


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_boot_statuses_heartbeat_and_configuration(csms: CentralSystem, tmp_path: Path) -> None:
    csms.configure(heartbeat_interval_s=1)

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_connected_async(ID)
            boot = await csms.wait_for_async("BootNotification", identity=ID)
            assert boot.payload["chargePointVendor"] == "evsite"
            for n in (0, 1, 2):
                await csms.wait_for_async(
                    "StatusNotification",
                    lambda p, n=n: p["connectorId"] == n and p["status"] == "Available",
                )
            await csms.wait_for_async("Heartbeat", timeout_s=4)
            conf = await csms.call_async(
                ID, "GetConfiguration", {"key": ["NumberOfConnectors", "Nope"]}
            )
            assert conf["configurationKey"] == [
                {"key": "NumberOfConnectors", "readonly": True, "value": "2"}
            ]
            assert conf["unknownKey"] == ["Nope"]
            every = await csms.call_async(ID, "GetConfiguration", {})
            names = {k["key"] for k in every["configurationKey"]}
            assert {
                "HeartbeatInterval",
                "ChargeProfileMaxStackLevel",
                "LocalAuthListEnabled",
                "AuthorizationKey",
                "SupportedFeatureProfiles",
            } <= names
            # AuthorizationKey is write-only: listed, never with a value.
            key = next(k for k in every["configurationKey"] if k["key"] == "AuthorizationKey")
            assert "value" not in key
            assert site.station.online

    run(scenario())


def test_change_configuration_persists_and_the_site_file_wins_once_it_changes(
    csms: CentralSystem, tmp_path: Path
) -> None:
    state = tmp_path / "state"

    async def first() -> None:
        async with Site(state, settings(csms.url(ID), keys={"MeterValueSampleInterval": "30"})):
            await csms.wait_for_async("BootNotification")

            async def change(key: str, value: str) -> str:
                answer = await csms.call_async(
                    ID, "ChangeConfiguration", {"key": key, "value": value}
                )
                return str(answer["status"])

            assert await change("MeterValueSampleInterval", "15") == "Accepted"
            assert await change("NumberOfConnectors", "5") == "Rejected"  # read-only
            assert await change("NoSuchKey", "5") == "NotSupported"
            assert await change("HeartbeatInterval", "soon") == "Rejected"
            assert await change("AuthorizationKey", "0123456789abcdef0123") == "Accepted"

    run(first())
    keys_file = state / "ocpp-keys.json"
    assert keys_file.stat().st_mode & 0o777 == 0o600  # it holds the AuthorizationKey
    stored = json.loads(keys_file.read_text())["overrides"]
    assert stored["AuthorizationKey"]["value"] == "0123456789abcdef0123"
    assert stored["MeterValueSampleInterval"] == {"value": "15", "site": "30"}

    async def value_after(yaml_value: str) -> str:
        async with Site(
            state, settings(csms.url(ID), keys={"MeterValueSampleInterval": yaml_value})
        ) as site:
            await until(lambda: site.station.online, what="online")
            conf = await csms.call_async(
                ID, "GetConfiguration", {"key": ["MeterValueSampleInterval"]}
            )
            return str(conf["configurationKey"][0]["value"])

    async def second() -> None:
        # The same site file: the CSMS's 15 still wins after a restart ...
        assert await value_after("30") == "15"
        # ... until a technician changes the site file's value.
        assert await value_after("45") == "45"

    run(second())


def test_a_transaction_with_an_id_tag_meter_values_and_a_local_stop(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"TAG1": "Accepted"}, next_transaction_id=700)

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            site.plug("cp1")
            await csms.wait_for_async(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Preparing"
            )
            answer = await site.desk.present_id_tag("cp1", "TAG1", by="rfid")
            assert answer["result"] == "authorised"
            auth = await csms.wait_for_async("Authorize")
            assert auth.payload == {"idTag": "TAG1"}
            start = await csms.wait_for_async("StartTransaction")
            assert start.payload["connectorId"] == 1 and start.payload["idTag"] == "TAG1"
            assert start.payload["meterStart"] == 1000
            await until(lambda: site.desk.record("cp1").ocpp_transaction_id == 700)
            await csms.wait_for_async(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Charging"
            )
            mv = await csms.wait_for_async("MeterValues", timeout_s=4)
            assert mv.payload["transactionId"] == 700
            sampled = mv.payload["meterValue"][0]["sampledValue"]
            measurands = {(s["measurand"], s.get("phase")) for s in sampled}
            assert ("Energy.Active.Import.Register", None) in measurands
            assert ("Current.Import", "L3") in measurands
            assert ("Power.Active.Import", None) in measurands
            # The same tag again stops it (Local); the car leaves afterwards.
            answer = await site.desk.present_id_tag("cp1", "TAG1", by="rfid")
            assert answer["result"] == "stopped"
            stop = await csms.wait_for_async("StopTransaction")
            assert stop.payload["transactionId"] == 700
            assert stop.payload["reason"] == "Local"
            assert stop.payload["meterStop"] >= 1000
            assert stop.payload["transactionData"][1]["sampledValue"][0]["context"] == (
                "Transaction.End"
            )
            await csms.wait_for_async(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Finishing"
            )
            site.unplug("cp1")
            await csms.wait_for_async(
                "StatusNotification",
                lambda p: p["connectorId"] == 1 and p["status"] == "Available",
                since=stop.index,
            )
            await until(lambda: site.outbox.count("ocpp") == 0)

    run(scenario())


def test_remote_start_and_stop_and_an_unplug_ends_with_ev_disconnected(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"APP": "Accepted"}, next_transaction_id=41)

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            result = await csms.call_async(
                ID, "RemoteStartTransaction", {"idTag": "APP", "connectorId": 2}
            )
            assert result == {"status": "Accepted"}
            assert site.desk.record("cp2").phase is SessionPhase.AUTHORISED
            # Busy now: a second remote start on it is refused.
            again = await csms.call_async(
                ID, "RemoteStartTransaction", {"idTag": "APP", "connectorId": 2}
            )
            assert again == {"status": "Rejected"}
            site.plug("cp2")
            start = await csms.wait_for_async("StartTransaction")
            assert start.payload["connectorId"] == 2 and start.payload["idTag"] == "APP"
            await until(lambda: site.desk.record("cp2").ocpp_transaction_id == 41)
            stop_unknown = await csms.call_async(ID, "RemoteStopTransaction", {"transactionId": 9})
            assert stop_unknown == {"status": "Rejected"}
            stopped = await csms.call_async(ID, "RemoteStopTransaction", {"transactionId": 41})
            assert stopped == {"status": "Accepted"}
            stop = await csms.wait_for_async("StopTransaction")
            assert stop.payload["reason"] == "Remote" and stop.payload["transactionId"] == 41
            site.unplug("cp2")
            # A free-vend-less site: the next car needs authorisation; a remote start without
            # a connector goes to the connector where a car waits.
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            assert (await csms.call_async(ID, "RemoteStartTransaction", {"idTag": "APP"})) == {
                "status": "Accepted"
            }
            start2 = await csms.wait_for_async("StartTransaction", since=stop.index)
            assert start2.payload["connectorId"] == 1
            site.unplug("cp1")
            stop2 = await csms.wait_for_async("StopTransaction", since=start2.index)
            assert stop2.payload["reason"] == "EVDisconnected"
            assert stop2.payload["transactionId"] == 42

    run(scenario())


def test_malformed_and_unknown_requests_get_1_6_errors_and_the_connection_survives(
    csms: CentralSystem, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))):
            await csms.wait_for_async("BootNotification")
            await asyncio.sleep(0.5)
            connects = len([e for e in csms.events(ID) if e.event == "connected"])
            firmware = '{"location":"x","retrieveDate":"2026-01-01T00:00:00Z"}'
            cases = [
                ('[2,"u1","FlyToTheMoon",{}]', "NotImplemented"),
                (f'[2,"u2","UpdateFirmware",{firmware}]', "NotSupported"),
                (
                    '[2,"u3","ChangeConfiguration",{"key":"HeartbeatInterval"}]',
                    "OccurenceConstraintViolation",
                ),
                ('[2,"u4","ChangeConfiguration",{"key":5,"value":"1"}]', "TypeConstraintViolation"),
                (
                    '[2,"u5","ChangeAvailability",{"connectorId":1,"type":"Sideways"}]',
                    "PropertyConstraintViolation",
                ),
                ('[2,"u6","Reset",{"type":"Soft","extra":1}]', "FormationViolation"),
                ('[2,"u7","GetConfiguration",[]]', "FormationViolation"),
                ('[2,"u8","GetConfiguration"]', "FormationViolation"),
            ]
            for text, code in cases:
                answer = await csms.send_raw_async(ID, text)
                assert answer is not None, text
                frame = json.loads(answer)
                assert frame[0] == 4 and frame[2] == code, (text, frame)
            # Not even JSON: nothing to answer, the connection stays.
            assert await csms.send_raw_async(ID, "{not json", timeout_s=1) is None
            # Still the same connection, and it still works.
            assert len([e for e in csms.events(ID) if e.event == "connected"]) == connects
            conf = await csms.call_async(ID, "GetConfiguration", {"key": ["HeartbeatInterval"]})
            assert conf["configurationKey"][0]["key"] == "HeartbeatInterval"

    run(scenario())


def test_smart_charging_profiles_become_slots_survive_a_restart_and_compose(
    csms: CentralSystem, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    max_profile = {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20.0}],
            },
        },
    }

    async def first() -> None:
        async with Site(state, settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            ok = await csms.call_async(ID, "SetChargingProfile", max_profile)
            assert ok == {"status": "Accepted"}
            # A TxProfile without a transaction is refused (1.6 §5.16).
            tx = json.loads(json.dumps(max_profile))
            tx["connectorId"] = 1
            tx["csChargingProfiles"].update(chargingProfileId=2, chargingProfilePurpose="TxProfile")
            assert await csms.call_async(ID, "SetChargingProfile", tx) == {"status": "Rejected"}
            slots = site.slots()
            assert [(s.id, s.scope, s.current_a) for s in slots] == [("max", "site", 20.0)]

    run(first())

    async def second() -> None:
        async with Site(state, settings(csms.url(ID), keys={})) as site:
            await until(lambda: site.station.online, what="online")
            assert [(s.id, s.current_a) for s in site.slots()] == [("max", 20.0)]
            # cp2 is rated 16 A: its composite says 16, never the profile's 20.
            comp = await csms.call_async(
                ID, "GetCompositeSchedule", {"connectorId": 2, "duration": 600}
            )
            assert comp["status"] == "Accepted"
            assert comp["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 16
            comp1 = await csms.call_async(
                ID,
                "GetCompositeSchedule",
                {"connectorId": 1, "duration": 600, "chargingRateUnit": "W"},
            )
            assert comp1["chargingSchedule"]["chargingRateUnit"] == "W"
            assert comp1["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 20 * 230 * 3
            bad = await csms.call_async(
                ID, "GetCompositeSchedule", {"connectorId": 9, "duration": 60}
            )
            assert bad == {"status": "Rejected"}
            cleared = await csms.call_async(ID, "ClearChargingProfile", {"id": 1})
            assert cleared == {"status": "Accepted"}
            assert site.slots() == ()
            assert await csms.call_async(ID, "ClearChargingProfile", {"id": 1}) == {
                "status": "Unknown"
            }

    run(second())


@pytest.mark.parametrize("with_list", [True, False])
def test_offline_authorisation_by_local_list_cache_and_unknown_id_rule(
    csms: CentralSystem, tmp_path: Path, with_list: bool
) -> None:
    csms.configure(id_tags={"CACHED": "Accepted"})
    keys = {"AllowOfflineTxForUnknownId": "false", "LocalAuthorizeOffline": "true"}

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID), keys=keys)) as site:
            await csms.wait_for_async("BootNotification")
            if with_list:
                sent = await csms.call_async(
                    ID,
                    "SendLocalList",
                    {
                        "listVersion": 3,
                        "updateType": "Full",
                        "localAuthorizationList": [
                            {"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}},
                            {"idTag": "BLOCKED", "idTagInfo": {"status": "Blocked"}},
                        ],
                    },
                )
                assert sent == {"status": "Accepted"}
                assert await csms.call_async(ID, "GetLocalListVersion", {}) == {"listVersion": 3}
                stale = await csms.call_async(
                    ID,
                    "SendLocalList",
                    {
                        "listVersion": 3,
                        "updateType": "Differential",
                        "localAuthorizationList": [{"idTag": "X"}],
                    },
                )
                assert stale == {"status": "VersionMismatch"}
            # Online: CACHED is asked once and lands in the cache.
            site.plug("cp2")
            await until(lambda: site.desk.record("cp2") is not None)
            assert (await site.desk.present_id_tag("cp2", "CACHED", by="rfid"))["result"] == (
                "authorised"
            )
            await site.desk.present_id_tag("cp2", "CACHED", by="rfid")  # stops it
            site.unplug("cp2")
            await until(lambda: site.desk.record("cp2") is None, what="cp2 free")
            csms.stop()
            await until(lambda: not site.station.online, what="offline")
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            from controller.core.sessions import SessionRefused

            with pytest.raises(SessionRefused):
                await site.desk.present_id_tag("cp1", "STRANGER", by="rfid")
            if with_list:
                with pytest.raises(SessionRefused, match="Blocked"):
                    await site.desk.present_id_tag("cp1", "BLOCKED", by="rfid")
                got = await site.desk.present_id_tag("cp1", "LISTED", by="rfid")
                assert got["result"] == "authorised"
            else:
                got = await site.desk.present_id_tag("cp1", "CACHED", by="rfid")
                assert got["result"] == "authorised"
            assert site.desk.record("cp1").phase is SessionPhase.ACTIVE
            site.unplug("cp1")
            await until(lambda: site.desk.record("cp1") is None)
            csms.start()
            stop = await csms.wait_for_async(
                "StopTransaction", lambda p: p["reason"] == "EVDisconnected", timeout_s=8
            )
            starts = csms.messages(ID, "StartTransaction", "from_cp", CALL)
            start = [m for m in starts if m.index < stop.index][-1]
            reply = csms.reply_to(start)
            assert reply is not None and reply.message_type == CALLRESULT
            assert stop.payload["transactionId"] == reply.payload["transactionId"]

    run(scenario())


def test_an_offline_unknown_tag_starts_with_allow_offline_tx_and_is_deauthorized_later(
    csms: CentralSystem, tmp_path: Path
) -> None:
    keys = {"AllowOfflineTxForUnknownId": "true"}
    csms.configure(id_tags={"GOOD": "Accepted"})

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID), keys=keys)) as site:
            await csms.wait_for_async("BootNotification")
            csms.stop()
            await until(lambda: not site.station.online)
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            assert (await site.desk.present_id_tag("cp1", "UNKNOWN", by="rfid"))["result"] == (
                "authorised"
            )
            csms.start()
            start = await csms.wait_for_async("StartTransaction", timeout_s=8)
            assert start.payload["idTag"] == "UNKNOWN"
            stop = await csms.wait_for_async("StopTransaction", timeout_s=8)
            assert stop.payload["reason"] == "DeAuthorized"
            assert site.desk.record("cp1").phase is SessionPhase.FINISHING
            assert site.desk.record("cp1").stop_reason is StopReason.DEAUTHORIZED

    run(scenario())
