"""Core layer: what the devices report and what the controller decides, one tick at a time.

Readings carry the monotonic time (seconds) at which they were taken, so the core can judge
their age against the tick's own time; a missing reading is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from controller.core.slots import LimitSlot

Triple = tuple[float, float, float]
ZERO3: Triple = (0.0, 0.0, 0.0)


class EvseState(StrEnum):
    """IEC 61851-1 control pilot state as the EVSE reports it."""

    A = "A"  # no vehicle
    B = "B"  # vehicle connected, not charging
    C = "C"  # charging
    D = "D"  # charging, ventilation required
    E = "E"  # error: no pilot / short
    F = "F"  # EVSE fault / not available
    UNKNOWN = "unknown"

    @property
    def vehicle_present(self) -> bool:
        return self in (EvseState.B, EvseState.C, EvseState.D)

    @property
    def charging(self) -> bool:
        return self in (EvseState.C, EvseState.D)


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReading:
    """One reading of a 3-phase meter. Currents are positive when importing from the grid."""

    at_s: float
    current_a: Triple
    voltage_v: Triple = ZERO3
    power_w: float = 0.0
    energy_import_wh: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvseReading:
    """One reading of an EVSE: state, current per connector phase (its own L1..L3)."""

    at_s: float
    state: EvseState
    current_a: Triple = ZERO3
    power_w: float = 0.0
    energy_wh: float = 0.0
    # The limit the EVSE reports it applies right now (None when the model cannot say).
    applied_limit_a: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """What the engine needs to know of a charging session at a connector.

    ``priority_tier`` comes from the session's authorisation (an idTag group, an OCPP or MQTT
    command); without one, the connector's configured tier applies. ``plugged_at_s`` is the
    monotonic time the vehicle was plugged in. A connector whose session may not draw current
    (not authorised, stopped, unavailable) has ``charging_allowed`` False and ``hold`` saying
    why; the engine gives it 0 A.
    """

    priority_tier: int | None = None
    plugged_at_s: float | None = None
    charging_allowed: bool = True
    hold: str = ""  # "not_authorised", "stopped" or "unavailable" when not allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything read in one tick. ``now_s`` is monotonic; ``wall`` is the site's local time."""

    now_s: float
    wall: datetime
    meters: Mapping[str, MeterReading | None]
    evses: Mapping[str, EvseReading | None]
    # The limit last written successfully to each connector's EVSE, None before the first write.
    written_a: Mapping[str, float | None] = field(default_factory=dict)
    # Connectors whose last write failed (the EVSE may still run on an older limit).
    write_failed: frozenset[str] = frozenset()
    # Limit slots from the network, the CLI and demand response (time-of-use comes from Site).
    slots: tuple[LimitSlot, ...] = ()
    # Sessions by connector id; a connector without an entry uses its configured tier.
    sessions: Mapping[str, Session] = field(default_factory=dict)


class Bound(StrEnum):
    """What bound a connector's allocation: the reason shown in `evsite status`."""

    CIRCUIT = "circuit"  # a circuit node's phase headroom (see ``node`` and ``phase``)
    SLOT = "slot"  # a limit slot (see ``slot``): OCPP, demand response, time of use, override
    UNBALANCE = "unbalance"  # the unbalanced-load limit between grid phases
    CONNECTOR_MAX = "connector_max"  # min(EVSE max, cable, configured max)
    UNWATCHED_CAP = "unwatched_cap"  # no EVSE watchdog: capped so the site holds without us
    EV_USES_LESS = "ev_uses_less"  # the EV draws well below its limit: the rest went to others
    BELOW_MIN = "below_min"  # its minimum does not fit (see node/phase/slot): paused
    ROTATION = "rotation"  # paused so that another connector of its tier gets a turn
    MIN_OFF = "min_off"  # paused recently: waits its minimum off time before resuming
    RAMP = "ramp"  # increasing, at most ramp_step_a per ramp_period_s
    SETTLING = "settling"  # waits for the EV to follow its last step before increasing
    NO_VEHICLE = "no_vehicle"  # nothing plugged in
    NOT_AUTHORISED = "not_authorised"  # plugged in, the session is not authorised (yet)
    STOPPED = "stopped"  # the session was stopped; the vehicle is still plugged in
    UNAVAILABLE = "unavailable"  # the connector is set unavailable (OCPP, MQTT, CLI)
    EVSE_FAULT = "evse_fault"  # the EVSE reports E/F or is unknown
    EVSE_OFFLINE = "evse_offline"  # no fresh reading from the EVSE
    WRITE_FAILED = "write_failed"  # the last write failed; counted at its worst case
    METER_HOLD = "meter_hold"  # meter reading late or implausible: no increases
    FALLBACK = "fallback"  # meter stale past the fallback budget
    STARTUP = "startup"  # before the first fresh reading


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorLimit:
    """The decision for one connector: its current limit and what bound it.

    ``target_a`` is what fair sharing would give right now; ``current_a`` can be lower while an
    increase ramps or waits for the EV to settle.
    """

    connector: str
    current_a: float
    bound: Bound
    node: str | None = None
    phase: int | None = None
    slot: str | None = None
    target_a: float | None = None

    def describe(self) -> str:
        where = ""
        if self.node is not None and self.phase is not None:
            where = f"circuit {self.node} L{self.phase + 1}"
        elif self.slot is not None:
            where = f"slot {self.slot}"
        if self.bound is Bound.CIRCUIT or self.bound is Bound.SLOT:
            return where
        text = self.bound.value.replace("_", " ")
        return f"{text} ({where})" if where and self.bound is Bound.BELOW_MIN else text


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePhaseState:
    """Per circuit node and grid phase: the figures the allocation was computed from."""

    node: str
    rating_a: float
    margin_a: float
    measured_a: Triple | None  # the node's meter, None without one (or when stale)
    non_ev_a: Triple  # measured non-EV load, or the configured worst case
    allocated_a: Triple  # sum of allocations (and reservations) on each phase below this node
    available_a: Triple  # rating - non-EV - margin: what EVs may use in total

    @property
    def headroom_a(self) -> Triple:
        a, b = self.available_a, self.allocated_a
        return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorMemory:
    """What the engine remembers of a connector from one tick to the next."""

    limit_a: float  # the limit decided last tick
    changed_at_s: float  # when that limit last changed
    step: str = "none"  # direction of the last change: "up", "down" or "none"
    last_increase_at_s: float | None = None
    running_since_s: float | None = None  # has had >= its minimum since
    waiting_since_s: float | None = None  # vehicle present, paused since
    paused_by_us: bool = False  # paused by the engine (min off time applies)
    ev_phases: tuple[int, ...] | None = None  # grid phases the EV uses (detected), per session
    one_phase_since_s: float | None = None
    underuse_since_s: float | None = None
    vehicle: bool = False
    overdraw_since_s: float | None = None  # drawing above its limit (fault detection)
    stray_since_s: float | None = None  # current while not charging (fault detection)


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterMemory:
    """The last meter values and when they last changed (a frozen meter repeats itself)."""

    value: Triple
    changed_at_s: float
    good_at_s: float  # time of the last usable reading
    non_ev_a: Triple | None = None  # the node's non-EV load at that reading (used while late)


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """A fault condition the engine sees this tick. (code, subject) identifies it across
    ticks; ``detail`` may change from tick to tick. The shell raises and clears faults on
    transitions of the set of conditions."""

    code: str  # snake_case, e.g. "meter_stale", "meter_implausible", "evse_fault"
    subject: str  # the device or connector id
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.subject}: {self.detail}" if self.detail else self.code


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineState:
    connectors: Mapping[str, ConnectorMemory] = field(default_factory=dict)
    meters: Mapping[str, MeterMemory] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """The result of one tick: a limit per connector, the node figures, the mode and why.

    ``state`` is what the next tick needs (pass the whole Allocation back as ``previous``);
    ``faults`` are the conditions the shell reports (raised on transitions).
    """

    limits: Mapping[str, ConnectorLimit]
    nodes: Mapping[str, NodePhaseState]
    mode: str  # "normal", "hold", "fallback", "startup" (the worst over the nodes)
    notes: tuple[str, ...] = ()
    faults: tuple[Condition, ...] = ()
    state: EngineState = field(default_factory=EngineState)

    def current_a(self, connector: str) -> float:
        return self.limits[connector].current_a
