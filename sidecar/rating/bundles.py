"""Free-minute bundles (pure): which calls a bundle covers, how a call is split between
bundle seconds and paid seconds, what the paid part costs, and the bundle's period.

One rule at the boundary:

- A call is billed the seconds its rate line's increment gives (``Increment.billed``),
  as without a bundle: a bundle never changes how long a call is billed for.
- The first of those billed seconds come from the bundle, as many as are left, to the
  second: **bundle seconds + paid seconds = billed seconds**. On a 60/60 line a call of
  61 s is billed 120 s; with 90 s left in the bundle, 90 are bundle seconds and 30 paid.
- Paid seconds cost the line's rate per second (rate x paid / 60, rounded once, half up,
  to the money scale, like every price). The line's fixed charges (connection fee,
  short-call surcharge, minimum charge) apply only to a call that has paid seconds: a
  call wholly inside its bundle costs nothing.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..money import ZERO, round_money
from .deck import RateLine
from .engine import Price, affordable_seconds

_SIXTY = Decimal(60)
#: What affordable_with_bundle returns when nothing but the call length limits a call.
UNLIMITED = 10**9
PERIODS = ("month", "day")


class BundleError(ValueError):
    """A bundle that cannot be used: names what is wrong."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """So many seconds per period for a group of destinations: the rate lines whose
    breakout name is in ``destinations`` (case-insensitive) or the numbers that start
    with one of ``prefixes``; both empty: every destination."""

    name: str
    seconds: int
    destinations: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    period: str = "month"
    anchor_day: int = 1  # a monthly period starts on this day of the month (1-28)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise BundleError("a bundle needs a name")
        if self.seconds < 1:
            raise BundleError(f"bundle {self.name}: seconds must be at least 1, "
                              f"not {self.seconds}")
        if self.period not in PERIODS:
            raise BundleError(f"bundle {self.name}: period must be one of "
                              f"{', '.join(PERIODS)}, not {self.period!r}")
        if not 1 <= self.anchor_day <= 28:
            raise BundleError(f"bundle {self.name}: anchor_day must be 1-28, "
                              f"not {self.anchor_day}")
        for p in self.prefixes:
            if not (p.isascii() and p.isdigit()) or len(p) > 15:
                raise BundleError(f"bundle {self.name}: '{p}' is not a digit prefix")
        object.__setattr__(self, "destinations",
                           frozenset(d.strip().casefold() for d in self.destinations))

    def covers(self, line: RateLine, number: str) -> bool:
        """Whether a call to ``number`` rated on ``line`` draws on this bundle."""
        if not self.destinations and not self.prefixes:
            return True
        if self.prefixes and number.startswith(self.prefixes):
            return True
        return bool(self.destinations) and line.destination.casefold() in self.destinations

    def period_of(self, at: datetime) -> tuple[datetime, datetime]:
        """The period (start inclusive, end exclusive, UTC) that ``at`` falls in."""
        return period_bounds(at, self.period, self.anchor_day)


def period_bounds(at: datetime, period: str = "month", anchor_day: int = 1
                  ) -> tuple[datetime, datetime]:
    """The bundle period holding ``at`` (UTC): a calendar day, or a month running from
    ``anchor_day`` 00:00 UTC to the same day of the next month."""
    if at.tzinfo is None:
        raise BundleError("a bundle period needs an aware time (UTC)")
    at = at.astimezone(UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, _next_day(start)
    if period != "month":
        raise BundleError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    year, month = at.year, at.month
    if at.day < anchor_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    start = datetime(year, month, anchor_day, tzinfo=UTC)
    ny, nm = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, datetime(ny, nm, anchor_day, tzinfo=UTC)


def _next_day(start: datetime) -> datetime:
    days = calendar.monthrange(start.year, start.month)[1]
    if start.day < days:
        return start.replace(day=start.day + 1)
    if start.month < 12:
        return start.replace(month=start.month + 1, day=1)
    return start.replace(year=start.year + 1, month=1, day=1)


@dataclass(frozen=True, slots=True)
class Split:
    """An answered call split between its bundle and money."""

    billed_seconds: int  # as without a bundle
    bundle_seconds: int  # drawn from the bundle
    paid_seconds: int  # billed - bundle
    price: Price  # what the paid seconds cost (all zero when none are paid)

    @property
    def cost(self) -> Decimal:
        return self.price.cost


_FREE = Price(0, ZERO, ZERO, ZERO, ZERO, ZERO)


def split(line: RateLine, seconds: int, bundle_left: int) -> Split:
    """Split an answered call of ``seconds`` on ``line`` with ``bundle_left`` seconds
    left in its bundle (see the module docstring for the rule)."""
    billed = line.increment.billed(seconds)
    used = min(billed, max(bundle_left, 0))
    paid = billed - used
    if paid == 0:
        return Split(billed, used, 0, _FREE)
    usage = round_money(line.rate * paid / _SIXTY)
    fee = line.connection_fee
    surcharge = (line.short_call_surcharge
                 if line.short_call_surcharge and seconds < line.short_call_seconds else ZERO)
    total = usage + fee + surcharge
    uplift = line.minimum_charge - total if line.minimum_charge > total else ZERO
    return Split(billed, used, paid, Price(paid, usage, fee, surcharge, uplift, total + uplift))


def affordable_with_bundle(line: RateLine, bundle_left: int, amount: Decimal) -> int:
    """The longest call (whole seconds, on the increment's grid) whose paid part costs at
    most ``amount`` with ``bundle_left`` bundle seconds left: what a reservation may
    grant. :data:`UNLIMITED` when nothing but the call's own limits bound it."""
    if bundle_left <= 0:
        return affordable_seconds(line, amount)
    inc = line.increment
    free = inc.floor_grid(bundle_left)  # the longest call the bundle alone pays for

    def cost(d: int) -> Decimal:
        return split(line, d, bundle_left).cost

    step = inc.billed(free + 1)  # the first duration with paid seconds
    if cost(step) > amount:
        return free
    if line.rate == 0:
        return UNLIMITED
    # Paid seconds grow linearly past the bundle: guess from the money, then step to
    # the exact answer (the 8-place rounding, the fixed charges).
    fixed = line.connection_fee + line.short_call_surcharge
    paid_guess = int(max(amount - fixed, ZERO) * _SIXTY / line.rate)
    d = max(inc.floor_grid(bundle_left + paid_guess), step)
    while d > step and cost(d) > amount:
        d = inc.floor_grid(d - 1)
    while cost(inc.billed(d + 1)) <= amount:
        d = inc.billed(d + 1)
    return d
