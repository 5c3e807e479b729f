"""Drivers layer: the thin I/O shell around the ZVT codec, over a serial port or TCP.

``ZvtTerminal(link)`` owns one terminal: a serial port (pyserial, 9600 8N2 by default, read
through the event loop's reader callbacks, so no thread) or a TCP connection (port 20007, bare
APDUs). ``await terminal.run(command, on_print=...)`` drives one exchange to its end:

1. answer whatever the terminal said while idle (``Unsolicited``, passed to ``on_unsolicited``);
2. send the command; the codec answers ACK bytes and 80 00 00 itself, the shell writes them;
3. wait for bytes until the codec's next deadline (T1, T3 or T4, moved by every message), then
   let the codec fire it (a retransmission, a NAK, or the end);
4. return a ``CommandResult`` on 06 0F, or raise on 84 xx / 06 1E / silence / garbage.

Commands are serialised (one ``asyncio.Lock`` per terminal): several connectors may share a
terminal, and ZVT has one command in flight at a time. ``abort()`` sends 06 B0 into the running
exchange without the lock; how that exchange ends says whether the abort took.

Errors come out as core errors (``drivers.terminal.errors``): ``TerminalRefused`` (declined,
permanent), ``TerminalBusy`` and ``TerminalUnavailable`` (retryable, nothing booked), and
``PaymentOutcomeUnknown`` when a money-moving command went out and no final answer came back.
After any failure the codec's connection is replaced; a TCP socket or a serial port that failed
is closed and reopened on the next call (a USB adapter that re-enumerated included, if the
configured path is stable, e.g. /dev/serial/by-id/...).

Nothing here logs: card data never reaches a log because no frame is ever logged, and results
carry the masked PAN only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from drivers.terminal.errors import (
    PaymentOutcomeUnknown,
    TerminalBusy,
    TerminalMisuse,
    TerminalRefused,
    TerminalUnavailable,
)
from drivers.terminal.profile import TerminalProfile
from drivers.terminal.zvt.commands import (
    AbortRequest,
    Command,
    EndOfDay,
    OpenPreAuthEnquiry,
    PreAuthorisation,
    PreAuthReversal,
    Registration,
    StatusEnquiry,
    settlement_command,
)
from drivers.terminal.zvt.connection import Connection, Framing, LinkCounters, State, Timeouts
from drivers.terminal.zvt.errors import LocalProtocolError, RemoteProtocolError, ZvtError
from drivers.terminal.zvt.events import (
    RETRYABLE_RESULT_CODES,
    Abort,
    Completion,
    Intermediate,
    Nak,
    NeedData,
    PrintBlock,
    PrintLine,
    StatusInformation,
    Unsolicited,
    result_text,
)

DEFAULT_TCP_PORT = 20007
_READ_CHUNK = 4096
_OPEN_PRE_AUTH_LIST = 0xB8  # 06 1E B8: the answer to 06 23 87 FF FF


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialLink:
    """An RS-232 terminal (ZVT's default line: 9600 baud, 8 data bits, no parity, 2 stop)."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 2

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpLink:
    """A terminal on the network (ZVT over TCP: bare APDUs, port 20007)."""

    host: str
    port: int = DEFAULT_TCP_PORT
    connect_timeout_s: float = 5.0

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


TerminalLink = SerialLink | TcpLink


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    """How one exchange ended well (06 0F; or 06 1E B8 with the list, for the enquiry)."""

    command: str
    completion: Completion | None = None
    status: StatusInformation | None = None  # the last 04 0F: receipt, trace, amount...
    abort: Abort | None = None
    receipt_lines: tuple[str, ...] = ()
    intermediate_codes: tuple[int, ...] = ()

    @property
    def receipt_number(self) -> int | None:
        return None if self.status is None else self.status.receipt_number

    @property
    def open_receipts(self) -> tuple[int, ...]:
        return () if self.abort is None else self.abort.open_receipts


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ending:
    """What an exchange ended with, before it is judged a result or an error."""

    final: Completion | Abort | Nak | None
    status: StatusInformation | None
    lines: tuple[str, ...]
    intermediates: tuple[int, ...]


# --- ports: bytes in, bytes out ----------------------------------------------------------------


class _Port:
    """Received bytes buffered by a callback of the event loop; ``read`` waits for them."""

    def __init__(self, describe: str) -> None:
        self.describe = describe
        self._buffer = bytearray()
        self._readable = asyncio.Event()
        self._eof = False
        self._failure: BaseException | None = None

    def _received(self, data: bytes) -> None:
        self._buffer.extend(data)
        self._readable.set()

    def _failed(self, exc: BaseException | None) -> None:
        if exc is None:
            self._eof = True
        else:
            self._failure = exc
        self._readable.set()

    async def read(self, timeout_s: float | None) -> bytes | None:
        """What arrived (b"" once the link closed); None when nothing came within the timeout."""
        if not self._buffer and not self._eof and self._failure is None:
            self._readable.clear()
            try:
                await asyncio.wait_for(self._readable.wait(), timeout_s)
            except TimeoutError:
                return None
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        if self._failure is not None:
            raise TerminalUnavailable(f"{self.describe}: link failed ({self._failure!r})")
        return b""

    @property
    def alive(self) -> bool:
        """Neither closed by the other end nor failed (checked before each command)."""
        return not self._eof and self._failure is None

    def discard_input(self) -> None:
        self._buffer.clear()

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SerialPort(_Port):
    def __init__(self, link: SerialLink) -> None:
        super().__init__(link.describe())
        self._link = link
        self._serial: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        link = self._link
        try:
            port = serial.Serial(
                port=link.port,
                baudrate=link.baudrate,
                bytesize=link.bytesize,
                parity=link.parity,
                stopbits=link.stopbits,
                timeout=0,  # reads never block: the event loop says when bytes are there
                write_timeout=2.0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TerminalUnavailable(f"{self.describe}: cannot open ({exc})") from exc
        self._serial = port
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self._serial.read(_READ_CHUNK)
        except (serial.SerialException, OSError) as exc:
            self._stop_reading()
            self._failed(exc)  # unplugged: "readiness to read but returned no data", EIO
            return
        if data:
            self._received(data)

    def _stop_reading(self) -> None:
        if self._loop is not None and self._serial is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._serial.fileno())

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._failure is not None:
            raise TerminalUnavailable(f"{self.describe}: link failed ({self._failure!r})")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            raise TerminalUnavailable(f"{self.describe}: write failed ({exc})") from exc

    def discard_input(self) -> None:
        super().discard_input()
        with contextlib.suppress(Exception):
            self._serial.reset_input_buffer()

    def close(self) -> None:
        self._stop_reading()
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._serial = None


class _TcpPort(_Port, asyncio.Protocol):
    def __init__(self, link: TcpLink) -> None:
        _Port.__init__(self, link.describe())
        self._link = link
        self._transport: asyncio.Transport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, self._link.host, self._link.port),
                self._link.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise TerminalUnavailable(f"{self.describe}: cannot connect ({exc!r})") from exc

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def eof_received(self) -> bool | None:
        self._failed(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._failed(exc)

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._transport is None or self._transport.is_closing():
            raise TerminalUnavailable(f"{self.describe}: connection closed")
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None


# --- the terminal -------------------------------------------------------------------------------

PrintCallback = Callable[[str], None]
IntermediateCallback = Callable[[Intermediate], None]
UnsolicitedCallback = Callable[[Unsolicited], None]


class ZvtTerminal:
    """One ZVT payment terminal on one link; commands run one at a time."""

    def __init__(
        self,
        link: TerminalLink,
        *,
        profile: TerminalProfile | None = None,
        timeouts: Timeouts | None = None,
        on_unsolicited: UnsolicitedCallback | None = None,
    ) -> None:
        self.link = link
        self.profile = profile or TerminalProfile()
        self.timeouts = timeouts or Timeouts()
        self._framing = Framing.TCP if isinstance(link, TcpLink) else Framing.SERIAL
        self._on_unsolicited = on_unsolicited
        self._port: _SerialPort | _TcpPort | None = None
        self._conn: Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link_counters = LinkCounters()
        self._sent = False  # the running exchange's command went to the link

    def describe(self) -> str:
        return self.link.describe()

    @property
    def counters(self) -> LinkCounters:
        """Link counters of the current connection (a new one starts after each failure)."""
        return self._conn.counters if self._conn is not None else self._link_counters

    # --- one exchange -------------------------------------------------------------------------

    async def run(
        self,
        command: Command,
        *,
        on_print: PrintCallback | None = None,
        on_intermediate: IntermediateCallback | None = None,
    ) -> CommandResult:
        """Send ``command`` and follow the terminal to 06 0F (see the module docstring).

        ``on_print`` gets every receipt line as it arrives, ``on_intermediate`` every 04 FF;
        an exception from either is swallowed (a receipt display must not fail a payment).
        """
        async with self._bound_lock():
            port = await self._open()
            conn = self._connection()
            try:
                ending = await self._exchange(port, conn, command, on_print, on_intermediate)
            except ZvtError as exc:
                self._discard(conn, close_port=self._framing is Framing.TCP)
                raise self._convert(exc, command) from exc
            except TerminalUnavailable as exc:
                self._discard(conn, close_port=True)
                if command.moves_money and self._sent and conn.command_delivered:
                    raise PaymentOutcomeUnknown(
                        f"{self.describe()}: {command.name} sent, then {exc}",
                        command=command.name,
                    ) from exc
                raise
            except BaseException:
                # Cancelled (or a bug) mid-exchange: the link's state is unknown.
                self._discard(conn, close_port=True)
                raise
        return self._outcome(command, ending)

    async def abort(self) -> bool:
        """Send 06 B0 into the running exchange; False if none runs (nothing was sent)."""
        conn, port = self._conn, self._port
        if (
            conn is None
            or port is None
            or conn.state
            not in (
                State.AWAITING_ACK,
                State.AWAITING_COMPLETION,
            )
        ):
            return False
        try:
            port.write(conn.send(AbortRequest(), now_s=asyncio.get_running_loop().time()))
        except LocalProtocolError:
            return False
        return True

    async def close(self) -> None:
        if self._port is not None:
            self._port.close()
        self._port = None
        self._conn = None

    # --- the commands of a charge session --------------------------------------------------------

    async def register(self, *, on_print: PrintCallback | None = None) -> CommandResult:
        p = self.profile
        return await self.run(
            Registration(
                password=p.password, config_byte=p.config_byte, currency_code=p.currency_code
            ),
            on_print=on_print,
        )

    async def status(self) -> Completion:
        """The terminal's status (``terminal_status``: 00 ready, F0 end of day needed...)."""
        result = await self.run(StatusEnquiry(password=self.profile.password))
        assert result.completion is not None
        return result.completion

    async def pre_authorise(
        self,
        amount_cents: int,
        *,
        on_print: PrintCallback | None = None,
        on_intermediate: IntermediateCallback | None = None,
    ) -> StatusInformation:
        """Reserve ``amount_cents``; returns the approval (receipt number, trace, masked PAN)."""
        p = self.profile
        command = PreAuthorisation(
            amount_cents=amount_cents, currency_code=p.currency_code, payment_type=p.payment_type
        )
        result = await self.run(command, on_print=on_print, on_intermediate=on_intermediate)
        status = result.status
        if status is None or status.receipt_number is None or status.result_code not in (0, None):
            # 06 0F without the receipt number: money may be held and we cannot name it.
            raise PaymentOutcomeUnknown(
                f"{self.describe()}: pre-authorisation completed without a receipt number",
                command=command.name,
            )
        return status

    async def settle(
        self,
        *,
        receipt_number: int,
        pre_authorised_cents: int,
        final_cents: int,
        on_print: PrintCallback | None = None,
    ) -> CommandResult:
        """End a pre-authorisation at ``final_cents``: capture per profile, or release if 0."""
        try:
            command = settlement_command(
                self.profile.capture_mode,
                receipt_number=receipt_number,
                pre_authorised_cents=pre_authorised_cents,
                final_cents=final_cents,
                currency_code=self.profile.currency_code,
            )
        except LocalProtocolError as exc:
            raise TerminalMisuse(str(exc)) from exc
        return await self.run(command, on_print=on_print)

    async def release(
        self, receipt_number: int, *, on_print: PrintCallback | None = None
    ) -> CommandResult:
        """Release a whole pre-authorisation (06 25)."""
        command = PreAuthReversal(
            receipt_number=receipt_number, currency_code=self.profile.currency_code
        )
        return await self.run(command, on_print=on_print)

    async def open_pre_auths(self) -> tuple[int, ...]:
        """Receipt numbers of the pre-authorisations still open on the terminal.

        Only the terminal's list (06 1E B8 ...) is an answer. An exchange that ends in a plain
        06 0F (e.g. the completion of a command the terminal was still finishing for an ECR
        that restarted) says nothing about what is open: it raises TerminalUnavailable, never
        "none open".
        """
        result = await self.run(OpenPreAuthEnquiry())
        if result.abort is None:
            raise TerminalUnavailable(
                f"{self.describe()}: open pre-auth enquiry answered without the list"
            )
        return result.open_receipts

    async def end_of_day(self, *, on_print: PrintCallback | None = None) -> CommandResult:
        return await self.run(EndOfDay(password=self.profile.password), on_print=on_print)

    # --- the shell -------------------------------------------------------------------------

    def _bound_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            # A new event loop (a restart, or the next test): old ports and locks are its own.
            if self._port is not None:
                self._port.close()
            self._loop, self._lock, self._port, self._conn = loop, asyncio.Lock(), None, None
        return self._lock

    async def _open(self) -> _SerialPort | _TcpPort:
        if self._port is not None and not self._port.alive:
            # Closed by the terminal while idle (TCP), or the adapter vanished: start afresh.
            self._port.close()
            self._port = None
        if self._port is None:
            link = self.link
            port: _SerialPort | _TcpPort = (
                _TcpPort(link) if isinstance(link, TcpLink) else _SerialPort(link)
            )
            await port.open()
            self._port = port
            self._conn = None
        return self._port

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = Connection(framing=self._framing, timeouts=self.timeouts)
        return self._conn

    def _discard(self, conn: Connection, *, close_port: bool) -> None:
        self._link_counters = conn.counters
        self._conn = None
        if self._port is not None:
            if close_port:
                self._port.close()
                self._port = None
            else:
                self._port.discard_input()

    def _convert(self, exc: ZvtError, command: Command) -> Exception:
        where = f"{self.describe()}: {command.name}"
        if isinstance(exc, LocalProtocolError):
            return TerminalMisuse(f"{where}: {exc}")
        delivered = isinstance(exc, RemoteProtocolError) and exc.command_delivered
        if command.moves_money and self._sent and delivered:
            return PaymentOutcomeUnknown(
                f"{where}: outcome unknown, reconcile with the open pre-auth enquiry ({exc})",
                command=command.name,
            )
        return TerminalUnavailable(f"{where}: {exc}")

    def _drain_unsolicited(self, conn: Connection) -> None:
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                return
            if isinstance(event, Unsolicited):
                _call(self._on_unsolicited, event)

    async def _exchange(
        self,
        port: _SerialPort | _TcpPort,
        conn: Connection,
        command: Command,
        on_print: PrintCallback | None,
        on_intermediate: IntermediateCallback | None,
    ) -> _Ending:
        loop = asyncio.get_running_loop()
        self._sent = False  # until the command is handed to the link
        # Whatever the terminal said while we were not listening is answered first.
        waiting = await port.read(0)
        if waiting:
            conn.receive_data(waiting, now_s=loop.time())
        self._drain_unsolicited(conn)
        port.write(conn.data_to_send())
        try:
            out = conn.send(command, now_s=loop.time())
        except LocalProtocolError as exc:
            raise TerminalMisuse(f"{self.describe()}: {command.name}: {exc}") from exc
        self._sent = True
        port.write(out)

        status: StatusInformation | None = None
        final: Completion | Abort | Nak | None = None
        lines: list[str] = []
        intermediates: list[int] = []
        while final is None or not conn.link_idle:
            event = conn.next_event()
            if isinstance(event, NeedData):
                port.write(conn.data_to_send())
                deadline = conn.timeout_deadline(loop.time())
                event = conn.next_event()
                if isinstance(event, NeedData):
                    port.write(conn.data_to_send())
                    if deadline is None:
                        break  # nothing awaited any more (the link is idle)
                    data = await port.read(max(0.0, deadline - loop.time()))
                    if data is not None:
                        conn.receive_data(data, now_s=loop.time())
                    continue
            port.write(conn.data_to_send())
            if isinstance(event, StatusInformation):
                status = event
            elif isinstance(event, Intermediate):
                intermediates.append(event.status_code)
                _call(on_intermediate, event)
            elif isinstance(event, PrintLine):
                lines.append(event.text)
                _call(on_print, event.text)
            elif isinstance(event, PrintBlock):
                for line in event.lines:
                    lines.append(line)
                    _call(on_print, line)
            elif isinstance(event, Completion | Abort) or (
                isinstance(event, Nak) and not event.to_abort
            ):
                final = event
            elif isinstance(event, Unsolicited):
                _call(self._on_unsolicited, event)
            # Ack (ours or the abort's) and Unknown (already answered 84 83) need nothing.
        port.write(conn.data_to_send())
        return _Ending(
            final=final, status=status, lines=tuple(lines), intermediates=tuple(intermediates)
        )

    def _outcome(self, command: Command, ending: _Ending) -> CommandResult:
        final, status = ending.final, ending.status
        where = f"{self.describe()}: {command.name}"
        if isinstance(final, Completion):
            return CommandResult(
                command=command.name,
                completion=final,
                status=status,
                receipt_lines=ending.lines,
                intermediate_codes=ending.intermediates,
            )
        if (
            isinstance(final, Abort)
            and isinstance(command, OpenPreAuthEnquiry)
            and final.result_code == _OPEN_PRE_AUTH_LIST
        ):
            return CommandResult(command=command.name, abort=final, status=status)
        if isinstance(final, Abort | Nak):
            code = final.result_code
            text = f"{where} refused: {result_text(code)} ({code:02X})"
            if code in RETRYABLE_RESULT_CODES:
                raise TerminalBusy(text, command=command.name, result_code=code)
            receipts = final.open_receipts if isinstance(final, Abort) else ()
            raise TerminalRefused(
                text, command=command.name, result_code=code, open_receipts=receipts
            )
        raise TerminalUnavailable(f"{where}: the exchange ended without an answer")


def _call(callback: Callable[[Any], None] | None, arg: Any) -> None:
    if callback is not None:
        with contextlib.suppress(Exception):
            callback(arg)


__all__ = [
    "DEFAULT_TCP_PORT",
    "CommandResult",
    "SerialLink",
    "TcpLink",
    "TerminalLink",
    "ZvtTerminal",
]
