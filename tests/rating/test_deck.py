"""Deck parsing: the accepted formats and every way a deck is refused."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest

from sidecar.rating import DeckError, parse_deck_text
from sidecar.rating.deck import write_deck

HEADER = "destination;code;rate_usd;increment;effective_from\n"


def refused(text: str) -> DeckError:
    with pytest.raises(DeckError) as info:
        parse_deck_text(text, "deck.csv")
    return info.value


def test_comma_separated_with_optional_columns() -> None:
    deck = parse_deck_text(
        "destination,code,rate,increment,effective_from,connection_fee,minimum_charge,"
        "short_call_seconds,short_call_surcharge,currency\n"
        "UK Fixed,441,0.01,60/60,2026-06-01,0.02,0.05,6,0.003,GBP\n", "uk.csv")
    (ln,) = deck.lines
    assert deck.currency == "GBP"
    assert (ln.connection_fee, ln.minimum_charge) == (Decimal("0.02"), Decimal("0.05"))
    assert (ln.short_call_seconds, ln.short_call_surcharge) == (6, Decimal("0.003"))


@pytest.mark.parametrize(
    ("row", "column", "needle"),
    [
        ("Germany;4930;abc;1/1;2026-06-01", 3, "not a decimal number"),
        ("Germany;4930;0,0095;1/1;2026-06-01", 3, "not a decimal number"),
        ("Germany;4930;0.0095;1/1", 0, "4 fields where the header has 5"),
        ("Germany;4930;0.0095;0/6;2026-06-01", 4, "at least 1 s"),
        ("Germany;4930;0.0095;6/;2026-06-01", 4, "not an increment"),
        ("Germany;4930;0.0095;6;2026-06-01", 4, "not an increment"),
        ("Germany;49x30;0.0095;1/1;2026-06-01", 2, "not a prefix"),
        ("Germany;4930;0.0095;1/1;2026-13-01", 5, "not a date"),
        ("Germany;4930;-0.01;1/1;2026-06-01", 3, "negative"),
        ("Germany;4930;1e-3;1/1;2026-06-01", 3, "not a decimal number"),
        (";4930;0.0095;1/1;2026-06-01", 1, "empty destination"),
    ],
)
def test_bad_row_is_located(row: str, column: int, needle: str) -> None:
    err = refused(HEADER + "Good;4930;0.01;1/1;2026-06-01\n" + row + "\n")
    (problem,) = err.problems
    assert problem.source == "deck.csv"
    assert problem.line == 3
    assert problem.column == column
    assert needle in problem.message
    assert f"deck.csv:3{':' + str(column) if column else ''}" in str(err)


def test_missing_column() -> None:
    err = refused("destination;code;rate_usd;effective_from\nX;1;0.1;2026-06-01\n")
    assert "missing column 'increment'" in str(err)


def test_unknown_currency_in_header_and_column() -> None:
    assert "unknown currency 'xyz'" in str(refused(
        "destination;code;rate_xyz;increment;effective_from\nX;1;0.1;1/1;2026-06-01\n"))
    err = refused("destination;code;rate;increment;effective_from;currency\n"
                  "X;1;0.1;1/1;2026-06-01;EUR\nY;2;0.1;1/1;2026-06-01;ZZZ\n")
    assert err.problems[0].line == 3 and "unknown currency 'ZZZ'" in err.problems[0].message


def test_duplicate_prefix_same_date_names_both_lines() -> None:
    err = refused(HEADER + "A;4930;0.01;1/1;2026-06-01\nB;4930;0.02;1/1;2026-06-01\n")
    assert err.problems[0].line == 3
    assert "already on line 2" in err.problems[0].message


def test_same_prefix_other_dates_or_origins_is_fine() -> None:
    deck = parse_deck_text(
        "destination;code;rate_eur;increment;effective_from;origin\n"
        "M;356;0.3;60/60;2026-06-01;EEA\nM;356;0.8;60/60;2026-06-01;NON-EEA\n"
        "M;356;0.2;60/60;2026-07-01;EEA\n")
    assert len(deck.lines) == 3


def test_every_problem_is_reported_at_once() -> None:
    err = refused(HEADER + "A;4930;x;1/1;2026-06-01\nB;4931;0.1;0/1;2026-06-01\n")
    assert [p.line for p in err.problems] == [2, 3]


def test_unknown_column_and_empty_decks() -> None:
    assert "unknown column 'conection_fee'" in str(refused(
        "destination;code;rate_usd;increment;effective_from;conection_fee\n"))
    assert "empty" in str(refused(""))
    assert "no rate lines" in str(refused(HEADER))


def test_no_currency_anywhere() -> None:
    assert "does not name its currency" in str(refused(
        "destination;code;rate;increment;effective_from\nX;1;0.1;1/1;2026-06-01\n"))


def test_write_then_parse_round_trip() -> None:
    text = ("destination;code;rate_eur;increment;effective_from;connection_fee;origin\n"
            "Malta;356;0.30;60/60;2026-06-01;0.01;EEA\nMalta;356;0.80;60/60;2026-06-01;;NON-EEA\n")
    deck = parse_deck_text(text)
    out = io.StringIO()
    write_deck(deck.lines, out, deck.currency)
    again = parse_deck_text(out.getvalue())
    assert again.lines == deck.lines
