"""App layer: the technician socket (unix stream, newline-delimited JSON, one request a line).

The CLI connects here to read the running service's state. The socket file is created with mode
0660 and, when configured, the technicians' group, so only root, the service and that group can
talk to it. Requests: ``{"cmd": "status"}``, ``{"cmd": "ping"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("evsite.socket")

SOCKET_NAME = "evsite.sock"
MAX_REQUEST_BYTES = 64 * 1024


class ControlSocket:
    def __init__(
        self,
        path: Path,
        *,
        status: Callable[[], dict[str, Any]],
        mode: int = 0o660,
        group: str | None = None,
    ) -> None:
        self.path = path
        self._status = status
        self._mode = mode
        self._group = group
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Create the socket with no access for others from the first instant, then widen.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old)
        if self._group:
            # Under the systemd unit the group is already the service's primary group (and
            # chown is filtered out); only change it where it differs.
            try:
                gid = grp.getgrnam(self._group).gr_gid
                if os.stat(self.path).st_gid != gid:
                    os.chown(self.path, -1, gid)
            except (KeyError, PermissionError) as exc:
                log.warning("socket_group_not_set", group=self._group, error=str(exc))
        os.chmod(self.path, self._mode)
        log.info("socket_listening", path=str(self.path), mode=oct(self._mode))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"request is not JSON: {exc.msg}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "request must be an object with a string 'cmd'"}
        cmd = request["cmd"]
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, "status": self._status()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
