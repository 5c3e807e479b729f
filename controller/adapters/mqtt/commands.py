"""Adapters layer: commands from the cloud on ``cmd/<name>``, checked whole before anything runs.

Sans-IO: a received request goes in, the reply to publish (topic, payload, correlation data)
comes out. The payload of a request is a JSON object with the command's arguments. Where the
answer goes:

- MQTT 5: the request's Response Topic property; its Correlation Data is echoed.
- MQTT 3.1.1 (or a 5 client that sets no Response Topic): two reserved keys in the payload,
  ``reply_to`` (a topic ``evsite/v1/<site>/reply/<client>``) and ``correlation_id`` (text,
  echoed in the reply's payload).
- Neither: the command runs and nobody is answered.

Arguments are validated by a pydantic model (strict types, no unknown key). A bad request gets
``{"ok": false, "error": ..., "field": ...}`` naming the field and its handler never runs; a
handler refuses with CommandRejected before it changes anything. Retained requests are refused:
a command left on the broker would run again at every reconnect.

The handlers are the application's (controller.app.cloud): this module only knows the models.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from controller.adapters.mqtt.payloads import dumps
from controller.adapters.mqtt.topics import Topics
from controller.core.errors import PermanentError

P = TypeVar("P")
Result = Mapping[str, Any]

MAX_CORRELATION_CHARS = 128
RESERVED_KEYS = ("reply_to", "correlation_id")


# A limit window longer than a year is a mistake (and would overflow a datetime).
MAX_DURATION_S = 366 * 24 * 3600.0
MAX_TIER = 9  # priority tiers 0..9, as in the site file


class CommandRejected(PermanentError):
    """A command understood but refused; nothing was applied. ``field``: the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class CommandSpec(Generic[P]):
    """A command: the model its arguments must pass (also its JSON schema) and its handler.

    ``parse``, when given, checks the arguments instead of ``payload`` (which then only
    documents them): it gets the JSON object, numbers with a fraction as exact Decimals, and
    raises CommandRejected. The tariff uses it, so prices stay exact.
    """

    payload: type[BaseModel]
    run: Callable[[P], Result | Awaitable[Result]]
    parse: Callable[[dict[str, Any]], P] | None = None


# JSON from the network: strict types, nothing unknown, no NaN.
_PAYLOAD = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class LimitSet(BaseModel):
    """``limit_set``: a cloud limit (source ``cloud``), in A per phase or in kW in total."""

    model_config = _PAYLOAD
    id: str = "site"
    scope: str = "site"  # site, circuit:<id> or connector:<id>
    current_a: float | None = Field(default=None, ge=0)
    power_kw: float | None = Field(default=None, ge=0)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    duration_s: float | None = Field(default=None, gt=0, le=MAX_DURATION_S)
    note: str = ""


class SlotClear(BaseModel):
    """``limit_clear`` / ``demand_response_clear``: one by id, or all of them."""

    model_config = _PAYLOAD
    id: str | None = None
    all: bool = False


class DemandResponseSet(BaseModel):
    """``demand_response_set``: a power cap between two times, with an optional floor."""

    model_config = _PAYLOAD
    id: str
    power_kw: float = Field(ge=0)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    floor_kw: float | None = Field(default=None, ge=0)
    scope: str = "site"
    note: str = ""


class NoArguments(BaseModel):
    model_config = _PAYLOAD


class AvailabilitySet(BaseModel):
    """``availability_set``: a connector operative (true) or inoperative (false)."""

    model_config = _PAYLOAD
    connector: str
    available: bool


class SessionStart(BaseModel):
    """``session_start``: an app start at a connector (method ``remote``)."""

    model_config = _PAYLOAD
    connector: str
    id_tag: str | None = Field(default=None, min_length=1, max_length=20)
    priority_tier: int | None = Field(default=None, ge=0, le=MAX_TIER)


class SessionStop(BaseModel):
    """``session_stop``: end the session at a connector (stop reason ``Remote``)."""

    model_config = _PAYLOAD
    connector: str


class SessionTier(BaseModel):
    """``session_tier``: the priority tier of a connector's session (null: the connector's)."""

    model_config = _PAYLOAD
    connector: str
    priority_tier: int | None = Field(ge=0, le=MAX_TIER)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A message received on ``cmd/<name>``."""

    topic: str
    payload: bytes
    retained: bool = False
    response_topic: str | None = None  # MQTT 5 property
    correlation_data: bytes | None = None  # MQTT 5 property


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    topic: str
    payload: bytes
    correlation_data: bytes | None = None  # set as the MQTT 5 property


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    command: str
    ok: bool
    reply: Reply | None  # None: the request named nowhere to answer
    error: str | None = None
    field: str | None = None


class CommandTable:
    def __init__(self, topics: Topics, commands: Mapping[str, CommandSpec[Any]]) -> None:
        self.topics = topics
        self.commands = dict(commands)

    async def handle(self, request: Request) -> Outcome:
        name = self.topics.command_name(request.topic) or request.topic
        reply_to: str | None = request.response_topic
        own_tree = reply_to is not None and reply_to.startswith(f"{self.topics.prefix}/")
        if reply_to is not None and own_tree and not self.topics.is_reply_topic(reply_to):
            # A Response Topic inside this site's own tree must be under reply/: otherwise a
            # requester could make the gateway publish on its events/ or state/ topics.
            # (Outside the tree, the broker's ACL decides where the gateway may publish.)
            return Outcome(
                command=name,
                ok=False,
                reply=None,
                error=f"response topic must be {self.topics.reply_prefix}<client>",
                field="response_topic",
            )
        correlation_id: str | None = None
        answer: dict[str, Any]
        try:
            document = _object(request.payload)
            if request.response_topic is None:
                reply_to = self._reply_to(document)
                correlation_id = _correlation_id(document)
            for key in RESERVED_KEYS:
                document.pop(key, None)
            answer = {"ok": True, "result": dict(await self._run(name, request, document))}
        except CommandRejected as exc:
            answer = {"ok": False, "error": exc.message}
            if exc.field is not None:
                answer["field"] = exc.field
        answer = {"command": name, **answer}
        if correlation_id is not None:
            answer["correlation_id"] = correlation_id
        reply = None
        if reply_to is not None:
            reply = Reply(
                topic=reply_to,
                payload=dumps(answer).encode(),
                correlation_data=request.correlation_data,
            )
        return Outcome(
            command=name,
            ok=bool(answer["ok"]),
            reply=reply,
            error=answer.get("error"),
            field=answer.get("field"),
        )

    def _reply_to(self, document: dict[str, Any]) -> str | None:
        reply_to = document.get("reply_to")
        if reply_to is None:
            return None
        if not isinstance(reply_to, str) or not self.topics.is_reply_topic(reply_to):
            # Nowhere safe to answer: a topic outside the site's reply/ tree is never written.
            raise CommandRejected(
                f"reply_to must be a topic {self.topics.reply_prefix}<client>, got {reply_to!r}",
                field="reply_to",
            )
        return reply_to

    async def _run(self, name: str, request: Request, document: dict[str, Any]) -> Result:
        spec = self.commands.get(name)
        if spec is None:
            known = ", ".join(sorted(self.commands))
            raise CommandRejected(f"unknown command {name!r}; commands: {known}")
        if request.retained:
            raise CommandRejected(
                "a retained command is refused (it would run again at every reconnect); "
                "publish commands with retain=false"
            )
        payload: Any
        if spec.parse is not None:
            payload = spec.parse(document)
        else:
            try:
                # Back to JSON so that pydantic parses it in JSON mode (ISO times as text);
                # a number read as an exact Decimal goes back as the float it was before.
                text = json.dumps(document, default=_as_float)
                payload = spec.payload.model_validate_json(text)
            except ValidationError as exc:
                raise _invalid(exc) from None
        result = spec.run(payload)
        if isinstance(result, Awaitable):
            result = await result
        return result


def _correlation_id(document: dict[str, Any]) -> str | None:
    correlation = document.get("correlation_id")
    if correlation is not None and (
        not isinstance(correlation, str) or len(correlation) > MAX_CORRELATION_CHARS
    ):
        raise CommandRejected(
            f"correlation_id must be text of at most {MAX_CORRELATION_CHARS} characters",
            field="correlation_id",
        )
    return correlation


def _as_float(value: object) -> float:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _object(payload: bytes) -> dict[str, Any]:
    if not payload.strip():
        return {}
    try:
        # Exact decimals (a price of 0.39 stays 0.39); integers stay ints.
        document = json.loads(payload, parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandRejected(f"the payload is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CommandRejected("the payload must be a JSON object of arguments")
    return document


def _invalid(exc: ValidationError) -> CommandRejected:
    """The first problem of a payload, naming its field."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    field = ".".join(str(p) for p in loc) if loc else None
    if err["type"] == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif err["type"] == "missing":
        message = f"{field}: missing"
    else:
        text = err["msg"][:1].lower() + err["msg"][1:]
        message = f"{field}: {text}, got {err.get('input')!r}" if field else text
    return CommandRejected(message, field=field)
