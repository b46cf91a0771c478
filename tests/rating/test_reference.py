"""Acceptance tests: every published figure in BILLING-REFERENCE.md."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from sidecar.money import round_currency
from sidecar.numbers import ORIGIN_EEA, ORIGIN_NON_EEA, origin_class
from sidecar.rating import Increment, RateLine, RateTable, parse_deck_text, price

EFF = datetime(2026, 6, 1, tzinfo=UTC)
AT = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())


def line(rate: str, inc: str, fee: str = "0", prefix: str = "1", origin: str = "") -> RateLine:
    return RateLine("Test", prefix, Decimal(rate), Increment.parse(inc), EFF, "USD",
                    connection_fee=Decimal(fee), origin=origin)


@pytest.mark.parametrize(
    ("inc", "seven", "sixty_one"),
    [("1/1", 7, 61), ("6/6", 12, 66), ("30/6", 30, 66), ("60/60", 60, 120)],
)
def test_increment_table(inc: str, seven: int, sixty_one: int) -> None:
    i = Increment.parse(inc)
    assert i.billed(7) == seven
    assert i.billed(61) == sixty_one
    assert i.billed(0) == 0  # unanswered


@pytest.mark.parametrize(
    ("inc", "seconds", "billed"),
    [("6/6", 5, 6), ("6/6", 8, 12), ("30/6", 10, 30), ("30/6", 31, 36), ("30/6", 45, 48)],
)
def test_published_cases(inc: str, seconds: int, billed: int) -> None:
    assert Increment.parse(inc).billed(seconds) == billed


def test_30_6_at_five_cents() -> None:
    p = price(line("0.05", "30/6"), 45)
    assert p.billed_seconds == 48
    assert p.cost == Decimal("0.04")


def test_60_60_short_calls_cost_a_full_minute() -> None:
    ln = line("0.01", "60/60")
    assert price(ln, 5).cost == Decimal("0.01")
    assert price(ln, 50).cost == Decimal("0.01")
    assert price(line("0.01", "6/6"), 5).cost == Decimal("0.001")


def test_worked_example_100k_calls() -> None:
    one = price(line("0.01", "1/1"), 28).cost
    sixty = price(line("0.01", "60/60"), 28).cost
    total_1_1 = sum((one for _ in range(100_000)), Decimal(0))
    total_60_60 = sum((sixty for _ in range(100_000)), Decimal(0))
    assert round_currency(total_1_1, "USD") == Decimal("466.67")
    assert round_currency(total_60_60, "USD") == Decimal("1000.00")
    assert (total_60_60 / total_1_1).quantize(Decimal("0.1")) == Decimal("2.1")


def test_connection_fee_is_added_once() -> None:
    p = price(line("0.06", "1/1", fee="0.015"), 30)
    assert p.cost == Decimal("0.03") + Decimal("0.015")
    assert p.connection_fee == Decimal("0.015")


CARRIER_DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0095;1/1;2026-06-01
Germany Mobile T-Mobile;49151;0.0210;1/1;2026-06-01
Germany Mobile Vodafone;49152;0.0205;1/1;2026-06-01
"""


def test_carrier_deck_and_longest_prefix() -> None:
    parsed = parse_deck_text(CARRIER_DECK, "carrier.csv")
    assert parsed.currency == "USD"
    table = RateTable(parsed.lines, parsed.currency)
    assert table.rate("4915112345678", 61_000, AT).line.destination == "Germany Mobile T-Mobile"
    assert table.rate("+4915212345678", 61_000, AT).line.prefix == "49152"
    r = table.rate("00493012345", 61_000, AT)
    assert r.line.destination == "Germany Fixed"
    assert r.cost == Decimal("0.00965833")  # 0.0095 * 61 / 60, half-up at 8 places


MALTA = """destination,code,rate_eur,increment,effective_from,origin
Malta,356,0.30,60/60,2026-06-01,EEA
Malta,356,0.80,60/60,2026-06-01,NON-EEA
"""


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ("+390612345678", "0.30"),  # Italy: EEA
        ("0039061234567", "0.30"),
        ("+12125551234", "0.80"),  # USA: outside the EEA
        (None, "0.80"),  # missing CLI
        ("", "0.80"),
        ("1234", "0.80"),  # under 5 digits
        ("+3906123456789012", "0.80"),  # over 15 digits
        ("+2891234567", "0.80"),  # no valid country code (289 unassigned)
        ("anonymous", "0.80"),
    ],
)
def test_malta_origin_example(cli: str | None, expected: str) -> None:
    parsed = parse_deck_text(MALTA, "malta.csv")
    table = RateTable(parsed.lines, parsed.currency)
    r = table.rate("35621234567", 60_000, AT, cli)
    assert r.line.rate == Decimal(expected)
    assert r.cost == Decimal(expected)


def test_origin_classes() -> None:
    assert origin_class("+390612345678") == ORIGIN_EEA
    assert origin_class("+4712345678") == ORIGIN_EEA  # Norway is EEA, not EU
    assert origin_class("+41441234567") == ORIGIN_NON_EEA  # Switzerland is not
    assert origin_class("+12125551234") == ORIGIN_NON_EEA
