"""Drivers: the register-map codec (sans-IO): decode/encode, read planning, map validation."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.errors import ConfigError
from drivers.modbus.registermap import (
    DeviceKind,
    Field,
    RegisterMapError,
    RegType,
    Table,
    WordOrder,
    builtin_map_names,
    decode_block,
    decode_value,
    encode_value,
    load_builtin_map,
    load_map_file,
    parse_map,
    parse_map_text,
    plan_reads,
)


def fld(
    name: str = "x",
    *,
    type: RegType = RegType.FLOAT32,
    address: int = 0,
    count: int | None = None,
    word_order: WordOrder = WordOrder.BIG,
    scale: float = 1.0,
    table: Table = Table.HOLDING,
) -> Field:
    widths = {
        "u16": 1,
        "i16": 1,
        "u32": 2,
        "i32": 2,
        "u64": 4,
        "i64": 4,
        "float32": 2,
        "float64": 4,
    }
    return Field(
        name=name,
        table=table,
        address=address,
        type=type,
        count=count if count is not None else widths[type.value],
        word_order=word_order,
        scale=scale,
    )


# --- decode against hand-made registers ------------------------------------------------------


def test_float32_big_endian_words() -> None:
    # 230.5 = 0x43668000: high word first
    assert decode_value(fld(), [0x4366, 0x8000]) == 230.5


def test_float32_little_word_order() -> None:
    assert decode_value(fld(word_order=WordOrder.LITTLE), [0x8000, 0x4366]) == 230.5


def test_float64_energy() -> None:
    regs = list(struct.unpack(">HHHH", struct.pack(">d", 123456789.25)))
    assert decode_value(fld(type=RegType.FLOAT64), regs) == 123456789.25


def test_u32_little_word_order() -> None:
    # 0x00012345 with the low word first (Carlo Gavazzi / Phoenix style)
    f = fld(type=RegType.U32, word_order=WordOrder.LITTLE)
    assert decode_value(f, [0x2345, 0x0001]) == 0x00012345
    assert decode_value(fld(type=RegType.U32), [0x0001, 0x2345]) == 0x00012345


def test_signed_and_scaled() -> None:
    assert decode_value(fld(type=RegType.I16), [0xFFFF]) == -1
    assert decode_value(fld(type=RegType.I32), [0xFFFF, 0xFFFE]) == -2
    assert decode_value(fld(type=RegType.U16, scale=0.1), [160]) == pytest.approx(16.0)
    assert decode_value(fld(type=RegType.U64, scale=0.01), [0, 0, 0, 12345]) == pytest.approx(
        123.45
    )


def test_kwh_to_wh_scale() -> None:
    assert decode_value(fld(scale=1000), [0x3F80, 0x0000]) == 1000.0  # 1.0 kWh


def test_string_nul_padding_and_spaces() -> None:
    f = fld(type=RegType.STRING, count=5)
    assert decode_value(f, [0x4332, 0, 0, 0, 0]) == "C2"  # "C2" + NULs
    assert decode_value(f, [0x4120, 0x2020, 0x2020, 0x2020, 0x2020]) == "A"
    assert decode_value(f, [0x4200, 0x4141, 0, 0, 0]) == "B"  # text ends at the first NUL


def test_invalid_raw_is_nan() -> None:
    f = Field(
        name="e",
        table=Table.HOLDING,
        address=0,
        type=RegType.U32,
        count=2,
        invalid_raw=frozenset({0xFFFFFFFF}),
    )
    assert math.isnan(float(decode_value(f, [0xFFFF, 0xFFFF])))
    assert decode_value(f, [0, 5]) == 5


def test_wrong_register_count_or_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected 2 registers"):
        decode_value(fld(), [1])
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        decode_value(fld(), [1, 70000])


def test_state_letter_mapping() -> None:
    rmap = load_builtin_map("alfen_ng9xx")
    state = rmap.field("state")
    assert state.state_letter("C2") == "C"
    assert state.state_letter("B1") == "B"
    assert state.state_letter("X9") is None


# --- encode ------------------------------------------------------------------------------------


def test_encode_float32_setpoint_two_registers() -> None:
    assert encode_value(fld(), 16.0) == (0x4180, 0x0000)


def test_encode_integer_scale_rounds() -> None:
    assert encode_value(fld(type=RegType.U16, scale=0.1), 16.04) == (160,)
    assert encode_value(fld(type=RegType.U16, scale=0.001), 15.0) == (15000,)  # s -> ms


def test_encode_out_of_range_or_wrong_kind() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(fld(type=RegType.U16), 70000)
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(fld(type=RegType.U16), -1)
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(fld(), 1e40)
    with pytest.raises(ValueError, match="needs a number"):
        encode_value(fld(), "16")
    with pytest.raises(ValueError, match="finite"):
        encode_value(fld(type=RegType.U16), math.nan)
    with pytest.raises(ValueError, match="longer"):
        encode_value(fld(type=RegType.STRING, count=1), "ABC")


@given(st.floats(width=32, allow_nan=False), st.sampled_from(list(WordOrder)))
def test_float32_round_trip(x: float, order: WordOrder) -> None:
    f = fld(word_order=order)
    words = encode_value(f, x)
    assert len(words) == 2 and all(0 <= w <= 0xFFFF for w in words)
    assert decode_value(f, words) == x
    # and the words are what the reference encoding gives (high word first unless little)
    be = struct.unpack(">HH", struct.pack(">f", x))
    assert words == (be if order is WordOrder.BIG else be[::-1])


@given(st.floats(allow_nan=False), st.sampled_from(list(WordOrder)))
def test_float64_round_trip(x: float, order: WordOrder) -> None:
    f = fld(type=RegType.FLOAT64, word_order=order)
    assert decode_value(f, encode_value(f, x)) == x


_INT_RANGES = {
    RegType.U16: (0, 2**16 - 1),
    RegType.I16: (-(2**15), 2**15 - 1),
    RegType.U32: (0, 2**32 - 1),
    RegType.I32: (-(2**31), 2**31 - 1),
    RegType.U64: (0, 2**53),  # beyond 2**53 a float cannot carry every integer
    RegType.I64: (-(2**53), 2**53),
}


@given(st.data(), st.sampled_from(list(_INT_RANGES)), st.sampled_from(list(WordOrder)))
def test_integer_round_trip(data: st.DataObject, t: RegType, order: WordOrder) -> None:
    lo, hi = _INT_RANGES[t]
    x = data.draw(st.integers(lo, hi))
    f = fld(type=t, word_order=order)
    assert decode_value(f, encode_value(f, x)) == x


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10))
def test_string_round_trip(s: str) -> None:
    f = fld(type=RegType.STRING, count=5)
    assert decode_value(f, encode_value(f, s)) == s


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), st.sampled_from(list(WordOrder)))
def test_u32_registers_round_trip(regs: list[int], order: WordOrder) -> None:
    f = fld(type=RegType.U32, word_order=order)
    assert encode_value(f, decode_value(f, regs)) == tuple(regs)


# --- read planning -------------------------------------------------------------------------------


def test_plan_merges_contiguous_fields() -> None:
    fields = [fld("a", address=0), fld("b", address=2), fld("c", address=4)]
    (block,) = plan_reads(fields)
    assert (block.address, block.count) == (0, 6)
    assert [f.name for f in block.fields] == ["a", "b", "c"]


def test_plan_splits_on_gaps_tables_and_size() -> None:
    fields = [
        fld("a", address=0),
        fld("b", address=10),  # 8 registers after a
        fld("c", address=0, table=Table.INPUT),
    ]
    blocks = plan_reads(fields, max_gap_registers=0)
    assert [(b.table, b.address, b.count) for b in blocks] == [
        (Table.HOLDING, 0, 2),
        (Table.HOLDING, 10, 2),
        (Table.INPUT, 0, 2),
    ]
    blocks = plan_reads(fields, max_gap_registers=8)
    assert [(b.table, b.address, b.count) for b in blocks] == [
        (Table.HOLDING, 0, 12),
        (Table.INPUT, 0, 2),
    ]
    many = [fld(f"f{i}", address=2 * i) for i in range(60)]  # 120 contiguous registers
    blocks = plan_reads(many, max_registers=100)
    assert [(b.address, b.count) for b in blocks] == [(0, 100), (100, 20)]


def test_plan_overlapping_fields_share_a_block() -> None:
    fields = [fld("whole", type=RegType.U32, address=0), fld("low", type=RegType.U16, address=1)]
    (block,) = plan_reads(fields)
    assert block.count == 2
    assert decode_block(block, [1, 2]) == {"whole": 0x10002, "low": 2}


def test_decode_block_names_values() -> None:
    fields = [fld("a", address=10), fld("b", type=RegType.U16, address=13)]
    (block,) = plan_reads(fields, max_gap_registers=1)
    values = decode_block(block, [0x4366, 0x8000, 0, 7])
    assert values == {"a": 230.5, "b": 7}
    with pytest.raises(ValueError):
        decode_block(block, [0, 0, 0])


def test_builtin_maps_plan() -> None:
    sdm = load_builtin_map("eastron_sdm630")
    assert sdm.kind is DeviceKind.METER
    assert [(b.table, b.address, b.count) for b in sdm.plan()] == [
        (Table.INPUT, 0x00, 18),
        (Table.INPUT, 0x34, 2),
        (Table.INPUT, 0x48, 2),
    ]
    alfen = load_builtin_map("alfen_ng9xx")
    assert alfen.kind is DeviceKind.EVSE
    assert [(b.table, b.address, b.count) for b in alfen.plan()] == [
        (Table.HOLDING, 306, 72),
        (Table.HOLDING, 1201, 15),
    ]
    assert alfen.evse is not None and alfen.evse.setpoint.field == "setpoint_a"
    assert alfen.field("setpoint_a").count == 2 and alfen.field("setpoint_a").write_function == 16
    assert set(builtin_map_names()) >= {"eastron_sdm630", "alfen_ng9xx"}


# --- malformed maps ------------------------------------------------------------------------------

GOOD_METER = """
map_version: 1
kind: meter
model: Test meter
defaults: {table: input}
fields:
  - {name: current_l1_a, address: 0, type: float32}
  - {name: current_l2_a, address: 2, type: float32}
  - {name: current_l3_a, address: 4, type: float32}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(RegisterMapError) as info:
        parse_map_text(text, name="t", source="site/t.yaml")
    assert isinstance(info.value, ConfigError)
    return info.value.problems


def test_good_map_parses() -> None:
    m = parse_map_text(GOOD_METER, name="t", source="t.yaml")
    assert [f.name for f in m.fields] == ["current_l1_a", "current_l2_a", "current_l3_a"]
    assert m.fields[0].table is Table.INPUT


@pytest.mark.parametrize(
    ("replace", "with_", "expected"),
    [
        (
            "type: float32}\n  - {name: current_l2_a",
            "type: flaot32}\n  - {name: current_l2_a",
            "field 'current_l1_a': type 'flaot32' is not one of",
        ),
        ("address: 2,", "adress: 2,", "field 'current_l2_a': unknown keys ['adress']"),
        ("address: 4,", "address: -4,", "field 'current_l3_a': address -4 must be"),
        ("address: 4,", "address: 0,", None),  # overlapping fields are allowed
        ("defaults: {table: input}", "defaults: {table: coils}", "table 'coils' is not one of"),
        ("map_version: 1", "map_version: 2", "map_version: 2 is not supported"),
        ("kind: meter", "kind: inverter", "kind 'inverter' is not one of"),
        ("name: current_l3_a", "name: Current L3", "name must be lower_snake_case"),
        ("name: current_l3_a", "name: current_l2_a", "field 'current_l2_a': defined twice"),
        ("name: current_l3_a", "name: other_a", "field 'current_l3_a': required in a meter map"),
        (
            "type: float32}\n  - {name: current_l3_a",
            "type: float32, scale: 0}\n  - {name: current_l3_a",
            "scale 0 must be a non-zero",
        ),
        (
            "type: float32}\n  - {name: current_l3_a",
            "type: float32, count: 4}\n  - {name: current_l3_a",
            "count 4 does not match float32",
        ),
        (
            "type: float32}\n  - {name: current_l3_a",
            "type: float32, access: rw}\n  - {name: current_l3_a",
            "input registers cannot be written",
        ),
    ],
)
def test_malformed_map_names_file_and_field(replace: str, with_: str, expected: str | None) -> None:
    assert replace in GOOD_METER
    text = GOOD_METER.replace(replace, with_, 1)
    if expected is None:
        parse_map_text(text, name="t", source="site/t.yaml")
        return
    problems = _problems(text)
    assert any(p.startswith("site/t.yaml: ") and expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD_METER.replace("type: float32", "type: nope").replace("address: 2", "address: x")
    problems = _problems(text)
    assert len(problems) >= 3
    assert all(p.startswith("site/t.yaml: ") for p in problems)


def test_string_field_rules() -> None:
    base = GOOD_METER + "  - {name: label, address: 10, type: string}\n"
    assert any("string needs count" in p for p in _problems(base))
    scaled = GOOD_METER + "  - {name: label, address: 10, type: string, count: 2, scale: 2}\n"
    assert any("cannot have a scale" in p for p in _problems(scaled))
    swapped = GOOD_METER + (
        "  - {name: label, address: 10, type: string, count: 2, word_order: little}\n"
    )
    assert any("word_order applies to numbers" in p for p in _problems(swapped))
    # a map-wide little word order does not touch its strings
    inherited = GOOD_METER.replace("defaults: {table: input}", "defaults: {word_order: little}")
    inherited += "  - {name: label, address: 10, type: string, count: 2}\n"
    assert parse_map_text(inherited, name="t", source="t.yaml").field("label").count == 2


GOOD_EVSE = """
map_version: 1
kind: evse
model: Test EVSE
fields:
  - name: state
    address: 5
    type: u16
    table: input
    states: {2: A, 4: B, 6: C}
  - {name: limit_a, address: 261, type: u16, scale: 0.1, access: rw, write_function: 6}
  - {name: watchdog_timeout_s, address: 257, type: u16, scale: 0.001, access: rw}
  - {name: failsafe_a, address: 262, type: u16, scale: 0.1, access: rw}
  - {name: standby, address: 258, type: u16, access: rw}
evse:
  setpoint: limit_a
  fallback: {field: failsafe_a, programme: true}
  watchdog: {refresh_fraction: 0.333, default_timeout_s: 15, timeout_field: watchdog_timeout_s}
  setup_writes: [{field: standby, value: 4}]
"""


def test_evse_map_with_programmable_watchdog() -> None:
    m = parse_map_text(GOOD_EVSE, name="t", source="t.yaml")
    assert m.evse is not None
    assert m.evse.setpoint.field == "limit_a"
    assert m.evse.fallback is not None and m.evse.fallback.programme
    assert m.evse.watchdog is not None and m.evse.watchdog.timeout_field == "watchdog_timeout_s"
    assert m.field("state").state_letter(4) == "B"
    assert m.field("state").state_letter(99) is None


@pytest.mark.parametrize(
    ("replace", "with_", "expected"),
    [
        ("states: {2: A, 4: B, 6: C}", "states: {2: A, 4: B, 6: G}", "states[6] = 'G'"),
        ("states: {2: A, 4: B, 6: C}", "states: {'2': A}", "must be an integer"),
        ("    states: {2: A, 4: B, 6: C}\n", "", "needs states"),
        ("setpoint: limit_a", "setpoint: nothing", "field 'nothing' is not defined"),
        ("scale: 0.1, access: rw, write_function: 6}", "scale: 0.1}", "must be access: rw"),
        ("refresh_fraction: 0.333", "refresh_fraction: 2", "refresh_fraction 2 must be in"),
        ("value: 4}", "value: 70000}", "does not fit u16"),
        (
            "type: u16, scale: 0.1, access: rw, write_function: 6",
            "type: float32, access: rw, write_function: 6",
            "write_function 6 writes one register",
        ),
    ],
)
def test_malformed_evse_map(replace: str, with_: str, expected: str) -> None:
    assert replace in GOOD_EVSE
    problems = _problems(GOOD_EVSE.replace(replace, with_, 1))
    assert any(expected in p for p in problems), problems


def test_not_yaml_or_not_a_mapping() -> None:
    assert "not valid YAML" in _problems("fields: [")[0]
    with pytest.raises(RegisterMapError, match="must be a mapping"):
        parse_map([1, 2], name="t", source="t.yaml")


def test_map_file_and_unknown_builtin(tmp_path: Path) -> None:
    p = tmp_path / "my_meter.yaml"
    p.write_text(GOOD_METER, encoding="utf-8")
    m = load_map_file(p)
    assert m.name == "my_meter" and m.source == str(p)
    with pytest.raises(RegisterMapError, match="cannot read"):
        load_map_file(tmp_path / "missing.yaml")
    with pytest.raises(RegisterMapError, match="no built-in register map 'nope'"):
        load_builtin_map("nope")
