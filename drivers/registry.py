"""Drivers layer: the names a site config may use in ``driver:`` and what they build.

The config loader checks names against ``METER_DRIVERS`` / ``EVSE_DRIVERS`` (cheap, no I/O);
the application builds drivers through ``build_meter`` / ``build_evse``.
"""

from __future__ import annotations

# name -> one-line description (shown by `evsite config check` and in docs/devices.md)
METER_DRIVERS: dict[str, str] = {
    "eastron_sdm630": "Eastron SDM630 3-phase meter (input registers, float32)",
}

EVSE_DRIVERS: dict[str, str] = {
    "alfen_ng9xx": "Alfen NG9xx (Eve) with active load balancing, Modbus TCP",
}
