"""A limit is written rounded DOWN to what the EVSE's register holds, never up."""

from __future__ import annotations

from controller.core.site import DeviceSpec, TcpTransport
from drivers.modbus.bus import BusPool
from drivers.registry import build_evse


def _evse(driver: str, unit_id: int = 255) -> object:
    spec = DeviceSpec(
        id="x", driver=driver, transport=TcpTransport(host="127.0.0.1", port=1), unit_id=unit_id
    )
    return build_evse(spec, pool=BusPool())


def test_whole_amp_registers_get_the_floor() -> None:
    bender = _evse("bender_cc612")
    assert bender._quantise("setpoint_a", 21.7) == 21.0  # type: ignore[attr-defined]
    assert bender._quantise("setpoint_a", 6.0) == 6.0  # type: ignore[attr-defined]


def test_tenth_amp_and_float_registers_keep_their_precision() -> None:
    heidelberg = _evse("heidelberg_ec", unit_id=1)
    assert heidelberg._quantise("setpoint_a", 21.79) == 21.7  # type: ignore[attr-defined]
    alfen = _evse("alfen_ng9xx", unit_id=1)
    assert alfen._quantise("setpoint_a", 21.75) == 21.75  # type: ignore[attr-defined]
