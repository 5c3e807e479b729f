"""Core layer: tariffs and the exact cost of a charging session, in integer cents.

Pure: no I/O, no clock, no logging. Time comes in as aware datetimes in the site's zone (the
shell passes the wall time of each tick); every duration is taken between UTC instants, so a
daylight-saving change never stretches or shrinks a session.

Exactness: prices are ``Decimal`` (currency units, VAT included, e.g. ``Decimal("0.39")``
per kWh); energy and time are accumulated as ``Fraction`` (Wh, seconds), so the cost is an
exact rational number of cents. It is rounded once, half up, at the end (``cost``). Amounts
are in cents, a hundredth of the currency unit.

The rules, in brief (docs/payments.md, "Tariffs and rounding", says them in full):

- Energy: the delta of the energy register between two samples is attributed to the
  time-of-use band(s) of that interval; an interval that crosses a band boundary is split pro
  rata by real (UTC) time. A register that goes backwards (reset, rollover, meter swap) adds
  nothing for that interval and the count continues from the new reading.
- Time: the session time runs from the first sample to the last, billed to the exact second.
- Idle: the time between two consecutive samples that both show the EV not drawing (and not
  held at 0 A by the site), with no energy counted between them. Each idle run is free for the
  grace period; what lies beyond the grace is billed per minute, to the exact second.
- Stop: ``must_stop`` is true when the cost could pass the pre-authorised amount within the
  next ``headroom_s`` at the given power and the highest energy price of the tariff.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "DAY_NAMES",
    "DEFAULT_BAND",
    "DEFAULT_PREAUTH_CENTS",
    "CostBreakdown",
    "EnergyBand",
    "Tariff",
    "TouPrice",
    "Usage",
    "cost",
    "must_stop",
    "preauth_amount_cents",
    "price_display",
    "price_text",
    "round_half_up",
]

# EVerest's payment terminal module pre-authorises 25.00 by default (reference/payment.md §3).
DEFAULT_PREAUTH_CENTS = 2500
DEFAULT_BAND = ""  # the band name of the tariff's default energy price
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_MICROSECOND = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)
_WEEK = timedelta(days=7)
_CENTS_PER_UNIT = 100
_WH_PER_KWH = 1000
_S_PER_MIN = 60
_S_PER_H = 3600

Number = int | Decimal | Fraction


def round_half_up(amount: Fraction) -> int:
    """The nearest integer, halves away from zero (0.5 -> 1, 58.5 -> 59, -0.5 -> -1)."""
    if amount < 0:
        return -round_half_up(-amount)
    return math.floor(amount + Fraction(1, 2))


def _exact(value: int | float | Decimal | Fraction, what: str) -> Fraction:
    """A number as an exact fraction; a float through its shortest decimal text (0.39 -> 39/100)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number, not {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return Fraction(Decimal(repr(value)))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be finite, got {value!r}")
        return Fraction(value)
    return Fraction(value)


def _seconds(earlier: datetime, later: datetime) -> Fraction:
    """Real time between two aware datetimes, exact (UTC: a DST change is no gap or overlap)."""
    delta = later.astimezone(UTC) - earlier.astimezone(UTC)
    return Fraction(delta // _MICROSECOND, 1_000_000)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"time must be an aware datetime in the site's zone, got {at!r}")
    return at


def _clock(t: time, *, end: bool = False) -> str:
    return "24:00" if end and t == time(0) else t.isoformat("minutes")


def _money(amount: Decimal) -> str:
    """A price as text with at least two decimals and no exponent: 0.5 -> '0.50'."""
    text = format(amount.normalize(), "f")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _cents_text(cents: int) -> str:
    return f"{cents // _CENTS_PER_UNIT}.{cents % _CENTS_PER_UNIT:02d}"


def _number_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


# --------------------------------------------------------------------------------------------
# The tariff
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TouPrice:
    """A time-of-use energy price: ``price_per_kwh`` on some days between two clock times.

    Same schedule rules as ``slots.TouPeriod``: ``days`` are ISO weekdays (1 = Monday); ``end``
    00:00 is midnight at the end of the day; an end before the start runs over midnight, and
    the part after midnight belongs to the next day. Times are the site's local wall time.
    """

    name: str
    days: frozenset[int]
    start: time
    end: time
    price_per_kwh: Decimal

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(1, 8)):
            raise ValueError(f"days must be ISO weekdays 1..7, got {sorted(self.days)}")
        if self.start == self.end != time(0):  # 00:00 to 00:00 (24:00) is the whole day
            raise ValueError(f"time-of-use price {self.name!r} starts and ends at {self.start}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("time-of-use clock times are local wall times, without a zone")
        _check_price(self.price_per_kwh, "price_per_kwh")

    def covers(self, wall: datetime) -> bool:
        t = wall.time()
        day = wall.isoweekday()
        if self.start < self.end or self.end == time(0):
            return day in self.days and self.start <= t and (self.end == time(0) or t < self.end)
        previous_day = 7 if day == 1 else day - 1
        return (day in self.days and t >= self.start) or (
            previous_day in self.days and t < self.end
        )


def _check_price(value: Decimal, what: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite Decimal >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tariff:
    """What a session costs. Every price includes VAT; ``vat_rate_pct`` is shown, not added.

    Prices are in currency units (``Decimal("0.39")`` EUR per kWh). ``time_of_use`` prices
    replace ``price_per_kwh`` while they apply; where several apply, the lowest wins (the
    first listed among equal ones). ``preauth_cents`` is what a card is pre-authorised for,
    never above ``preauth_cap_cents`` when that is set (the site's own limit, which a cloud
    update of the tariff cannot raise).
    """

    id: str
    name: str = ""
    currency: str
    vat_rate_pct: Decimal
    price_per_kwh: Decimal
    time_of_use: tuple[TouPrice, ...] = ()
    price_per_minute: Decimal = Decimal(0)
    session_fee: Decimal = Decimal(0)
    idle_fee_per_minute: Decimal = Decimal(0)
    idle_grace_min: Decimal = Decimal(0)
    preauth_cents: int = DEFAULT_PREAUTH_CENTS
    preauth_cap_cents: int | None = None

    def __post_init__(self) -> None:
        if not _CURRENCY_RE.fullmatch(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code like 'EUR', got {self.currency!r}")
        _check_price(self.vat_rate_pct, "vat_rate_pct")
        if self.vat_rate_pct > 100:
            raise ValueError(f"vat_rate_pct must be within 0..100, got {self.vat_rate_pct}")
        for what in ("price_per_kwh", "price_per_minute", "session_fee", "idle_fee_per_minute"):
            _check_price(getattr(self, what), what)
        _check_price(self.idle_grace_min, "idle_grace_min")
        if self.preauth_cents <= 0:
            raise ValueError(f"preauth_cents must be > 0, got {self.preauth_cents}")
        if self.preauth_cap_cents is not None and self.preauth_cap_cents <= 0:
            raise ValueError(f"preauth_cap_cents must be > 0, got {self.preauth_cap_cents}")

    @property
    def max_price_per_kwh(self) -> Decimal:
        """The highest energy price any band of this tariff can charge."""
        return max([self.price_per_kwh, *(p.price_per_kwh for p in self.time_of_use)])

    def band_at(self, wall: datetime) -> tuple[str, Decimal]:
        """The energy band at ``wall`` (site-local): its name (DEFAULT_BAND) and its price."""
        best: TouPrice | None = None
        for period in self.time_of_use:
            if period.covers(wall) and (best is None or period.price_per_kwh < best.price_per_kwh):
                best = period
        if best is None:
            return DEFAULT_BAND, self.price_per_kwh
        return best.name, best.price_per_kwh


def preauth_amount_cents(tariff: Tariff) -> int:
    """What to pre-authorise on the card: the tariff's amount, never above the site's cap."""
    if tariff.preauth_cap_cents is None:
        return tariff.preauth_cents
    return min(tariff.preauth_cents, tariff.preauth_cap_cents)


# --------------------------------------------------------------------------------------------
# Usage: what a session has used so far
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergyBand:
    """The energy charged at one price of the tariff (``name`` DEFAULT_BAND: the default)."""

    name: str
    price_per_kwh: Decimal
    energy_wh: Fraction


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """A session's usage, exact. Immutable: ``Usage.start`` then ``usage.record(...)`` per tick.

    ``idle_since`` is the sample that began the present idle run (None while the EV draws or
    the site holds it); ``closed_idle_s`` is the billable idle time (past the grace) of the
    runs already over. ``last_power_w`` is the mean power of the last interval with time in it.
    """

    started_at: datetime
    last_at: datetime
    register_wh: Fraction
    bands: tuple[EnergyBand, ...] = ()
    idle_since: datetime | None = None
    closed_idle_s: Fraction = field(default_factory=Fraction)
    last_power_w: Fraction = field(default_factory=Fraction)
    register_resets: int = 0

    @classmethod
    def start(
        cls,
        *,
        at: datetime,
        energy_register_wh: int | float | Decimal | Fraction,
        drawing: bool = False,
        held: bool = False,
    ) -> Usage:
        """The usage at the session's start: nothing yet; the register is the baseline."""
        _aware(at)
        return cls(
            started_at=at,
            last_at=at,
            register_wh=_exact(energy_register_wh, "energy_register_wh"),
            idle_since=None if drawing or held else at,
        )

    @property
    def energy_wh(self) -> Fraction:
        return sum((b.energy_wh for b in self.bands), Fraction(0))

    @property
    def session_s(self) -> Fraction:
        return _seconds(self.started_at, self.last_at)

    def idle_run_s(self) -> Fraction:
        """The length of the present idle run (0 while the EV draws or is held)."""
        if self.idle_since is None:
            return Fraction(0)
        return _seconds(self.idle_since, self.last_at)

    def billable_idle_s(self, tariff: Tariff) -> Fraction:
        """Idle time past the grace, over every run so far, the present one included."""
        return self.closed_idle_s + _past_grace(self.idle_run_s(), tariff)

    def record(
        self,
        tariff: Tariff,
        *,
        at: datetime,
        energy_register_wh: int | float | Decimal | Fraction,
        drawing: bool,
        held: bool = False,
    ) -> Usage:
        """The usage after one more sample: the wall time, the energy register, and whether the
        EV draws current (``held``: the site holds it at 0 A, a pause that is not idle time).

        A sample at or before the last one (a wall clock set back) adds no time; its energy
        goes to the band of the last sample. A register below the last reading adds nothing.
        """
        _aware(at)
        register = _exact(energy_register_wh, "energy_register_wh")
        delta_wh = register - self.register_wh
        resets = self.register_resets
        if delta_wh < 0:
            # Reset, rollover or a swapped meter: the energy of this interval is unknown, and
            # guessing it could bill the driver for energy never delivered.
            delta_wh = Fraction(0)
            resets += 1
        # A clock set back must not make time run backwards: keep the latest instant.
        later = at if _seconds(self.last_at, at) > 0 else self.last_at
        interval_s = _seconds(self.last_at, later)

        bands = self.bands
        if delta_wh > 0:
            for (name, price), share_s in _band_shares(tariff, self.last_at, later):
                part = delta_wh * share_s / interval_s if interval_s > 0 else delta_wh
                bands = _add_energy(bands, name, price, part)

        idle_since = self.idle_since
        closed = self.closed_idle_s
        if idle_since is not None and (delta_wh > 0 or drawing or held):
            # The run ended at the last sample known idle: the EV drew (or was held) since.
            closed += _past_grace(_seconds(idle_since, self.last_at), tariff)
            idle_since = None
        if not (drawing or held) and idle_since is None:
            idle_since = later

        return replace(
            self,
            last_at=later,
            register_wh=register,
            bands=bands,
            idle_since=idle_since,
            closed_idle_s=closed,
            last_power_w=delta_wh * _S_PER_H / interval_s if interval_s > 0 else self.last_power_w,
            register_resets=resets,
        )


def _past_grace(run_s: Fraction, tariff: Tariff) -> Fraction:
    return max(Fraction(0), run_s - Fraction(tariff.idle_grace_min) * _S_PER_MIN)


def _add_energy(
    bands: tuple[EnergyBand, ...], name: str, price: Decimal, energy_wh: Fraction
) -> tuple[EnergyBand, ...]:
    for i, band in enumerate(bands):
        if band.name == name and band.price_per_kwh == price:
            grown = replace(band, energy_wh=band.energy_wh + energy_wh)
            return (*bands[:i], grown, *bands[i + 1 :])
    return (*bands, EnergyBand(name=name, price_per_kwh=price, energy_wh=energy_wh))


def _band_shares(
    tariff: Tariff, begin: datetime, end: datetime
) -> list[tuple[tuple[str, Decimal], Fraction]]:
    """The bands of the interval [begin, end) and the real seconds spent in each, in order.

    Period boundaries are whole local minutes and zone offsets are whole minutes, so the band
    cannot change inside a UTC minute: looking at each minute boundary finds every change,
    DST jumps included. An interval of zero length gets the band at ``begin``.
    """
    zone = begin.tzinfo
    band = tariff.band_at(begin)
    if not tariff.time_of_use:
        return [(band, _seconds(begin, end))]
    if end - begin > _WEEK:
        # A gap of more than a week (the controller was down, or the clock jumped when NTP
        # came): the schedule is weekly, so one week's shares scaled to the whole gap; a
        # minute-by-minute walk over years of clock jump would hold the control tick.
        scale = _seconds(begin, end) / _seconds(begin, begin + _WEEK)
        week = _band_shares(tariff, begin, begin + _WEEK)
        return [(b, seconds * scale) for b, seconds in week]
    shares: list[tuple[tuple[str, Decimal], Fraction]] = []
    piece_start = begin.astimezone(UTC)
    end_utc = end.astimezone(UTC)
    boundary = piece_start.replace(second=0, microsecond=0) + _MINUTE
    while boundary < end_utc:
        here = tariff.band_at(boundary.astimezone(zone))
        if here != band:
            shares.append((band, _seconds(piece_start, boundary)))
            piece_start, band = boundary, here
        boundary += _MINUTE
    shares.append((band, _seconds(piece_start, end_utc)))
    return shares


# --------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CostBreakdown:
    """A session's cost in cents. ``total_cents`` is the exact cost rounded once, half up.

    The parts are the exact parts apportioned by largest remainder: each is its exact value
    rounded down or up (within one cent), and they add up to ``total_cents``. ``vat_cents`` is
    the VAT contained in the total, ``net_cents`` the rest. ``exact_*`` keep the unrounded
    figures (cents, as fractions) for receipts and audits.
    """

    currency: str
    vat_rate_pct: Decimal
    energy_wh: Fraction
    session_s: Fraction
    billable_idle_s: Fraction
    bands: tuple[EnergyBand, ...]
    energy_cents: int
    time_cents: int
    idle_fee_cents: int
    session_fee_cents: int
    total_cents: int
    vat_cents: int
    net_cents: int
    exact_energy_cents: Fraction
    exact_time_cents: Fraction
    exact_idle_fee_cents: Fraction
    exact_session_fee_cents: Fraction

    @property
    def exact_total_cents(self) -> Fraction:
        return (
            self.exact_energy_cents
            + self.exact_time_cents
            + self.exact_idle_fee_cents
            + self.exact_session_fee_cents
        )


def _exact_parts(tariff: Tariff, usage: Usage) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """Energy, time, idle fee and session fee in cents, exact."""
    energy = sum(
        (
            b.energy_wh * Fraction(b.price_per_kwh) * _CENTS_PER_UNIT / _WH_PER_KWH
            for b in usage.bands
        ),
        Fraction(0),
    )
    per_minute = Fraction(tariff.price_per_minute) * _CENTS_PER_UNIT / _S_PER_MIN
    idle_per_minute = Fraction(tariff.idle_fee_per_minute) * _CENTS_PER_UNIT / _S_PER_MIN
    return (
        energy,
        usage.session_s * per_minute,
        usage.billable_idle_s(tariff) * idle_per_minute,
        Fraction(tariff.session_fee) * _CENTS_PER_UNIT,
    )


def _apportion(parts: tuple[Fraction, ...], total: int) -> tuple[int, ...]:
    """Whole cents for each part, adding up to ``total`` (largest remainder; ties: first part).

    ``total`` is the half-up rounding of the parts' sum, so it lies between the sum of their
    floors and that plus the number of parts with a remainder: every part moves < 1 cent.
    """
    floors = [math.floor(p) for p in parts]
    extra = total - sum(floors)
    by_remainder = sorted(range(len(parts)), key=lambda i: (-(parts[i] - floors[i]), i))
    for i in by_remainder[:extra]:
        floors[i] += 1
    return tuple(floors)


def cost(tariff: Tariff, usage: Usage) -> CostBreakdown:
    """The session's cost so far: exact, rounded once (half up) to whole cents at the end."""
    energy, time_part, idle, fee = _exact_parts(tariff, usage)
    total = round_half_up(energy + time_part + idle + fee)
    energy_cents, time_cents, idle_cents, fee_cents = _apportion(
        (energy, time_part, idle, fee), total
    )
    rate = Fraction(tariff.vat_rate_pct)
    vat = round_half_up(total * rate / (100 + rate))
    return CostBreakdown(
        currency=tariff.currency,
        vat_rate_pct=tariff.vat_rate_pct,
        energy_wh=usage.energy_wh,
        session_s=usage.session_s,
        billable_idle_s=usage.billable_idle_s(tariff),
        bands=usage.bands,
        energy_cents=energy_cents,
        time_cents=time_cents,
        idle_fee_cents=idle_cents,
        session_fee_cents=fee_cents,
        total_cents=total,
        vat_cents=vat,
        net_cents=total - vat,
        exact_energy_cents=energy,
        exact_time_cents=time_part,
        exact_idle_fee_cents=idle,
        exact_session_fee_cents=fee,
    )


def must_stop(
    tariff: Tariff,
    usage: Usage,
    preauth_cents: int,
    *,
    headroom_s: Number,
    power_w: Number | None = None,
) -> bool:
    """True when the cost could pass ``preauth_cents`` within the next ``headroom_s``.

    The projection is the worst case for that time: energy at ``power_w`` (default: the power
    of the last interval; pass the connector's allowed power to be safe against a ramp-up) at
    the tariff's highest energy price, the time price, and the idle fee as if the present idle
    run went on (or a new one began now). ``headroom_s`` is the longest the controller may
    take to stop the EV after this call: a tick plus the EVSE's reaction.
    """
    horizon_s = _exact(headroom_s, "headroom_s")
    if horizon_s < 0:
        raise ValueError(f"headroom_s must be >= 0, got {headroom_s!r}")
    power = usage.last_power_w if power_w is None else _exact(power_w, "power_w")
    energy, time_part, idle, fee = _exact_parts(tariff, usage)
    run_s = usage.idle_run_s()
    more_idle_s = _past_grace(run_s + horizon_s, tariff) - _past_grace(run_s, tariff)
    more = (
        max(Fraction(0), power)
        * horizon_s
        / _S_PER_H
        * Fraction(tariff.max_price_per_kwh)
        * _CENTS_PER_UNIT
        / _WH_PER_KWH
        + horizon_s * Fraction(tariff.price_per_minute) * _CENTS_PER_UNIT / _S_PER_MIN
        + more_idle_s * Fraction(tariff.idle_fee_per_minute) * _CENTS_PER_UNIT / _S_PER_MIN
    )
    return round_half_up(energy + time_part + idle + fee + more) > preauth_cents


# --------------------------------------------------------------------------------------------
# What the driver sees before a session starts
# --------------------------------------------------------------------------------------------


def price_display(tariff: Tariff) -> dict[str, object]:
    """The tariff as shown before a session (CLI, MQTT metadata): every part, JSON-ready.

    Prices are decimal text ("0.39"), never floats, so a backend shows what was configured.
    """
    preauth = preauth_amount_cents(tariff)
    return {
        "tariff_id": tariff.id,
        "name": tariff.name or tariff.id,
        "currency": tariff.currency,
        "vat_rate_pct": _number_text(tariff.vat_rate_pct),
        "prices_include_vat": True,
        "price_per_kwh": _money(tariff.price_per_kwh),
        "time_of_use": [
            {
                "name": p.name,
                "days": [DAY_NAMES[d - 1] for d in sorted(p.days)],
                "start": _clock(p.start),
                "end": _clock(p.end, end=True),
                "price_per_kwh": _money(p.price_per_kwh),
            }
            for p in tariff.time_of_use
        ],
        "price_per_minute": _money(tariff.price_per_minute),
        "session_fee": _money(tariff.session_fee),
        "idle_fee_per_minute": _money(tariff.idle_fee_per_minute),
        "idle_grace_min": _number_text(tariff.idle_grace_min),
        "preauth_cents": preauth,
        "preauth": _cents_text(preauth),
        "text": price_text(tariff),
    }


def _days_text(days: frozenset[int], groups: Mapping[str, frozenset[int]]) -> str:
    for word, group in groups.items():
        if days == group:
            return word
    return ",".join(DAY_NAMES[d - 1] for d in sorted(days))


_DAY_GROUPS = {
    "weekdays": frozenset(range(1, 6)),
    "weekend": frozenset({6, 7}),
    "daily": frozenset(range(1, 8)),
}


def price_text(tariff: Tariff) -> str:
    """One line for a display or a terminal: every price, the currency and the VAT rate."""
    cur = tariff.currency
    parts = [f"{_money(tariff.price_per_kwh)} {cur}/kWh"]
    for p in tariff.time_of_use:
        parts.append(
            f"{_money(p.price_per_kwh)} {cur}/kWh {p.name} {_days_text(p.days, _DAY_GROUPS)} "
            f"{_clock(p.start)}-{_clock(p.end, end=True)}"
        )
    if tariff.price_per_minute:
        parts.append(f"{_money(tariff.price_per_minute)} {cur}/min")
    if tariff.session_fee:
        parts.append(f"session fee {_money(tariff.session_fee)} {cur}")
    if tariff.idle_fee_per_minute:
        parts.append(
            f"idle fee {_money(tariff.idle_fee_per_minute)} {cur}/min after "
            f"{_number_text(tariff.idle_grace_min)} min"
        )
    vat = f"incl. {_number_text(tariff.vat_rate_pct)} % VAT"
    preauth = f"pre-authorisation {_cents_text(preauth_amount_cents(tariff))} {cur}"
    return f"{'; '.join(parts)} ({vat}); {preauth}"
