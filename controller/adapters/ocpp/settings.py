"""Adapters layer: the settings of the OCPP 1.6J link, as the config loader hands them over.

Plain data, no websockets or ``ocpp`` import: ``controller.config`` builds these from the
``ocpp:`` section (docs/ocpp.md, docs/configuration.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Topology = Literal["gateway", "per_evse"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OcppTls:
    """TLS toward the CSMS: its certificate is always verified against ``ca_file`` (profile 2);
    ``cert_file``/``key_file`` are the charge point's own certificate (profile 3)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OcppSettings:
    """The OCPP link of one site.

    ``url`` is the CSMS endpoint without the identity (``wss://csms.example/ocpp``); the
    identity is appended as the last path segment. ``keys`` are the site file's values of the
    OCPP configuration keys (validated names, values as text); the CSMS may override the
    writable ones with ChangeConfiguration until the site file's value itself changes.
    """

    url: str
    identity: str
    vendor: str = "evsite"
    model: str = "evsite-gateway"
    serial: str | None = None
    firmware: str | None = None  # None: the evsite version
    topology: Topology = "gateway"
    security_profile: int = 0
    tls: OcppTls | None = None
    credentials_file: Path | None = None  # ``authorization_key: ...``; never logged
    keys: Mapping[str, str] = field(default_factory=dict)
    call_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    ping_interval_s: float = 30.0
    outbox_max_messages: int = 100_000
    # The idTag a transaction carries when nobody presented one (free vend, a card payment, a
    # technician's start): StartTransaction requires one.
    anonymous_id_tag: str = "evsite"

    def identities(self, connectors: list[str]) -> dict[str, dict[int, str]]:
        """The charge points this site presents: identity -> OCPP connector number -> the
        site's connector id. ``gateway``: one charge point, connectors numbered 1..N in the
        order of the site file; ``per_evse``: one charge point per connector,
        ``<identity>-<connector id>``, each with connector 1."""
        if self.topology == "gateway":
            return {self.identity: {n: cid for n, cid in enumerate(connectors, start=1)}}
        return {f"{self.identity}-{cid}": {1: cid} for cid in connectors}
