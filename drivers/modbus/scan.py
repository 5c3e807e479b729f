"""Drivers layer: ``evsite bus scan``: which unit ids answer on a bus, and which model each is.

**Presence.** Each unit id gets one request (read holding register 0). A unit is there when it
answers, normal reply or Modbus exception, except the exceptions servers and gateways use to say
"no such unit" (4 server device failure: pymodbus and many TCP servers for an unknown id;
10/11: a gateway's path unavailable / target failed to respond). Silence is absence; on an
RS-485 line an absent unit costs the scan's own short timeout (``timeout_s``, default 0.1 s).

**Identification** is data: every built-in register map may carry an ``identify:`` section
(field -> value, list, range, or ``{known: true}`` for a state the map knows). For each unit that
answers, the scan reads those fields from every map that can sit on this kind of bus and names
each model whose tests all hold, with the values as evidence. SunSpec maps first find their
model the way the meter does at start ("SunS" at 40000, 0 or 50000, then the model chain); a map
with a per-connector base (CHARX) is probed at its default connector. Two models that share
their registers (Carlo Gavazzi EM24 and EM340) are both named: the scan says what the registers
can tell, no more.

The scanner runs on a ``ModbusClient``: the bus's one owner. ``gate`` is awaited before every
request with that request's worst-case cost, so the service can fit a scan between its ticks.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.core.errors import DeviceError, EvsiteError
from controller.core.site import SerialTransport, TcpTransport, Transport
from drivers.modbus.client import (
    EXCEPTION_NAMES,
    ModbusBusy,
    ModbusClient,
    ModbusNoAnswer,
    ModbusRefused,
)
from drivers.modbus.registermap import (
    DeviceKind,
    LinkKind,
    RegisterMap,
    Table,
    Value,
    apply_scale_factors,
    builtin_map_names,
    decode_block,
    load_builtin_map,
)
from drivers.modbus.sunspec import SUNSPEC_BASES, locate_model

# Exception codes that mean "no device with this unit id" rather than "a device said no".
ABSENT_EXCEPTION_CODES = frozenset({4, 10, 11})
# The presence probe: one holding register at 0 (an exception 2 from a device counts as there).
PRESENCE_ADDRESS = 0
DEFAULT_TIMEOUT_S = 0.1
SERIAL_UNITS = tuple(range(1, 248))
# Over TCP many EVSEs answer at unit id 255 only (Bender, Phoenix EV-ETH, Vestel, Schneider).
TCP_UNITS = (*range(1, 248), 255)

Gate = Callable[[float], Awaitable[None]]
"""Awaited before each request with its worst-case cost in seconds (the service's tick gate)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelMatch:
    """A known model whose ``identify:`` tests all held on a unit, with the values read."""

    driver: str
    model: str
    kind: DeviceKind
    evidence: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "model": self.model,
            "kind": self.kind.value,
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitFound:
    """A unit id that answered, and the models its registers fit."""

    unit_id: int
    answer: str  # what it answered to the presence probe
    matches: tuple[ModelMatch, ...] = ()

    @property
    def identified(self) -> str | None:
        """The driver when exactly one model fits, else None (none, or ambiguous)."""
        return self.matches[0].driver if len(self.matches) == 1 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit_id": self.unit_id,
            "answer": self.answer,
            "identified": self.identified,
            "models": [m.as_dict() for m in self.matches],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanReport:
    bus: str
    units_probed: int
    found: tuple[UnitFound, ...]
    elapsed_s: float
    requests: int  # Modbus requests the scan sent
    timeouts: int  # of which got no usable answer in time
    timeout_s: float
    # why the bus could not be reached at all (a missing port, a refused connection)
    link_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bus": self.bus,
            "units_probed": self.units_probed,
            "timeout_s": self.timeout_s,
            "elapsed_s": round(self.elapsed_s, 2),
            "requests": self.requests,
            "timeouts": self.timeouts,
            "link_error": self.link_error,
            "found": [u.as_dict() for u in self.found],
        }


def parse_units(text: str) -> tuple[int, ...]:
    """``"1-247"``, ``"1,2,10-12"``, ``"255"`` -> sorted unit ids; ValueError names the problem."""
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"units {text!r}: empty item")
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError as exc:
            raise ValueError(f"units {text!r}: {part!r} is not a number or a range a-b") from exc
        if not 0 <= lo <= hi <= 255:
            raise ValueError(f"units {text!r}: {part!r} must lie within 0..255, low to high")
        units.update(range(lo, hi + 1))
    return tuple(sorted(units))


def default_units(transport: Transport) -> tuple[int, ...]:
    return TCP_UNITS if isinstance(transport, TcpTransport) else SERIAL_UNITS


def serial_framing(transport: Transport) -> bool:
    """True when the bus carries RTU frames (a serial port, or an RTU-over-TCP gateway)."""
    return isinstance(transport, SerialTransport) or (
        isinstance(transport, TcpTransport) and transport.rtu_over_tcp
    )


def candidate_maps(transport: Transport) -> tuple[tuple[str, RegisterMap], ...]:
    """Built-in maps with ``identify:`` tests whose model can sit on this bus.

    On RTU framing only models with a serial link; over Modbus TCP every model (a converting
    gateway may front an RS-485 meter).
    """
    rtu = serial_framing(transport)
    chosen: list[tuple[str, RegisterMap]] = []
    for name in builtin_map_names():
        rmap = load_builtin_map(name)
        if not rmap.identify:
            continue
        if rtu and LinkKind.SERIAL not in rmap.link.transports:
            continue
        chosen.append((name, rmap))
    return tuple(chosen)


def unit_of(field_name: str) -> str:
    """The unit a field's name carries (``current_l1_a`` -> ``A``); "" when it carries none."""
    for suffix, unit in _UNIT_SUFFIXES:
        if field_name.endswith(suffix):
            return unit
    return ""


_UNIT_SUFFIXES = (
    ("_kwh", "kWh"),
    ("_wh", "Wh"),
    ("_var", "var"),
    ("_va", "VA"),
    ("_w", "W"),
    ("_v", "V"),
    ("_a", "A"),
    ("_hz", "Hz"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_pct", "%"),
)


def format_value(value: Value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "no value"
        return f"{value:.6g}"
    return str(value)


class BusScanner:
    """Probes unit ids on one bus and identifies the models that answer."""

    def __init__(
        self,
        client: ModbusClient,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        maps: Sequence[tuple[str, RegisterMap]] | None = None,
        gate: Gate | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s {timeout_s} must be > 0")
        self._client = client
        self._timeout_s = timeout_s
        self._maps = tuple(candidate_maps(client.transport) if maps is None else maps)
        self._gate = gate
        self._requests = 0
        self._timeouts = 0
        self._answered = False  # anything came back at all (an exception reply counts)
        self._link_error: str | None = None

    async def scan(self, units: Iterable[int]) -> ScanReport:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ids = tuple(units)
        found: list[UnitFound] = []
        for unit in ids:
            answer = await self.presence(unit)
            if answer is None:
                continue
            found.append(UnitFound(unit_id=unit, answer=answer, matches=await self.identify(unit)))
        return ScanReport(
            bus=self._client.describe(),
            units_probed=len(ids),
            found=tuple(found),
            elapsed_s=loop.time() - start,
            requests=self._requests,
            timeouts=self._timeouts,
            timeout_s=self._timeout_s,
            link_error=None if self._answered else self._link_error,
        )

    async def presence(self, unit: int) -> str | None:
        """What ``unit`` answered to the presence probe; None when nothing (that counts) did."""
        try:
            words = await self._read(Table.HOLDING, PRESENCE_ADDRESS, 1, unit)
        except (ModbusRefused, ModbusBusy) as exc:
            self._answered = True
            code = exc.exception_code
            if code in ABSENT_EXCEPTION_CODES:
                return None
            return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        except ModbusNoAnswer:
            return None  # silence or garbage: nobody there
        except EvsiteError as exc:
            # no connection: nobody can answer (the first failure says why; later ones only
            # that the back-off is running)
            self._link_error = self._link_error or str(exc)
            return None
        self._answered = True
        return f"holding {PRESENCE_ADDRESS} = {words[0]}"

    async def identify(self, unit: int) -> tuple[ModelMatch, ...]:
        matches = []
        for name, rmap in self._maps:
            match = await self.match(unit, name, rmap)
            if match is not None:
                matches.append(match)
        return tuple(matches)

    async def match(self, unit: int, driver: str, rmap: RegisterMap) -> ModelMatch | None:
        """``rmap``'s model when every one of its identify tests holds on ``unit``."""
        try:
            placed = await self._placed(unit, rmap)
            if placed is None:
                return None
            values = await self._read_fields(unit, placed, [t.field for t in placed.identify])
        except (EvsiteError, ValueError):
            return None  # refused, silent or undecodable: not this model
        evidence = []
        for test in placed.identify:
            f = placed.field(test.field)
            value = values.get(test.field)
            if not test.holds(f, value):
                return None
            assert value is not None  # holds() is False for a missing value
            text = f"{test.field} = {format_value(value)}"
            letter = f.state_letter(value)
            if letter is not None:
                text += f" ({letter})"
            unit_text = unit_of(test.field)
            evidence.append(f"{text} {unit_text}".rstrip())
        return ModelMatch(driver=driver, model=rmap.model, kind=rmap.kind, evidence=tuple(evidence))

    async def _placed(self, unit: int, rmap: RegisterMap) -> RegisterMap | None:
        """The map at the addresses this unit would use (SunSpec found, connector 1)."""
        base = rmap.address_base
        if base is None:
            return rmap
        if base.sunspec_model is not None:

            async def pair(address: int) -> list[int]:
                return await self._read(Table.HOLDING, address, 2, unit)

            try:
                address = await locate_model(pair, base.sunspec_model, SUNSPEC_BASES)
            except DeviceError:
                return None
            return rmap.moved(address)
        return rmap.moved(base.default * base.step)

    async def _read_fields(
        self, unit: int, rmap: RegisterMap, names: Sequence[str]
    ) -> Mapping[str, Value]:
        fields = rmap.with_scale_fields(rmap.field(n) for n in names)
        values: dict[str, Value] = {}
        for block in rmap.plan(fields):
            registers = await self._read(block.table, block.address, block.count, unit)
            values.update(decode_block(block, registers))
        return apply_scale_factors(fields, values)

    async def _read(self, table: Table, address: int, count: int, unit: int) -> list[int]:
        if self._gate is not None:
            await self._gate(
                self._client.budget_for(self._timeout_s) + self._client.inter_frame_gap_s
            )
        self._requests += 1
        try:
            return await self._client.read_registers(
                table, address, count, unit, timeout_s=self._timeout_s
            )
        except ModbusNoAnswer:
            self._timeouts += 1
            raise
