"""The pure payment machine: each transition by hand, and a property over every failure sequence.

The property drives the machine the way the shell does (journal before every command, the
result after it) against a model of the terminal's books, with faults drawn by hypothesis at
every command: the answer lost before or after the terminal booked it, the terminal busy, the
controller killed before the command or after the booking. Whatever happens, once the
controller has reconciled (restart, open pre-auth enquiry, orphans released), no pre-auth was
captured twice, none is left open, and every capture is the session's cost capped at the
pre-authorised amount.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.payment import (
    RESULT_ALREADY_REVERSED,
    RESULT_NOT_OPEN,
    TRANSITIONS,
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

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PRE = Step(kind=StepKind.PRE_AUTH, amount_cents=2500)
ENQ = Step(kind=StepKind.ENQUIRE)


def _authorised(receipt: int = 7) -> Payment:
    p = new_payment(payment_id="p1", terminal="t", preauth_cents=2500, connector="cp1", at=T0)
    return apply(
        p,
        PRE,
        Outcome(
            kind=OutcomeKind.DONE,
            receipt_number=receipt,
            trace_number=3,
            masked_pan="559884******8074",
            receipt_lines=("PRE-AUTHORISATION", "Card 559884******8074"),
        ),
        at=T0,
    )


def test_a_partial_approval_caps_the_stop_rule_and_the_capture_at_what_is_held() -> None:
    p = new_payment(payment_id="p1", terminal="t", preauth_cents=2500, connector="cp1", at=T0)
    approved = Outcome(kind=OutcomeKind.DONE, receipt_number=7, amount_cents=1500)
    p = apply(p, PRE, approved, at=T0)
    assert p.state is PaymentState.AUTHORISED and p.preauth_cents == 1500
    p = session_ended(
        session_started(p, session_id="s1", connector="cp1", at=T0), cost_cents=2000, at=T0
    )
    assert next_step(p) == Step(kind=StepKind.CAPTURE, amount_cents=1500, receipt_number=7)
    # An amount the terminal repeats (or one above the request) changes nothing.
    for amount in (2500, 3000, 0, None):
        q = new_payment(payment_id="p2", terminal="t", preauth_cents=2500, connector=None, at=T0)
        q = apply(
            q, PRE, Outcome(kind=OutcomeKind.DONE, receipt_number=8, amount_cents=amount), at=T0
        )
        assert q.preauth_cents == 2500


def test_happy_path_pre_auth_charge_capture() -> None:
    p = _authorised()
    assert p.state is PaymentState.AUTHORISED and p.receipt_number == 7 and p.holds_money
    assert "559884******8074" in p.receipt_text
    p = session_started(p, session_id="s1", connector="cp1", at=T0)
    p = session_ended(p, cost_cents=1234, at=T0)
    step = next_step(p)
    assert step == Step(kind=StepKind.CAPTURE, amount_cents=1234, receipt_number=7)
    intent = sent(p, step, at=T0)
    assert intent.state is PaymentState.CAPTURE_SENT and intent.attempts == 1
    done = apply(intent, step, Outcome(kind=OutcomeKind.DONE, receipt_number=8), at=T0)
    assert done.state is PaymentState.CAPTURED
    assert done.captured_cents == 1234 and done.settle_receipt_number == 8
    assert next_step(done) is None and done.final and not done.holds_money


def test_cost_above_the_pre_auth_captures_the_pre_auth_and_zero_releases() -> None:
    over = session_ended(
        session_started(_authorised(), session_id="s", connector="cp1", at=T0),
        cost_cents=9999,
        at=T0,
    )
    assert over.cost_cents == 9999 and over.final_cents == 2500
    assert next_step(over) == Step(kind=StepKind.CAPTURE, amount_cents=2500, receipt_number=7)
    zero = session_ended(
        session_started(_authorised(), session_id="s", connector="cp1", at=T0),
        cost_cents=0,
        at=T0,
    )
    assert next_step(zero) == Step(kind=StepKind.RELEASE, receipt_number=7)
    released = apply(
        sent(zero, Step(kind=StepKind.RELEASE, receipt_number=7), at=T0),
        Step(kind=StepKind.RELEASE, receipt_number=7),
        Outcome(kind=OutcomeKind.DONE),
        at=T0,
    )
    assert released.state is PaymentState.RELEASED and released.captured_cents == 0


def test_declined_unavailable_and_unknown_pre_auths() -> None:
    p = new_payment(payment_id="p", terminal="t", preauth_cents=2500, connector=None, at=T0)
    declined = apply(p, PRE, Outcome(kind=OutcomeKind.REFUSED, result_code=0x6C), at=T0)
    assert declined.state is PaymentState.DECLINED and declined.result_code == 0x6C
    failed = apply(p, PRE, Outcome(kind=OutcomeKind.NOT_DELIVERED), at=T0)
    assert failed.state is PaymentState.FAILED and failed.final
    unknown = apply(p, PRE, Outcome(kind=OutcomeKind.UNKNOWN), at=T0)
    assert unknown.state is PaymentState.PREAUTH_SENT and next_step(unknown) == ENQ
    # approved without a receipt number: as unknown as no answer at all
    nameless = apply(p, PRE, Outcome(kind=OutcomeKind.DONE), at=T0)
    assert nameless.state is PaymentState.PREAUTH_SENT
    # the enquiry ends it; whatever it held is an orphan for the caller to release
    listed = Outcome(kind=OutcomeKind.OPEN_LIST, open_receipts=(5,))
    ended = apply(unknown, ENQ, listed, at=T0)
    assert ended.state is PaymentState.FAILED and ended.reason == "preauth_outcome_unknown"
    assert orphans((5,), [ended]) == (5,)


def test_a_capture_whose_answer_was_lost_is_settled_by_the_enquiry_never_resent_blind() -> None:
    p = session_ended(
        session_started(_authorised(), session_id="s", connector="cp1", at=T0),
        cost_cents=1000,
        at=T0,
    )
    step = next_step(p)
    assert step is not None
    lost = apply(sent(p, step, at=T0), step, Outcome(kind=OutcomeKind.UNKNOWN), at=T0)
    assert lost.state is PaymentState.CAPTURE_SENT
    assert next_step(lost) == ENQ  # not the capture again
    booked = apply(lost, ENQ, Outcome(kind=OutcomeKind.OPEN_LIST, open_receipts=()), at=T0)
    assert booked.state is PaymentState.CAPTURED and booked.captured_cents == 1000
    not_booked = apply(lost, ENQ, Outcome(kind=OutcomeKind.OPEN_LIST, open_receipts=(7,)), at=T0)
    assert not_booked.state is PaymentState.SESSION_ENDED and next_step(not_booked) == step
    # the retry is refused as not open (06 1E B8): an earlier attempt got through
    retry = sent(not_booked, step, at=T0)
    refused = Outcome(kind=OutcomeKind.REFUSED, result_code=RESULT_NOT_OPEN, open_receipts=())
    assert apply(retry, step, refused, at=T0).state is PaymentState.CAPTURED


def test_a_release_already_done_is_released() -> None:
    p = no_session(_authorised(), reason="car left", at=T0)
    step = next_step(p)
    assert step is not None and step.kind is StepKind.RELEASE
    out = Outcome(kind=OutcomeKind.REFUSED, result_code=RESULT_ALREADY_REVERSED)
    assert apply(sent(p, step, at=T0), step, out, at=T0).state is PaymentState.RELEASED


def test_busy_terminal_leaves_the_settlement_due() -> None:
    p = session_ended(
        session_started(_authorised(), session_id="s", connector="cp1", at=T0),
        cost_cents=10,
        at=T0,
    )
    step = next_step(p)
    assert step is not None
    busy = apply(sent(p, step, at=T0), step, Outcome(kind=OutcomeKind.NOT_DELIVERED), at=T0)
    assert busy.state is PaymentState.SESSION_ENDED and next_step(busy) == step


@pytest.mark.parametrize(
    ("state", "session_open", "action"),
    [
        (PaymentState.PREAUTH_SENT, None, RestartAction.ENQUIRE),
        (PaymentState.AUTHORISED, None, RestartAction.RELEASE),
        (PaymentState.AUTHORISED, True, RestartAction.RESUME),
        (PaymentState.CHARGING, True, RestartAction.RESUME),
        (PaymentState.CHARGING, False, RestartAction.END_SESSION),
        (PaymentState.SESSION_ENDED, False, RestartAction.SETTLE),
        (PaymentState.CAPTURE_SENT, False, RestartAction.ENQUIRE),
        (PaymentState.RELEASE_SENT, False, RestartAction.ENQUIRE),
        (PaymentState.CAPTURED, False, RestartAction.NOTHING),
        (PaymentState.RELEASED, None, RestartAction.NOTHING),
    ],
)
def test_what_a_restart_does_from_each_journal_state(
    state: PaymentState, session_open: bool | None, action: RestartAction
) -> None:
    p = Payment(
        id="p",
        terminal="t",
        state=state,
        preauth_cents=100,
        created_at=T0,
        updated_at=T0,
        receipt_number=1,
        final_cents=10,
    )
    assert on_restart(p, session_open=session_open) is action


def test_transitions_not_in_the_table_are_refused() -> None:
    assert TRANSITIONS[PaymentState.CAPTURED] == frozenset()
    captured = Payment(
        id="p",
        terminal="t",
        state=PaymentState.CAPTURED,
        preauth_cents=1,
        created_at=T0,
        updated_at=T0,
        receipt_number=1,
    )
    with pytest.raises(PaymentError):
        session_ended(captured, cost_cents=1, at=T0)
    with pytest.raises(PaymentError):
        new_payment(payment_id="x", terminal="t", preauth_cents=0, connector=None, at=T0)


def test_orphans_spare_the_receipts_live_payments_hold() -> None:
    held = session_started(_authorised(receipt=3), session_id="s", connector="c", at=T0)
    assert orphans((3, 4), [held]) == (4,)


# --- the property ------------------------------------------------------------------------------


@dataclass
class Books:
    """The terminal's own record (a model of hil.terminal.Ledger)."""

    next_receipt: int = 1
    open: dict[int, int] = field(default_factory=dict)  # receipt -> pre-authorised cents
    captures: dict[int, list[int]] = field(default_factory=dict)
    released: set[int] = field(default_factory=set)
    # captures that reached the terminal for a receipt already captured (a blind resend: the
    # terminal refuses it, but the controller must never rely on that)
    repeats: list[int] = field(default_factory=list)

    def pre_auth(self, amount: int) -> int:
        r = self.next_receipt
        self.next_receipt += 1
        self.open[r] = amount
        return r

    def capture(self, r: int, final: int) -> bool:
        if r in self.captures:
            self.repeats.append(r)
        if r not in self.open:
            return False
        assert final <= self.open.pop(r)
        self.captures.setdefault(r, []).append(final)
        return True

    def release(self, r: int) -> bool:
        if r not in self.open:
            return False
        del self.open[r]
        self.released.add(r)
        return True


class Crash(Exception):
    pass


FAULTS = ["ok", "ok", "lost_before", "lost_after", "busy", "crash_before", "crash_after"]


class Controller:
    """The shell's loop over the core, against ``Books``, with a fault per command."""

    def __init__(self, books: Books, faults: list[str]) -> None:
        self.books = books
        self.faults = faults
        self.journal: dict[str, Payment] = {}  # what is on disk
        self.sessions: dict[str, int] = {}  # payment id -> the session's cost once it ended
        self.n = 0

    def fault(self) -> str:
        return self.faults.pop(0) if self.faults else "ok"

    def save(self, p: Payment) -> Payment:
        self.journal[p.id] = p
        return p

    def run(self, p: Payment | None, step: Step) -> Outcome:
        """One command. The intent is already journalled by the caller."""
        f = self.fault()
        if f == "crash_before":
            raise Crash
        if f == "busy":
            return Outcome(kind=OutcomeKind.NOT_DELIVERED)
        if f == "lost_before":
            return Outcome(kind=OutcomeKind.UNKNOWN)
        b = self.books
        if step.kind is StepKind.ENQUIRE:
            out = Outcome(kind=OutcomeKind.OPEN_LIST, open_receipts=tuple(b.open))
        elif step.kind is StepKind.PRE_AUTH:
            assert step.amount_cents is not None
            out = Outcome(kind=OutcomeKind.DONE, receipt_number=b.pre_auth(step.amount_cents))
        elif step.kind is StepKind.CAPTURE:
            assert step.receipt_number is not None and step.amount_cents is not None
            ok = b.capture(step.receipt_number, step.amount_cents)
            out = (
                Outcome(kind=OutcomeKind.DONE)
                if ok
                else Outcome(
                    kind=OutcomeKind.REFUSED,
                    result_code=RESULT_NOT_OPEN,
                    open_receipts=tuple(b.open),
                )
            )
        else:
            assert step.receipt_number is not None
            ok = b.release(step.receipt_number)
            out = (
                Outcome(kind=OutcomeKind.DONE)
                if ok
                else Outcome(kind=OutcomeKind.REFUSED, result_code=RESULT_ALREADY_REVERSED)
            )
        if f == "crash_after":
            raise Crash
        if f == "lost_after" and step.kind is not StepKind.ENQUIRE:
            return Outcome(kind=OutcomeKind.UNKNOWN)
        return out

    def pay(self, cost_cents: int) -> None:
        self.n += 1
        p = self.save(
            new_payment(
                payment_id=f"p{self.n}", terminal="t", preauth_cents=500, connector="c", at=T0
            )
        )
        p = self.save(apply(p, PRE, self.run(p, PRE), at=T0))
        if p.state is PaymentState.AUTHORISED:
            p = self.save(session_started(p, session_id=p.id, connector="c", at=T0))
            self.sessions[p.id] = cost_cents
            self.save(session_ended(p, cost_cents=cost_cents, at=T0))
            self.settle_all()
        elif p.state is PaymentState.PREAUTH_SENT:
            self.reconcile()

    def settle_all(self) -> None:
        for _ in range(20):
            due = [p for p in self.journal.values() if next_step(p) is not None]
            if not due:
                return
            for p in due:
                step = next_step(p)
                assert step is not None
                if step.kind is StepKind.ENQUIRE:
                    self.reconcile()
                    continue
                intent = self.save(sent(p, step, at=T0))
                self.save(apply(intent, step, self.run(intent, step), at=T0))

    def reconcile(self) -> None:
        out = self.run(None, ENQ)
        if out.kind is not OutcomeKind.OPEN_LIST:
            return
        for p in list(self.journal.values()):
            if p.state in (
                PaymentState.PREAUTH_SENT,
                PaymentState.CAPTURE_SENT,
                PaymentState.RELEASE_SENT,
            ):
                self.save(apply(p, ENQ, out, at=T0))
        for r in orphans(out.open_receipts, list(self.journal.values())):
            self.n += 1
            self.save(
                Payment(
                    id=f"o{self.n}",
                    terminal="t",
                    state=PaymentState.SESSION_ENDED,
                    preauth_cents=0,
                    receipt_number=r,
                    cost_cents=0,
                    final_cents=0,
                    reason="orphan",
                    created_at=T0,
                    updated_at=T0,
                )
            )

    def restart(self) -> None:
        """A new process: only the journal is left. Sessions ended while it was down."""
        for p in list(self.journal.values()):
            action = on_restart(p, session_open=False if p.id in self.sessions else None)
            if action is RestartAction.RELEASE:
                self.save(no_session(p, reason="restart", at=T0))
            elif action is RestartAction.END_SESSION:
                self.save(session_ended(p, cost_cents=self.sessions[p.id], at=T0))
        self.reconcile()
        self.settle_all()


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=0, max_value=800), min_size=1, max_size=4),
    faults=st.lists(st.sampled_from(FAULTS), max_size=25),
)
def test_no_double_capture_no_orphan_whatever_fails(costs: list[int], faults: list[str]) -> None:
    books = Books()
    ctl = Controller(books, list(faults))
    for c in costs:
        while True:
            try:
                ctl.pay(c)
                break
            except Crash:
                # killed: restart until a restart itself gets through (faults run out)
                while True:
                    try:
                        ctl.restart()
                        break
                    except Crash:
                        continue
                break
    # Eventually the terminal answers: the controller reconciles once more.
    ctl.faults.clear()
    ctl.restart()

    assert books.open == {}, "an orphaned pre-authorisation"
    assert books.repeats == [], "a capture resent without asking the terminal first"
    for r, taken in books.captures.items():
        assert len(taken) == 1, f"receipt {r} captured {len(taken)} times"
    for p in ctl.journal.values():
        assert p.final, p
        if p.state is PaymentState.CAPTURED:
            assert p.receipt_number is not None
            assert books.captures[p.receipt_number] == [p.captured_cents]
            assert p.captured_cents == min(ctl.sessions[p.id], p.preauth_cents)
    # every capture on the books belongs to a payment the journal calls captured
    captured = {p.receipt_number for p in ctl.journal.values() if p.state is PaymentState.CAPTURED}
    assert set(books.captures) <= captured
