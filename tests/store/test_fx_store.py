"""Exchange rates in the store, on SQLite and PostgreSQL: stored exactly, replaced for the
same pair and instant, refused with what is wrong, and what lets an account pay in
another currency than its plan."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.charging.model import AccountKind
from sidecar.store.accounts import add_account
from sidecar.store.conn import Db
from sidecar.store.decks import import_deck
from sidecar.store.fx import FxInputError, list_rates, load_fx, set_rate
from tests.conftest import write

JAN = datetime(2026, 1, 1, tzinfo=UTC)
JUN = datetime(2026, 6, 1, tzinfo=UTC)
T0 = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp() * 1000)


def test_rates_are_stored_exactly_and_the_newest_in_force_applies(store: Db,
                                                                   tmp_path: Path) -> None:
    set_rate(store, "usd", "EUR", "0.9215", JAN, now_ms=T0)
    set_rate(store, "USD", "EUR", "0.93000001", JUN, now_ms=T0)
    set_rate(store, "USD", "EUR", "0.9300", JUN, now_ms=T0)  # the same instant: replaced
    rates = list_rates(store)
    assert [(r.base, r.quote, r.rate, r.effective_from) for r in rates] == [
        ("USD", "EUR", Decimal("0.9215"), JAN), ("USD", "EUR", Decimal("0.9300"), JUN)]
    fx = load_fx(store)
    assert fx.rate("USD", "EUR", datetime(2026, 3, 1, tzinfo=UTC))[0] == Decimal("0.9215")
    assert fx.convert(Decimal("10"), "EUR", "USD", JUN).converted == Decimal("10.75268817")
    for bad, why in ((("USD", "EUR", "x"), "not a decimal number"),
                     (("USD", "EUR", "-1"), "must be above 0"),
                     (("USD", "USD", "1"), "two currencies"),
                     (("USD", "EURO", "1"), "EURO")):
        with pytest.raises(FxInputError, match=why):
            set_rate(store, *bad, JAN, now_ms=T0)
    assert len(list_rates(store)) == 2  # nothing written by a refused rate
    # An account may pay in euros on a dollar plan once a rate is in force.
    import_deck(store, "retail", write(tmp_path / "d.csv", "destination;code;rate_usd;"
                                       "increment;effective_from\nDE;49;0.02;1/1;2026-01-01\n"),
                as_of=JAN)
    acc = add_account(store, "EURO", "retail", AccountKind.PREPAID, currency="EUR", now_ms=T0)
    assert acc.currency == "EUR"
    with pytest.raises(ValueError, match="no exchange rate USD/GBP"):
        add_account(store, "BRIT", "retail", AccountKind.PREPAID, currency="GBP", now_ms=T0)
