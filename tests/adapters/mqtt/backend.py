"""Test support: the cloud backend's side of the MQTT tests, a recording paho client."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.adapters.mqtt.broker import TlsMaterial, wait_until


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class CloudClient:
    """The backend's side: subscribes, records every message, sends commands."""

    port: int
    client_id: str
    protocol: str = "5"
    persistent: bool = False  # keep the session (and its queued messages) across reconnects
    tls: TlsMaterial | None = None
    username: str | None = None
    password: str | None = None
    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        v5 = self.protocol == "5"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not self.persistent,
        )
        self.client.reconnect_delay_set(1, 2)
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            self.client.tls_set(
                ca_certs=str(self.tls.ca_file),
                certfile=str(self.tls.client_cert),
                keyfile=str(self.tls.client_key),
            )
        self.client.on_message = self._on_message
        self._subscriptions: list[str] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._subscriptions:
            c.subscribe([(topic, 1) for topic in self._subscriptions])
        else:
            self.subscribed.set()

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, codes: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        with self.lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), corr))

    def connect(self, *subscriptions: str) -> CloudClient:
        self._subscriptions = list(subscriptions)
        properties = None
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 600 if self.persistent else 0
            self.client.connect(
                "127.0.0.1", self.port, keepalive=5, clean_start=not self.persistent,
                properties=properties,
            )  # fmt: skip
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10.0, "the cloud client's subscriptions")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(
        self,
        suffix: str,
        predicate: Callable[[Message], bool] = lambda m: True,
        timeout_s: float = 10.0,
    ) -> Message:
        found: list[Message] = []

        def seen() -> bool:
            found[:] = [m for m in self.on(suffix) if predicate(m)]
            return bool(found)

        wait_until(seen, timeout_s, f"a message on ...{suffix}")
        return found[0]

    def request(
        self,
        topic: str,
        payload: dict[str, Any] | bytes,
        *,
        response_topic: str,
        correlation: bytes,
        retain: bool = False,
    ) -> None:
        """An MQTT 5 request (the reply goes to ``response_topic``, which we subscribed)."""
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = response_topic
        properties.CorrelationData = correlation
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, body, qos=1, retain=retain, properties=properties)

    def reply(self, correlation: bytes, timeout_s: float = 10.0) -> dict[str, Any]:
        m = self.wait_for(
            "", lambda m: "/reply/" in m.topic and m.correlation_data == correlation, timeout_s
        )
        document: dict[str, Any] = m.json()
        return document
