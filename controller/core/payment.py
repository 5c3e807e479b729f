"""Core layer: the card-payment state machine, as data and pure transitions.

One ``Payment`` per pre-authorisation attempt. The shell (controller.app.payments) is a loop:

1. ``step = next_step(payment)`` says which terminal command is due (or none);
2. ``intent = sent(payment, step)`` is the row to journal (fsync) BEFORE the command goes out;
3. the command runs; its ``Outcome`` goes through ``apply(intent, step, outcome)``, whose
   result is journalled too.

States (``PaymentState``)::

    preauth_sent --approved--> authorised --session started--> charging --session ended-->
        |  \\--declined/refused/not delivered--> declined | failed        session_ended
        \\--outcome unknown: enquire--> failed (orphans released)         |        |
                                                                capture_sent  release_sent
                                                                  |   \\--unknown: enquire
                                                                captured      released

A ``*_sent`` state in the journal means: the command may have reached the terminal and no
final answer was recorded. Nothing is ever sent again for it before the open pre-auth enquiry
(06 23 87 FF FF) says whether the receipt is still open: that is what makes a capture
idempotent on the receipt number (reference/payment.md §7), whatever crashed when.

Money is in integer cents; times are aware datetimes passed in. No I/O, clock or logging.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

# 06 1E B8 to a capture: the receipt is not an open pre-auth (anymore).
RESULT_NOT_OPEN = 0xB8
# 06 1E B4 to a release: already reversed.
RESULT_ALREADY_REVERSED = 0xB4


class PaymentState(StrEnum):
    PREAUTH_SENT = "preauth_sent"  # 06 22 going out / gone out, no answer recorded yet
    AUTHORISED = "authorised"  # approved: the receipt holds money; no session yet
    CHARGING = "charging"  # its session runs
    SESSION_ENDED = "session_ended"  # final amount known; capture or release due
    CAPTURE_SENT = "capture_sent"  # 06 23 / 06 24 going out / gone out
    RELEASE_SENT = "release_sent"  # 06 25 going out / gone out
    CAPTURED = "captured"  # final: the final amount was taken, the rest released
    RELEASED = "released"  # final: the whole pre-authorisation was released
    DECLINED = "declined"  # final: the terminal said no; nothing held
    FAILED = "failed"  # final: no session was paid; anything held was released as orphan


FINAL_STATES = frozenset(
    {PaymentState.CAPTURED, PaymentState.RELEASED, PaymentState.DECLINED, PaymentState.FAILED}
)
# States whose receipt holds money on the terminal that this payment will settle itself.
HOLDING_STATES = frozenset(
    {
        PaymentState.AUTHORISED,
        PaymentState.CHARGING,
        PaymentState.SESSION_ENDED,
        PaymentState.CAPTURE_SENT,
        PaymentState.RELEASE_SENT,
    }
)
SENT_STATES = frozenset(
    {PaymentState.PREAUTH_SENT, PaymentState.CAPTURE_SENT, PaymentState.RELEASE_SENT}
)

# Which state may follow which (checked by ``apply`` and by the journal's tests).
TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    PaymentState.PREAUTH_SENT: frozenset(
        {
            PaymentState.AUTHORISED,
            PaymentState.DECLINED,
            PaymentState.FAILED,
        }
    ),
    PaymentState.AUTHORISED: frozenset({PaymentState.CHARGING, PaymentState.SESSION_ENDED}),
    PaymentState.CHARGING: frozenset({PaymentState.SESSION_ENDED}),
    PaymentState.SESSION_ENDED: frozenset(
        {PaymentState.CAPTURE_SENT, PaymentState.RELEASE_SENT, PaymentState.FAILED}
    ),
    PaymentState.CAPTURE_SENT: frozenset(
        {PaymentState.CAPTURED, PaymentState.SESSION_ENDED, PaymentState.FAILED}
    ),
    PaymentState.RELEASE_SENT: frozenset(
        {PaymentState.RELEASED, PaymentState.SESSION_ENDED, PaymentState.FAILED}
    ),
    PaymentState.CAPTURED: frozenset(),
    PaymentState.RELEASED: frozenset(),
    PaymentState.DECLINED: frozenset(),
    PaymentState.FAILED: frozenset(),
}


class PaymentError(Exception):
    """A transition the machine does not allow (a bug in the caller)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """One payment's row. ``masked_pan`` is the terminal's masked PAN, never more."""

    id: str
    terminal: str
    state: PaymentState
    preauth_cents: int
    created_at: datetime
    updated_at: datetime
    connector: str | None = None  # None until the card is routed to a connector
    session_id: str | None = None
    final_cents: int | None = None  # what the session cost, capped at the pre-auth
    cost_cents: int | None = None  # what the session cost (may exceed final after a meter jump)
    captured_cents: int | None = None  # what the terminal booked (0 for a release)
    receipt_number: int | None = None  # the pre-auth's receipt: the key of its capture
    trace_number: int | None = None
    settle_receipt_number: int | None = None  # the capture's / release's own receipt
    settle_trace_number: int | None = None
    terminal_id: str | None = None
    masked_pan: str | None = None
    card_name: str | None = None
    aid: str | None = None
    result_code: int | None = None
    reason: str | None = None  # why it ended where it did (declined, outcome_unknown...)
    attempts: int = 0  # settlement commands sent for it (a retry is never blind)
    receipt_text: str = ""  # the terminal's receipts, as printed (masked PAN only)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def holds_money(self) -> bool:
        return self.state in HOLDING_STATES and self.receipt_number is not None


# --- terminal commands and their outcomes, as data ---------------------------------------------


class StepKind(StrEnum):
    PRE_AUTH = "pre_auth"
    CAPTURE = "capture"  # settle at final_cents > 0 (06 23 / 06 24 per profile)
    RELEASE = "release"  # 06 25: the whole pre-auth
    ENQUIRE = "enquire"  # 06 23 87 FF FF: which receipts are open


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    kind: StepKind
    amount_cents: int | None = None  # pre-auth amount, or the final amount of a capture
    receipt_number: int | None = None


class OutcomeKind(StrEnum):
    DONE = "done"  # 06 0F: approved / booked
    REFUSED = "refused"  # declined, 84 xx, 06 1E xx: nothing booked by this command
    NOT_DELIVERED = "not_delivered"  # busy or unavailable: nothing booked, try again later
    UNKNOWN = "unknown"  # may have been booked: enquire before anything else
    OPEN_LIST = "open_list"  # the enquiry's answer


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    kind: OutcomeKind
    result_code: int | None = None
    amount_cents: int | None = None
    receipt_number: int | None = None  # the terminal's receipt for this booking
    trace_number: int | None = None
    terminal_id: str | None = None
    masked_pan: str | None = None
    card_name: str | None = None
    aid: str | None = None
    open_receipts: tuple[int, ...] = ()
    receipt_lines: tuple[str, ...] = ()
    detail: str = ""


_SENT_BY_STEP = {
    StepKind.PRE_AUTH: PaymentState.PREAUTH_SENT,
    StepKind.CAPTURE: PaymentState.CAPTURE_SENT,
    StepKind.RELEASE: PaymentState.RELEASE_SENT,
}

# --- the machine ----------------------------------------------------------------------------


def new_payment(
    *, payment_id: str, terminal: str, preauth_cents: int, connector: str | None, at: datetime
) -> Payment:
    """A payment about to send its pre-authorisation: its first journal row."""
    if preauth_cents <= 0:
        raise PaymentError(f"a pre-authorisation needs an amount > 0, got {preauth_cents}")
    return Payment(
        id=payment_id,
        terminal=terminal,
        state=PaymentState.PREAUTH_SENT,
        preauth_cents=preauth_cents,
        connector=connector,
        created_at=at,
        updated_at=at,
    )


def next_step(p: Payment) -> Step | None:
    """The terminal command this payment waits for, if any (none while it charges)."""
    if p.state in (PaymentState.PREAUTH_SENT, PaymentState.CAPTURE_SENT, PaymentState.RELEASE_SENT):
        return Step(kind=StepKind.ENQUIRE)
    if p.state is PaymentState.SESSION_ENDED:
        if p.final_cents is None or p.receipt_number is None:
            raise PaymentError(f"payment {p.id}: session ended without a final amount or receipt")
        if p.final_cents == 0:
            return Step(kind=StepKind.RELEASE, receipt_number=p.receipt_number)
        return Step(
            kind=StepKind.CAPTURE, amount_cents=p.final_cents, receipt_number=p.receipt_number
        )
    return None


def sent(p: Payment, step: Step, *, at: datetime) -> Payment:
    """The intent to journal before ``step`` goes out (an enquiry changes nothing)."""
    if step.kind is StepKind.ENQUIRE:
        return p
    if step.kind is StepKind.PRE_AUTH:
        if p.state is not PaymentState.PREAUTH_SENT:
            raise PaymentError(f"payment {p.id}: a pre-auth from {p.state}")
        return p
    target = (
        PaymentState.CAPTURE_SENT if step.kind is StepKind.CAPTURE else PaymentState.RELEASE_SENT
    )
    return _move(p, target, at=at, attempts=p.attempts + 1)


def apply(p: Payment, step: Step, outcome: Outcome, *, at: datetime) -> Payment:
    """The payment after ``step`` ended in ``outcome`` (``p`` is the journalled intent)."""
    kind = outcome.kind
    lines = _with_receipt(p.receipt_text, outcome.receipt_lines)
    if step.kind is StepKind.PRE_AUTH:
        if kind is OutcomeKind.DONE:
            if outcome.receipt_number is None:
                # Approved without a receipt number: money may be held under a number we do
                # not know; only the enquiry can find it.
                return replace(p, reason="approved_without_receipt", updated_at=at)
            held = p.preauth_cents
            if outcome.amount_cents is not None and 0 < outcome.amount_cents < held:
                # A partial approval: only that much is held, so the stop rule and the capture
                # must not count on more.
                held = outcome.amount_cents
            return _move(
                p,
                PaymentState.AUTHORISED,
                at=at,
                preauth_cents=held,
                receipt_number=outcome.receipt_number,
                trace_number=outcome.trace_number,
                terminal_id=outcome.terminal_id,
                masked_pan=outcome.masked_pan,
                card_name=outcome.card_name,
                aid=outcome.aid,
                result_code=0,
                receipt_text=lines,
            )
        if kind is OutcomeKind.REFUSED:
            return _move(
                p, PaymentState.DECLINED, at=at, result_code=outcome.result_code,
                reason="declined", receipt_text=lines,
            )  # fmt: skip
        if kind is OutcomeKind.NOT_DELIVERED:
            return _move(
                p, PaymentState.FAILED, at=at, result_code=outcome.result_code,
                reason="terminal_unavailable",
            )  # fmt: skip
        return replace(p, reason="outcome_unknown", updated_at=at)  # stays preauth_sent

    if step.kind is StepKind.ENQUIRE:
        if kind is not OutcomeKind.OPEN_LIST:
            return p  # no answer: ask again later
        still_open = p.receipt_number is not None and p.receipt_number in outcome.open_receipts
        if p.state is PaymentState.PREAUTH_SENT:
            # We never learnt the receipt: whatever the terminal holds for it is an orphan,
            # released by the caller (``orphans``). Nothing is charged for this payment.
            return _move(p, PaymentState.FAILED, at=at, reason="preauth_outcome_unknown")
        if p.state is PaymentState.CAPTURE_SENT:
            if still_open:
                return _move(p, PaymentState.SESSION_ENDED, at=at)  # not booked: send again
            return _move(
                p, PaymentState.CAPTURED, at=at, captured_cents=p.final_cents,
                reason="confirmed_by_enquiry",
            )  # fmt: skip
        if p.state is PaymentState.RELEASE_SENT:
            if still_open:
                return _move(p, PaymentState.SESSION_ENDED, at=at)
            return _move(
                p, PaymentState.RELEASED, at=at, captured_cents=0, reason="confirmed_by_enquiry"
            )
        return p

    # capture or release
    expected = (
        PaymentState.CAPTURE_SENT if step.kind is StepKind.CAPTURE else PaymentState.RELEASE_SENT
    )
    if p.state is not expected:
        raise PaymentError(f"payment {p.id}: {step.kind} outcome in state {p.state}")
    if kind is OutcomeKind.DONE:
        if step.kind is StepKind.CAPTURE:
            # Booked: the terminal took what we asked for (the final amount), released the rest.
            return _move(
                p, PaymentState.CAPTURED, at=at, captured_cents=p.final_cents,
                settle_receipt_number=outcome.receipt_number,
                settle_trace_number=outcome.trace_number, result_code=0, receipt_text=lines,
            )  # fmt: skip
        return _move(
            p, PaymentState.RELEASED, at=at, captured_cents=0,
            settle_receipt_number=outcome.receipt_number,
            settle_trace_number=outcome.trace_number, result_code=0, receipt_text=lines,
        )  # fmt: skip
    if kind is OutcomeKind.NOT_DELIVERED:
        return _move(p, PaymentState.SESSION_ENDED, at=at, result_code=outcome.result_code)
    if kind is OutcomeKind.UNKNOWN:
        return replace(p, reason="outcome_unknown", updated_at=at)  # stays *_sent: enquire
    # refused
    code = outcome.result_code
    if step.kind is StepKind.RELEASE and code in (RESULT_ALREADY_REVERSED, RESULT_NOT_OPEN):
        return _move(
            p, PaymentState.RELEASED, at=at, captured_cents=0, result_code=code,
            reason="not_open_on_terminal",
        )  # fmt: skip
    if (
        step.kind is StepKind.CAPTURE
        and code == RESULT_NOT_OPEN
        and p.receipt_number not in outcome.open_receipts
        and p.attempts > 1
    ):
        # An earlier attempt of ours got through (its answer was lost): booked once, not twice.
        return _move(
            p, PaymentState.CAPTURED, at=at, captured_cents=p.final_cents, result_code=code,
            reason="confirmed_by_terminal",
        )  # fmt: skip
    return _move(
        p, PaymentState.FAILED, at=at, result_code=code, reason=f"{step.kind}_refused",
        receipt_text=lines,
    )  # fmt: skip


def session_started(p: Payment, *, session_id: str, connector: str, at: datetime) -> Payment:
    return _move(p, PaymentState.CHARGING, at=at, session_id=session_id, connector=connector)


def session_ended(p: Payment, *, cost_cents: int, at: datetime) -> Payment:
    """The session is over and cost ``cost_cents``: capture that, never above the pre-auth
    (0: release the whole pre-authorisation)."""
    if cost_cents < 0:
        raise PaymentError(f"payment {p.id}: negative cost {cost_cents}")
    final = min(cost_cents, p.preauth_cents)
    return _move(p, PaymentState.SESSION_ENDED, at=at, cost_cents=cost_cents, final_cents=final)


def no_session(p: Payment, *, reason: str, at: datetime) -> Payment:
    """Approved, but no session will take it (the car left, the connector refused): release."""
    return _move(p, PaymentState.SESSION_ENDED, at=at, cost_cents=0, final_cents=0, reason=reason)


def orphans(open_receipts: tuple[int, ...], payments: list[Payment]) -> tuple[int, ...]:
    """Open pre-auths on the terminal that no live payment of ours will settle: to release.

    A payment in a holding state settles its own receipt (captured at the session's end); every
    other open receipt was left by a crash before its approval reached us (cases 8 and 19), or
    by a payment that failed: none of them will ever be captured, so the card is released.
    """
    held = {p.receipt_number for p in payments if p.holds_money}
    return tuple(r for r in open_receipts if r not in held)


class RestartAction(StrEnum):
    NOTHING = "nothing"  # final
    ENQUIRE = "enquire"  # a command's outcome is unknown
    SETTLE = "settle"  # send the capture / release (next_step)
    RESUME = "resume"  # its session still runs: wait for its end
    END_SESSION = "end_session"  # its session ended while we were away: price it, settle
    RELEASE = "release"  # approved but no session ever started: release it


def on_restart(p: Payment, *, session_open: bool | None) -> RestartAction:
    """What to do with a journalled payment after a restart. ``session_open``: whether its
    session is still in a transaction (None: no session was ever stored for it)."""
    if p.final:
        return RestartAction.NOTHING
    if p.state in SENT_STATES:
        return RestartAction.ENQUIRE
    if p.state is PaymentState.SESSION_ENDED:
        return RestartAction.SETTLE
    if session_open is None:
        return RestartAction.RELEASE
    return RestartAction.RESUME if session_open else RestartAction.END_SESSION


def _move(p: Payment, state: PaymentState, *, at: datetime, **changes: object) -> Payment:
    if state is not p.state and state not in TRANSITIONS[p.state]:
        raise PaymentError(f"payment {p.id}: {p.state} -> {state} is not allowed")
    return replace(p, state=state, updated_at=at, **changes)  # type: ignore[arg-type]


def _with_receipt(text: str, lines: tuple[str, ...]) -> str:
    if not lines:
        return text
    block = "\n".join(lines)
    return f"{text}\n\n{block}" if text else block


__all__ = [
    "FINAL_STATES",
    "HOLDING_STATES",
    "SENT_STATES",
    "TRANSITIONS",
    "Outcome",
    "OutcomeKind",
    "Payment",
    "PaymentError",
    "PaymentState",
    "RestartAction",
    "Step",
    "StepKind",
    "apply",
    "new_payment",
    "next_step",
    "no_session",
    "on_restart",
    "orphans",
    "sent",
    "session_ended",
    "session_started",
]
