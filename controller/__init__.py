"""evsite: the controller of an EV charge site (load management, devices, OCPP, MQTT, payments)."""

__version__ = "0.1.0"
