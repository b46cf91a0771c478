"""The rating engine: longest-prefix match, effective dates, origin classes, prices.

A :class:`RateTable` holds every line of a plan (all deck versions) in a dict keyed by
prefix. Matching a number walks its own prefixes from the longest down, one dict
look-up each (at most 15), which is what makes rating fast: no scan over the deck and
no SQL per call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from ..money import ZERO, round_money
from ..numbers import DEFAULT_NUMBER_PLAN, NumberPlan, normalize, origin_class
from .deck import RateLine
from .increments import Increment, SecondRounding, duration_seconds

_SIXTY = Decimal(60)


@dataclass(frozen=True, slots=True)
class Price:
    """What an answered call of a given length costs on one rate line.

    Each component is rounded once to the money scale; ``cost`` is their exact sum.
    """

    billed_seconds: int
    usage: Decimal
    connection_fee: Decimal
    surcharge: Decimal
    minimum_uplift: Decimal  # what the minimum charge added on top of the rest
    cost: Decimal


@dataclass(frozen=True, slots=True)
class Rating:
    """A rated call: the line that matched and the price."""

    number: str  # E.164 digits
    origin: str
    line: RateLine
    duration_ms: int
    price: Price

    @property
    def cost(self) -> Decimal:
        return self.price.cost

    @property
    def billed_seconds(self) -> int:
        return self.price.billed_seconds


def _newest_first(entry: tuple[int, int, RateLine]) -> tuple[int, int]:
    """Sort key of index entries: (effective date, deck version)."""
    return entry[0], entry[1]


class NoRate(LookupError):
    """No line of the plan covers the number (at that time, for that origin)."""


def price(line: RateLine, seconds: int) -> Price:
    """Price an answered call of ``seconds`` whole seconds on ``line`` (0 = unanswered)."""
    billed = line.increment.billed(seconds)
    if billed == 0:
        return Price(0, ZERO, ZERO, ZERO, ZERO, ZERO)
    usage = round_money(line.rate * billed / _SIXTY)
    fee = line.connection_fee
    surcharge = (
        line.short_call_surcharge
        if line.short_call_surcharge and seconds < line.short_call_seconds
        else ZERO
    )
    total = usage + fee + surcharge
    uplift = line.minimum_charge - total if line.minimum_charge > total else ZERO
    return Price(billed, usage, fee, surcharge, uplift, total + uplift)


def affordable_seconds(line: RateLine, amount: Decimal, already: int = 0) -> int:
    """The longest duration (whole seconds, on the increment grid, >= ``already``)
    whose price exceeds the price of ``already`` seconds by at most ``amount``.

    Returns ``already`` when not even the next increment step is affordable. With a
    zero rate there is no limit from credit; the caller caps the duration.
    """
    base = price(line, already).cost if already else ZERO
    budget = base + amount
    inc = line.increment
    if line.rate == 0:
        return already if price(line, max(already, inc.first)).cost > budget else 10**9
    # Price grows with billed seconds; solve for usage then walk back over the fixed parts
    # (fee, surcharge, minimum) which only make a duration dearer, never cheaper.
    fixed = line.connection_fee
    usage_budget = budget - fixed
    if usage_budget < 0:
        return already
    guess = int(usage_budget * _SIXTY / line.rate)
    d = inc.floor_grid(guess)
    # The guess ignores the 8-place rounding of the price: step to the exact answer.
    while d > already and price(line, d).cost > budget:
        d = inc.floor_grid(d - 1)
    while price(line, inc.billed(d + 1)).cost <= budget:
        d = inc.billed(d + 1)
    return max(d, already)


class RateTable:
    """All lines of one plan, indexed by prefix, ready to rate numbers.

    A table is never changed once built: :meth:`extended` makes a new table with more
    lines (or other settings) that shares the untouched part of the index, so calls
    being rated on the old table are not disturbed.
    """

    def __init__(
        self,
        lines: Iterable[RateLine],
        currency: str,
        *,
        number_plan: NumberPlan = DEFAULT_NUMBER_PLAN,
        rounding: SecondRounding = SecondRounding.CEIL,
    ) -> None:
        self.currency = currency
        # prefix -> origin ("" = any) -> [(effective_ts, version, line)] newest first
        index: dict[str, dict[str, list[tuple[int, int, RateLine]]]] = {}
        size = 0
        for ln in lines:
            index.setdefault(ln.prefix, {}).setdefault(ln.origin, []).append(
                (ln.effective_ts, ln.version, ln))
            size += 1
        for by_origin in index.values():
            for entries in by_origin.values():
                if len(entries) > 1:
                    entries.sort(key=_newest_first, reverse=True)
        self._index = index
        self._max_len = max((len(p) for p in index), default=0)
        self._has_origins = any(o for by in index.values() for o in by)
        self.size = size
        self._settings(number_plan, rounding)

    def _settings(self, number_plan: NumberPlan, rounding: SecondRounding) -> None:
        self.number_plan = number_plan
        self.rounding = rounding
        # Plain digits skip normalisation unless they start with a prefix it would strip.
        self._slow_starts = tuple(p for p in (
            number_plan.international_prefix, number_plan.national_prefix,
            *number_plan.strip_prefixes) if p) or ("\0",)

    def extended(
        self,
        lines: Iterable[RateLine],
        *,
        number_plan: NumberPlan | None = None,
        rounding: SecondRounding | None = None,
    ) -> RateTable:
        """A new table holding this table's lines plus ``lines`` (and, when given, other
        number-plan or rounding settings). It rates exactly as a table built from all the
        lines at once would; this table is left as it was.

        Only the prefixes the new lines touch are re-indexed: the cost is a copy of the
        prefix dict plus the new lines, whatever the size of the table.
        """
        # The new lines indexed alone first, as the constructor would ...
        added: dict[str, dict[str, list[tuple[int, int, RateLine]]]] = {}
        size = self.size
        for ln in lines:
            added.setdefault(ln.prefix, {}).setdefault(ln.origin, []).append(
                (ln.effective_ts, ln.version, ln))
            size += 1
        # ... then merged: new dicts and lists for the prefixes they touch, the rest shared.
        index = dict(self._index)
        for prefix, by_origin in added.items():
            old = index.get(prefix)
            merged = by_origin if old is None else {**old}
            for origin, entries in by_origin.items():
                before = None if old is None else old.get(origin)
                if before:
                    # Stable: on a full tie the lines already here stay before the new
                    # ones, as when the table is built from old lines followed by new ones.
                    entries = before + entries
                if len(entries) > 1:
                    entries.sort(key=_newest_first, reverse=True)
                merged[origin] = entries
            index[prefix] = merged
        new = RateTable.__new__(RateTable)
        new.currency = self.currency
        new._index = index
        new._max_len = max(self._max_len, max((len(p) for p in added), default=0))
        new._has_origins = self._has_origins or any(o for by in added.values() for o in by)
        new.size = size
        new._settings(self.number_plan if number_plan is None else number_plan,
                      self.rounding if rounding is None else rounding)
        return new

    def rounding_seconds(self, duration_ms: int) -> int:
        """Whole seconds of a duration by this plan's rounding rule."""
        return duration_seconds(duration_ms, self.rounding)

    @property
    def uses_origins(self) -> bool:
        """True when some line is priced per origin class (the CLI matters)."""
        return self._has_origins

    def lookup(self, digits: str, at: int, origin: str = "") -> RateLine | None:
        """The line in effect at ``at`` (Unix seconds) for E.164 ``digits``: the longest
        prefix that has such a line; among a prefix's lines, the caller's origin class
        before the any-origin line, then the latest effective date (the later deck
        version on a tie)."""
        index = self._index
        for n in range(min(len(digits), self._max_len), 0, -1):
            by_origin = index.get(digits[:n])
            if by_origin is None:
                continue
            if origin:
                entries = by_origin.get(origin)
                if entries:
                    for eff, _v, line in entries:
                        if eff <= at:
                            return line
            entries = by_origin.get("")
            if entries:
                for eff, _v, line in entries:
                    if eff <= at:
                        return line
        return None

    def rate(
        self,
        number: str,
        duration_ms: int,
        at: int,
        cli: str | None = None,
    ) -> Rating:
        """Rate one call: dialled ``number``, answered for ``duration_ms`` (0 =
        unanswered), answered at ``at`` (Unix seconds), caller ``cli``.

        Raises :class:`NoRate` when no line covers the number, and
        :class:`~sidecar.numbers.InvalidNumber` for a number that is not one.
        """
        if number.isdigit() and not number.startswith(self._slow_starts):
            digits = number
        else:
            digits = normalize(number, self.number_plan)
        origin = origin_class(cli, self.number_plan) if self._has_origins else ""
        line = self.lookup(digits, at, origin)
        if line is None:
            raise NoRate(f"no rate for {digits}" + (f" from an {origin} caller" if origin else ""))
        return Rating(digits, origin, line, duration_ms,
                      price(line, duration_seconds(duration_ms, self.rounding)))

    def lines_in_effect(self, at: int) -> list[RateLine]:
        """Every (prefix, origin) line in effect at ``at`` plus every later scheduled
        line: what a customer is sent. Sorted by prefix, origin, date."""
        out: list[RateLine] = []
        for prefix in sorted(self._index):
            for origin in sorted(self._index[prefix]):
                entries = self._index[prefix][origin]
                future = [ln for eff, _v, ln in entries if eff > at]
                current = next((ln for eff, _v, ln in entries if eff <= at), None)
                chosen = ([current] if current else []) + sorted(
                    future, key=lambda ln: ln.effective_ts)
                # Two versions may schedule the same date: keep the later version's.
                dedup: dict[int, RateLine] = {}
                for ln in chosen:
                    if ln.effective_ts not in dedup or ln.version > dedup[ln.effective_ts].version:
                        dedup[ln.effective_ts] = ln
                out.extend(dedup[k] for k in sorted(dedup))
        return out


__all__ = ["Increment", "NoRate", "Price", "RateTable", "Rating", "affordable_seconds", "price"]
