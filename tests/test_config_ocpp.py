"""Tests of the ``ocpp:`` section of the site file: each rule by its full FILE:LINE message."""

from __future__ import annotations

from pathlib import Path

from controller.config import check_config_text, load_config_text

SITE = """\
site: {id: depot-7, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 192.168.1.31}}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 192.168.1.32}}
"""
SRC = Path("site.yaml")


def problems(text: str) -> list[str]:
    return list(check_config_text(SITE + text, source=SRC).problems)


def line_of(text: str, needle: str) -> int:
    whole = SITE + text
    return next(i for i, line in enumerate(whole.splitlines(), 1) if needle in line)


def test_defaults_identity_from_the_site_and_profile_from_the_scheme(tmp_path: Path) -> None:
    config = load_config_text(SITE + "ocpp: {url: 'ws://127.0.0.1:9000/ocpp'}\n")
    ocpp = config.ocpp
    assert ocpp is not None
    assert ocpp.identity == "depot-7" and ocpp.security_profile == 0
    assert ocpp.identities(["cp1", "cp2"]) == {"depot-7": {1: "cp1", 2: "cp2"}}
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    key = tmp_path / "key.yaml"
    key.write_text("authorization_key: 0123456789abcdef0123\n")
    text = (
        "ocpp:\n"
        "  url: wss://csms.example.com/ocpp\n"
        "  identity: DEPOT7\n"
        "  topology: per_evse\n"
        f"  tls: {{ca_file: {ca}}}\n"
        f"  credentials_file: {key}\n"
        "  keys: {HeartbeatInterval: 120, AllowOfflineTxForUnknownId: true}\n"
    )
    secure = load_config_text(SITE + text).ocpp
    assert secure is not None and secure.security_profile == 2
    assert secure.keys == {"HeartbeatInterval": "120", "AllowOfflineTxForUnknownId": "true"}
    assert secure.identities(["cp1", "cp2"]) == {"DEPOT7-cp1": {1: "cp1"}, "DEPOT7-cp2": {1: "cp2"}}


def test_no_downgrade_a_ws_url_cannot_be_profile_2() -> None:
    text = "ocpp: {url: 'ws://csms.example.com/ocpp', security_profile: 2}\n"
    line = line_of(text, "ocpp:")
    assert f"site.yaml:{line}: ocpp.url: security profile 2 needs a wss:// URL (TLS); ws:// " \
        "would be a downgrade" in problems(text)  # fmt: skip


def test_profile_1_and_2_need_the_authorization_key_and_wss_needs_a_ca() -> None:
    text = "ocpp:\n  url: wss://csms.example.com/ocpp\n"
    found = problems(text)
    line = line_of(text, "ocpp:")
    assert (
        f"site.yaml:{line}: ocpp.credentials_file: security profile 2 needs the AuthorizationKey "
        "(a file with authorization_key: ...)"
    ) in found
    assert f"site.yaml:{line}: ocpp.tls: missing: wss:// needs tls: {{ca_file: ...}}" in found


def test_keys_unknown_read_only_and_malformed_by_line() -> None:
    text = (
        "ocpp:\n"
        "  url: ws://127.0.0.1:9000/ocpp\n"
        "  keys:\n"
        "    HeartbeatIntervall: 60\n"
        "    NumberOfConnectors: 4\n"
        "    MeterValuesSampledData: Voltage\n"
        "    AuthorizationKey: '0123456789abcdef0123'\n"
    )
    found = problems(text)
    assert any(
        p.startswith(f"site.yaml:{line_of(text, 'Intervall')}: ocpp.keys.HeartbeatIntervall: ")
        and "HeartbeatInterval" in p
        for p in found
    ), found
    assert (
        f"site.yaml:{line_of(text, 'NumberOf')}: ocpp.keys.NumberOfConnectors: read-only: "
        "evsite sets it"
    ) in found
    assert any(
        p.startswith(f"site.yaml:{line_of(text, 'Voltage')}: ocpp.keys.MeterValuesSampledData: ")
        and "Voltage not supported" in p
        for p in found
    ), found
    assert (
        f"site.yaml:{line_of(text, 'AuthorizationKey')}: ocpp.keys.AuthorizationKey: put the "
        "AuthorizationKey in credentials_file, not in the site file"
    ) in found


def test_url_with_credentials_or_a_bad_identity_is_refused() -> None:
    found = problems("ocpp: {url: 'ws://user:pw@csms/ocpp', identity: 'a/b'}\n")
    assert any("ocpp.url: the CSMS endpoint without the identity" in p for p in found), found
    assert any("ocpp.identity: an OCPP identity is 1 to 48" in p for p in found), found


def test_config_check_shows_the_charge_points(tmp_path: Path) -> None:
    import io
    import json

    from controller.cli.config_check import run_config_check

    path = tmp_path / "site.yaml"
    path.write_text(
        SITE + "ocpp: {url: 'ws://127.0.0.1:9000/ocpp', keys: {HeartbeatInterval: 120}}\n"
    )
    out = io.StringIO()
    assert run_config_check(path, as_json=False, out=out) == 0
    assert (
        "ocpp: ws://127.0.0.1:9000/ocpp, security profile 0, charge points depot-7 (1=cp1, 2=cp2)"
        in out.getvalue()
    )
    out = io.StringIO()
    assert run_config_check(path, as_json=True, out=out) == 0
    ocpp = json.loads(out.getvalue())["site"]["ocpp"]
    assert ocpp["charge_points"] == {"depot-7": {"1": "cp1", "2": "cp2"}}
    assert ocpp["keys"] == {"HeartbeatInterval": "120"}
