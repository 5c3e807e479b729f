"""The configuration keys store and the frame checks on their own (no network).

Keys: what GetConfiguration shows, what ChangeConfiguration may change, how a value set by the
CSMS and the site file's value take turns, and the file (0600, atomic, refused when damaged).
Frames: the 1.6 error code for each kind of malformed request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.adapters.ocpp.frames import Answer, InboundCall, Refusal, Unreadable, classify
from controller.adapters.ocpp.keys import (
    KEYS,
    ConfigurationKeys,
    KeyError_,
    KeysFileError,
    check_value,
)


def keys(path: Path, **site: str) -> ConfigurationKeys:
    return ConfigurationKeys(path, site_values=site, fixed={"NumberOfConnectors": "2"})


def test_values_come_from_default_site_file_then_csms(tmp_path: Path) -> None:
    path = tmp_path / "ocpp-keys.json"
    k = keys(path, MeterValueSampleInterval="30")
    assert k.get("HeartbeatInterval") == "300"  # default
    assert k.get("MeterValueSampleInterval") == "30"  # site file
    assert k.change("MeterValueSampleInterval", "15").status == "Accepted"
    assert k.number("MeterValueSampleInterval") == 15
    # Read back after a restart: still the CSMS's, while the site file says 30 ...
    assert keys(path, MeterValueSampleInterval="30").get("MeterValueSampleInterval") == "15"
    # ... and the site file's once it says something else.
    assert keys(path, MeterValueSampleInterval="45").get("MeterValueSampleInterval") == "45"


def test_a_secret_baseline_is_stored_as_a_digest_and_a_new_file_key_wins(tmp_path: Path) -> None:
    path = tmp_path / "ocpp-keys.json"
    k = keys(path, AuthorizationKey="file-key-0123456789")
    assert k.change("AuthorizationKey", "csms-key-0123456789").status == "Accepted"
    text = path.read_text()
    assert "file-key-0123456789" not in text  # only its digest
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys(path, AuthorizationKey="file-key-0123456789").secret("AuthorizationKey") == (
        "csms-key-0123456789"
    )
    assert keys(path, AuthorizationKey="new-file-key-012345").secret("AuthorizationKey") == (
        "new-file-key-012345"
    )


def test_change_configuration_answers(tmp_path: Path) -> None:
    k = keys(tmp_path / "k.json")
    assert k.change("NoSuchKey", "1").status == "NotSupported"
    assert k.change("NumberOfConnectors", "3").status == "Rejected"  # fixed by the site
    assert k.change("ChargeProfileMaxStackLevel", "3").status == "Rejected"  # read-only
    assert k.change("HeartbeatInterval", "0").status == "Rejected"  # 1..86400
    assert k.change("LocalPreAuthorize", "TRUE").status == "Accepted"
    assert k.get("LocalPreAuthorize") == "true"
    assert k.change("MeterValuesSampledData", "Voltage").status == "Rejected"
    assert k.change("AuthorizationKey", "short").status == "Rejected"
    heard: list[tuple[str, str]] = []
    k.listeners.append(lambda name, value: heard.append((name, value)))
    assert k.change("HeartbeatInterval", " 60 ").status == "Accepted"
    assert heard == [("HeartbeatInterval", "60")]


def test_get_configuration_never_shows_the_key_and_lists_unknown_ones(tmp_path: Path) -> None:
    k = keys(tmp_path / "k.json", AuthorizationKey="file-key-0123456789")
    every = k.configuration(None)["configurationKey"]
    assert len(every) == len(KEYS)
    assert "file-key-0123456789" not in json.dumps(every)
    assert k.configuration(["Nope", "NumberOfConnectors"]) == {
        "configurationKey": [{"key": "NumberOfConnectors", "readonly": True, "value": "2"}],
        "unknownKey": ["Nope"],
    }


def test_a_damaged_keys_file_is_refused_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text("{not json")
    with pytest.raises(KeysFileError, match="not JSON"):
        keys(path)


def test_an_unwritable_keys_file_rejects_the_change_and_keeps_the_old_value(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "state"
    k = keys(blocker / "k.json")
    blocker.write_text("")  # its directory is now a file: no write can succeed, even as root
    result = k.change("HeartbeatInterval", "60")
    assert result.status == "Rejected" and "cannot write" in result.reason
    assert k.get("HeartbeatInterval") == "300"


@pytest.mark.parametrize(
    ("name", "value", "normal"),
    [
        ("AllowOfflineTxForUnknownId", "False", "false"),
        ("ClockAlignedDataInterval", "900", "900"),
        ("StopTxnSampledData", "", ""),
        (
            "MeterValuesSampledData",
            "Current.Import, Current.Offered",
            "Current.Import,Current.Offered",
        ),
    ],
)
def test_check_value_normal_spellings(name: str, value: str, normal: str) -> None:
    assert check_value(KEYS[name], value) == normal


def test_check_value_refuses_with_the_rule() -> None:
    with pytest.raises(KeyError_, match=r"within 1\.\.100"):
        check_value(KEYS["TransactionMessageAttempts"], "0")


SUPPORTED = frozenset({"GetConfiguration", "ChangeConfiguration", "RemoteStartTransaction"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[2,"a","NoSuchAction",{}]', "NotImplemented"),
        ('[2,"a","GetDiagnostics",{"location":"x"}]', "NotSupported"),
        ('[2,"a","BootNotification",{}]', "NotSupported"),  # only charge points send it
        ('[2,"a","ChangeConfiguration",{"key":"k"}]', "OccurenceConstraintViolation"),
        ('[2,"a","ChangeConfiguration",{"key":1,"value":"v"}]', "TypeConstraintViolation"),
        ('[2,"a","ChangeConfiguration",{"key":"' + "k" * 51 + '","value":"v"}]',
         "PropertyConstraintViolation"),
        ('[2,"a","RemoteStartTransaction",{"idTag":"t","chargingProfile":{"chargingProfileId":1,'
         '"stackLevel":0,"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute",'
         '"chargingSchedule":{"chargingRateUnit":"A","chargingSchedulePeriod":'
         '[{"startPeriod":0,"limit":16.25}]}}}]', "PropertyConstraintViolation"),
        ('[2,"a","ChangeConfiguration",{"key":"k","value":"v","x":1}]', "FormationViolation"),
        ('[2,"a","GetConfiguration","{}"]', "FormationViolation"),
        ('[2,"a","GetConfiguration",{},1]', "FormationViolation"),
        ('[7,"a","GetConfiguration",{}]', "FormationViolation"),
    ],
)  # fmt: skip
def test_each_malformed_request_gets_its_1_6_error_code(text: str, expected: str) -> None:
    found = classify(text, SUPPORTED)
    assert isinstance(found, Refusal), found
    assert found.code == expected and found.unique_id == "a"
    frame = json.loads(found.frame())
    assert frame[:3] == [4, "a", expected] and frame[4] == {}


def test_what_is_not_a_refusal() -> None:
    assert isinstance(classify("nope", SUPPORTED), Unreadable)
    assert isinstance(classify("[2]", SUPPORTED), Unreadable)
    assert isinstance(classify('[2, 5, "GetConfiguration", {}]', SUPPORTED), Unreadable)
    assert isinstance(classify('[3,"a",{}]', SUPPORTED), Answer)
    ok = classify('[2,"a","ChangeConfiguration",{"key":"k","value":"v"}]', SUPPORTED)
    assert ok == InboundCall(unique_id="a", action="ChangeConfiguration",
                             payload={"key": "k", "value": "v"})  # fmt: skip


def test_a_refusal_never_repeats_the_value_it_refused() -> None:
    """The description goes to the log: a malformed AuthorizationKey must not end up there."""
    secret = "s3cret" * 90  # longer than ChangeConfiguration's 500 characters
    text = json.dumps([2, "a", "ChangeConfiguration", {"key": "AuthorizationKey", "value": secret}])
    found = classify(text, SUPPORTED)
    assert isinstance(found, Refusal) and found.code == "PropertyConstraintViolation"
    assert "s3cret" not in found.description and "maxLength 500" in found.description


def test_reconnect_backoff_doubles_to_its_cap_with_jitter(tmp_path: Path) -> None:
    import random

    from tests.adapters.ocpp.rig import Site, settings

    site = Site(tmp_path / "state", settings("ws://127.0.0.1:9/ocpp"))
    station = site.station
    station._rng = random.Random(7)
    waits = [[station._backoff_s(attempt) for _ in range(200)] for attempt in range(6)]
    # reconnect_min_s 0.1, reconnect_max_s 0.5: bases 0.1, 0.2, 0.4, 0.5, 0.5, ...
    for attempt, base in enumerate([0.1, 0.2, 0.4, 0.5, 0.5, 0.5]):
        assert all(base / 2 <= w <= base for w in waits[attempt])
        assert max(waits[attempt]) - min(waits[attempt]) > base / 4  # spread: no lockstep
    site.db.close()
