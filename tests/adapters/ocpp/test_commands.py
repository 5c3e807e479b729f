"""The CSMS's other requests against the link: TriggerMessage, reservations, availability,
Reset, UnlockConnector, DataTransfer, ClearCache; each as the CSMS sees it (the strict test
central system validates every frame), and what it changes at the site."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.core.sessions import SessionPhase, SessionRefused
from tests.adapters.ocpp.csms import CALL, CallError, CentralSystem, IdTag
from tests.adapters.ocpp.rig import Site, settings, until

ID = "CP_1"


def test_trigger_message_sends_what_was_asked_after_the_answer(
    csms: CentralSystem, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))):
            await csms.wait_for_async("BootNotification")
            await csms.wait_for_async("StatusNotification", lambda p: p["connectorId"] == 2)
            mark = csms.mark()
            for what in ("Heartbeat", "BootNotification"):
                answer = await csms.call_async(ID, "TriggerMessage", {"requestedMessage": what})
                assert answer == {"status": "Accepted"}
                await csms.wait_for_async(what, since=mark)
            answer = await csms.call_async(
                ID, "TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 2}
            )
            assert answer == {"status": "Accepted"}
            status = await csms.wait_for_async("StatusNotification", since=mark)
            assert status.payload["connectorId"] == 2 and status.payload["status"] == "Available"
            assert await csms.call_async(
                ID, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}
            ) == {"status": "NotImplemented"}
            assert await csms.call_async(
                ID, "TriggerMessage", {"requestedMessage": "Heartbeat", "connectorId": 7}
            ) == {"status": "Rejected"}

    asyncio.run(scenario())


def test_a_reservation_holds_the_connector_for_its_tag_until_used_or_cancelled(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"MINE": "Accepted", "OTHER": "Accepted"})
    expiry = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")

            def reserve(rid: int, connector: int) -> dict[str, object]:
                return {"connectorId": connector, "expiryDate": expiry, "idTag": "MINE",
                        "reservationId": rid}  # fmt: skip

            assert await csms.call_async(ID, "ReserveNow", reserve(7, 0)) == {
                "status": "Rejected"  # ReserveConnectorZeroSupported is false
            }
            assert await csms.call_async(ID, "ReserveNow", reserve(7, 1)) == {"status": "Accepted"}
            await csms.wait_for_async(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Reserved"
            )
            assert await csms.call_async(ID, "ReserveNow", reserve(8, 1)) == {"status": "Occupied"}
            # Someone else's card and a remote start for someone else are refused there.
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            try:
                await site.desk.present_id_tag("cp1", "OTHER", by="rfid")
            except SessionRefused as exc:
                assert "Reserved" in str(exc)
            else:
                raise AssertionError("a reserved connector took another tag")
            assert await csms.call_async(
                ID, "RemoteStartTransaction", {"idTag": "OTHER", "connectorId": 1}
            ) == {"status": "Rejected"}
            # Its own tag starts, and the StartTransaction names the reservation.
            await site.desk.present_id_tag("cp1", "MINE", by="rfid")
            start = await csms.wait_for_async("StartTransaction")
            assert start.payload["reservationId"] == 7
            assert site.station.reservations == {}
            # A cancelled one frees the connector.
            assert await csms.call_async(ID, "ReserveNow", reserve(9, 2)) == {"status": "Accepted"}
            assert await csms.call_async(ID, "CancelReservation", {"reservationId": 9}) == {
                "status": "Accepted"
            }
            assert await csms.call_async(ID, "CancelReservation", {"reservationId": 9}) == {
                "status": "Rejected"
            }

    asyncio.run(scenario())


def test_availability_reset_unlock_data_transfer_and_clear_cache(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"T": "Accepted"}, next_transaction_id=5)

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            assert await csms.call_async(
                ID, "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"}
            ) == {"status": "Accepted"}
            await csms.wait_for_async(
                "StatusNotification",
                lambda p: p["connectorId"] == 2 and p["status"] == "Unavailable",
            )
            assert not site.desk.available("cp2")
            assert await csms.call_async(
                ID, "RemoteStartTransaction", {"idTag": "T", "connectorId": 2}
            ) == {"status": "Rejected"}
            # With a transaction running, inoperative waits for its end: Scheduled.
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await site.desk.present_id_tag("cp1", "T", by="rfid")
            assert await csms.call_async(
                ID, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}
            ) == {"status": "Scheduled"}
            assert site.desk.available("cp1")
            assert await csms.call_async(ID, "UnlockConnector", {"connectorId": 1}) == {
                "status": "NotSupported"
            }
            assert await csms.call_async(ID, "DataTransfer", {"vendorId": "acme"}) == {
                "status": "UnknownVendorId"
            }
            assert await csms.call_async(ID, "ClearCache", {}) == {"status": "Accepted"}
            # Reset: the transaction stops with SoftReset, then the service restarts.
            assert await csms.call_async(ID, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
            stop = await csms.wait_for_async("StopTransaction")
            assert stop.payload["reason"] == "SoftReset"
            await until(lambda: site.restarts == 1, what="the restart")
            assert site.desk.record("cp1").phase is SessionPhase.FINISHING

    asyncio.run(scenario())


def test_clock_aligned_and_triggered_meter_values_and_a_faulted_evse(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"T": "Accepted"}, next_transaction_id=12)
    keys = {"ClockAlignedDataInterval": "1", "MeterValueSampleInterval": "0"}

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID), keys=keys)) as site:
            await csms.wait_for_async("BootNotification")
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await site.desk.present_id_tag("cp1", "T", by="rfid")
            aligned = await csms.wait_for_async(
                "MeterValues",
                lambda p: p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock",
                timeout_s=4,
            )
            stamp = aligned.payload["meterValue"][0]["timestamp"]
            assert stamp.endswith(".000Z"), stamp  # on the clock's whole second
            assert aligned.payload["transactionId"] == 12
            assert {s["measurand"] for s in aligned.payload["meterValue"][0]["sampledValue"]} == {
                "Energy.Active.Import.Register"
            }
            mark = csms.mark()
            assert await csms.call_async(
                ID, "TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1}
            ) == {"status": "Accepted"}
            triggered = await csms.wait_for_async(
                "MeterValues",
                lambda p: p["meterValue"][0]["sampledValue"][0]["context"] == "Trigger",
                since=mark,
            )
            assert triggered.payload["transactionId"] == 12
            # An EVSE that stops answering: Faulted, with what the device said.
            site.offline.add("cp2")
            faulted = await csms.wait_for_async(
                "StatusNotification", lambda p: p["connectorId"] == 2 and p["status"] == "Faulted"
            )
            assert faulted.payload["errorCode"] == "OtherError"
            assert faulted.payload["vendorErrorCode"] == "evse_offline"
            site.offline.clear()
            await csms.wait_for_async(
                "StatusNotification",
                lambda p: p["connectorId"] == 2 and p["status"] == "Available",
                since=faulted.index,
            )

    asyncio.run(scenario())


def test_a_remote_start_with_a_profile_and_a_tx_default_profile_in_watts(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(id_tags={"APP": "Accepted"}, next_transaction_id=77)
    tx_profile = {
        "chargingProfileId": 5, "stackLevel": 2, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.5}]},
    }  # fmt: skip
    default_w = {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 6, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "W", "startSchedule": "2020-01-01T00:00:00Z",
                                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400}]},
        },
    }  # fmt: skip

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            assert await csms.call_async(ID, "SetChargingProfile", default_w) == {
                "status": "Accepted"
            }
            by_id = {s.id: s for s in site.slots()}
            assert by_id["connector-1"].power_w == 7400 and by_id["connector-2"].power_w == 7400
            answer = await csms.call_async(
                ID,
                "RemoteStartTransaction",
                {"idTag": "APP", "connectorId": 1, "chargingProfile": tx_profile},
            )
            assert answer == {"status": "Accepted"}
            site.plug("cp1")
            await csms.wait_for_async("StartTransaction")
            await until(lambda: site.desk.record("cp1").ocpp_transaction_id == 77)
            by_id = {s.id: s for s in site.slots()}
            assert by_id["connector-1"].current_a == 10.5  # the TxProfile beats the default
            assert by_id["connector-2"].power_w == 7400
            assert await csms.call_async(ID, "RemoteStopTransaction", {"transactionId": 77}) == {
                "status": "Accepted"
            }
            await csms.wait_for_async("StopTransaction")
            # The TxProfile ended with its transaction; the default stays.
            assert {s.id: s.power_w for s in site.slots()} == {
                "connector-1": 7400,
                "connector-2": 7400,
            }

    asyncio.run(scenario())


def test_a_reservation_holds_a_free_vend_connector_for_its_parent_id_tag(
    csms: CentralSystem, tmp_path: Path
) -> None:
    csms.configure(
        id_tags={
            "FLEET-7": IdTag(status="Accepted", parent_id_tag="FLEET"),
            "PRIVATE": "Accepted",
        }
    )
    expiry = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")

    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID)), free_vend=True) as site:
            await csms.wait_for_async("BootNotification")
            reserve = {"connectorId": 1, "expiryDate": expiry, "idTag": "FLEET-1",
                       "parentIdTag": "FLEET", "reservationId": 3}  # fmt: skip
            assert await csms.call_async(ID, "ReserveNow", reserve) == {"status": "Accepted"}
            # Free vend, but reserved: the car waits (no transaction, no current).
            site.plug("cp1")
            await until(lambda: site.desk.record("cp1") is not None)
            await asyncio.sleep(0.3)
            assert site.desk.record("cp1").phase is SessionPhase.PENDING
            assert csms.messages(ID, "StartTransaction", "from_cp", CALL) == []
            try:
                await site.desk.present_id_tag("cp1", "PRIVATE", by="rfid")
            except SessionRefused as exc:
                assert "Reserved" in str(exc)
            else:
                raise AssertionError("another tag took a reserved connector")
            # Another tag of the same parent may use it.
            await site.desk.present_id_tag("cp1", "FLEET-7", by="rfid")
            start = await csms.wait_for_async("StartTransaction")
            assert start.payload["idTag"] == "FLEET-7" and start.payload["reservationId"] == 3

    asyncio.run(scenario())


def test_an_answer_that_fails_its_own_schema_or_a_crashing_handler_is_an_internal_error(
    csms: CentralSystem, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))) as site:
            await csms.wait_for_async("BootNotification")
            routes = site.station.route_map
            routes["DataTransfer"]["_on_action"] = lambda payload: {"status": "Bogus"}

            def crash(payload: object) -> dict[str, str]:
                raise RuntimeError("a bug")

            routes["ClearCache"]["_on_action"] = crash
            for action, payload in (("DataTransfer", {"vendorId": "x"}), ("ClearCache", {})):
                try:
                    await csms.call_async(ID, action, payload)
                except CallError as exc:
                    assert exc.code == "InternalError", exc
                else:
                    raise AssertionError(f"{action} was answered")
            # The same connection goes on answering.
            conf = await csms.call_async(ID, "GetLocalListVersion", {})
            assert conf == {"listVersion": 0}
            assert len([e for e in csms.events(ID) if e.event == "connected"]) == 1

    asyncio.run(scenario())


def test_the_whole_charge_point_inoperative_and_back(csms: CentralSystem, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Site(tmp_path / "state", settings(csms.url(ID))):
            await csms.wait_for_async("BootNotification")
            mark = csms.mark()
            off = {"connectorId": 0, "type": "Inoperative"}
            assert await csms.call_async(ID, "ChangeAvailability", off) == {"status": "Accepted"}
            for n in (0, 1, 2):
                await csms.wait_for_async(
                    "StatusNotification",
                    lambda p, n=n: p["connectorId"] == n and p["status"] == "Unavailable",
                    since=mark,
                )
            on = {"connectorId": 0, "type": "Operative"}
            assert await csms.call_async(ID, "ChangeAvailability", on) == {"status": "Accepted"}
            await csms.wait_for_async(
                "StatusNotification",
                lambda p: p["connectorId"] == 0 and p["status"] == "Available",
                since=mark,
            )

    asyncio.run(scenario())
