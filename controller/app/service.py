"""App layer: the control loop of `evsite run`.

Every tick (1 s): read the meters and EVSEs concurrently (each device bounded by its own
timeout, so a dead one costs only itself), judge and allocate in the pure core, write the limits
that changed plus the refreshes the EVSEs' watchdogs need, persist what must survive a restart,
and publish the status. Before the first reading every EVSE gets its fallback current; on
SIGTERM every EVSE gets its fallback current before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import structlog

from controller.app.control_socket import Command, NoArguments
from controller.app.health import DeviceHealth
from controller.app.status import build_status
from controller.core.allocation import allocate
from controller.core.errors import EvsiteError
from controller.core.faults import FaultBook, Transition
from controller.core.faults import update as update_faults
from controller.core.model import (
    Allocation,
    Condition,
    EvseReading,
    MeterReading,
    Session,
    Snapshot,
)
from controller.core.ports import Evse, Meter
from controller.core.site import SerialTransport, Site
from controller.core.slots import LimitSlot
from controller.store.db import Database, StoreError

log = structlog.get_logger("evsite.control")

T = TypeVar("T")
# The session bookkeeping (controller.app.sessions): this tick's readings -> the engine's view.
SessionSource = Callable[[Mapping[str, EvseReading | None], float, datetime], Mapping[str, Session]]

# Ticks that may fail in a row (logged) before the loop gives up, falls back and exits.
MAX_FAILED_TICKS = 5
# An EVSE that is offline is written at most this often (a probe), not every tick: on a shared
# RS-485 line each write to a dead box costs a full timeout in front of the healthy ones.
OFFLINE_WRITE_PERIOD_S = 10.0

# A limit differing by less than this from the last written one is not rewritten.
WRITE_DEADBAND_A = 0.05


@dataclass(slots=True)
class _Written:
    current_a: float
    at_s: float


class ControlLoop:
    """Owns the devices of one site and runs its tick."""

    def __init__(
        self,
        *,
        site: Site,
        meters: Mapping[str, Meter],
        evses: Mapping[str, Evse],
        db: Database,
        clock: Callable[[], float],
        on_tick: Callable[[], None] | None = None,
        slots: Callable[[], tuple[LimitSlot, ...]] | None = None,
        sessions: SessionSource | None = None,
    ) -> None:
        self.site = site
        self.meters = dict(meters)
        self.evses = dict(evses)
        self.db = db
        self.clock = clock
        self.on_tick = on_tick
        self._slots = slots
        self._sessions = sessions
        self.tz = ZoneInfo(site.timezone)
        self.started_s = clock()
        self.health = {d: DeviceHealth(d) for d in [*self.meters, *self.evses]}
        self.meter_readings: dict[str, MeterReading | None] = dict.fromkeys(self.meters)
        self.evse_readings: dict[str, EvseReading | None] = dict.fromkeys(self.evses)
        self.written: dict[str, _Written | None] = dict.fromkeys(self.evses)
        self.allocation: Allocation | None = None
        self.write_failed: set[str] = set()
        self._unsaved: dict[str, tuple[float, str]] = {}
        self._setup_done: set[str] = set()
        self._last_attempt_s: dict[str, float] = {}
        self.faults = FaultBook()
        # Hooks for the cloud links (controller.app.cloud): more fault conditions each tick
        # (outbox alarms), and every fault transition once it is logged.
        self.condition_sources: list[Callable[[], Iterable[Condition]]] = []
        self.fault_listeners: list[Callable[[Transition], None]] = []
        self.status: dict[str, Any] = {}
        self.ticks = 0
        self.last_tick_ms = 0.0
        self._refresh_s = {cid: e.watchdog_refresh_s for cid, e in self.evses.items()}
        self._connectors = {c.id: c for c in site.connectors}
        # Serial lines: which EVSEs and meters share each one, and each device's poll time.
        self._line_of = {
            c.id: c.evse.transport.port
            for c in site.connectors
            if isinstance(c.evse.transport, SerialTransport) and c.id in self.evses
        }
        self._lines: dict[str, list[str]] = {}
        for cid, line in self._line_of.items():
            self._lines.setdefault(line, []).append(cid)
        self._line_meters: dict[str, list[str]] = {}
        for m in site.meters:
            if isinstance(m.transport, SerialTransport):
                self._line_meters.setdefault(m.transport.port, []).append(m.id)
        devices: dict[str, object] = {**self.meters, **self.evses}
        self._estimate_s = {
            d: float(getattr(dev, "read_estimate_s", 0.0)) for d, dev in devices.items()
        }
        self._rr_next: dict[str, int] = {}
        self._timeouts = {d.id: d.timeout_s for d in site.meters}
        self._timeouts.update({c.id: c.evse.timeout_s for c in site.connectors})
        self._stop = asyncio.Event()

    # -- device calls, each bounded and converted -------------------------------------------

    async def _guard(self, device: str, timeout_s: float, call: Awaitable[T]) -> T | None:
        health = self.health[device]
        try:
            result = await asyncio.wait_for(call, timeout_s)
        except TimeoutError:
            health.failed(f"no answer within {timeout_s:g} s")
            return None
        except EvsiteError as exc:
            health.failed(str(exc) or type(exc).__name__)
            return None
        except Exception as exc:  # a driver bug must cost this device, not the whole site
            log.error("device_call_crashed", device=device, error=repr(exc))
            health.failed(f"internal error: {type(exc).__name__}")
            return None
        health.ok(self.clock())
        return result

    def _budget_s(self, device: str) -> float:
        # The driver bounds each request by its own timeout and a silent device fails on its
        # first request; this outer bound is only the backstop for a read of several requests
        # (SDM630: 3) that may also wait behind other devices on a shared RS-485 line.
        return self._timeouts.get(device, 0.5) * 8 + 0.1

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Programme each EVSE's fallback and write it, before the first reading."""
        previous = self.db.written_limits()
        if previous:
            log.info("state_restored", written={k: v.written_a for k, v in previous.items()})
        for cid, row in previous.items():
            if cid in self.written:
                # An EVSE we cannot reach now may still run on this: the engine reserves it.
                self.written[cid] = _Written(current_a=row.written_a, at_s=-math.inf)

        async def prepare(cid: str) -> None:
            await self._setup(cid)
            await self._write(cid, self._connectors[cid].fallback_current_a, reason="startup")

        await asyncio.gather(*(prepare(cid) for cid in self.evses))
        self._save_limits()

    async def _setup(self, cid: str) -> bool:
        """Programme an EVSE's fallback current and watchdog; retried from the tick until it
        succeeds (an EVSE offline at start must not run without them)."""
        evse = self.evses[cid]
        fallback = self._connectors[cid].fallback_current_a
        done = await self._guard(
            cid, self._budget_s(cid) * 2, self._call_true(evse.setup(fallback))
        )
        if not done:
            return False
        self._setup_done.add(cid)
        for warning in getattr(evse, "setup_warnings", ()):
            # e.g. an Alfen whose safe current (set on the station) is not our fallback
            log.warning("evse_setup_warning", connector=cid, detail=warning)
        return True

    async def stop_to_fallback(self) -> None:
        """On shutdown: every EVSE to its fallback current (best effort, bounded)."""

        async def one(cid: str) -> None:
            await self._write(cid, self._connectors[cid].fallback_current_a, reason="shutdown")

        await asyncio.gather(*(one(cid) for cid in self.evses))
        self._save_limits()
        log.info(
            "shutdown_fallback_written",
            connectors={c: (w.current_a if w else None) for c, w in self.written.items()},
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        tick_s = self.site.control.tick_s
        next_at = self.clock()
        crashed_in_row = 0
        while not self._stop.is_set():
            try:
                await self.tick()
                crashed_in_row = 0
            except Exception as exc:  # never let one bad tick kill the loop silently
                crashed_in_row += 1
                log.exception("tick_failed", error=repr(exc), in_row=crashed_in_row)
                if crashed_in_row >= MAX_FAILED_TICKS:
                    # Something is persistently wrong: leave the site in its safe state and
                    # exit non-zero, so systemd restarts us (Restart=always).
                    raise
            next_at += tick_s
            now = self.clock()
            if next_at < now:  # overran: skip the missed slots rather than bunching ticks
                next_at = now + tick_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), next_at - now)

    # -- the tick ----------------------------------------------------------------------------

    async def tick(self) -> None:
        t0 = self.clock()
        await self._read_all()
        now_s = self.clock()
        wall = datetime.now(self.tz)
        snap = Snapshot(
            now_s=now_s,
            wall=wall,
            meters=self.meter_readings,
            evses=self.evse_readings,
            written_a={c: (w.current_a if w else None) for c, w in self.written.items()},
            write_failed=frozenset(self.write_failed),
            slots=self._slots() if self._slots else (),
            sessions=self._sessions(self.evse_readings, now_s, wall) if self._sessions else {},
        )
        previous = self.allocation
        allocation = allocate(self.site, snap, previous)
        self.allocation = allocation
        # Limits first (a decrease must not wait for a disk), then the bookkeeping.
        await self._apply(allocation, now_s)
        self._log_transitions(previous, allocation)
        self._track_faults(allocation, wall)
        self._save_limits()
        self.ticks += 1
        self.last_tick_ms = (self.clock() - t0) * 1000.0
        self.status = self._build_status(now_s, wall)
        if self.on_tick is not None:
            self.on_tick()

    async def _read_all(self) -> None:
        async def read_meter(mid: str) -> None:
            m = await self._guard(mid, self._budget_s(mid), self.meters[mid].read(self.clock()))
            if m is not None:
                self.meter_readings[mid] = m  # a failed read keeps the last one: its age tells

        async def read_evse(cid: str) -> None:
            e = await self._guard(cid, self._budget_s(cid), self.evses[cid].read(self.clock()))
            if e is not None:
                self.evse_readings[cid] = e

        await asyncio.gather(
            *(read_meter(m) for m in self.meters), *(read_evse(c) for c in self._evses_to_read())
        )

    def _evses_to_read(self) -> list[str]:
        """Every EVSE, except on a serial line too slow to poll all of them each tick: there
        the meters are read every tick and the EVSEs round-robin within what is left of
        70 % of the tick (the rest is for writes), so each is read well within its staleness
        budget (`evsite config check` warns when a line cannot manage that)."""
        chosen = [c for c in self.evses if c not in self._line_of]
        for line, members in self._lines.items():
            meter_s = sum(self._estimate_s.get(m, 0.0) for m in self._line_meters.get(line, ()))
            budget_s = 0.7 * self.site.control.tick_s - meter_s
            if sum(self._estimate_s.get(c, 0.0) for c in members) <= budget_s:
                chosen.extend(members)
                continue
            start = self._rr_next.get(line, 0)
            used_s, taken = 0.0, 0
            while taken < len(members):
                cid = members[(start + taken) % len(members)]
                cost = self._estimate_s.get(cid, 0.0)
                if taken and used_s + cost > budget_s + 1e-9:
                    break
                chosen.append(cid)
                used_s += cost
                taken += 1
            self._rr_next[line] = (start + taken) % len(members)
        return chosen

    async def _apply(self, allocation: Allocation, now_s: float) -> None:
        decreases: list[tuple[str, float, str]] = []
        others: list[tuple[str, float, str]] = []
        for cid, limit in allocation.limits.items():
            if cid not in self.evses:
                continue
            last = self.written[cid]
            health = self.health[cid]
            # A dead EVSE costs a full timeout per write: probe it now and then only.
            tried_s = self._last_attempt_s.get(cid, -math.inf)
            if not health.online and health.seen and now_s - tried_s < OFFLINE_WRITE_PERIOD_S:
                continue
            refresh_s = self._refresh_s[cid]
            if (
                last is None
                or abs(last.current_a - limit.current_a) >= WRITE_DEADBAND_A
                or (refresh_s is not None and now_s - last.at_s >= refresh_s)
                or cid not in self._setup_done
            ):
                changed = last is None or last.current_a != limit.current_a
                reason = "change" if changed else "refresh"
                down = last is not None and limit.current_a < last.current_a
                (decreases if down else others).append((cid, limit.current_a, reason))
        # Decreases go out first: on a shared serial line they queue ahead of everything else.
        for batch in (decreases, others):
            if batch:
                await asyncio.gather(*(self._write_checked(*w) for w in batch))

    async def _write_checked(self, cid: str, current_a: float, reason: str) -> None:
        if cid not in self._setup_done and not await self._setup(cid):
            # Not programmed yet: never more than its fallback until it is.
            current_a = min(current_a, self._connectors[cid].fallback_current_a)
        await self._write(cid, current_a, reason=reason)

    async def _write(self, cid: str, current_a: float, *, reason: str) -> bool:
        self._last_attempt_s[cid] = self.clock()
        before = self.written[cid]
        ok = await self._guard(
            cid, self._budget_s(cid), self._call_true(self.evses[cid].write_limit(current_a))
        )
        if not ok:
            if cid not in self.write_failed:
                log.warning("limit_write_failed", connector=cid, limit_a=current_a, reason=reason)
            self.write_failed.add(cid)
            return False
        self.write_failed.discard(cid)
        self.written[cid] = _Written(current_a=current_a, at_s=self.clock())
        if before is None or before.current_a != current_a:
            log.info("limit_applied", connector=cid, limit_a=current_a, reason=reason)
            self._unsaved[cid] = (current_a, datetime.now(UTC).isoformat())
        return True

    def _save_limits(self) -> None:
        """Persist the limits written since the last save, in one transaction."""
        rows = [(cid, a, at) for cid, (a, at) in self._unsaved.items()]
        try:
            self.db.save_written_limits(rows)
        except StoreError as exc:
            log.error("state_write_failed", error=str(exc))  # kept: tried again next tick
            return
        self._unsaved.clear()

    @staticmethod
    async def _call_true(call: Awaitable[None]) -> bool:
        await call
        return True

    def _log_transitions(self, previous: Allocation | None, current: Allocation) -> None:
        old_mode = previous.mode if previous else "starting"
        if current.mode != old_mode:
            emit = log.warning if current.mode in ("fallback", "hold") else log.info
            emit("mode_changed", old=old_mode, new=current.mode, notes=list(current.notes))
            try:
                self.db.log_event(
                    datetime.now(UTC).isoformat(),
                    "mode_changed",
                    self.site.id,
                    json.dumps({"old": old_mode, "new": current.mode, "notes": current.notes}),
                )
            except StoreError as exc:
                log.error("state_write_failed", error=str(exc))

    def _track_faults(self, allocation: Allocation, wall: datetime) -> None:
        conditions = list(allocation.faults)
        for source in self.condition_sources:
            conditions.extend(source())
        for device, health in self.health.items():
            # One missed read is a hold, not a fault; two in a row is a device offline.
            if not health.online and health.failures_in_row >= 2:
                conditions.append(
                    Condition(code="device_offline", subject=device, detail=health.last_error or "")
                )
        self.faults, transitions = update_faults(self.faults, conditions, wall=wall)
        for tr in transitions:
            f = tr.fault
            emit = log.warning if tr.kind == "raised" else log.info
            emit(f"fault_{tr.kind}", code=f.code, subject=f.subject, detail=f.detail,
                 occurrences=f.occurrences)  # fmt: skip
            try:
                self.db.log_event(
                    wall.astimezone(UTC).isoformat(),
                    f"fault_{tr.kind}",
                    f.subject,
                    json.dumps(f.as_dict()),
                )
            except StoreError as exc:
                log.error("state_write_failed", error=str(exc))
            for listener in self.fault_listeners:
                listener(tr)

    def _build_status(self, now_s: float, wall: datetime) -> dict[str, Any]:
        status = build_status(
            site=self.site,
            wall=wall,
            now_s=now_s,
            started_s=self.started_s,
            allocation=self.allocation,
            meters=self.meter_readings,
            evses=self.evse_readings,
            written_a={c: (w.current_a if w else None) for c, w in self.written.items()},
            health={d: h.as_dict(now_s) for d, h in self.health.items()},
        )
        status["tick"] = {"count": self.ticks, "last_ms": round(self.last_tick_ms, 1)}
        status["faults"] = [f.as_dict() for f in self.faults.active.values()]
        return status

    async def close(self) -> None:
        closers = [m.close() for m in self.meters.values()]
        closers += [e.close() for e in self.evses.values()]
        await asyncio.gather(*closers, return_exceptions=True)


def fault_commands(loop: ControlLoop) -> dict[str, Command[Any]]:
    """``faults``: the active faults and the recently cleared ones, newest first."""

    def faults(_: NoArguments) -> dict[str, Any]:
        book = loop.faults
        return {
            "active": [f.as_dict() for f in book.active.values()],
            "cleared": [f.as_dict() for f in reversed(book.history)],
        }

    return {"faults": Command(NoArguments, faults)}


def install_signal_handlers(loop: ControlLoop) -> None:
    aloop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        aloop.add_signal_handler(sig, loop.request_stop)
