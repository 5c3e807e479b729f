"""Adapters layer: one OCPP 1.6J charge point toward the CSMS (the ``ocpp`` library, websockets).

``Station`` is an ``ocpp.v16.ChargePoint`` with an ``@on`` handler for every request a CSMS may
send in the profiles this charge point supports (Core, Smart Charging, Remote Trigger, Local
Auth List Management, Reservation). What it adds to the library:

- **Errors in 1.6's words.** Every frame goes through ``frames.classify`` before any handler:
  an unknown action is NotImplemented, a known unsupported one NotSupported, a malformed
  payload FormationViolation / OccurenceConstraintViolation / TypeConstraintViolation /
  PropertyConstraintViolation. A handler that fails answers InternalError. None of them closes
  the connection.
- **No call() inside a handler.** A handler answers from local state only; what must go to
  the CSMS afterwards (a triggered message, a reset) runs as a task after the answer.
- **Connection.** websockets with the ``ocpp1.6`` subprotocol, HTTP Basic auth (profiles 1, 2),
  TLS >= 1.2 with the server verified against the configured CA (2, 3) and a client
  certificate (3); ws:// is refused from profile 2 on. Reconnects back off exponentially with
  jitter; a refused upgrade (401: wrong identity or AuthorizationKey) is reported once, not
  spun on.
- **Transaction messages through the outbox.** StartTransaction, StopTransaction and
  MeterValues are appended to the persistent outbox (channel ``ocpp``) when they happen,
  online or not, and sent one at a time in order once the CSMS accepted the boot. The
  transactionId of a StopTransaction or MeterValues is looked up when it is sent (from the
  StartTransaction.conf that came before it), never stored as a placeholder. A message the
  CSMS answers with a CALLERROR is retried after TransactionMessageRetryInterval x attempt,
  up to TransactionMessageAttempts, then dropped with an error log and an event (1.6 §3.7
  says so: a CSMS that cannot process a message will not process it the next time either).
  A timeout or a lost connection is no such answer: the message waits for the next
  connection, however long.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import structlog
import yaml
from ocpp.charge_point import camel_to_snake_case, remove_nones, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import CallResult, MessageType, validate_payload
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from controller.adapters.ocpp import frames
from controller.adapters.ocpp.auth import IdTagInfo, LocalAuth
from controller.adapters.ocpp.keys import ConfigurationKeys
from controller.adapters.ocpp.meter import ENERGY, connector_status, iso, sampled_values
from controller.adapters.ocpp.settings import OcppSettings
from controller.adapters.ocpp.site import SitePort
from controller.core import charging_profiles as cp
from controller.core.errors import EvsiteError, PermanentError
from controller.core.sessions import (
    AuthMethod,
    SessionEvent,
    SessionEventKind,
    SessionPhase,
    SessionRecord,
    SessionRefused,
    StopReason,
)
from controller.core.slots import SITE, LimitSlot
from controller.store.db import StoreError
from controller.store.ocpp import OcppStore
from controller.store.outbox import NewMessage, Outbox, OutboxMessage

log = structlog.get_logger("evsite.ocpp")
# The library logs every frame at INFO on its own logger: idTags are personal data, and the
# frames are in the CSMS's log anyway. Only its warnings pass.
_WIRE = logging.getLogger("evsite.ocpp.wire")
_WIRE.setLevel(logging.WARNING)

SUBPROTOCOL = "ocpp1.6"
TRANSACTION_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues")
BOOT_RETRY_S = 10.0  # a Pending/Rejected boot without an interval tries again after this
STABLE_S = 10.0  # a connection that lasted this long resets the reconnect backoff


class CredentialsError(PermanentError):
    """The credentials file is missing, unreadable or malformed (its contents never shown)."""


def load_authorization_key(path: Path) -> str:
    """``authorization_key: ...`` from a YAML file (mode 0600 expected); never quoted."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise CredentialsError(f"{path} is not YAML (authorization_key: ...)") from None
    if not isinstance(document, dict) or set(document) != {"authorization_key"}:
        raise CredentialsError(f"{path} must hold exactly the key authorization_key")
    key = document["authorization_key"]
    if not isinstance(key, str) or not 16 <= len(key) <= 40:
        raise CredentialsError(f"{path}: authorization_key is text of 16 to 40 characters")
    return key


class LinkState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    BOOTING = "booting"  # connected, BootNotification not accepted yet
    ONLINE = "online"  # accepted: transaction messages flow
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorisation:
    """The link's answer for an idTag presented at a connector."""

    accepted: bool
    status: str
    source: str  # csms, local_list, cache, offline_unknown, reservation
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    reservation_id: int
    connector: int
    id_tag: str
    parent_id_tag: str | None
    expiry: datetime


def ssl_context(settings: OcppSettings) -> ssl.SSLContext | None:
    """TLS >= 1.2, the server verified (chain and host name) against the configured CA."""
    if settings.security_profile < 2:
        return None
    tls = settings.tls
    if tls is None:
        raise PermanentError("security profiles 2 and 3 need ocpp.tls.ca_file")
    ctx = ssl.create_default_context(cafile=str(tls.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.security_profile == 3:
        if tls.cert_file is None or tls.key_file is None:
            raise PermanentError("security profile 3 needs ocpp.tls.cert_file and key_file")
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


def endpoint(url: str, identity: str) -> str:
    """The CSMS URL with the identity as its last path segment."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + identity
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


_H = TypeVar("_H", bound=Callable[..., Any])


def handles(action: Action) -> Callable[[_H], _H]:
    """The library's ``@on``, typed."""
    decorator: Callable[[_H], _H] = on(action)
    return decorator


def then(action: Action) -> Callable[[_H], _H]:
    """The library's ``@after`` (runs as a task once the answer is sent), typed."""
    decorator: Callable[[_H], _H] = after(action)
    return decorator


class Station(ChargePoint):  # type: ignore[misc]  # the ocpp library has no type hints
    """One charge point (identity) of the site: its connection, handlers and outbox pump."""

    def __init__(
        self,
        settings: OcppSettings,
        *,
        identity: str,
        connectors: Mapping[int, str],
        keys: ConfigurationKeys,
        auth: LocalAuth,
        store: OcppStore,
        outbox: Outbox,
        site: SitePort,
        channel: str,
        version: str,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(identity, None, response_timeout=settings.call_timeout_s, logger=_WIRE)
        self.settings = settings
        self.identity = identity
        self.connectors = dict(connectors)  # OCPP connector number -> site connector id
        self._number = {cid: n for n, cid in self.connectors.items()}
        self.keys = keys
        self.auth = auth
        self.store = store
        self.outbox = outbox
        self.site = site
        self.channel = channel
        self.version = version
        self.clock = clock
        self._rng = rng or random.Random()
        self._ssl = ssl_context(settings)
        if settings.security_profile >= 2 and not settings.url.startswith("wss://"):
            raise PermanentError(
                f"security profile {settings.security_profile} needs a wss:// URL (no downgrade)"
            )
        self._supported = frozenset(self.route_map)
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._booted = False
        self._heartbeat_s = float(keys.number("HeartbeatInterval"))
        self._sent_status: dict[int, tuple[str, str, str, str]] = {}
        self._txids: dict[str, int] = {}
        self._parents: dict[str, str] = {}  # idTag -> its parentIdTag, as last authorised
        self._unqueued: list[NewMessage] = []
        self._next_sample: dict[str, float] = {}
        self._aligned_slot: int | None = None
        self._retry_at = 0.0
        self._profiles_doc = f"profiles:{identity}"
        self.profiles = self._load_profiles()
        self._reservations_doc = f"reservations:{identity}"
        self.reservations = self._load_reservations()
        self._slot_cache: tuple[tuple[Any, ...], float, tuple[LimitSlot, ...]] | None = None
        outbox.set_bound(channel, settings.outbox_max_messages)
        self.state = LinkState.IDLE
        self.since = datetime.now(UTC)
        self.last_error: str | None = None
        self.boot_status: str | None = None
        self.connects = 0
        self.delivered = 0
        self.dropped = 0
        keys.listeners.append(self._on_key_changed)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:  # the library's start() is its receive loop: ours is _run
        self._task = asyncio.create_task(self._run(), name=f"ocpp-{self.identity}")
        log.info(
            "ocpp_starting",
            identity=self.identity,
            url=self._shown_url,
            security_profile=self.settings.security_profile,
            connectors=self.connectors,
            queued=self.outbox.count(self.channel),
        )

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_state(LinkState.STOPPED)
        log.info("ocpp_stopped", identity=self.identity, queued=self.outbox.count(self.channel))

    @property
    def online(self) -> bool:
        return self.state is LinkState.ONLINE

    @property
    def _shown_url(self) -> str:
        return endpoint(self.settings.url, self.identity)

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            self.state = state
            self.since = datetime.now(UTC)

    # -- the connection ----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.settings.security_profile not in (1, 2):
            return {}
        key = self.keys.secret("AuthorizationKey")
        if key is None:
            return {}
        token = base64.b64encode(f"{self.identity}:{key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _backoff_s(self, attempt: int) -> float:
        low, high = self.settings.reconnect_min_s, self.settings.reconnect_max_s
        base = min(high, low * 2 ** min(attempt, 30))
        return self._rng.uniform(base / 2, base)

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            self._set_state(LinkState.CONNECTING)
            started = self.clock()
            error: str | None = None
            try:
                ping = self.keys.number("WebSocketPingInterval")
                ws = await connect(
                    self._shown_url,
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    additional_headers=self._headers(),
                    ssl=self._ssl,
                    open_timeout=max(5.0, self.settings.call_timeout_s),
                    ping_interval=ping or None,
                    ping_timeout=ping or None,
                    max_size=2**22,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                error = f"the CSMS refused the connection: HTTP {status}"
                if status == 401:
                    error += " (wrong identity or AuthorizationKey)"
            except (OSError, TimeoutError, InvalidHandshake, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # never let the link die silently
                error = f"internal error: {exc!r}"
                log.exception("ocpp_connect_crashed", identity=self.identity)
            else:
                if ws.subprotocol != SUBPROTOCOL:
                    error = f"the CSMS did not agree to {SUBPROTOCOL}"
                    await ws.close()
                else:
                    await self._serve(ws)
            if self._closing:
                break
            if error is not None:
                if error != self.last_error:
                    log.warning("ocpp_connect_failed", identity=self.identity, error=error)
                self.last_error = error
            if self.clock() - started >= STABLE_S:
                attempt = 0
            self._set_state(LinkState.DISCONNECTED)
            delay = self._backoff_s(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sleep_until_closing(), delay)

    async def _sleep_until_closing(self) -> None:
        await self._closed.wait()

    async def _serve(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._connection = ws
        self._response_queue: asyncio.Queue[Any] = asyncio.Queue()
        self.connects += 1
        self.last_error = None
        self._sent_status = {}
        self._set_state(LinkState.BOOTING)
        log.info(
            "ocpp_connected",
            identity=self.identity,
            url=self._shown_url,
            queued=self.outbox.count(self.channel),
        )
        receiver = asyncio.create_task(self._receive(ws), name=f"ocpp-recv-{self.identity}")
        session = asyncio.create_task(self._session(), name=f"ocpp-session-{self.identity}")
        try:
            done, _ = await asyncio.wait({receiver, session}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None or isinstance(exc, ConnectionClosed):
                    continue
                if isinstance(exc, TimeoutError):
                    # A call without an answer: the connection is taken for dead and renewed.
                    self.last_error = (
                        f"the CSMS did not answer within {self.settings.call_timeout_s:g} s"
                    )
                    log.warning("ocpp_no_answer", identity=self.identity, error=self.last_error)
                elif isinstance(exc, OCPPError):
                    self.last_error = f"the CSMS refused BootNotification: {exc.code}"
                    log.warning("ocpp_boot_refused", identity=self.identity, code=exc.code)
                else:
                    log.error("ocpp_session_failed", identity=self.identity, error=repr(exc))
                    self.last_error = f"internal error: {exc!r}"
        finally:
            for task in (receiver, session):
                task.cancel()
            for task in (receiver, session):
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
            self._ws = None
            if not self._closing:
                reason = ws.close_reason or (ws.close_code and f"code {ws.close_code}") or ""
                self.last_error = self.last_error or f"disconnected {reason}".strip()
                log.warning(
                    "ocpp_disconnected",
                    identity=self.identity,
                    code=ws.close_code,
                    queued=self.outbox.count(self.channel),
                )

    async def _receive(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                await self.route_message(text)

    async def _session(self) -> None:
        if not self._booted:
            await self._boot()
        self._set_state(LinkState.ONLINE)
        await asyncio.gather(self._heartbeats(), self._statuses(), self._pump())

    # -- inbound frames ----------------------------------------------------------------------

    async def route_message(self, raw_msg: str | bytes) -> None:
        inbound = frames.classify(raw_msg, self._supported)
        if isinstance(inbound, frames.Answer):
            await super().route_message(inbound.text)
        elif isinstance(inbound, frames.Unreadable):
            log.warning("ocpp_frame_unreadable", identity=self.identity, reason=inbound.reason)
        elif isinstance(inbound, frames.Refusal):
            log.warning(
                "ocpp_request_refused",
                identity=self.identity,
                code=inbound.code,
                detail=inbound.description,
            )
            await self._send(inbound.frame())
        else:
            await self._dispatch(inbound)

    async def _dispatch(self, request: frames.InboundCall) -> None:
        handlers = self.route_map[request.action]
        try:
            result = handlers["_on_action"](request.payload)
            if asyncio.iscoroutine(result):
                result = await result
            body = remove_nones(result)
            await validate_payload(
                CallResult(unique_id=request.unique_id, payload=body, action=request.action),
                "1.6",
            )
        except OCPPError as exc:
            # The request was valid (checked before): our answer is what failed, e.g. its own
            # schema. That is an InternalError in 1.6's words, whatever the library called it.
            log.error("ocpp_handler_failed", action=request.action, code=exc.code, error=str(exc))
            await self._send(
                frames.call_error(request.unique_id, "InternalError", "the answer failed")
            )
            return
        except Exception as exc:
            log.exception("ocpp_handler_crashed", action=request.action)
            await self._send(
                frames.call_error(request.unique_id, "InternalError", type(exc).__name__)
            )
            return
        await self._send(json.dumps([MessageType.CallResult, request.unique_id, body]))
        after = handlers.get("_after_action")
        if after is not None:
            self._spawn(after(request.payload))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ocpp_task_failed", identity=self.identity, error=repr(task.exception()))

    async def _call(self, payload: Any) -> Any:
        """A call to the CSMS; CALLERROR raises OCPPError, no answer TimeoutError."""
        return await self.call(payload, suppress=False)

    # -- boot, heartbeat, status -------------------------------------------------------------

    async def _boot(self) -> None:
        self._set_state(LinkState.BOOTING)
        while True:
            conf = await self._call(self._boot_payload())
            self.boot_status = str(conf.status)
            interval = int(conf.interval)
            if self.boot_status == "Accepted":
                if interval > 0:
                    self._heartbeat_s = float(interval)
                self._booted = True
                log.info("ocpp_boot_accepted", identity=self.identity, heartbeat_s=interval)
                return
            log.warning("ocpp_boot_not_accepted", identity=self.identity, status=self.boot_status)
            await asyncio.sleep(interval if interval > 0 else BOOT_RETRY_S)

    def _boot_payload(self) -> call.BootNotification:
        s = self.settings
        return call.BootNotification(
            charge_point_vendor=s.vendor,
            charge_point_model=s.model,
            charge_point_serial_number=s.serial or self.identity[:25],
            firmware_version=(s.firmware or self.version)[:50],
        )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._call(call.Heartbeat())
            except OCPPError as exc:  # answered, if wrongly: the connection is alive
                log.warning("ocpp_heartbeat_refused", identity=self.identity, code=exc.code)

    def statuses(self) -> dict[int, tuple[str, str, str, str]]:
        """The StatusNotification of every connector now (0: the charge point)."""
        records = self.site.records()
        out: dict[int, tuple[str, str, str, str]] = {}
        fault = self.site.fault(None)
        out[0] = (
            (
                "Faulted" if fault.faulted else "Available",
                fault.error_code,
                fault.info,
                fault.vendor_error_code,
            )
            if fault is not None
            else ("Available", "NoError", "", "")
        )
        if fault is None and not any(self.site.available(c) for c in self.connectors.values()):
            out[0] = ("Unavailable", "NoError", "", "")  # the whole charge point is out
        reserved = {r.connector for r in self.reservations.values()}
        for n, cid in self.connectors.items():
            out[n] = connector_status(
                rec=records.get(cid),
                available=self.site.available(cid),
                vehicle_present=self.site.vehicle_present(cid),
                reading=self.site.reading(cid),
                offered_a=self.site.offered_a(cid),
                reserved=n in reserved,
                fault=self.site.fault(cid),
            )
        return out

    async def _statuses(self) -> None:
        while True:
            for n, status in self.statuses().items():
                if self._sent_status.get(n) != status:
                    await self._send_status(n, status)
            await asyncio.sleep(0.5)

    async def _send_status(self, n: int, status: tuple[str, str, str, str]) -> None:
        state, error, info, vendor = status
        # Not a transaction message: sent when it happens, not queued (1.6 §3.7 lets the
        # others go ahead); after a reconnect every connector's status goes again.
        with contextlib.suppress(OCPPError):  # a CSMS refusing a status gets it once only
            await self._call(
                call.StatusNotification(
                    connector_id=n,
                    error_code=error,
                    status=state,
                    info=info[:50] or None,
                    vendor_error_code=vendor[:50] or None,
                    timestamp=iso(datetime.now(UTC)),
                )
            )
        self._sent_status[n] = status

    # -- transaction messages: into the outbox -----------------------------------------------

    def on_session_event(self, event: SessionEvent) -> None:
        """A desk listener: a transaction's start and end go to the outbox, in order."""
        rec = event.record
        n = self._number.get(rec.connector)
        if n is None:
            return
        if event.kind is SessionEventKind.STARTED:
            self._next_sample[rec.connector] = self.clock() + self.keys.number(
                "MeterValueSampleInterval"
            )
            self._queue("StartTransaction", rec, self._start_payload(n, rec))
        elif event.kind is SessionEventKind.ENDED:
            self._next_sample.pop(rec.connector, None)
            self._queue("StopTransaction", rec, self._stop_payload(rec))
            self._end_profiles(n)
        elif event.kind is SessionEventKind.ABANDONED:
            self._end_profiles(n)

    def _start_payload(self, n: int, rec: SessionRecord) -> dict[str, Any]:
        id_tag = rec.id_tag or self.settings.anonymous_id_tag
        payload: dict[str, Any] = {
            "connectorId": n,
            "idTag": id_tag,
            "meterStart": round(rec.meter_start_wh or 0.0),
            "timestamp": iso(rec.started_at or self.site.now()),
        }
        for rid, r in list(self.reservations.items()):
            if r.connector == n and self._may_use(r, id_tag, None):
                payload["reservationId"] = rid
                self._drop_reservation(rid, "used")
        return payload

    def _stop_payload(self, rec: SessionRecord) -> dict[str, Any]:
        start_wh = rec.meter_start_wh or 0.0
        stop_wh = rec.meter_stop_wh if rec.meter_stop_wh is not None else start_wh
        ended = rec.ended_at or self.site.now()
        payload: dict[str, Any] = {
            "meterStop": round(stop_wh),
            "timestamp": iso(ended),
            "reason": (rec.stop_reason or StopReason.OTHER).value,
        }
        if rec.id_tag:
            payload["idTag"] = rec.id_tag
        if ENERGY in self.keys.items("StopTxnSampledData"):
            payload["transactionData"] = [
                {
                    "timestamp": iso(rec.started_at or ended),
                    "sampledValue": sampled_values(
                        [ENERGY],
                        reading=None,
                        offered_a=None,
                        phases=0,
                        context="Transaction.Begin",
                        energy_wh=start_wh,
                    ),
                },
                {
                    "timestamp": iso(ended),
                    "sampledValue": sampled_values(
                        [ENERGY],
                        reading=None,
                        offered_a=None,
                        phases=0,
                        context="Transaction.End",
                        energy_wh=stop_wh,
                    ),
                },
            ]
        return payload

    def _queue(self, action: str, rec: SessionRecord, payload: dict[str, Any]) -> None:
        body = json.dumps({"session": rec.id, "payload": payload}, separators=(",", ":"))
        message = NewMessage(kind=action, payload=body, id=str(uuid.uuid4()))
        self._unqueued.append(message)
        self._flush_unqueued()

    def _flush_unqueued(self) -> None:
        """Append what waits in memory (the disk refused it before): in order, all or none."""
        if not self._unqueued:
            return
        try:
            self.outbox.append_many(self.channel, self._unqueued)
        except (EvsiteError, ValueError) as exc:
            log.error(
                "ocpp_message_not_queued",
                identity=self.identity,
                waiting=[m.kind for m in self._unqueued],
                error=str(exc),
            )
            return
        self._unqueued = []
        self._wake.set()

    # -- every control tick ------------------------------------------------------------------

    def on_tick(self, now_s: float, wall: datetime) -> None:
        self._flush_unqueued()
        records = self.site.records()
        interval = self.keys.number("MeterValueSampleInterval")
        for n, cid in self.connectors.items():
            rec = records.get(cid)
            if rec is None or rec.phase is not SessionPhase.ACTIVE:
                continue
            due = self._next_sample.get(cid)
            if due is None:  # a transaction taken over from the last run
                self._next_sample[cid] = due = now_s + interval
            if interval > 0 and now_s >= due:
                self._next_sample[cid] = now_s + interval
                self._queue_meter_values(n, rec, "Sample.Periodic", "MeterValuesSampledData", wall)
        aligned = self.keys.number("ClockAlignedDataInterval")
        if aligned > 0:
            slot = int(wall.timestamp()) // aligned
            if self._aligned_slot is not None and slot != self._aligned_slot:
                at = datetime.fromtimestamp(slot * aligned, UTC)
                for n, cid in self.connectors.items():
                    rec = records.get(cid)
                    if rec is not None and rec.phase is SessionPhase.ACTIVE:
                        self._queue_meter_values(
                            n, rec, "Sample.Clock", "MeterValuesAlignedData", at
                        )
            self._aligned_slot = slot
        for rid, r in list(self.reservations.items()):
            if r.expiry <= wall:
                self._drop_reservation(rid, "expired")

    def _meter_value(self, n: int, context: str, key: str, at: datetime) -> dict[str, Any] | None:
        cid = self.connectors[n]
        values = sampled_values(
            self.keys.items(key),
            reading=self.site.reading(cid),
            offered_a=self.site.offered_a(cid),
            phases=self.site.number_phases(cid),
            context=context,
        )
        if not values:
            return None
        return {"timestamp": iso(at), "sampledValue": values}

    def _queue_meter_values(
        self, n: int, rec: SessionRecord, context: str, key: str, at: datetime
    ) -> None:
        value = self._meter_value(n, context, key, at)
        if value is not None:
            self._queue("MeterValues", rec, {"connectorId": n, "meterValue": [value]})

    # -- transaction messages: out of the outbox ---------------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait_s = self._retry_at - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            rows = self.outbox.peek(self.channel, 1)
            if not rows:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._deliver(rows[0])

    def transaction_id(self, session_id: str) -> int | None:
        known = self._txids.get(session_id)
        if known is not None:
            return known
        rec = self.site.record_by_id(session_id)
        return None if rec is None else rec.ocpp_transaction_id

    async def _deliver(self, row: OutboxMessage) -> None:
        doc = json.loads(row.payload)
        session_id: str = doc["session"]
        payload: dict[str, Any] = dict(doc["payload"])
        if row.kind == "StartTransaction" and self.transaction_id(session_id) is not None:
            # Its answer was stored, but the service died before the row left the outbox:
            # the CSMS has this transaction already; a second one would stay open forever.
            log.info("ocpp_start_already_confirmed", identity=self.identity, session=session_id)
            self._ack([row.id])
            return
        if row.kind != "StartTransaction":
            txid = self.transaction_id(session_id)
            if txid is None:
                # Only if its StartTransaction was dropped: the CSMS has no such transaction.
                self._drop(row, "its StartTransaction was never accepted: no transactionId")
                return
            payload["transactionId"] = txid
        message = _payload_class(row.kind)(**_snake(payload))
        try:
            conf = await self._call(message)
        except OCPPError as exc:
            attempts = row.attempts + 1
            limit = self.keys.number("TransactionMessageAttempts")
            if attempts >= limit:
                self._drop(row, f"CALLERROR {exc.code} after {attempts} attempts: {exc}")
                return
            self._ack([], attempted=[row.id])
            interval = self.keys.number("TransactionMessageRetryInterval")
            self._retry_at = asyncio.get_running_loop().time() + interval * attempts
            log.warning(
                "ocpp_message_retry",
                identity=self.identity,
                action=row.kind,
                attempt=attempts,
                of=limit,
                code=exc.code,
                retry_in_s=interval * attempts,
            )
            return
        self._retry_at = 0.0
        if row.kind == "StartTransaction":
            self._started(session_id, payload, conf)
        elif row.kind == "StopTransaction":
            if conf.id_tag_info and payload.get("idTag"):
                self._remember(str(payload["idTag"]), conf.id_tag_info)
            self._txids.pop(session_id, None)  # nothing of it follows a Stop
        self._ack([row.id])
        self.delivered += 1

    def _started(self, session_id: str, payload: Mapping[str, Any], conf: Any) -> None:
        txid = int(conf.transaction_id)
        self._txids[session_id] = txid
        try:
            self.site.attach(session_id, txid)
        except EvsiteError as exc:  # kept in memory: the Stop still gets it in this run
            log.error("ocpp_transaction_id_not_stored", session=session_id, error=str(exc))
        info = IdTagInfo.from_ocpp(_camel(conf.id_tag_info))
        id_tag = str(payload["idTag"])
        rec = self.site.record_by_id(session_id)
        if rec is not None and rec.method in (AuthMethod.ID_TAG, AuthMethod.REMOTE):
            self._remember(id_tag, conf.id_tag_info)
        log.info(
            "ocpp_transaction_started",
            identity=self.identity,
            session=session_id,
            transaction_id=txid,
            id_tag_status=info.status,
        )
        self._slot_cache = None
        if (
            info.status != "Accepted"
            and rec is not None
            and rec.method in (AuthMethod.ID_TAG, AuthMethod.REMOTE)
            and rec.phase is SessionPhase.ACTIVE
            and self.keys.flag("StopTransactionOnInvalidId")
        ):
            try:
                self.site.stop(rec.connector, reason=StopReason.DEAUTHORIZED)
            except SessionRefused as exc:
                log.warning("ocpp_deauthorize_failed", session=session_id, error=str(exc))
            else:
                log.warning(
                    "ocpp_transaction_deauthorized",
                    session=session_id,
                    transaction_id=txid,
                    status=info.status,
                )

    def _remember(self, id_tag: str, id_tag_info: Any) -> None:
        if (
            not self.keys.flag("AuthorizationCacheEnabled")
            or id_tag == self.settings.anonymous_id_tag
        ):
            return
        try:
            self.auth.remember(id_tag, IdTagInfo.from_ocpp(_camel(id_tag_info)))
        except StoreError as exc:
            log.error("ocpp_cache_not_stored", error=str(exc))

    def _drop(self, row: OutboxMessage, why: str) -> None:
        log.error(
            "ocpp_message_dropped", identity=self.identity, action=row.kind, id=row.id, reason=why
        )
        self.site.note_event(
            "ocpp_message_dropped",
            self.identity,
            {"action": row.kind, "id": row.id, "reason": why, "payload": row.payload},
        )
        self._ack([row.id])
        self.dropped += 1
        self._retry_at = 0.0

    def _ack(self, ids: list[str], *, attempted: list[str] | None = None) -> None:
        try:
            self.outbox.ack(ids, attempted=attempted or [])
        except StoreError as exc:
            # Not removed: it goes again (a duplicate the CSMS may see), never lost.
            log.error("ocpp_ack_not_stored", error=str(exc))

    # -- authorisation -----------------------------------------------------------------------

    def _may_use(self, r: Reservation, id_tag: str | None, parent: str | None) -> bool:
        """1.6 §5.13: the reserved idTag, or any idTag of the reservation's parentIdTag."""
        if id_tag is None:
            return False
        if id_tag == r.id_tag:
            return True
        parent = parent or self._parents.get(id_tag)
        return r.parent_id_tag is not None and parent == r.parent_id_tag

    def reserved_for_other(self, n: int, id_tag: str | None, parent: str | None = None) -> bool:
        return any(
            r.connector == n and not self._may_use(r, id_tag, parent)
            for r in self.reservations.values()
        )

    def hold(self, connector: str, id_tag: str | None) -> str | None:
        """A SessionDesk hold: a reserved connector starts only for its idTag (not by free
        vend, a card or another tag)."""
        n = self._number.get(connector)
        if n is None:
            return None
        for r in self.reservations.values():
            if r.connector == n and not self._may_use(r, id_tag, None):
                return f"connector {connector} is reserved (reservation {r.reservation_id})"
        return None

    async def authorise(self, connector: str, id_tag: str) -> Authorisation | None:
        """An idTag presented at a connector: the CSMS when online (the cache and the local
        list first with LocalPreAuthorize), else the local list and cache per
        LocalAuthorizeOffline, else AllowOfflineTxForUnknownId. A connector reserved for
        another idTag (or another parentIdTag) refuses it."""
        n = self._number.get(connector)
        if n is None:
            return None
        answer = await self._authorise(id_tag)
        if answer.parent_id_tag is not None:
            self._parents[id_tag] = answer.parent_id_tag
            while len(self._parents) > 10_000:
                del self._parents[next(iter(self._parents))]
        if answer.accepted and self.reserved_for_other(n, id_tag, answer.parent_id_tag):
            return Authorisation(accepted=False, status="Reserved", source="reservation")
        return answer

    async def _authorise(self, id_tag: str) -> Authorisation:
        now = self.site.now()
        found = self.auth.lookup(
            id_tag,
            now,
            use_list=self.keys.flag("LocalAuthListEnabled"),
            use_cache=self.keys.flag("AuthorizationCacheEnabled"),
        )
        if self.online:
            if (
                found is not None
                and found.info.status == "Accepted"
                and self.keys.flag("LocalPreAuthorize")
            ):
                return _decision(found.info, found.source)
            try:
                conf = await self._call(call.Authorize(id_tag=id_tag))
            except (OCPPError, TimeoutError, ConnectionClosed) as exc:
                log.warning("ocpp_authorize_failed", identity=self.identity, error=repr(exc))
            else:
                self._remember(id_tag, conf.id_tag_info)
                return _decision(IdTagInfo.from_ocpp(_camel(conf.id_tag_info)), "csms")
        if found is not None and self.keys.flag("LocalAuthorizeOffline"):
            return _decision(found.info, found.source)
        if found is None and self.keys.flag("AllowOfflineTxForUnknownId"):
            return Authorisation(accepted=True, status="Accepted", source="offline_unknown")
        return Authorisation(accepted=False, status="Invalid", source="offline")

    # -- smart charging ----------------------------------------------------------------------

    def _load_profiles(self) -> cp.ProfileSet:
        profiles = []
        for record in self.store.load(self._profiles_doc) or []:
            try:
                profiles.append(cp.from_record(record))
            except (cp.ProfileError, KeyError, ValueError, TypeError) as exc:
                # A damaged record must not cost the others (nor the start).
                log.error("ocpp_profile_unreadable", identity=self.identity, error=str(exc))
        return cp.ProfileSet(profiles=tuple(profiles))

    def _save_profiles(self, profiles: cp.ProfileSet) -> None:
        self.store.save(self._profiles_doc, [cp.to_record(p) for p in profiles])
        self.profiles = profiles
        self._slot_cache = None

    def _rules(self) -> cp.ProfileRules:
        return cp.ProfileRules(
            connector_count=len(self.connectors),
            max_stack_level=self.keys.number("ChargeProfileMaxStackLevel"),
            max_profiles=self.keys.number("MaxChargingProfilesInstalled"),
            max_periods=self.keys.number("ChargingScheduleMaxPeriods"),
        )

    def transactions(self) -> dict[int, cp.ActiveTransaction]:
        out = {}
        for cid, rec in self.site.records().items():
            n = self._number.get(cid)
            if n is not None and rec.phase is SessionPhase.ACTIVE:
                out[n] = cp.ActiveTransaction(
                    transaction_id=self._txids.get(rec.id, rec.ocpp_transaction_id),
                    started_at=rec.started_at or self.site.now(),
                )
        return out

    def _end_profiles(self, n: int) -> None:
        remaining = cp.end_transaction(self.profiles, n)
        if len(remaining) != len(self.profiles):
            try:
                self._save_profiles(remaining)
            except StoreError as exc:
                log.error("ocpp_profiles_not_stored", error=str(exc))
                self.profiles = remaining

    def slots(self, wall: datetime) -> tuple[LimitSlot, ...]:
        """The installed profiles in force now, as limit slots (source ocpp) for the engine."""
        if not self.profiles:
            return ()
        txs = self.transactions()
        key = (id(self.profiles), tuple(sorted((n, t.transaction_id) for n, t in txs.items())))
        now_s = wall.timestamp()
        cached = self._slot_cache
        if cached is not None and cached[0] == key and now_s < cached[1]:
            return cached[2]
        slots = cp.profile_slots(
            self.profiles, wall, transactions=txs, connector_ids=self.connectors
        )
        if self.settings.topology == "per_evse":
            (cid,) = self.connectors.values()
            slots = tuple(
                replace(
                    s,
                    id=f"{self.identity}:{s.id}",
                    scope=f"connector:{cid}" if s.scope == SITE else s.scope,
                )
                for s in slots
            )
        change = cp.next_change(
            self.profiles, wall, transactions=txs, connector_ids=list(self.connectors)
        )
        until = min(
            [change.timestamp()] if change is not None else [now_s + 3600.0],
        )
        self._slot_cache = (key, until, slots)
        return slots

    # -- handlers: Core ----------------------------------------------------------------------

    @handles(Action.get_configuration)
    def on_get_configuration(self, payload: dict[str, Any]) -> dict[str, Any]:
        names = payload.get("key") or []
        limit = self.keys.number("GetConfigurationMaxKeys")
        if len(names) > limit:
            names = names[:limit]
        return self.keys.configuration(names)

    @handles(Action.change_configuration)
    def on_change_configuration(self, payload: dict[str, Any]) -> dict[str, Any]:
        key = str(payload["key"])
        result = self.keys.change(key, str(payload["value"]))
        # The value is never logged: it may be AuthorizationKey.
        log.info("ocpp_configuration_change", key=key, status=result.status, reason=result.reason)
        return {"status": result.status}

    def _on_key_changed(self, name: str, value: str) -> None:
        if name == "HeartbeatInterval":
            self._heartbeat_s = float(value)
        elif name == "MeterValueSampleInterval":
            self._next_sample = {c: self.clock() + int(value) for c in self._next_sample}

    @handles(Action.change_availability)
    def on_change_availability(self, payload: dict[str, Any]) -> dict[str, Any]:
        n = int(payload["connectorId"])
        available = payload["type"] == "Operative"
        if n == 0:
            targets = list(self.connectors.values())
        elif n in self.connectors:
            targets = [self.connectors[n]]
        else:
            return {"status": "Rejected"}
        results = [self.site.set_availability(cid, available) for cid in targets]
        status = "Scheduled" if "scheduled" in results else "Accepted"
        log.info("ocpp_availability", connector=n, available=available, status=status)
        return {"status": status}

    @handles(Action.clear_cache)
    def on_clear_cache(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            self.auth.clear_cache()
        except StoreError as exc:
            log.error("ocpp_cache_not_cleared", error=str(exc))
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    @handles(Action.data_transfer)
    def on_data_transfer(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "UnknownVendorId"}

    @handles(Action.remote_start_transaction)
    def on_remote_start_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        id_tag = str(payload["idTag"])
        n = payload.get("connectorId")
        if n is None:
            n = self._free_connector(id_tag)
        if n is None or n not in self.connectors or self.reserved_for_other(n, id_tag):
            log.warning("ocpp_remote_start_rejected", connector=n, reason="no such free connector")
            return {"status": "Rejected"}
        before = self.profiles
        profile_doc = payload.get("chargingProfile")
        if profile_doc is not None:
            try:
                profile = cp.profile_from_ocpp(profile_doc, connector_id=n)
            except cp.ProfileError as exc:
                log.warning("ocpp_remote_start_rejected", connector=n, reason=str(exc))
                return {"status": "Rejected"}
            new, verdict = cp.install(
                self.profiles,
                profile,
                at=self.site.now(),
                transactions=self.transactions(),
                rules=self._rules(),
                remote_start=True,
            )
            if not verdict.accepted:
                log.warning("ocpp_remote_start_rejected", connector=n, reason=verdict.reason)
                return {"status": "Rejected"}
            try:
                self._save_profiles(new)
            except StoreError:
                return {"status": "Rejected"}
        try:
            rec = self.site.start(self.connectors[n], id_tag=id_tag)
        except SessionRefused as exc:
            if self.profiles is not before:
                with contextlib.suppress(StoreError):
                    self._save_profiles(before)
            log.warning("ocpp_remote_start_rejected", connector=n, reason=str(exc))
            return {"status": "Rejected"}
        log.info("ocpp_remote_start", connector=n, session=rec.id, phase=rec.phase.value)
        return {"status": "Accepted"}

    def _free_connector(self, id_tag: str) -> int | None:
        records = self.site.records()
        waiting = [
            n
            for n, cid in self.connectors.items()
            if (r := records.get(cid)) is not None and r.phase is SessionPhase.PENDING
        ]
        if waiting:
            return waiting[0]
        for n, cid in self.connectors.items():
            if (
                cid not in records
                and self.site.available(cid)
                and not self.reserved_for_other(n, id_tag)
            ):
                return n
        return None

    @handles(Action.remote_stop_transaction)
    def on_remote_stop_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        txid = int(payload["transactionId"])
        for cid, rec in self.site.records().items():
            if (
                cid in self._number
                and rec.phase is SessionPhase.ACTIVE
                and self._txids.get(rec.id, rec.ocpp_transaction_id) == txid
            ):
                try:
                    self.site.stop(cid, reason=StopReason.REMOTE)
                except SessionRefused:
                    break
                log.info("ocpp_remote_stop", transaction_id=txid, connector=cid)
                return {"status": "Accepted"}
        log.warning("ocpp_remote_stop_rejected", transaction_id=txid)
        return {"status": "Rejected"}

    @handles(Action.reset)
    def on_reset(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    @then(Action.reset)
    async def after_reset(self, payload: dict[str, Any]) -> None:
        hard = payload["type"] == "Hard"
        reason = StopReason.HARD_RESET if hard else StopReason.SOFT_RESET
        for cid, rec in self.site.records().items():
            if cid in self._number and rec.phase is SessionPhase.ACTIVE:
                with contextlib.suppress(SessionRefused):
                    self.site.stop(cid, reason=reason)
        log.warning("ocpp_reset", identity=self.identity, hard=hard)
        await asyncio.sleep(1.0)  # let the StopTransactions reach the outbox pump
        self.site.reset(hard)

    @handles(Action.unlock_connector)
    def on_unlock_connector(self, payload: dict[str, Any]) -> dict[str, Any]:
        # The EVSEs are driven over Modbus, which offers no unlock: say so.
        return {"status": "NotSupported"}

    # -- handlers: Smart Charging ------------------------------------------------------------

    @handles(Action.set_charging_profile)
    def on_set_charging_profile(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            profile = cp.from_ocpp(payload)
        except cp.ProfileError as exc:
            log.warning("ocpp_profile_rejected", reason=str(exc))
            return {"status": "Rejected"}
        new, verdict = cp.install(
            self.profiles,
            profile,
            at=self.site.now(),
            transactions=self.transactions(),
            rules=self._rules(),
        )
        if not verdict.accepted:
            log.warning(
                "ocpp_profile_rejected", profile=profile.charging_profile_id, reason=verdict.reason
            )
            return {"status": "Rejected"}
        try:
            self._save_profiles(new)
        except StoreError as exc:
            log.error("ocpp_profiles_not_stored", error=str(exc))
            return {"status": "Rejected"}
        log.info(
            "ocpp_profile_installed",
            profile=profile.charging_profile_id,
            purpose=profile.purpose.value,
            connector=profile.connector_id,
            stack_level=profile.stack_level,
            note=verdict.reason,
        )
        return {"status": "Accepted"}

    @handles(Action.clear_charging_profile)
    def on_clear_charging_profile(self, payload: dict[str, Any]) -> dict[str, Any]:
        new, status = cp.clear_from_ocpp(self.profiles, payload)
        if status is cp.ClearStatus.ACCEPTED:
            try:
                self._save_profiles(new)
            except StoreError as exc:
                log.error("ocpp_profiles_not_stored", error=str(exc))
                return {"status": "Unknown"}
            log.info("ocpp_profiles_cleared", criteria=payload, left=len(new))
        return {"status": status.value}

    @handles(Action.get_composite_schedule)
    def on_get_composite_schedule(self, payload: dict[str, Any]) -> dict[str, Any]:
        n = int(payload["connectorId"])
        if n != 0 and n not in self.connectors:
            return {"status": "Rejected"}
        cid = self.connectors.get(n)
        if self.settings.topology == "per_evse":
            cid = next(iter(self.connectors.values()))
        unit = cp.RateUnit(payload.get("chargingRateUnit", "A"))
        voltage = self.site.nominal_voltage_v()
        caps = cp.caps_from_slots(
            self.site.other_slots(cid),
            scopes={s.scope for s in self.site.other_slots(cid)},
            nominal_voltage_v=voltage,
            number_phases=self.site.number_phases(cid),
        )
        schedule = cp.composite_schedule(
            self.profiles,
            n,
            self.site.now(),
            int(payload["duration"]),
            transactions=self.transactions(),
            nominal_voltage_v=voltage,
            ceiling_a=self.site.max_current_a(cid),
            rate_unit=unit,
            caps=caps,
            default_phases=self.site.number_phases(cid),
        )
        return schedule.to_ocpp()

    # -- handlers: Remote Trigger ------------------------------------------------------------

    @handles(Action.trigger_message)
    def on_trigger_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        what = payload["requestedMessage"]
        n = payload.get("connectorId")
        if n is not None and n not in self.connectors and not (n == 0 and what != "MeterValues"):
            return {"status": "Rejected"}
        if what in ("DiagnosticsStatusNotification", "FirmwareStatusNotification"):
            return {"status": "NotImplemented"}  # no Firmware Management profile
        return {"status": "Accepted"}

    @then(Action.trigger_message)
    async def after_trigger_message(self, payload: dict[str, Any]) -> None:
        what = payload["requestedMessage"]
        n = payload.get("connectorId")
        if what == "BootNotification":
            conf = await self._call(self._boot_payload())
            self.boot_status = str(conf.status)
        elif what == "Heartbeat":
            await self._call(call.Heartbeat())
        elif what == "StatusNotification":
            statuses = self.statuses()
            for number in [n] if n is not None else sorted(statuses):
                await self._send_status(number, statuses[number])
        elif what == "MeterValues":
            records = self.site.records()
            for number in [n] if n is not None else sorted(self.connectors):
                value = self._meter_value(
                    number, "Trigger", "MeterValuesSampledData", datetime.now(UTC)
                )
                if value is None:
                    continue
                rec = records.get(self.connectors[number])
                txid = self.transaction_id(rec.id) if rec is not None else None
                await self._call(
                    call.MeterValues(connector_id=number, meter_value=[value], transaction_id=txid)
                )

    # -- handlers: Local Auth List Management ------------------------------------------------

    @handles(Action.send_local_list)
    def on_send_local_list(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.keys.flag("LocalAuthListEnabled"):
            return {"status": "NotSupported"}
        entries = payload.get("localAuthorizationList") or []
        if len(entries) > self.keys.number("SendLocalListMaxLength"):
            return {"status": "Failed"}
        try:
            status = self.auth.update(
                version=int(payload["listVersion"]),
                update_type=str(payload["updateType"]),
                entries=entries,
                max_length=self.keys.number("LocalAuthListMaxLength"),
            )
        except StoreError as exc:
            log.error("ocpp_local_list_not_stored", error=str(exc))
            return {"status": "Failed"}
        log.info(
            "ocpp_local_list",
            version=payload["listVersion"],
            update=payload["updateType"],
            entries=len(entries),
            status=status,
            size=self.auth.list_size,
        )
        return {"status": status}

    @handles(Action.get_local_list_version)
    def on_get_local_list_version(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"listVersion": self.auth.version}

    # -- handlers: Reservation ---------------------------------------------------------------

    def _load_reservations(self) -> dict[int, Reservation]:
        out = {}
        for item in self.store.load(self._reservations_doc) or []:
            try:
                r = Reservation(
                    reservation_id=int(item["reservationId"]),
                    connector=int(item["connectorId"]),
                    id_tag=str(item["idTag"]),
                    parent_id_tag=item.get("parentIdTag"),
                    expiry=datetime.fromisoformat(item["expiryDate"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.error("ocpp_reservation_unreadable", identity=self.identity, error=str(exc))
                continue
            out[r.reservation_id] = r
        return out

    def _save_reservations(self, reservations: dict[int, Reservation]) -> None:
        self.store.save(
            self._reservations_doc,
            [
                {
                    "reservationId": r.reservation_id,
                    "connectorId": r.connector,
                    "idTag": r.id_tag,
                    "parentIdTag": r.parent_id_tag,
                    "expiryDate": r.expiry.isoformat(),
                }
                for r in reservations.values()
            ],
        )
        self.reservations = reservations

    def _drop_reservation(self, reservation_id: int, why: str) -> None:
        left = {k: v for k, v in self.reservations.items() if k != reservation_id}
        try:
            self._save_reservations(left)
        except StoreError as exc:
            log.error("ocpp_reservations_not_stored", error=str(exc))
            self.reservations = left
        log.info("ocpp_reservation_ended", reservation=reservation_id, why=why)

    @handles(Action.reserve_now)
    def on_reserve_now(self, payload: dict[str, Any]) -> dict[str, Any]:
        n = int(payload["connectorId"])
        rid = int(payload["reservationId"])
        if n not in self.connectors:  # connector 0: ReserveConnectorZeroSupported is false
            return {"status": "Rejected"}
        try:
            expiry = datetime.fromisoformat(str(payload["expiryDate"]).replace("Z", "+00:00"))
        except ValueError:
            return {"status": "Rejected"}
        if expiry.utcoffset() is None:
            expiry = expiry.replace(tzinfo=UTC)
        cid = self.connectors[n]
        fault = self.site.fault(cid)
        if fault is not None and fault.faulted:
            return {"status": "Faulted"}
        if not self.site.available(cid):
            return {"status": "Unavailable"}
        others = [
            r for r in self.reservations.values() if r.connector == n and r.reservation_id != rid
        ]
        if cid in self.site.records() or self.site.vehicle_present(cid) or others:
            return {"status": "Occupied"}
        reservation = Reservation(
            reservation_id=rid,
            connector=n,
            id_tag=str(payload["idTag"]),
            parent_id_tag=payload.get("parentIdTag"),
            expiry=expiry,
        )
        try:
            self._save_reservations({**self.reservations, rid: reservation})
        except StoreError:
            return {"status": "Rejected"}
        log.info("ocpp_reserved", reservation=rid, connector=n, until=expiry.isoformat())
        return {"status": "Accepted"}

    @handles(Action.cancel_reservation)
    def on_cancel_reservation(self, payload: dict[str, Any]) -> dict[str, Any]:
        rid = int(payload["reservationId"])
        if rid not in self.reservations:
            return {"status": "Rejected"}
        self._drop_reservation(rid, "cancelled")
        return {"status": "Accepted"}

    # -- what the status shows ---------------------------------------------------------------

    def status_document(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "state": self.state.value,
            "since": self.since.isoformat(timespec="seconds"),
            "url": self._shown_url,
            "security_profile": self.settings.security_profile,
            "boot_status": self.boot_status,
            "heartbeat_s": self._heartbeat_s,
            "last_error": self.last_error,
            "connects": self.connects,
            "messages_queued": self.outbox.count(self.channel),
            "oldest_queued_at": self.outbox.oldest_created_at(self.channel),
            "messages_delivered": self.delivered,
            "messages_dropped": self.dropped,
            "profiles": len(self.profiles),
            "reservations": len(self.reservations),
            "local_list_version": self.auth.version,
        }


def _decision(info: IdTagInfo, source: str) -> Authorisation:
    return Authorisation(
        accepted=info.status == "Accepted",
        status=info.status,
        source=source,
        parent_id_tag=info.parent_id_tag,
    )


def _payload_class(action: str) -> Any:
    return getattr(call, action)


def _snake(payload: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = camel_to_snake_case(dict(payload))
    return out


def _camel(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    out: dict[str, Any] = snake_to_camel_case(dict(value))
    return out
