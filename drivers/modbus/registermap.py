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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
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
    COIL = "coil"  # FC01 read, FC05 write; one bit per address (type bool)


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
    BOOL = "bool"  # one coil: 0 or 1


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
_WIDTH: Mapping[RegType, int] = {
    **{t: struct.calcsize(f) // 2 for t, f in _STRUCT_FORMAT.items()},
    RegType.BOOL: 1,
}
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
    # another (integer) field holding a power-of-ten exponent: value = raw * scale * 10**that
    # (SunSpec "sunssf" scale factors)
    scale_field: str | None = None
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

    def moved(self, offset: int) -> Field:
        """The same field ``offset`` registers further (for maps relative to a base address)."""
        return replace(self, address=self.address + offset)

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

    # None: the model has a fallback behaviour but no register evsite can read or write
    field: str | None
    # True: ``setup`` writes the configured fallback current; False: the device is configured
    # elsewhere (e.g. a commissioning tool), ``setup`` reads it back (if it has a field) and
    # compares.
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
    # an alive / life-bit register fed with a constant on every limit write (and so on every
    # refresh); None when rewriting the limit is what feeds the watchdog
    feed: FeedSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSpec:
    """ "Write ``value`` to ``field``": the refresh of a watchdog that has its own register."""

    field: str
    value: Value = 1
    # raw values that, when the last poll read them from ``field``, mean "do not feed" (e.g. a
    # Schneider life bit reading 2: the station does not watch it)
    skip_when_read: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupWrite:
    """A constant written once by ``setup`` (e.g. "disable standby")."""

    field: str
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """One test on a decoded value: equal to one of ``values``, or within [min, max]."""

    field: str
    values: frozenset[int | float | str] = frozenset()
    min: float | None = None
    max: float | None = None

    def holds(self, value: Value | None) -> bool:
        if value is None:
            return False
        if self.values:
            return value in self.values
        if isinstance(value, str) or math.isnan(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyTest:
    """One test a unit's registers must pass for ``evsite bus scan`` to name this model.

    Either ``condition`` (a value, a list of values, a range) or ``known_state``: the value is
    one that the field's ``states`` maps to an IEC letter.
    """

    field: str
    condition: Condition | None = None
    known_state: bool = False

    def holds(self, field: Field, value: Value | None) -> bool:
        if value is None:
            return False
        if self.known_state:
            return field.state_letter(value) is not None
        return self.condition is not None and self.condition.holds(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class StateRule:
    """``state`` applies when every condition holds (no condition: always; the last resort)."""

    state: str
    when: tuple[Condition, ...] = ()

    def matches(self, values: Mapping[str, Value]) -> bool:
        return all(c.holds(values.get(c.field)) for c in self.when)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnableSpec:
    """A switch that must be on for the EVSE to charge; off is how the model pauses."""

    field: str
    on_value: Value = 1
    off_value: Value = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvseSpec:
    setpoint: SetpointSpec
    fallback: FallbackSpec | None = None
    watchdog: WatchdogSpec | None = None
    setup_writes: tuple[SetupWrite, ...] = ()
    # the IEC state from several fields, first matching rule wins (instead of ``state.states``)
    state_rules: tuple[StateRule, ...] = ()
    enable: EnableSpec | None = None

    def state_letter(self, values: Mapping[str, Value], state_field: Field | None) -> str | None:
        """The IEC state letter of a read, None when the map cannot tell."""
        if self.state_rules:
            return next((r.state for r in self.state_rules if r.matches(values)), None)
        if state_field is None or state_field.name not in values:
            return None
        return state_field.state_letter(values[state_field.name])


@dataclass(frozen=True, slots=True, kw_only=True)
class LineSettings:
    """A serial line's framing: what the device's DIP switches or menu select."""

    baudrate: int
    parity: str = "N"  # N, E or O
    stopbits: int = 1
    bytesize: int = 8

    def describe(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class LinkKind(StrEnum):
    TCP = "tcp"  # Modbus TCP on the device itself
    SERIAL = "serial"  # Modbus RTU on RS-485 (directly, or through an RS-485 gateway)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSpec:
    """How the model is reached: which links it has, its factory unit id and line settings."""

    transports: tuple[LinkKind, ...] = (LinkKind.TCP, LinkKind.SERIAL)
    unit_id: int = 1
    serial: LineSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressBase:
    """Field addresses are relative to a base found per device.

    Either ``option`` (a DeviceSpec.options key, e.g. a CHARX connector number) times ``step``,
    or ``sunspec_model``: the base is the model's ID register, found at start by probing for
    "SunS" at 40000, 0 and 50000 and walking the model chain.
    """

    option: str | None = None
    step: int = 1
    default: int = 0
    sunspec_model: int | None = None


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
    link: LinkSpec = LinkSpec()
    address_base: AddressBase | None = None
    # what makes a unit this model for ``evsite bus scan`` (every test holds); () never probed
    identify: tuple[IdentifyTest, ...] = ()

    @property
    def has_watchdog(self) -> bool:
        return self.evse is not None and self.evse.watchdog is not None

    @property
    def fallback_programmable(self) -> bool:
        fb = None if self.evse is None else self.evse.fallback
        return fb is not None and fb.programme

    def moved(self, offset: int) -> RegisterMap:
        """This map with every field ``offset`` registers further (a per-device base address).

        Raises ValueError when a field would leave the 0..65535 address space.
        """
        if offset == 0:
            return self
        for f in self.fields:
            if not (f.address + offset >= 0 and f.end + offset <= 0x10000):
                raise ValueError(
                    f"{self.source}: field {f.name!r} at {f.address} + base {offset} is not "
                    "a register address"
                )
        return replace(self, fields=tuple(f.moved(offset) for f in self.fields))

    def with_scale_fields(self, fields: Iterable[Field]) -> tuple[Field, ...]:
        """``fields`` plus the scale-factor fields they need to be decoded."""
        chosen = {f.name: f for f in fields}
        for f in list(chosen.values()):
            if f.scale_field is not None and f.scale_field not in chosen:
                chosen[f.scale_field] = self.field(f.scale_field)
        return tuple(chosen.values())

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
        # Leading NULs are dropped too: a one-letter state in a register's low byte (Phoenix)
        # reads the same as one in its high byte (Phoenix CHARX, Alfen).
        data = b"".join(r.to_bytes(2, "big") for r in registers).lstrip(b"\x00")
        return data.split(b"\x00", 1)[0].decode("latin-1").strip()
    if field.type is RegType.BOOL:
        return 1 if registers[0] else 0
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
    if field.type is RegType.BOOL:
        if value not in (0, 1):
            raise ValueError(f"field {field.name!r}: a coil takes 0 or 1, got {value!r}")
        return (int(value),)
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


def apply_scale_factors(fields: Iterable[Field], values: Mapping[str, Value]) -> dict[str, Value]:
    """Apply each field's ``scale_field`` exponent (value * 10**exponent) to decoded values.

    A missing or invalid (NaN) exponent makes the value NaN: a number with an unknown scale is
    no number.
    """
    out = dict(values)
    for f in fields:
        if f.scale_field is None or f.name not in out:
            continue
        v, sf = out[f.name], out.get(f.scale_field)
        if isinstance(v, str):
            continue
        if sf is None or isinstance(sf, str) or math.isnan(sf) or not -20 <= sf <= 20:
            out[f.name] = math.nan
        else:
            out[f.name] = float(v) * 10.0 ** int(sf)
    return out


# --- parsing a map ----------------------------------------------------------------------------

_MAP_KEYS = frozenset(
    {
        "map_version",
        "kind",
        "model",
        "description",
        "read",
        "defaults",
        "fields",
        "evse",
        "link",
        "address_base",
        "identify",
    }
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
        "scale_field",
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
    cls: type[Table]
    | type[WordOrder]
    | type[RegType]
    | type[Access]
    | type[DeviceKind]
    | type[LinkKind],
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
    elif rtype in (RegType.STRING, RegType.BOOL) and scale != 1:
        problems.add(where, f"a {rtype} field cannot have a scale")
    if (table is Table.COIL) != (rtype is RegType.BOOL) and table is not None and rtype:
        problems.add(where, "coils hold type bool, and type bool lives in table: coil")
    scale_field = raw.get("scale_field")
    if scale_field is not None and (not isinstance(scale_field, str) or scale_field == name):
        problems.add(where, f"scale_field {scale_field!r} must name another field")

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
        scale_field=scale_field if isinstance(scale_field, str) else None,
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


def _is_none(raw: object) -> bool:
    """``none`` (or YAML null) says explicitly: the model does not have this."""
    return raw is None or (isinstance(raw, str) and raw.lower() == "none")


def _parse_evse(raw: object, by_name: Mapping[str, Field], problems: _Problems) -> EvseSpec | None:
    if not isinstance(raw, Mapping):
        problems.add("evse", "an EVSE map needs an evse: section with at least setpoint")
        return None
    before = len(problems.items)
    allowed = {"setpoint", "fallback", "watchdog", "setup_writes", "state_rules", "enable"}
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

    def writable_value(fname: str | None, value: object, where: str) -> Value | None:
        if not (_is_number(value) or isinstance(value, str)):
            problems.add(where, f"value {value!r} must be a number or text")
            return None
        if fname is not None:
            try:
                encode_value(by_name[fname], value)
            except ValueError as exc:
                problems.add(where, str(exc))
                return None
        return value

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

    fallback = _parse_fallback(raw.get("fallback"), by_name, writable_field, problems)
    watchdog = _parse_watchdog(raw.get("watchdog"), by_name, writable_field, problems)

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
            value = writable_value(fname, item.get("value"), where)
            if fname is not None and value is not None:
                writes.append(SetupWrite(field=fname, value=value))

    enable: EnableSpec | None = None
    en_raw = raw.get("enable")
    if en_raw is not None:
        if not isinstance(en_raw, Mapping):
            problems.add("evse.enable", "must be a mapping {field, on_value, off_value}")
        else:
            extra = sorted(str(k) for k in en_raw if k not in {"field", "on_value", "off_value"})
            if extra:
                problems.add("evse.enable", f"unknown keys {extra}")
            en_field = writable_field(en_raw.get("field"), "evse.enable")
            on = writable_value(en_field, en_raw.get("on_value", 1), "evse.enable.on_value")
            off = writable_value(en_field, en_raw.get("off_value", 0), "evse.enable.off_value")
            if en_field is not None and on is not None and off is not None:
                enable = EnableSpec(field=en_field, on_value=on, off_value=off)

    rules = _parse_state_rules(raw.get("state_rules"), by_name, problems)

    if len(problems.items) != before or setpoint is None:
        return None
    return EvseSpec(
        setpoint=setpoint,
        fallback=fallback,
        watchdog=watchdog,
        setup_writes=tuple(writes),
        state_rules=rules,
        enable=enable,
    )


WritableCheck = Callable[..., str | None]


def _parse_fallback(
    fb_raw: object, by_name: Mapping[str, Field], writable_field: WritableCheck, problems: _Problems
) -> FallbackSpec | None:
    if _is_none(fb_raw):
        return None
    if not isinstance(fb_raw, Mapping):
        problems.add("evse.fallback", "must be none or a mapping {field, programme, tolerance_a}")
        return None
    extra = sorted(str(k) for k in fb_raw if k not in {"field", "programme", "tolerance_a"})
    if extra:
        problems.add("evse.fallback", f"unknown keys {extra}")
    programme = fb_raw.get("programme", False)
    tol = fb_raw.get("tolerance_a", 0.1)
    fb_name = fb_raw.get("field")
    if not isinstance(programme, bool):
        problems.add("evse.fallback", "programme must be true or false")
    elif programme:
        writable_field(fb_name, "evse.fallback")
    elif fb_name is None:
        pass  # not programmable and not readable: the model keeps it to itself
    elif not isinstance(fb_name, str) or fb_name not in by_name:
        problems.add("evse.fallback", f"field {fb_name!r} is not defined in fields")
    elif not by_name[fb_name].numeric:
        problems.add("evse.fallback", f"field {fb_name!r} must be numeric")
    if not _is_number(tol) or tol < 0:
        problems.add("evse.fallback", f"tolerance_a {tol!r} must be a number >= 0")
    if (
        (fb_name is None or isinstance(fb_name, str))
        and isinstance(programme, bool)
        and _is_number(tol)
    ):
        return FallbackSpec(field=fb_name, programme=programme, tolerance_a=float(tol))
    return None


def _parse_watchdog(
    wd_raw: object, by_name: Mapping[str, Field], writable_field: WritableCheck, problems: _Problems
) -> WatchdogSpec | None:
    if _is_none(wd_raw):
        return None
    where = "evse.watchdog"
    if not isinstance(wd_raw, Mapping):
        problems.add(where, "must be none or a mapping")
        return None
    allowed = {"refresh_fraction", "default_timeout_s", "timeout_option", "timeout_field", "feed"}
    extra = sorted(str(k) for k in wd_raw if k not in allowed)
    if extra:
        problems.add(where, f"unknown keys {extra} (allowed: {sorted(allowed)})")
    frac = wd_raw.get("refresh_fraction")
    default = wd_raw.get("default_timeout_s")
    option = wd_raw.get("timeout_option")
    tfield = wd_raw.get("timeout_field")
    if not _is_number(frac) or not 0 < frac < 1:
        problems.add(where, f"refresh_fraction {frac!r} must be in (0, 1)")
    if not _is_number(default) or not default > 0:
        problems.add(where, f"default_timeout_s {default!r} must be > 0")
    if option is not None and not isinstance(option, str):
        problems.add(where, f"timeout_option {option!r} must be text")
    if tfield is not None:
        writable_field(tfield, "evse.watchdog.timeout_field")
    feed: FeedSpec | None = None
    feed_ok = True
    feed_raw = wd_raw.get("feed")
    if feed_raw is not None:
        feed_ok = False
        if not isinstance(feed_raw, Mapping):
            problems.add("evse.watchdog.feed", "must be a mapping {field, value, skip_when_read}")
        else:
            fname = writable_field(feed_raw.get("field"), "evse.watchdog.feed")
            value = feed_raw.get("value", 1)
            skip = feed_raw.get("skip_when_read", [])
            if not _is_number(value):
                problems.add("evse.watchdog.feed", f"value {value!r} must be a number")
            elif fname is not None:
                try:
                    encode_value(by_name[fname], value)
                except ValueError as exc:
                    problems.add("evse.watchdog.feed", str(exc))
            if not isinstance(skip, list) or not all(_is_int(v) for v in skip):
                problems.add("evse.watchdog.feed", "skip_when_read must be a list of integers")
            elif fname is not None and skip and not by_name[fname].poll:
                problems.add(
                    "evse.watchdog.feed", "skip_when_read needs the field polled (poll: true)"
                )
            elif fname is not None and _is_number(value):
                feed = FeedSpec(field=fname, value=value, skip_when_read=frozenset(skip))
                feed_ok = True
    if (
        _is_number(frac)
        and _is_number(default)
        and (option is None or isinstance(option, str))
        and (tfield is None or isinstance(tfield, str))
        and feed_ok
    ):
        return WatchdogSpec(
            refresh_fraction=float(frac),
            default_timeout_s=float(default),
            timeout_option=option,
            timeout_field=tfield,
            feed=feed,
        )
    return None


def _parse_state_rules(
    raw: object, by_name: Mapping[str, Field], problems: _Problems
) -> tuple[StateRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        problems.add("evse.state_rules", "must be a non-empty list of {when, state}")
        return ()
    rules: list[StateRule] = []
    for i, item in enumerate(raw):
        where = f"evse.state_rules[{i}]"
        if not isinstance(item, Mapping):
            problems.add(where, "must be a mapping {when: {field: test}, state: letter}")
            continue
        extra = sorted(str(k) for k in item if k not in {"when", "state"})
        if extra:
            problems.add(where, f"unknown keys {extra}")
        letter = item.get("state")
        if not isinstance(letter, str) or letter not in STATE_LETTERS:
            problems.add(where, f"state {letter!r} is not one of {STATE_LETTERS}")
            continue
        when = item.get("when", {})
        if not isinstance(when, Mapping):
            problems.add(where, "when must be a mapping {field: value | [values] | {min, max}}")
            continue
        conditions: list[Condition] = []
        for fname, test in when.items():
            if not isinstance(fname, str) or fname not in by_name:
                problems.add(where, f"field {fname!r} is not defined in fields")
                continue
            if not by_name[fname].poll:
                problems.add(where, f"field {fname!r} must be polled to decide the state")
            cond = _parse_condition(fname, test, where, problems)
            if cond is not None:
                conditions.append(cond)
        rules.append(StateRule(state=letter, when=tuple(conditions)))
    if rules and rules[-1].when:
        problems.add("evse.state_rules", "the last rule needs no when: (the state otherwise)")
    return tuple(rules)


def _parse_condition(fname: str, test: object, where: str, problems: _Problems) -> Condition | None:
    if isinstance(test, Mapping):
        extra = sorted(str(k) for k in test if k not in {"min", "max"})
        lo, hi = test.get("min"), test.get("max")
        if extra or (lo is None and hi is None):
            problems.add(where, f"{fname}: a range is {{min: x, max: y}}, got {dict(test)!r}")
            return None
        if not all(v is None or _is_number(v) for v in (lo, hi)):
            problems.add(where, f"{fname}: min and max must be numbers")
            return None
        return Condition(
            field=fname,
            min=None if lo is None else float(lo),
            max=None if hi is None else float(hi),
        )
    items: list[object] = list(test) if isinstance(test, list) else [test]
    values: list[int | float | str] = [v for v in items if _is_number(v) or isinstance(v, str)]
    if not items or len(values) != len(items):
        problems.add(where, f"{fname}: {test!r} must be a value, a list of values or a range")
        return None
    return Condition(field=fname, values=frozenset(values))


def _parse_identify(
    raw: object, by_name: Mapping[str, Field], problems: _Problems
) -> tuple[IdentifyTest, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        problems.add("identify", "must be a mapping {field: value | [values] | {min, max}}")
        return ()
    tests: list[IdentifyTest] = []
    for fname, test in raw.items():
        f = by_name.get(fname) if isinstance(fname, str) else None
        if f is None:
            problems.add("identify", f"field {fname!r} is not defined in fields")
            continue
        if f.table is Table.COIL:
            problems.add("identify", f"field {fname!r}: a coil cannot identify a model")
            continue
        if isinstance(test, Mapping) and "known" in test:
            if dict(test) != {"known": True}:
                problems.add("identify", f"{fname}: the state test is {{known: true}}")
            elif f.states is None:
                problems.add("identify", f"{fname}: {{known: true}} needs a field with states")
            else:
                tests.append(IdentifyTest(field=fname, known_state=True))
            continue
        cond = _parse_condition(fname, test, "identify", problems)
        if cond is not None:
            tests.append(IdentifyTest(field=fname, condition=cond))
    return tuple(tests)


def _parse_link(raw: object, problems: _Problems) -> LinkSpec:
    if raw is None:
        return LinkSpec()
    if not isinstance(raw, Mapping):
        problems.add("link", "must be a mapping {transports, unit_id, serial}")
        return LinkSpec()
    extra = sorted(str(k) for k in raw if k not in {"transports", "unit_id", "serial"})
    if extra:
        problems.add("link", f"unknown keys {extra} (allowed: serial, transports, unit_id)")
    transports: list[LinkKind] = []
    t_raw = raw.get("transports", ["tcp", "serial"])
    if not isinstance(t_raw, list) or not t_raw:
        problems.add("link", "transports must be a non-empty list of tcp, serial")
    else:
        for t in t_raw:
            kind = _enum(LinkKind, t, "link", "transport", problems)
            if isinstance(kind, LinkKind):
                transports.append(kind)
    unit_id = raw.get("unit_id", 1)
    if not _is_int(unit_id) or not 0 <= unit_id <= 255:
        problems.add("link", f"unit_id {unit_id!r} must be 0..255")
        unit_id = 1
    serial: LineSettings | None = None
    s_raw = raw.get("serial")
    if s_raw is not None:
        if not isinstance(s_raw, Mapping):
            problems.add("link.serial", "must be a mapping {baudrate, parity, stopbits, bytesize}")
        else:
            extra = sorted(
                str(k) for k in s_raw if k not in {"baudrate", "parity", "stopbits", "bytesize"}
            )
            if extra:
                problems.add("link.serial", f"unknown keys {extra}")
            baud = s_raw.get("baudrate")
            parity = s_raw.get("parity", "N")
            stop = s_raw.get("stopbits", 1)
            size = s_raw.get("bytesize", 8)
            ok = True
            if not _is_int(baud) or not 300 <= baud <= 1_000_000:
                problems.add("link.serial", f"baudrate {baud!r} must be an integer 300..1000000")
                ok = False
            if parity not in ("N", "E", "O"):
                problems.add("link.serial", f"parity {parity!r} must be N, E or O")
                ok = False
            if stop not in (1, 2) or size not in (7, 8):
                problems.add("link.serial", "stopbits must be 1 or 2 and bytesize 7 or 8")
                ok = False
            if ok:
                assert _is_int(baud) and isinstance(parity, str)
                serial = LineSettings(
                    baudrate=baud, parity=parity, stopbits=int(stop), bytesize=int(size)
                )
    if s_raw is not None and transports and LinkKind.SERIAL not in transports:
        problems.add("link.serial", "line settings for a model without a serial link")
    return LinkSpec(
        transports=tuple(transports) or (LinkKind.TCP, LinkKind.SERIAL),
        unit_id=int(unit_id),
        serial=serial,
    )


def _parse_address_base(raw: object, problems: _Problems) -> AddressBase | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.add("address_base", "must be {option, step, default} or {sunspec_model}")
        return None
    extra = sorted(str(k) for k in raw if k not in {"option", "step", "default", "sunspec_model"})
    if extra:
        problems.add("address_base", f"unknown keys {extra}")
    model = raw.get("sunspec_model")
    if model is not None:
        if len(raw) != 1:
            problems.add("address_base", "sunspec_model stands alone (the base is found)")
        if not _is_int(model) or not 1 <= model < 0xFFFF:
            problems.add("address_base", f"sunspec_model {model!r} must be a model id")
            return None
        return AddressBase(sunspec_model=model)
    option, step, default = raw.get("option"), raw.get("step", 1), raw.get("default", 0)
    if not isinstance(option, str) or not option:
        problems.add("address_base", "option must name a device option (e.g. connector)")
        return None
    if not _is_int(step) or step < 1 or not _is_int(default) or default < 0:
        problems.add("address_base", "step must be an integer >= 1 and default >= 0")
        return None
    return AddressBase(option=option, step=step, default=default)


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
    for f in fields:
        if f.scale_field is None:
            continue
        sf = by_name.get(f.scale_field)
        if sf is None:
            problems.add(f"field {f.name!r}", f"scale_field {f.scale_field!r} is not defined")
        elif sf.type not in _INTEGER_TYPES or sf.scale_field is not None or sf.scale != 1:
            problems.add(
                f"field {f.name!r}", f"scale_field {f.scale_field!r} must be an unscaled integer"
            )
        elif f.poll and not sf.poll:
            problems.add(f"field {f.name!r}", f"scale_field {f.scale_field!r} must be polled")

    link = _parse_link(data.get("link"), problems)
    address_base = _parse_address_base(data.get("address_base"), problems)
    identify = _parse_identify(data.get("identify"), by_name, problems)

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
            evse_raw = data.get("evse")
            if isinstance(evse_raw, Mapping) and evse_raw.get("state_rules") is not None:
                required = ()  # the state comes from the rules
    sunspec = address_base is not None and address_base.sunspec_model is not None
    if sunspec and kind is not DeviceKind.METER:
        problems.add("address_base", "sunspec_model is for meter maps")
    for r in required:
        if r not in seen and not any(f"field {r!r}" in p for p in problems.items):
            problems.add(f"field {r!r}", f"required in a {kind} map but not defined")
    for f in fields:
        if f.name in roles and f.name != "state" and not f.numeric:
            problems.add(f"field {f.name!r}", "must be numeric")
    if (
        "state" in by_name
        and by_name["state"].states is None
        and kind is DeviceKind.EVSE
        and required
    ):
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
        link=link,
        address_base=address_base,
        identify=identify,
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
