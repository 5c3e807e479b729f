"""App layer: the technician socket (unix stream, newline-delimited JSON, one request a line).

The CLI connects here to read the running service's state and to set limits. The socket file is
created with mode 0660 and, when configured, the technicians' group, so only root, the service
and that group can talk to it.

Each request is ``{"cmd": NAME, ...arguments}``; commands are dispatched through a mapping of
name -> (pydantic payload model, handler). A payload is validated whole before its handler runs,
so a bad request changes nothing. A handler may be a coroutine function (a bus scan takes
seconds): each connection is served on its own task, so the others are not held up. Answers
are ``{"ok": true, ...}`` or ``{"ok": false, "error": "...", "field": "current_a"}`` (``field``
when one input is at fault).

Commands: ``ping``, ``status``, and with a SlotBook ``limit_set``, ``limit_clear``,
``limit_list`` (technician overrides, `evsite limit`); the service adds ``faults``
(controller.app.service) and ``bus_scan`` / ``device_read`` (controller.app.device_commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from controller.app.limit_commands import (
    LimitRefused,
    clear_limits,
    set_limit,
    slot_document,
)
from controller.app.slots import SlotBook
from controller.core.errors import EvsiteError
from controller.core.slots import SITE, SlotSource, time_of_use_slot

log = structlog.get_logger("evsite.socket")

SOCKET_NAME = "evsite.sock"
MAX_REQUEST_BYTES = 64 * 1024

P = TypeVar("P", bound=BaseModel)
Answer = dict[str, Any]


class CommandRefused(EvsiteError):
    """A request that was understood but not carried out; ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Command(Generic[P]):
    """One socket command: the model its arguments must pass, and what to do with them."""

    payload: type[P]
    run: Callable[[P], Answer | Awaitable[Answer]]


# Arguments arrive as JSON from the CLI (or a script): strict types, nothing unknown.
_PAYLOAD = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoArguments(BaseModel):
    model_config = _PAYLOAD


class LimitSetRequest(BaseModel):
    """``limit_set``: a technician override. Times are ISO 8601; without offset, site-local."""

    model_config = _PAYLOAD
    id: str | None = None  # default: the scope, so one override per scope unless named
    scope: str = SITE  # site, circuit:<id> or connector:<id>
    current_a: float | None = None
    power_w: float | None = None
    starts_at: str | None = None
    ends_at: str | None = None
    duration_s: float | None = None  # ends_at = (starts_at or now) + duration_s
    note: str = ""


class LimitClearRequest(BaseModel):
    """``limit_clear``: one override by id, or all of them."""

    model_config = _PAYLOAD
    id: str | None = None
    all: bool = False


class ControlSocket:
    def __init__(
        self,
        path: Path,
        *,
        status: Callable[[], dict[str, Any]],
        commands: Mapping[str, Command[Any]] | None = None,
        mode: int = 0o660,
        group: str | None = None,
    ) -> None:
        self.path = path
        self._status = status
        self._commands: dict[str, Command[Any]] = {
            "ping": Command(NoArguments, lambda _: {}),
            "status": Command(NoArguments, lambda _: {"status": self._status()}),
            **(commands or {}),
        }
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
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> Answer:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"request is not JSON: {exc.msg}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "request must be an object with a string 'cmd'"}
        name = request.pop("cmd")
        command = self._commands.get(name)
        if command is None:
            known = ", ".join(sorted(self._commands))
            return {"ok": False, "error": f"unknown command {name!r}; commands: {known}"}
        try:
            payload = command.payload.model_validate(request)
        except ValidationError as exc:
            return _invalid(exc)
        try:
            result = command.run(payload)
            if inspect.isawaitable(result):
                result = await result
            return {"ok": True, **result}
        except CommandRefused as exc:
            answer: Answer = {"ok": False, "error": exc.message}
            if exc.field is not None:
                answer["field"] = exc.field
            return answer
        except Exception as exc:
            # One bad command must not take the socket (or the service) down.
            log.exception("socket_command_failed", cmd=name)
            return {"ok": False, "error": f"internal error in {name}: {type(exc).__name__}"}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _invalid(exc: ValidationError) -> Answer:
    """The first problem of a payload, as an answer naming its field."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    field = str(loc[0]) if loc else None
    if err["type"] == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif err["type"] == "missing":
        message = f"{field}: missing"
    else:
        text = err["msg"][:1].lower() + err["msg"][1:]
        message = f"{field}: {text}, got {err.get('input')!r}" if field else text
    answer: Answer = {"ok": False, "error": message}
    if field is not None:
        answer["field"] = field
    return answer


# --------------------------------------------------------------------------------------------
# Limit commands: technician overrides in the SlotBook (the work is in app.limit_commands,
# shared with the MQTT commands)
# --------------------------------------------------------------------------------------------


def _site_time(field: str, text: str, tz: ZoneInfo, now: datetime) -> datetime:
    """ISO 8601 text -> aware datetime; without an offset it is the site's local time.

    A time of day alone (``18:00``) is today's date at the site.
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        try:
            clock = time.fromisoformat(text)
        except ValueError as exc:
            raise CommandRefused(
                f"{field}: {text!r} is not an ISO 8601 time like 2026-11-29T18:00, "
                "2026-11-29T18:00+01:00 or 18:00 (today)",
                field=field,
            ) from exc
        value = datetime.combine(now.astimezone(tz).date(), clock)
    if value.tzinfo is not None:
        return value
    local = value.replace(tzinfo=tz)
    # A wall time skipped when the clocks go forward does not exist at the site.
    if local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != value:
        raise CommandRefused(
            f"{field}: {text} does not exist in {tz.key} (the clocks skip it); give another "
            "time or an offset",
            field=field,
        )
    return local


def limit_commands(book: SlotBook) -> dict[str, Command[Any]]:
    """``limit_set``, ``limit_clear`` and ``limit_list`` over one SlotBook (source override)."""
    tz = ZoneInfo(book.site.timezone)
    source = SlotSource.OVERRIDE

    def limit_set(req: LimitSetRequest) -> Answer:
        now = book.now().astimezone(tz)
        starts_at = _site_time("starts_at", req.starts_at, tz, now) if req.starts_at else None
        ends_at = _site_time("ends_at", req.ends_at, tz, now) if req.ends_at else None
        try:
            return set_limit(
                book,
                source,
                id=req.id if req.id is not None else req.scope,
                scope=req.scope,
                current_a=req.current_a,
                power_w=req.power_w,
                starts_at=starts_at,
                ends_at=ends_at,
                duration_s=req.duration_s,
                note=req.note,
            )
        except LimitRefused as exc:
            raise CommandRefused(exc.message, field=exc.field) from exc

    def limit_clear(req: LimitClearRequest) -> Answer:
        try:
            return clear_limits(book, source, id=req.id, all=req.all, what="override")
        except LimitRefused as exc:
            raise CommandRefused(exc.message, field=exc.field) from exc

    def limit_list(_: NoArguments) -> Answer:
        now = book.now()
        slots = sorted(book.slots(), key=lambda s: (s.source.value, s.id))
        tou = time_of_use_slot(book.site.time_of_use, now.astimezone(tz))
        documents = [slot_document(s, tz, now) for s in slots]
        if tou is not None:
            documents.append(slot_document(tou, tz, now))
        return {"now": now.astimezone(tz).isoformat(), "timezone": tz.key, "slots": documents}

    return {
        "limit_set": Command(LimitSetRequest, limit_set),
        "limit_clear": Command(LimitClearRequest, limit_clear),
        "limit_list": Command(NoArguments, limit_list),
    }
