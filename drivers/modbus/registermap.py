"""Drivers layer: register maps as data, and the sans-IO codec that plans, decodes and encodes them.

A register map (one YAML file per device model, see ``maps/``) names every register the drivers
use: its table, 0-based PDU address, data type, word order, scale and, for an EVSE's state, the
mapping from the raw value to an IEC 61851 state letter. This module turns such a file into
immutable ``Field`` objects, merges fields into as few reads as the device allows
(``plan_reads``), decodes register blocks into named values (``decode_block``) and encodes values
for writes (``encode_value``). The byte and word handling is done here with ``struct`` on
purpose: no I/O and no pymodbus, so the codec is tested on its own and the maps stay the single
place that knows a model.

Decoded values are in the unit the field's name carries: ``value = raw * scale``; encoding
divides by ``scale`` (and rounds for integer types). Byte order inside a register is always
big-endian (Modbus); ``word_order`` says whether the first register holds the most (big) or the
least (little) significant word of a multi-register value.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TypeGuard

import yaml

from controller.core.errors import ConfigError

MAP_VERSION = 1
MODBUS_MAX_READ_REGISTERS = 125  # FC03/FC04 protocol limit
MODBUS_MAX_WRITE_REGISTERS = 123  # FC16 protocol limit
DEFAULT_MAX_READ_REGISTERS = 100
STATE_LETTERS = ("A", "B", "C", "D", "E", "F")

Value = int | float | str


class Table(StrEnum):
    """Which register table a field lives in (and so which read function code reaches it)."""

    HOLDING = "holding"  # FC03 read, FC06/FC16 write
    INPUT = "input"  # FC04 read only


class WordOrder(StrEnum):
    BIG = "big"  # first register = most significant word
    LITTLE = "little"  # first register = least significant word


class RegType(StrEnum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # ASCII, two characters per register (high byte first), NUL/space padded


class Access(StrEnum):
    READ = "r"
    READ_WRITE = "rw"


class DeviceKind(StrEnum):
    METER = "meter"
    EVSE = "evse"


_STRUCT_FORMAT: Mapping[RegType, str] = {
    RegType.U16: ">H",
    RegType.I16: ">h",
    RegType.U32: ">I",
    RegType.I32: ">i",
    RegType.U64: ">Q",
    RegType.I64: ">q",
    RegType.FLOAT32: ">f",
    RegType.FLOAT64: ">d",
}
_WIDTH: Mapping[RegType, int] = {t: struct.calcsize(f) // 2 for t, f in _STRUCT_FORMAT.items()}
_INTEGER_TYPES = frozenset(
    {RegType.U16, RegType.I16, RegType.U32, RegType.I32, RegType.U64, RegType.I64}
)
_FLOAT_TYPES = frozenset({RegType.FLOAT32, RegType.FLOAT64})

# Field names the drivers give a meaning to; a map may define others (read and kept for status).
METER_ROLES = (
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "power_w",
    "power_l1_w",
    "power_l2_w",
    "power_l3_w",
    "energy_import_wh",
)
METER_REQUIRED = ("current_l1_a", "current_l2_a", "current_l3_a")
EVSE_ROLES = (
    "state",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_w",
    "energy_wh",
    "applied_limit_a",
)
EVSE_REQUIRED = ("state",)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class RegisterMapError(ConfigError):
    """A register map file is malformed; each problem names the file and the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One named value in a device's registers."""

    name: str
    table: Table
    address: int  # 0-based PDU address of the first register
    type: RegType
    count: int  # registers occupied
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1.0  # value = raw * scale
    access: Access = Access.READ
    poll: bool = True  # read on every ``read()`` of the device
    write_function: int = 16  # 16 (write multiple) or 6 (write single, one register only)
    # raw value -> IEC 61851 state letter (only for a state field)
    states: Mapping[int | str, str] | None = None
    # raw integer values the device uses for "no value" (decoded as NaN)
    invalid_raw: frozenset[int] = frozenset()
    description: str = ""

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.address + self.count

    @property
    def writable(self) -> bool:
        return self.access is Access.READ_WRITE

    @property
    def numeric(self) -> bool:
        return self.type is not RegType.STRING

    def state_letter(self, value: Value) -> str | None:
        """The IEC state letter for a decoded value, None when the map does not know the value."""
        if self.states is None:
            return None
        key: int | str
        if isinstance(value, float):
            if not value.is_integer():
                return None
            key = int(value)
        else:
            key = value
        return self.states.get(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBlock:
    """One read request: contiguous registers of one table holding one or more fields."""

    table: Table
    address: int
    count: int
    fields: tuple[Field, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True, kw_only=True)
class SetpointSpec:
    """How ``write_limit`` reaches the device."""

    field: str
    pause_value: float = 0.0  # value written (in the field's unit) for "0 A: pause charging"


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackSpec:
    """Where the EVSE keeps the current it falls back to when its watchdog expires."""

    field: str
    # True: ``setup`` writes the configured fallback current; False: the device is configured
    # elsewhere (e.g. a commissioning tool), ``setup`` reads it back and compares.
    programme: bool = False
    tolerance_a: float = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogSpec:
    """The EVSE's own watchdog: how long it keeps a written limit without a refresh."""

    refresh_fraction: float  # rewrite the limit every timeout * fraction
    default_timeout_s: float
    # DeviceSpec.options key that overrides the timeout for one device (the device's own setting)
    timeout_option: str | None = None
    # writable field ``setup`` programmes with the timeout (in seconds; the field's scale
    # converts to the device's unit); None when the device's timeout is set elsewhere
    timeout_field: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupWrite:
    """A constant written once by ``setup`` (e.g. "disable standby")."""

    field: str
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class EvseSpec:
    setpoint: SetpointSpec
    fallback: FallbackSpec | None = None
    watchdog: WatchdogSpec | None = None
    setup_writes: tuple[SetupWrite, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterMap:
    """A whole device model: its fields, how it may be read, and (for an EVSE) how it is driven."""

    name: str
    source: str  # where it was loaded from, for messages
    kind: DeviceKind
    model: str
    description: str
    fields: tuple[Field, ...]
    max_read_registers: int = DEFAULT_MAX_READ_REGISTERS
    max_gap_registers: int = 0
    evse: EvseSpec | None = None

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.source}: no field {name!r}")

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def get(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def polled(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.poll)

    def plan(self, fields: Iterable[Field] | None = None) -> tuple[ReadBlock, ...]:
        """Read plan for ``fields`` (default: every polled field) within this model's limits."""
        return plan_reads(
            self.polled if fields is None else fields,
            max_registers=self.max_read_registers,
            max_gap_registers=self.max_gap_registers,
        )


# --- codec ------------------------------------------------------------------------------------


def _check_registers(registers: Sequence[int], expected: int, what: str) -> None:
    if len(registers) != expected:
        raise ValueError(f"{what}: expected {expected} registers, got {len(registers)}")
    for r in registers:
        if not 0 <= r <= 0xFFFF:
            raise ValueError(f"{what}: register value {r!r} is not 0..65535")


def _words_to_bytes(registers: Sequence[int], word_order: WordOrder) -> bytes:
    words = registers if word_order is WordOrder.BIG else list(reversed(registers))
    return b"".join(w.to_bytes(2, "big") for w in words)


def _bytes_to_words(data: bytes, word_order: WordOrder) -> tuple[int, ...]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if word_order is WordOrder.LITTLE:
        words.reverse()
    return tuple(words)


def decode_value(field: Field, registers: Sequence[int]) -> Value:
    """Decode one field from exactly ``field.count`` registers. Raises ValueError on bad input."""
    _check_registers(registers, field.count, f"field {field.name!r}")
    if field.type is RegType.STRING:
        data = b"".join(r.to_bytes(2, "big") for r in registers)
        return data.split(b"\x00", 1)[0].decode("latin-1").strip()
    raw = struct.unpack(_STRUCT_FORMAT[field.type], _words_to_bytes(registers, field.word_order))[0]
    if field.type in _INTEGER_TYPES:
        if raw in field.invalid_raw:
            return math.nan
        if field.scale == 1.0:
            return int(raw)
    return float(raw) * field.scale


def encode_value(field: Field, value: Value) -> tuple[int, ...]:
    """Encode ``value`` (in the field's unit) into ``field.count`` registers for a write.

    Raises ValueError when the value cannot be represented (wrong kind, out of range, too long).
    """
    if field.type is RegType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"field {field.name!r}: string field needs a str, got {value!r}")
        data = value.encode("ascii")
        if len(data) > 2 * field.count:
            raise ValueError(f"field {field.name!r}: {value!r} is longer than {2 * field.count}")
        data = data.ljust(2 * field.count, b"\x00")
        return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    if isinstance(value, str | bool):
        raise ValueError(f"field {field.name!r}: numeric field needs a number, got {value!r}")
    scaled = float(value) / field.scale
    fmt = _STRUCT_FORMAT[field.type]
    if field.type in _FLOAT_TYPES:
        try:
            data = struct.pack(fmt, scaled)
        except (OverflowError, struct.error) as exc:
            raise ValueError(f"field {field.name!r}: {value!r} does not fit {field.type}") from exc
    else:
        if not math.isfinite(scaled):
            raise ValueError(f"field {field.name!r}: {value!r} is not a finite number")
        try:
            data = struct.pack(fmt, round(scaled))
        except struct.error as exc:
            raise ValueError(f"field {field.name!r}: {value!r} does not fit {field.type}") from exc
    return _bytes_to_words(data, field.word_order)


def plan_reads(
    fields: Iterable[Field],
    *,
    max_registers: int = DEFAULT_MAX_READ_REGISTERS,
    max_gap_registers: int = 0,
) -> tuple[ReadBlock, ...]:
    """Merge fields into as few reads as possible.

    Fields of one table are merged into one block while the unused registers between them are
    at most ``max_gap_registers`` and the block stays within ``max_registers``. Blocks come out
    ordered by table, then address.
    """
    if not 1 <= max_registers <= MODBUS_MAX_READ_REGISTERS:
        raise ValueError(f"max_registers {max_registers} is not 1..{MODBUS_MAX_READ_REGISTERS}")
    if max_gap_registers < 0:
        raise ValueError(f"max_gap_registers {max_gap_registers} is negative")
    ordered = sorted(fields, key=lambda f: (f.table.value, f.address, f.count))
    blocks: list[ReadBlock] = []
    start = end = 0
    table: Table | None = None
    members: list[Field] = []

    def flush() -> None:
        if table is not None and members:
            blocks.append(
                ReadBlock(table=table, address=start, count=end - start, fields=tuple(members))
            )

    for f in ordered:
        if f.count > max_registers:
            raise ValueError(f"field {f.name!r} ({f.count} registers) exceeds {max_registers}")
        fits = (
            table is f.table
            and f.address - end <= max_gap_registers
            and max(end, f.end) - start <= max_registers
        )
        if fits:
            end = max(end, f.end)
            members.append(f)
        else:
            flush()
            table, start, end, members = f.table, f.address, f.end, [f]
    flush()
    return tuple(blocks)


def decode_block(block: ReadBlock, registers: Sequence[int]) -> dict[str, Value]:
    """Decode every field of ``block`` from the registers a read of it returned."""
    _check_registers(registers, block.count, f"block {block.table}@{block.address}")
    return {
        f.name: decode_value(f, registers[f.address - block.address : f.end - block.address])
        for f in block.fields
    }


# --- parsing a map ----------------------------------------------------------------------------

_MAP_KEYS = frozenset(
    {"map_version", "kind", "model", "description", "read", "defaults", "fields", "evse"}
)
_FIELD_KEYS = frozenset(
    {
        "name",
        "table",
        "address",
        "type",
        "count",
        "word_order",
        "scale",
        "access",
        "poll",
        "write_function",
        "states",
        "invalid_raw",
        "description",
    }
)


class _Problems:
    """Collects every problem in one file so the user sees them all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, text: str) -> None:
        self.items.append(f"{self.source}: {where}: {text}")


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _enum(
    cls: type[Table] | type[WordOrder] | type[RegType] | type[Access] | type[DeviceKind],
    raw: object,
    where: str,
    key: str,
    problems: _Problems,
) -> StrEnum | None:
    try:
        return cls(str(raw))
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        problems.add(where, f"{key} {raw!r} is not one of: {allowed}")
        return None


def _parse_field(
    raw: object, index: int, defaults: Mapping[str, object], problems: _Problems
) -> Field | None:
    if not isinstance(raw, Mapping):
        problems.add(f"fields[{index}]", "must be a mapping with name, address and type")
        return None
    name = raw.get("name")
    where = f"field {name!r}" if isinstance(name, str) else f"fields[{index}]"
    before = len(problems.items)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.add(where, "name must be lower_snake_case text (with its unit, e.g. power_w)")
    unknown = sorted(str(k) for k in raw if k not in _FIELD_KEYS)
    if unknown:
        problems.add(where, f"unknown keys {unknown} (allowed: {sorted(_FIELD_KEYS)})")

    table = _enum(
        Table, raw.get("table", defaults.get("table", "holding")), where, "table", problems
    )
    word_order = _enum(
        WordOrder,
        raw.get("word_order", defaults.get("word_order", "big")),
        where,
        "word_order",
        problems,
    )
    access = _enum(Access, raw.get("access", "r"), where, "access", problems)
    rtype: StrEnum | None = None
    if "type" not in raw:
        problems.add(where, "type is missing")
    else:
        rtype = _enum(RegType, raw["type"], where, "type", problems)

    address = raw.get("address")
    if not _is_int(address) or not 0 <= address <= 0xFFFF:
        problems.add(where, f"address {address!r} must be an integer 0..65535 (0-based PDU)")

    count: object = raw.get("count")
    if rtype is RegType.STRING:
        if not _is_int(count) or not 1 <= count <= MODBUS_MAX_READ_REGISTERS:
            problems.add(where, f"string needs count (registers) 1..125, got {count!r}")
    elif isinstance(rtype, RegType):
        width = _WIDTH[rtype]
        if count is not None and count != width:
            problems.add(where, f"count {count!r} does not match {rtype.value} ({width} registers)")
        count = width
    if _is_int(address) and _is_int(count) and address + count > 0x10000:
        problems.add(where, f"registers {address}..{address + count - 1} run past 65535")

    scale = raw.get("scale", 1.0)
    if not _is_number(scale) or scale == 0 or not math.isfinite(scale):
        problems.add(where, f"scale {scale!r} must be a non-zero number")
    elif rtype is RegType.STRING and scale != 1:
        problems.add(where, "a string field cannot have a scale")

    poll = raw.get("poll", True)
    if not isinstance(poll, bool):
        problems.add(where, f"poll {poll!r} must be true or false")

    write_function = raw.get("write_function", 16)
    if write_function not in (6, 16) or isinstance(write_function, bool):
        problems.add(where, f"write_function {write_function!r} must be 6 or 16")
    elif write_function == 6 and _is_int(count) and count != 1:
        problems.add(where, "write_function 6 writes one register; this field has more")
    if access is Access.READ_WRITE and table is Table.INPUT:
        problems.add(where, "input registers cannot be written (use table: holding)")
    if access is Access.READ_WRITE and _is_int(count) and count > MODBUS_MAX_WRITE_REGISTERS:
        problems.add(where, f"{count} registers cannot go in one write (FC16 takes 123)")
    if rtype is RegType.STRING and raw.get("word_order", "big") != "big":
        problems.add(where, "word_order applies to numbers; text is read in register order")

    states = _parse_states(raw.get("states"), rtype, where, problems)

    invalid_raw_in = raw.get("invalid_raw", [])
    invalid_raw: frozenset[int] = frozenset()
    if not isinstance(invalid_raw_in, list) or not all(_is_int(v) for v in invalid_raw_in):
        problems.add(where, "invalid_raw must be a list of integers")
    elif invalid_raw_in and rtype not in _INTEGER_TYPES:
        problems.add(where, "invalid_raw applies to integer types only")
    else:
        invalid_raw = frozenset(invalid_raw_in)

    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add(where, "description must be text")

    if len(problems.items) != before:
        return None
    assert isinstance(name, str) and isinstance(table, Table) and isinstance(rtype, RegType)
    assert isinstance(word_order, WordOrder) and isinstance(access, Access)
    assert _is_int(address) and _is_int(count) and isinstance(poll, bool)
    return Field(
        name=name,
        table=table,
        address=int(address),
        type=rtype,
        count=int(count),
        word_order=word_order,
        scale=float(scale),
        access=access,
        poll=poll,
        write_function=int(write_function),
        states=states,
        invalid_raw=invalid_raw,
        description=str(description),
    )


def _parse_states(
    raw: object, rtype: StrEnum | None, where: str, problems: _Problems
) -> Mapping[int | str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        problems.add(where, "states must be a non-empty mapping of raw value -> state letter")
        return None
    out: dict[int | str, str] = {}
    for key, letter in raw.items():
        if rtype is RegType.STRING:
            if not isinstance(key, str):
                problems.add(
                    where, f"states key {key!r} must be text for a string field (quote it in YAML)"
                )
                continue
        elif rtype in _INTEGER_TYPES:
            if not _is_int(key):
                problems.add(where, f"states key {key!r} must be an integer for {rtype}")
                continue
        else:
            problems.add(where, f"states need an integer or string field, not {rtype}")
            return None
        if not isinstance(letter, str) or letter not in STATE_LETTERS:
            problems.add(where, f"states[{key!r}] = {letter!r} is not one of {STATE_LETTERS}")
            continue
        out[key] = letter
    return MappingProxyType(out)


def _parse_evse(raw: object, by_name: Mapping[str, Field], problems: _Problems) -> EvseSpec | None:
    if not isinstance(raw, Mapping):
        problems.add("evse", "an EVSE map needs an evse: section with at least setpoint")
        return None
    before = len(problems.items)
    allowed = {"setpoint", "fallback", "watchdog", "setup_writes"}
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        problems.add("evse", f"unknown keys {unknown} (allowed: {sorted(allowed)})")

    def writable_field(name: object, where: str, *, numeric: bool = True) -> str | None:
        if not isinstance(name, str) or name not in by_name:
            problems.add(where, f"field {name!r} is not defined in fields")
            return None
        f = by_name[name]
        if not f.writable:
            problems.add(where, f"field {name!r} must be access: rw")
        if numeric and not f.numeric:
            problems.add(where, f"field {name!r} must be numeric")
        return name

    sp_raw = raw.get("setpoint")
    if isinstance(sp_raw, str):
        sp_raw = {"field": sp_raw}
    setpoint: SetpointSpec | None = None
    if not isinstance(sp_raw, Mapping):
        problems.add("evse.setpoint", "missing: name the writable current field")
    else:
        sp_field = writable_field(sp_raw.get("field"), "evse.setpoint")
        pause = sp_raw.get("pause_value", 0.0)
        if not _is_number(pause):
            problems.add("evse.setpoint", f"pause_value {pause!r} must be a number")
        if sp_field is not None and _is_number(pause):
            setpoint = SetpointSpec(field=sp_field, pause_value=float(pause))

    fallback: FallbackSpec | None = None
    fb_raw = raw.get("fallback")
    if fb_raw is not None:
        if not isinstance(fb_raw, Mapping):
            problems.add("evse.fallback", "must be a mapping with field, programme, tolerance_a")
        else:
            programme = fb_raw.get("programme", False)
            tol = fb_raw.get("tolerance_a", 0.1)
            fb_name = fb_raw.get("field")
            if not isinstance(programme, bool):
                problems.add("evse.fallback", "programme must be true or false")
            elif programme:
                writable_field(fb_name, "evse.fallback")
            elif not isinstance(fb_name, str) or fb_name not in by_name:
                problems.add("evse.fallback", f"field {fb_name!r} is not defined in fields")
            elif not by_name[fb_name].numeric:
                problems.add("evse.fallback", f"field {fb_name!r} must be numeric")
            if not _is_number(tol) or tol < 0:
                problems.add("evse.fallback", f"tolerance_a {tol!r} must be a number >= 0")
            if isinstance(fb_name, str) and isinstance(programme, bool) and _is_number(tol):
                fallback = FallbackSpec(field=fb_name, programme=programme, tolerance_a=float(tol))

    watchdog: WatchdogSpec | None = None
    wd_raw = raw.get("watchdog")
    if wd_raw is not None:
        if not isinstance(wd_raw, Mapping):
            problems.add("evse.watchdog", "must be a mapping")
        else:
            frac = wd_raw.get("refresh_fraction")
            default = wd_raw.get("default_timeout_s")
            option = wd_raw.get("timeout_option")
            tfield = wd_raw.get("timeout_field")
            if not _is_number(frac) or not 0 < frac < 1:
                problems.add("evse.watchdog", f"refresh_fraction {frac!r} must be in (0, 1)")
            if not _is_number(default) or not default > 0:
                problems.add("evse.watchdog", f"default_timeout_s {default!r} must be > 0")
            if option is not None and not isinstance(option, str):
                problems.add("evse.watchdog", f"timeout_option {option!r} must be text")
            if tfield is not None:
                writable_field(tfield, "evse.watchdog.timeout_field")
            if (
                _is_number(frac)
                and _is_number(default)
                and (option is None or isinstance(option, str))
                and (tfield is None or isinstance(tfield, str))
            ):
                watchdog = WatchdogSpec(
                    refresh_fraction=float(frac),
                    default_timeout_s=float(default),
                    timeout_option=option,
                    timeout_field=tfield,
                )

    writes: list[SetupWrite] = []
    sw_raw = raw.get("setup_writes", [])
    if not isinstance(sw_raw, list):
        problems.add("evse.setup_writes", "must be a list of {field, value}")
    else:
        for i, item in enumerate(sw_raw):
            where = f"evse.setup_writes[{i}]"
            if not isinstance(item, Mapping):
                problems.add(where, "must be a mapping {field, value}")
                continue
            fname = writable_field(item.get("field"), where, numeric=False)
            value = item.get("value")
            if not (_is_number(value) or isinstance(value, str)):
                problems.add(where, f"value {value!r} must be a number or text")
            elif fname is not None:
                try:
                    encode_value(by_name[fname], value)
                except ValueError as exc:
                    problems.add(where, str(exc))
                writes.append(SetupWrite(field=fname, value=value))

    if len(problems.items) != before or setpoint is None:
        return None
    return EvseSpec(
        setpoint=setpoint, fallback=fallback, watchdog=watchdog, setup_writes=tuple(writes)
    )


def parse_map(data: object, *, name: str, source: str) -> RegisterMap:
    """Build a ``RegisterMap`` from parsed YAML; raises RegisterMapError listing every problem."""
    problems = _Problems(source)
    if not isinstance(data, Mapping):
        problems.add("top level", "a register map must be a mapping")
        raise RegisterMapError(problems.items)
    unknown = sorted(str(k) for k in data if k not in _MAP_KEYS)
    if unknown:
        problems.add("top level", f"unknown keys {unknown} (allowed: {sorted(_MAP_KEYS)})")
    version = data.get("map_version")
    if version != MAP_VERSION:
        problems.add("map_version", f"{version!r} is not supported (expected {MAP_VERSION})")
    kind = _enum(DeviceKind, data.get("kind"), "kind", "kind", problems)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        problems.add("model", "must name the device model")
    description = data.get("description", model if isinstance(model, str) else "")
    if not isinstance(description, str):
        problems.add("description", "must be text")

    read = data.get("read", {})
    max_regs: object = DEFAULT_MAX_READ_REGISTERS
    max_gap: object = 0
    if not isinstance(read, Mapping):
        problems.add("read", "must be a mapping {max_registers, max_gap_registers}")
    else:
        extra = sorted(str(k) for k in read if k not in {"max_registers", "max_gap_registers"})
        if extra:
            problems.add("read", f"unknown keys {extra}")
        max_regs = read.get("max_registers", DEFAULT_MAX_READ_REGISTERS)
        max_gap = read.get("max_gap_registers", 0)
        if not _is_int(max_regs) or not 1 <= max_regs <= MODBUS_MAX_READ_REGISTERS:
            problems.add("read", f"max_registers {max_regs!r} must be 1..125")
        if not _is_int(max_gap) or max_gap < 0:
            problems.add("read", f"max_gap_registers {max_gap!r} must be an integer >= 0")

    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        problems.add("defaults", "must be a mapping {table, word_order}")
        defaults = {}
    extra = sorted(str(k) for k in defaults if k not in {"table", "word_order"})
    if extra:
        problems.add("defaults", f"unknown keys {extra} (allowed: table, word_order)")

    raw_fields = data.get("fields")
    fields: list[Field] = []
    if not isinstance(raw_fields, list) or not raw_fields:
        problems.add("fields", "must be a non-empty list")
        raw_fields = []
    seen: set[str] = set()
    for i, raw_field in enumerate(raw_fields):
        f = _parse_field(raw_field, i, defaults, problems)
        if f is None:
            continue
        if f.name in seen:
            problems.add(f"field {f.name!r}", "defined twice")
            continue
        seen.add(f.name)
        if _is_int(max_regs) and f.count > max_regs:
            problems.add(f"field {f.name!r}", f"{f.count} registers exceed max_registers")
        fields.append(f)
    by_name = {f.name: f for f in fields}

    evse: EvseSpec | None = None
    required: tuple[str, ...]
    roles: tuple[str, ...]
    if kind is DeviceKind.METER:
        required, roles = METER_REQUIRED, METER_ROLES
        if "evse" in data:
            problems.add("evse", "a meter map cannot have an evse: section")
    else:
        required, roles = EVSE_REQUIRED, EVSE_ROLES
        if kind is DeviceKind.EVSE:
            evse = _parse_evse(data.get("evse"), by_name, problems)
    for r in required:
        if r not in seen and not any(f"field {r!r}" in p for p in problems.items):
            problems.add(f"field {r!r}", f"required in a {kind} map but not defined")
    for f in fields:
        if f.name in roles and f.name != "state" and not f.numeric:
            problems.add(f"field {f.name!r}", "must be numeric")
    if "state" in by_name and by_name["state"].states is None and kind is DeviceKind.EVSE:
        problems.add("field 'state'", "needs states: {raw value: IEC letter}")

    if problems.items:
        raise RegisterMapError(problems.items)
    assert isinstance(kind, DeviceKind) and isinstance(model, str)
    return RegisterMap(
        name=name,
        source=source,
        kind=kind,
        model=model,
        description=str(description),
        fields=tuple(fields),
        max_read_registers=max_regs if _is_int(max_regs) else DEFAULT_MAX_READ_REGISTERS,
        max_gap_registers=max_gap if _is_int(max_gap) else 0,
        evse=evse,
    )


def parse_map_text(text: str, *, name: str, source: str) -> RegisterMap:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegisterMapError([f"{source}: not valid YAML: {exc}"]) from exc
    return parse_map(data, name=name, source=source)


# --- where maps come from ---------------------------------------------------------------------
# Reading package data or a site's own map file at start-up is the only I/O here.


def builtin_map_names() -> tuple[str, ...]:
    folder = resources.files("drivers.modbus") / "maps"
    return tuple(
        sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    )


@cache
def load_builtin_map(name: str) -> RegisterMap:
    """A map shipped in ``drivers/modbus/maps/<name>.yaml``."""
    if not _NAME_RE.match(name) or name not in builtin_map_names():
        raise RegisterMapError(
            [f"no built-in register map {name!r} (have: {', '.join(builtin_map_names())})"]
        )
    text = (resources.files("drivers.modbus") / "maps" / f"{name}.yaml").read_text("utf-8")
    return parse_map_text(text, name=name, source=f"maps/{name}.yaml")


def load_map_file(path: str | Path) -> RegisterMap:
    """A site's own map file (the config loader resolves relative paths beside the config)."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise RegisterMapError([f"{p}: cannot read register map: {exc.strerror or exc}"]) from exc
    return parse_map_text(text, name=p.stem, source=str(p))
