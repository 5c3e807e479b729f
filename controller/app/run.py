"""App layer: the composition root of `evsite run` (config -> drivers, store, loop, socket).

Wiring only: everything with behaviour lives in the loop, the drivers and the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from controller import __version__
from controller.app.cloud import CloudLink, outbox_conditions, outbox_gate
from controller.app.control_socket import SOCKET_NAME, ControlSocket, limit_commands
from controller.app.device_commands import TickGate, device_commands
from controller.app.logs import configure_logging
from controller.app.ocpp import OcppLink, SiteAdapter
from controller.app.payments import PaymentDesk, SessionPricing, payment_commands
from controller.app.sdnotify import SystemdNotifier
from controller.app.service import ControlLoop, fault_commands, install_signal_handlers
from controller.app.sessions import SessionDesk, session_commands
from controller.app.slots import SlotBook
from controller.app.tariffs import TariffBook
from controller.config import LoadedConfig, load_config
from controller.core.slots import LimitSlot
from controller.store.db import Database
from controller.store.journal import PaymentJournal
from controller.store.outbox import Outbox
from controller.store.sessions import SessionStore
from drivers.registry import BUS_POOL, build_evse, build_meter
from drivers.terminal.settings import build as build_terminal

log = structlog.get_logger("evsite")

CLEAN_SHUTDOWN = "clean_shutdown"  # marker: "1" once the EVSEs got their fallback on exit
# A part of the tick hook that keeps failing is logged once per this many seconds.
_CONTAINED_LOG_PERIOD_S = 60.0
_contained_logged: dict[str, float] = {}


@contextlib.contextmanager
def _contained(part: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        now = time.monotonic()
        if now - _contained_logged.get(part, -math.inf) >= _CONTAINED_LOG_PERIOD_S:
            _contained_logged[part] = now
            log.exception("tick_part_failed", part=part, error=repr(exc))


async def serve(config: LoadedConfig) -> int:
    site = config.site
    service = config.service
    notifier = SystemdNotifier.from_env()
    db = Database.in_state_dir(service.state_dir)
    book = SlotBook(db, site)
    outbox = Outbox(db)  # shared by the cloud links (MQTT now, OCPP later)
    tz = ZoneInfo(site.timezone)
    desk = SessionDesk(
        site=site,
        store=SessionStore(db),
        settings=config.sessions,
        clock=time.monotonic,
        wall_clock=lambda: datetime.now(tz),
    )
    # Whether the last run ended cleanly decides how its open transactions end (Reboot or
    # PowerLoss) if their vehicles left meanwhile.
    clean = db.marker(CLEAN_SHUTDOWN) == "1"
    db.set_marker(CLEAN_SHUTDOWN, "0", datetime.now(UTC).isoformat())
    desk.restore(clean_shutdown=clean)
    # No new paid session while the outbox cannot take the events that would bill it.
    desk.gates.append(outbox_gate(outbox))
    # The tariff in force (the site file's, or the cloud's): payments and MQTT meta read it.
    tariffs = TariffBook(db, config.tariff)
    # Every session priced as it runs; card payments at the terminal (before the first tick:
    # a paid session that ended while we were away is captured from its first reading).
    journal = PaymentJournal(db, tz=tz)
    pricing = SessionPricing(
        site=site, desk=desk, journal=journal, tariff=tariffs.current, clock=time.monotonic,
        save_period_s=config.terminal.usage_save_s if config.terminal is not None else 10.0,
    )  # fmt: skip
    payments = None
    if config.terminal is not None:
        payments = PaymentDesk(
            settings=config.terminal, terminal=build_terminal(config.terminal), journal=journal,
            desk=desk, pricing=pricing, site=site, clock=time.monotonic,
            wall_clock=lambda: datetime.now(tz),
        )  # fmt: skip
    meters = {m.id: build_meter(m) for m in site.meters}
    evses = {c.id: build_evse(c.evse) for c in site.connectors}
    watchdog_s = notifier.watchdog_interval_s()
    last_ping = [0.0]
    # The technician tools' bus requests go between ticks (device_commands).
    gate = TickGate(tick_s=site.control.tick_s)

    def on_tick() -> None:
        gate.tick_done(loop.last_tick_ms)
        # Feed the systemd watchdog from the tick itself: a hung loop stops the pings.
        now = time.monotonic()
        if watchdog_s is not None and now - last_ping[0] >= watchdog_s / 2:
            notifier.watchdog()
            last_ping[0] = now
        # The limits are written by now. Each part below is contained on its own: a bug in
        # one (pricing, payments, a cloud link) must neither silence the others nor count as
        # a failed tick (five in a row take the site to its fallback).
        with _contained("sessions_status"):
            # Each connector's session and availability, for `evsite status` and the clouds.
            loop.status["sessions"] = desk.status_document()
        with _contained("pricing"):
            pricing.on_tick(loop.evse_readings, loop.allocation, datetime.now(tz))
        if payments is not None:
            with _contained("payments"):
                payments.on_tick()
                loop.status["payments"] = payments.status_document()
        if cloud is not None:
            with _contained("mqtt"):
                cloud.on_tick(loop.status)
        if ocpp is not None:
            with _contained("ocpp"):
                ocpp.on_tick(loop.status)

    def all_slots() -> tuple[LimitSlot, ...]:
        # The site's own slots and the CSMS's charging profiles in force: the engine takes the
        # minimum of all of them under the ratings.
        own = book.slots()
        return own + ocpp.slots() if ocpp is not None else own

    loop = ControlLoop(
        site=site,
        meters=meters,
        evses=evses,
        db=db,
        clock=time.monotonic,
        on_tick=on_tick,
        slots=all_slots,
        sessions=desk.observe,
    )
    loop.condition_sources.append(outbox_conditions(outbox))
    loop.condition_sources.append(desk.conditions)
    cloud = None
    if config.mqtt is not None:
        cloud = CloudLink(
            config.mqtt,
            site=site,
            db=db,
            outbox=outbox,
            book=book,
            status=lambda: loop.status,
            config_source=config.source,
            desk=desk,
            tariffs=tariffs,
        )
        loop.fault_listeners.append(cloud.on_fault)
        if payments is not None:
            payments.listeners.append(cloud.on_payment_step)  # receipts and captures published
    ocpp = None
    if config.ocpp is not None:
        ocpp = OcppLink(
            config.ocpp,
            site=site,
            db=db,
            outbox=outbox,
            desk=desk,
            port=SiteAdapter(
                site=site,
                desk=desk,
                book=book,
                db=db,
                readings=lambda: loop.evse_readings,
                allocation=lambda: loop.allocation,
                health=lambda cid: (
                    loop.health[cid].online,
                    loop.health[cid].seen,
                    loop.health[cid].failures_in_row,
                    loop.health[cid].last_error,
                ),
                restart=loop.request_stop,
            ),
            state_dir=service.state_dir,
            version=__version__,
        )
    sock = ControlSocket(
        service.runtime_dir / SOCKET_NAME,
        status=lambda: loop.status,
        commands={
            **limit_commands(book),
            **session_commands(desk),
            **payment_commands(payments, tariffs.current),
            **fault_commands(loop),
            **(cloud.socket_commands() if cloud is not None else {}),
            **device_commands(site=site, meters=meters, evses=evses, pool=BUS_POOL, gate=gate),
        },
        mode=service.socket_mode,
        group=service.socket_group,
    )
    install_signal_handlers(loop)
    log.info(
        "service_starting",
        version=__version__,
        site=site.id,
        config=str(config.source),
        connectors=len(site.connectors),
    )
    for warning in config.warnings:
        log.warning("config_warning", detail=warning)
    try:
        await loop.start()
        await sock.start()
        if payments is not None:
            await payments.start()
        if cloud is not None:
            await cloud.start()
        if ocpp is not None:
            await ocpp.start()
        notifier.ready(f"controlling {len(site.connectors)} connectors")
        await loop.run()
    finally:
        # Whatever ended the loop (SIGTERM, a crash), the EVSEs go to their fallback current.
        notifier.stopping()
        log.info("service_stopping")
        try:
            await loop.stop_to_fallback()
            desk.save_open()  # the latest meter values, for sessions ended while we are down
            db.set_marker(CLEAN_SHUTDOWN, "1", datetime.now(UTC).isoformat())
        except Exception as exc:
            log.error("shutdown_fallback_failed", error=repr(exc))
        if cloud is not None:
            await cloud.close()
        if ocpp is not None:
            await ocpp.close()
        if payments is not None:
            await payments.close()
        await sock.close()
        await loop.close()
        db.close()
        notifier.close()
    log.info("service_stopped")
    return 0


def run(config_path: Path, *, log_format: str | None = None) -> int:
    config = load_config(config_path)
    configure_logging(log_format or config.service.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(config))
    return 0
