"""The site file's ``terminal:`` section: what a technician writes, what the controller gets,
and every rule as ``FILE:LINE: key: message``."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import check_config_text, load_config_text
from drivers.terminal.settings import SerialLink, TcpLink

BASE = """\
site: {id: t, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 10}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.1}}
  - {id: cp2, driver: alfen_ng9xx, transport: {type: tcp, host: 10.0.0.2}}
sessions: {free_vend: false}
tariff: {id: std, currency: EUR, vat_rate_pct: 19, price_per_kwh: "0.39"}
"""


def test_a_serial_terminal_with_its_defaults() -> None:
    cfg = load_config_text(BASE + "terminal: {port: /dev/ttyUSB0, password: 123456}\n")
    t = cfg.terminal
    assert t is not None
    assert t.link == SerialLink(port="/dev/ttyUSB0", baudrate=9600, parity="N", stopbits=2)
    assert (t.profile, t.password, t.connectors) == ("generic", 123456, None)
    assert (t.t1_s, t.t3_s, t.t4_s) == (0.2, 5.0, 180.0)


def test_a_tcp_terminal_serving_one_connector() -> None:
    cfg = load_config_text(
        BASE + "terminal: {host: 127.0.0.1, tcp_port: 20008, profile: feig_cvend, "
        "password: 1, connectors: [cp2], t4_s: 30}\n"
    )
    t = cfg.terminal
    assert t is not None and t.link == TcpLink(host="127.0.0.1", port=20008)
    assert t.connectors == ("cp2",) and t.profile == "feig_cvend" and t.t4_s == 30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("terminal: {password: 1}", "terminal: give either port"),
        ("terminal: {port: /dev/ttyS0, host: 10.0.0.9, password: 1}", "give either port"),
        ("terminal: {port: /dev/ttyS0, connectors: [cp9], password: 1}", "no connector 'cp9'"),
        ("terminal: {port: /dev/ttyS0, profile: ingenico, password: 1}", "terminal.profile"),
    ],
)
def test_terminal_problems_name_the_line_and_key(text: str, message: str) -> None:
    report = check_config_text(BASE + text + "\n")
    assert any(message in p and ":8:" in p for p in report.problems), report.problems


def test_card_payments_need_a_tariff_and_no_free_vend() -> None:
    no_tariff = BASE.replace(
        'tariff: {id: std, currency: EUR, vat_rate_pct: 19, price_per_kwh: "0.39"}\n', ""
    )
    report = check_config_text(no_tariff + "terminal: {port: /dev/ttyS0, password: 1}\n")
    assert any("need a tariff" in p for p in report.problems), report.problems
    free = BASE.replace("sessions: {free_vend: false}\n", "")
    report = check_config_text(free + "terminal: {port: /dev/ttyS0, password: 1}\n")
    assert any("free_vend: false" in p for p in report.problems), report.problems


def test_warnings_default_password_and_a_remote_host() -> None:
    report = check_config_text(BASE + "terminal: {host: 192.168.1.50}\n")
    assert report.config is not None
    assert any("password" in w and "000000" in w for w in report.warnings)
    assert any("not encrypted" in w for w in report.warnings)


def test_config_check_shows_the_terminal(tmp_path: Path) -> None:
    import io
    import json

    from controller.cli.config_check import run_config_check

    path = tmp_path / "site.yaml"
    path.write_text(BASE + "terminal: {host: 127.0.0.1, password: 1, connectors: [cp1]}\n")
    out = io.StringIO()
    assert run_config_check(path, as_json=False, out=out) == 0
    assert (
        "payment terminal terminal: ZVT tcp://127.0.0.1:20007, profile generic, connectors cp1"
        in (out.getvalue())
    )
    out = io.StringIO()
    assert run_config_check(path, as_json=True, out=out) == 0
    doc = json.loads(out.getvalue())
    terminal = doc["site"]["terminal"]
    assert terminal is not None and terminal["link"] == "tcp://127.0.0.1:20007"
