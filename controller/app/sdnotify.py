"""App layer: the systemd notify client (sd_notify protocol over $NOTIFY_SOCKET, no library).

Tells the service manager when evsite is ready, what it is doing, that it is still alive (the
watchdog) and that it is stopping. It is best effort by design: a failed send must never take the
controller down, so no method raises and nothing is logged. Outside systemd (NOTIFY_SOCKET unset)
every call is a no-op.

Protocol: one datagram of newline-separated ``KEY=VALUE`` lines sent to the unix datagram socket
named by $NOTIFY_SOCKET; a leading ``@`` names an abstract socket (a NUL byte on the wire).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Self


class SystemdNotifier:
    """Sends sd_notify messages to one socket address; a no-op when the address is None."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address)
        self._sock: socket.socket | None = None
        self._watchdog_usec: str | None = None
        self._watchdog_pid: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier for this process: $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET") or None)
        notifier._watchdog_usec = env.get("WATCHDOG_USEC")
        notifier._watchdog_pid = env.get("WATCHDOG_PID")
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to (running under systemd with Type=notify)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (READY=1), optionally with a status line."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """A one-line status, shown by `systemctl status evsite`."""
        return self._send(None, text)

    def watchdog(self) -> bool:
        """Still alive (WATCHDOG=1): send at least every half watchdog interval."""
        return self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (STOPPING=1), optionally with a status line."""
        return self._send("STOPPING=1", status)

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout in seconds, or None if no watchdog is expected from this process.

        As sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive integer, and when WATCHDOG_PID
        is set it must be our own pid (a child that inherited the environment must not ping).
        """
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        """Release the socket; later calls reopen it. Safe to call more than once."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, state: str | None, status: str | None) -> bool:
        """Send one datagram; True if the kernel took it. Failures are swallowed on purpose."""
        if self._address is None:
            return False
        lines = [state] if state is not None else []
        if status is not None:
            # A newline would end the STATUS= field and start a bogus assignment.
            lines.append("STATUS=" + " ".join(status.splitlines()))
        if not lines:
            return False
        payload = ("\n".join(lines) + "\n").encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never stall the control loop on a busy manager: a lost ping is retried next
                # half-interval, a blocked tick would starve the EVSEs.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError:
            self.close()
            return False
        return True


def _socket_address(value: str | None) -> str | bytes | None:
    """The sendto() address for a $NOTIFY_SOCKET value; None for unset or unsupported kinds."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the name on the wire starts with a NUL byte instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # Newer managers may pass e.g. vsock:CID:PORT; we only speak AF_UNIX.
    return None
