"""Adapters layer: OCPP and MQTT links, converting foreign types to core types at the boundary."""
