"""hil: an RS-485 line on a pseudo-terminal: Modbus RTU slaves with real framing and timing.

``RtuLine`` holds the master side of a pty pair; the controller under test opens the other
side (``line.port``, e.g. /dev/pts/7) as its serial port, with its own baud rate and parity.
Every device on the line (several unit ids: a multi-drop bus) answers only frames that

- come at the line settings the device is configured for (``LineSettings``): a master at
  another baud rate, parity or stop bits gets no answer, as on a real bus where the device's
  UART sees framing and parity errors;
- carry its unit id (0 is a broadcast: writes are executed, nobody answers) and a good CRC
  (computed here, CRC-16/Modbus, low byte first on the wire).

Timing is the wire's: a request occupies the line for its bytes x bits per character / baud,
the device waits for t3.5 of silence after it, then ``turnaround_s``, and writes its reply one
character time per byte. So an RTU transaction costs here what it costs on a real line.

**Reading the master's settings.** The pty is one tty: the settings the master applies to its
side (pyserial's tcsetattr) are what ``termios.tcgetattr`` returns on ours, for the baud rate,
the stop bits and odd parity. Linux's pty driver, however, clears PARENB and CSIZE on every
tcsetattr (drivers/tty/pty.c, ``pty_set_termios``), so even parity cannot be read back from a
pty; worse, a tcsetattr that asks for PARENB and changes nothing else fails with EINVAL, which
makes pyserial (and so pymodbus) fail to open a pty with parity at all. While a line runs,
``termios.tcsetattr`` is therefore wrapped process-wide for our ptys only: it remembers what was
*asked*, and applies the request without PARENB when the pty refuses it, as a real UART would
take it. A master in this process (the drivers under test) is then checked in full. This is
the one place hil reaches into the process; it is undone when the last line stops.

**A master in another process** (the real ``evsite run`` in an end-to-end test) has the same
trouble opening a pty at even parity. ``python -m hil.ptymaster MODULE ARGS`` runs it with the
same wrapper (``install_master_shim``) for every pty, which also leaves the settings it asked
for in ``SETTINGS_DIR`` (a file per pty); the line reads them from there and checks that master
in full too. A master started any other way is checked on baud rate, stop bits and odd parity.

Fault injection is the device's (``RegisterDevice.inject``): no reply, CRC errors, garbage,
exception codes, slow replies; a device dropping off and coming back is SILENT, then NONE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import termios
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.devices.modbus import Fault, RegisterDevice

FC_WRITES_WITH_LENGTH = (15, 16)  # requests whose length follows from their byte count
FIXED_REQUEST_BYTES = 8  # FC01..FC06 requests: unit, fc, 4 bytes, CRC


@dataclass(frozen=True, slots=True, kw_only=True)
class LineSettings:
    """A serial line's framing, as configured on a device or applied by a master."""

    baudrate: int
    parity: str = "N"  # N, E or O
    stopbits: int = 1
    bytesize: int = 8

    @property
    def bits_per_char(self) -> int:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def char_time_s(self) -> float:
        return self.bits_per_char / self.baudrate

    @property
    def silent_interval_s(self) -> float:
        """t3.5: 3.5 character times, fixed at 1.75 ms above 19200 baud (Modbus over serial)."""
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_time_s

    def describe(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


# --- CRC and framing (sans-IO) ----------------------------------------------------------------


def crc16_modbus(data: bytes) -> int:
    """CRC-16/Modbus: polynomial 0x8005 reflected (0xA001), initial value 0xFFFF."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame(unit_id: int, pdu: bytes) -> bytes:
    """Unit id + PDU + CRC (low byte first)."""
    body = bytes([unit_id]) + pdu
    crc = crc16_modbus(body)
    return body + bytes([crc & 0xFF, crc >> 8])


def crc_ok(frame: bytes) -> bool:
    if len(frame) < 4:
        return False
    return crc16_modbus(frame[:-2]) == frame[-2] | (frame[-1] << 8)


def request_length(buffer: bytes) -> int | None:
    """The length of the request frame at the start of ``buffer``, None when it cannot tell."""
    if len(buffer) < 2:
        return None
    fc = buffer[1]
    if fc in FC_WRITES_WITH_LENGTH:
        return None if len(buffer) < 7 else 9 + buffer[6]
    if 1 <= fc <= 6:
        return FIXED_REQUEST_BYTES
    return None


def split_frames(buffer: bytes) -> list[bytes]:
    """Requests in one burst of bytes; what cannot be parsed stays one (bad) frame."""
    frames: list[bytes] = []
    rest = buffer
    while rest:
        n = request_length(rest)
        if n is None or n > len(rest):
            frames.append(rest)
            break
        frames.append(rest[:n])
        rest = rest[n:]
    return frames


# --- the master's side, read back from the pty --------------------------------------------------

_BAUD_CONSTANTS: dict[int, int] = {
    getattr(termios, f"B{b}"): b
    for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{b}")
}

_requested: dict[int, list[Any]] = {}  # pty device number -> attributes last asked for
_watched: set[int] = set()
_real_tcsetattr: Callable[..., None] | None = None
_every_pty = False  # install_master_shim: a master process takes every pty as a line
# where a master in another process leaves the settings it asked for, one file per pty
SETTINGS_DIR = Path(
    os.environ.get("HIL_PTY_SETTINGS_DIR")
    or Path(tempfile.gettempdir()) / f"hil-pty-settings-{os.getuid()}"
)
_PTY_SLAVE_MAJORS = range(136, 144)  # Unix98 pty slaves (/dev/pts/N)


def _settings_file(rdev: int) -> Path:
    return SETTINGS_DIR / f"{rdev}.json"


def _is_line(number: int | None) -> bool:
    if number is None:
        return False
    return number in _watched or (_every_pty and os.major(number) in _PTY_SLAVE_MAJORS)


def _recording_tcsetattr(fd: Any, when: int, attributes: list[Any]) -> None:
    assert _real_tcsetattr is not None
    try:
        number: int | None = os.fstat(fd if isinstance(fd, int) else fd.fileno()).st_rdev
    except (OSError, AttributeError, ValueError):
        number = None
    if not _is_line(number):
        _real_tcsetattr(fd, when, attributes)
        return
    try:
        _real_tcsetattr(fd, when, attributes)
    except termios.error:
        if not int(attributes[2]) & termios.PARENB:
            raise
        # A pty cannot hold PARENB: the kernel drops it, and answers EINVAL when nothing else
        # changes (pyserial's second tcsetattr at the same speed). A real UART takes it; apply
        # the rest so the master opens as it would on a real port.
        reduced = list(attributes)
        reduced[2] = int(reduced[2]) & ~termios.PARENB
        _real_tcsetattr(fd, when, reduced)
    assert number is not None
    _requested[number] = list(attributes)
    if _every_pty:
        with contextlib.suppress(OSError):
            SETTINGS_DIR.mkdir(parents=True, exist_ok=True)
            partial = _settings_file(number).with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps([int(a) for a in attributes[:6]]))
            partial.replace(_settings_file(number))


def install_master_shim() -> None:
    """In a process that will open simulated lines as their master (``hil.ptymaster``): let
    every pty take parity as a UART would, and publish the settings asked for."""
    global _every_pty, _real_tcsetattr  # noqa: PLW0603 - one wrapper per process
    _every_pty = True
    if _real_tcsetattr is None:
        _real_tcsetattr = termios.tcsetattr
        termios.tcsetattr = _recording_tcsetattr


def _published_settings(rdev: int) -> list[Any] | None:
    """What a master in another process asked for (``install_master_shim``), if it did."""
    try:
        data = json.loads(_settings_file(rdev).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or len(data) != 6:
        return None
    return [int(v) for v in data]


def _watch(rdev: int) -> None:
    global _real_tcsetattr  # noqa: PLW0603 - one wrapper per process, shared by every line
    if _real_tcsetattr is None:
        _real_tcsetattr = termios.tcsetattr
        termios.tcsetattr = _recording_tcsetattr
    _watched.add(rdev)


def _unwatch(rdev: int) -> None:
    global _real_tcsetattr  # noqa: PLW0603
    _watched.discard(rdev)
    _requested.pop(rdev, None)
    if not _watched and _real_tcsetattr is not None:
        termios.tcsetattr = _real_tcsetattr
        _real_tcsetattr = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterSettings:
    """What the master applied to the line; ``parity`` None: not readable (even or none)."""

    baudrate: int | None
    parity: str | None
    stopbits: int

    def matches(self, device: LineSettings) -> bool:
        if self.baudrate != device.baudrate or self.stopbits != device.stopbits:
            return False
        if self.parity is None:  # PARENB cleared by the pty: only odd parity is visible
            return device.parity != "O"
        return self.parity == device.parity


def settings_from_termios(attributes: Sequence[Any], *, parity_known: bool) -> MasterSettings:
    cflag = int(attributes[2])
    baud = _BAUD_CONSTANTS.get(int(attributes[4]))
    parity: str | None
    if parity_known:
        parity = ("O" if cflag & termios.PARODD else "E") if cflag & termios.PARENB else "N"
    else:
        parity = "O" if cflag & termios.PARODD else None
    return MasterSettings(baudrate=baud, parity=parity, stopbits=2 if cflag & termios.CSTOPB else 1)


# --- the line -----------------------------------------------------------------------------------


@dataclass(slots=True)
class LineCounters:
    """What the line saw, for tests and benchmarks."""

    frames: int = 0  # request frames taken off the line
    line_mismatch: int = 0  # frames a device dropped: the master's settings differ from its own
    bad_crc: int = 0
    no_device: int = 0  # frames for a unit id nobody on the line has
    replies: int = 0
    reply_bytes: int = 0
    per_unit: dict[int, int] = field(default_factory=dict)  # frames per addressed unit id


class RtuLine:
    """An RS-485 line on a pty with the simulated devices on it (several unit ids)."""

    def __init__(
        self,
        devices: Sequence[RegisterDevice] = (),
        *,
        line: LineSettings,
        turnaround_s: float = 0.0,
    ) -> None:
        self.line = line
        self.turnaround_s = turnaround_s
        self._devices: dict[int, tuple[RegisterDevice, LineSettings]] = {}
        for d in devices:
            self.attach(d)
        self.counters = LineCounters()
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._rdev = 0
        self._port = ""
        self._queue: asyncio.Queue[tuple[float, bytes]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._line_free_at = 0.0
        self._published_stamp: int | None = None
        self._published_attrs: list[Any] | None = None

    def attach(self, device: RegisterDevice, line: LineSettings | None = None) -> None:
        """Put ``device`` on the line, configured for ``line`` (default: the line's settings; a
        different one models a device set to another baud rate or parity)."""
        if device.unit_id in self._devices or device.unit_id == 0:
            raise ValueError(f"unit id {device.unit_id} is taken or the broadcast address")
        self._devices[device.unit_id] = (device, line or self.line)

    def device(self, unit_id: int) -> RegisterDevice:
        return self._devices[unit_id][0]

    @property
    def port(self) -> str:
        """The path the master opens as its serial port."""
        if not self._port:
            raise RuntimeError("the line is not started")
        return self._port

    def master_settings(self) -> MasterSettings:
        """The settings the master applied to its side of the pty."""
        if self._master_fd is None:
            raise RuntimeError("the line is not started")
        asked = _requested.get(self._rdev)
        if asked is None:
            asked = self._published()
        if asked is not None:
            return settings_from_termios(asked, parity_known=True)
        return settings_from_termios(termios.tcgetattr(self._master_fd), parity_known=False)

    def _published(self) -> list[Any] | None:
        """A master in another process's settings, re-read only when its file changes."""
        try:
            stamp = os.stat(_settings_file(self._rdev)).st_mtime_ns
        except OSError:
            return None
        if stamp != self._published_stamp:
            self._published_stamp = stamp
            self._published_attrs = _published_settings(self._rdev)
        return self._published_attrs

    async def start(self) -> str:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        # The line's own settings until a master applies its own.
        attrs = termios.tcgetattr(slave)
        speed = next(k for k, v in _BAUD_CONSTANTS.items() if v == self.line.baudrate)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self._master_fd, self._slave_fd = master, slave
        self._rdev = os.fstat(slave).st_rdev
        self._port = os.ttyname(slave)
        # pty numbers are reused: settings a former master left for this one are not ours
        with contextlib.suppress(OSError):
            _settings_file(self._rdev).unlink()
        _watch(self._rdev)
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        loop.add_reader(master, self._on_readable)
        self._task = asyncio.create_task(self._serve(), name=f"rtu-line {self._port}")
        return self._port

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._master_fd is not None:
            asyncio.get_running_loop().remove_reader(self._master_fd)
            _unwatch(self._rdev)
            for fd in (self._master_fd, self._slave_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master_fd = self._slave_fd = None

    async def __aenter__(self) -> RtuLine:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- the loop ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._master_fd is not None and self._queue is not None
        try:
            data = os.read(self._master_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while no master has the port open
        if data:
            self._queue.put_nowait((asyncio.get_running_loop().time(), data))

    def _wire(self) -> LineSettings:
        """The timing on the wire is the master's (it sends at its own baud rate)."""
        master = self.master_settings()
        if master.baudrate is None:
            return self.line
        return LineSettings(
            baudrate=master.baudrate,
            parity=master.parity or self.line.parity,
            stopbits=master.stopbits,
        )

    async def _serve(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            arrived_s, data = await self._queue.get()
            wire = self._wire()
            burst = bytearray(data)
            wire_end_s = max(arrived_s, self._line_free_at) + len(data) * wire.char_time_s
            # a frame ends with t3.5 of silence on the wire
            while True:
                wait_s = wire_end_s + wire.silent_interval_s - loop.time()
                if wait_s <= 0 and self._queue.empty():
                    break
                try:
                    more_s, more = await asyncio.wait_for(self._queue.get(), max(wait_s, 0.0))
                except TimeoutError:
                    break
                burst += more
                wire_end_s = max(wire_end_s, more_s) + len(more) * wire.char_time_s
            self._line_free_at = wire_end_s
            for frame in split_frames(bytes(burst)):
                await self._handle(frame, wire)

    async def _handle(self, frame: bytes, wire: LineSettings) -> None:
        self.counters.frames += 1
        if len(frame) < 4:
            self.counters.bad_crc += 1
            return
        unit = frame[0]
        targets = [d for d in self._devices.values()] if unit == 0 else [self._devices.get(unit)]
        master = self.master_settings()
        for entry in targets:
            if entry is None:
                self.counters.no_device += 1
                continue
            device, settings = entry
            if not master.matches(settings):
                self.counters.line_mismatch += 1
                continue
            if not crc_ok(frame):
                self.counters.bad_crc += 1
                continue
            if device.is_asleep:
                continue
            self.counters.per_unit[unit] = self.counters.per_unit.get(unit, 0) + 1
            device.requests += 1
            fault = device.next_fault()
            if fault is Fault.SILENT:
                continue
            if fault is Fault.EXCEPTION:
                pdu = bytes([frame[1] | 0x80, device.exception_code])
            else:
                pdu = device.respond(frame[1:-2])
            if unit == 0:
                continue  # a broadcast is executed and never answered
            reply = rtu_frame(unit, pdu)
            if fault is Fault.CORRUPT:
                reply = reply[:-2] + bytes([reply[-2] ^ 0xFF, reply[-1]])
            elif fault is Fault.GARBAGE:
                reply = device.garbage(len(reply))
            delay_s = self.turnaround_s + (device.delay_s if fault is Fault.SLOW else 0.0)
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            device.replies += 1
            await self._send(reply, wire)

    async def _send(self, data: bytes, wire: LineSettings) -> None:
        """Write ``data`` one character time per byte (byte k is complete after k+1 of them)."""
        assert self._master_fd is not None
        loop = asyncio.get_running_loop()
        start_s = max(loop.time(), self._line_free_at)
        char_s = wire.char_time_s
        sent = 0
        while sent < len(data):
            due = min(len(data), int((loop.time() - start_s) / char_s))
            if due > sent:
                with contextlib.suppress(BlockingIOError):
                    sent += os.write(self._master_fd, data[sent:due])
            if sent < len(data):
                await asyncio.sleep(max(0.0, start_s + (sent + 1) * char_s - loop.time()))
        self._line_free_at = start_s + len(data) * char_s
        self.counters.replies += 1
        self.counters.reply_bytes += len(data)
