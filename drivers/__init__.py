"""Drivers layer: device I/O (Modbus meters and EVSEs, payment terminals) behind core ports."""
