"""Adapters layer: OCPP-J 1.6 frames from the CSMS, checked before any handler runs (sans-IO).

The ``ocpp`` library answers some malformed requests with 2.0 spellings (FormatViolation for
every schema failure, ProtocolError for a missing field) and swaps NotImplemented and
NotSupported. OCPP-J 1.6 §4.2.3 defines them so, and this module answers that way:

- NotImplemented: the action is not known (not an OCPP 1.6 action at all);
- NotSupported: a 1.6 action this charge point does not support (firmware, diagnostics, the
  security extension, or an action only a charge point sends);
- FormationViolation: not a CALL of four elements, or a payload that is not an object or
  carries a property the action does not have;
- OccurenceConstraintViolation (1.6's spelling): a required field missing, too few or many
  items;
- TypeConstraintViolation: a field of the wrong JSON type;
- PropertyConstraintViolation: a value outside its enumeration, length, range or format.

A frame whose message id cannot be read is not answerable: it is logged and dropped. Nothing
here closes the connection.
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any

from jsonschema import exceptions as schema_exceptions
from ocpp.messages import MessageType, get_validator
from ocpp.v16.enums import Action

CALL, CALLRESULT, CALLERROR = 2, 3, 4
# Actions whose schemas say multipleOf 0.1: validated with exact decimals, as the library does.
_DECIMAL_ACTIONS = ("SetChargingProfile", "RemoteStartTransaction")
_KNOWN_ACTIONS = frozenset(a.value for a in Action)

_CODE_BY_KEYWORD = {
    "type": "TypeConstraintViolation",
    "required": "OccurenceConstraintViolation",
    "minItems": "OccurenceConstraintViolation",
    "maxItems": "OccurenceConstraintViolation",
    "additionalProperties": "FormationViolation",
    "enum": "PropertyConstraintViolation",
    "maxLength": "PropertyConstraintViolation",
    "minLength": "PropertyConstraintViolation",
    "minimum": "PropertyConstraintViolation",
    "maximum": "PropertyConstraintViolation",
    "multipleOf": "PropertyConstraintViolation",
    "pattern": "PropertyConstraintViolation",
    "format": "PropertyConstraintViolation",
}
DESCRIPTION_MAX = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundCall:
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A CALLERROR to send (``unique_id`` known) for a request that no handler will see."""

    unique_id: str
    code: str
    description: str

    def frame(self) -> str:
        return call_error(self.unique_id, self.code, self.description)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreadable:
    """A frame that cannot be answered (no message id): logged and dropped."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A CALLRESULT or CALLERROR: for the library's pending call()."""

    text: str


Inbound = InboundCall | Refusal | Unreadable | Answer


def call_error(unique_id: str, code: str, description: str, details: Any = None) -> str:
    return json.dumps(
        [CALLERROR, unique_id, code, description[:DESCRIPTION_MAX], details or {}],
        separators=(",", ":"),
    )


def classify(text: str | bytes, supported: frozenset[str]) -> Inbound:
    """What a frame from the CSMS is, and for a CALL whether it may reach its handler."""
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return Unreadable(reason="not JSON")
    if not isinstance(frame, list) or len(frame) < 2:
        return Unreadable(reason="not an OCPP-J array")
    kind, unique_id = frame[0], frame[1]
    if not isinstance(unique_id, str) or not unique_id:
        return Unreadable(reason="no message id")
    if kind in (CALLRESULT, CALLERROR) and not isinstance(kind, bool):
        return Answer(text=text if isinstance(text, str) else text.decode())
    if kind != CALL or isinstance(kind, bool):
        return Refusal(
            unique_id=unique_id,
            code="FormationViolation",
            description=f"unknown message type {kind!r}",
        )
    if len(frame) != 4 or not isinstance(frame[2], str):
        return Refusal(
            unique_id=unique_id,
            code="FormationViolation",
            description="a CALL is [2, messageId, action, payload]",
        )
    action, payload = frame[2], frame[3]
    if action not in _KNOWN_ACTIONS:
        return Refusal(
            unique_id=unique_id,
            code="NotImplemented",
            description=f"{action} is not an OCPP 1.6 action",
        )
    if action not in supported:
        return Refusal(
            unique_id=unique_id,
            code="NotSupported",
            description=f"{action} is not supported by this charge point",
        )
    if not isinstance(payload, dict):
        return Refusal(
            unique_id=unique_id,
            code="FormationViolation",
            description="the payload must be a JSON object",
        )
    problem = schema_problem(action, payload)
    if problem is not None:
        code, description = problem
        return Refusal(unique_id=unique_id, code=code, description=description)
    return InboundCall(unique_id=unique_id, action=action, payload=payload)


def schema_problem(action: str, payload: dict[str, Any]) -> tuple[str, str] | None:
    """The 1.6 error code and a description of the first schema violation, None if valid."""
    exact = action in _DECIMAL_ACTIONS
    validator = get_validator(
        MessageType.Call,
        action,
        "1.6",
        parse_float=decimal.Decimal if exact else float,
    )
    checked = json.loads(json.dumps(payload), parse_float=decimal.Decimal) if exact else payload
    error = schema_exceptions.best_match(validator.iter_errors(checked))
    if error is None:
        return None
    keyword = str(error.validator)
    code = _CODE_BY_KEYWORD.get(keyword, "FormationViolation")
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    if keyword in ("required", "additionalProperties"):
        return code, f"{where}: {error.message}"  # names properties only
    # Never the offending value itself: it may be a secret (ChangeConfiguration of
    # AuthorizationKey) and the description goes to the log.
    return code, f"{where}: violates {keyword} {error.validator_value!r}"[:DESCRIPTION_MAX]
