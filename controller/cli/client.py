"""CLI layer: a small synchronous client of the running service's control socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from controller.core.errors import EvsiteError


class ServiceUnreachable(EvsiteError):
    """The service's socket is missing, refused us, or answered garbage."""


class ServiceNotRunning(ServiceUnreachable):
    """No service listens on the socket (no socket file, or a stale one nobody accepts on).

    The technician tools then open the line themselves; any other failure (permission denied,
    a hung service) must not make them do that: the service may be driving the bus.
    """


def request(path: Path, cmd: str, *, timeout_s: float = 3.0, **args: Any) -> dict[str, Any]:
    """Send one request and return the response object (raises ServiceUnreachable)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ServiceNotRunning(f"no evsite socket at {path}: is the service running?") from exc
    except PermissionError as exc:
        raise ServiceUnreachable(
            f"permission denied on {path}: join the socket's group (see README) or use sudo"
        ) from exc
    except OSError as exc:
        raise ServiceUnreachable(f"cannot talk to evsite at {path}: {exc}") from exc
    try:
        answer = json.loads(buf)
    except json.JSONDecodeError as exc:
        raise ServiceUnreachable(f"evsite at {path} answered garbage") from exc
    if not isinstance(answer, dict):
        raise ServiceUnreachable(f"evsite at {path} answered garbage")
    return answer
