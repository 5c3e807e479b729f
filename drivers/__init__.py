"""Drivers layer: device I/O (Modbus meters and EVSEs, payment terminals) behind the core's ports."""
