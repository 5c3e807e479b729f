"""Drivers layer: payment terminals at the charger.

``zvt/`` is the sans-IO ZVT codec (ECR side); ``transport`` is its I/O shell over a serial
port or TCP (``ZvtTerminal``); ``errors`` the core errors a terminal command ends in;
``profile`` the settings that differ between terminal models. See docs/payments.md.
"""
