"""Tests of the config edge (controller.config) and of `evsite config check` (controller.cli).

Each rule is checked by its full message: the file name, the line of the key, the key path and
the words a technician reads.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import shutil
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cli.config_check import run_config_check
from controller.config import (
    ConfigUnreadable,
    LoadedConfig,
    ServiceSettings,
    check_config_text,
    fallback_loads,
    load_config,
    load_config_text,
)
from controller.core.errors import ConfigError
from controller.core.site import (
    ControlSettings,
    EvKind,
    LoadManagement,
    SerialTransport,
    TcpTransport,
)
from controller.core.slots import TouPeriod, time_of_use_slot
from drivers.registry import EVSE_DRIVERS, METER_DRIVERS

REPO = Path(__file__).resolve().parents[1]

BASE = """\
site: {id: demo, name: "Demo site", timezone: Europe/Berlin, nominal_voltage_v: 230}
grid: {rating_a: 63, margin_a: 2, meter: grid_meter, worst_case_non_ev_a: 20}
circuits:
  - {id: carport, parent: grid, rating_a: 32, margin_a: 1, worst_case_non_ev_a: [2, 0, 0]}
meters:
  - id: grid_meter
    driver: eastron_sdm630
    transport: {type: serial, port: /dev/ttyUSB0, baudrate: 9600, parity: N, stopbits: 1}
    unit_id: 1
    timeout_s: 0.3
evses:
  - id: cp1
    driver: alfen_ng9xx
    transport: {type: tcp, host: 192.168.1.31, port: 502}
    unit_id: 1
    circuit: carport
    phase_rotation: L1L2L3
    min_current_a: 6
    max_current_a: 32
    fallback_current_a: 6
    priority_tier: 1
    options: {validity_time_s: 60}
  - id: cp2
    driver: alfen_ng9xx
    transport: {type: tcp, host: 192.168.1.32}
    circuit: carport
    phase_rotation: L2
    max_current_a: 16
    fallback_current_a: 6
control: {tick_s: 1, meter_stale_s: 3, fallback_after_s: 10, evse_stale_s: 5}
service: {state_dir: /var/lib/evsite, runtime_dir: /run/evsite, socket_group: evsite}
"""


# --- helpers ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} is not unique in the text"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """The 1-based line holding ``needle`` (which must be on exactly one line)."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def problems(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems, "a ConfigError carries at least one problem"
    assert str(info.value) == "\n".join(info.value.problems)
    return path, info.value.problems


def expect(tmp_path: Path, text: str, line: int, key: str, *fragments: str) -> list[str]:
    """Loading ``text`` fails with a problem at ``line`` / ``key`` holding every fragment."""
    path, found = problems(tmp_path, text)
    prefix = f"{path}:{line}: {key}: "
    matching = [p for p in found if p.startswith(prefix)]
    assert matching, f"no problem starts with {prefix!r}; got:\n" + "\n".join(found)
    assert any(all(f in p for f in fragments) for p in matching), (
        f"no problem at {prefix!r} holds {fragments}; got:\n" + "\n".join(matching)
    )
    return found


def loaded(tmp_path: Path, text: str) -> LoadedConfig:
    return load_config(write(tmp_path, text))


# --- a valid file ----------------------------------------------------------------------------


def test_base_config_loads_into_core_objects(tmp_path: Path) -> None:
    config = loaded(tmp_path, BASE)
    site = config.site
    assert config.source == tmp_path / "site.yaml"
    assert config.warnings == ()
    assert (site.id, site.name, site.timezone, site.nominal_voltage_v) == (
        "demo",
        "Demo site",
        "Europe/Berlin",
        230.0,
    )
    assert [c.id for c in site.circuits] == ["grid", "carport"]
    grid, carport = site.circuits
    assert grid.parent is None and grid.rating_a == 63 and grid.margin_a == 2
    assert grid.meter == "grid_meter" and grid.worst_case_non_ev_a == (20.0, 20.0, 20.0)
    assert carport.parent == "grid" and carport.meter is None
    assert carport.worst_case_non_ev_a == (2.0, 0.0, 0.0)

    (meter,) = site.meters
    assert meter.driver == "eastron_sdm630" and meter.unit_id == 1 and meter.timeout_s == 0.3
    assert meter.transport == SerialTransport(port="/dev/ttyUSB0", baudrate=9600, parity="N")

    cp1, cp2 = site.connectors
    assert cp1.id == cp1.evse.id == "cp1"
    assert cp1.evse.transport == TcpTransport(host="192.168.1.31", port=502)
    assert cp1.circuit == "carport" and cp1.grid_phases == (0, 1, 2)
    assert (cp1.min_current_a, cp1.max_current_a, cp1.fallback_current_a) == (6, 32, 6)
    assert cp1.priority_tier == 1 and dict(cp1.evse.options) == {"validity_time_s": 60}
    assert cp2.grid_phases == (1,) and cp2.phase_count == 1
    assert cp2.evse.unit_id == 1 and cp2.evse.timeout_s == 0.5  # defaults
    assert cp2.min_current_a == 6 and cp2.priority_tier == 0

    assert site.control.meter_stale_s == 3 and site.control.fallback_after_s == 10
    assert config.service == ServiceSettings(socket_group="evsite")


def test_the_format_example_from_the_brief_loads(tmp_path: Path) -> None:
    text = """\
site: {id: demo, name: "Demo site", timezone: Europe/Berlin, nominal_voltage_v: 230}
grid: {rating_a: 63, margin_a: 2, meter: grid_meter, worst_case_non_ev_a: 20}   # the root
circuits:
  - {id: carport, parent: grid, rating_a: 32, margin_a: 1, meter: null,
     worst_case_non_ev_a: [2, 0, 0]}
meters:
  - id: grid_meter
    driver: eastron_sdm630
    transport: {type: tcp, host: 192.168.1.20, port: 502}
    unit_id: 1
    timeout_s: 0.5
evses:
  - id: cp1
    driver: alfen_ng9xx
    transport: {type: tcp, host: 192.168.1.31, port: 502}
    unit_id: 1
    circuit: carport
    phase_rotation: L1L2L3
    min_current_a: 6
    max_current_a: 32
    fallback_current_a: 6
    priority_tier: 0
    options: {validity_time_s: 60}
control: {tick_s: 1, meter_stale_s: 3, fallback_after_s: 10, evse_stale_s: 5}
service: {state_dir: /var/lib/evsite, runtime_dir: /run/evsite, socket_group: evsite,
          log_format: auto}
"""
    config = loaded(tmp_path, text)
    assert [k.id for k in config.site.connectors] == ["cp1"]
    assert config.service.log_format == "auto"


def test_defaults_fill_a_minimal_file(tmp_path: Path) -> None:
    text = """\
site: {id: home, timezone: UTC}
grid: {rating_a: 25, worst_case_non_ev_a: 10}
evses:
  - {id: wb, driver: alfen_ng9xx, transport: {type: tcp, host: wallbox.local}}
"""
    config = loaded(tmp_path, text)
    site = config.site
    assert site.name == "home" and site.nominal_voltage_v == 230
    assert site.root.margin_a == 0 and site.root.meter is None and site.meters == ()
    (k,) = site.connectors
    assert k.circuit == "grid" and k.grid_phases == (0, 1, 2)
    assert (k.min_current_a, k.max_current_a, k.fallback_current_a, k.priority_tier) == (
        6,
        32,
        6,
        0,
    )
    assert k.evse.transport == TcpTransport(host="wallbox.local", port=502)
    assert k.evse.unit_id == 1 and dict(k.evse.options) == {}
    assert config.service == ServiceSettings()
    assert config.service.state_dir == Path("/var/lib/evsite")
    assert config.service.runtime_dir == Path("/run/evsite")
    assert config.service.socket_mode == 0o660 and config.service.log_format == "auto"
    # 32 A max on a 25 A grid: allowed, but said.
    assert any("max_current_a: 32 A is above the 25 A rating" in w for w in config.warnings)


def test_circuits_come_root_first_then_parents_before_children(tmp_path: Path) -> None:
    carport = BASE.splitlines(keepends=True)[line_of(BASE, "{id: carport") - 1]
    text = edit(
        carport,
        "  - {id: row_b, parent: carport, rating_a: 16}\n"
        "  - {id: row_a, parent: carport, rating_a: 16}\n"
        f"{carport}"
        "  - {id: shed, rating_a: 16}\n",
    )
    site = loaded(tmp_path, text).site
    assert [c.id for c in site.circuits] == ["grid", "carport", "shed", "row_b", "row_a"]
    assert site.circuit("shed").parent == "grid"  # parent defaults to grid
    for i, c in enumerate(site.circuits):
        assert c.parent is None or c.parent in [p.id for p in site.circuits[:i]]


def test_service_settings_and_octal_mode(tmp_path: Path) -> None:
    text = edit(
        "service: {state_dir: /var/lib/evsite, runtime_dir: /run/evsite, socket_group: evsite}",
        "service: {state_dir: /srv/ev, runtime_dir: /run/ev, socket_mode: '0640',"
        " log_format: json}",
    )
    service = loaded(tmp_path, text).service
    assert service == ServiceSettings(
        state_dir=Path("/srv/ev"), runtime_dir=Path("/run/ev"), socket_mode=0o640, log_format="json"
    )
    unquoted = edit("socket_mode: '0640'", "socket_mode: 0750", text)  # YAML 1.1 octal
    assert loaded(tmp_path, unquoted).service.socket_mode == 0o750


def test_yaml_merge_keys_and_anchors_work(tmp_path: Path) -> None:
    text = edit(
        "  - id: cp2\n    driver: alfen_ng9xx\n",
        "  - <<: {driver: alfen_ng9xx, circuit: carport}\n    id: cp2\n",
    )
    text = edit("    circuit: carport\n    phase_rotation: L2\n", "    phase_rotation: L2\n", text)
    k = loaded(tmp_path, text).site.connectors[1]
    assert (k.id, k.evse.driver, k.circuit) == ("cp2", "alfen_ng9xx", "carport")


def test_load_config_text_and_check_report() -> None:
    config = load_config_text(BASE, source=Path("/etc/evsite/site.yaml"))
    assert config.source == Path("/etc/evsite/site.yaml")
    report = check_config_text(edit("rating_a: 63", "rating_a: -1"), source=Path("x.yaml"))
    assert not report.ok and report.config is None
    assert report.problems == (
        f"x.yaml:{line_of(BASE, 'rating_a: 63')}: grid.rating_a: must be > 0, got -1",
    )


# --- YAML itself -----------------------------------------------------------------------------


def test_yaml_syntax_error_names_yamls_line(tmp_path: Path) -> None:
    text = "site: {id: demo, timezone: UTC}\ngrid:\n  rating_a 63\n  margin_a: 2\n"
    path, found = problems(tmp_path, text)
    # YAML reads "rating_a 63 margin_a" as one text and stumbles on the next ':'.
    assert found == [f"{path}:4: YAML syntax error: mapping values are not allowed here"]

    text = "site: {id: demo, timezone: UTC}\ngrid 63\nevses: []\n"
    path, found = problems(tmp_path, text)
    assert found == [
        f"{path}:3: YAML syntax error: could not find expected ':' "
        "(while scanning a simple key at line 2)"
    ]


def test_yaml_syntax_error_in_a_flow_mapping(tmp_path: Path) -> None:
    text = edit("unit_id: 1\n    timeout_s: 0.3", "unit_id: [1\n    timeout_s: 0.3")
    path, found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith(f"{path}:{line_of(text, 'timeout_s: 0.3')}: YAML syntax error: ")


def test_yaml_duplicate_key_is_a_problem(tmp_path: Path) -> None:
    text = edit("    max_current_a: 16\n", "    max_current_a: 16\n    max_current_a: 10\n")
    expect(
        tmp_path,
        text,
        line_of(text, "max_current_a: 10"),
        "evses[1].max_current_a",
        f"duplicate key 'max_current_a' (first at line {line_of(text, 'max_current_a: 16')})",
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("site: &x [1, *x]\n", 1, "an alias refers to a value that contains it"),
        (
            "site: {id: demo}\ngrid: !!python/object:os.system {}\n",
            2,
            "unsupported tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
        (
            "site: {id: demo}\ngrid: {rating_a: !!python/name:os.system x}\n",
            2,
            "could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/name:os.system'",
        ),
        (
            "site: {id: demo}\n\ngrid: {rating_a: 6\x00}\n",
            3,
            "unacceptable character #x0000: special characters are not allowed",
        ),
    ],
)
def test_yaml_that_is_no_plain_data(tmp_path: Path, text: str, line: int, message: str) -> None:
    path, found = problems(tmp_path, text)
    assert found == [f"{path}:{line}: YAML syntax error: {message}"]


def test_keys_must_be_text(tmp_path: Path) -> None:
    text = edit("    unit_id: 1\n    timeout_s", "    on: 1\n    timeout_s")
    expect(tmp_path, text, line_of(text, "on: 1"), "meters[0]", "key true is not text; quote it")


def test_empty_file_and_wrong_top_level(tmp_path: Path) -> None:
    path, found = problems(tmp_path, "# nothing yet\n")
    assert found == [
        f"{path}:1: (top level): the file is empty; expected the sections site, grid, evses, ..."
    ]
    path, found = problems(tmp_path, "- site\n- grid\n")
    assert found == [
        f"{path}:1: (top level): expected a mapping of sections (site, grid, ...), got a list of 2"
    ]


def test_unreadable_file_raises_config_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigUnreadable) as info:
        load_config(missing)
    assert info.value.problems == [f"{missing}: cannot read the file: No such file or directory"]
    with pytest.raises(ConfigUnreadable):
        load_config(tmp_path)  # a directory


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(b"site: {id: demo}\ngrid: {rating_a: \xff}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:2: YAML syntax error: the file is not UTF-8")


# --- keys and types --------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_valid_key(tmp_path: Path) -> None:
    text = edit("    max_current_a: 16", "    max_curent_a: 16")
    expect(
        tmp_path,
        text,
        line_of(text, "max_curent_a"),
        "evses[1].max_curent_a",
        "unknown key 'max_curent_a'; did you mean 'max_current_a'?",
    )


def test_unknown_key_inside_a_transport_and_at_top_level(tmp_path: Path) -> None:
    text = edit("host: 192.168.1.32}", "host: 192.168.1.32, prot: 502}")
    text = edit("control:", "evse: []\ncontrol:", text)
    found = expect(
        tmp_path,
        text,
        line_of(text, "prot: 502"),
        "evses[1].transport.prot",
        "unknown key 'prot'; did you mean 'port'?",
    )
    line = line_of(text, "evse: []")
    assert any(
        p.endswith(f":{line}: evse: unknown key 'evse'; did you mean 'evses'?") for p in found
    )


def test_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    text = edit("site: {id: demo,", "site: {colour: blue, id: demo,")
    expect(tmp_path, text, 1, "site.colour", "unknown key 'colour'; valid keys here: id, name,")


def test_wrong_type_is_not_coerced(tmp_path: Path) -> None:
    text = edit("rating_a: 32,", "rating_a: abc,")
    expect(
        tmp_path,
        text,
        line_of(text, "rating_a: abc"),
        "circuits[0].rating_a",
        "expected a number, got 'abc'",
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "unit_id: 1\n    timeout_s",
            "unit_id: '1'\n    timeout_s",
            "meters[0].unit_id",
            "expected a whole number, got '1' (quoted text; remove the quotes)",
        ),
        (
            "priority_tier: 1",
            "priority_tier: true",
            "evses[0].priority_tier",
            "expected a whole number, got true",
        ),
        (
            "max_current_a: 32",
            "max_current_a: .nan",
            "evses[0].max_current_a",
            "must be a finite number, got nan",
        ),
        ("- id: cp2", "- id: 2", "evses[1].id", "expected text, got 2 (a number; quote it: '2')"),
        (
            "options: {validity_time_s: 60}",
            "options: [60]",
            "evses[0].options",
            "expected a mapping, got a list of 1",
        ),
        (
            "worst_case_non_ev_a: [2, 0, 0]",
            "worst_case_non_ev_a: [2, 0]",
            "circuits[0].worst_case_non_ev_a",
            "expected a number or a list of three numbers [L1, L2, L3], got a list of 2",
        ),
        (
            "worst_case_non_ev_a: 20",
            "worst_case_non_ev_a: -1",
            "grid.worst_case_non_ev_a",
            "must be >= 0 on every phase, got -1",
        ),
        ("- id: cp2", "- id: 'cp 2'", "evses[1].id", "an id is 1 to 64 letters, digits"),
    ],
)
def test_type_errors(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    text = edit(old, new)
    expect(tmp_path, text, line_of(text, new.splitlines()[0]), key, message)


def test_missing_grid_rating(tmp_path: Path) -> None:
    text = edit("grid: {rating_a: 63, margin_a: 2,", "grid: {margin_a: 2,")
    expect(tmp_path, text, 2, "grid.rating_a", "missing required key")


def test_missing_sections_and_keys(tmp_path: Path) -> None:
    text = "site: {id: demo, timezone: UTC}\n"
    path, found = problems(tmp_path, text)
    assert f"{path}:1: grid: missing required section" in found
    text = edit("  - id: cp2\n    driver: alfen_ng9xx\n", "  - id: cp2\n")
    expect(tmp_path, text, line_of(text, "- id: cp2"), "evses[1].driver", "missing required key")
    text = edit("transport: {type: tcp, host: 192.168.1.32}", "transport: {host: 192.168.1.32}")
    expect(
        tmp_path,
        text,
        line_of(text, "transport: {host"),
        "evses[1].transport.type",
        "missing required key (transport type: tcp or serial)",
    )
    text = edit("transport: {type: tcp, host: 192.168.1.32}", "transport: {type: tcp}")
    expect(tmp_path, text, line_of(text, "{type: tcp}"), "evses[1].transport.host", "missing")


def test_unknown_transport_type(tmp_path: Path) -> None:
    text = edit("{type: tcp, host: 192.168.1.32}", "{type: udp, host: 192.168.1.32}")
    expect(
        tmp_path,
        text,
        line_of(text, "type: udp"),
        "evses[1].transport.type",
        "unknown transport type 'udp'; use 'tcp' or 'serial'",
    )


# --- values that make no sense ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("grid: {rating_a: 63", "grid: {rating_a: 0", "grid.rating_a", "must be > 0, got 0"),
        ("rating_a: 32,", "rating_a: -32,", "circuits[0].rating_a", "must be > 0, got -32"),
        ("margin_a: 2,", "margin_a: -1,", "grid.margin_a", "must be >= 0, got -1"),
        (
            "    min_current_a: 6",
            "    min_current_a: 5",
            "evses[0].min_current_a",
            "must be >= 6, got 5 (IEC 61851 allows no charging current below 6 A)",
        ),
        (
            "nominal_voltage_v: 230",
            "nominal_voltage_v: 99",
            "site.nominal_voltage_v",
            "must be >= 100, got 99",
        ),
        (
            "nominal_voltage_v: 230",
            "nominal_voltage_v: 501",
            "site.nominal_voltage_v",
            "must be <= 500, got 501",
        ),
        ("timeout_s: 0.3", "timeout_s: 0", "meters[0].timeout_s", "must be > 0, got 0"),
        ("tick_s: 1,", "tick_s: 0,", "control.tick_s", "must be > 0, got 0"),
        ("priority_tier: 1", "priority_tier: -1", "evses[0].priority_tier", "must be >= 0, got -1"),
    ],
)
def test_nonsense_values(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    text = edit(old, new)
    expect(tmp_path, text, line_of(text, new), key, message)


def test_min_above_max(tmp_path: Path) -> None:
    text = edit("    max_current_a: 16\n", "    min_current_a: 20\n    max_current_a: 16\n")
    text = edit("    fallback_current_a: 6\ncontrol", "    fallback_current_a: 0\ncontrol", text)
    expect(
        tmp_path,
        text,
        line_of(text, "min_current_a: 20"),
        "evses[1].min_current_a",
        "min_current_a 20 A is above max_current_a 16 A",
    )


@pytest.mark.parametrize("fallback", ["3", "17", "5.9"])
def test_fallback_outside_zero_or_min_max(tmp_path: Path, fallback: str) -> None:
    text = edit(
        "    fallback_current_a: 6\ncontrol", f"    fallback_current_a: {fallback}\ncontrol"
    )
    expect(
        tmp_path,
        text,
        line_of(text, f"fallback_current_a: {fallback}"),
        "evses[1].fallback_current_a",
        f"{fallback} A must be 0 (stop charging) or within min_current_a..max_current_a (6..16 A)",
    )


@pytest.mark.parametrize("fallback", ["0", "6", "10.5", "16"])
def test_fallback_zero_or_within_min_max_is_fine(tmp_path: Path, fallback: str) -> None:
    text = edit(
        "    fallback_current_a: 6\ncontrol", f"    fallback_current_a: {fallback}\ncontrol"
    )
    assert loaded(tmp_path, text).site.connectors[1].fallback_current_a == float(fallback)


def test_invalid_timezone_suggests_one(tmp_path: Path) -> None:
    text = edit("timezone: Europe/Berlin", "timezone: Europe/Berlni")
    expect(
        tmp_path,
        text,
        1,
        "site.timezone",
        "unknown time zone 'Europe/Berlni'; use an IANA name like 'Europe/Berlin' "
        "(did you mean 'Europe/Berlin'?)",
    )


def test_control_timings_in_order(tmp_path: Path) -> None:
    text = edit("meter_stale_s: 3, fallback_after_s: 10", "meter_stale_s: 0.5, fallback_after_s: 2")
    found = expect(
        tmp_path,
        text,
        line_of(text, "control:"),
        "control.meter_stale_s",
        "0.5 s is shorter than tick_s 1 s; every meter reading would count as stale",
    )
    assert len(found) == 1
    text = edit("fallback_after_s: 10", "fallback_after_s: 2")
    expect(
        tmp_path,
        text,
        line_of(text, "control:"),
        "control.fallback_after_s",
        "2 s is shorter than meter_stale_s 3 s",
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "state_dir: /var/lib/evsite",
            "state_dir: var/lib/evsite",
            "service.state_dir",
            "must be an absolute path, got 'var/lib/evsite'",
        ),
        (
            "socket_group: evsite}",
            "socket_group: evsite, socket_mode: 660}",
            "service.socket_mode",
            "must be a file mode within 0000..0777, got 660 (octal 1224); write it as 0660",
        ),
        (
            "socket_group: evsite}",
            "socket_group: evsite, log_format: xml}",
            "service.log_format",
            "must be 'auto', 'console' or 'json', got 'xml'",
        ),
        (
            "socket_group: evsite}",
            "socket_group: 'ev site'}",
            "service.socket_group",
            "'ev site' is not a valid group name",
        ),
    ],
)
def test_service_values(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    text = edit(old, new)
    expect(tmp_path, text, line_of(text, "service:"), key, message)


# --- ids and references ----------------------------------------------------------------------


def test_duplicate_evse_id(tmp_path: Path) -> None:
    text = edit("- id: cp2", "- id: cp1")
    first = line_of(BASE, "- id: cp1")
    expect(
        tmp_path,
        text,
        line_of(BASE, "- id: cp2"),
        "evses[1].id",
        f"duplicate device id 'cp1', already used by evses[0] (line {first}); "
        "ids are unique across meters and evses",
    )


def test_duplicate_id_across_meters_and_evses(tmp_path: Path) -> None:
    text = edit("- id: cp2", "- id: grid_meter")
    expect(
        tmp_path,
        text,
        line_of(text, "host: 192.168.1.32") - 2,
        "evses[1].id",
        f"duplicate device id 'grid_meter', already used by meters[0] "
        f"(line {line_of(text, 'driver: eastron_sdm630') - 1})",
    )


def test_duplicate_meter_id(tmp_path: Path) -> None:
    text = edit(
        "evses:\n",
        "  - {id: grid_meter, driver: eastron_sdm630, transport: {type: tcp, host: m.local}}\n"
        "evses:\n",
    )
    expect(
        tmp_path,
        text,
        line_of(text, "host: m.local"),
        "meters[1].id",
        "duplicate device id 'grid_meter', already used by meters[0]",
    )


def test_duplicate_circuit_id_and_reserved_grid(tmp_path: Path) -> None:
    text = edit(
        "meters:\n",
        "  - {id: carport, rating_a: 16}\n  - {id: grid, rating_a: 16}\nmeters:\n",
    )
    found = expect(
        tmp_path,
        text,
        line_of(text, "{id: carport, rating_a: 16}"),
        "circuits[1].id",
        "duplicate circuit id 'carport', already used by circuits[0] (line 4)",
    )
    line = line_of(text, "{id: grid, rating_a: 16}")
    assert any(
        p.endswith(
            f":{line}: circuits[2].id: 'grid' is the root circuit (the grid: section); "
            "choose another id"
        )
        for p in found
    )


def test_unknown_parent_circuit(tmp_path: Path) -> None:
    text = edit("parent: grid", "parent: gird")
    expect(
        tmp_path,
        text,
        4,
        "circuits[0].parent",
        "unknown parent circuit 'gird'; known circuits: grid, carport",
    )


def test_cycle_in_the_circuit_tree(tmp_path: Path) -> None:
    text = edit(
        "meters:\n",
        "  - {id: a, parent: b, rating_a: 16}\n  - {id: b, parent: a, rating_a: 16}\nmeters:\n",
    )
    found = expect(
        tmp_path,
        text,
        line_of(text, "{id: a, parent: b"),
        "circuits[1].parent",
        "the circuit tree has a cycle: a -> b -> a; every circuit's parents must lead up to 'grid'",
    )
    assert sum("cycle" in p for p in found) == 1
    text = edit("parent: grid", "parent: carport")  # its own parent
    expect(tmp_path, text, 4, "circuits[0].parent", "cycle: carport -> carport")


def test_evse_on_an_unknown_circuit(tmp_path: Path) -> None:
    text = edit(
        "    circuit: carport\n    phase_rotation: L2",
        "    circuit: carprot\n    phase_rotation: L2",
    )
    expect(
        tmp_path,
        text,
        line_of(text, "circuit: carprot"),
        "evses[1].circuit",
        "unknown circuit 'carprot'; known circuits: grid, carport",
    )


def test_meter_reference_unknown_or_not_a_meter(tmp_path: Path) -> None:
    text = edit("meter: grid_meter,", "meter: grid_metre,")
    expect(
        tmp_path,
        text,
        2,
        "grid.meter",
        "unknown meter 'grid_metre'; defined meters: grid_meter",
    )
    text = edit("margin_a: 1, worst", "margin_a: 1, meter: cp1, worst")
    expect(tmp_path, text, 4, "circuits[0].meter", "'cp1' is an EVSE, not a meter")


def test_one_meter_for_two_nodes(tmp_path: Path) -> None:
    text = edit("margin_a: 1, worst", "margin_a: 1, meter: grid_meter, worst")
    expect(
        tmp_path,
        text,
        4,
        "circuits[0].meter",
        "meter 'grid_meter' already measures grid (line 2); one meter measures one circuit node",
    )


def test_unknown_driver_lists_the_known_ones(tmp_path: Path) -> None:
    text = edit("- id: cp2\n    driver: alfen_ng9xx", "- id: cp2\n    driver: alfen_ng999")
    known = ", ".join(sorted(EVSE_DRIVERS))
    expect(
        tmp_path,
        text,
        line_of(text, "alfen_ng999"),
        "evses[1].driver",
        f"unknown EVSE driver 'alfen_ng999' (did you mean 'alfen_ng9xx'?); "
        f"known EVSE drivers: {known}",
    )
    text = edit("driver: eastron_sdm630", "driver: alfen_ng9xx")
    expect(
        tmp_path,
        text,
        line_of(text, "- id: grid_meter") + 1,
        "meters[0].driver",
        f"'alfen_ng9xx' is an EVSE driver, not a meter driver; known meter drivers: "
        f"{', '.join(sorted(METER_DRIVERS))}",
    )


# --- transports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "host: 192.168.1.31, port: 502",
            "host: 192.168.1.31, port: 0",
            "evses[0].transport.port",
            "TCP port must be within 1..65535, got 0",
        ),
        (
            "host: 192.168.1.31, port: 502",
            "host: 192.168.1.31, port: 70000",
            "evses[0].transport.port",
            "TCP port must be within 1..65535, got 70000",
        ),
        (
            "host: 192.168.1.31,",
            "host: 192.168.1.310,",
            "evses[0].transport.host",
            "'192.168.1.310' is not an IP address or host name",
        ),
        (
            "host: 192.168.1.31,",
            "host: 'http://x',",
            "evses[0].transport.host",
            "'http://x' is not an IP address or host name",
        ),
        (
            "port: /dev/ttyUSB0",
            "port: COM3",
            "meters[0].transport.port",
            "serial port must be a device path like /dev/ttyUSB0 or /dev/serial/by-id/..., "
            "got 'COM3'",
        ),
        (
            "port: /dev/ttyUSB0",
            "port: /dev/",
            "meters[0].transport.port",
            "serial port must be a device path",
        ),
        (
            "baudrate: 9600",
            "baudrate: 9601",
            "meters[0].transport.baudrate",
            "9601 is not a standard baud rate; use one of 1200, 2400, 4800, 9600, 19200, 38400, "
            "57600, 115200",
        ),
        (
            "parity: N",
            "parity: X",
            "meters[0].transport.parity",
            "must be N (none), E (even) or O (odd), got 'X'",
        ),
        ("stopbits: 1", "stopbits: 3", "meters[0].transport.stopbits", "must be 1 or 2, got 3"),
    ],
)
def test_invalid_transport(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    text = edit(old, new)
    expect(tmp_path, text, line_of(text, new), key, message)


def test_serial_unit_id_range(tmp_path: Path) -> None:
    text = edit("unit_id: 1\n    timeout_s: 0.3", "unit_id: 248\n    timeout_s: 0.3")
    expect(
        tmp_path,
        text,
        line_of(text, "unit_id: 248"),
        "meters[0].unit_id",
        "must be within 1..247 on a serial line (0 is broadcast), got 248",
    )


def test_one_serial_line_has_one_setting_and_unique_addresses(tmp_path: Path) -> None:
    second = (
        "  - id: sub_meter\n    driver: eastron_sdm630\n"
        "    transport: {type: serial, port: /dev/ttyUSB0, baudrate: 19200}\n"
        "    unit_id: 1\n    timeout_s: 0.3\nevses:\n"
    )
    text = edit("evses:\n", second)
    found = expect(
        tmp_path,
        text,
        line_of(text, "baudrate: 19200"),
        "meters[1].transport",
        "serial line /dev/ttyUSB0 is set to 9600 8N1 by meters[0] (line 6); every device on one "
        "line must use the same baud rate, parity, stop bits and byte size",
    )
    line = line_of(text, "- id: sub_meter") + 3
    assert any(
        p.endswith(
            f":{line}: meters[1].unit_id: unit_id 1 on /dev/ttyUSB0 is already used by meters[0] "
            "(line 6)"
        )
        for p in found
    )


def test_same_tcp_address_twice(tmp_path: Path) -> None:
    text = edit("host: 192.168.1.32}", "host: 192.168.1.31}")
    path, found = problems(tmp_path, text)
    item_line = line_of(text, "- id: cp2")  # unit_id is not written: the item's line
    assert found == [
        f"{path}:{item_line}: evses[1].unit_id: unit_id 1 on 192.168.1.31:502 is already used "
        "by evses[0] (line 12)"
    ]


# --- phase rotation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rotation", "message"),
    [
        ("L1L1L3", "phase rotation 'L1L1L3' must name one phase, or all three once each"),
        ("L4", "phase rotation 'L4' names a phase other than L1, L2, L3"),
        ("L1L2", "phase rotation 'L1L2' must name one phase, or all three once each"),
        ("ABC", "phase rotation 'ABC' is not like 'L1L2L3', 'L2L3L1' or 'L2'"),
    ],
)
def test_invalid_phase_rotation(tmp_path: Path, rotation: str, message: str) -> None:
    text = edit("phase_rotation: L2", f"phase_rotation: {rotation}")
    expect(tmp_path, text, line_of(BASE, "rotation: L2"), "evses[1].phase_rotation", message)


@pytest.mark.parametrize(
    ("rotation", "phases"),
    [("L1L2L3", (0, 1, 2)), ("L2L3L1", (1, 2, 0)), ("L3L1L2", (2, 0, 1)), ("L3", (2,))],
)
def test_phase_rotation_maps_to_grid_phases(
    tmp_path: Path, rotation: str, phases: tuple[int, ...]
) -> None:
    text = edit("phase_rotation: L1L2L3", f"phase_rotation: {rotation}")
    assert loaded(tmp_path, text).site.connectors[0].grid_phases == phases


# --- I5: the fallback currents fit ----------------------------------------------------------


def test_fallbacks_that_overflow_a_sub_board(tmp_path: Path) -> None:
    # carport: 32 - worst-case 2 (L1) - margin 1 = 29 A on L1; cp1 20 A + cp3 10 A = 30 A.
    text = edit(
        "    fallback_current_a: 6\n    priority_tier",
        "    fallback_current_a: 20\n    priority_tier",
    )
    text = text.replace(
        "control:",
        "  - {id: cp3, driver: alfen_ng9xx, transport: {type: tcp, host: 192.168.1.33},\n"
        "     circuit: carport, phase_rotation: L1, fallback_current_a: 10}\ncontrol:",
    )
    path, found = problems(tmp_path, text)
    assert found == [
        f"{path}:4: circuits[0]: fallback currents do not fit circuit 'carport' on phase L1 (I5): "
        "sum 30 A > limit 29 A = rating 32 A - worst-case non-EV 2 A - margin 1 A; "
        "connectors: cp1 20 A, cp3 10 A"
    ]


def test_fallbacks_that_fit_each_sub_board_but_not_the_grid(tmp_path: Path) -> None:
    # grid: 40 - 10 - 0 = 30 A per phase; two boards of 20 A each with 2 x 8 A on every phase.
    text = """\
site: {id: demo, timezone: UTC}
grid: {rating_a: 40, worst_case_non_ev_a: 10}
circuits:
  - {id: north, rating_a: 20}
  - {id: south, rating_a: 20}
evses:
"""
    for name, board in (("n1", "north"), ("n2", "north"), ("s1", "south"), ("s2", "south")):
        text += (
            f"  - {{id: {name}, driver: alfen_ng9xx, transport: {{type: tcp, host: {name}}},\n"
            f"     circuit: {board}, max_current_a: 16, fallback_current_a: 8}}\n"
        )
    path, found = problems(tmp_path, text)
    assert found == [
        f"{path}:2: grid: fallback currents do not fit circuit 'grid' on phase {p} (I5): "
        "sum 32 A > limit 30 A = rating 40 A - worst-case non-EV 10 A - margin 0 A; "
        "connectors: n1 8 A, n2 8 A, s1 8 A, s2 8 A"
        for p in ("L1", "L2", "L3")
    ]


def test_rotation_decides_which_phase_carries_a_fallback(tmp_path: Path) -> None:
    # 20 A grid: four 1-phase EVSEs with 6 A fallback; all on L1 overflow, spread they fit.
    def site(rotations: list[str]) -> str:
        evses = "".join(
            f"  - {{id: e{i}, driver: alfen_ng9xx, transport: {{type: tcp, host: e{i}}}, "
            f"phase_rotation: {r}, max_current_a: 16}}\n"
            for i, r in enumerate(rotations)
        )
        head = "site: {id: demo, timezone: UTC}\ngrid: {rating_a: 20, margin_a: 2}\n"
        return f"{head}evses:\n{evses}"

    path, found = problems(tmp_path, site(["L1", "L1", "L1", "L1"]))
    assert found == [
        f"{path}:2: grid: fallback currents do not fit circuit 'grid' on phase L1 (I5): sum 24 A "
        "> limit 18 A = rating 20 A - worst-case non-EV 0 A - margin 2 A; "
        "connectors: e0 6 A, e1 6 A, e2 6 A, e3 6 A"
    ]
    config = loaded(tmp_path, site(["L1", "L2", "L3", "L1"]))
    loads = {(x.circuit, x.phase): x.sum_a for x in fallback_loads(config.site)}
    assert loads == {("grid", 0): 12, ("grid", 1): 6, ("grid", 2): 6}


def test_fallbacks_exactly_at_the_limit_fit(tmp_path: Path) -> None:
    # carport L1 limit 29 A = cp1 23 A + cp2 6 A (moved to L1).
    text = edit(
        "    fallback_current_a: 6\n    priority_tier",
        "    fallback_current_a: 23\n    priority_tier",
    )
    text = edit("phase_rotation: L2", "phase_rotation: L1", text)
    config = loaded(tmp_path, text)
    carport_l1 = next(
        x for x in fallback_loads(config.site) if x.circuit == "carport" and x.phase == 0
    )
    assert carport_l1.sum_a == 29 and carport_l1.limit_a == 29 and carport_l1.fits
    assert carport_l1.connectors == (("cp1", 23.0), ("cp2", 6.0))


def test_zero_fallbacks_always_fit_a_positive_limit(tmp_path: Path) -> None:
    text = edit(
        "    fallback_current_a: 6\n    priority_tier",
        "    fallback_current_a: 0\n    priority_tier",
    )
    config = loaded(tmp_path, text)
    assert all(x.fits for x in fallback_loads(config.site))


def test_no_room_at_all_is_reported_even_without_connectors(tmp_path: Path) -> None:
    text = (
        "site: {id: demo, timezone: UTC}\n"
        "grid: {rating_a: 16, margin_a: 2, worst_case_non_ev_a: 15}\n"
        "evses: []\n"
    )
    path, found = problems(tmp_path, text)
    assert len(found) == 3
    assert found[0] == (
        f"{path}:2: grid: fallback currents do not fit circuit 'grid' on phase L1 (I5): sum 0 A "
        "> limit -1 A = rating 16 A - worst-case non-EV 15 A - margin 2 A; connectors: none"
    )


@settings(max_examples=60, deadline=None)
@given(
    evses=st.lists(
        st.tuples(
            st.sampled_from(["grid", "a", "b"]),
            st.sampled_from(["L1L2L3", "L2L3L1", "L3L1L2", "L1", "L2", "L3"]),
            st.sampled_from([0, 6, 8, 10, 16]),
        ),
        max_size=6,
    )
)
def test_i5_holds_exactly_when_the_loader_accepts(evses: list[tuple[str, str, int]]) -> None:
    """The loader accepts a site iff, per node and phase, the fallbacks fit (computed here)."""
    ratings = {"grid": 40.0, "a": 20.0, "b": 16.0}
    reserve = {"grid": 12.0, "a": 1.0, "b": 0.0}  # worst-case non-EV + margin, every phase
    items = "".join(
        f"  - {{id: e{i}, driver: alfen_ng9xx, transport: {{type: tcp, host: e{i}}}, "
        f"circuit: {c}, phase_rotation: {r}, max_current_a: 16, fallback_current_a: {f}}}\n"
        for i, (c, r, f) in enumerate(evses)
    )
    text = (
        "site: {id: demo, timezone: UTC}\n"
        "grid: {rating_a: 40, margin_a: 2, worst_case_non_ev_a: 10}\n"
        "circuits:\n  - {id: a, rating_a: 20, margin_a: 1}\n"
        "  - {id: b, parent: a, rating_a: 16}\n" + (f"evses:\n{items}" if items else "evses: []\n")
    )
    under = {"grid": {"grid", "a", "b"}, "a": {"a", "b"}, "b": {"b"}}
    fits = True
    for node, rating in ratings.items():
        for phase in ("L1", "L2", "L3"):
            total = sum(f for c, r, f in evses if c in under[node] and phase in r)
            fits &= total <= rating - reserve[node]
    report = check_config_text(text)
    i5 = [p for p in report.problems if "(I5)" in p]
    assert report.ok == fits
    assert bool(i5) == (not fits)
    assert len(i5) == len(report.problems)  # nothing else is wrong with these sites


# --- warnings --------------------------------------------------------------------------------


def test_connector_max_above_its_circuit_is_a_warning_only(tmp_path: Path) -> None:
    text = edit("rating_a: 32,", "rating_a: 16,")
    text = edit(
        "    fallback_current_a: 6\n    priority_tier",
        "    fallback_current_a: 0\n    priority_tier",
        text,
    )
    config = loaded(tmp_path, text)
    path = tmp_path / "site.yaml"
    assert (
        f"{path}:{line_of(text, 'max_current_a: 32')}: evses[0].max_current_a: 32 A is above "
        "the 16 A rating of circuit 'carport'; the controller never gives it more than that"
        in config.warnings
    )


def test_empty_evses_is_allowed_with_a_warning(tmp_path: Path) -> None:
    head = "site: {id: demo, timezone: UTC}\ngrid: {rating_a: 16, worst_case_non_ev_a: 10}\n"
    text = f"{head}evses: []\n"
    config = loaded(tmp_path, text)
    assert config.site.connectors == ()
    path = tmp_path / "site.yaml"
    assert config.warnings == (
        f"{path}:3: evses: no EVSEs configured; the controller will only read meters",
    )
    config = loaded(
        tmp_path, "site: {id: demo, timezone: UTC}\ngrid: {rating_a: 16, worst_case_non_ev_a: 10}\n"
    )
    assert config.warnings == (
        f"{path}:1: evses: no EVSEs configured; the controller will only read meters",
    )


def test_other_warnings(tmp_path: Path) -> None:
    text = edit("meter: grid_meter, worst_case_non_ev_a: 20", "worst_case_non_ev_a: 0")
    text = edit("timeout_s: 0.3", "timeout_s: 1.5", text)
    config = loaded(tmp_path, text)
    joined = "\n".join(config.warnings)
    assert "grid: the grid has no meter and worst_case_non_ev_a is 0" in joined
    assert "meters[0].id: meter 'grid_meter' is the meter of neither grid nor any circuit" in joined
    assert "meters[0].timeout_s: 1.5 s is not shorter than tick_s 1 s" in joined
    assert "the timeouts of all devices on /dev/ttyUSB0 add up to 1.5 s" in joined


# --- every problem at once -------------------------------------------------------------------


def test_every_problem_is_listed_in_line_order(tmp_path: Path) -> None:
    text = edit("timezone: Europe/Berlin", "timezone: Mars/Olympus")
    text = edit("rating_a: 32,", "rating_a: abc,", text)
    text = edit("baudrate: 9600", "baudrate: 9601", text)
    text = edit("    max_current_a: 16", "    max_curent_a: 16", text)
    text = edit("phase_rotation: L1L2L3", "phase_rotation: L1L1L3", text)
    path, found = problems(tmp_path, text)
    keys = [p.split(": ", 2)[1] for p in found]
    assert keys == [
        "site.timezone",
        "circuits[0].rating_a",
        "meters[0].transport.baudrate",
        "evses[0].phase_rotation",
        "evses[1].max_curent_a",
    ]
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == sorted(lines)
    assert all(p.startswith(f"{path}:") for p in found)


# --- register map files of the generic drivers -----------------------------------------------


def test_generic_driver_needs_a_register_map_resolved_beside_the_config(tmp_path: Path) -> None:
    generic = edit("- id: cp2\n    driver: alfen_ng9xx", "- id: cp2\n    driver: modbus_evse")
    expect(
        tmp_path,
        generic,
        line_of(generic, "- id: cp2"),
        "evses[1].options.register_map",
        "missing: driver modbus_evse needs the path of a register map file (YAML)",
    )
    with_map = edit(
        "    max_current_a: 16\n",
        "    max_current_a: 16\n    options: {register_map: maps/cp2.yaml}\n",
        generic,
    )
    expect(
        tmp_path,
        with_map,
        line_of(with_map, "register_map"),
        "evses[1].options.register_map",
        "bad register map: ",
        "cannot read register map",
    )
    maps = tmp_path / "maps"
    maps.mkdir()
    shutil.copy(REPO / "drivers" / "modbus" / "maps" / "alfen_ng9xx.yaml", maps / "cp2.yaml")
    config = loaded(tmp_path, with_map)
    assert config.site.connectors[1].evse.options["register_map"] == str(maps / "cp2.yaml")
    shutil.copy(REPO / "drivers" / "modbus" / "maps" / "eastron_sdm630.yaml", maps / "cp2.yaml")
    expect(
        tmp_path,
        with_map,
        line_of(with_map, "register_map"),
        "evses[1].options.register_map",
        "describes a meter, but modbus_evse needs an evse map",
    )


# --- shipped configs and layering ------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_cleanly(path: Path) -> None:
    config = load_config(path)
    assert config.warnings == ()


def test_example_site_is_the_documented_one() -> None:
    site = load_config(REPO / "config" / "example-site.yaml").site
    assert site.root.rating_a == 63
    (meter,) = site.meters
    assert meter.driver == "eastron_sdm630" and isinstance(meter.transport, SerialTransport)
    carport = site.circuit("carport")
    assert carport.rating_a == 32 and carport.meter is None and carport.parent == "grid"
    assert [k.evse.driver for k in site.connectors] == ["alfen_ng9xx"] * 4
    assert all(isinstance(k.evse.transport, TcpTransport) for k in site.connectors)
    assert [k.grid_phases for k in site.connectors][:3] == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    assert sum(k.phase_count == 1 for k in site.connectors) == 1
    assert all(x.fits for x in fallback_loads(site))


def test_the_example_in_the_configuration_reference_loads() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = text.split("## Example\n\n```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config_text(block)
    assert config.warnings == ()
    assert [t.name for t in config.site.time_of_use] == ["evening-peak", "weekend-night"]
    assert config.site.load_management.unbalanced_limit_a == 20


def test_core_never_imports_the_config_module() -> None:
    for module in (REPO / "controller" / "core").rglob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "controller.config", module
                assert not (
                    node.module == "controller" and any(a.name == "config" for a in node.names)
                )
            elif isinstance(node, ast.Import):
                assert all(a.name != "controller.config" for a in node.names), module


# --- load management, export, ev_kind, time of use -----------------------------------------


def test_new_keys_default_to_the_core_defaults(tmp_path: Path) -> None:
    site = loaded(tmp_path, BASE).site
    assert site.load_management == LoadManagement()
    assert site.exports is False and site.meter_export_positive is False
    assert site.control.meter_frozen_s == ControlSettings().meter_frozen_s
    assert all(k.ev_kind is EvKind.AUTO for k in site.connectors)
    assert site.time_of_use == ()


def test_load_management_maps_one_to_one_onto_the_core() -> None:
    from controller.config import _LoadManagementModel

    core_fields = [f.name for f in dataclasses.fields(LoadManagement)]
    assert list(_LoadManagementModel.model_fields) == core_fields
    assert _LoadManagementModel().model_dump() == dataclasses.asdict(LoadManagement())


def test_load_management_every_key(tmp_path: Path) -> None:
    values = {
        "ramp_step_a": 4,
        "ramp_period_s": 3,
        "follow_tolerance_a": 1.5,
        "settle_s": 12,
        "increase_deadband_a": 0.5,
        "resume_margin_a": 2,
        "min_on_s": 120,
        "min_off_s": 0,
        "rotation_s": 1800,
        "unused_threshold_a": 3,
        "unused_after_s": 30,
        "unused_headroom_a": 0,
        "detect_on_a": 3,
        "detect_off_a": 1,
        "detect_after_s": 15,
        "unbalanced_limit_a": 20,
    }
    body = "".join(f"  {k}: {v}\n" for k, v in values.items())
    config = loaded(tmp_path, f"{BASE}load_management:\n{body}")
    assert config.site.load_management == LoadManagement(**{k: float(v) for k, v in values.items()})
    assert config.warnings == ()
    empty = loaded(tmp_path, f"{BASE}load_management:\n")
    assert empty.site.load_management == LoadManagement()
    null_limit = loaded(tmp_path, f"{BASE}load_management: {{unbalanced_limit_a: null}}\n")
    assert null_limit.site.load_management.unbalanced_limit_a is None


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        ("ramp_step_a: 0", "ramp_step_a", "must be > 0, got 0"),
        ("ramp_period_s: 0", "ramp_period_s", "must be > 0, got 0"),
        ("follow_tolerance_a: -1", "follow_tolerance_a", "must be >= 0, got -1"),
        ("settle_s: -0.5", "settle_s", "must be >= 0, got -0.5"),
        ("increase_deadband_a: -1", "increase_deadband_a", "must be >= 0"),
        ("resume_margin_a: -1", "resume_margin_a", "must be >= 0"),
        ("min_on_s: -1", "min_on_s", "must be >= 0"),
        ("min_off_s: -1", "min_off_s", "must be >= 0"),
        ("rotation_s: -1", "rotation_s", "must be >= 0"),
        ("unused_threshold_a: -1", "unused_threshold_a", "must be >= 0"),
        ("unused_after_s: -1", "unused_after_s", "must be >= 0"),
        ("unused_headroom_a: -1", "unused_headroom_a", "must be >= 0"),
        ("detect_on_a: -1", "detect_on_a", "must be >= 0"),
        ("detect_off_a: -1", "detect_off_a", "must be >= 0"),
        ("detect_after_s: -1", "detect_after_s", "must be >= 0"),
        (
            "unbalanced_limit_a: 5",
            "unbalanced_limit_a",
            "must be >= 6, got 5 (or null for no limit)",
        ),
        ("unbalanced_limit_a: '20'", "unbalanced_limit_a", "(quoted text; remove the quotes)"),
        ("ramp_step_a: .inf", "ramp_step_a", "must be a finite number, got inf"),
        ("ramp_stepa: 4", "ramp_stepa", "unknown key 'ramp_stepa'; did you mean 'ramp_step_a'?"),
    ],
)
def test_load_management_ranges(tmp_path: Path, entry: str, key: str, message: str) -> None:
    text = f"{BASE}load_management:\n  {entry}\n"
    expect(tmp_path, text, line_of(text, entry), f"load_management.{key}", message)


def test_load_management_not_a_mapping(tmp_path: Path) -> None:
    text = f"{BASE}load_management: [1]\n"
    expect(tmp_path, text, line_of(text, "load_management"), "load_management", "a mapping")


def test_detect_thresholds_the_wrong_way_round_warn(tmp_path: Path) -> None:
    text = f"{BASE}load_management: {{detect_on_a: 1, detect_off_a: 1}}\n"
    (warning,) = loaded(tmp_path, text).warnings
    assert warning.endswith(
        "load_management.detect_off_a: 1 A is not below detect_on_a 1 A; an EV drawing on all "
        "three phases may be taken for a 1-phase one"
    )


def test_grid_export_flags(tmp_path: Path) -> None:
    text = edit(
        "worst_case_non_ev_a: 20}",
        "worst_case_non_ev_a: 20, exports: true,\n       meter_export_positive: true}",
    )
    site = loaded(tmp_path, text).site
    assert site.exports is True and site.meter_export_positive is True
    text = edit("worst_case_non_ev_a: 20}", "worst_case_non_ev_a: 20, exports: 1}")
    expect(tmp_path, text, 2, "grid.exports", "expected true or false, got 1")
    text = edit("worst_case_non_ev_a: 20}", "worst_case_non_ev_a: 20, exports: 'no'}")
    expect(tmp_path, text, 2, "grid.exports", "expected true or false, got 'no'")


def test_grid_export_flags_without_a_grid_meter_warn(tmp_path: Path) -> None:
    text = edit(
        "grid: {rating_a: 63, margin_a: 2, meter: grid_meter, worst_case_non_ev_a: 20}",
        "grid: {rating_a: 63, margin_a: 2, worst_case_non_ev_a: 20, exports: true,\n"
        "       meter_export_positive: true}",
    )
    warnings = [w for w in loaded(tmp_path, text).warnings if "grid." in w]
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "grid.exports: ignored: the grid has no meter, so there is no export to see",
        "grid.meter_export_positive: ignored: the grid has no meter, so there is no export to see",
    ]


def test_meter_frozen_s(tmp_path: Path) -> None:
    text = edit("evse_stale_s: 5}", "evse_stale_s: 5, meter_frozen_s: 20}")
    assert loaded(tmp_path, text).site.control.meter_frozen_s == 20
    for value in ("1", "0.5"):
        text = edit("evse_stale_s: 5}", f"evse_stale_s: 5, meter_frozen_s: {value}}}")
        expect(
            tmp_path,
            text,
            line_of(text, "control:"),
            "control.meter_frozen_s",
            f"{value} s is not longer than tick_s 1 s; two readings in a row that agree would "
            "already count as a frozen meter",
        )
    text = edit("evse_stale_s: 5}", "evse_stale_s: 5, meter_frozen_s: 0}")
    expect(tmp_path, text, line_of(text, "control:"), "control.meter_frozen_s", "must be > 0")


def test_ev_kind(tmp_path: Path) -> None:
    text = edit("    priority_tier: 1\n", "    priority_tier: 1\n    ev_kind: 1p\n")
    config = loaded(tmp_path, text)
    assert config.site.connectors[0].ev_kind is EvKind.ONE_PHASE and config.warnings == ()
    text = edit("    priority_tier: 1\n", "    priority_tier: 1\n    ev_kind: 3p\n")
    assert loaded(tmp_path, text).site.connectors[0].ev_kind is EvKind.THREE_PHASE
    text = edit("    priority_tier: 1\n", "    priority_tier: 1\n    ev_kind: auto\n")
    assert loaded(tmp_path, text).site.connectors[0].ev_kind is EvKind.AUTO


def test_ev_kind_invalid(tmp_path: Path) -> None:
    text = edit("    priority_tier: 1\n", "    priority_tier: 1\n    ev_kind: 2p\n")
    expect(
        tmp_path,
        text,
        line_of(text, "ev_kind"),
        "evses[0].ev_kind",
        "must be 'auto', '1p' or '3p', got '2p'",
    )
    # cp2 is a 1-phase EVSE (phase_rotation L2)
    text = edit("    phase_rotation: L2\n", "    phase_rotation: L2\n    ev_kind: 3p\n")
    expect(
        tmp_path,
        text,
        line_of(text, "ev_kind"),
        "evses[1].ev_kind",
        "'3p' on a 1-phase EVSE (phase_rotation 'L2'): every EV draws on its one phase; use auto "
        "or 1p",
    )


def test_ev_kind_1p_on_a_1_phase_evse_warns(tmp_path: Path) -> None:
    text = edit("    phase_rotation: L2\n", "    phase_rotation: L2\n    ev_kind: 1p\n")
    config = loaded(tmp_path, text)
    assert config.site.connectors[1].ev_kind is EvKind.ONE_PHASE
    (warning,) = config.warnings
    assert warning == (
        f"{tmp_path / 'site.yaml'}:{line_of(text, 'ev_kind')}: evses[1].ev_kind: has no effect on "
        "a 1-phase EVSE (phase_rotation 'L2'): every EV draws on its one phase"
    )


TOU = """\
time_of_use:
  - {name: peak, days: weekdays, start: 17:00, end: 20:00, power_kw: 11}
  - name: weekend-night
    days: [sat, sun]
    start: "22:00"
    end: "06:00"
    power_kw: 22.5
  - {name: whole-wednesday, days: [Wednesday], start: "00:00", end: "24:00", power_kw: 40}
  - {name: sunday-evening, days: sun, start: "18:00", end: "24:00", power_kw: 30}
"""


def test_time_of_use(tmp_path: Path) -> None:
    config = loaded(tmp_path, BASE + TOU)
    peak, night, wednesday, sunday = config.site.time_of_use
    assert peak == TouPeriod(
        days=frozenset({1, 2, 3, 4, 5}), start=time(17), end=time(20), power_w=11000, name="peak"
    )
    assert night == TouPeriod(
        days=frozenset({6, 7}), start=time(22), end=time(6), power_w=22500, name="weekend-night"
    )
    assert wednesday.days == frozenset({3}) and wednesday.end == time(0)
    assert sunday.days == frozenset({7}) and sunday.end == time(0)
    # The core reads them as written: Monday 05:00 is still Sunday's night.
    berlin = ZoneInfo("Europe/Berlin")
    monday_5am = datetime(2026, 11, 30, 5, 0, tzinfo=berlin)
    slot = time_of_use_slot(config.site.time_of_use, monday_5am)
    assert slot is not None and slot.id == "weekend-night" and slot.power_w == 22500
    wednesday_late = datetime(2026, 12, 2, 23, 59, tzinfo=berlin)
    slot = time_of_use_slot(config.site.time_of_use, wednesday_late)
    assert slot is not None and slot.id == "whole-wednesday"
    # Sunday 18:00-22:00 only sunday-evening; from 22:00 the lower night cap (22.5 kW) wins.
    sunday_23h = datetime(2026, 11, 29, 23, 0, tzinfo=berlin)
    slot = time_of_use_slot(config.site.time_of_use, sunday_23h)
    assert slot is not None and slot.power_w == 22500
    assert [w.split(": ", 1)[1] for w in config.warnings] == [
        "time_of_use[2]: overlaps 'peak' at time_of_use[0] (line "
        f"{line_of(BASE + TOU, 'name: peak')}) on wed 17:00-20:00; where periods overlap the "
        "lowest power_kw applies (11 kW there)",
        "time_of_use[3]: overlaps 'weekend-night' at time_of_use[1] (line "
        f"{line_of(BASE + TOU, 'name: weekend-night')}) on sun 22:00-24:00; where periods "
        "overlap the lowest power_kw applies (22.5 kW there)",
    ]


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("weekdays", {1, 2, 3, 4, 5}),
        ("weekend", {6, 7}),
        ("daily", {1, 2, 3, 4, 5, 6, 7}),
        ("Daily", {1, 2, 3, 4, 5, 6, 7}),
        ("fri", {5}),
        ("[mon, wed, mon]", {1, 3}),
        ("[Monday, SUN]", {1, 7}),
    ],
)
def test_time_of_use_days(tmp_path: Path, days: str, expected: set[int]) -> None:
    item = f"{{name: p, days: {days}, start: '08:00', end: '09:00', power_kw: 5}}"
    text = f"{BASE}time_of_use:\n  - {item}\n"
    (period,) = loaded(tmp_path, text).site.time_of_use
    assert period.days == frozenset(expected)


@pytest.mark.parametrize(
    ("item", "key", "message"),
    [
        (
            "days: [mnd]",
            "days",
            "unknown day 'mnd'; use mon, tue, wed, thu, fri, sat, sun (did you mean 'mon'?)",
        ),
        (
            "days: weekdys",
            "days",
            "unknown day 'weekdys'; use mon, tue, wed, thu, fri, sat, sun "
            "(did you mean 'weekdays'?)",
        ),
        (
            "days: []",
            "days",
            "no days listed; list days like [mon, tue] or write weekdays, weekend or daily",
        ),
        (
            "days: 3",
            "days",
            "expected a list of days like [mon, tue] or one of 'weekdays', "
            "'weekend', 'daily', got 3",
        ),
        ("days: [1]", "days", "expected day names like mon, tue, ...; got 1 in the list"),
        ("start: 25:00", "start", "expected a time as 'HH:MM' (00:00..23:59), got '25:00'"),
        (
            "start: 7:00",
            "start",
            "expected a time as 'HH:MM' (00:00..23:59), got '7:00' (write '07:00')",
        ),
        ("start: '17:60'", "start", "got '17:60'"),
        ("start: 1700", "start", "expected text, got 1700 (write a time as 'HH:MM', e.g. '22:00')"),
        ("start: '24:00'", "start", "24:00 is only an end (midnight at the end of the day)"),
        ("end: '24:01'", "end", "(00:00..23:59, or 24:00 for midnight), got '24:01'"),
        (
            "end: '08:00'",
            "end",
            "the period starts and ends at 08:00; it would last no time "
            "(a whole day is start '00:00', end '24:00')",
        ),
        ("power_kw: 0", "power_kw", "must be > 0, got 0"),
        ("power_kw: -11", "power_kw", "must be > 0, got -11"),
        ("power_kw: '11'", "power_kw", "expected a number, got '11' (quoted text"),
        ("name: 'peak hours'", "name", "a name is 1 to 64 letters, digits"),
        ("power: 11", "power", "unknown key 'power'; did you mean 'power_kw'?"),
    ],
)
def test_time_of_use_invalid(tmp_path: Path, item: str, key: str, message: str) -> None:
    fields = {"name": "p", "days": "daily", "start": "'08:00'", "end": "'09:00'", "power_kw": "5"}
    name, _, value = item.partition(": ")
    if name in fields:
        fields[name] = value
    else:
        del fields["power_kw"]
        fields[name] = value
    body = "\n".join(f"    {k}: {v}" for k, v in fields.items())
    text = f"{BASE}time_of_use:\n  - {body.lstrip()}\n"
    expect(tmp_path, text, line_of(text, item), f"time_of_use[0].{key}", message)


def test_time_of_use_needs_its_keys_and_unique_names(tmp_path: Path) -> None:
    text = f"{BASE}time_of_use:\n  - {{name: p, days: daily, start: '08:00', end: '09:00'}}\n"
    expect(tmp_path, text, line_of(text, "name: p"), "time_of_use[0].power_kw", "missing")
    text = (
        f"{BASE}time_of_use:\n"
        "  - {name: p, days: daily, start: '08:00', end: '09:00', power_kw: 5}\n"
        "  - {name: p, days: sat, start: '10:00', end: '11:00', power_kw: 5}\n"
    )
    expect(
        tmp_path,
        text,
        line_of(text, "days: sat"),
        "time_of_use[1].name",
        f"duplicate time-of-use name 'p', already used by time_of_use[0] (line "
        f"{line_of(text, 'days: daily')})",
    )
    text = f"{BASE}time_of_use: {{name: p}}\n"
    expect(tmp_path, text, line_of(text, "time_of_use"), "time_of_use", "expected a list")


def test_a_base_60_number_is_never_read_from_a_clock_time(tmp_path: Path) -> None:
    # YAML 1.1 would read rating_a: 1:00 as 60.
    text = edit("rating_a: 32,", "rating_a: 1:00,")
    expect(
        tmp_path,
        text,
        line_of(text, "rating_a: 1:00"),
        "circuits[0].rating_a",
        "expected a number, got '1:00'",
    )


def test_config_check_shows_the_new_keys(tmp_path: Path) -> None:
    text = edit("    priority_tier: 1\n", "    priority_tier: 1\n    ev_kind: 3p\n")
    text = edit("worst_case_non_ev_a: 20}", "worst_case_non_ev_a: 20, exports: true}", text)
    text += "load_management: {unbalanced_limit_a: 20}\n" + TOU
    out = io.StringIO()
    assert run_config_check(write(tmp_path, text), as_json=True, out=out) == 0
    site = json.loads(out.getvalue())["site"]
    assert site["exports"] is True and site["meter_export_positive"] is False
    assert site["load_management"]["unbalanced_limit_a"] == 20
    assert site["load_management"]["ramp_step_a"] == 6
    assert site["control"]["meter_frozen_s"] == 10
    assert [e["ev_kind"] for e in site["evses"]] == ["3p", "auto"]
    assert site["time_of_use"][0] == {
        "name": "peak",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "start": "17:00",
        "end": "20:00",
        "power_kw": 11.0,
    }
    assert site["time_of_use"][2]["end"] == "24:00"

    out = io.StringIO()
    assert run_config_check(write(tmp_path, text), as_json=False, out=out) == 0
    printed = out.getvalue()
    assert "tier 1, EV 3p" in printed
    assert "meter frozen after 10 s" in printed
    assert (
        "load management: ramp 6 A per 5 s, settle 10 s, on/off at least 60/30 s, rotation "
        "900 s, unbalanced-load limit 20 A" in printed
    )
    assert "grid: exports (meter counts import positive)" in printed
    assert (
        "time of use (Europe/Berlin): peak weekdays 17:00-20:00 11 kW; weekend-night "
        "weekend 22:00-06:00 22.5 kW; whole-wednesday wed 00:00-24:00 40 kW" in printed
    )


# --- evsite config check ---------------------------------------------------------------------


def test_config_check_prints_the_tree_and_returns_0(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_config_check(REPO / "config" / "example-site.yaml", as_json=False, out=out) == 0
    text = out.getvalue()
    assert "grid  63 A/phase, margin 2 A, worst-case non-EV 25 A" in text
    assert "meter grid_meter: eastron_sdm630, /dev/ttyUSB0 9600 8N1, unit 1" in text
    assert "carport  32 A/phase, margin 1 A" in text
    assert "cp2  alfen_ng9xx, tcp://192.168.10.32:502 unit 1" in text
    assert "3-phase L2L3L1, 6..32 A, fallback 6 A, tier 0" in text
    assert "1-phase L2, 6..16 A, fallback 6 A, tier 0" in text
    assert "fallback sum / limit (I5):  L1 18/30 A  L2 24/31 A  L3 18/31 A" in text
    assert "OK: " in text and "4 EVSEs" in text
    assert "\x1b[" not in text  # no colour codes into a file or pipe


def test_config_check_prints_warnings(tmp_path: Path) -> None:
    text = edit("rating_a: 32,", "rating_a: 16,")
    text = edit(
        "    fallback_current_a: 6\n    priority_tier",
        "    fallback_current_a: 0\n    priority_tier",
        text,
    )
    out = io.StringIO()
    assert run_config_check(write(tmp_path, text), as_json=False, out=out) == 0
    assert "warning: " in out.getvalue() and "32 A is above the 16 A rating" in out.getvalue()


def test_config_check_prints_every_problem_and_returns_1(tmp_path: Path) -> None:
    text = edit("rating_a: 32,", "rating_a: abc,")
    text = edit("    max_current_a: 16", "    max_curent_a: 16", text)
    path = write(tmp_path, text)
    out = io.StringIO()
    assert run_config_check(path, as_json=False, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == f"error: {path}:4: circuits[0].rating_a: expected a number, got 'abc'"
    assert lines[1] == (
        f"error: {path}:{line_of(text, 'max_curent_a')}: evses[1].max_curent_a: unknown key "
        "'max_curent_a'; did you mean 'max_current_a'?"
    )
    assert lines[-1] == f"{path}: 2 problems; not a valid site config"


def test_config_check_unreadable_returns_2(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_config_check(tmp_path / "none.yaml", as_json=False, out=out) == 2
    assert out.getvalue().startswith("error: ")
    out = io.StringIO()
    assert run_config_check(tmp_path / "none.yaml", as_json=True, out=out) == 2
    assert json.loads(out.getvalue())["ok"] is False


def test_config_check_json(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_config_check(write(tmp_path, BASE), as_json=True, out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["ok"] is True and doc["problems"] == [] and doc["warnings"] == []
    site = doc["site"]
    assert site["id"] == "demo" and [c["id"] for c in site["circuits"]] == ["grid", "carport"]
    carport = site["circuits"][1]
    assert carport["fallback_sum_a"] == [6, 12, 6] and carport["fallback_limit_a"] == [29, 31, 31]
    assert carport["evses"] == ["cp1", "cp2"]
    cp2 = site["evses"][1]
    assert cp2["phase_rotation"] == "L2" and cp2["grid_phases"] == ["L2"]
    assert cp2["transport"]["type"] == "tcp" and cp2["transport"]["port"] == 502
    assert site["meters"][0]["transport"]["type"] == "serial"
    assert site["service"]["socket_mode"] == "0o660"

    out = io.StringIO()
    bad = write(tmp_path, edit("rating_a: 32,", "rating_a: abc,"), name="bad.yaml")
    assert run_config_check(bad, as_json=True, out=out) == 1
    doc = json.loads(out.getvalue())
    assert doc == {
        "ok": False,
        "problems": [f"{bad}:4: circuits[0].rating_a: expected a number, got 'abc'"],
        "warnings": [],
        "site": None,
    }


def _unwatched_site(tmp_path: Path, control: str, cap: str = "") -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(
        "site: {id: s, timezone: Europe/Berlin, nominal_voltage_v: 230}\n"
        "grid: {rating_a: 40, margin_a: 0, meter: m}\n"
        "meters:\n"
        "  - {id: m, driver: eastron_sdm630, transport: {type: tcp, host: 10.0.0.2}}\n"
        "evses:\n"
        "  - {id: b1, driver: bender_cc612, transport: {type: tcp, host: 10.0.0.3},\n"
        f"     unit_id: 255, fallback_current_a: 6{cap}}}\n"
        "  - {id: b2, driver: bender_cc612, transport: {type: tcp, host: 10.0.0.4},\n"
        "     unit_id: 255, fallback_current_a: 6}\n"
        f"{control}"
    )
    return p


def test_evse_without_watchdog_is_capped_and_counted_at_its_cap(tmp_path: Path) -> None:
    loaded = load_config(_unwatched_site(tmp_path, "", ", unwatched_cap_a: 16"))
    caps = {k.id: k.unwatched_cap_a for k in loaded.site.connectors}
    assert caps == {"b1": 16.0, "b2": 6.0}  # default: its fallback current
    assert any("no controller watchdog" in w and "capped at 16 A" in w for w in loaded.warnings)
    # I5 counts each at what it may still hold when evsite dies: 16 + 6 <= 40 fits, 36 + 6 not.
    with pytest.raises(ConfigError) as err:
        load_config(_unwatched_site(tmp_path, "", ", max_current_a: 40, unwatched_cap_a: 36"))
    assert any("fallback currents do not fit" in p and "b1 36 A" in p for p in err.value.problems)


def test_uncapped_evse_without_watchdog_is_a_loud_warning(tmp_path: Path) -> None:
    loaded = load_config(_unwatched_site(tmp_path, "control: {cap_unwatched: false}\n"))
    assert all(k.unwatched_cap_a is None for k in loaded.site.connectors)
    assert any("control.cap_unwatched is off" in w for w in loaded.warnings)


# --- mqtt ------------------------------------------------------------------------------------


def test_mqtt_is_optional_and_its_defaults(tmp_path: Path) -> None:
    from controller.adapters.mqtt.settings import MqttSettings

    assert loaded(tmp_path, BASE).mqtt is None
    config = loaded(tmp_path, BASE + "mqtt: {host: 127.0.0.1}\n")
    assert config.mqtt == MqttSettings(host="127.0.0.1", port=1883, client_id="evsite-demo")
    assert config.warnings == ()  # a broker on the gateway itself needs no TLS


def test_mqtt_every_key(tmp_path: Path) -> None:
    from controller.adapters.mqtt.settings import TlsFiles

    for name in ("ca.pem", "client.pem", "client.key", "mqtt.credentials"):
        write(tmp_path, "x", name)
    text = BASE + (
        "mqtt:\n"
        "  host: broker.example.com\n"
        "  tls:\n"
        f"    ca_file: {tmp_path}/ca.pem\n"
        f"    cert_file: {tmp_path}/client.pem\n"
        f"    key_file: {tmp_path}/client.key\n"
        f"  credentials_file: {tmp_path}/mqtt.credentials\n"
        "  client_id: gw-0042\n"
        "  keepalive_s: 20\n"
        "  telemetry_interval_s: 5\n"
        "  outbox_max_events: 5000\n"
        "  reconnect_min_s: 0.5\n"
        "  reconnect_max_s: 30\n"
        "  protocol: '3.1.1'\n"
        "  allow_test_injection: false\n"
    )
    m = loaded(tmp_path, text).mqtt
    assert m is not None
    assert (m.host, m.port, m.client_id) == ("broker.example.com", 8883, "gw-0042")
    assert m.tls == TlsFiles(
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "client.pem",
        key_file=tmp_path / "client.key",
    )
    assert m.credentials_file == tmp_path / "mqtt.credentials"
    assert (m.keepalive_s, m.telemetry_interval_s, m.outbox_max_events) == (20, 5.0, 5000)
    assert (m.reconnect_min_s, m.reconnect_max_s, m.protocol) == (0.5, 30.0, "3.1.1")
    assert loaded(tmp_path, BASE + "mqtt: {host: h, protocol: 5}\n").mqtt.protocol == "5"  # type: ignore[union-attr]


def test_mqtt_field_problems_name_file_line_and_key(tmp_path: Path) -> None:
    text = BASE + (
        "mqtt:\n"
        "  host: 192.168.1.300\n"
        "  port: 70000\n"
        "  keepalive_s: 0\n"
        "  protocol: 4\n"
        "  telemetry_interval_s: 0.01\n"
        "  client_id: 'has space'\n"
        "  credentials_file: secrets.yaml\n"
        "  colour: red\n"
    )
    n = line_of(text, "host: 192.168.1.300")
    expect(tmp_path, text, n, "mqtt.host", "'192.168.1.300' is not an IP address or host name")
    expect(tmp_path, text, n + 1, "mqtt.port", "TCP port must be within 1..65535, got 70000")
    expect(tmp_path, text, n + 2, "mqtt.keepalive_s", "must be >= 1, got 0")
    expect(tmp_path, text, n + 3, "mqtt.protocol", "must be 5 or '3.1.1', got 4")
    expect(tmp_path, text, n + 4, "mqtt.telemetry_interval_s", "must be >= 0.1, got 0.01")
    expect(tmp_path, text, n + 5, "mqtt.client_id", "a client id is 1 to 64")
    expect(tmp_path, text, n + 6, "mqtt.credentials_file", "must be an absolute path")
    expect(tmp_path, text, n + 7, "mqtt.colour", "unknown key 'colour'")


def test_mqtt_rules_across_keys_and_missing_files(tmp_path: Path) -> None:
    text = BASE + (
        "mqtt:\n"
        "  host: broker.example.com\n"
        "  reconnect_min_s: 10\n"
        "  reconnect_max_s: 5\n"
        "  tls: {ca_file: /nonexistent/ca.pem, cert_file: /etc/hostname}\n"
        "  credentials_file: /nonexistent/mqtt.credentials\n"
    )
    n = line_of(text, "reconnect_max_s")
    expect(tmp_path, text, n, "mqtt.reconnect_max_s", "5 s is shorter than reconnect_min_s 10 s")
    tls = line_of(text, "tls:")
    expect(tmp_path, text, tls, "mqtt.tls.ca_file", "no such file: /nonexistent/ca.pem")
    expect(tmp_path, text, tls, "mqtt.tls.key_file", "missing: cert_file needs key_file")
    expect(tmp_path, text, tls + 1, "mqtt.credentials_file", "no such file: /nonexistent/mqtt")
    no_host = BASE + "mqtt: {port: 1883}\n"
    expect(tmp_path, no_host, line_of(no_host, "mqtt:"), "mqtt.host", "missing required key")


def test_mqtt_warnings_plain_text_to_a_remote_broker_and_test_injection(tmp_path: Path) -> None:
    config = loaded(
        tmp_path, BASE + "mqtt: {host: broker.example.com, allow_test_injection: true}\n"
    )
    assert len(config.warnings) == 2
    assert (
        "no tls: telemetry, commands and the credentials go to broker.example.com"
        in (config.warnings[0])
    )
    assert "test event injection is on" in config.warnings[1]


def _rs485_site(tmp_path: Path, boxes: int, baud: int) -> Path:
    line = f"{{type: serial, port: /dev/ttyUSB0, baudrate: {baud}, parity: E, stopbits: 1}}"
    rows = "".join(
        f"  - {{id: hd{i}, driver: heidelberg_ec, transport: {line}, unit_id: {i + 1},\n"
        f"     fallback_current_a: 0}}\n"
        for i in range(boxes)
    )
    p = tmp_path / "site.yaml"
    p.write_text(
        "site: {id: s, timezone: Europe/Berlin, nominal_voltage_v: 230}\n"
        "grid: {rating_a: 250, margin_a: 0, meter: m}\n"
        f"meters:\n  - {{id: m, driver: eastron_sdm630, transport: {line}, unit_id: 100}}\n"
        f"evses:\n{rows}"
    )
    return p


def test_a_serial_line_that_cannot_keep_up_is_named(tmp_path: Path) -> None:
    slow = load_config(_rs485_site(tmp_path, 40, 9600))
    assert any(
        "serial line /dev/ttyUSB0 cannot keep up" in w and "40 EVSEs" in w for w in slow.warnings
    ), slow.warnings
    # 20 boxes are read in turn within evse_stale_s, but a decrease to all takes > 1 tick.
    busy = load_config(_rs485_site(tmp_path, 20, 9600))
    assert any("a decrease to all 20 EVSEs at once takes" in w for w in busy.warnings)
    fine = load_config(_rs485_site(tmp_path, 3, 19200))
    assert not any("cannot keep up" in w for w in fine.warnings), fine.warnings
