"""App layer: pricing every session, and card payments at the site's ZVT terminal.

``SessionPricing`` prices every session while it runs (any method: card, RFID, app, free), from
the energy register the control loop reads each tick, with the site's tariff
(controller.core.tariff). Each session's exact usage is written now and then, and always when
it ends, so a session that outlives a restart goes on being priced exactly, and the report
reads the figures the capture was computed from.

``PaymentDesk`` is the thin shell around the pure payment machine (controller.core.payment):

- a card presented (``present_card``: the socket command ``payment_start``, `evsite pay`)
  pre-authorises the tariff's amount; the intent is journalled (fsync) BEFORE the 06 22 goes
  out, and every result after it. An approval starts a card session at the connector
  (``SessionDesk.start(method=CARD, payment_id=...)``). With several connectors on one
  terminal the requests run one at a time, and a card presented without a connector goes to
  the connector whose car waits for authorisation, the most recently plugged in first;
- every tick, a card session whose cost could pass the pre-authorised amount before the next
  check is stopped (``must_stop``: idle fee included); the capture never exceeds the pre-auth;
- when the session ends its cost is captured (06 23 releasing the rest, or 06 24 per profile),
  or the whole pre-auth released when nothing was drawn (06 25);
- at start-up, before any new payment, it reconciles with the terminal: the open pre-auth
  enquiry (06 23 87 FF FF) settles every command whose outcome the journal does not know, a
  paid session whose car is still plugged in goes on and is captured when it ends, and every
  open pre-auth no payment will settle (a crash before its approval reached the journal) is
  released. Every pre-authorisation ends captured or released, and never twice;
- a journal that cannot be written (disk full) stops new card payments (a session gate) until a
  write succeeds again.

Receipts are the terminal's own text (the masked PAN only), kept in the journal and published
to ``listeners`` (MQTT): each gets ``{"event": "payment_<state>", "payment": {...}}``.
Nothing here logs card data beyond the masked PAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field

from controller.app.control_socket import Command, CommandRefused, NoArguments
from controller.app.sessions import SessionDesk
from controller.core.model import Allocation, EvseReading
from controller.core.payment import (
    Outcome,
    OutcomeKind,
    Payment,
    PaymentError,
    PaymentState,
    RestartAction,
    Step,
    StepKind,
    apply,
    new_payment,
    next_step,
    no_session,
    on_restart,
    orphans,
    sent,
    session_ended,
    session_started,
)
from controller.core.sessions import (
    DRAWING_THRESHOLD_A,
    AuthMethod,
    SessionEvent,
    SessionEventKind,
    SessionPhase,
    SessionRecord,
    SessionRefused,
    StopReason,
)
from controller.core.site import Site
from controller.core.tariff import (
    CostBreakdown,
    Tariff,
    Usage,
    cost,
    must_stop,
    preauth_amount_cents,
    price_display,
)
from controller.store.db import StoreError
from controller.store.journal import PaymentJournal
from drivers.terminal.errors import (
    PaymentOutcomeUnknown,
    TerminalBusy,
    TerminalMisuse,
    TerminalRefused,
    TerminalUnavailable,
)
from drivers.terminal.settings import TerminalSettings
from drivers.terminal.transport import CommandResult
from drivers.terminal.zvt import Completion, StatusInformation

log = structlog.get_logger("evsite.payments")

# Terminal status of the status enquiry (reference/payment.md §2).
STATUS_READY = 0x00
STATUS_END_OF_DAY_NEEDED = 0xF0
JOURNAL_PROBE_S = 5.0

PaymentListener = Callable[[dict[str, Any]], None]


class PaymentTerminal(Protocol):
    """What the payment shell needs of a terminal (drivers.terminal.transport.ZvtTerminal)."""

    async def register(self) -> CommandResult: ...
    async def status(self) -> Completion: ...
    async def pre_authorise(
        self, amount_cents: int, *, on_print: Callable[[str], None] | None = None
    ) -> StatusInformation: ...
    async def settle(
        self,
        *,
        receipt_number: int,
        pre_authorised_cents: int,
        final_cents: int,
        on_print: Callable[[str], None] | None = None,
    ) -> CommandResult: ...
    async def release(
        self, receipt_number: int, *, on_print: Callable[[str], None] | None = None
    ) -> CommandResult: ...
    async def open_pre_auths(self) -> tuple[int, ...]: ...
    async def end_of_day(
        self, *, on_print: Callable[[str], None] | None = None
    ) -> CommandResult: ...
    async def close(self) -> None: ...


class PaymentRefused(Exception):
    """A payment that cannot start (a reason for the driver or technician, not a bug)."""


# --------------------------------------------------------------------------------------------
# Pricing every session
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Priced:
    tariff: Tariff
    usage: Usage
    saved_s: float


SessionOver = Callable[[SessionRecord, CostBreakdown | None], None]


class SessionPricing:
    """The exact usage and cost of every running session, fed from the control loop's tick."""

    def __init__(
        self,
        *,
        site: Site,
        desk: SessionDesk,
        journal: PaymentJournal,
        tariff: Callable[[], Tariff | None],
        clock: Callable[[], float],
        save_period_s: float = 10.0,
    ) -> None:
        self.site = site
        self.desk = desk
        self.journal = journal
        # The tariff in force: a session is priced with the one in force when it started.
        self.tariff = tariff
        self.clock = clock
        self.save_period_s = save_period_s
        self._priced: dict[str, _Priced] = {}
        self._held: dict[str, bool] = {}
        # Told when a session is over: its final cost (None: it never started a transaction).
        self.over_listeners: list[SessionOver] = []
        desk.listeners.append(self._on_session_event)

    def usage(self, session_id: str) -> tuple[Tariff, Usage] | None:
        priced = self._priced.get(session_id)
        return None if priced is None else (priced.tariff, priced.usage)

    def on_tick(
        self,
        readings: Mapping[str, EvseReading | None],
        allocation: Allocation | None,
        wall: datetime,
    ) -> None:
        now_s = self.clock()
        stale_s = self.site.control.evse_stale_s
        for cid, rec in self.desk.records().items():
            if rec.phase is not SessionPhase.ACTIVE:
                continue
            reading = readings.get(cid)
            if reading is None or now_s - reading.at_s > stale_s:
                continue
            if not math.isfinite(reading.energy_wh):
                continue  # an invalid register (NaN): priced from the next valid value
            priced = self._priced_for(rec)
            if priced is None:
                continue
            held = False
            if allocation is not None and cid in allocation.limits:
                held = allocation.limits[cid].current_a <= 0.0
            priced.usage = priced.usage.record(
                priced.tariff,
                at=wall,
                energy_register_wh=reading.energy_wh,
                drawing=max(reading.current_a) >= DRAWING_THRESHOLD_A,
                held=held,
            )
            if now_s - priced.saved_s >= self.save_period_s:
                self._save(rec.id, priced, final=False)

    def final_cost(self, rec: SessionRecord) -> CostBreakdown:
        """The cost of a session that ended (``rec`` has ended_at and meter_stop_wh)."""
        priced = self._priced.get(rec.id)
        if priced is None:
            stored = self.journal.cost(rec.id)
            if stored is not None and stored.final:
                return cost(stored.tariff, stored.usage)  # priced to its end already
            priced = self._priced_for(rec)
        if priced is None:
            raise PaymentError(f"session {rec.id} has no start to price from")
        if rec.ended_at is not None and rec.meter_stop_wh is not None:
            end_at = rec.ended_at
            if rec.stop_reason in (StopReason.POWER_LOSS, StopReason.REBOOT):
                # Ended at the restart; the car left at some moment while we were down. Priced
                # to the last moment we saw it: the downtime is not billed as session time.
                end_at = min(end_at, priced.usage.last_at)
            priced.usage = priced.usage.record(
                priced.tariff,
                at=end_at,
                energy_register_wh=rec.meter_stop_wh,
                drawing=False,
                # The end is the end: no idle time is billed after the last tick's sample.
                held=True,
            )
        self._save(rec.id, priced, final=True)
        self._priced.pop(rec.id, None)
        return cost(priced.tariff, priced.usage)

    def _priced_for(self, rec: SessionRecord) -> _Priced | None:
        priced = self._priced.get(rec.id)
        if priced is not None:
            return priced
        stored = self.journal.cost(rec.id)
        if stored is not None and not stored.final:
            # A session that outlived a restart: go on from the last saved usage.
            priced = _Priced(tariff=stored.tariff, usage=stored.usage, saved_s=self.clock())
        elif (
            rec.started_at is not None
            and rec.meter_start_wh is not None
            and (tariff := self.tariff()) is not None
        ):
            priced = _Priced(
                tariff=tariff,
                usage=Usage.start(at=rec.started_at, energy_register_wh=rec.meter_start_wh),
                saved_s=-1e18,
            )
        else:
            return None
        self._priced[rec.id] = priced
        return priced

    def _save(self, session_id: str, priced: _Priced, *, final: bool) -> None:
        try:
            self.journal.save_cost(
                session_id,
                tariff=priced.tariff,
                usage=priced.usage,
                breakdown=cost(priced.tariff, priced.usage),
                final=final,
            )
        except StoreError as exc:
            log.error("session_cost_store_failed", session=session_id, error=str(exc))
            return
        priced.saved_s = self.clock()

    def _on_session_event(self, event: SessionEvent) -> None:
        rec = event.record
        if event.kind is SessionEventKind.STARTED:
            priced = self._priced_for(rec)
            if priced is not None:
                self._save(rec.id, priced, final=False)
            return
        if event.kind is SessionEventKind.ENDED:
            breakdown: CostBreakdown | None
            try:
                breakdown = self.final_cost(rec)
            except PaymentError as exc:
                breakdown = None
                if self.tariff() is not None or rec.method is AuthMethod.CARD:
                    log.error("session_unpriced", session=rec.id, error=str(exc))
                # else: a site without a tariff prices nothing; that is no error
            else:
                log.info(
                    "session_priced",
                    session=rec.id,
                    connector=rec.connector,
                    total_cents=breakdown.total_cents,
                    energy_wh=float(breakdown.energy_wh),
                )
            self._tell(rec, breakdown)
        elif event.kind is SessionEventKind.ABANDONED:
            self._tell(rec, None)

    def _tell(self, rec: SessionRecord, breakdown: CostBreakdown | None) -> None:
        for listener in self.over_listeners:
            try:
                listener(rec, breakdown)
            except Exception as exc:  # one broken listener must not stop the others
                log.error("session_over_listener_failed", session=rec.id, error=repr(exc))


# --------------------------------------------------------------------------------------------
# Card payments
# --------------------------------------------------------------------------------------------


class PaymentDesk:
    """The card payments of one terminal, from pre-authorisation to capture."""

    def __init__(
        self,
        *,
        settings: TerminalSettings,
        terminal: PaymentTerminal,
        journal: PaymentJournal,
        desk: SessionDesk,
        pricing: SessionPricing,
        site: Site,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.settings = settings
        self.terminal = terminal
        self.journal = journal
        self.desk = desk
        self.pricing = pricing
        self.site = site
        self.clock = clock
        self.wall_clock = wall_clock
        self.new_id = new_id
        self.connectors = settings.connectors or tuple(c.id for c in site.connectors)
        self._max_power_w = {
            c.id: c.max_current_a * site.nominal_voltage_v * len(c.grid_phases)
            for c in site.connectors
        }
        self.listeners: list[PaymentListener] = []
        self.terminal_status: int | None = None
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()  # one payment command on the terminal at a time
        self._payments: dict[str, Payment] = {p.id: p for p in journal.live()}
        self._settling: dict[str, asyncio.Task[None]] = {}
        self._preauths: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._journal_error: str | None = None
        self._probed_s = -1e18
        self._stopping: set[str] = set()
        # Payments whose intent is journalled and whose command waits for or is on the wire:
        # an enquiry answered meanwhile must not judge them.
        self._on_wire: set[str] = set()
        self._restarted = False
        # After an unknown outcome the terminal may still book late (it went on after we gave
        # up): enquire again once its T4 has run out, until an enquiry after that answers.
        self._doubt_since: float | None = None
        self._doubt_task: asyncio.Task[Any] | None = None
        self._status_task: asyncio.Task[Any] | None = None
        self._status_asked_s = -1e18
        self._closed = False
        # Sessions (pending, per plug-in) a pre-authorisation was started for by itself.
        self._auto_tried: set[str] = set()
        self._end_of_day_s: float | None = None  # when the last end of day ran (or we began)
        self._end_of_day_task: asyncio.Task[Any] | None = None
        desk.gates.append(self._gate)
        pricing.over_listeners.append(self._on_session_over)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile in the background; new payments wait for it (``ready``)."""
        self._spawn(self._reconcile_until_done())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        with contextlib.suppress(Exception):
            await self.terminal.close()

    # -- every tick --------------------------------------------------------------------------

    def on_tick(self) -> None:
        """Stop a card session before its cost could pass its pre-authorisation."""
        if self._journal_error is not None and self.clock() - self._probed_s >= JOURNAL_PROBE_S:
            self._probed_s = self.clock()
            try:
                self.journal.probe()
            except StoreError as exc:
                self._journal_error = str(exc)
            else:
                log.info("payment_journal_recovered")
                self._journal_error = None
        self._resolve_doubt()
        self._recheck_status()
        if self.settings.preauth_on_plug_in:
            self._preauth_on_plug_in()
        self._daily_end_of_day()
        for p in list(self._payments.values()):
            if p.state is not PaymentState.CHARGING or p.session_id is None:
                continue
            if p.id in self._stopping or p.connector is None:
                continue
            rec = self.desk.record(p.connector)
            if rec is None or rec.id != p.session_id or rec.phase is not SessionPhase.ACTIVE:
                continue
            priced = self.pricing.usage(p.session_id)
            if priced is None:
                continue
            tariff, usage = priced
            if must_stop(
                tariff,
                usage,
                p.preauth_cents,
                headroom_s=Fraction(str(self.settings.stop_headroom_s)),
                power_w=Fraction(str(self._max_power_w.get(p.connector, 0.0))),
            ):
                self._stopping.add(p.id)
                log.info(
                    "payment_limit_reached",
                    payment=p.id,
                    connector=p.connector,
                    preauth_cents=p.preauth_cents,
                    cost_cents=cost(tariff, usage).total_cents,
                )
                try:
                    self.desk.stop(p.connector, reason=StopReason.OTHER, by="payment")
                except SessionRefused as exc:
                    log.warning("payment_stop_refused", payment=p.id, error=str(exc))

    def _recheck_status(self) -> None:
        """A terminal that needed service is asked again now and then: serviced, it takes
        payments again without a restart."""
        if not self.ready.is_set() or self.terminal_status in (
            None,
            STATUS_READY,
            STATUS_END_OF_DAY_NEEDED,
        ):
            return
        if self._status_task is not None and not self._status_task.done():
            return
        if self.clock() - self._status_asked_s < self.settings.retry_s:
            return
        self._status_asked_s = self.clock()

        async def ask() -> None:
            try:
                async with self._lock:
                    status = await self.terminal.status()
            except (TerminalUnavailable, TerminalBusy, TerminalRefused, TerminalMisuse) as exc:
                log.warning("terminal_unavailable", terminal=self.settings.id, error=str(exc))
                return
            if status.terminal_status != self.terminal_status:
                log.info("terminal_status", terminal=self.settings.id,
                         status=f"{status.terminal_status or 0:02X}")  # fmt: skip
            self.terminal_status = status.terminal_status

        self._status_task = self._spawn(ask())

    def _resolve_doubt(self) -> None:
        if self._doubt_since is None or not self.ready.is_set():
            return
        if self._doubt_task is not None and not self._doubt_task.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._doubt_since < self.settings.t4_s + self.settings.t3_s:
            return
        since = self._doubt_since

        async def enquire() -> None:
            if await self._reconcile_once() and self._doubt_since == since:
                self._doubt_since = None

        self._doubt_task = self._spawn(enquire())

    # -- a card presented --------------------------------------------------------------------

    def _daily_end_of_day(self) -> None:
        """End of day at least every ``end_of_day_every_s``, never while a payment is open."""
        if not self.ready.is_set() or self._closed:
            return
        now = self.clock()
        if self._end_of_day_s is None:
            self._end_of_day_s = now
            return
        if now - self._end_of_day_s < self.settings.end_of_day_every_s:
            return
        if self._end_of_day_task is not None and not self._end_of_day_task.done():
            return
        if self._preauths or any(not p.final for p in self._payments.values()):
            return  # a session is paid and running: after it

        async def run() -> None:
            if await self._end_of_day():
                self._end_of_day_s = self.clock()
            else:  # try again after the retry time, not a whole day later
                self._end_of_day_s = (
                    self.clock() - self.settings.end_of_day_every_s + self.settings.retry_s
                )

        self._end_of_day_task = self._spawn(run())

    def _preauth_on_plug_in(self) -> None:
        """An unattended charger: a car waiting at a served connector starts its pre-auth.

        One attempt per plug-in (a declined or ignored card does not loop on the terminal),
        one payment on the terminal at a time; a car plugged in while another's pre-auth runs
        gets its turn after it.
        """
        if not self.ready.is_set() or self._preauths or self._closed:
            return
        waiting = {
            rec.id: cid
            for cid in self.connectors
            if (rec := self.desk.record(cid)) is not None and rec.phase is SessionPhase.PENDING
        }
        self._auto_tried &= set(waiting)  # forget sessions that are gone
        for session_id, cid in waiting.items():
            if session_id in self._auto_tried:
                continue
            self._auto_tried.add(session_id)
            try:
                self.begin(cid, by="plug_in")
            except PaymentRefused as exc:
                log.info("payment_not_started", connector=cid, reason=str(exc))
            return

    def begin(self, connector: str | None, *, by: str) -> Payment:
        """Journal a new payment's intent and start it on the terminal (in the background).

        Raises PaymentRefused before anything is sent: not reconciled yet, the journal cannot
        be written, the connector is not served, or no car waits for a payment.
        """
        if self._closed:
            raise PaymentRefused("the service is stopping")
        if not self.ready.is_set():
            raise PaymentRefused("the terminal is not ready (reconciling with it)")
        if self.terminal_status not in (None, STATUS_READY, STATUS_END_OF_DAY_NEEDED):
            raise PaymentRefused(
                f"the terminal reports status {self.terminal_status:02X}: it needs service"
            )
        if self._journal_error is not None:
            raise PaymentRefused(f"the payment journal cannot be written: {self._journal_error}")
        if connector is not None:
            if connector not in self.connectors:
                raise PaymentRefused(
                    f"connector {connector!r} does not take payments at terminal "
                    f"{self.settings.id} (it serves {', '.join(self.connectors)})"
                )
            rec = self.desk.record(connector)
            if rec is not None and rec.phase not in (SessionPhase.PENDING,):
                raise PaymentRefused(f"connector {connector} already has a session ({rec.phase})")
            if not self.desk.available(connector):
                raise PaymentRefused(f"connector {connector} is unavailable")
        elif self._route() is None:
            raise PaymentRefused("no car waits for a payment at the terminal's connectors")
        # A card session the desk would refuse (reserved connector, outbox alarm) is refused
        # before the card is charged, not pre-authorised and then released.
        refusal = self.desk.refusal(AuthMethod.CARD, connector)
        if refusal is not None:
            raise PaymentRefused(refusal)
        tariff = self.pricing.tariff()
        if tariff is None:
            raise PaymentRefused("no tariff is in force: card payments need one")
        p = new_payment(
            payment_id=self.new_id(),
            terminal=self.settings.id,
            preauth_cents=preauth_amount_cents(tariff),
            connector=connector,
            at=self.wall_clock(),
        )
        # The intent is on disk before the terminal hears of it.
        self._journal(p, raise_=True)
        self._payments[p.id] = p
        self._on_wire.add(p.id)
        log.info("payment_started", payment=p.id, connector=connector, by=by,
                 preauth_cents=p.preauth_cents)  # fmt: skip
        task = self._spawn(self._pre_authorise(p, connector))
        self._preauths[p.id] = task
        task.add_done_callback(lambda _: self._preauths.pop(p.id, None))
        return p

    async def present_card(self, connector: str | None, *, by: str) -> Payment:
        """``begin`` and wait for the terminal's answer: the payment as it stands then
        (authorised and charging, declined, failed; or preauth_sent while an unknown outcome
        is being reconciled)."""
        p = self.begin(connector, by=by)
        await asyncio.wait({self._preauths[p.id]})
        current = self.payment(p.id)
        assert current is not None
        return current

    def _route(self) -> str | None:
        """The connector a card presented without one pays for: the one whose car waits for
        authorisation, the most recently plugged in first."""
        waiting = [
            rec
            for cid in self.connectors
            if (rec := self.desk.record(cid)) is not None
            and rec.phase is SessionPhase.PENDING
            and self.desk.available(cid)
            and self.desk.refusal(AuthMethod.CARD, cid) is None
        ]
        if not waiting:
            return None
        waiting.sort(key=lambda r: (r.plugged_at_s or 0.0, r.plugged_at or self.wall_clock()))
        return waiting[-1].connector

    async def _pre_authorise(self, p: Payment, connector: str | None) -> None:
        step = Step(kind=StepKind.PRE_AUTH, amount_cents=p.preauth_cents)
        try:
            async with self._lock:
                outcome = await self._run(step, p, [])
        finally:
            self._on_wire.discard(p.id)
        p = self._record(apply(p, step, outcome, at=self.wall_clock()))
        if p.state is PaymentState.AUTHORISED:
            self._authorised(p, connector)
        elif p.state is PaymentState.PREAUTH_SENT:
            # Unknown: the terminal may hold money for it. Ask (until it answers), then release
            # what nobody owns.
            self._settle_later(p.id)

    def _authorised(self, p: Payment, connector: str | None) -> None:
        target = connector if connector is not None else self._route()
        if target is None:
            self._record(no_session(p, reason="no_car_waiting", at=self.wall_clock()))
            self._settle_later(p.id)
            return
        try:
            rec = self.desk.start(target, method=AuthMethod.CARD, by="card", payment_id=p.id)
        except SessionRefused as exc:
            log.warning("payment_session_refused", payment=p.id, connector=target, error=str(exc))
            self._record(no_session(p, reason=f"session_refused: {exc}", at=self.wall_clock()))
            self._settle_later(p.id)
            return
        current = self._payments.get(p.id, p)
        if current.state is PaymentState.AUTHORISED:
            self._record(
                session_started(current, session_id=rec.id, connector=target, at=self.wall_clock())
            )

    # -- sessions ending ---------------------------------------------------------------------

    def _on_session_over(self, rec: SessionRecord, breakdown: CostBreakdown | None) -> None:
        if rec.payment_id is None:
            return
        p = self._payments.get(rec.payment_id)
        if p is None or p.state not in (PaymentState.AUTHORISED, PaymentState.CHARGING):
            return  # already settled, or settling: a second stop changes nothing
        if p.state is PaymentState.AUTHORISED:
            p = session_started(p, session_id=rec.id, connector=rec.connector, at=self.wall_clock())
        if breakdown is None:
            p = no_session(p, reason="no_transaction", at=self.wall_clock())
        else:
            p = session_ended(p, cost_cents=breakdown.total_cents, at=self.wall_clock())
        self._record(p, cost_doc=breakdown)
        self._stopping.discard(p.id)
        self._settle_later(p.id)

    # -- settling ----------------------------------------------------------------------------

    def _settle_later(self, payment_id: str) -> None:
        running = self._settling.get(payment_id)
        if running is not None and not running.done():
            return
        task = self._spawn(self._settle(payment_id))
        self._settling[payment_id] = task
        task.add_done_callback(
            lambda t: (
                self._settling.pop(payment_id, None)
                if self._settling.get(payment_id) is t
                else None
            )
        )

    async def _settle(self, payment_id: str) -> None:
        """Run the payment's due commands until it is final (retrying what did not get through)."""
        await self.ready.wait()
        while not self._closed:
            p = self._payments.get(payment_id)
            if p is None or p.final:
                return
            step = next_step(p)
            if step is None:
                return
            if step.kind is StepKind.ENQUIRE:
                await self._reconcile_once()
                p2 = self._payments.get(payment_id)
                if p2 is not None and p2.state is p.state and not p2.final:
                    await asyncio.sleep(self.settings.retry_s)
                continue
            intent = sent(p, step, at=self.wall_clock())
            if not self._journal(intent):
                await asyncio.sleep(self.settings.retry_s)  # nothing sent without the intent
                continue
            self._payments[p.id] = intent
            self._on_wire.add(p.id)
            try:
                async with self._lock:
                    outcome = await self._run(step, intent, [])
            finally:
                self._on_wire.discard(p.id)
            self._record(apply(intent, step, outcome, at=self.wall_clock()))
            if outcome.kind is OutcomeKind.NOT_DELIVERED:
                await asyncio.sleep(self.settings.retry_s)

    async def _reconcile_once(self) -> bool:
        """Ask the terminal which pre-auths are open; settle what that decides. False: no
        answer (try again later)."""
        step = Step(kind=StepKind.ENQUIRE)
        async with self._lock:
            outcome = await self._run(step, None, [])
        if outcome.kind is not OutcomeKind.OPEN_LIST:
            return False
        self._apply_open_list(outcome)
        return True

    def _apply_open_list(self, outcome: Outcome) -> None:
        step = Step(kind=StepKind.ENQUIRE)
        for p in list(self._payments.values()):
            if (
                p.state
                in (
                    PaymentState.PREAUTH_SENT,
                    PaymentState.CAPTURE_SENT,
                    PaymentState.RELEASE_SENT,
                )
                and p.id not in self._on_wire
            ):
                after = self._record(apply(p, step, outcome, at=self.wall_clock()))
                if after.state is PaymentState.SESSION_ENDED:
                    self._settle_later(after.id)
        live = list(self._payments.values())
        for receipt in orphans(outcome.open_receipts, live):
            self._release_orphan(receipt)

    def _release_orphan(self, receipt: int) -> None:
        """An open pre-auth no payment will settle: released, journalled as its own row."""
        now = self.wall_clock()
        p = Payment(
            id=self.new_id(),
            terminal=self.settings.id,
            state=PaymentState.SESSION_ENDED,
            preauth_cents=0,
            receipt_number=receipt,
            cost_cents=0,
            final_cents=0,
            reason="orphan",
            created_at=now,
            updated_at=now,
        )
        if not self._journal(p):
            return
        self._payments[p.id] = p
        log.warning("payment_orphan_release", payment=p.id, receipt=receipt)
        self._settle_later(p.id)

    async def _reconcile_until_done(self) -> None:
        """Start-up: register, status, the open list against the journal; then ready."""
        while not self._closed:
            try:
                async with self._lock:
                    await self.terminal.register()
                    status = await self.terminal.status()
            except (TerminalUnavailable, TerminalBusy, TerminalRefused, TerminalMisuse) as exc:
                log.warning("terminal_unavailable", terminal=self.settings.id, error=str(exc))
                await asyncio.sleep(self.settings.retry_s)
                continue
            self.terminal_status = status.terminal_status
            if self.terminal_status not in (None, STATUS_READY, STATUS_END_OF_DAY_NEEDED):
                log.error(
                    "terminal_needs_service", terminal=self.settings.id,
                    status=f"{self.terminal_status:02X}",
                )  # fmt: skip
            self._restart_payments()
            if not await self._reconcile_once():
                await asyncio.sleep(self.settings.retry_s)
                continue
            break
        if self._closed:
            return
        log.info(
            "payments_ready",
            terminal=self.settings.id,
            live=[f"{p.id}:{p.state.value}" for p in self._payments.values() if not p.final],
        )
        self.ready.set()
        for p in list(self._payments.values()):
            if next_step(p) is not None:
                self._settle_later(p.id)
        if self.terminal_status == STATUS_END_OF_DAY_NEEDED:
            self._spawn(self._end_of_day())

    def _restart_payments(self) -> None:
        """Each journalled payment, once, as the restart finds it."""
        if self._restarted:
            return
        self._restarted = True
        for p in list(self._payments.values()):
            if p.final or p.id in self._settling:
                continue
            try:
                self._restart_one(p)
            except Exception as exc:  # one payment's bug must not keep the terminal unready
                log.exception("payment_restart_failed", payment=p.id, error=repr(exc))

    def _restart_one(self, p: Payment) -> None:
        """One journalled payment as the restart finds it."""
        found = self.journal.session_of_payment(p.id)
        session_open: bool | None = None
        if found is not None:
            session_open = found[1] not in (SessionPhase.FINISHING, SessionPhase.CLOSED)
        action = on_restart(p, session_open=session_open)
        now = self.wall_clock()
        if action is RestartAction.RELEASE:
            self._record(no_session(p, reason="no_session_after_restart", at=now))
        elif action is RestartAction.RESUME and found is not None:
            if p.state is PaymentState.AUTHORISED:
                cid = self._connector_of(found[0]) or p.connector or ""
                self._record(session_started(p, session_id=found[0], connector=cid, at=now))
        elif action is RestartAction.END_SESSION and found is not None:
            rec = self.desk.store.get(found[0])
            if rec is None:
                return
            bound = p
            if p.state is PaymentState.AUTHORISED:
                bound = session_started(p, session_id=rec.id, connector=rec.connector, at=now)
            try:
                breakdown: CostBreakdown | None = self.pricing.final_cost(rec)
            except PaymentError:
                breakdown = None
            if breakdown is None:
                self._record(no_session(bound, reason="unpriced", at=now))
            else:
                self._record(
                    session_ended(bound, cost_cents=breakdown.total_cents, at=now),
                    cost_doc=breakdown,
                )

    def _connector_of(self, session_id: str) -> str | None:
        rec = self.desk.store.get(session_id)
        return None if rec is None else rec.connector

    async def _end_of_day(self) -> bool:
        """End of day when the terminal asks for it or the day is over, and only with nothing
        open (§7). True when it ran."""
        async with self._lock:
            try:
                if await self.terminal.open_pre_auths():
                    return False
                await self.terminal.end_of_day()
            except (
                TerminalUnavailable,
                TerminalBusy,
                TerminalRefused,
                PaymentOutcomeUnknown,
            ) as exc:
                log.warning("end_of_day_failed", terminal=self.settings.id, error=str(exc))
                return False
        self.terminal_status = STATUS_READY
        log.info("end_of_day_done", terminal=self.settings.id)
        return True

    # -- the terminal ------------------------------------------------------------------------

    async def _run(self, step: Step, p: Payment | None, lines: list[str]) -> Outcome:
        """One command on the terminal, its exceptions as an Outcome (caller holds the lock)."""
        t = self.terminal
        try:
            if step.kind is StepKind.PRE_AUTH:
                assert step.amount_cents is not None
                info = await t.pre_authorise(step.amount_cents, on_print=lines.append)
                return Outcome(
                    kind=OutcomeKind.DONE,
                    receipt_number=info.receipt_number,
                    trace_number=info.trace_number,
                    terminal_id=info.terminal_id,
                    masked_pan=info.masked_pan,
                    card_name=info.card_name,
                    aid=info.aid,
                    amount_cents=info.amount_cents,
                    receipt_lines=tuple(lines),
                )
            if step.kind is StepKind.ENQUIRE:
                return Outcome(kind=OutcomeKind.OPEN_LIST, open_receipts=await t.open_pre_auths())
            assert p is not None and step.receipt_number is not None
            if step.kind is StepKind.CAPTURE:
                assert step.amount_cents is not None
                result = await t.settle(
                    receipt_number=step.receipt_number,
                    pre_authorised_cents=p.preauth_cents,
                    final_cents=step.amount_cents,
                    on_print=lines.append,
                )
            else:
                result = await t.release(step.receipt_number, on_print=lines.append)
            status = result.status
            return Outcome(
                kind=OutcomeKind.DONE,
                receipt_number=None if status is None else status.receipt_number,
                trace_number=None if status is None else status.trace_number,
                receipt_lines=result.receipt_lines,
            )
        except TerminalRefused as exc:
            log.info("terminal_refused", step=step.kind.value, payment=p.id if p else None,
                     result_code=f"{exc.result_code:02X}")  # fmt: skip
            return Outcome(
                kind=OutcomeKind.REFUSED,
                result_code=exc.result_code,
                open_receipts=exc.open_receipts,
                receipt_lines=tuple(lines),
            )
        except (TerminalBusy, TerminalUnavailable, TerminalMisuse) as exc:
            log.warning("terminal_not_delivered", step=step.kind.value,
                        payment=p.id if p else None, error=str(exc))  # fmt: skip
            code = exc.result_code if isinstance(exc, TerminalBusy) else None
            return Outcome(kind=OutcomeKind.NOT_DELIVERED, result_code=code, detail=str(exc))
        except PaymentOutcomeUnknown as exc:
            self._doubt_since = asyncio.get_running_loop().time()
            log.warning("terminal_outcome_unknown", step=step.kind.value,
                        payment=p.id if p else None, error=str(exc))  # fmt: skip
            return Outcome(kind=OutcomeKind.UNKNOWN, detail=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose track of money: treat as unknown
            log.exception("terminal_call_crashed", step=step.kind.value, error=repr(exc))
            kind = (
                OutcomeKind.NOT_DELIVERED if step.kind is StepKind.ENQUIRE else OutcomeKind.UNKNOWN
            )
            return Outcome(kind=kind, detail=repr(exc))

    # -- the journal -------------------------------------------------------------------------

    def _journal(self, p: Payment, *, raise_: bool = False) -> bool:
        try:
            self.journal.save(p)
        except StoreError as exc:
            if self._journal_error is None:
                log.error("payment_journal_failed", payment=p.id, error=str(exc))
            self._journal_error = str(exc)
            self._probed_s = self.clock()
            if raise_:
                raise PaymentRefused(f"the payment journal cannot be written: {exc}") from exc
            return False
        return True

    def _record(self, p: Payment, *, cost_doc: CostBreakdown | None = None) -> Payment:
        """Journal a result and tell the listeners. A result that cannot be written stays in
        memory (the journal keeps the intent: a restart reconciles from there)."""
        before = self._payments.get(p.id)
        self._journal(p)
        self._payments[p.id] = p
        if before is None or before.state is not p.state:
            log.info(
                "payment_" + p.state.value,
                payment=p.id,
                connector=p.connector,
                session=p.session_id,
                receipt=p.receipt_number,
                preauth_cents=p.preauth_cents,
                final_cents=p.final_cents,
                captured_cents=p.captured_cents,
                masked_pan=p.masked_pan,
                reason=p.reason,
            )
            event = {"event": "payment_" + p.state.value, "payment": payment_document(p)}
            if cost_doc is not None:
                event["cost"] = cost_document(cost_doc)
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception as exc:
                    log.error("payment_listener_failed", payment=p.id, error=repr(exc))
        if p.final:
            # Done with: the journal has it (``payment`` reads it from there).
            self._payments.pop(p.id, None)
        return p

    def _gate(self, method: AuthMethod) -> str | None:
        if method is AuthMethod.CARD and self._journal_error is not None:
            return f"the payment journal cannot be written: {self._journal_error}"
        return None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("payment_task_failed", error=repr(task.exception()))

    # -- reading -----------------------------------------------------------------------------

    def payment(self, payment_id: str) -> Payment | None:
        return self._payments.get(payment_id) or self.journal.get(payment_id)

    def live(self) -> list[Payment]:
        return [p for p in self._payments.values() if not p.final]

    def status_document(self) -> dict[str, Any]:
        return {
            "terminal": self.settings.id,
            "link": self.settings.describe(),
            "ready": self.ready.is_set(),
            "terminal_status": None
            if self.terminal_status is None
            else f"{self.terminal_status:02X}",
            "connectors": list(self.connectors),
            "journal_error": self._journal_error,
            "live": [payment_document(p) for p in self.live()],
        }


def payment_document(p: Payment) -> dict[str, Any]:
    """A payment as JSON for the socket, MQTT and the report (masked PAN only)."""
    return {
        "id": p.id,
        "terminal": p.terminal,
        "state": p.state.value,
        "connector": p.connector,
        "session_id": p.session_id,
        "preauth_cents": p.preauth_cents,
        "cost_cents": p.cost_cents,
        "final_cents": p.final_cents,
        "captured_cents": p.captured_cents,
        "receipt_number": p.receipt_number,
        "trace_number": p.trace_number,
        "settle_receipt_number": p.settle_receipt_number,
        "settle_trace_number": p.settle_trace_number,
        "terminal_id": p.terminal_id,
        "masked_pan": p.masked_pan,
        "card_name": p.card_name,
        "result_code": None if p.result_code is None else f"{p.result_code:02X}",
        "reason": p.reason,
        "receipt_text": p.receipt_text,
        "created_at": p.created_at.isoformat(),
        "updated_at": p.updated_at.isoformat(),
    }


def cost_document(b: CostBreakdown) -> dict[str, Any]:
    return {
        "currency": b.currency,
        "total_cents": b.total_cents,
        "energy_cents": b.energy_cents,
        "time_cents": b.time_cents,
        "idle_fee_cents": b.idle_fee_cents,
        "session_fee_cents": b.session_fee_cents,
        "vat_cents": b.vat_cents,
        "net_cents": b.net_cents,
        "vat_rate_pct": str(b.vat_rate_pct),
        "energy_wh": str(b.energy_wh),
        "session_s": str(b.session_s),
        "billable_idle_s": str(b.billable_idle_s),
    }


# -- socket commands (`evsite pay`, `evsite payments`, `evsite tariff`) ------------------------

_PAYLOAD = ConfigDict(extra="forbid", strict=True, frozen=True)


class PaymentStartRequest(BaseModel):
    model_config = _PAYLOAD
    connector: str | None = None


class PaymentGetRequest(BaseModel):
    model_config = _PAYLOAD
    id: str


class PaymentListRequest(BaseModel):
    model_config = _PAYLOAD
    limit: int = Field(default=20, ge=1, le=1000)


def payment_commands(
    payments: PaymentDesk | None, tariff: Callable[[], Tariff | None]
) -> dict[str, Command[Any]]:
    """``payment_start`` (a card presented: the terminal then reads it), ``payment_get``,
    ``payment_list`` and ``tariff`` (the price shown before a session)."""

    def show_tariff(_: NoArguments) -> dict[str, Any]:
        t = tariff()
        return {"tariff": None if t is None else price_display(t)}

    commands: dict[str, Command[Any]] = {"tariff": Command(NoArguments, show_tariff)}
    if payments is None:
        return commands

    def start(req: PaymentStartRequest) -> dict[str, Any]:
        try:
            p = payments.begin(req.connector, by="cli")
        except PaymentRefused as exc:
            raise CommandRefused(str(exc), field="connector" if req.connector else None) from exc
        t = tariff()
        return {
            "payment": payment_document(p),
            "price": None if t is None else price_display(t),
        }

    def get(req: PaymentGetRequest) -> dict[str, Any]:
        p = payments.payment(req.id)
        if p is None:
            raise CommandRefused(f"no payment {req.id}", field="id")
        return {"payment": payment_document(p)}

    def listing(req: PaymentListRequest) -> dict[str, Any]:
        return {
            "terminal": payments.status_document(),
            "payments": [payment_document(p) for p in payments.journal.recent(req.limit)],
        }

    commands.update(
        {
            "payment_start": Command(PaymentStartRequest, start),
            "payment_get": Command(PaymentGetRequest, get),
            "payment_list": Command(PaymentListRequest, listing),
        }
    )
    return commands
