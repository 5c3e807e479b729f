"""End to end: the real `evsite run` with the simulated site and the strict test CSMS.

- a working day: boot, heartbeats, statuses, an RFID transaction with meter values, a remote
  start and stop, a ChargePointMaxProfile and a TxProfile lowering the simulated EVSEs'
  setpoints, GetCompositeSchedule, malformed and unknown requests answered with 1.6 CALLERRORs
  on the same connection;
- a backend outage of many retry intervals with a transaction starting (authorised by the
  local list) and ending inside it, everything delivered afterwards in order exactly once;
  then a SIGKILL mid-transaction: the transaction whose car stayed goes on with its
  transactionId, the one whose car left meanwhile ends with PowerLoss and its last meter value;
- security profile 2 with a test CA and Basic auth, and wrong credentials refused (401) with
  backoff, never spinning, the key never in evsite's log.

The central system fails a test that leaves any schema violation (conftest.py): the whole run
has zero. Intervals are shortened through the ocpp keys of the site file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli.client import request
from hil.scenario import Scenario, scenario_from_dict
from tests.adapters.ocpp.csms import CALL, CALLRESULT, CentralSystem, TlsFiles
from tests.e2e.rig import Controller, SimThread

pytestmark = [pytest.mark.slow, pytest.mark.hil]

ID = "e2e-ocpp"
KEYS = {
    "MeterValueSampleInterval": 2,
    "TransactionMessageRetryInterval": 1,
    "TransactionMessageAttempts": 3,
}


def scenario(visits: dict[str, list[dict[str, Any]]]) -> Scenario:
    """Three Alfen sockets on a 63 A connection; EV visits as given (arrival/departure s)."""
    evses = []
    for cid, rotation in (("cp1", "L1L2L3"), ("cp2", "L2L3L1"), ("cp3", "L3L1L2")):
        evses.append(
            {
                "id": cid,
                "phase_rotation": rotation,
                "max_current_a": 32,
                "safe_current_a": 6,
                "validity_time_s": 60,
                "evs": [
                    {"phases": 3, "max_current_a": 16, "energy_need_wh": 80000,
                     "response_lag_s": 1, **v}
                    for v in visits.get(cid, [])
                ],
            }
        )  # fmt: skip
    return scenario_from_dict(
        {
            "name": "ocpp-e2e",
            "description": "OCPP end-to-end",
            "site": {"id": ID, "timezone": "Europe/Berlin", "nominal_voltage_v": 230,
                     "grid_rating_a": 63, "grid_margin_a": 1},
            "building": {"steps": [{"at_s": 0, "current_a": [4, 3, 3]}], "noise_a": 0.0,
                         "seed": 1},
            "evses": evses,
        }
    )  # fmt: skip


@contextmanager
def simulated(tmp: Path, visits: dict[str, list[dict[str, Any]]]) -> Iterator[SimThread]:
    sim = SimThread(scenario(visits), tmp / "trace.jsonl")
    try:
        yield sim
    finally:
        sim.close()


def write_config(tmp: Path, sim: SimThread, **ocpp: Any) -> Path:
    config = sim.site.site_config(state_dir=tmp / "state", runtime_dir=tmp / "run")
    config["sessions"] = {"free_vend": False}
    # Fast ramps, so the EVs reach their share within seconds (load-management.md).
    config["load_management"] = {"ramp_step_a": 10, "ramp_period_s": 1, "settle_s": 1,
                                 "follow_tolerance_a": 2}  # fmt: skip
    config["ocpp"] = {
        "call_timeout_s": 5,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "keys": dict(KEYS),
        **ocpp,
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def wait_sim(sim: SimThread, t_s: float) -> None:
    while sim.do(sim.site.now_s) < t_s:
        time.sleep(0.1)


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def reply(csms: CentralSystem, message: Any) -> Any:
    """The CSMS's answer to a charge point's CALL, once it is in the log."""
    found: list[Any] = []
    wait(lambda: bool(found.append(csms.reply_to(message)) or found[-1]), 5, "the answer")
    return found[-1]


def tag(ctl: Controller, connector: str, id_tag: str) -> dict[str, Any]:
    return request(ctl.socket, "session_tag", timeout_s=15.0, connector=connector, id_tag=id_tag)


def ocpp_status(ctl: Controller) -> dict[str, Any]:
    station: dict[str, Any] = ctl.status()["ocpp"]["stations"][0]
    return station


def connectors(ctl: Controller) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in ctl.status()["connectors"]}


def calls(csms: CentralSystem, action: str, since: int = 0) -> list[Any]:
    return csms.messages(ID, action, "from_cp", CALL, since=since)


def profile(connector: int, pid: int, purpose: str, limit: float, **extra: Any) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "csChargingProfiles": {
            "chargingProfileId": pid,
            "stackLevel": 1,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            **extra,
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            },
        },
    }


def test_a_working_day_transactions_remote_commands_profiles_and_errors(
    tmp_path: Path, csms: CentralSystem
) -> None:
    csms.configure(
        heartbeat_interval_s=2,
        id_tags={"RFID1": "Accepted", "APP": "Accepted"},
        next_transaction_id=1000,
    )
    visits = {"cp1": [{"arrival_s": 1, "departure_s": None}],
              "cp2": [{"arrival_s": 1, "departure_s": None}]}  # fmt: skip
    with simulated(tmp_path, visits) as sim:
        ctl = Controller(
            write_config(tmp_path, sim, url=csms.url("")[:-1]), tmp_path / "evsite.log"
        )
        try:
            ctl.wait_socket()
            csms.wait_connected(ID, timeout_s=10)
            boot = csms.wait_for("BootNotification", identity=ID)
            assert boot.payload["chargePointModel"] == "evsite-gateway"
            csms.wait_for("Heartbeat", timeout_s=6)
            for n in (0, 1, 2, 3):
                csms.wait_for("StatusNotification", lambda p, n=n: p["connectorId"] == n)
            # Plugged in, not authorised: Preparing, and no current.
            csms.wait_for(
                "StatusNotification",
                lambda p: p["connectorId"] == 1 and p["status"] == "Preparing",
                timeout_s=8,
            )
            assert connectors(ctl)["cp1"]["limit_a"] == 0

            # RFID at cp1: Authorize, StartTransaction, current, meter values.
            answer = tag(ctl, "cp1", "RFID1")
            assert answer["ok"] and answer["result"] == "authorised", answer
            csms.wait_for("Authorize", lambda p: p["idTag"] == "RFID1")
            start1 = csms.wait_for("StartTransaction", lambda p: p["connectorId"] == 1)
            tx1 = reply(csms, start1)
            assert tx1 is not None and tx1.payload["transactionId"] == 1000
            csms.wait_for(
                "StatusNotification",
                lambda p: p["connectorId"] == 1 and p["status"] == "Charging",
                timeout_s=15,
            )

            def offers(p: dict[str, Any]) -> bool:
                values = p["meterValue"][0]["sampledValue"]
                return any(s.get("measurand") == "Current.Offered" for s in values)

            mv = csms.wait_for(
                "MeterValues", lambda p: p.get("transactionId") == 1000 and offers(p), timeout_s=8
            )
            offered = next(
                float(s["value"]) for s in mv.payload["meterValue"][0]["sampledValue"]
                if s.get("measurand") == "Current.Offered"
            )  # fmt: skip
            assert offered >= 6.0

            # Remote start at cp2 (its car waits), then both charge.
            assert csms.call(ID, "RemoteStartTransaction", {"idTag": "APP", "connectorId": 2}) == {
                "status": "Accepted"
            }
            start2 = csms.wait_for("StartTransaction", lambda p: p["connectorId"] == 2)
            tx2 = reply(csms, start2)
            assert tx2 is not None and tx2.payload["transactionId"] == 1001
            wait(lambda: connectors(ctl)["cp2"]["limit_a"] >= 6, 15, "cp2 charging")

            def total_a() -> float:
                snap = sim.do(sim.site.snapshot)["evses"]
                return float(sum(snap[c]["applied_limit_a"] for c in ("cp1", "cp2")))

            wait(lambda: total_a() > 20.0, 20, "both EVs ramped up (16 A each)")

            def applied(cid: str) -> float:
                return float(sim.do(sim.site.snapshot)["evses"][cid]["applied_limit_a"])

            # A TxProfile of 8 A on cp1's transaction: the EVSE follows, cp2 does not.
            tx_profile = profile(1, 2, "TxProfile", 8.0, transactionId=1000)
            assert csms.call(ID, "SetChargingProfile", tx_profile) == {"status": "Accepted"}
            wait(lambda: applied("cp1") <= 8.0, 10, "cp1 at its 8 A TxProfile")
            assert connectors(ctl)["cp1"]["bound_by"] == "slot ocpp:connector-1"
            assert applied("cp2") > 8.0
            comp = csms.call(ID, "GetCompositeSchedule", {"connectorId": 1, "duration": 300})
            assert comp["status"] == "Accepted"
            assert comp["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 8

            # ChargePointMaxProfile 12 A: both EVs together within 12 A per phase.
            ok = csms.call(ID, "SetChargingProfile", profile(0, 1, "ChargePointMaxProfile", 12.0))
            assert ok == {"status": "Accepted"}

            def bound_by_max() -> bool:
                conns = connectors(ctl)
                return any(conns[c]["bound_by"] == "slot ocpp:max" for c in ("cp1", "cp2"))

            wait(lambda: total_a() <= 12.0 and bound_by_max(), 10, "the EVSEs under the 12 A max")
            comp0 = csms.call(ID, "GetCompositeSchedule", {"connectorId": 0, "duration": 300})
            assert comp0["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 12
            # A profile above the ratings is clamped, never obeyed: 80 A on cp2 (rated 32 A).
            loose = profile(2, 3, "TxDefaultProfile", 80.0)
            assert csms.call(ID, "SetChargingProfile", loose) == {"status": "Accepted"}
            comp2 = csms.call(ID, "GetCompositeSchedule", {"connectorId": 2, "duration": 300})
            assert comp2["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] <= 12
            assert csms.call(ID, "ClearChargingProfile", {"id": 3}) == {"status": "Accepted"}

            # Malformed and unknown requests: 1.6 CALLERRORs, on the same connection.
            connects = len([e for e in csms.events(ID) if e.event == "connected"])
            for text, code in (
                ('[2,"x1","Teleport",{}]', "NotImplemented"),
                ('[2,"x2","GetDiagnostics",{"location":"ftp://x"}]', "NotSupported"),
                ('[2,"x3","RemoteStopTransaction",{}]', "OccurenceConstraintViolation"),
                ('[2,"x4","RemoteStopTransaction",{"transactionId":"1000"}]',
                 "TypeConstraintViolation"),
                ('[2,"x5","TriggerMessage",{"requestedMessage":"Coffee"}]',
                 "PropertyConstraintViolation"),
                ('[2,"x6","ClearCache",{"all":true}]', "FormationViolation"),
            ):  # fmt: skip
                frame = json.loads(csms.send_raw(ID, text) or "null")
                assert frame[:3] == [4, text.split('"')[1], code], (text, frame)
            assert len([e for e in csms.events(ID) if e.event == "connected"]) == connects

            # Remote stop of cp2, a local stop (the same card) of cp1.
            assert csms.call(ID, "RemoteStopTransaction", {"transactionId": 1001}) == {
                "status": "Accepted"
            }
            stop2 = csms.wait_for("StopTransaction", lambda p: p["transactionId"] == 1001)
            assert stop2.payload["reason"] == "Remote"
            answer = tag(ctl, "cp1", "RFID1")
            assert answer["result"] == "stopped", answer
            stop1 = csms.wait_for("StopTransaction", lambda p: p["transactionId"] == 1000)
            assert stop1.payload["reason"] == "Local"
            assert stop1.payload["meterStop"] > start1.payload["meterStart"]
            # The TxProfile ended with its transaction; the Max profile stays.
            wait(lambda: ocpp_status(ctl)["profiles"] == 1, 5, "the TxProfile to go")
            wait(lambda: ocpp_status(ctl)["messages_queued"] == 0, 5, "the outbox to drain")
            csms.wait_for(
                "StatusNotification",
                lambda p: p["connectorId"] == 1 and p["status"] == "Finishing",
            )
        finally:
            ctl.terminate()
    assert "Traceback" not in (tmp_path / "evsite.log").read_text()


def test_an_outage_of_many_retry_intervals_then_a_sigkill_mid_transaction(
    tmp_path: Path, csms: CentralSystem
) -> None:
    tags = {"LISTED": "Accepted", "CP2": "Accepted", "CP3": "Accepted"}
    csms.configure(heartbeat_interval_s=5, id_tags=tags, next_transaction_id=50)
    visits = {
        "cp1": [{"arrival_s": 9, "departure_s": 19}],  # inside the outage
        "cp2": [{"arrival_s": 1, "departure_s": None}],  # charges across the restart
        "cp3": [{"arrival_s": 1, "departure_s": 36}],  # leaves while the controller is dead
    }
    with simulated(tmp_path, visits) as sim:
        config = write_config(tmp_path, sim, url=csms.url("")[:-1])
        ctl = Controller(config, tmp_path / "evsite.log")
        try:
            ctl.wait_socket()
            csms.wait_for("BootNotification", identity=ID, timeout_s=10)
            listed = {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
                {"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}]}  # fmt: skip
            assert csms.call(ID, "SendLocalList", listed) == {"status": "Accepted"}
            assert tag(ctl, "cp2", "CP2")["result"] == "authorised"
            assert tag(ctl, "cp3", "CP3")["result"] == "authorised"
            csms.wait_for("StartTransaction", lambda p: p["connectorId"] == 3)
            mark = csms.mark()

            # The backend goes away for > 10 retry intervals (1 s each).
            csms.stop()
            wait_sim(sim, 10)
            answer = tag(ctl, "cp1", "LISTED")  # offline: the local list says Accepted
            assert answer["result"] == "authorised", answer
            wait_sim(sim, 20.5)  # cp1's car left at 19 s: its transaction ended offline
            st = ocpp_status(ctl)
            assert st["state"] != "online" and st["messages_queued"] >= 3, st
            csms.start()

            stop1 = csms.wait_for(
                "StopTransaction", lambda p: p["reason"] == "EVDisconnected", timeout_s=15,
                since=mark,
            )  # fmt: skip
            starts = [
                m for m in calls(csms, "StartTransaction", mark) if m.payload["connectorId"] == 1
            ]
            assert len(starts) == 1, "the offline start went exactly once"
            start1 = starts[0]
            answer1 = reply(csms, start1)
            assert answer1.message_type == CALLRESULT
            txid1 = answer1.payload["transactionId"]
            assert stop1.payload["transactionId"] == txid1
            assert start1.payload["idTag"] == "LISTED"
            # In order, exactly once: Start, then its meter values, then its Stop; the offline
            # meter values carry the transactionId the backend gave after the outage.
            mine = [
                m for m in csms.messages(ID, direction="from_cp", message_type=CALL, since=mark)
                if m.action in ("StartTransaction", "StopTransaction", "MeterValues")
                and (m.payload.get("connectorId") == 1 or m.payload.get("transactionId") == txid1)
            ]  # fmt: skip
            kinds = [m.action for m in mine]
            assert kinds[0] == "StartTransaction" and kinds[-1] == "StopTransaction", kinds
            assert kinds.count("StopTransaction") == 1
            meter = [m for m in mine if m.action == "MeterValues"]
            assert len(meter) >= 3, kinds  # sampled every 2 s over ~10 s offline
            assert all(m.payload["transactionId"] == txid1 for m in meter)
            stamps = [m.payload["meterValue"][0]["timestamp"] for m in meter]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
            wait(lambda: ocpp_status(ctl)["messages_queued"] == 0, 10, "the outbox to drain")
            assert ocpp_status(ctl)["messages_dropped"] == 0

            # SIGKILL mid-transaction: cp2 goes on, cp3's car leaves at 36 s while we are down.
            tx2 = reply(
                csms,
                next(m for m in calls(csms, "StartTransaction") if m.payload["connectorId"] == 2),
            )
            tx3 = reply(
                csms,
                next(m for m in calls(csms, "StartTransaction") if m.payload["connectorId"] == 3),
            )
            assert tx2 is not None and tx3 is not None
            wait_sim(sim, 33)
            ctl.kill()
            wait_sim(sim, 37)
            before = csms.mark()
            ctl = Controller(config, tmp_path / "evsite-2.log")
            ctl.wait_socket()
            stop3 = csms.wait_for("StopTransaction", timeout_s=15, since=before)
            assert stop3.payload["transactionId"] == tx3.payload["transactionId"]
            assert stop3.payload["reason"] == "PowerLoss"
            later = csms.wait_for(
                "MeterValues",
                lambda p: p.get("transactionId") == tx2.payload["transactionId"],
                timeout_s=10,
                since=before,
            )
            assert later.payload["connectorId"] == 2
            assert not [m for m in calls(csms, "StartTransaction", before)], "no second start"
            assert csms.call(
                ID, "RemoteStopTransaction", {"transactionId": tx2.payload["transactionId"]}
            ) == {"status": "Accepted"}
            stop2 = csms.wait_for(
                "StopTransaction", lambda p: p["reason"] == "Remote", since=before
            )
            assert stop2.payload["transactionId"] == tx2.payload["transactionId"]
        finally:
            ctl.terminate()


def test_security_profile_2_and_wrong_credentials(
    tmp_path: Path,
    csms_factory: Callable[..., CentralSystem],
    csms_tls_files: TlsFiles,
) -> None:
    secret = "s3cret-key-of-twenty-chars"
    csms = csms_factory(tls=csms_tls_files, password=secret)
    csms.start()
    key_file = tmp_path / "ocpp-key.yaml"
    key_file.write_text(f"authorization_key: {secret}\n")
    key_file.chmod(0o600)
    with simulated(tmp_path, {}) as sim:
        config = write_config(
            tmp_path,
            sim,
            url=f"wss://localhost:{csms.port}/ocpp",
            security_profile=2,
            tls={"ca_file": str(csms_tls_files.ca_file)},
            credentials_file=str(key_file),
        )
        ctl = Controller(config, tmp_path / "evsite.log")
        try:
            ctl.wait_socket()
            boot = csms.wait_for("BootNotification", identity=ID, timeout_s=10)
            assert boot.payload["chargePointVendor"] == "evsite"
            wait(lambda: ocpp_status(ctl)["state"] == "online", 5, "online over wss://")
            assert ocpp_status(ctl)["url"].startswith("wss://")
        finally:
            ctl.terminate()
        # Wrong key: 401, reported, backed off (0.2 .. 1 s), not spun on.
        key_file.write_text("authorization_key: wrong-key-of-twenty-chars\n")
        ctl = Controller(config, tmp_path / "evsite-2.log")
        try:
            ctl.wait_socket()
            wait(lambda: "401" in str(ocpp_status(ctl)["last_error"]), 10, "the 401 in the status")
            shown = ctl.cli("status").stdout
            assert f"OCPP {ID} (wss://localhost:{csms.port}/ocpp/{ID}): " in shown, shown
            assert "HTTP 401" in shown
            mark = csms.mark()
            time.sleep(4.0)
            refused = [e for e in csms.events(ID, since=mark) if e.event == "rejected"]
            assert 2 <= len(refused) <= 25, refused
        finally:
            ctl.terminate()
        logs = (tmp_path / "evsite.log").read_text() + (tmp_path / "evsite-2.log").read_text()
        assert secret not in logs and "wrong-key-of-twenty-chars" not in logs
        assert "ocpp_connect_failed" in logs and "HTTP 401" in logs
        # A CA that did not sign the CSMS's certificate: no connection at all.
        config_doc = yaml.safe_load(config.read_text())
        config_doc["ocpp"]["tls"]["ca_file"] = str(csms_tls_files.other_ca_file)
        key_file.write_text(f"authorization_key: {secret}\n")
        config.write_text(yaml.safe_dump(config_doc, sort_keys=False))
        mark = csms.mark()
        ctl = Controller(config, tmp_path / "evsite-3.log")
        try:
            ctl.wait_socket()
            wait(
                lambda: "CERTIFICATE_VERIFY_FAILED" in str(ocpp_status(ctl)["last_error"]),
                10,
                "the certificate failure in the status",
            )
            assert not [e for e in csms.events(ID, since=mark) if e.event == "connected"]
        finally:
            ctl.terminate()
