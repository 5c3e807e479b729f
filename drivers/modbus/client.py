"""Drivers layer: the thin I/O shell around pymodbus, one ``ModbusClient`` per bus.

A bus is a Modbus TCP host:port (possibly an RS-485 gateway with RTU framing) or a serial port.
Every device on that bus shares its client, which runs one transaction at a time (an
``asyncio.Lock``), keeps the RTU silent interval between frames (pymodbus does not), connects
lazily and reconnects on the next call after a short back-off (pymodbus's own background
reconnect is switched off, so there is one owner of the connection).

Each call is bounded twice: pymodbus waits ``timeout_s`` per attempt with ``retries`` explicit
(default 0), and the whole call, connect included, is cut by ``asyncio.wait_for`` at
1.5 x the attempts' budget, so a silent device costs its own timeout and never more. A read may
ask for a shorter timeout of its own (``evsite bus scan`` probes absent unit ids at 0.1 s on a
bus whose devices are polled at 0.5 s): the bus's lock is held, so nothing else is in flight.

Every pymodbus failure becomes a core error: ``DeviceUnavailable`` (retryable: no answer,
timeout, connection, garbage, busy/gateway exception codes) or ``DeviceError`` (permanent: the
device answered with a Modbus exception such as "illegal data address").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import (
    ConnectionException,
    ModbusException,
    ModbusIOException,
    NotImplementedException,
    ParameterException,
)
from pymodbus.framer import FramerType

from controller.core.errors import DeviceError, DeviceUnavailable, EvsiteError
from controller.core.site import SerialTransport, TcpTransport, Transport
from drivers.modbus.registermap import Table

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# Exception codes that say "not now" rather than "never": worth another try on the next tick.
RETRYABLE_EXCEPTION_CODES = frozenset({5, 6, 10, 11})

_PYMODBUS_LOGGERS = ("pymodbus", "pymodbus.logging")


class ModbusRefused(DeviceError):
    """The device answered with a Modbus exception response that retrying will not change."""

    def __init__(self, message: str, *, function_code: int, exception_code: int) -> None:
        super().__init__(message)
        self.function_code = function_code
        self.exception_code = exception_code


class ModbusNoAnswer(DeviceUnavailable):
    """No usable answer in time: silence, a corrupt frame, garbage, or a reply too late."""


class ModbusBusy(DeviceUnavailable):
    """The device (or its gateway) answered with a busy / gateway exception: try again later."""

    def __init__(self, message: str, *, function_code: int, exception_code: int) -> None:
        super().__init__(message)
        self.function_code = function_code
        self.exception_code = exception_code


def silence_pymodbus_logging() -> None:
    """pymodbus logs at ERROR for every timeout; our errors carry the facts, so mute it."""
    for name in _PYMODBUS_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def silent_interval_s(transport: Transport) -> float:
    """Modbus RTU t3.5 for a serial line (fixed 1.75 ms above 19200 baud); 0 for TCP."""
    if isinstance(transport, TcpTransport):
        return 0.0
    if transport.baudrate > 19200:
        return 0.00175
    bits = 1 + transport.bytesize + (0 if transport.parity.upper() == "N" else 1)
    bits += transport.stopbits
    return 3.5 * bits / transport.baudrate


@dataclass(frozen=True, slots=True, kw_only=True)
class BusCounters:
    """What one bus has done since it was created (for status, tests and benchmarks)."""

    transactions: int = 0  # requests sent (each costs the line one round trip or timeout)
    failures: int = 0  # transactions that ended in an error, timeouts included
    timeouts: int = 0  # transactions that got no usable answer in time
    busy_s: float = 0.0  # time the bus was held by transactions


class ModbusClient:
    """One bus: a TCP host:port or a serial port, shared by every device (unit id) on it."""

    def __init__(
        self,
        transport: Transport,
        *,
        timeout_s: float = 0.5,
        retries: int = 0,
        inter_frame_gap_s: float | None = None,
        reconnect_delay_s: float = 0.5,
        reconnect_delay_max_s: float = 5.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s {timeout_s} must be > 0")
        if not 0 <= retries <= 3:
            raise ValueError(f"retries {retries} must be 0..3 (0 or 1 keeps the tick's budget)")
        self._transport = transport
        self._timeout_s = timeout_s
        self._retries = retries
        self._gap_s = (
            silent_interval_s(transport) if inter_frame_gap_s is None else inter_frame_gap_s
        )
        self._reconnect_delay_s = reconnect_delay_s
        self._reconnect_delay_max_s = max(reconnect_delay_max_s, reconnect_delay_s)
        self._backoff_s = reconnect_delay_s
        self._connect_not_before = 0.0
        self._last_end = 0.0
        # pymodbus clients and asyncio locks belong to one event loop: built on first use.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._client: Any = None
        self._rebuild = False
        self._counters = BusCounters()
        silence_pymodbus_logging()

    @property
    def counters(self) -> BusCounters:
        return self._counters

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def inter_frame_gap_s(self) -> float:
        return self._gap_s

    @property
    def call_budget_s(self) -> float:
        """The longest one call may take, connect included."""
        return self.budget_for(self._timeout_s)

    def budget_for(self, timeout_s: float) -> float:
        """The longest one call with a per-attempt ``timeout_s`` may take, connect included."""
        return timeout_s * (self._retries + 1) * 1.5

    def describe(self) -> str:
        return self._transport.describe()

    def widen(
        self, *, timeout_s: float | None = None, inter_frame_gap_s: float | None = None
    ) -> None:
        """Let a device on this bus ask for a longer timeout or gap (the bus takes the largest)."""
        if timeout_s is not None and timeout_s > self._timeout_s:
            self._timeout_s = timeout_s
            self._rebuild = True  # pymodbus takes its timeout at construction
        if inter_frame_gap_s is not None and inter_frame_gap_s > self._gap_s:
            self._gap_s = inter_frame_gap_s

    # --- the three operations -------------------------------------------------------------

    async def read_registers(
        self,
        table: Table | str,
        address: int,
        count: int,
        unit_id: int,
        *,
        timeout_s: float | None = None,
    ) -> list[int]:
        """Read ``count`` registers (FC03 holding / FC04 input) starting at ``address``.

        For the coil table (FC01) ``count`` is in coils and each comes back as 0 or 1.
        ``timeout_s`` replaces the bus's timeout for this one request (a probe of a unit id
        that is probably absent).
        """
        table = Table(table)
        what = f"read {table.value} {address}+{count}"

        async def call(client: Any) -> Any:
            if table is Table.HOLDING:
                return await client.read_holding_registers(address, count=count, device_id=unit_id)
            if table is Table.COIL:
                return await client.read_coils(address, count=count, device_id=unit_id)
            return await client.read_input_registers(address, count=count, device_id=unit_id)

        response = await self._transact(what, unit_id, call, timeout_s=timeout_s)
        if table is Table.COIL:
            # a coil response carries whole bytes: the bits past ``count`` are padding
            registers = [1 if b else 0 for b in list(response.bits)[:count]]
        else:
            registers = list(response.registers)
        if len(registers) != count:
            raise DeviceUnavailable(
                f"{self.describe()} unit {unit_id}: {what} answered {len(registers)} registers"
            )
        return registers

    async def write_registers(self, address: int, values: Sequence[int], unit_id: int) -> None:
        """Write ``values`` in ONE FC16 request (devices such as Alfen reject split writes)."""
        words = list(values)
        what = f"write {address}+{len(words)}"

        async def call(client: Any) -> Any:
            return await client.write_registers(address, words, device_id=unit_id)

        response = await self._transact(what, unit_id, call)
        if response.address != address or response.count != len(words):
            raise DeviceUnavailable(
                f"{self.describe()} unit {unit_id}: {what} echoed "
                f"{response.address}+{response.count}"
            )

    async def write_register(self, address: int, value: int, unit_id: int) -> None:
        """Write one register with FC06 (for devices that accept no FC16)."""
        what = f"write single {address}"

        async def call(client: Any) -> Any:
            return await client.write_register(address, value, device_id=unit_id)

        response = await self._transact(what, unit_id, call)
        if response.address != address:
            raise DeviceUnavailable(
                f"{self.describe()} unit {unit_id}: {what} echoed {response.address}"
            )

    async def write_coil(self, address: int, value: bool, unit_id: int) -> None:
        """Switch one coil with FC05."""
        what = f"write coil {address}"

        async def call(client: Any) -> Any:
            return await client.write_coil(address, value, device_id=unit_id)

        response = await self._transact(what, unit_id, call)
        if response.address != address:
            raise DeviceUnavailable(
                f"{self.describe()} unit {unit_id}: {what} echoed {response.address}"
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # closing the client of a loop that has already finished may raise: nothing to keep
            with contextlib.suppress(Exception):
                client.close()

    # --- the shell ---------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            # A new event loop (a restart, or the next test): the old objects cannot be reused.
            self._loop, self._lock, self._client = loop, asyncio.Lock(), None
            self._connect_not_before = self._last_end = 0.0
            self._backoff_s = self._reconnect_delay_s
        return self._lock

    def _build(self) -> Any:
        t = self._transport
        common: dict[str, Any] = {
            "timeout": self._timeout_s,
            "retries": self._retries,
            "reconnect_delay": 0,  # no background reconnect: the next call reconnects
            "reconnect_delay_max": 0,
            "name": t.describe(),
        }
        if isinstance(t, TcpTransport):
            framer = FramerType.RTU if t.rtu_over_tcp else FramerType.SOCKET
            return AsyncModbusTcpClient(t.host, port=t.port, framer=framer, **common)
        assert isinstance(t, SerialTransport)
        return AsyncModbusSerialClient(
            t.port,
            framer=FramerType.RTU,
            baudrate=t.baudrate,
            bytesize=t.bytesize,
            parity=t.parity.upper(),
            stopbits=t.stopbits,
            **common,
        )

    async def _connected(self) -> Any:
        if self._rebuild and self._client is not None:
            await self.close()
        self._rebuild = False
        if self._client is None:
            self._client = self._build()
        client = self._client
        if client.connected:
            return client
        loop = asyncio.get_running_loop()
        wait_s = self._connect_not_before - loop.time()
        if wait_s > 0:
            raise DeviceUnavailable(
                f"{self.describe()}: not connected (next attempt in {wait_s:.1f} s)"
            )
        if not await client.connect() or not client.connected:
            self._connect_not_before = loop.time() + self._backoff_s
            self._backoff_s = min(2 * self._backoff_s, self._reconnect_delay_max_s)
            raise DeviceUnavailable(f"{self.describe()}: cannot connect")
        self._backoff_s = self._reconnect_delay_s
        return client

    async def _attempt(
        self,
        what: str,
        unit_id: int,
        call: Callable[[Any], Awaitable[Any]],
        timeout_s: float | None = None,
    ) -> Any:
        where = f"{self.describe()} unit {unit_id}"
        try:
            client = await self._connected()
            if timeout_s is None:
                response = await call(client)
            else:
                response = await self._with_timeout(client, timeout_s, call)
        except EvsiteError:
            raise
        except ModbusIOException as exc:
            raise ModbusNoAnswer(f"{where}: no answer to {what} ({exc})") from exc
        except ConnectionException as exc:
            raise DeviceUnavailable(f"{where}: connection lost during {what} ({exc})") from exc
        except (ParameterException, NotImplementedException) as exc:
            raise DeviceError(f"{where}: {what} cannot be sent ({exc})") from exc
        except ModbusException as exc:
            raise DeviceUnavailable(f"{where}: {what} failed ({exc})") from exc
        except (TimeoutError, OSError) as exc:
            raise DeviceUnavailable(f"{where}: {what} failed ({exc!r})") from exc
        except Exception as exc:  # no library exception leaves this adapter
            raise DeviceUnavailable(f"{where}: {what} failed unexpectedly ({exc!r})") from exc
        if response is None:
            raise ModbusNoAnswer(f"{where}: no answer to {what}")
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            fc = int(response.function_code) & 0x7F
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            text = f"{where}: {what} refused: exception {code} ({name}), function {fc}"
            if code in RETRYABLE_EXCEPTION_CODES:
                raise ModbusBusy(text, function_code=fc, exception_code=code)
            raise ModbusRefused(text, function_code=fc, exception_code=code)
        return response

    @staticmethod
    async def _with_timeout(
        client: Any, timeout_s: float, call: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        """``call`` with pymodbus waiting ``timeout_s`` per attempt instead of the bus's timeout.

        pymodbus 3.16 reads the per-attempt timeout from its transaction manager's parameters
        at every attempt; we hold the bus lock, so changing it for one call touches no other.
        Such a call is a probe: its silence does not count towards pymodbus closing a TCP
        connection after ``retries + 3`` unanswered requests (an absent unit id behind a gateway
        says nothing about the devices that share the connection).
        """
        ctx: Any = getattr(client, "ctx", None)
        params = getattr(ctx, "comm_params", None)
        if ctx is None or params is None or not hasattr(params, "timeout_connect"):
            return await call(client)  # another pymodbus: the outer wait_for still bounds it
        saved_timeout = params.timeout_connect
        saved_count = getattr(ctx, "count_until_disconnect", None)
        params.timeout_connect = timeout_s
        try:
            return await call(client)
        finally:
            params.timeout_connect = saved_timeout
            if saved_count is not None:
                ctx.count_until_disconnect = max(ctx.count_until_disconnect, saved_count)

    async def _transact(
        self,
        what: str,
        unit_id: int,
        call: Callable[[Any], Awaitable[Any]],
        *,
        timeout_s: float | None = None,
    ) -> Any:
        lock = self._bind_loop()
        loop = asyncio.get_running_loop()
        async with lock:
            if self._gap_s > 0 and self._last_end > 0:
                delay = self._last_end + self._gap_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            budget = self.call_budget_s
            if timeout_s is not None:
                budget = self.budget_for(timeout_s)
                if self._client is None or not self._client.connected:
                    budget += self._timeout_s  # a short probe still gets a whole connect
            start = loop.time()
            failed = timed_out = True
            try:
                response = await asyncio.wait_for(
                    self._attempt(what, unit_id, call, timeout_s), budget
                )
                failed = timed_out = False
                return response
            except TimeoutError as exc:
                raise ModbusNoAnswer(
                    f"{self.describe()} unit {unit_id}: no answer to {what} within {budget:.2f} s"
                ) from exc
            except EvsiteError as exc:
                timed_out = isinstance(exc, ModbusNoAnswer)
                raise
            finally:
                self._last_end = loop.time()
                c = self._counters
                self._counters = replace(
                    c,
                    transactions=c.transactions + 1,
                    failures=c.failures + int(failed),
                    timeouts=c.timeouts + int(timed_out),
                    busy_s=c.busy_s + self._last_end - start,
                )
