"""Drivers layer (sans-IO ZVT codec): the ECR side of one terminal link, as a state machine.

In the style of h11: no sockets, no serial port, no clock. The shell hands in bytes and the
time they arrived, and gets back events and the bytes to write::

    conn = Connection(framing=Framing.SERIAL)
    port.write(conn.send(PreAuthorisation(amount_cents=2500), now_s=clock()))
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            port.write(conn.data_to_send())
            deadline = conn.timeout_deadline(clock())   # fires expired timers
            if (event := conn.next_event()) is NEED_DATA:
                port.write(conn.data_to_send())
                conn.receive_data(port.read(until=deadline), now_s=clock())
                continue
        port.write(conn.data_to_send())
        ...  # Ack, Intermediate, StatusInformation, PrintBlock..., Completion or Abort

**Link layer (serial only).** Every frame is answered with one byte: 06 (ACK) or 15 (NAK). A
frame of ours that gets a NAK, or nothing within T3, is sent again, at most ``max_retries``
times; then the command has failed (``ZvtTimeout`` "T3"). A corrupt frame from the terminal
(CRC, cut short, T1 silence inside it) is answered with a NAK and its retransmission awaited;
more than ``max_retries`` of them in a row is a ``RemoteProtocolError``. Our own 80 00 00 that
the terminal never confirms is dropped after the retries (the terminal will repeat its message
if it missed it), without failing the command whose result we already have.

**Application layer (both transports).** After a command: 80 00 00 within T3 (``Ack``), or
84 xx (``Nak``, the command is over). Then the terminal is master: 04 FF, 04 0F, 06 D1, 06 D3
until 06 0F (``Completion``) or 06 1E (``Abort``); the connection answers each with 80 00 00
itself. T4 (default 180 s) bounds the wait for each of them and restarts with every message;
an 04 FF naming a longer timeout extends it. While a command runs, ``send(AbortRequest())``
asks the terminal to abort it; the answer is an ``Ack``/``Nak`` with ``to_abort`` set, and the
command then ends as it ends (06 1E 6C if the abort took, 06 0F if it came too late).

A message from the terminal while no command runs is answered (80 00 00, or 84 83 if unknown)
and reported as ``Unsolicited``. Once an error has been raised the connection is spent: make a
new one (the transport does).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from drivers.terminal.zvt.apdu import Apdu, decode_apdu
from drivers.terminal.zvt.commands import AbortRequest, Command
from drivers.terminal.zvt.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    ZvtError,
    ZvtTimeout,
)
from drivers.terminal.zvt.events import (
    NEED_DATA,
    Abort,
    Ack,
    Completion,
    Event,
    Intermediate,
    Nak,
    NeedData,
    PtMessage,
    Unknown,
    Unsolicited,
    decode_message,
)
from drivers.terminal.zvt.framing import (
    ACK,
    NAK,
    ApduSplitter,
    BadFrame,
    GoodFrame,
    LinkAck,
    LinkNak,
    SerialDeframer,
    encode_frame,
)

_Fire = Callable[[float], None]

ECR_ACK = Apdu(0x80, 0x00)
ECR_UNKNOWN_COMMAND = Apdu(0x84, 0x83)  # "function not possible"


class Framing(Enum):
    SERIAL = "serial"  # DLE STX ... DLE ETX CRC, ACK/NAK bytes
    TCP = "tcp"  # bare APDUs


class State(Enum):
    IDLE = "idle"  # no command of ours runs
    AWAITING_ACK = "awaiting_ack"  # command sent; 80 00 00 or 84 xx expected within T3
    AWAITING_COMPLETION = "awaiting_completion"  # terminal is master until 06 0F / 06 1E
    ERROR = "error"  # an error was raised: this connection is spent


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """The ZVT timers (ecrterm's defaults) and the link's retry budget."""

    t1_s: float = 0.2  # between two bytes of one frame (serial)
    t3_s: float = 5.0  # for an acknowledgement: ACK byte (serial) or 80 00 00
    t4_s: float = 180.0  # for each message while the terminal runs a command
    max_retries: int = 3  # repetitions of a frame after a NAK or T3 (the spec's maximum)

    def __post_init__(self) -> None:
        if min(self.t1_s, self.t3_s, self.t4_s) <= 0:
            raise ValueError("ZVT timeouts must be > 0")
        if not 0 <= self.max_retries <= 3:
            raise ValueError("max_retries must be 0..3")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkCounters:
    """What the link has seen (status, tests); never any frame content."""

    frames_sent: int = 0  # first transmissions
    retransmissions: int = 0
    naks_received: int = 0
    t3_expiries: int = 0
    frames_received: int = 0
    bad_frames_received: int = 0  # each answered with a NAK
    unconfirmed_acks: int = 0  # our 80 00 00 frames given up on (terminal never confirmed)
    junk_bytes: int = 0


@dataclass(slots=True)
class _Outgoing:
    frame: bytes
    is_command: bool  # a command or abort of ours (vs. an 80 00 00 / 84 83 answer)
    attempts: int = 0
    deadline_s: float | None = None


class Connection:
    """One link to one terminal, ECR side; see the module docstring for the protocol."""

    def __init__(self, *, framing: Framing = Framing.SERIAL, timeouts: Timeouts | None = None):
        self.framing = framing
        self.timeouts = timeouts or Timeouts()
        self._state = State.IDLE
        self._command: Command | None = None
        self._command_delivered = False
        self._abort_pending = False
        self._events: deque[Event] = deque()
        self._error: ZvtError | None = None
        self._outbox = bytearray()
        self._tx_queue: deque[_Outgoing] = deque()
        self._tx: _Outgoing | None = None  # serial: the frame awaiting its ACK byte
        self._deframer = SerialDeframer()
        self._splitter = ApduSplitter()
        self._last_byte_s: float | None = None
        self._bad_streak = 0
        self._ack_deadline_s: float | None = None  # T3 for 80 00 00
        self._response_deadline_s: float | None = None  # T4
        self._closed = False
        self._counters = LinkCounters()

    # --- what the shell reads ---------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def command(self) -> Command | None:
        """The command in flight, if any."""
        return self._command

    @property
    def counters(self) -> LinkCounters:
        return replace(self._counters, junk_bytes=self._deframer.junk_bytes)

    @property
    def command_delivered(self) -> bool:
        """The command in flight (or the last one) went out at least once: it may have run."""
        return self._command_delivered

    @property
    def link_idle(self) -> bool:
        """Nothing of ours waits for an ACK byte or a turn to go out."""
        return self._tx is None and not self._tx_queue

    @property
    def response_deadline_s(self) -> float | None:
        """When T4 runs out (moved by every terminal message and by 04 FF extensions)."""
        return self._response_deadline_s

    # --- the h11-style interface ------------------------------------------------------------

    def send(self, command: Command, *, now_s: float) -> bytes:
        """Queue ``command`` and return the bytes to write now (possibly none yet)."""
        if self._state is State.ERROR:
            raise LocalProtocolError("this connection failed earlier; open a new one")
        if self._closed:
            raise LocalProtocolError("the connection is closed")
        if isinstance(command, AbortRequest):
            if self._state is State.IDLE:
                raise LocalProtocolError("06 B0: no command is running to abort")
            if self._abort_pending:
                raise LocalProtocolError("06 B0: an abort is already pending")
            self._abort_pending = True
        else:
            if self._state is not State.IDLE:
                raise LocalProtocolError(f"{self._command_name()} is still running")
            self._state = State.AWAITING_ACK
            self._command = command
            self._command_delivered = False
            self._ack_deadline_s = None
            self._response_deadline_s = None
        self._queue_frame(command.to_apdu(), is_command=True, now_s=now_s)
        return self.data_to_send()

    def receive_data(self, data: bytes, *, now_s: float) -> None:
        """Bytes read from the link; ``b""`` means it closed (TCP end of stream)."""
        if self._state is State.ERROR:
            return
        if not data:
            self._closed = True
            if self._state is not State.IDLE:
                self._fail(RemoteProtocolError("the terminal closed the link mid-command"))
            return
        self._last_byte_s = now_s
        try:
            if self.framing is Framing.TCP:
                for raw in self._splitter.feed(data):
                    self._on_apdu(raw, now_s)
            else:
                for item in self._deframer.feed(data):
                    self._on_serial_item(item, now_s)
        except ZvtError as exc:
            self._fail(exc)

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``; raises the error that ended the connection."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return NEED_DATA

    def data_to_send(self) -> bytes:
        """Everything to write now: ACK/NAK bytes, our answers, retransmissions, commands."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def timeout_deadline(self, now_s: float) -> float | None:
        """Fire every timer that has run out by ``now_s``; return when the next one runs out.

        A fired timer queues a retransmission (``data_to_send``), a NAK, or an error
        (``next_event`` raises it). None: nothing is awaited.
        """
        while self._state is not State.ERROR:
            deadline, fire = self._next_timer()
            if deadline is None or deadline > now_s:
                return deadline
            fire(now_s)
        return None

    # --- timers -----------------------------------------------------------------------------

    def _next_timer(self) -> tuple[float | None, _Fire]:
        candidates: list[tuple[float, _Fire]] = []
        if (
            self.framing is Framing.SERIAL
            and self._deframer.in_frame
            and self._last_byte_s is not None
        ):
            candidates.append((self._last_byte_s + self.timeouts.t1_s, self._fire_t1))
        if self._tx is not None and self._tx.deadline_s is not None:
            candidates.append((self._tx.deadline_s, self._fire_link_t3))
        if self._state is State.AWAITING_ACK and self._ack_deadline_s is not None:
            candidates.append((self._ack_deadline_s, self._fire_ack_t3))
        if self._state is State.AWAITING_COMPLETION and self._response_deadline_s is not None:
            candidates.append((self._response_deadline_s, self._fire_t4))
        if not candidates:
            return None, self._fire_nothing
        return min(candidates, key=lambda c: c[0])

    def _fire_nothing(self, now_s: float) -> None:
        pass

    def _fire_t1(self, now_s: float) -> None:
        bad = self._deframer.discard_partial()
        if bad is not None:
            try:
                self._on_bad_frame(bad, now_s)
            except ZvtError as exc:
                self._fail(exc)

    def _fire_link_t3(self, now_s: float) -> None:
        self._count(t3_expiries=1)
        self._retransmit_or_give_up(now_s, why="no ACK within T3")

    def _fire_ack_t3(self, now_s: float) -> None:
        self._fail(
            ZvtTimeout(
                f"{self._command_name()}: no 80 00 00 within T3 ({self.timeouts.t3_s:g} s)",
                timer="T3",
                command_delivered=True,
            )
        )

    def _fire_t4(self, now_s: float) -> None:
        self._fail(
            ZvtTimeout(
                f"{self._command_name()}: the terminal went silent (T4) before completing",
                timer="T4",
                command_delivered=True,
            )
        )

    # --- link layer ---------------------------------------------------------------------------

    def _queue_frame(self, apdu: Apdu, *, is_command: bool, now_s: float) -> None:
        raw = apdu.encode()
        frame = raw if self.framing is Framing.TCP else encode_frame(raw)
        self._tx_queue.append(_Outgoing(frame=frame, is_command=is_command))
        self._pump(now_s)

    def _pump(self, now_s: float) -> None:
        """Put the next queued frame on the wire if nothing awaits an ACK byte."""
        while self._tx is None and self._tx_queue:
            out = self._tx_queue.popleft()
            self._transmit(out, now_s)
            if self.framing is Framing.SERIAL:
                self._tx = out
            else:
                self._delivered(out, now_s)

    def _transmit(self, out: _Outgoing, now_s: float) -> None:
        out.attempts += 1
        out.deadline_s = now_s + self.timeouts.t3_s
        self._outbox += out.frame
        if out.attempts == 1:
            self._count(frames_sent=1)
        else:
            self._count(retransmissions=1)
        if out.is_command:
            self._command_delivered = True

    def _delivered(self, out: _Outgoing, now_s: float) -> None:
        """Our frame arrived (ACK byte, or written to TCP): start the 80 00 00 wait."""
        if out.is_command and self._state is State.AWAITING_ACK and self._ack_deadline_s is None:
            self._ack_deadline_s = now_s + self.timeouts.t3_s

    def _retransmit_or_give_up(self, now_s: float, *, why: str) -> None:
        out = self._tx
        if out is None:
            return
        if out.attempts <= self.timeouts.max_retries:
            self._transmit(out, now_s)
            return
        self._tx = None
        if out.is_command:
            self._fail(
                ZvtTimeout(
                    f"{self._command_name()}: {why}, after {out.attempts} transmissions",
                    timer="T3",
                    command_delivered=True,
                )
            )
            return
        self._count(unconfirmed_acks=1)
        self._pump(now_s)

    def _on_serial_item(self, item: LinkAck | LinkNak | GoodFrame | BadFrame, now_s: float) -> None:
        if isinstance(item, LinkAck):
            out, self._tx = self._tx, None
            if out is not None:
                self._delivered(out, now_s)
                self._pump(now_s)
        elif isinstance(item, LinkNak):
            if self._tx is not None:
                self._count(naks_received=1)
                self._retransmit_or_give_up(now_s, why="NAK")
        elif isinstance(item, BadFrame):
            self._on_bad_frame(item, now_s)
        else:
            self._bad_streak = 0
            self._outbox.append(ACK)
            self._on_apdu(item.apdu, now_s)

    def _on_bad_frame(self, bad: BadFrame, now_s: float) -> None:
        self._count(bad_frames_received=1)
        self._bad_streak += 1
        if self._bad_streak > self.timeouts.max_retries:
            raise RemoteProtocolError(
                f"{self._bad_streak} corrupt frames in a row from the terminal ({bad.reason})"
            )
        self._outbox.append(NAK)
        # The terminal is answering, only badly: its repetition gets a whole T3 / T4 again
        # (the streak above bounds how often).
        if self._state is State.AWAITING_ACK and self._ack_deadline_s is not None:
            self._ack_deadline_s = max(self._ack_deadline_s, now_s + self.timeouts.t3_s)
        if self._state is State.AWAITING_COMPLETION and self._response_deadline_s is not None:
            self._response_deadline_s = max(self._response_deadline_s, now_s + self.timeouts.t3_s)

    # --- application layer ---------------------------------------------------------------------

    def _on_apdu(self, raw: bytes, now_s: float) -> None:
        self._count(frames_received=1)
        message = decode_message(decode_apdu(raw))
        if self._state is State.IDLE:
            self._answer(message, now_s)
            self._events.append(Unsolicited(message=message))
            return
        if isinstance(message, Ack | Nak):
            self._on_ack_or_nak(message, now_s)
            return
        # Any other message: the terminal is master now (a 80 00 00 may have been skipped).
        self._state = State.AWAITING_COMPLETION
        self._ack_deadline_s = None
        self._answer(message, now_s)
        if isinstance(message, Completion | Abort):
            self._events.append(message)
            self._finish()
            return
        deadline = now_s + self.timeouts.t4_s
        if isinstance(message, Intermediate) and message.timeout_s:
            deadline = max(deadline, now_s + message.timeout_s)
        self._response_deadline_s = deadline
        self._events.append(message)

    def _on_ack_or_nak(self, message: Ack | Nak, now_s: float) -> None:
        if self._abort_pending and self._state is State.AWAITING_COMPLETION:
            self._abort_pending = False
            self._events.append(
                Ack(to_abort=True)
                if isinstance(message, Ack)
                else Nak(result_code=message.result_code, to_abort=True)
            )
            return
        if self._state is not State.AWAITING_ACK:
            return  # a stray 80 00 00 / 84 xx mid-command: nothing to answer, nothing learnt
        self._ack_deadline_s = None
        self._events.append(message)
        if isinstance(message, Nak):
            self._finish()
            return
        self._state = State.AWAITING_COMPLETION
        self._response_deadline_s = now_s + self.timeouts.t4_s

    def _answer(self, message: PtMessage | Unknown, now_s: float) -> None:
        reply = ECR_UNKNOWN_COMMAND if isinstance(message, Unknown) else ECR_ACK
        if isinstance(message, Ack | Nak):
            return  # answers are not answered
        self._queue_frame(reply, is_command=False, now_s=now_s)

    def _finish(self) -> None:
        self._state = State.IDLE
        self._command = None
        self._abort_pending = False
        self._ack_deadline_s = None
        self._response_deadline_s = None

    def _fail(self, error: ZvtError) -> None:
        if self._state is State.ERROR:
            return
        if isinstance(error, RemoteProtocolError) and self._state is not State.IDLE:
            error.command_delivered = error.command_delivered or self._command_delivered
        self._state = State.ERROR
        self._error = error
        self._tx = None
        self._tx_queue.clear()

    def _command_name(self) -> str:
        return self._command.name if self._command is not None else "command"

    def _count(self, **deltas: int) -> None:
        c = self._counters
        self._counters = replace(c, **{k: getattr(c, k) + v for k, v in deltas.items()})
