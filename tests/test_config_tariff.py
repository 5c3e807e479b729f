"""Tests of the ``tariff:`` section of the site file, the cloud tariff payload, and the tariff in
`evsite config check`. Like tests/test_config.py: each rule by its full message, with the file,
the line of the key and the key path.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from controller.cli.config_check import run_config_check
from controller.config import (
    TariffPayload,
    check_config,
    load_config,
    tariff_from_payload,
)
from controller.core.errors import ConfigError
from controller.core.tariff import Tariff, preauth_amount_cents

REPO = Path(__file__).resolve().parents[1]

SITE = """\
site: {id: demo, timezone: Europe/Berlin}
grid: {rating_a: 63, worst_case_non_ev_a: 20}
evses:
  - {id: cp1, driver: alfen_ng9xx, transport: {type: tcp, host: 192.168.1.31}}
"""

TARIFF = """\
tariff:
  id: std
  name: Standard
  currency: EUR
  vat_rate_pct: 19
  price_per_kwh: 0.39
  time_of_use:
    - {name: night, days: daily, start: "22:00", end: "06:00", price_per_kwh: 0.29}
  price_per_minute: "0.0125"
  session_fee: 0.5
  idle_fee_per_minute: 0.10
  idle_grace_min: 30
  preauth_cents: 3000
  preauth_cap_cents: 5000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the text")


def edit(old: str, new: str, text: str = SITE + TARIFF) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def problems(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = write(tmp_path, text)
    report = check_config(path)
    assert report.config is None, "expected the file to be refused"
    return path, list(report.problems)


def expect(tmp_path: Path, text: str, needle: str, key: str, message: str) -> None:
    """Exactly this problem: ``FILE:LINE: key: message`` with LINE the line of ``needle``."""
    path, found = problems(tmp_path, text)
    assert found == [f"{path}:{line_of(text, needle)}: {key}: {message}"]


def tariff_of(tmp_path: Path, text: str) -> Tariff:
    config = load_config(write(tmp_path, text))
    assert config.tariff is not None
    return config.tariff


# --- loading ---------------------------------------------------------------------------------


def test_the_tariff_loads_into_the_core_tariff_with_exact_prices(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SITE + TARIFF))
    assert config.warnings == ()
    t = config.tariff
    assert t is not None
    assert (t.id, t.name, t.currency, t.vat_rate_pct) == ("std", "Standard", "EUR", Decimal(19))
    # YAML reads 0.39 as a binary float; the loader goes through its text, so it stays 0.39.
    assert t.price_per_kwh == Decimal("0.39") and str(t.price_per_kwh) == "0.39"
    assert t.price_per_minute == Decimal("0.0125")
    assert t.session_fee == Decimal("0.5") and t.idle_fee_per_minute == Decimal("0.10")
    assert t.idle_grace_min == 30
    (night,) = t.time_of_use
    assert night.name == "night" and night.price_per_kwh == Decimal("0.29")
    assert str(night.start) == "22:00:00" and str(night.end) == "06:00:00"
    assert (t.preauth_cents, t.preauth_cap_cents, preauth_amount_cents(t)) == (3000, 5000, 3000)


def test_defaults_and_a_site_without_a_tariff(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, SITE)).tariff is None
    assert load_config(write(tmp_path, SITE + "tariff:\n")).tariff is None
    minimal = "tariff: {id: t, currency: CHF, vat_rate_pct: 8.1, price_per_kwh: 1}\n"
    t = tariff_of(tmp_path, SITE + minimal)
    assert t.name == "t" and t.vat_rate_pct == Decimal("8.1") and t.price_per_kwh == 1
    assert t.time_of_use == () and t.session_fee == 0 and t.idle_fee_per_minute == 0
    assert t.preauth_cents == 2500 and t.preauth_cap_cents is None


def test_the_example_site_has_a_tariff() -> None:
    t = load_config(REPO / "config" / "example-site.yaml").tariff
    assert t is not None and t.currency == "EUR" and t.price_per_kwh == Decimal("0.39")


def test_the_tariff_example_in_the_configuration_reference_loads(tmp_path: Path) -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("### `tariff`: what a session costs\n", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, SITE + block))
    assert config.warnings == () and config.tariff is not None
    assert config.tariff.price_per_kwh == Decimal("0.39")


# --- one key at a time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "currency: EUR",
            "currency: eur",
            "tariff.currency",
            "expected an ISO 4217 currency code of three capital letters like 'EUR', got 'eur' "
            "(write 'EUR')",
        ),
        (
            "currency: EUR",
            "currency: EURO",
            "tariff.currency",
            "expected an ISO 4217 currency code of three capital letters like 'EUR', got 'EURO'",
        ),
        (
            "vat_rate_pct: 19",
            "vat_rate_pct: 120",
            "tariff.vat_rate_pct",
            "must be within 0..100 (percent), got 120",
        ),
        ("vat_rate_pct: 19", "vat_rate_pct: -1", "tariff.vat_rate_pct", "must be >= 0, got -1"),
        (
            "price_per_kwh: 0.39",
            "price_per_kwh: 0.39123",
            "tariff.price_per_kwh",
            "at most 4 decimal places, got 0.39123",
        ),
        (
            "price_per_kwh: 0.39",
            "price_per_kwh: abc",
            "tariff.price_per_kwh",
            "expected a number, got 'abc'",
        ),
        (
            "price_per_kwh: 0.39",
            "price_per_kwh: true",
            "tariff.price_per_kwh",
            "expected a number, got true",
        ),
        (
            "price_per_kwh: 0.39",
            "price_per_kwh: .nan",
            "tariff.price_per_kwh",
            "must be a finite number, got nan",
        ),
        ("session_fee: 0.5", "session_fee: -0.5", "tariff.session_fee", "must be >= 0, got -0.5"),
        (
            "idle_grace_min: 30",
            "idle_grace_min: -5",
            "tariff.idle_grace_min",
            "must be >= 0, got -5",
        ),
        ("preauth_cents: 3000", "preauth_cents: 0", "tariff.preauth_cents", "must be > 0, got 0"),
        (
            "preauth_cents: 3000",
            "preauth_cents: 30.5",
            "tariff.preauth_cents",
            "expected a whole number, got 30.5",
        ),
        (
            "preauth_cap_cents: 5000",
            "preauth_cap_cents: -1",
            "tariff.preauth_cap_cents",
            "must be > 0, got -1",
        ),
        (
            "idle_grace_min: 30",
            "idle_grace_mins: 30",
            "tariff.idle_grace_mins",
            "unknown key 'idle_grace_mins'; did you mean 'idle_grace_min'?",
        ),
        (
            "price_per_kwh: 0.29}",
            "price_per_kwh: 0.29, price: 1}",
            "tariff.time_of_use[0].price",
            "unknown key 'price'; valid keys here: name, days, start, end, price_per_kwh",
        ),
        (
            'start: "22:00"',
            'start: "7:00"',
            "tariff.time_of_use[0].start",
            "expected a time as 'HH:MM' (00:00..23:59), got '7:00' (write '07:00')",
        ),
        (
            "days: daily",
            "days: [mon, tuz]",
            "tariff.time_of_use[0].days",
            "unknown day 'tuz'; use mon, tue, wed, thu, fri, sat, sun (did you mean 'tue'?)",
        ),
        (
            "price_per_kwh: 0.29}",
            "price_per_kwh: -0.29}",
            "tariff.time_of_use[0].price_per_kwh",
            "must be >= 0, got -0.29",
        ),
    ],
)
def test_a_bad_value_names_its_line_and_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    expect(tmp_path, edit(old, new), new, key, message)


def test_quoted_and_whole_prices_are_exact_too(tmp_path: Path) -> None:
    t = tariff_of(tmp_path, edit("price_per_kwh: 0.39", 'price_per_kwh: "0.3949"'))
    assert t.price_per_kwh == Decimal("0.3949")
    t = tariff_of(tmp_path, edit("session_fee: 0.5", "session_fee: 2"))
    assert t.session_fee == Decimal(2)


def test_missing_required_keys(tmp_path: Path) -> None:
    text = edit("  price_per_kwh: 0.39\n", "")
    text = edit("  currency: EUR\n", "", text)
    path, found = problems(tmp_path, text)
    line = line_of(text, "tariff:")
    assert found == [
        f"{path}:{line}: tariff.currency: missing required key",
        f"{path}:{line}: tariff.price_per_kwh: missing required key",
    ]


def test_time_of_use_rules_across_items(tmp_path: Path) -> None:
    text = edit(
        '    - {name: night, days: daily, start: "22:00", end: "06:00", price_per_kwh: 0.29}\n',
        '    - {name: night, days: daily, start: "22:00", end: "06:00", price_per_kwh: 0.29}\n'
        '    - {name: night, days: sat, start: "08:00", end: "08:00", price_per_kwh: 0.2}\n',
    )
    path, found = problems(tmp_path, text)
    line = line_of(text, "days: sat")
    assert found == [
        f"{path}:{line}: tariff.time_of_use[1].name: duplicate time-of-use name 'night', "
        f"already used by tariff.time_of_use[0] (line {line - 1})",
        f"{path}:{line}: tariff.time_of_use[1].end: the price starts and ends at 08:00; it would "
        "last no time (a whole day is start '00:00', end '24:00')",
    ]


def test_overlapping_prices_warn_that_the_lowest_applies(tmp_path: Path) -> None:
    text = edit(
        '    - {name: night, days: daily, start: "22:00", end: "06:00", price_per_kwh: 0.29}\n',
        '    - {name: night, days: daily, start: "22:00", end: "06:00", price_per_kwh: 0.29}\n'
        '    - {name: sunday, days: sun, start: "00:00", end: "24:00", price_per_kwh: 0.19}\n',
    )
    config = load_config(write(tmp_path, text))
    line = line_of(text, "name: sunday")
    assert config.warnings == (
        f"{tmp_path / 'site.yaml'}:{line}: tariff.time_of_use[1]: overlaps 'night' at "
        f"tariff.time_of_use[0] (line {line - 1}) on sun 00:00-06:00; where prices overlap the "
        "lowest price_per_kwh applies (0.19 there)",
    )


def test_the_session_fee_must_leave_room_in_the_preauth(tmp_path: Path) -> None:
    text = edit("session_fee: 0.5", "session_fee: 30")
    expect(
        tmp_path,
        text,
        "session_fee: 30",
        "tariff.session_fee",
        "30 EUR (3000 cents) leaves nothing of the 3000 cents pre-authorised for charging; "
        "raise preauth_cents or lower the fee",
    )


def test_a_preauth_above_the_cap_is_capped_with_a_warning(tmp_path: Path) -> None:
    text = edit("preauth_cents: 3000", "preauth_cents: 8000")
    config = load_config(write(tmp_path, text))
    assert config.warnings == (
        f"{tmp_path / 'site.yaml'}:{line_of(text, 'preauth_cents: 8000')}: tariff.preauth_cents: "
        "8000 cents is above preauth_cap_cents 5000; 5000 cents is pre-authorised",
    )
    assert config.tariff is not None and preauth_amount_cents(config.tariff) == 5000


# --- the cloud payload -----------------------------------------------------------------------

PAYLOAD = {
    "id": "winter",
    "currency": "EUR",
    "vat_rate_pct": 19,
    "price_per_kwh": 0.45,
    "time_of_use": [
        {
            "name": "night",
            "days": "weekdays",
            "start": "23:00",
            "end": "24:00",
            "price_per_kwh": "0.3",
        }
    ],
    "idle_fee_per_minute": 0.05,
    "idle_grace_min": 15,
    "preauth_cents": 9000,
}


def test_a_payload_becomes_a_tariff_with_exact_prices_and_the_sites_cap() -> None:
    t = tariff_from_payload(json.dumps(PAYLOAD).encode(), preauth_cap_cents=5000)
    assert t.price_per_kwh == Decimal("0.45") and t.idle_fee_per_minute == Decimal("0.05")
    assert t.time_of_use[0].price_per_kwh == Decimal("0.3") and t.time_of_use[0].days == {
        1,
        2,
        3,
        4,
        5,
    }
    # The cloud asked for 90.00; the site's cap keeps the pre-auth at 50.00.
    assert preauth_amount_cents(t) == 5000
    assert tariff_from_payload(PAYLOAD) == tariff_from_payload(json.dumps(PAYLOAD))
    assert TariffPayload.model_validate_json(json.dumps(PAYLOAD)).price_per_kwh == Decimal("0.45")


def test_a_payload_is_refused_with_every_problem_named_by_its_key() -> None:
    bad = {**PAYLOAD, "currency": "eur", "price_per_kwh": 0.123456, "preauth_cap_cents": 1}
    with pytest.raises(ConfigError) as caught:
        tariff_from_payload(json.dumps(bad))
    assert caught.value.problems == [
        "tariff update: currency: expected an ISO 4217 currency code of three capital letters "
        "like 'EUR', got 'eur' (write 'EUR')",
        "tariff update: price_per_kwh: at most 4 decimal places, got 0.123456",
        "tariff update: preauth_cap_cents: unknown key 'preauth_cap_cents'; did you mean "
        "'preauth_cents'?",
    ]


def test_a_payload_that_is_not_json_or_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as caught:
        tariff_from_payload(b'{"price_per_kwh": NaN}')
    assert caught.value.problems[0].startswith("tariff update: not valid JSON: NaN is not")
    with pytest.raises(ConfigError) as caught:
        tariff_from_payload("[1, 2]")
    assert caught.value.problems == [
        "tariff update: (top level): expected a mapping, got a list of 2"
    ]
    with pytest.raises(ConfigError) as caught:
        tariff_from_payload({**PAYLOAD, "session_fee": 100}, preauth_cap_cents=5000)
    assert caught.value.problems == [
        "tariff update: session_fee: 100 EUR (10000 cents) leaves nothing of the 5000 cents "
        "pre-authorised for charging; raise preauth_cents or lower the fee"
    ]


# --- evsite config check ---------------------------------------------------------------------


def test_config_check_prints_the_tariff(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_config_check(write(tmp_path, SITE + TARIFF), as_json=False, out=out) == 0
    assert (
        "tariff std 'Standard' (Europe/Berlin): 0.39 EUR/kWh; 0.29 EUR/kWh night daily "
        "22:00-06:00; 0.0125 EUR/min; session fee 0.50 EUR; idle fee 0.10 EUR/min after 30 min "
        "(incl. 19 % VAT); pre-authorisation 30.00 EUR"
    ) in out.getvalue()


def test_config_check_json_has_the_tariff_as_exact_text(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_config_check(write(tmp_path, SITE + TARIFF), as_json=True, out=out) == 0
    shown = json.loads(out.getvalue())["site"]["tariff"]
    assert shown["price_per_kwh"] == "0.39" and shown["vat_rate_pct"] == "19"
    assert shown["price_per_minute"] == "0.0125" and shown["preauth_cents"] == 3000
    assert shown["time_of_use"][0]["end"] == "06:00"
    out = io.StringIO()
    assert run_config_check(write(tmp_path, SITE), as_json=True, out=out) == 0
    assert json.loads(out.getvalue())["site"]["tariff"] is None
