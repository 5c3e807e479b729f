"""hil: a scriptable ZVT payment terminal, on a pseudo-terminal (RS-232) or on TCP (port 20007).

Written from ../shared/reference/payment.md on its own: it imports nothing from ``drivers/``
(``hil.terminal.wire`` has its own CRC and framing). It plays the PT side of the reference's
sequence: a command is acknowledged with 80 00 00, then the terminal is master and sends 04 FF
/ 04 0F / 06 D1 or 06 D3, each acknowledged by the ECR with 80 00 00, and ends with 06 0F or
06 1E. On the serial line every frame is answered by a 06 (ACK) or 15 (NAK) byte, a NAK'd or
unacknowledged frame is repeated up to 3 times.

What it does (its own ``Ledger`` records every booking, for tests to check against):

- 06 00 registration (keeps the config byte: receipts as 06 D3 text blocks, or 06 D1 lines
  with config bit 80, only when bit 02 asks for ECR receipts), 05 01 status enquiry (06 0F with
  software version and terminal status), 06 50 end of day (refused with 06 1E B8 and the list
  while pre-auths are open, the reference's EVerest data).
- 06 22 pre-authorisation: a new receipt and trace number, 04 0F with the masked PAN.
- 06 23 partial reversal (the amount is what to *release*) and 06 24 book total (the amount
  *used*) capture an open pre-auth; 06 25 releases it. A receipt that is not open any more is
  refused the way the reference's traffic shows: 06 23/06 24 with 06 1E B8 and the list of the
  open receipts (so a second capture of the same receipt is refused, never booked twice);
  06 25 of a closed receipt with B4 "already reversed" **[guess]**. A release larger than the
  pre-auth, or a book total above it, gets B7.
- 06 23 87 FF FF lists the open pre-auths in 06 1E B8: ``87 FF FF`` when none, ``87 rrrr``
  for one, a TLV list (06 .. 23 .. 08 rrrr ...) or both (``Script.open_list_form``).
- 06 B0 aborts a pre-auth while it waits for the card (04 FF phase): 80 00 00, then 06 1E 6C;
  later it is too late (84 83) and the command completes.

``Script`` injects faults: decline with any result code, refuse (84 xx) or busy, NAK or ignore
(no ACK) the ECR's next frames, send frames with a bad CRC, cut short, with junk before them
or a pause inside them, slow (repeated 04 FF with a timeout), power loss at a chosen ``Step``
(the terminal stops answering mid-flow and comes back with its ledger: open pre-auths stay
open), a stall at a chosen step, and a message sent while the ECR is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hil.terminal.ledger import Ledger
from hil.terminal.wire import (
    ACK,
    NAK,
    ApduReader,
    FrameReader,
    apdu,
    bcd,
    frame,
    from_bcd,
    lllvar,
    llvar,
    read_bmps,
    split_apdu,
    tlv,
    tlv_container,
)

PT_ACK = apdu(0x80, 0x00)
EUR = 978
INTERMEDIATE_STATUS = 0x17  # the status byte a Feig cVEND sent while waiting (EVerest data)
CHAR_TIME_9600_8N2_S = 11 / 9600

# result codes the terminal uses itself
ABORTED = 0x6C
FUNCTION_NOT_POSSIBLE = 0x83
ALREADY_REVERSED = 0xB4
AMOUNT_TOO_HIGH = 0xB7
PRE_AUTH_ERROR = 0xB8


class Step(StrEnum):
    """Where in a command the terminal can lose power."""

    COMMAND = "command"  # the command frame arrived; not even its ACK byte went out
    ACK = "ack"  # 80 00 00 sent
    BOOKED = "booked"  # the terminal booked it (ledger written); the ECR was told nothing
    STATUS = "status"  # 04 0F sent and acknowledged; no 06 0F yet
    COMPLETION = "completion"  # 06 0F sent: the exchange is over


@dataclass(slots=True)
class Script:
    """What the simulated terminal does next. Counters count down as they are used."""

    decline_code: int | None = None  # the next pre-auth ends in 06 1E <code> (one shot)
    refuse_code: int | None = None  # the next command gets 84 <code> (one shot)
    busy_code: int | None = None  # every command gets 84 <code> while set
    nak_frames: int = 0  # answer the ECR's next n frames with NAK
    ignore_frames: int = 0  # neither ACK nor read the ECR's next n frames
    corrupt_frames: int = 0  # send the next n frames with a wrong CRC
    truncate_frames: int = 0  # send the next n frames cut short (no DLE ETX, no CRC)
    gap_frames: int = 0  # pause ``gap_s`` in the middle of the next n frames
    gap_s: float = 0.0
    junk_before_frames: bytes = b""  # line noise before every frame
    intermediates: int = 0  # 04 FF messages while "waiting for the card"
    intermediate_interval_s: float = 0.05
    intermediate_timeout_s: int | None = None  # the 04 FF timeout byte (extends T4)
    pause_at: Step | None = None  # stall this long at that step (a slow host), then go on
    pause_s: float = 0.0
    power_loss_at: Step | None = None
    power_loss_on: int | None = None  # the instruction byte that arms it (0x22...), None: any
    reboot_after_s: float | None = None  # back on by itself after a power loss
    terminal_status: int = 0x00  # 00 ready, 51, C2, E4, F0 (status enquiry)
    open_list_form: str = "bmp"  # bmp, tlv or both (06 23 87 FF FF answer)
    masked_pan: str = "559884EEEEEE8074"  # BMP 22 nibbles, E = masked digit
    card_name: str = "MasterCard"
    extra_receipt_lines: int = 0  # longer receipts (a 06 D3 past 255 bytes: extended length)
    answer_timeout_s: float = 5.0  # the terminal's T3 for the ECR's ACK byte and 80 00 00
    max_repeats: int = 3


@dataclass(slots=True)
class TerminalCounters:
    commands: list[str] = field(default_factory=list)  # "06 22", in arrival order
    frames_received: int = 0
    bad_frames_received: int = 0
    naks_sent: int = 0
    frames_ignored: int = 0
    frames_sent: int = 0
    repeats: int = 0  # frames sent again after a NAK or silence
    naks_received: int = 0
    line_mismatch_bytes: int = 0  # bytes dropped: the ECR's line settings are wrong
    unsolicited_sent: int = 0


class _PowerLost(Exception):
    pass


class _EcrGone(Exception):
    """The ECR stopped acknowledging: a real terminal gives up the command."""


class SimulatedTerminal:
    """The terminal's logic; ``start_pty`` and ``start_tcp`` put it on a line."""

    def __init__(
        self,
        *,
        ledger: Ledger | None = None,
        script: Script | None = None,
        terminal_id: int = 52523535,
        software_version: str = "hil-zvt-sim 1.0",
        pace: bool = True,
        line: tuple[int, int] | None = (9600, 2),
    ) -> None:
        self.ledger = ledger or Ledger()
        self.script = script or Script()
        self.terminal_id = terminal_id
        self.software_version = software_version
        self.counters = TerminalCounters()
        self.powered = True
        self.config_byte: int | None = None  # from the last registration
        self._pace = pace
        self._line = line  # (baud, stop bits) the ECR must use on the pty; None: any
        self._serial = True
        self._write: Callable[[bytes], None] | None = None
        self._frames = FrameReader()
        self._apdus = ApduReader()
        self._link_replies: asyncio.Queue[str] = asyncio.Queue()
        self._ecr_answers: asyncio.Queue[bytes] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._abortable = False
        self._abort = asyncio.Event()
        self._reboot: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        # pty
        self._master: int | None = None
        self._slave: int | None = None
        self.port: str | None = None
        # tcp
        self._server: asyncio.Server | None = None
        self._tcp_host = "127.0.0.1"
        self.tcp_port: int | None = None
        self._client: asyncio.StreamWriter | None = None

    # --- lines --------------------------------------------------------------------------------

    async def start_pty(self) -> str:
        """A pseudo-terminal pair: the ECR opens ``self.port`` as its serial port."""
        self._serial = True
        master, slave = os.openpty()
        for fd in (master, slave):
            tty.setraw(fd)
        self._master, self._slave = master, slave
        self.port = os.ttyname(slave)
        self._write = self._pty_write
        asyncio.get_running_loop().add_reader(master, self._on_pty_readable)
        return self.port

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for one ECR at a time; bare APDUs (no DLE framing, no ACK bytes)."""
        self._serial = False
        self._tcp_host = host
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.tcp_port = self._server.sockets[0].getsockname()[1]
        return self.tcp_port

    async def stop(self) -> None:
        self._cancel_task()
        for task in (self._reboot, *self._side_tasks):
            if task is not None:
                task.cancel()
        self._close_pty()
        self._close_tcp()
        if self._handlers:
            # closing the client ends its handler's read (EOF); wait for it to return
            await asyncio.wait(self._handlers, timeout=1.0)
        self.tcp_port = None

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Until no command runs (one the ECR abandoned ends after the terminal's T3s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._task is not None and not self._task.done()) or self._side_tasks:
            if loop.time() > deadline:
                raise TimeoutError("the simulated terminal is still busy")
            await asyncio.sleep(0.02)

    def unplug(self) -> None:
        """The cable is pulled (or the USB adapter vanished): the ECR's port fails."""
        self._close_pty()

    async def replug(self) -> str:
        """The adapter is back, as a new device node (re-enumerated)."""
        return await self.start_pty()

    def _close_pty(self) -> None:
        if self._master is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._master)
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self._master = self._slave = None

    def _close_tcp(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def _pty_write(self, data: bytes) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.write(self._master, data)

    def _line_matches(self) -> bool:
        if self._line is None or self._slave is None:
            return True
        try:
            attrs = termios.tcgetattr(self._slave)
        except termios.error:
            return True
        baud, stopbits = self._line
        speed = getattr(termios, f"B{baud}", None)
        two_stop = bool(attrs[2] & termios.CSTOPB)
        return attrs[5] == speed and two_stop == (stopbits == 2)

    def _on_pty_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return  # the ECR side is closed (between two opens of the port)
        if not self._line_matches():
            self.counters.line_mismatch_bytes += len(data)
            return  # a UART at other settings reads framing errors, not bytes
        self.feed(data)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.powered:
            writer.close()
            return
        if self._client is not None:
            self._client.close()  # one ECR at a time: the newer connection wins
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._client = writer
        self._apdus = ApduReader()
        self._write = writer.write
        try:
            while data := await reader.read(4096):
                if self._client is writer:
                    self.feed(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if self._client is writer:
                self._client = None
                self._write = None
            writer.close()

    # --- power --------------------------------------------------------------------------------

    def power_off(self) -> None:
        """Stop answering at once; the ledger (and so every open pre-auth) is kept."""
        self.powered = False
        self._frames.reset()
        self._abortable = False
        if self._task is not None and self._task is not asyncio.current_task():
            self._cancel_task()
        self._close_tcp()
        if self.script.reboot_after_s is not None:
            self._reboot = asyncio.get_running_loop().create_task(
                self._reboot_later(self.script.reboot_after_s)
            )

    async def power_on(self) -> None:
        self.powered = True
        self._frames.reset()
        self._drain(self._link_replies)
        self._drain(self._ecr_answers)
        if self.tcp_port is not None and self._server is None:
            self._server = await asyncio.start_server(
                self._on_client, self._tcp_host, self.tcp_port
            )

    async def _reboot_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.power_on()

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @staticmethod
    def _drain(queue: asyncio.Queue[str] | asyncio.Queue[bytes]) -> None:
        while not queue.empty():
            queue.get_nowait()

    # --- receiving ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the ECR."""
        if not self.powered:
            return
        if not self._serial:
            for raw in self._apdus.feed(data):
                self.counters.frames_received += 1
                self._on_apdu(raw)
            return
        for got in self._frames.feed(data):
            if got.kind in ("ack", "nak"):
                self._link_replies.put_nowait(got.kind)
            elif got.kind == "bad":
                self.counters.bad_frames_received += 1
                self.counters.naks_sent += 1
                self._raw(bytes([NAK]))
            else:
                self._on_frame(got.apdu)
            if not self.powered:
                return

    def _on_frame(self, raw: bytes) -> None:
        s = self.script
        if s.ignore_frames > 0:
            s.ignore_frames -= 1
            self.counters.frames_ignored += 1
            return
        if s.nak_frames > 0:
            s.nak_frames -= 1
            self.counters.naks_sent += 1
            self._raw(bytes([NAK]))
            return
        self.counters.frames_received += 1
        if self._is_command(raw) and self._armed(Step.COMMAND, raw[1]):
            self.script.power_loss_at = None  # one loss per script
            self.power_off()
            return
        self._raw(bytes([ACK]))
        self._on_apdu(raw)

    @staticmethod
    def _is_command(raw: bytes) -> bool:
        return raw[0] not in (0x80, 0x84) and raw[:2] != b"\x06\xb0"

    def _on_apdu(self, raw: bytes) -> None:
        cla, ins, data = split_apdu(raw)
        if cla in (0x80, 0x84):
            self._ecr_answers.put_nowait(raw)
            return
        if (cla, ins) == (0x06, 0xB0):
            self._spawn(self._on_abort_request())
            return
        self.counters.commands.append(f"{cla:02X} {ins:02X}")
        previous = self._task
        self._task = asyncio.get_running_loop().create_task(
            self._serve_after(previous, cla, ins, data)
        )

    async def _serve_after(
        self, previous: asyncio.Task[None] | None, cla: int, ins: int, data: bytes
    ) -> None:
        """One command at a time: the last one may still be tidying up after its 06 0F."""
        if previous is not None and not previous.done():
            done, _ = await asyncio.wait({previous}, timeout=0.2)
            if not done:  # really busy with another command
                with contextlib.suppress(_EcrGone, _PowerLost):
                    await self._answer(apdu(0x84, FUNCTION_NOT_POSSIBLE))
                if self._task is asyncio.current_task():
                    self._task = previous
                return
        await self._serve(cla, ins, data)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _on_abort_request(self) -> None:
        with contextlib.suppress(_EcrGone, _PowerLost):
            if self._task is not None and self._abortable:
                self._abort.set()
                await self._answer(PT_ACK)
            else:
                await self._answer(apdu(0x84, FUNCTION_NOT_POSSIBLE))

    # --- sending ------------------------------------------------------------------------------

    def _raw(self, data: bytes) -> None:
        if self._write is not None and self.powered:
            self._write(data)

    async def _paced(self, data: bytes) -> None:
        self._raw(data)
        if self._pace and self._serial:
            await asyncio.sleep(len(data) * CHAR_TIME_9600_8N2_S)

    async def _send_frame(self, raw: bytes) -> None:
        """One frame, repeated after a NAK or silence; _EcrGone when the ECR never ACKs it."""
        s = self.script
        for attempt in range(1 + s.max_repeats):
            self._drain(self._link_replies)
            if attempt:
                self.counters.repeats += 1
            else:
                self.counters.frames_sent += 1
            if s.junk_before_frames:
                await self._paced(s.junk_before_frames)
            if s.truncate_frames > 0:
                s.truncate_frames -= 1
                await self._paced(frame(raw)[: max(3, len(raw) // 2)])
            elif s.corrupt_frames > 0:
                s.corrupt_frames -= 1
                await self._paced(frame(raw, corrupt_crc=True))
            elif s.gap_frames > 0:
                s.gap_frames -= 1
                whole = frame(raw)
                await self._paced(whole[: len(whole) // 2])
                await asyncio.sleep(s.gap_s)
                await self._paced(whole[len(whole) // 2 :])
            else:
                await self._paced(frame(raw))
            try:
                reply = await asyncio.wait_for(self._link_replies.get(), s.answer_timeout_s)
            except TimeoutError:
                continue
            if reply == "ack":
                return
            self.counters.naks_received += 1
        raise _EcrGone

    async def _send(self, raw: bytes) -> None:
        if not self.powered:
            raise _PowerLost
        async with self._send_lock:
            if self._serial:
                await self._send_frame(raw)
            else:
                self.counters.frames_sent += 1
                self._raw(raw)

    async def _answer(self, raw: bytes) -> None:
        """A reply the ECR does not acknowledge with 80 00 00 (80 00 00, 84 xx)."""
        await self._send(raw)

    async def _tell(self, raw: bytes) -> None:
        """A message the ECR must acknowledge with 80 00 00 within our T3."""
        self._drain(self._ecr_answers)
        await self._send(raw)
        try:
            await asyncio.wait_for(self._ecr_answers.get(), self.script.answer_timeout_s)
        except TimeoutError:
            raise _EcrGone from None

    async def send_unsolicited(self, raw: bytes) -> None:
        """A message while the ECR is idle (reference §8 case 15), e.g. an 04 FF."""
        self.counters.unsolicited_sent += 1
        with contextlib.suppress(_EcrGone, _PowerLost):
            await self._tell(raw)

    # --- commands -----------------------------------------------------------------------------

    def _armed(self, step: Step, ins: int) -> bool:
        s = self.script
        return s.power_loss_at is step and s.power_loss_on in (None, ins)

    async def _step(self, step: Step, ins: int) -> None:
        if self.script.pause_at is step:
            await asyncio.sleep(self.script.pause_s)
        if self._armed(step, ins):
            self.script.power_loss_at = None  # one loss per script
            self.power_off()
            raise _PowerLost

    async def _serve(self, cla: int, ins: int, data: bytes) -> None:
        s = self.script
        try:
            if s.busy_code is not None:
                await self._answer(apdu(0x84, s.busy_code))
                return
            if s.refuse_code is not None:
                code, s.refuse_code = s.refuse_code, None
                await self._answer(apdu(0x84, code))
                return
            handler = {
                (0x06, 0x00): self._registration,
                (0x05, 0x01): self._status_enquiry,
                (0x06, 0x22): self._pre_auth,
                (0x06, 0x23): self._partial_reversal,
                (0x06, 0x24): self._book_total,
                (0x06, 0x25): self._pre_auth_reversal,
                (0x06, 0x50): self._end_of_day,
            }.get((cla, ins))
            if handler is None:
                await self._answer(apdu(0x84, FUNCTION_NOT_POSSIBLE))
                return
            await handler(ins, data)
        except (_PowerLost, _EcrGone):
            pass
        finally:
            if self._task is asyncio.current_task():
                self._task = None
            self._abortable = False
            self._abort.clear()

    async def _registration(self, ins: int, data: bytes) -> None:
        self.config_byte = data[3] if len(data) >= 4 else 0
        await self._answer(PT_ACK)
        await self._step(Step.ACK, ins)
        body = b"\x19\x10" + b"\x29" + bcd(self.terminal_id, 4) + b"\x49" + bcd(EUR, 2)
        await self._tell(apdu(0x06, 0x0F, body))
        await self._step(Step.COMPLETION, ins)

    async def _status_enquiry(self, ins: int, data: bytes) -> None:
        await self._answer(PT_ACK)
        await self._step(Step.ACK, ins)
        body = lllvar(self.software_version.encode()) + bytes([self.script.terminal_status])
        body += tlv_container(tlv(b"\x1f\x44", bcd(self.terminal_id, 4)))
        await self._tell(apdu(0x06, 0x0F, body))
        await self._step(Step.COMPLETION, ins)

    async def _wait_for_card(self, ins: int, kind: str, amount_cents: int) -> bool:
        """The 04 FF phase; False if the ECR aborted it (06 1E 6C already sent)."""
        s = self.script
        self._abortable = True
        for _ in range(s.intermediates):
            if self._abort.is_set():
                break
            body = bytes([INTERMEDIATE_STATUS])
            if s.intermediate_timeout_s is not None:
                body += bcd(s.intermediate_timeout_s, 1)
            await self._tell(apdu(0x04, 0xFF, body))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abort.wait(), s.intermediate_interval_s)
        self._abortable = False
        if self._abort.is_set():
            self.ledger.record(kind, amount_cents=amount_cents, result_code=ABORTED)
            await self._tell(apdu(0x06, 0x1E, bytes([ABORTED])))
            return False
        return True

    def _status_information(self, amount_cents: int, receipt: int, trace: int) -> bytes:
        pan = bytes.fromhex(self.script.masked_pan)
        body = b"\x27\x00" + b"\x04" + bcd(amount_cents, 6) + b"\x49" + bcd(EUR, 2)
        body += b"\x87" + bcd(receipt, 2) + b"\x0b" + bcd(trace, 3)
        body += b"\x29" + bcd(self.terminal_id, 4) + b"\x22" + llvar(pan)
        body += b"\x19\x60" + b"\x8a\x06" + b"\x8b" + llvar(self.script.card_name.encode())
        # card data a real terminal may add, which the ECR must never keep: expiry, sequence no.
        body += b"\x0e" + bcd(2912, 2) + b"\x17" + bcd(1, 2)
        return apdu(0x04, 0x0F, body)

    async def _print(self, title: str, amount_cents: int, receipt: int, trace: int) -> None:
        config = self.config_byte or 0
        if not config & 0x02:
            return
        digits = self.script.masked_pan.upper().replace("E", "*")
        padding = [
            f"line {i:03d} ......................" for i in range(self.script.extra_receipt_lines)
        ]
        lines = [
            "EVSITE HIL TERMINAL",
            title,
            f"EUR {amount_cents // 100}.{amount_cents % 100:02d}",
            f"Card {digits}",
            f"Receipt {receipt:04d} Trace {trace:06d}",
            *padding,
            "APPROVED",
        ]
        if config & 0x80:
            for i, line in enumerate(lines):
                attribute = 0x80 if i == len(lines) - 1 else 0x00
                await self._tell(apdu(0x06, 0xD1, bytes([attribute]) + line.encode("cp437")))
            return
        items = b"".join(tlv(b"\x07", line.encode("cp437")) for line in lines)
        content = tlv(b"\x1f\x07", b"\x02") + tlv(b"\x25", items)
        await self._tell(apdu(0x06, 0xD3, tlv_container(content)))

    async def _finish(self, ins: int, title: str, amount: int, receipt: int, trace: int) -> None:
        await self._step(Step.BOOKED, ins)
        await self._tell(self._status_information(amount, receipt, trace))
        await self._step(Step.STATUS, ins)
        await self._print(title, amount, receipt, trace)
        await self._tell(apdu(0x06, 0x0F, b"\x27\x00"))
        await self._step(Step.COMPLETION, ins)

    async def _pre_auth(self, ins: int, data: bytes) -> None:
        bmps = read_bmps(data)
        amount = from_bcd(bmps.get(0x04, b""))
        currency = from_bcd(bmps[0x49]) if 0x49 in bmps else EUR
        await self._answer(PT_ACK)
        await self._step(Step.ACK, ins)
        if not await self._wait_for_card(ins, "pre_auth", amount):
            return
        s = self.script
        if s.decline_code is not None:
            code, s.decline_code = s.decline_code, None
            self.ledger.record("pre_auth", amount_cents=amount, result_code=code)
            await self._tell(apdu(0x06, 0x1E, bytes([code])))
            return
        pre = self.ledger.open_pre_auth(amount, currency)
        await self._finish(ins, "PRE-AUTHORISATION", amount, pre.receipt_number, pre.trace_number)

    def _open_list(self) -> bytes:
        """06 1E B8 and the open receipts, in the form the script asks for."""
        receipts = self.ledger.open_receipts()
        form = self.script.open_list_form
        if not receipts:
            return apdu(0x06, 0x1E, bytes([PRE_AUTH_ERROR]) + b"\x87\xff\xff")
        if form == "bmp" and len(receipts) == 1:
            return apdu(0x06, 0x1E, bytes([PRE_AUTH_ERROR]) + b"\x87" + bcd(receipts[0], 2))
        head = b""
        rest = receipts
        if form != "tlv":  # "both" (and "bmp" with several): the first one in 87
            head, rest = b"\x87" + bcd(receipts[0], 2), receipts[1:]
        listed = b"".join(tlv(b"\x08", bcd(r, 2)) for r in rest)
        body = head + (tlv_container(tlv(b"\x23", listed)) if rest else b"")
        return apdu(0x06, 0x1E, bytes([PRE_AUTH_ERROR]) + body)

    async def _capture(self, ins: int, data: bytes, kind: str) -> None:
        bmps = read_bmps(data)
        await self._answer(PT_ACK)
        await self._step(Step.ACK, ins)
        if bmps.get(0x87) == b"\xff\xff" and kind == "partial_reversal":
            await self._tell(self._open_list())
            await self._step(Step.COMPLETION, ins)
            return
        receipt = from_bcd(bmps.get(0x87, b""))
        amount = from_bcd(bmps.get(0x04, b""))
        pre = self.ledger.pre_auths.get(receipt)
        if pre is None or pre.state != "open":
            self.ledger.record(
                kind, receipt_number=receipt, amount_cents=amount, result_code=PRE_AUTH_ERROR
            )
            await self._tell(self._open_list())
            return
        captured = pre.amount_cents - amount if kind == "partial_reversal" else amount
        if captured < 0 or captured > pre.amount_cents:
            self.ledger.record(
                kind, receipt_number=receipt, amount_cents=amount, result_code=AMOUNT_TOO_HIGH
            )
            await self._tell(apdu(0x06, 0x1E, bytes([AMOUNT_TOO_HIGH])))
            return
        pre.state, pre.captured_cents = "captured", captured
        new_receipt, trace = self.ledger.receipt(), self.ledger.trace()
        self.ledger.record(
            kind, receipt_number=receipt, amount_cents=amount, new_receipt_number=new_receipt
        )
        await self._finish(ins, "CAPTURE", captured, new_receipt, trace)

    async def _partial_reversal(self, ins: int, data: bytes) -> None:
        await self._capture(ins, data, "partial_reversal")

    async def _book_total(self, ins: int, data: bytes) -> None:
        await self._capture(ins, data, "book_total")

    async def _pre_auth_reversal(self, ins: int, data: bytes) -> None:
        bmps = read_bmps(data)
        receipt = from_bcd(bmps.get(0x87, b""))
        await self._answer(PT_ACK)
        await self._step(Step.ACK, ins)
        pre = self.ledger.pre_auths.get(receipt)
        if pre is None or pre.state != "open":
            code = PRE_AUTH_ERROR if pre is None else ALREADY_REVERSED
            self.ledger.record("pre_auth_reversal", receipt_number=receipt, result_code=code)
            await self._tell(apdu(0x06, 0x1E, bytes([code])))
            return
        pre.state = "released"
        new_receipt, trace = self.ledger.receipt(), self.ledger.trace()
        self.ledger.record(
            "pre_auth_reversal",
            receipt_number=receipt,
            amount_cents=pre.amount_cents,
            new_receipt_number=new_receipt,
        )
        await self._finish(ins, "RELEASE", pre.amount_cents, new_receipt, trace)

    async def _end_of_day(self, ins: int, data: bytes) -> None:
        await self._answer(PT_ACK)
        await self._step(Step.ACK, ins)
        if self.ledger.open_receipts():
            self.ledger.record("end_of_day", result_code=PRE_AUTH_ERROR)
            await self._tell(self._open_list())
            return
        batch = [p for p in self.ledger.pre_auths.values() if p.state == "captured"]
        total = sum(p.captured_cents for p in batch if not p.settled)
        for p in batch:
            p.settled = True
        self.ledger.record("end_of_day", amount_cents=total)
        self.script.terminal_status = 0x00
        trace = self.ledger.trace()
        body = b"\x27\x00" + b"\x04" + bcd(total, 6) + b"\x0b" + bcd(trace, 3)
        await self._step(Step.BOOKED, ins)
        await self._tell(apdu(0x04, 0x0F, body))
        await self._step(Step.STATUS, ins)
        await self._tell(apdu(0x06, 0x0F, b"\x27\x00"))
        await self._step(Step.COMPLETION, ins)
