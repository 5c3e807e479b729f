"""Adapters layer: the MQTT link to the cloud backend (topics, events, telemetry, commands).

``settings`` is plain data (the config loader builds it without importing paho); ``link``
holds the paho client.
"""
