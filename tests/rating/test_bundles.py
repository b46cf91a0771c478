"""Free-minute bundles: the split at the boundary, what the paid part costs, what a
reservation may grant, and the periods (pure, with property tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.rating import Increment, RateLine, price
from sidecar.rating.bundles import (
    UNLIMITED,
    Bundle,
    BundleError,
    affordable_with_bundle,
    period_bounds,
    split,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def line(rate: str = "0.60", inc: str = "60/60", fee: str = "0", minimum: str = "0",
         short_s: int = 0, surcharge: str = "0", destination: str = "Germany Mobile",
         prefix: str = "4915") -> RateLine:
    return RateLine(destination, prefix, Decimal(rate), Increment.parse(inc), T0, "EUR",
                    connection_fee=Decimal(fee), minimum_charge=Decimal(minimum),
                    short_call_seconds=short_s, short_call_surcharge=Decimal(surcharge))


def test_a_call_crossing_the_end_of_its_bundle_is_split_at_the_exact_second() -> None:
    # 60/60: a 61 s call is billed 120 s; 90 s left: 90 bundle + 30 paid at 0.60/min.
    s = split(line(), 61, 90)
    assert (s.billed_seconds, s.bundle_seconds, s.paid_seconds) == (120, 90, 30)
    assert s.cost == Decimal("0.30")
    # per second: a 100 s call with 42 s left pays 58 s.
    s = split(line(inc="1/1"), 100, 42)
    assert (s.bundle_seconds, s.paid_seconds, s.cost) == (42, 58, Decimal("0.58"))


def test_a_call_inside_its_bundle_costs_nothing_not_even_the_fixed_charges() -> None:
    s = split(line(fee="0.10", minimum="0.05", short_s=6, surcharge="0.02"), 3, 600)
    assert (s.bundle_seconds, s.paid_seconds, s.cost) == (60, 0, Decimal(0))


def test_fixed_charges_apply_once_a_call_has_paid_seconds() -> None:
    s = split(line(inc="1/1", fee="0.10", minimum="0.25"), 70, 60)
    # 10 paid seconds = 0.10, + fee 0.10 = 0.20, lifted to the minimum charge 0.25
    assert s.price.usage == Decimal("0.10")
    assert s.price.connection_fee == Decimal("0.10")
    assert s.price.minimum_uplift == Decimal("0.05")
    assert s.cost == Decimal("0.25")


def test_an_unanswered_call_draws_nothing() -> None:
    s = split(line(), 0, 600)
    assert (s.billed_seconds, s.bundle_seconds, s.paid_seconds, s.cost) == (0, 0, 0, 0)


lines = st.builds(
    line,
    rate=st.sampled_from(["0", "0.0001", "0.0125", "0.60", "1.99", "12.5"]),
    inc=st.sampled_from(["1/1", "6/6", "30/6", "60/60", "60/1"]),
    fee=st.sampled_from(["0", "0.015", "0.10"]),
    minimum=st.sampled_from(["0", "0.05"]),
    short_s=st.sampled_from([0, 6]),
    surcharge=st.sampled_from(["0", "0.02"]),
)


@given(lines, st.integers(0, 7200), st.integers(-5, 7200))
def test_bundle_plus_paid_is_billed_and_a_bundle_never_makes_a_call_dearer(
        ln: RateLine, seconds: int, left: int) -> None:
    s = split(ln, seconds, left)
    assert s.billed_seconds == ln.increment.billed(seconds)
    assert s.bundle_seconds + s.paid_seconds == s.billed_seconds
    assert 0 <= s.bundle_seconds <= max(left, 0)
    assert s.cost >= 0
    assert s.cost <= price(ln, seconds).cost
    if left <= 0:
        assert s.price == price(ln, seconds)  # no bundle: the plain price
    # more bundle left never costs more
    assert split(ln, seconds, max(left, 0) + 30).cost <= s.cost


@given(lines, st.integers(-5, 3600), st.decimals(min_value=0, max_value=50, places=4))
def test_a_reservation_grants_the_longest_affordable_call_and_no_more(
        ln: RateLine, left: int, amount: Decimal) -> None:
    d = affordable_with_bundle(ln, left, amount)
    if d >= UNLIMITED:
        assert ln.rate == 0
        return
    assert split(ln, d, left).cost <= amount or d == 0
    nxt = ln.increment.billed(d + 1)
    assert split(ln, nxt, left).cost > amount
    # the bundle alone always pays for what it holds
    if left > 0:
        assert d >= ln.increment.floor_grid(left)


def test_what_a_reservation_grants_on_a_60_60_line() -> None:
    ln = line()  # 0.60 per minute, 60/60
    assert affordable_with_bundle(ln, 90, Decimal(0)) == 60  # the bundle's whole minute
    assert affordable_with_bundle(ln, 90, Decimal("0.30")) == 120  # + 30 paid seconds
    assert affordable_with_bundle(ln, 90, Decimal("0.29")) == 60
    assert affordable_with_bundle(ln, 0, Decimal("1.20")) == 120  # no bundle: money only


def test_which_calls_a_bundle_covers() -> None:
    mobile = line(destination="Germany Mobile", prefix="4915")
    fixed = line(destination="Germany Fixed", prefix="4930")
    assert Bundle("all", 600).covers(fixed, "4930123")
    by_name = Bundle("mob", 600, destinations=frozenset({" germany MOBILE "}))
    assert by_name.covers(mobile, "4915112") and not by_name.covers(fixed, "4930123")
    by_prefix = Bundle("ber", 600, prefixes=("4930",))
    assert by_prefix.covers(fixed, "4930123") and not by_prefix.covers(mobile, "4915112")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": " ", "seconds": 60}, "needs a name"),
    ({"name": "b", "seconds": 0}, "seconds must be at least 1"),
    ({"name": "b", "seconds": 60, "period": "year"}, "period must be one of"),
    ({"name": "b", "seconds": 60, "anchor_day": 31}, "anchor_day must be 1-28"),
    ({"name": "b", "seconds": 60, "prefixes": ("49a",)}, "'49a' is not a digit prefix"),
])
def test_a_bad_bundle_is_refused_with_what_is_wrong(kwargs: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Bundle(**kwargs)  # type: ignore[arg-type]


def test_periods_roll_over_on_the_anchor_day() -> None:
    at = datetime(2026, 3, 14, 23, 59, tzinfo=UTC)
    assert period_bounds(at) == (datetime(2026, 3, 1, tzinfo=UTC),
                                 datetime(2026, 4, 1, tzinfo=UTC))
    assert period_bounds(at, anchor_day=15) == (datetime(2026, 2, 15, tzinfo=UTC),
                                                datetime(2026, 3, 15, tzinfo=UTC))
    assert period_bounds(datetime(2026, 12, 20, tzinfo=UTC), anchor_day=15) == (
        datetime(2026, 12, 15, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC))
    assert period_bounds(datetime(2026, 1, 3, tzinfo=UTC), anchor_day=5) == (
        datetime(2025, 12, 5, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    assert period_bounds(datetime(2026, 12, 31, 12, tzinfo=UTC), "day") == (
        datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(BundleError, match="aware"):
        period_bounds(datetime(2026, 1, 1))


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                    timezones=st.just(UTC)),
       st.integers(1, 28), st.sampled_from(["month", "day"]))
def test_every_instant_is_in_exactly_one_period(at: datetime, anchor: int, period: str
                                                ) -> None:
    start, end = period_bounds(at, period, anchor)
    assert start <= at < end
    assert period_bounds(end, period, anchor)[0] == end  # the next one starts there
