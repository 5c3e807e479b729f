"""The technician socket: 0660 from the first instant, JSON lines, bad requests answered."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

from controller.app.control_socket import ControlSocket
from controller.cli.client import ServiceUnreachable, request


def _serve(path: Path, body: object) -> None:
    async def main() -> None:
        sock = ControlSocket(path, status=lambda: {"mode": "normal"})
        await sock.start()
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o660, oct(mode)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, body)  # type: ignore[arg-type]
        await sock.close()
        assert result is None

    asyncio.run(main())
    assert not path.exists()  # the socket file is removed on close


def test_status_ping_and_errors_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "run" / "evsite.sock"

    def client() -> None:
        assert request(path, "ping") == {"ok": True}
        assert request(path, "status") == {"ok": True, "status": {"mode": "normal"}}
        answer = request(path, "reboot")
        assert answer["ok"] is False and "unknown command 'reboot'" in answer["error"]
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"not json\n[1]\n")
            reader = s.makefile()
            lines = reader.readline(), reader.readline()
        assert "not JSON" in json.loads(lines[0])["error"]
        assert "must be an object" in json.loads(lines[1])["error"]

    _serve(path, client)


def test_client_says_clearly_when_the_service_is_not_running(tmp_path: Path) -> None:
    try:
        request(tmp_path / "nothing.sock", "status")
    except ServiceUnreachable as exc:
        assert "is the service running?" in str(exc)
    else:
        raise AssertionError("expected ServiceUnreachable")
