"""Drivers layer: what every register-map device does: read its planned blocks, write one field.

``RegisterMapMeter`` and ``RegisterMapEvse`` build on this; the model lives in the map, the bus
in the ``ModbusClient``, and this class only joins the two for one device (unit id).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from controller.core.errors import ConfigError, DeviceError, DeviceUnavailable
from controller.core.site import DeviceSpec, SerialTransport, TcpTransport
from drivers.modbus import timing
from drivers.modbus.bus import BusPool
from drivers.modbus.client import ModbusClient
from drivers.modbus.registermap import (
    DeviceKind,
    Field,
    LinkKind,
    ReadBlock,
    RegisterMap,
    RegType,
    Table,
    Value,
    apply_scale_factors,
    decode_block,
    encode_value,
    load_builtin_map,
)

_ARTICLED = {DeviceKind.METER: "a meter", DeviceKind.EVSE: "an EVSE"}


def check_link(spec: DeviceSpec, rmap: RegisterMap) -> None:
    """ConfigError when ``spec`` reaches the device over a link the model does not have.

    A serial (RS-485) model may sit behind a gateway: RTU over TCP, or Modbus TCP when the
    gateway converts. A TCP-only model cannot be on a serial line.
    """
    serial_framing = isinstance(spec.transport, SerialTransport) or (
        isinstance(spec.transport, TcpTransport) and spec.transport.rtu_over_tcp
    )
    if serial_framing and LinkKind.SERIAL not in rmap.link.transports:
        raise ConfigError(
            [
                f"device {spec.id}: {rmap.model} has no serial (RTU) link; "
                f"it is reached over Modbus TCP ({spec.transport.describe()} given)"
            ]
        )


def based_map(spec: DeviceSpec, rmap: RegisterMap) -> RegisterMap:
    """The map at this device's base address when the map's addresses are relative to one."""
    base = rmap.address_base
    if base is None or base.option is None:
        return rmap
    raw = spec.options.get(base.option, base.default)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ConfigError(
            [f"device {spec.id}: option {base.option} = {raw!r} must be an integer >= 0"]
        )
    try:
        return rmap.moved(raw * base.step)
    except ValueError as exc:
        raise ConfigError([f"device {spec.id}: {exc}"]) from exc


def number_option(spec: DeviceSpec, key: str, default: float | None) -> float | None:
    """A positive number from ``spec.options``; ConfigError when it is there but not one."""
    raw = spec.options.get(key)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ConfigError([f"device {spec.id}: option {key} = {raw!r} must be a number"])
    if raw <= 0:
        raise ConfigError([f"device {spec.id}: option {key} = {raw!r} must be > 0"])
    return float(raw)


class RegisterMapDevice:
    """One Modbus device (unit id on a bus) driven by a register map."""

    kind: DeviceKind = DeviceKind.METER
    # True for a class that finds the map's base address on the device (SunSpec)
    locates_base: bool = False

    def __init__(
        self,
        spec: DeviceSpec,
        register_map: RegisterMap | str,
        *,
        pool: BusPool | None = None,
    ) -> None:
        rmap = load_builtin_map(register_map) if isinstance(register_map, str) else register_map
        if rmap.kind is not self.kind:
            raise ConfigError(
                [
                    f"device {spec.id}: register map {rmap.source} describes "
                    f"{_ARTICLED[rmap.kind]}, not {_ARTICLED[self.kind]}"
                ]
            )
        if not 0 <= spec.unit_id <= 255:
            raise ConfigError([f"device {spec.id}: unit id {spec.unit_id} is not 0..255"])
        check_link(spec, rmap)
        base = rmap.address_base
        if base is not None and base.sunspec_model is not None and not self.locates_base:
            raise ConfigError(
                [f"device {spec.id}: {rmap.source} is a SunSpec map; build it as a SunSpecMeter"]
            )
        rmap = based_map(spec, rmap)
        gap_s = number_option(spec, "inter_frame_gap_s", None)
        self._spec = spec
        self._map = rmap
        self._pool = pool
        if pool is not None:
            self._client = pool.get(
                spec.transport, timeout_s=spec.timeout_s, inter_frame_gap_s=gap_s
            )
        else:
            self._client = ModbusClient(
                spec.transport, timeout_s=spec.timeout_s, inter_frame_gap_s=gap_s
            )
        self._plan: tuple[ReadBlock, ...] = rmap.plan()
        self._last_values: Mapping[str, Value] = MappingProxyType({})
        self._closed = False

    @property
    def name(self) -> str:
        return self._spec.id

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def register_map(self) -> RegisterMap:
        return self._map

    @property
    def client(self) -> ModbusClient:
        return self._client

    @property
    def read_plan(self) -> tuple[ReadBlock, ...]:
        return self._plan

    @property
    def read_estimate_s(self) -> float:
        """Line time of one poll on a serial line (0 on TCP): for round-robin reading."""
        return timing.read_s(self._map, self._spec.transport, self._plan)

    @property
    def last_values(self) -> Mapping[str, Value]:
        """Every polled field of the last successful read (for status and diagnostics)."""
        return self._last_values

    async def read_fields(self, fields: Iterable[Field] | None = None) -> dict[str, Value]:
        """Read ``fields`` (default: the polled ones) in as few requests as the map allows."""
        if fields is None:
            plan, wanted = self._plan, self._map.polled
        else:
            wanted = self._map.with_scale_fields(fields)
            plan = self._map.plan(wanted)
        values: dict[str, Value] = {}
        for block in plan:
            registers = await self._client.read_registers(
                block.table, block.address, block.count, self._spec.unit_id
            )
            try:
                values.update(decode_block(block, registers))
            except ValueError as exc:
                raise DeviceUnavailable(f"device {self.name}: {exc}") from exc
        values = apply_scale_factors(wanted, values)
        if fields is None:
            self._last_values = MappingProxyType(dict(values))
        return values

    async def read_field(self, name: str) -> Value:
        field = self._map.field(name)
        return (await self.read_fields([field]))[name]

    async def write_field(self, name: str, value: Value) -> None:
        """Encode ``value`` per the map and write it (all registers of the field in one request)."""
        field = self._map.field(name)
        if not field.writable:
            raise DeviceError(
                f"device {self.name}: field {name!r} is read-only in {self._map.source}"
            )
        words = encode_value(field, value)
        if field.table is Table.COIL and field.type is RegType.BOOL:
            await self._client.write_coil(field.address, bool(words[0]), self._spec.unit_id)
        elif field.write_function == 6:
            await self._client.write_register(field.address, words[0], self._spec.unit_id)
        else:
            await self._client.write_registers(field.address, words, self._spec.unit_id)

    def _rebase(self, rmap: RegisterMap) -> None:
        """Switch to ``rmap`` (the same model at the base address found on the device)."""
        self._map = rmap
        self._plan = rmap.plan()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.release(self._client)
        else:
            await self._client.close()


def number(values: Mapping[str, Value], name: str) -> float | None:
    """A numeric field's value as float, None when the map does not have the field."""
    v = values.get(name)
    if v is None:
        return None
    if isinstance(v, str):
        raise DeviceError(f"field {name!r} decoded as text {v!r}, expected a number")
    return float(v)
