"""Adapters layer: the settings of the MQTT link, as the config loader hands them over.

Plain data, no paho: ``controller.config`` builds these from the ``mqtt:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Protocol = Literal["5", "3.1.1"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """TLS toward the broker: its certificate is always verified against ``ca_file``."""

    ca_file: Path
    cert_file: Path | None = None  # a client certificate, with its key, when the broker asks
    key_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    tls: TlsFiles | None = None
    credentials_file: Path | None = None  # username and password; read at start, never logged
    keepalive_s: int = 30
    telemetry_interval_s: float = 1.0
    outbox_max_events: int = 100_000
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    protocol: Protocol = "5"
    allow_test_injection: bool = False
    home_assistant: bool = False  # publish Home Assistant discovery configs (retained)
    home_assistant_prefix: str = "homeassistant"  # HA's discovery prefix
