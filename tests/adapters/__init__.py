"""Tests of the adapters layer (controller.adapters)."""
