"""Drivers layer: SunSpec meters (models 203 and 213), whose registers move from device to device.

A SunSpec device starts its register space with the marker "SunS" at one of three base
addresses (40000, 0 or 50000, probed in that order as pysunspec2 does), followed by a chain of
models: each model is its ID register, a length register and ``length`` registers of data; the
chain ends with ID 0xFFFF. The meter map (``sunspec_203.yaml``, ``sunspec_213.yaml``) gives each
field's offset from its model's ID register; ``SunSpecMeter`` finds that register once, on the
first read (again after a failed locate), and then reads like any register-map meter.

The walk itself is sans-IO (``SunSpecWalk``: addresses to read in, a decision out); the meter
feeds it registers from the bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from controller.core.errors import ConfigError, DeviceError, DeviceUnavailable
from controller.core.model import MeterReading
from controller.core.site import DeviceSpec
from drivers.modbus.bus import BusPool
from drivers.modbus.client import ModbusRefused
from drivers.modbus.meter import RegisterMapMeter
from drivers.modbus.registermap import RegisterMap, Table

SUNSPEC_BASES = (40000, 0, 50000)
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
MAX_MODELS = 64  # a chain longer than this is a corrupt device, not a meter


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelHeader:
    """One model in the chain: its ID register's address, its ID and its length."""

    address: int
    model_id: int
    length_registers: int

    @property
    def next_address(self) -> int:
        return self.address + 2 + self.length_registers


def next_header(address: int, registers: list[int]) -> ModelHeader:
    """The model header read at ``address`` (two registers: ID, length)."""
    if len(registers) != 2:
        raise ValueError(f"a model header is 2 registers, got {len(registers)}")
    return ModelHeader(address=address, model_id=registers[0], length_registers=registers[1])


RegisterPair = Callable[[int], Awaitable[list[int]]]
"""Reads the two holding registers at an address (the bus and unit id bound in)."""


async def locate_model(
    read: RegisterPair, model_id: int, bases: Sequence[int] = SUNSPEC_BASES
) -> int:
    """The address of ``model_id``'s ID register: "SunS" at one of ``bases``, then the chain.

    DeviceError when no base holds the marker or the chain has no such model; a base that
    answers with a Modbus exception is skipped. Bus errors (no answer) propagate.
    """
    for base in bases:
        try:
            marker = await read(base)
        except ModbusRefused:
            continue  # no register there: try the next base
        if tuple(marker) != SUNS_MARKER:
            continue
        address = base + 2
        for _ in range(MAX_MODELS):
            if address + 2 > 0x10000:
                break
            header = next_header(address, await read(address))
            if header.model_id == END_MODEL_ID:
                break
            if header.model_id == model_id:
                return header.address
            address = header.next_address
        raise DeviceError(f"SunSpec model {model_id} not found in the chain at {base}")
    raise DeviceError(f"no SunSpec marker 'SunS' at {', '.join(map(str, bases))}")


class SunSpecMeter(RegisterMapMeter):
    """A SunSpec meter: ``SunSpecMeter(spec, "sunspec_203", pool=pool)``.

    ``options.sunspec_base`` (40000, 0 or 50000) skips probing the other bases.
    """

    locates_base = True

    def __init__(
        self, spec: DeviceSpec, register_map: RegisterMap | str, *, pool: BusPool | None = None
    ) -> None:
        super().__init__(spec, register_map, pool=pool)
        base = self.register_map.address_base
        if base is None or base.sunspec_model is None:
            raise ConfigError(
                [f"device {spec.id}: {self.register_map.source} is not a SunSpec map"]
            )
        self._model_id = base.sunspec_model
        self._relative = self.register_map
        raw_base = spec.options.get("sunspec_base")
        if raw_base is not None and raw_base not in SUNSPEC_BASES:
            raise ConfigError(
                [f"device {spec.id}: option sunspec_base = {raw_base!r} is not 40000, 0 or 50000"]
            )
        self._bases = SUNSPEC_BASES if raw_base is None else (int(str(raw_base)),)
        self._model_address: int | None = None

    @property
    def model_address(self) -> int | None:
        """The address of the model's ID register, once found."""
        return self._model_address

    async def locate(self) -> int:
        """Find the model's ID register; DeviceError when the device has no such model."""
        unit = self.spec.unit_id

        async def read(address: int) -> list[int]:
            return await self.client.read_registers(Table.HOLDING, address, 2, unit)

        try:
            address = await locate_model(read, self._model_id, self._bases)
        except DeviceError as exc:
            raise DeviceError(f"device {self.name}: {exc}") from exc
        self._rebase(self._relative.moved(address))
        self._model_address = address
        return address

    async def read(self, now_s: float) -> MeterReading:
        if self._model_address is None:
            try:
                await self.locate()
            except ValueError as exc:
                raise DeviceUnavailable(f"device {self.name}: {exc}") from exc
        return await super().read(now_s)
