"""Exchange rates with effective dates: the rate in force, inverses, one rounding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.money import MoneyError
from sidecar.rating.fx import FxError, FxRate, FxTable

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)


def table() -> FxTable:
    return FxTable([FxRate("EUR", "USD", Decimal("1.08"), JAN),
                    FxRate("eur", "usd", Decimal("1.10"), FEB),
                    FxRate("GBP", "EUR", Decimal("1.20"), JAN)])


def test_the_rate_in_force_is_the_newest_effective_at_that_instant() -> None:
    t = table()
    assert t.rate("EUR", "USD", FEB - timedelta(microseconds=1)) == (Decimal("1.08"), JAN)
    assert t.rate("EUR", "USD", FEB) == (Decimal("1.10"), FEB)
    with pytest.raises(FxError, match="no exchange rate EUR/USD in force at 2025-12-31"):
        t.rate("EUR", "USD", JAN - timedelta(days=1))


def test_a_call_is_converted_once_half_up_to_the_money_scale_keeping_the_rate() -> None:
    c = table().convert(Decimal("0.123456785"), "EUR", "USD", FEB)
    # 0.123456785 x 1.10 = 0.1358024635 -> 0.13580246 (half up at 8 places)
    assert c.converted == Decimal("0.13580246")
    assert (c.base, c.quote, c.rate, c.effective_from) == ("EUR", "USD", Decimal("1.10"), FEB)


def test_the_other_direction_is_used_inverted() -> None:
    rate, since = table().rate("EUR", "GBP", FEB)
    assert since == JAN
    assert rate == Decimal(1) / Decimal("1.20")
    assert table().convert(Decimal("1.20"), "EUR", "GBP", FEB).converted == Decimal("1.00000000")


def test_the_same_currency_converts_at_one() -> None:
    c = table().convert(Decimal("2.5"), "JPY", "jpy", JAN)
    assert (c.converted, c.rate) == (Decimal("2.50000000"), Decimal(1))


@pytest.mark.parametrize(("args", "message"), [
    (("EUR", "EUR", Decimal(1), JAN), "needs two currencies"),
    (("EUR", "USD", Decimal(0), JAN), "must be above 0"),
    (("EUR", "USD", Decimal("NaN"), JAN), "must be above 0"),
    (("EUR", "XYZ", Decimal(1), JAN), "unknown currency 'XYZ'"),
    (("EUR", "USD", Decimal(1), datetime(2026, 1, 1)), "needs a time zone"),
])
def test_a_bad_rate_is_refused_with_what_is_wrong(args: tuple[str, str, Decimal, datetime],
                                                  message: str) -> None:
    with pytest.raises(MoneyError, match=message):
        FxRate(*args)


@given(st.decimals(min_value=0, max_value=10**6, places=8),
       st.decimals(min_value=Decimal("0.0001"), max_value=10_000, places=6))
def test_conversion_is_exact_before_its_one_rounding(amount: Decimal, rate: Decimal) -> None:
    t = FxTable([FxRate("USD", "JPY", rate, JAN)])
    c = t.convert(amount, "USD", "JPY", FEB)
    assert abs(c.converted - amount * rate) <= Decimal("0.000000005")
    assert c.converted == c.converted.quantize(Decimal("0.00000001"))
