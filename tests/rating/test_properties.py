"""Property tests of the increment rule and of affordability."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from sidecar.rating import Increment, RateLine, affordable_seconds, price
from sidecar.rating.increments import SecondRounding, duration_seconds

incs = st.builds(Increment, st.integers(1, 120), st.integers(1, 120))


@given(incs, st.integers(1, 100_000))
def test_billed_matches_the_published_definition(inc: Increment, d: int) -> None:
    expected = inc.first if d <= inc.first else inc.first + math.ceil(
        (d - inc.first) / inc.next) * inc.next
    assert inc.billed(d) == expected
    assert inc.billed(d) >= d
    assert inc.floor_grid(inc.billed(d)) == inc.billed(d)


@given(st.integers(0, 10**9))
def test_second_rounding_rules(ms: int) -> None:
    assert duration_seconds(ms, SecondRounding.CEIL) == math.ceil(ms / 1000)
    assert duration_seconds(ms, SecondRounding.FLOOR) == ms // 1000
    assert duration_seconds(ms, SecondRounding.FLOOR) <= duration_seconds(
        ms, SecondRounding.NEAREST) <= duration_seconds(ms, SecondRounding.CEIL)


rates = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("5"), places=4)
fees = st.decimals(min_value=Decimal(0), max_value=Decimal("0.5"), places=3)
amounts = st.decimals(min_value=Decimal(0), max_value=Decimal("50"), places=6)


@given(rates, incs, fees, amounts, st.integers(0, 600))
def test_affordable_seconds_is_the_longest_affordable(
    rate: Decimal, inc: Increment, fee: Decimal, amount: Decimal, already_raw: int
) -> None:
    line = RateLine("X", "1", rate, inc, datetime(2026, 1, 1, tzinfo=UTC), "USD",
                    connection_fee=fee)
    already = inc.billed(already_raw)
    d = affordable_seconds(line, amount, already)
    base = price(line, already).cost if already else Decimal(0)
    assert d >= already
    if d > already:
        assert price(line, d).cost - base <= amount
        assert inc.floor_grid(d) == d
    nxt = inc.billed(d + 1)
    assert price(line, nxt).cost - base > amount
