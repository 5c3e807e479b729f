"""Core layer: the site as configured, in typed immutable objects.

The config loader (controller/config.py) builds these from YAML once; everything downstream
works only with them. Phases are indices 0, 1, 2 for the grid's L1, L2, L3.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from controller.core.slots import TouPeriod

PHASES = (0, 1, 2)
PHASE_NAMES = ("L1", "L2", "L3")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpTransport:
    """Modbus TCP (or RTU framing over a TCP gateway when ``rtu_over_tcp``)."""

    host: str
    port: int = 502
    rtu_over_tcp: bool = False

    def describe(self) -> str:
        suffix = " (RTU over TCP)" if self.rtu_over_tcp else ""
        return f"tcp://{self.host}:{self.port}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialTransport:
    """Modbus RTU on a serial line (RS-485)."""

    port: str
    baudrate: int = 9600
    parity: str = "N"  # "N", "E" or "O"
    stopbits: int = 1
    bytesize: int = 8

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


Transport = TcpTransport | SerialTransport


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSpec:
    """One Modbus device: a meter or an EVSE controller."""

    id: str
    driver: str
    transport: Transport
    unit_id: int
    timeout_s: float = 0.5
    # Driver-specific settings that have no meaning elsewhere (e.g. Alfen validity time).
    options: Mapping[str, object] = field(default_factory=dict)


class EvKind(StrEnum):
    """How many phases the EV at a connector draws on (auto = detect from measurement)."""

    AUTO = "auto"
    ONE_PHASE = "1p"
    THREE_PHASE = "3p"


@dataclass(frozen=True, slots=True, kw_only=True)
class Connector:
    """A charging connector: one EVSE device drives exactly one connector.

    ``grid_phases[i]`` is the grid phase (0..2) the connector's own phase Li+1 is wired to; a
    1-phase connector has one entry. The rotation matters because a site rotates its EVSEs so
    that 1-phase EVs spread over the grid's phases.
    """

    id: str
    evse: DeviceSpec
    circuit: str
    grid_phases: tuple[int, ...]
    min_current_a: float = 6.0
    max_current_a: float = 32.0
    fallback_current_a: float = 6.0
    priority_tier: int = 0
    # What the EV at this connector draws on: configured, or detected from measurement.
    ev_kind: EvKind = EvKind.AUTO
    # For an EVSE without a controller watchdog (it keeps its last limit if evsite dies): the
    # highest limit it is ever given, so the site still holds then (control.cap_unwatched).
    unwatched_cap_a: float | None = None

    @property
    def orphaned_current_a(self) -> float:
        """The most this connector can draw while the controller is gone: its fallback current,
        or for an EVSE without a watchdog the highest limit it may still hold."""
        if self.unwatched_cap_a is None:
            return self.fallback_current_a
        return max(self.fallback_current_a, self.unwatched_cap_a)

    @property
    def phase_count(self) -> int:
        return len(self.grid_phases)


@dataclass(frozen=True, slots=True, kw_only=True)
class Circuit:
    """A node of the circuit tree: the grid connection (root) or a sub-board.

    ``rating_a`` is per phase. Without a meter, the node's non-EV load is taken as the
    configured ``worst_case_non_ev_a`` per phase; with a meter it is measured.
    """

    id: str
    parent: str | None
    rating_a: float
    margin_a: float = 0.0
    meter: str | None = None
    worst_case_non_ev_a: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlSettings:
    """Timing of the control loop and its fail-safe ladder (seconds)."""

    tick_s: float = 1.0
    meter_stale_s: float = 3.0
    fallback_after_s: float = 10.0
    evse_stale_s: float = 5.0
    # A meter whose currents repeat exactly for longer than this is frozen, i.e. stale.
    meter_frozen_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadManagement:
    """Tuning of the load-management engine; docs/load-management.md explains each value.

    Defaults are chosen for a 1 s tick and EVs that follow a new limit within about 5 s
    (IEC 61851-1 lets the EVSE change its PWM at most every 5 s).
    """

    # Increases: at most ramp_step_a per ramp_period_s, and only after the EV followed.
    ramp_step_a: float = 6.0
    ramp_period_s: float = 5.0
    # "Followed": the EV's highest phase current is within follow_tolerance_a of its limit
    # (or below it after a decrease). "Settled": followed, or settle_s passed since the change.
    follow_tolerance_a: float = 1.0
    settle_s: float = 10.0
    # An increase smaller than this is not written (meter noise); decreases always are.
    increase_deadband_a: float = 1.0
    # Pause/resume: a paused connector resumes only when min + resume_margin_a fits and it has
    # been paused min_off_s; a running one is not paused by rotation before min_on_s.
    resume_margin_a: float = 1.0
    min_on_s: float = 60.0
    min_off_s: float = 30.0
    # Within a tier, a connector that has charged rotation_s while another waits yields.
    rotation_s: float = 900.0
    # Unused capacity: an EV drawing at least unused_threshold_a below its settled limit for
    # unused_after_s is capped at its draw + unused_headroom_a; the cap lifts as it ramps up.
    unused_threshold_a: float = 2.0
    unused_after_s: float = 20.0
    unused_headroom_a: float = 1.0
    # 1-phase detection: a 3-phase connector whose EV draws >= detect_on_a on its L1 and
    # < detect_off_a on its L2 and L3 for detect_after_s is treated as 1-phase for the session.
    detect_on_a: float = 2.0
    detect_off_a: float = 0.5
    detect_after_s: float = 10.0
    # Optional limit on the difference between grid phase currents (A), e.g. 20 A (VDE-AR-N 4100).
    unbalanced_limit_a: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """The whole configured site. ``circuits[0]`` is the root (grid connection)."""

    id: str
    name: str
    timezone: str
    nominal_voltage_v: float
    circuits: tuple[Circuit, ...]
    meters: tuple[DeviceSpec, ...]
    connectors: tuple[Connector, ...]
    control: ControlSettings = ControlSettings()
    load_management: LoadManagement = LoadManagement()
    # The grid meter may show export (PV): negative currents are then plausible, not faults.
    # ``meter_export_positive``: the meter counts export as positive (sign flipped on read).
    exports: bool = False
    meter_export_positive: bool = False
    # Weekly site power caps in the site's time zone (a limit slot of its own).
    time_of_use: tuple[TouPeriod, ...] = ()

    @property
    def root(self) -> Circuit:
        return self.circuits[0]

    def circuit(self, circuit_id: str) -> Circuit:
        for c in self.circuits:
            if c.id == circuit_id:
                return c
        raise KeyError(circuit_id)

    def ancestors(self, circuit_id: str) -> Iterator[Circuit]:
        """The circuit itself, then its parent, up to the root."""
        by_id = {c.id: c for c in self.circuits}
        node: Circuit | None = by_id[circuit_id]
        while node is not None:
            yield node
            node = by_id[node.parent] if node.parent is not None else None

    def children(self, circuit_id: str) -> tuple[Circuit, ...]:
        return tuple(c for c in self.circuits if c.parent == circuit_id)


def parse_rotation(text: str) -> tuple[int, ...]:
    """``"L2L3L1"`` -> ``(1, 2, 0)``; ``"L3"`` -> ``(2,)``. Raises ValueError when malformed."""
    t = text.strip().upper().replace(" ", "").replace(",", "").replace("-", "")
    if len(t) % 2 or not t:
        raise ValueError(f"phase rotation {text!r} is not like 'L1L2L3', 'L2L3L1' or 'L2'")
    parts = [t[i : i + 2] for i in range(0, len(t), 2)]
    if any(p not in PHASE_NAMES for p in parts):
        raise ValueError(f"phase rotation {text!r} names a phase other than L1, L2, L3")
    if len(parts) not in (1, 3) or len(set(parts)) != len(parts):
        raise ValueError(f"phase rotation {text!r} must name one phase, or all three once each")
    return tuple(PHASE_NAMES.index(p) for p in parts)


def format_rotation(grid_phases: tuple[int, ...]) -> str:
    return "".join(PHASE_NAMES[p] for p in grid_phases)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """The circuit tree indexed once: each circuit's path to the root, each node's connectors."""

    path: Mapping[str, tuple[str, ...]]  # circuit id -> (itself, parent, ..., root)
    under: Mapping[str, tuple[Connector, ...]]  # circuit id -> connectors fed through it

    @classmethod
    def of(cls, site: Site) -> Topology:
        path = {c.id: tuple(a.id for a in site.ancestors(c.id)) for c in site.circuits}
        under: dict[str, list[Connector]] = {c.id: [] for c in site.circuits}
        for conn in site.connectors:
            for node_id in path[conn.circuit]:
                under[node_id].append(conn)
        return cls(path=path, under={k: tuple(v) for k, v in under.items()})
