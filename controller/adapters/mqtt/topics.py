"""Adapters layer: the MQTT topic tree of one site, ``evsite/v1/<site_id>/...`` (docs/mqtt.md).

Everything a site publishes or reads is below its own prefix, so that one broker ACL pattern
(``pattern readwrite evsite/v1/%u/#``) confines a gateway to its site. Pure: names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "evsite"
API_VERSION = "v1"
# A level we build from an id or a kind: never a wildcard, a separator or empty.
_LEVEL_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_level(text: str) -> str:
    if not _LEVEL_RE.fullmatch(text):
        raise ValueError(f"{text!r} cannot be a topic level (letters, digits, _ . : - only)")
    return text


@dataclass(frozen=True, slots=True)
class Topics:
    site_id: str

    def __post_init__(self) -> None:
        check_level(self.site_id)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{API_VERSION}/{self.site_id}"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def meta(self) -> str:
        return f"{self.prefix}/meta"

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/telemetry"

    def state(self, connector_id: str) -> str:
        return f"{self.prefix}/state/{check_level(connector_id)}"

    def event(self, kind: str) -> str:
        return f"{self.prefix}/events/{check_level(kind)}"

    @property
    def commands(self) -> str:
        """The filter the link subscribes to."""
        return f"{self.prefix}/cmd/+"

    def command(self, name: str) -> str:
        return f"{self.prefix}/cmd/{check_level(name)}"

    @property
    def reply_prefix(self) -> str:
        return f"{self.prefix}/reply/"

    def reply(self, client: str) -> str:
        return f"{self.reply_prefix}{check_level(client)}"

    def command_name(self, topic: str) -> str | None:
        """``.../cmd/<name>`` -> name; None for any other topic."""
        head = f"{self.prefix}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if _LEVEL_RE.fullmatch(name) else None

    def is_reply_topic(self, topic: str) -> bool:
        """A topic a 3.1.1 request may name in ``reply_to``: one level below ``reply/``."""
        if not topic.startswith(self.reply_prefix):
            return False
        return bool(_LEVEL_RE.fullmatch(topic[len(self.reply_prefix) :]))
