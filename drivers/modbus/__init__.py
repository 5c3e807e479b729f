"""Drivers layer: Modbus devices described by register maps (YAML data) behind one generic codec."""
