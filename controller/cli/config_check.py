"""CLI layer: ``evsite config check FILE [--json]``, a technician's check of a site file.

Loads the file through controller.config exactly as the service would. A valid file prints a
tree of the site (circuits, meters, EVSEs) with each node's I5 fallback budget per phase,
the tariff and the warnings, exit 0; an invalid one prints every problem, exit 1; an
unreadable one exit 2.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from controller.config import (
    DAY_GROUPS,
    DAY_NAMES,
    ConfigUnreadable,
    FallbackLoad,
    LoadedConfig,
    check_config,
    fallback_loads,
)
from controller.core.site import (
    PHASE_NAMES,
    Circuit,
    Connector,
    DeviceSpec,
    EvKind,
    SerialTransport,
    Site,
    Transport,
    format_rotation,
)
from controller.core.slots import TouPeriod
from controller.core.tariff import price_display, price_text

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def run_config_check(path: Path, *, as_json: bool, out: TextIO) -> int:
    """Check ``path``, print the result to ``out``; returns the process exit code."""
    try:
        report = check_config(path)
    except ConfigUnreadable as exc:
        if as_json:
            _write_json(out, ok=False, problems=exc.problems, warnings=[], site=None)
        else:
            for problem in exc.problems:
                out.write(f"error: {problem}\n")
        return EXIT_UNREADABLE

    if as_json:
        summary = site_summary(report.config) if report.config is not None else None
        _write_json(
            out,
            ok=report.ok,
            problems=list(report.problems),
            warnings=list(report.warnings),
            site=summary,
        )
        return EXIT_OK if report.ok else EXIT_INVALID

    if report.config is None:
        for problem in report.problems:
            out.write(f"error: {problem}\n")
        for warning in report.warnings:
            out.write(f"warning: {warning}\n")
        count = len(report.problems)
        out.write(f"{path}: {count} problem{'s' if count != 1 else ''}; not a valid site config\n")
        return EXIT_INVALID

    _print_summary(report.config, out)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def _write_json(
    out: TextIO,
    *,
    ok: bool,
    problems: list[str],
    warnings: list[str],
    site: dict[str, object] | None,
) -> None:
    document = {"ok": ok, "problems": problems, "warnings": warnings, "site": site}
    # default=str: driver options are free YAML and may hold dates.
    out.write(json.dumps(document, indent=2, default=str) + "\n")


def _transport_summary(transport: Transport) -> dict[str, object]:
    kind = "serial" if isinstance(transport, SerialTransport) else "tcp"
    return {"type": kind, **dataclasses.asdict(transport), "text": transport.describe()}


def _device_summary(device: DeviceSpec) -> dict[str, object]:
    return {
        "id": device.id,
        "driver": device.driver,
        "transport": _transport_summary(device.transport),
        "unit_id": device.unit_id,
        "timeout_s": device.timeout_s,
        "options": dict(device.options),
    }


def site_summary(config: LoadedConfig) -> dict[str, object]:
    """The site as plain JSON data, with the I5 figures per circuit node and phase."""
    site = config.site
    loads = _loads_by_circuit(site)
    circuits = [
        {
            "id": c.id,
            "parent": c.parent,
            "rating_a": c.rating_a,
            "margin_a": c.margin_a,
            "meter": c.meter,
            "worst_case_non_ev_a": list(c.worst_case_non_ev_a),
            "fallback_sum_a": [load.sum_a for load in loads[c.id]],
            "fallback_limit_a": [load.limit_a for load in loads[c.id]],
            "evses": [k.id for k in site.connectors if k.circuit == c.id],
        }
        for c in site.circuits
    ]
    evses = [
        {
            **_device_summary(k.evse),
            "circuit": k.circuit,
            "phase_rotation": format_rotation(k.grid_phases),
            "grid_phases": [PHASE_NAMES[p] for p in k.grid_phases],
            "min_current_a": k.min_current_a,
            "max_current_a": k.max_current_a,
            "fallback_current_a": k.fallback_current_a,
            "priority_tier": k.priority_tier,
            "ev_kind": k.ev_kind.value,
        }
        for k in site.connectors
    ]
    service = dataclasses.asdict(config.service)
    service["state_dir"] = str(config.service.state_dir)
    service["runtime_dir"] = str(config.service.runtime_dir)
    service["socket_mode"] = f"0o{config.service.socket_mode:03o}"
    return {
        "id": site.id,
        "name": site.name,
        "timezone": site.timezone,
        "nominal_voltage_v": site.nominal_voltage_v,
        "source": str(config.source),
        "circuits": circuits,
        "meters": [_device_summary(m) for m in site.meters],
        "evses": evses,
        "exports": site.exports,
        "meter_export_positive": site.meter_export_positive,
        "control": dataclasses.asdict(site.control),
        "load_management": dataclasses.asdict(site.load_management),
        "time_of_use": [
            {
                "name": t.name,
                "days": [DAY_NAMES[d - 1] for d in sorted(t.days)],
                "start": t.start.isoformat("minutes"),
                "end": _end_text(t),
                "power_kw": t.power_w / 1000.0,
            }
            for t in site.time_of_use
        ],
        "service": service,
        # The prices as a driver sees them before a session (exact decimal text).
        "tariff": price_display(config.tariff) if config.tariff is not None else None,
        "terminal": _terminal_document(config),
        "ocpp": _ocpp_document(config),
    }


def _ocpp_document(config: LoadedConfig) -> dict[str, Any] | None:
    o = config.ocpp
    if o is None:
        return None
    connectors = [c.id for c in config.site.connectors]
    return {
        "url": o.url,
        "security_profile": o.security_profile,
        "topology": o.topology,
        # identity -> OCPP connector number -> the site's connector
        "charge_points": {
            identity: {str(n): cid for n, cid in numbers.items()}
            for identity, numbers in o.identities(connectors).items()
        },
        "keys": dict(o.keys),
    }


def _terminal_document(config: LoadedConfig) -> dict[str, Any] | None:
    t = config.terminal
    if t is None:
        return None
    return {
        "id": t.id,
        "link": t.describe(),
        "profile": t.profile,
        "connectors": list(t.connectors or (c.id for c in config.site.connectors)),
        "t1_s": t.t1_s,
        "t3_s": t.t3_s,
        "t4_s": t.t4_s,
        "stop_headroom_s": t.stop_headroom_s,
        "retry_s": t.retry_s,
    }


def _loads_by_circuit(site: Site) -> dict[str, list[FallbackLoad]]:
    loads: dict[str, list[FallbackLoad]] = {c.id: [] for c in site.circuits}
    for load in fallback_loads(site):
        loads[load.circuit].append(load)
    return loads


# --------------------------------------------------------------------------------------------
# The readable tree
# --------------------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:g}"


def _per_phase(values: tuple[float, float, float]) -> str:
    if values[0] == values[1] == values[2]:
        return f"{_n(values[0])} A"
    return "/".join(_n(v) for v in values) + " A (L1/L2/L3)"


def _circuit_label(site: Site, circuit: Circuit, loads: list[FallbackLoad]) -> Text:
    label = Text()
    label.append(circuit.id, style="bold")
    label.append(
        f"  {_n(circuit.rating_a)} A/phase, margin {_n(circuit.margin_a)} A, "
        f"worst-case non-EV {_per_phase(circuit.worst_case_non_ev_a)}"
    )
    meter = next((m for m in site.meters if m.id == circuit.meter), None)
    if meter is None:
        label.append("\n  no meter: non-EV load taken as the worst case")
    else:
        label.append(
            f"\n  meter {meter.id}: {meter.driver}, {meter.transport.describe()}, "
            f"unit {meter.unit_id}"
        )
    label.append("\n  fallback sum / limit (I5):")
    for load in loads:
        style = "green" if load.fits else "bold red"
        label.append(f"  {PHASE_NAMES[load.phase]} ")
        label.append(f"{_n(load.sum_a)}/{_n(load.limit_a)} A", style=style)
    return label


def _connector_label(k: Connector) -> Text:
    label = Text()
    label.append(k.id, style="bold cyan")
    label.append(f"  {k.evse.driver}, {k.evse.transport.describe()} unit {k.evse.unit_id}")
    phases = "1-phase" if k.phase_count == 1 else "3-phase"
    label.append(
        f"\n  {phases} {format_rotation(k.grid_phases)}, "
        f"{_n(k.min_current_a)}..{_n(k.max_current_a)} A, "
        f"fallback {_n(k.fallback_current_a)} A, tier {k.priority_tier}"
    )
    if k.ev_kind is not EvKind.AUTO:
        label.append(f", EV {k.ev_kind.value}")
    return label


def _days_text(days: frozenset[int]) -> str:
    for word, group in DAY_GROUPS.items():
        if days == group:
            return word
    return ",".join(DAY_NAMES[d - 1] for d in sorted(days))


def _end_text(t: TouPeriod) -> str:
    """A period's end as written: midnight at the end of the day is 24:00."""
    return "24:00" if t.end == time(0) else t.end.isoformat("minutes")


def _period_text(t: TouPeriod) -> str:
    return (
        f"{t.name} {_days_text(t.days)} {t.start.isoformat('minutes')}-{_end_text(t)} "
        f"{_n(t.power_w / 1000.0)} kW"
    )


def _add_circuit(
    tree: Tree, site: Site, circuit: Circuit, loads: dict[str, list[FallbackLoad]]
) -> None:
    node = tree.add(_circuit_label(site, circuit, loads[circuit.id]))
    for k in site.connectors:
        if k.circuit == circuit.id:
            node.add(_connector_label(k))
    for child in site.children(circuit.id):
        _add_circuit(node, site, child, loads)


def _print_summary(config: LoadedConfig, out: TextIO) -> None:
    site = config.site
    console = Console(
        file=out,
        highlight=False,
        emoji=False,
        width=None if out.isatty() else 120,
    )
    title = Text()
    title.append(f"site {site.id}", style="bold")
    title.append(f"  {site.name!r}, {site.timezone}, {_n(site.nominal_voltage_v)} V")
    tree = Tree(title)
    loads = _loads_by_circuit(site)
    _add_circuit(tree, site, site.root, loads)
    console.print(tree)

    used = {c.meter for c in site.circuits}
    for meter in site.meters:
        if meter.id not in used:
            console.print(
                Text(f"meter {meter.id} ({meter.driver}, {meter.transport.describe()}): unused"),
                soft_wrap=True,
            )
    c = site.control
    console.print(
        Text(
            f"control: tick {_n(c.tick_s)} s, meter stale after {_n(c.meter_stale_s)} s, "
            f"fallback after {_n(c.fallback_after_s)} s, EVSE stale after {_n(c.evse_stale_s)} s,"
            f" meter frozen after {_n(c.meter_frozen_s)} s"
        ),
        soft_wrap=True,
    )
    lm = site.load_management
    unbalanced = "none" if lm.unbalanced_limit_a is None else f"{_n(lm.unbalanced_limit_a)} A"
    console.print(
        Text(
            f"load management: ramp {_n(lm.ramp_step_a)} A per {_n(lm.ramp_period_s)} s, "
            f"settle {_n(lm.settle_s)} s, on/off at least {_n(lm.min_on_s)}/{_n(lm.min_off_s)} s,"
            f" rotation {_n(lm.rotation_s)} s, unbalanced-load limit {unbalanced}"
        ),
        soft_wrap=True,
    )
    if site.exports:
        sign = "export positive" if site.meter_export_positive else "import positive"
        console.print(Text(f"grid: exports (meter counts {sign})"), soft_wrap=True)
    if site.time_of_use:
        periods = "; ".join(_period_text(t) for t in site.time_of_use)
        console.print(Text(f"time of use ({site.timezone}): {periods}"), soft_wrap=True)
    if config.tariff is not None:
        t = config.tariff
        console.print(
            Text(f"tariff {t.id} {t.name!r} ({site.timezone}): {price_text(t)}"), soft_wrap=True
        )
    if config.terminal is not None:
        term = _terminal_document(config)
        assert term is not None
        console.print(
            Text(
                f"payment terminal {term['id']}: ZVT {term['link']}, profile {term['profile']}, "
                f"connectors {', '.join(term['connectors'])}, T3 {_n(term['t3_s'])} s, "
                f"T4 {_n(term['t4_s'])} s"
            ),
            soft_wrap=True,
        )
    ocpp = _ocpp_document(config)
    if ocpp is not None:
        points = ", ".join(
            f"{identity} ({', '.join(f'{n}={cid}' for n, cid in numbers.items())})"
            for identity, numbers in ocpp["charge_points"].items()
        )
        console.print(
            Text(
                f"ocpp: {ocpp['url']}, security profile {ocpp['security_profile']}, "
                f"charge points {points}"
            ),
            soft_wrap=True,
        )
    s = config.service
    console.print(
        Text(
            f"service: state {s.state_dir}, runtime {s.runtime_dir}, socket group "
            f"{s.socket_group or '-'} mode 0o{s.socket_mode:03o}, log {s.log_format}"
        ),
        soft_wrap=True,
    )
    for warning in config.warnings:
        # soft_wrap: a problem line stays one line, whole, for grep and for copying.
        console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    counts = ", ".join(
        _count(n, word)
        for n, word in (
            (len(site.circuits), "circuit node"),
            (len(site.meters), "meter"),
            (len(site.connectors), "EVSE"),
            (len(config.warnings), "warning"),
        )
    )
    console.print(
        Text(f"OK: {config.source} is valid ({counts})", style="bold green"), soft_wrap=True
    )


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
