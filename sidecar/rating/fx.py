"""Exchange rates with effective dates (pure): which rate applies to a call, and how an
amount is converted.

- A rate says what one unit of ``base`` is worth in ``quote`` from ``effective_from``
  (UTC) on: ``1 EUR = 1.0825 USD``. The rate in force at an instant is the newest one
  effective at or before it; a rate for the other direction is used inverted when no
  direct one is in force (the newer of the two wins when both are).
- Conversion (one rounding, as every price): ``amount x rate``, computed exactly, then
  rounded once, half up, to the money scale (8 places). A converted call keeps the rate
  used beside both amounts, so the conversion can be checked and redone.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..money import MoneyError, check_currency, round_money

_ONE = Decimal(1)


class FxError(LookupError):
    """No exchange rate in force for a pair at an instant (names both)."""


@dataclass(frozen=True, slots=True)
class FxRate:
    """1 ``base`` = ``rate`` ``quote`` from ``effective_from`` on."""

    base: str
    quote: str
    rate: Decimal
    effective_from: datetime

    def __post_init__(self) -> None:
        base, quote = check_currency(self.base), check_currency(self.quote)
        if base == quote:
            raise MoneyError(f"an exchange rate needs two currencies, not {base} and {quote}")
        if not self.rate.is_finite() or self.rate <= 0:
            raise MoneyError(f"exchange rate {base}/{quote} must be above 0, "
                             f"not {self.rate}")
        if self.effective_from.tzinfo is None:
            raise MoneyError(f"exchange rate {base}/{quote}: effective_from needs a time "
                             "zone (UTC)")
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "quote", quote)


@dataclass(frozen=True, slots=True)
class Conversion:
    """An amount converted: both amounts and the rate used (quote per base)."""

    amount: Decimal  # in ``base``
    converted: Decimal  # in ``quote``, at the money scale
    base: str
    quote: str
    rate: Decimal
    effective_from: datetime  # of the rate used (inverted rates: of the one inverted)


class FxTable:
    """Every exchange rate, by pair, oldest first."""

    def __init__(self, rates: Iterable[FxRate] = ()) -> None:
        self._by_pair: dict[tuple[str, str], list[FxRate]] = {}
        self._starts: dict[tuple[str, str], list[datetime]] = {}
        for r in rates:
            self._by_pair.setdefault((r.base, r.quote), []).append(r)
        for pair, items in self._by_pair.items():
            items.sort(key=lambda r: r.effective_from)
            self._starts[pair] = [r.effective_from for r in items]

    def _in_force(self, base: str, quote: str, at: datetime) -> FxRate | None:
        starts = self._starts.get((base, quote))
        if not starts:
            return None
        i = bisect.bisect_right(starts, at)
        return self._by_pair[(base, quote)][i - 1] if i else None

    def rate(self, base: str, quote: str, at: datetime) -> tuple[Decimal, datetime]:
        """Quote per base in force at ``at``, and the effective date of the rate used.
        Raises :class:`FxError` when none is in force."""
        base, quote = check_currency(base), check_currency(quote)
        if base == quote:
            return _ONE, at
        direct = self._in_force(base, quote, at)
        inverse = self._in_force(quote, base, at)
        if direct is not None and (inverse is None
                                   or direct.effective_from >= inverse.effective_from):
            return direct.rate, direct.effective_from
        if inverse is not None:
            return _ONE / inverse.rate, inverse.effective_from
        raise FxError(f"no exchange rate {base}/{quote} in force at "
                      f"{at.isoformat().replace('+00:00', 'Z')}")

    def convert(self, amount: Decimal, base: str, quote: str, at: datetime) -> Conversion:
        """``amount`` of ``base`` in ``quote`` at the rate in force at ``at``."""
        rate, since = self.rate(base, quote, at)
        return Conversion(amount, round_money(amount * rate), check_currency(base),
                          check_currency(quote), rate, since)
