"""Tests of the MQTT link against a real mosquitto broker."""
