"""Drivers layer: the pool of bus owners, one ``ModbusClient`` per TCP host:port or serial port.

Devices that share a line share its client, so an RS-485 bus runs one transaction at a time and
a TCP device that allows few masters (Alfen: two) sees one connection per evsite. The pool
counts the devices on each bus and closes a bus when its last device lets go.
"""

from __future__ import annotations

from controller.core.errors import ConfigError
from controller.core.site import SerialTransport, TcpTransport, Transport
from drivers.modbus.client import ModbusClient

BusKey = tuple[str, str, int]


def bus_key(transport: Transport) -> BusKey:
    if isinstance(transport, TcpTransport):
        return ("tcp", transport.host.lower(), transport.port)
    return ("serial", transport.port, 0)


class BusPool:
    """Hands out the shared client of each bus."""

    def __init__(
        self,
        *,
        retries: int = 0,
        reconnect_delay_s: float = 0.5,
        reconnect_delay_max_s: float = 5.0,
    ) -> None:
        self._retries = retries
        self._reconnect_delay_s = reconnect_delay_s
        self._reconnect_delay_max_s = reconnect_delay_max_s
        self._buses: dict[BusKey, ModbusClient] = {}
        self._users: dict[BusKey, int] = {}

    def get(
        self,
        transport: Transport,
        *,
        timeout_s: float = 0.5,
        inter_frame_gap_s: float | None = None,
    ) -> ModbusClient:
        """The client of ``transport``'s bus, created on first request.

        Devices on one bus may ask for different timeouts and gaps: the bus uses the largest.
        Two devices that describe the same port with different line settings are a config
        error (ConfigError), since one wire has one baud rate and one framing.
        """
        key = bus_key(transport)
        client = self._buses.get(key)
        if client is None:
            client = ModbusClient(
                transport,
                timeout_s=timeout_s,
                retries=self._retries,
                inter_frame_gap_s=inter_frame_gap_s,
                reconnect_delay_s=self._reconnect_delay_s,
                reconnect_delay_max_s=self._reconnect_delay_max_s,
            )
            self._buses[key] = client
            self._users[key] = 0
        else:
            _check_same_line(client.transport, transport)
            client.widen(timeout_s=timeout_s, inter_frame_gap_s=inter_frame_gap_s)
        self._users[key] += 1
        return client

    async def release(self, client: ModbusClient) -> None:
        """One device is done with ``client``; the bus closes when no device uses it."""
        key = bus_key(client.transport)
        if self._buses.get(key) is not client:
            await client.close()
            return
        self._users[key] -= 1
        if self._users[key] <= 0:
            del self._buses[key], self._users[key]
            await client.close()

    async def close_all(self) -> None:
        buses = list(self._buses.values())
        self._buses.clear()
        self._users.clear()
        for client in buses:
            await client.close()

    def find(self, transport: Transport) -> ModbusClient | None:
        """The client already driving ``transport``'s bus, None when no device uses it.

        The technician tools use it to go through the bus's one owner (``evsite bus scan``
        while the service runs) instead of opening the line a second time.
        """
        return self._buses.get(bus_key(transport))

    def users(self, transport: Transport) -> int:
        """How many devices share ``transport``'s bus."""
        return self._users.get(bus_key(transport), 0)

    def __len__(self) -> int:
        return len(self._buses)

    def buses(self) -> tuple[ModbusClient, ...]:
        return tuple(self._buses.values())


def _check_same_line(have: Transport, want: Transport) -> None:
    if have == want:
        return
    if isinstance(have, SerialTransport) and isinstance(want, SerialTransport):
        raise ConfigError(
            [
                f"serial port {want.port}: devices disagree on line settings "
                f"({have.describe()} vs {want.describe()})"
            ]
        )
    if isinstance(have, TcpTransport) and isinstance(want, TcpTransport):
        if have.rtu_over_tcp != want.rtu_over_tcp:
            raise ConfigError(
                [f"{want.host}:{want.port}: devices disagree on framing (RTU over TCP or not)"]
            )
        return  # same host, port and framing; the host's spelling may differ in case only
    raise ConfigError([f"{want.describe()} and {have.describe()} name the same bus"])
