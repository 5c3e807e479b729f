"""The test central system itself (csms.py, csms/server.js), against a bare charge point.

The charge point here is a few lines on the `websockets` package, deliberately not the `ocpp`
library the product uses: these tests show that the central system validates, answers, logs
and counts on its own.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.adapters.ocpp.csms import (
    CALLERROR,
    CALLRESULT,
    CallError,
    CallTimeout,
    CentralSystem,
    IdTag,
    InvalidPayload,
    NotConnected,
    TlsFiles,
)

BOOT = {"chargePointVendor": "evsite", "chargePointModel": "test"}


class RawChargePoint:
    """An OCPP-J 1.6 charge point reduced to frames: send CALLs, answer the central system."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._n = 0

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        """Send a CALL and return the answer frame (CALLRESULT or CALLERROR) as a list."""
        self._n += 1
        message_id = f"cp-{self._n}"
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        answer: list[Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        assert answer[1] == message_id
        return answer

    async def answer_next(self, reply: Callable[[list[Any]], list[Any] | None]) -> list[Any]:
        """Receive the next frame and send `reply(frame)` back (nothing if it returns None)."""
        frame: list[Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        out = reply(frame)
        if out is not None:
            await self.ws.send(json.dumps(out))
        return frame


async def with_charge_point(
    csms: CentralSystem,
    identity: str,
    scenario: Callable[[RawChargePoint], Awaitable[None]],
    *,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    async with connect(
        csms.url(identity, password=password),
        subprotocols=[Subprotocol("ocpp1.6")],
        ssl=ssl_context,
        open_timeout=5,
    ) as ws:
        assert ws.subprotocol == "ocpp1.6"
        await scenario(RawChargePoint(ws))


def test_boot_accepted_and_logged_both_ways(csms: CentralSystem) -> None:
    csms.configure(heartbeat_interval_s=60)

    async def scenario(cp: RawChargePoint) -> None:
        answer = await cp.call("BootNotification", BOOT)
        assert answer[0] == CALLRESULT
        assert answer[2]["status"] == "Accepted"
        assert answer[2]["interval"] == 60
        heartbeat = await cp.call("Heartbeat", {})
        assert heartbeat[2]["currentTime"].endswith("Z")

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    boot = csms.wait_for("BootNotification", identity="CP_1")
    assert boot.payload == BOOT
    reply = csms.reply_to(boot)
    assert reply is not None
    assert reply.direction == "to_cp"
    assert reply.action == "BootNotification"
    assert reply.payload["status"] == "Accepted"
    assert [m.action for m in csms.messages("CP_1", direction="from_cp")] == [
        "BootNotification",
        "Heartbeat",
    ]
    csms.wait_event("disconnected", "CP_1")
    assert [e.event for e in csms.events("CP_1")] == ["connected", "disconnected"]
    assert csms.violations() == []


def test_schema_invalid_boot_is_answered_with_callerror_and_counted(csms: CentralSystem) -> None:
    async def scenario(cp: RawChargePoint) -> None:
        answer = await cp.call("BootNotification", {"chargePointModel": "test"})
        assert answer[0] == CALLERROR
        assert answer[2] == "OccurrenceConstraintViolation"
        assert "chargePointVendor" in answer[3]

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    (v,) = csms.take_violations()
    assert (v.identity, v.direction, v.kind, v.action) == (
        "CP_1",
        "from_cp",
        "call",
        "BootNotification",
    )
    assert v.error_code == "OccurrenceConstraintViolation"
    assert "chargePointVendor" in v.error
    assert v.payload == {"chargePointModel": "test"}
    assert csms.unexpected_violations() == []


def test_framing_errors_and_wrong_direction_actions_are_counted(csms: CentralSystem) -> None:
    async def scenario(cp: RawChargePoint) -> None:
        await cp.ws.send("not json")
        bad = json.loads(await cp.ws.recv())
        assert bad[0] == CALLERROR
        assert bad[2] == "RpcFrameworkError"
        answer = await cp.call("RemoteStartTransaction", {"idTag": "X"})
        assert answer[2] == "NotImplemented"
        await cp.ws.send(json.dumps([3, "never-sent", {}]))
        await cp.call("Heartbeat", {})  # the unknown answer is processed by now

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    assert [(v.kind, v.action) for v in csms.take_violations()] == [
        ("frame", None),
        ("action", "RemoteStartTransaction"),
        ("frame", None),
    ]


def test_id_tags_transactions_and_data_transfer(csms: CentralSystem) -> None:
    csms.configure(
        id_tags={"TAG1": "Accepted", "KID": IdTag(status="Blocked", parent_id_tag="TAG1")},
        next_transaction_id=100,
        data_transfer={"com.evsite": "Accepted"},
    )

    async def scenario(cp: RawChargePoint) -> None:
        assert (await cp.call("Authorize", {"idTag": "TAG1"}))[2] == {
            "idTagInfo": {"status": "Accepted"}
        }
        assert (await cp.call("Authorize", {"idTag": "KID"}))[2] == {
            "idTagInfo": {"status": "Blocked", "parentIdTag": "TAG1"}
        }
        assert (await cp.call("Authorize", {"idTag": "NOPE"}))[2]["idTagInfo"]["status"] == (
            "Invalid"
        )
        start = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                 "timestamp": "2026-01-01T00:00:00Z"}  # fmt: skip
        first = await cp.call("StartTransaction", start)
        second = await cp.call("StartTransaction", {**start, "connectorId": 2})
        assert (first[2]["transactionId"], second[2]["transactionId"]) == (100, 101)
        stop = await cp.call(
            "StopTransaction",
            {"transactionId": 100, "meterStop": 1000, "timestamp": "2026-01-01T01:00:00Z",
             "idTag": "TAG1"},
        )  # fmt: skip
        assert stop[2] == {"idTagInfo": {"status": "Accepted"}}
        accepted = await cp.call("DataTransfer", {"vendorId": "com.evsite"})
        unknown = await cp.call("DataTransfer", {"vendorId": "com.other"})
        assert (accepted[2]["status"], unknown[2]["status"]) == ("Accepted", "UnknownVendorId")
        notifications: list[tuple[str, dict[str, Any]]] = [
            ("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                    "status": "Available"}),
            ("MeterValues", {"connectorId": 1, "meterValue": [
                {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}]}),
            ("DiagnosticsStatusNotification", {"status": "Idle"}),
            ("FirmwareStatusNotification", {"status": "Idle"}),
        ]  # fmt: skip
        for action, payload in notifications:
            assert (await cp.call(action, payload))[:1] == [CALLRESULT]

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    assert csms.config()["nextTransactionId"] == 102
    assert csms.violations() == []


def test_configured_rejections_and_delays(csms: CentralSystem) -> None:
    csms.configure_action("StartTransaction", reject="InternalError", times=2)
    csms.configure_action("Heartbeat", delay_s=0.3)
    csms.configure(boot_status="Pending")

    async def scenario(cp: RawChargePoint) -> None:
        assert (await cp.call("BootNotification", BOOT))[2]["status"] == "Pending"
        start = {"connectorId": 1, "idTag": "T", "meterStart": 0,
                 "timestamp": "2026-01-01T00:00:00Z"}  # fmt: skip
        answers = [await cp.call("StartTransaction", start) for _ in range(3)]
        assert [a[0] for a in answers] == [CALLERROR, CALLERROR, CALLRESULT]
        assert answers[0][2] == "InternalError"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await cp.call("Heartbeat", {})
        assert loop.time() - t0 >= 0.25

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    csms.configure_action("Heartbeat")
    assert csms.config()["actions"] == {
        "StartTransaction": {"reject": {"code": "InternalError", "description": "", "times": 0}}
    }
    assert csms.violations() == []


def test_call_to_the_charge_point_round_trips(csms: CentralSystem) -> None:
    async def scenario(cp: RawChargePoint) -> None:
        await csms.wait_connected_async("CP_1")

        def accept(frame: list[Any]) -> list[Any]:
            return [3, frame[1], {"status": "Accepted"}]

        answering = asyncio.create_task(cp.answer_next(accept))
        result = await csms.call_async("CP_1", "ChangeAvailability",
                                       {"connectorId": 0, "type": "Inoperative"})  # fmt: skip
        assert result == {"status": "Accepted"}
        assert (await answering)[2:] == ["ChangeAvailability",
                                         {"connectorId": 0, "type": "Inoperative"}]  # fmt: skip

        answering = asyncio.create_task(
            cp.answer_next(lambda f: [4, f[1], "NotSupported", "no reset here", {}])
        )
        with pytest.raises(CallError) as err:
            await csms.call_async("CP_1", "Reset", {"type": "Hard"})
        assert (err.value.code, err.value.description) == ("NotSupported", "no reset here")
        await answering

        answering = asyncio.create_task(cp.answer_next(lambda f: None))
        with pytest.raises(CallTimeout):
            await csms.call_async("CP_1", "ClearCache", {}, timeout_s=0.3)
        late = await answering
        await cp.ws.send(json.dumps([3, late[1], {"status": "Accepted"}]))  # no violation

        # strict mode both ways: our invalid payload is never sent; an invalid answer rejects
        with pytest.raises(InvalidPayload) as invalid:
            await csms.call_async("CP_1", "Reset", {"type": "Gentle"})
        assert invalid.value.violation.direction == "to_cp"
        answering = asyncio.create_task(cp.answer_next(lambda f: [3, f[1], {"status": "Maybe"}]))
        with pytest.raises(InvalidPayload) as invalid:
            await csms.call_async("CP_1", "Reset", {"type": "Soft"})
        assert invalid.value.violation.direction == "from_cp"
        assert invalid.value.violation.kind == "result"
        await answering

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    assert [(v.direction, v.kind, v.action) for v in csms.take_violations()] == [
        ("to_cp", "call", "Reset"),
        ("from_cp", "result", "Reset"),
    ]
    with pytest.raises(NotConnected):
        csms.call("CP_1", "ClearCache", {})


def test_raw_malformed_frames_reach_the_charge_point(csms: CentralSystem) -> None:
    async def scenario(cp: RawChargePoint) -> None:
        await csms.wait_connected_async("CP_1")
        received: list[str] = []

        async def answer_raw() -> None:
            text = str(await cp.ws.recv())
            received.append(text)
            try:
                message_id = json.loads(text)[1]
            except ValueError:
                message_id = "-1"
            await cp.ws.send(json.dumps([4, message_id, "NotImplemented", "", {}]))

        for text in ['[2,"raw-1","Foo",{}]', "{not json", '[2,"raw-3","Reset",{"type":5}]']:
            answering = asyncio.create_task(answer_raw())
            answer = await csms.send_raw_async("CP_1", text)
            await answering
            assert received[-1] == text
            assert answer is not None
            assert json.loads(answer)[2] == "NotImplemented"
        # no answer at all: None after the timeout
        assert await csms.send_raw_async("CP_1", '[2,"raw-4","Foo",{}]', timeout_s=0.2) is None
        await cp.ws.recv()

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    assert csms.violations() == []


def test_several_charge_points_and_disconnect(csms: CentralSystem) -> None:
    async def scenario() -> None:
        async with (
            connect(csms.url("CP_A"), subprotocols=[Subprotocol("ocpp1.6")]) as a,
            connect(csms.url("CP_B"), subprotocols=[Subprotocol("ocpp1.6")]) as b,
        ):
            for ws in (a, b):
                await RawChargePoint(ws).call("BootNotification", BOOT)
            assert sorted(csms.connected()) == ["CP_A", "CP_B"]
            csms.disconnect("CP_A", force=True)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(a.recv(), 5)
            csms.disconnect("CP_B", code=4000)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(b.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert csms.connected() == []


def test_connection_without_the_ocpp16_subprotocol_is_refused(csms: CentralSystem) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(csms.url("CP_1"), subprotocols=[Subprotocol("ocpp2.0.1")]):
                pass
        assert refused.value.response.status_code == 400

    asyncio.run(scenario())
    (v,) = csms.take_violations()
    assert v.kind == "handshake"


def test_basic_auth(csms_factory: Callable[..., CentralSystem]) -> None:
    csms = csms_factory(password="for-all", passwords={"CP_2": "only-cp2"})
    csms.start()

    async def boot(cp: RawChargePoint) -> None:
        assert (await cp.call("BootNotification", BOOT))[2]["status"] == "Accepted"

    async def refused(identity: str, password: str | None) -> int:
        with pytest.raises(InvalidStatus) as err:
            await with_charge_point(csms, identity, boot, password=password)
        return err.value.response.status_code

    async def scenario() -> None:
        await with_charge_point(csms, "CP_1", boot, password="for-all")
        await with_charge_point(csms, "CP_2", boot, password="only-cp2")
        assert await refused("CP_1", "wrong") == 401
        assert await refused("CP_2", "for-all") == 401
        assert await refused("CP_1", None) == 401

    asyncio.run(scenario())
    assert [e.event for e in csms.events() if e.event == "rejected"] == ["rejected"] * 3
    csms.configure(no_auth=True)
    asyncio.run(with_charge_point(csms, "CP_3", boot))


def test_tls_with_the_test_ca(
    csms_factory: Callable[..., CentralSystem], csms_tls_files: TlsFiles
) -> None:
    csms = csms_factory(tls=csms_tls_files, password="secret")
    csms.start()
    assert csms.url("CP_1").startswith("wss://127.0.0.1:")

    async def boot(cp: RawChargePoint) -> None:
        assert (await cp.call("BootNotification", BOOT))[2]["status"] == "Accepted"

    async def scenario() -> None:
        ctx = csms.client_ssl_context()
        await with_charge_point(csms, "CP_1", boot, password="secret", ssl_context=ctx)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        other = ssl.create_default_context(cafile=str(csms_tls_files.other_ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            await with_charge_point(csms, "CP_1", boot, password="secret", ssl_context=other)

    asyncio.run(scenario())
    # TLS 1.1 (allowed on the client side here): the server answers with a protocol_version alert
    probe = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{csms.port}", "-tls1_1",
         "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", str(csms_tls_files.ca_file)],
        input=b"", capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert probe.returncode != 0
    assert b"alert protocol version" in probe.stdout + probe.stderr


def test_restart_keeps_port_log_and_transaction_ids(csms: CentralSystem) -> None:
    start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"}

    async def start_transaction(cp: RawChargePoint) -> None:
        await cp.call("StartTransaction", start)

    asyncio.run(with_charge_point(csms, "CP_1", start_transaction))
    port = csms.port
    csms.restart()
    assert csms.port == port
    asyncio.run(with_charge_point(csms, "CP_1", start_transaction))
    ids = [csms.reply_to(m) for m in csms.messages(action="StartTransaction", message_type=2)]
    assert [r.payload["transactionId"] for r in ids if r is not None] == [1, 2]
    indexes = [m.index for m in csms.messages()]
    assert indexes == sorted(set(indexes))


def test_stop_closes_the_charge_points_with_going_away(csms: CentralSystem) -> None:
    async def scenario(cp: RawChargePoint) -> None:
        await csms.wait_connected_async("CP_1")
        await asyncio.to_thread(csms.stop)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(cp.ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    asyncio.run(with_charge_point(csms, "CP_1", scenario))
    assert not csms.running
    assert csms.violations() == []  # readable after stop


def test_url_known_before_start_and_a_newer_connection_replaces_the_older(
    csms_factory: Callable[..., CentralSystem],
) -> None:
    csms = csms_factory()
    url = csms.url("CP_1")

    async def scenario() -> None:
        with pytest.raises(OSError):  # the backend is down: refused
            async with connect(url, subprotocols=[Subprotocol("ocpp1.6")], open_timeout=2):
                pass
        await asyncio.to_thread(csms.start)
        assert csms.url("CP_1") == url
        event = {"type": "StartupOfTheDevice", "timestamp": "2026-01-01T00:00:00Z"}
        async with (
            connect(url, subprotocols=[Subprotocol("ocpp1.6")]) as old,
            connect(url, subprotocols=[Subprotocol("ocpp1.6")]) as new,
        ):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(old.recv(), 5)
            answer = await RawChargePoint(new).call("SecurityEventNotification", event)
            assert answer[0] == CALLRESULT
            assert csms.connected() == ["CP_1"]
        await csms.wait_event_async("replaced", "CP_1")

    asyncio.run(scenario())
