"""Adapters layer: the MQTT link of one site to the cloud backend (paho-mqtt 2.x).

What it publishes below ``evsite/v1/<site_id>/`` (docs/mqtt.md): ``status`` (retained birth
message, last will and goodbye), ``meta`` (retained), ``telemetry`` (QoS 0 at
``telemetry_interval_s``), ``state/<connector>`` (retained, on change) and ``events/<kind>``
(QoS 1, from the persistent outbox); it answers commands on ``cmd/<name>``.

Threads: paho's network loop runs in a thread of its own, one paho Client per connection
(connect, ``loop_forever`` until the connection ends, back off with jitter, a fresh Client).
Its callbacks only hand over to the event loop (``call_soon_threadsafe``). The outbox, the
command handlers and the status are used on the event loop's thread alone, and nothing there
waits for the network, so the control tick is never held up by the link.

Events never lost: the outbox rows of channel ``mqtt`` are published at QoS 1 in order, at
most a window in flight (capped by the broker's Receive Maximum), and removed from the outbox
only on their PUBACK. A new connection starts again at the oldest row: what was sent and not
acknowledged goes again with the same id (the cloud drops duplicates by id). paho's in-memory
queue dies with its Client, so it never replays anything on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.adapters.mqtt import payloads
from controller.adapters.mqtt.commands import CommandSpec, CommandTable, Outcome, Request
from controller.adapters.mqtt.settings import MqttSettings
from controller.adapters.mqtt.topics import Topics
from controller.core.errors import PermanentError
from controller.core.site import Site
from controller.store.db import StoreError
from controller.store.outbox import NewMessage, Outbox, OutboxMessage

log = structlog.get_logger("evsite.mqtt")

CHANNEL = "mqtt"
MAX_IN_FLIGHT = 100  # events sent and not yet acknowledged; the broker may allow fewer
GOODBYE_TIMEOUT_S = 2.0
ACK_RETRY_S = 1.0
# Acknowledged events leave the outbox in batches: one fsync'd transaction per batch, not per
# event. Until then they are only marked in memory; after a crash they go again (same id).
ACK_FLUSH_S = 0.05
ACK_BATCH = 1000
JOIN_TIMEOUT_S = 10.0


class CredentialsError(PermanentError):
    """The credentials file is missing, unreadable or malformed (its contents never shown)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def load_credentials(path: Path) -> Credentials:
    """``username: ...`` and ``password: ...`` from a YAML file. Errors never quote the file."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise CredentialsError(f"{path} is not YAML (username: ..., password: ...)") from None
    if not isinstance(document, dict):
        raise CredentialsError(f"{path} must hold the keys username and password")
    username, password = document.get("username"), document.get("password")
    if not isinstance(username, str) or not username:
        raise CredentialsError(f"{path}: username must be non-empty text")
    if not isinstance(password, str):
        raise CredentialsError(f"{path}: password must be text (quote it)")
    unknown = sorted(set(document) - {"username", "password"})
    if unknown:
        raise CredentialsError(f"{path}: unknown keys {', '.join(map(str, unknown))}")
    return Credentials(username=username, password=password)


class LinkState(StrEnum):
    IDLE = "idle"  # not started
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # waiting to try again
    STOPPED = "stopped"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MqttLink:
    """The site's MQTT link. Create, ``await start()``, ``emit`` events, ``await close()``."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        site: Site,
        outbox: Outbox,
        status: Callable[[], Mapping[str, Any]],
        commands: Mapping[str, CommandSpec[Any]],
        version: str,
        credentials: Credentials | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.site = site
        self.outbox = outbox
        self.topics = Topics(site.id)
        self._status = status
        self._table = CommandTable(self.topics, commands)
        self._version = version
        self._credentials = credentials
        self._rng = rng or random.Random()
        self._wall = wall
        self.boot_id = str(uuid.uuid4())
        self._commands = list(commands)
        self._meta = payloads.meta(
            site,
            version=version,
            telemetry_interval_s=settings.telemetry_interval_s,
            commands=self._commands,
        )
        # Called on the event loop after each connection's birth and meta (HA discovery).
        self.connect_listeners: list[Callable[[], None]] = []
        outbox.set_bound(CHANNEL, settings.outbox_max_events)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._current: mqtt.Client | None = None  # the thread's client, for close()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._telemetry_task: asyncio.Task[None] | None = None
        self._closing = False

        # Event-loop side of the connection in use.
        self._client: mqtt.Client | None = None
        self._gen = -1
        self._window = 1
        self._in_flight: dict[int, OutboxMessage] = {}
        self._sent_seq = 0
        self._acked: list[str] = []
        self._attempted: list[str] = []
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        self._pump_scheduled = False
        self._paused_until = 0.0
        self._ack_error_logged = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._published_states: dict[str, dict[str, Any]] = {}

        self.state = LinkState.IDLE
        self.since = wall()
        self.last_error: str | None = None
        self.connects = 0
        self.events_acked = 0
        self.telemetry_sent = 0
        self.commands_handled = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._set_state(LinkState.CONNECTING)
        self._thread = threading.Thread(target=self._network_main, name="mqtt", daemon=True)
        self._thread.start()
        self._telemetry_task = asyncio.create_task(self._telemetry_loop(), name="mqtt-telemetry")
        log.info(
            "mqtt_starting",
            broker=f"{self.settings.host}:{self.settings.port}",
            tls=self.settings.tls is not None,
            protocol=self.settings.protocol,
            client_id=self.settings.client_id,
            queued_events=self.outbox.count(CHANNEL),
        )

    async def close(self) -> None:
        """Say goodbye (retained ``offline``, reason ``stopped``), disconnect, stop the thread."""
        self._closing = True
        if self._telemetry_task is not None:
            self._telemetry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._telemetry_task
        for task in list(self._tasks):
            task.cancel()
        client = self._client
        if client is not None:
            goodbye = payloads.status_offline(boot_id=self.boot_id, reason="stopped")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._publish_confirmed(client, self.topics.status, goodbye, retain=True),
                    GOODBYE_TIMEOUT_S,
                )
        self._flush_acks()
        self._stop.set()
        current = self._current
        if current is not None:
            current.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT_S)
        self._client = None
        self._set_state(LinkState.STOPPED)
        log.info("mqtt_stopped", queued_events=self.outbox.count(CHANNEL))

    def set_meta(self, *, tariff: Mapping[str, Any] | None) -> None:
        """Rebuild the retained ``meta`` (the tariff changed); republished when connected."""
        meta = payloads.meta(
            self.site,
            version=self._version,
            telemetry_interval_s=self.settings.telemetry_interval_s,
            commands=self._commands,
            tariff=tariff,
        )
        if meta == self._meta:
            return
        self._meta = meta
        client = self._client
        if client is not None and not self._closing:
            client.publish(self.topics.meta, meta, qos=1, retain=True)

    async def publish_retained(self, topic: str, payload: str | bytes) -> bool:
        """A retained QoS 1 message outside the site's tree (Home Assistant discovery): True
        once the broker acknowledged it, False when the link is down or the broker refused it
        (the caller sends it again at the next connection)."""
        client = self._client
        if client is None or self._closing:
            return False
        body = payload.decode() if isinstance(payload, bytes) else payload
        return await self._publish_confirmed(client, topic, body, retain=True)

    # -- events ------------------------------------------------------------------------------

    def emit(self, kind: str, data: Any) -> OutboxMessage:
        """Queue one event in the outbox (on disk when this returns) and wake the sender.

        Raises OutboxFull or StoreError: the event is then not queued (and the alarm is up).
        """
        return self.emit_many(kind, [data])[0]

    def emit_many(self, kind: str, items: Sequence[Any]) -> list[OutboxMessage]:
        """Several events of one kind in one transaction: all queued, or none."""
        ts = self._wall()
        messages = []
        for data in items:
            event_id = str(uuid.uuid4())
            body = payloads.envelope(
                event_id=event_id, ts=ts, kind=kind, site_id=self.site.id, data=data
            )
            messages.append(NewMessage(kind=kind, payload=body, id=event_id))
        stored = self.outbox.append_many(CHANNEL, messages)
        self._schedule_pump()
        return stored

    # -- the network thread ------------------------------------------------------------------

    def _network_main(self) -> None:
        attempt = 0
        gen = 0
        while not self._stop.is_set():
            gen += 1
            established = threading.Event()
            try:
                client = self._new_client(gen, established)
                self._current = client
                self._post(self._on_connecting, gen)
                if self.settings.protocol == "5":
                    client.connect(
                        self.settings.host,
                        self.settings.port,
                        keepalive=self.settings.keepalive_s,
                        clean_start=True,
                    )
                else:
                    client.connect(
                        self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s
                    )
            except (OSError, ValueError) as exc:  # refused, unreachable, TLS, bad CA file
                self._post(self._on_connect_failed, gen, _describe(exc))
            except Exception as exc:  # anything else: report it and retry, never die silently
                self._post(self._on_connect_failed, gen, f"internal error: {exc!r}")
            else:
                if self._stop.is_set():  # close() came while we connected: leave at once
                    client.disconnect()
                # Tell paho this thread is its network thread (what loop_start() does): then a
                # publish() from the event loop only queues the packet and wakes this thread,
                # instead of writing to the socket itself, concurrently with this loop.
                # (paho 2.x internals, as loop_start() sets them: the wake-up socket pair and
                # the thread marker; paho is pinned below 3.)
                if client._sockpairW is None:
                    client._sockpairR, client._sockpairW = mqtt._socketpair_compat()
                client._thread = threading.current_thread()
                try:
                    client.loop_forever()  # returns when this connection ends
                except Exception as exc:  # a callback bug must not end the link for good
                    self._post(self._on_connect_failed, gen, f"internal error: {exc!r}")
                finally:
                    client._thread = None
            self._current = None
            if established.is_set():
                attempt = 0
            if self._stop.is_set():
                break
            self._stop.wait(self._backoff_s(attempt))
            attempt += 1

    def _backoff_s(self, attempt: int) -> float:
        """Exponential, capped, with jitter: many sites never reconnect in step."""
        low, high = self.settings.reconnect_min_s, self.settings.reconnect_max_s
        base = min(high, low * 2 ** min(attempt, 30))
        return self._rng.uniform(base / 2, base)

    def _new_client(self, gen: int, established: threading.Event) -> mqtt.Client:
        v5 = self.settings.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
            userdata=gen,
            reconnect_on_failure=False,
        )
        client.connect_timeout = min(10.0, max(2.0, float(self.settings.keepalive_s)))
        client.max_inflight_messages_set(MAX_IN_FLIGHT)
        client.max_queued_messages_set(0)
        if self._credentials is not None:
            client.username_pw_set(self._credentials.username, self._credentials.password)
        tls = self.settings.tls
        if tls is not None:
            client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(False)
        client.will_set(
            self.topics.status,
            payloads.status_offline(boot_id=self.boot_id, reason="connection_lost"),
            qos=1,
            retain=True,
        )

        def on_connect(
            c: mqtt.Client,
            userdata: Any,
            flags: mqtt.ConnectFlags,
            reason: ReasonCode,
            properties: Properties | None,
        ) -> None:
            if reason.is_failure:
                self._post(self._on_connect_failed, gen, f"refused by the broker: {reason}")
                return
            established.set()
            # Retain As Published: a retained command is seen as one, and refused.
            options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True) if v5 else None
            if options is not None:
                c.subscribe(self.topics.commands, options=options)
            else:
                c.subscribe(self.topics.commands, qos=1)
            receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
            self._post(self._on_connected, gen, c, receive_max)

        def on_disconnect(
            c: mqtt.Client,
            userdata: Any,
            flags: mqtt.DisconnectFlags,
            reason: ReasonCode,
            properties: Properties | None,
        ) -> None:
            self._post(self._on_disconnected, gen, str(reason))

        def on_publish(
            c: mqtt.Client,
            userdata: Any,
            mid: int,
            reason: ReasonCode,
            properties: Properties | None,
        ) -> None:
            self._post(self._on_puback, gen, mid, reason.is_failure, str(reason))

        def on_subscribe(
            c: mqtt.Client,
            userdata: Any,
            mid: int,
            reasons: list[ReasonCode],
            properties: Properties | None,
        ) -> None:
            refused = [str(r) for r in reasons if r.is_failure]
            if refused:  # the broker's ACL does not let this site read its cmd/ topics
                self._post(self._on_subscribe_refused, gen, ", ".join(refused))

        def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            props = getattr(message, "properties", None)
            response_topic = getattr(props, "ResponseTopic", None) if props else None
            correlation = getattr(props, "CorrelationData", None) if props else None
            request = Request(
                topic=message.topic,
                payload=bytes(message.payload),
                retained=bool(message.retain),
                response_topic=response_topic or None,
                correlation_data=correlation,
            )
            self._post(self._on_request, gen, request)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        return client

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """From the paho thread to the event loop; dropped once the loop is gone."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us (shutdown)
            loop.call_soon_threadsafe(fn, *args)

    # -- connection events, on the event loop ------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            self.state = state
            self.since = self._wall()

    def _on_connecting(self, gen: int) -> None:
        if self.state is not LinkState.CONNECTED:
            self._set_state(LinkState.CONNECTING)

    def _on_connect_failed(self, gen: int, error: str) -> None:
        if error != self.last_error:
            log.warning("mqtt_connect_failed", broker=self._broker, error=error)
        self.last_error = error
        self._set_state(LinkState.DISCONNECTED)

    def _on_connected(self, gen: int, client: mqtt.Client, receive_max: int | None) -> None:
        if self._closing:
            return
        self._flush_acks()  # what the last connection had acknowledged is not sent again
        self._client = client
        self._gen = gen
        self._window = max(1, min(MAX_IN_FLIGHT, receive_max or MAX_IN_FLIGHT))
        self._in_flight.clear()
        self._sent_seq = 0  # start again at the oldest unacknowledged event
        self._paused_until = 0.0
        self.connects += 1
        self.last_error = None
        self._set_state(LinkState.CONNECTED)
        log.info(
            "mqtt_connected",
            broker=self._broker,
            queued_events=self.outbox.count(CHANNEL),
            window=self._window,
        )
        online = payloads.status_online(
            boot_id=self.boot_id, version=self._version, since=self._wall()
        )
        client.publish(self.topics.status, online, qos=1, retain=True)
        client.publish(self.topics.meta, self._meta, qos=1, retain=True)
        self._published_states = {}
        self._publish_states(client)
        for listener in self.connect_listeners:
            try:
                listener()
            except Exception:  # a broken listener must not stop the events
                log.exception("mqtt_connect_listener_failed")
        self._schedule_pump()

    def _on_subscribe_refused(self, gen: int, reason: str) -> None:
        self.last_error = f"commands not received: the broker refused {self.topics.commands}"
        log.error("mqtt_subscribe_refused", topic=self.topics.commands, reason=reason)

    def _on_disconnected(self, gen: int, reason: str) -> None:
        if gen != self._gen or self._client is None:
            return
        self._client = None
        self._in_flight.clear()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        self._waiters.clear()
        if not self._closing:
            self.last_error = f"disconnected: {reason}"
            self._set_state(LinkState.DISCONNECTED)
            log.warning(
                "mqtt_disconnected", reason=reason, queued_events=self.outbox.count(CHANNEL)
            )

    def _on_puback(self, gen: int, mid: int, failed: bool, reason: str) -> None:
        if gen != self._gen:
            return  # a late ack of a closed connection: its events go again anyway
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(not failed)
        row = self._in_flight.pop(mid, None)
        if row is None:
            return
        if failed:
            # The broker refused it (MQTT 5 reason code, e.g. not authorized): keep it, wait,
            # then send again from there; never skip it.
            log.error("mqtt_event_refused", id=row.id, kind=row.kind, reason=reason)
            assert self._loop is not None
            self._sent_seq = min(self._sent_seq, row.seq - 1)
            self._paused_until = self._loop.time() + self.settings.reconnect_max_s
        else:
            self._acked.append(row.id)
        self._schedule_pump()

    # -- the event pump ----------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if self._pump_scheduled or self._loop is None:
            return
        self._pump_scheduled = True
        self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        self._flush_soon()
        client = self._client
        if client is None or self._closing or self._loop is None:
            return
        wait_s = self._paused_until - self._loop.time()
        if wait_s > 0:
            self._loop.call_later(wait_s, self._schedule_pump)
            return
        room = self._window - len(self._in_flight)
        if room <= 0:
            return
        for row in self.outbox.peek(CHANNEL, room, after_seq=self._sent_seq):
            info = client.publish(self.topics.event(row.kind), row.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # the connection is going; the next one starts at the oldest again
            self._in_flight[info.mid] = row
            self._sent_seq = row.seq
            self._attempted.append(row.id)

    def _flush_soon(self) -> None:
        if not self._acked and not self._attempted:
            return
        if len(self._acked) >= ACK_BATCH:
            self._flush_acks()
        elif self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(ACK_FLUSH_S, self._flush_acks)

    def _flush_acks(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._acked and not self._attempted:
            return
        try:
            removed = self.outbox.ack(self._acked, attempted=self._attempted)
        except StoreError as exc:
            # Kept in memory and tried again: at worst the events go twice, never lost.
            if not self._ack_error_logged:
                log.error("mqtt_ack_not_stored", error=str(exc), pending=len(self._acked))
                self._ack_error_logged = True
            if self._loop is not None:
                self._flush_handle = self._loop.call_later(ACK_RETRY_S, self._flush_acks)
            return
        self._ack_error_logged = False
        self.events_acked += removed
        self._acked = []
        self._attempted = []

    async def _publish_confirmed(
        self, client: mqtt.Client, topic: str, payload: str, *, retain: bool
    ) -> bool:
        assert self._loop is not None
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters[info.mid] = waiter
        return await waiter

    # -- telemetry and state -----------------------------------------------------------------

    async def _telemetry_loop(self) -> None:
        assert self._loop is not None
        interval_s = self.settings.telemetry_interval_s
        next_at = self._loop.time()
        while not self._closing:
            client = self._client
            if client is not None:
                try:
                    self._publish_telemetry(client)
                except Exception:
                    # A malformed status must not end telemetry for good.
                    log.exception("mqtt_telemetry_failed")
            next_at += interval_s
            delay = next_at - self._loop.time()
            if delay < 0:  # overran: skip the missed slots rather than bunching them
                next_at = self._loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    def _publish_telemetry(self, client: mqtt.Client) -> None:
        status = self._status()
        body = payloads.telemetry(status, self._wall())
        if body is None:
            return
        if client.publish(self.topics.telemetry, body, qos=0).rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.telemetry_sent += 1
        self._publish_states(client, status)

    def _publish_states(self, client: mqtt.Client, status: Mapping[str, Any] | None = None) -> None:
        """Retained ``state/<connector>`` for each connector whose state changed."""
        states = payloads.connector_states(status if status is not None else self._status())
        ts = self._wall().isoformat(timespec="seconds")
        for cid, state in states.items():
            if self._published_states.get(cid) == state:
                continue
            body = payloads.dumps({**state, "since": ts})
            info = client.publish(self.topics.state(cid), body, qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._published_states[cid] = state

    # -- commands ----------------------------------------------------------------------------

    def _on_request(self, gen: int, request: Request) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._answer(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: Request) -> None:
        try:
            outcome = await self._table.handle(request)
        except Exception:
            log.exception("mqtt_command_failed", topic=request.topic)
            return
        self.commands_handled += 1
        self._log_outcome(outcome)
        client = self._client
        if outcome.reply is None or client is None:
            return
        properties = None
        if self.settings.protocol == "5" and outcome.reply.correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = outcome.reply.correlation_data
        client.publish(outcome.reply.topic, outcome.reply.payload, qos=1, properties=properties)

    @staticmethod
    def _log_outcome(outcome: Outcome) -> None:
        if outcome.ok:
            log.info(
                "mqtt_command_done", command=outcome.command, answered=outcome.reply is not None
            )
        else:
            log.warning(
                "mqtt_command_refused",
                command=outcome.command,
                error=outcome.error,
                field=outcome.field,
                answered=outcome.reply is not None,
            )

    # -- what the status shows ---------------------------------------------------------------

    @property
    def _broker(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def status_document(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": self.since.isoformat(timespec="seconds"),
            "broker": self._broker,
            "tls": self.settings.tls is not None,
            "protocol": self.settings.protocol,
            "client_id": self.settings.client_id,
            "last_error": self.last_error,
            "connects": self.connects,
            "events_queued": self.outbox.count(CHANNEL),
            "events_in_flight": len(self._in_flight),
            "window": self._window,
            "events_acked": self.events_acked,
            "oldest_queued_at": self.outbox.oldest_created_at(CHANNEL),
            "outbox_max_events": self.outbox.bound(CHANNEL),
            "telemetry_sent": self.telemetry_sent,
            "commands_handled": self.commands_handled,
        }


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
