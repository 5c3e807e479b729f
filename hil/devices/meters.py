"""hil: simulated site meters beside the SDM630: Carlo Gavazzi EM24 / EM340, Janitza UMG 604,
ABB B23 and SunSpec models 203 / 213.

Written from /work/shared/reference/modbus.md §1 on its own (no driver code, no driver map):
each model's register constants, scales and word order are restated here, and the words are
built with hil's own encoders. ``*_registers(reading)`` are pure (a ``MeterReading`` in, address
-> word out); ``meter_device(model, reading)`` wraps one as a ``RegisterDevice`` that serves over
Modbus TCP (``TcpServer``) or on an RS-485 line (``RtuLine``).

Addresses are 0-based wire addresses. Every address in a model's declared ranges is readable
(the ones not modelled read 0); anything else answers exception 2. Meters take no writes.

- EM24 (input registers, INT32 LOW word first): V L1-L3 0x00/02/04 (x10), A 0x0C/0E/10 (x1000),
  W per phase 0x12/14/16 (x10), W system 0x28 (x10), kWh import 0x42 / export 0x5C (x10).
- EM340: as the EM24, but kWh import 0x34 / export 0x4E.
- Janitza UMG 604 (holding, float32 high word first): V 19000/02/04, A 19012/14/16, W per phase
  19020/22/24, W sum 19026, Wh consumed 19068, Wh delivered 19076.
- ABB B23 (holding, high word first): V u32 0x5B00/02/04 (x10), A u32 0x5B0C/0E/10 (x100),
  W i32 0x5B14 total, 0x5B16/18/1A per phase (x100), energy u64 import 0x5000 / export 0x5004
  (x100 kWh). "No value": all 0xFF (unsigned) or 0x7F FF.. (signed).
- SunSpec (holding): "SunS" at the base (40000, 0 or 50000), common model 1 (66 registers), the
  meter model, then the end marker 0xFFFF / 0. Model 203 (integers + scale factors, offsets
  from its ID register): A 3..5 with A_SF 6, V 8..10 with V_SF 15, W 18 and 19..21 with W_SF
  22, TotWhExp 38 and TotWhImp 46 (acc32) with TotWh_SF 54; length 105. Model 213 (float32):
  A 4/6/8, V 12/14/16, W 28 and 30/32/34, TotWhExp 60, TotWhImp 68; length 124.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from hil.devices import registers as enc
from hil.devices.modbus import FC_READ_HOLDING, FC_READ_INPUT, RegisterDevice


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReading:
    """What a 3-phase meter measures: per-phase V, A, W and the energy counters."""

    voltage_v: tuple[float, float, float] = (230.0, 230.0, 230.0)
    current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    power_w: tuple[float, float, float] = (0.0, 0.0, 0.0)
    import_kwh: float = 0.0
    export_kwh: float = 0.0


def _put(words: dict[int, int], address: int, values: list[int]) -> None:
    for offset, word in enumerate(values):
        words[address + offset] = word


# --- Carlo Gavazzi EM24 / EM340 ---------------------------------------------------------------

CG_VOLTAGE_L1 = 0x00
CG_CURRENT_L1 = 0x0C
CG_POWER_L1 = 0x12
CG_POWER_SYSTEM = 0x28
EM24_IMPORT_KWH = 0x42
EM24_EXPORT_KWH = 0x5C
EM340_IMPORT_KWH = 0x34
EM340_EXPORT_KWH = 0x4E
CG_INPUT_RANGE = range(0x00, 0x60)


def _cg_int(value: float, per_unit: int) -> list[int]:
    return enc.i32(round(value * per_unit), low_word_first=True)


def _carlo_gavazzi(reading: MeterReading, import_at: int, export_at: int) -> dict[int, int]:
    words = dict.fromkeys(CG_INPUT_RANGE, 0)
    for p in range(3):
        _put(words, CG_VOLTAGE_L1 + 2 * p, _cg_int(reading.voltage_v[p], 10))
        _put(words, CG_CURRENT_L1 + 2 * p, _cg_int(reading.current_a[p], 1000))
        _put(words, CG_POWER_L1 + 2 * p, _cg_int(reading.power_w[p], 10))
    _put(words, CG_POWER_SYSTEM, _cg_int(sum(reading.power_w), 10))
    _put(words, import_at, _cg_int(reading.import_kwh, 10))
    _put(words, export_at, _cg_int(reading.export_kwh, 10))
    return words


def em24_registers(reading: MeterReading) -> dict[int, int]:
    """EM24 input registers 0x00..0x5F."""
    return _carlo_gavazzi(reading, EM24_IMPORT_KWH, EM24_EXPORT_KWH)


def em340_registers(reading: MeterReading) -> dict[int, int]:
    """EM330/EM340 input registers 0x00..0x5F."""
    return _carlo_gavazzi(reading, EM340_IMPORT_KWH, EM340_EXPORT_KWH)


# --- Janitza UMG 604 --------------------------------------------------------------------------

JANITZA_VOLTAGE_L1 = 19000
JANITZA_CURRENT_L1 = 19012
JANITZA_POWER_L1 = 19020
JANITZA_POWER_SUM = 19026
JANITZA_WH_CONSUMED = 19068
JANITZA_WH_DELIVERED = 19076
JANITZA_HOLDING_RANGE = range(19000, 19122)


def janitza_registers(reading: MeterReading) -> dict[int, int]:
    """UMG 604 holding registers 19000..19121 (float32, W and Wh)."""
    words = dict.fromkeys(JANITZA_HOLDING_RANGE, 0)
    for p in range(3):
        _put(words, JANITZA_VOLTAGE_L1 + 2 * p, enc.f32(reading.voltage_v[p]))
        _put(words, JANITZA_CURRENT_L1 + 2 * p, enc.f32(reading.current_a[p]))
        _put(words, JANITZA_POWER_L1 + 2 * p, enc.f32(reading.power_w[p]))
    _put(words, JANITZA_POWER_SUM, enc.f32(sum(reading.power_w)))
    _put(words, JANITZA_WH_CONSUMED, enc.f32(reading.import_kwh * 1000.0))
    _put(words, JANITZA_WH_DELIVERED, enc.f32(reading.export_kwh * 1000.0))
    return words


# --- ABB B23 ----------------------------------------------------------------------------------

ABB_VOLTAGE_L1 = 0x5B00
ABB_CURRENT_L1 = 0x5B0C
ABB_POWER_TOTAL = 0x5B14
ABB_POWER_L1 = 0x5B16
ABB_IMPORT = 0x5000
ABB_EXPORT = 0x5004
ABB_HOLDING_RANGES = (range(0x5000, 0x5010), range(0x5B00, 0x5B40))
ABB_NO_U32 = [0xFFFF, 0xFFFF]
ABB_NO_I32 = [0x7FFF, 0xFFFF]


def abb_b23_registers(reading: MeterReading, *, no_value: bool = False) -> dict[int, int]:
    """B23 holding registers; ``no_value``: the meter reports "no value" for V, A and W."""
    words = {a: 0 for r in ABB_HOLDING_RANGES for a in r}
    for p in range(3):
        v = ABB_NO_U32 if no_value else enc.u32(round(reading.voltage_v[p] * 10))
        a = ABB_NO_U32 if no_value else enc.u32(round(reading.current_a[p] * 100))
        w = ABB_NO_I32 if no_value else enc.i32(round(reading.power_w[p] * 100))
        _put(words, ABB_VOLTAGE_L1 + 2 * p, v)
        _put(words, ABB_CURRENT_L1 + 2 * p, a)
        _put(words, ABB_POWER_L1 + 2 * p, w)
    total = ABB_NO_I32 if no_value else enc.i32(round(sum(reading.power_w) * 100))
    _put(words, ABB_POWER_TOTAL, total)
    _put(words, ABB_IMPORT, enc.u64(round(reading.import_kwh * 100)))
    _put(words, ABB_EXPORT, enc.u64(round(reading.export_kwh * 100)))
    return words


# --- SunSpec ----------------------------------------------------------------------------------

SUNSPEC_MARKER = [0x5375, 0x6E53]  # "SunS"
COMMON_MODEL_ID = 1
COMMON_MODEL_LENGTH = 66
MODEL_203_LENGTH = 105
MODEL_213_LENGTH = 124
END_MODEL = [0xFFFF, 0]
NOT_IMPLEMENTED_I16 = 0x8000
# scale factors the simulated model 203 uses: 0.01 A, 0.1 V, 1 W, 1 Wh
SF_CURRENT, SF_VOLTAGE, SF_POWER, SF_ENERGY = -2, -1, 0, 0


def sunspec_model_address(base: int) -> int:
    """Where the meter model's ID register sits: after "SunS" and the common model."""
    return base + 2 + 2 + COMMON_MODEL_LENGTH


def _scaled(value: float, sf: int) -> list[int]:
    return enc.i16(round(value / 10.0**sf))


def _model_203(reading: MeterReading) -> list[int]:
    m = [0] * (2 + MODEL_203_LENGTH)
    m[0], m[1] = 203, MODEL_203_LENGTH
    for i in range(2, len(m)):
        m[i] = NOT_IMPLEMENTED_I16  # what the meter does not measure
    m[2] = _scaled(sum(reading.current_a), SF_CURRENT)[0]
    for p in range(3):
        m[3 + p] = _scaled(reading.current_a[p], SF_CURRENT)[0]
        m[8 + p] = _scaled(reading.voltage_v[p], SF_VOLTAGE)[0]
        m[19 + p] = _scaled(reading.power_w[p], SF_POWER)[0]
    m[6] = enc.i16(SF_CURRENT)[0]
    m[15] = enc.i16(SF_VOLTAGE)[0]
    m[18] = _scaled(sum(reading.power_w), SF_POWER)[0]
    m[22] = enc.i16(SF_POWER)[0]
    m[38:40] = enc.u32(round(reading.export_kwh * 1000))
    m[46:48] = enc.u32(round(reading.import_kwh * 1000))
    m[54] = enc.i16(SF_ENERGY)[0]
    return m


def _model_213(reading: MeterReading) -> list[int]:
    m = [0] * (2 + MODEL_213_LENGTH)
    m[0], m[1] = 213, MODEL_213_LENGTH
    nan = enc.f32(math.nan)
    for i in range(2, len(m) - 1, 2):
        m[i : i + 2] = nan
    m[2:4] = enc.f32(sum(reading.current_a))
    for p in range(3):
        m[4 + 2 * p : 6 + 2 * p] = enc.f32(reading.current_a[p])
        m[12 + 2 * p : 14 + 2 * p] = enc.f32(reading.voltage_v[p])
        m[30 + 2 * p : 32 + 2 * p] = enc.f32(reading.power_w[p])
    m[28:30] = enc.f32(sum(reading.power_w))
    m[60:62] = enc.f32(reading.export_kwh * 1000.0)
    m[68:70] = enc.f32(reading.import_kwh * 1000.0)
    return m


def sunspec_registers(reading: MeterReading, *, model: int, base: int = 40000) -> dict[int, int]:
    """The whole SunSpec chain at ``base``: marker, common model, meter model, end."""
    common = [COMMON_MODEL_ID, COMMON_MODEL_LENGTH, *enc.ascii_to_registers("evsite-hil", 16)]
    common += [0] * (2 + COMMON_MODEL_LENGTH - len(common))
    meter = _model_203(reading) if model == 203 else _model_213(reading)
    chain = SUNSPEC_MARKER + common + meter + END_MODEL
    return {base + i: w for i, w in enumerate(chain)}


def sunspec_range(model: int, base: int = 40000) -> range:
    length = MODEL_203_LENGTH if model == 203 else MODEL_213_LENGTH
    return range(base, base + 2 + 2 + COMMON_MODEL_LENGTH + 2 + length + 2)


# --- devices ----------------------------------------------------------------------------------


class MeterModel(Enum):
    EM24 = "em24"
    EM340 = "em340"
    JANITZA_UMG604 = "janitza_umg604"
    ABB_B23 = "abb_b23"
    SUNSPEC_203 = "sunspec_203"
    SUNSPEC_213 = "sunspec_213"


class SimulatedMeter:
    """A meter model serving ``reading()`` (called on every request for live values)."""

    def __init__(
        self,
        model: MeterModel,
        reading: Callable[[], MeterReading] = MeterReading,
        *,
        unit_id: int = 1,
        sunspec_base: int = 40000,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.reading = reading
        self.no_value = False  # ABB: report "no value" (all 0xFF) for V, A and W
        self.sunspec_base = sunspec_base
        holding: tuple[range, ...] = ()
        inputs: tuple[range, ...] = ()
        if model in (MeterModel.EM24, MeterModel.EM340):
            inputs = (CG_INPUT_RANGE,)
        elif model is MeterModel.JANITZA_UMG604:
            holding = (JANITZA_HOLDING_RANGE,)
        elif model is MeterModel.ABB_B23:
            holding = ABB_HOLDING_RANGES
        else:
            holding = (sunspec_range(self._sunspec_model, sunspec_base),)
        self.device = RegisterDevice(
            name=name or model.value,
            unit_id=unit_id,
            render=self._render,
            holding=holding,
            inputs=inputs,
        )

    @property
    def _sunspec_model(self) -> int:
        return 203 if self.model is MeterModel.SUNSPEC_203 else 213

    def _render(self, function_code: int) -> dict[int, int]:
        reading = self.reading()
        m = self.model
        if m is MeterModel.EM24 and function_code == FC_READ_INPUT:
            return em24_registers(reading)
        if m is MeterModel.EM340 and function_code == FC_READ_INPUT:
            return em340_registers(reading)
        if function_code != FC_READ_HOLDING:
            return {}
        if m is MeterModel.JANITZA_UMG604:
            return janitza_registers(reading)
        if m is MeterModel.ABB_B23:
            return abb_b23_registers(reading, no_value=self.no_value)
        return sunspec_registers(reading, model=self._sunspec_model, base=self.sunspec_base)
