"""Plans, deck versions, effective dates and the notice period, in SQLite."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.rating import DeckError
from sidecar.store.decks import PlanNotFound, deck_versions, import_deck, load_table
from tests.conftest import write

H = "destination;code;rate_usd;increment;effective_from\n"
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_import_creates_a_versioned_plan(conn: sqlite3.Connection, tmp_path: Path) -> None:
    f = write(tmp_path / "v1.csv", H + "DE Fixed;4930;0.0095;1/1;2026-06-01\n")
    res = import_deck(conn, "wholesale", f, as_of=NOW)
    assert (res.version, res.lines, res.currency) == (1, 1, "USD")
    table = load_table(conn, "wholesale")
    assert table.rate("4930123", 61_000, ts("2026-11-21")).line.rate == Decimal("0.0095")


def test_bad_deck_changes_nothing(conn: sqlite3.Connection, tmp_path: Path) -> None:
    import_deck(conn, "p", write(tmp_path / "ok.csv", H + "A;1;0.1;1/1;2026-06-01\n"), as_of=NOW)
    before = [count(conn, t) for t in ("plans", "deck_versions", "rates")]
    bad = write(tmp_path / "bad.csv", H + "B;2;0.1;1/1;2026-06-01\nC;3;zz;1/1;2026-06-01\n")
    with pytest.raises(DeckError, match=r"bad.csv:3:3 \(rate_usd\)"):
        import_deck(conn, "p", bad, as_of=NOW)
    with pytest.raises(DeckError):
        import_deck(conn, "new-plan", bad, as_of=NOW)
    assert [count(conn, t) for t in ("plans", "deck_versions", "rates")] == before


def test_calls_are_rated_by_the_line_in_effect_at_answer(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    # v2 schedules an increase with enough notice and a cheaper breakout at once.
    import_deck(conn, "p", write(tmp_path / "v2.csv", H +
                                 "DE;49;0.03;1/1;2026-12-15\nDE Berlin;4930;0.01;1/1;2026-11-21\n"),
                as_of=NOW)
    t = load_table(conn, "p")
    assert t.rate("4989123", 60_000, ts("2026-12-01")).line.rate == Decimal("0.02")
    assert t.rate("4989123", 60_000, ts("2026-12-15")).line.rate == Decimal("0.03")
    assert t.rate("4930123", 60_000, ts("2026-11-22")).line.destination == "DE Berlin"
    # Before the Berlin line existed, Berlin numbers took the country line.
    assert t.rate("4930123", 60_000, ts("2026-11-01")).line.destination == "DE"
    assert [v["version"] for v in deck_versions(conn, "p")] == [1, 2]


def test_increase_without_notice_is_refused_decrease_is_not(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    soon = write(tmp_path / "up.csv", H + "DE;49;0.025;1/1;2026-11-25\n")
    with pytest.raises(DeckError, match=r"up.csv:2 \(effective_from\): increase for 49 .*"
                                        r"7-day notice .*2026-11-28"):
        import_deck(conn, "p", soon, as_of=NOW)
    assert count(conn, "deck_versions") == 1
    down = write(tmp_path / "down.csv", H + "DE;49;0.015;1/1;2026-11-21\n")
    res = import_deck(conn, "p", down, as_of=NOW)
    assert res.decreases == 1
    assert load_table(conn, "p").rate("491", 60_000, ts("2026-11-21T13:00:00")).line.rate == \
        Decimal("0.015")


def test_a_new_longer_prefix_dearer_than_its_parent_is_an_increase(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    with pytest.raises(DeckError, match="increase for 4915"):
        import_deck(conn, "p", write(tmp_path / "v2.csv", H + "DE Mob;4915;0.2;1/1;2026-11-22\n"),
                    as_of=NOW)


def test_currency_must_match_the_plan(conn: sqlite3.Connection, tmp_path: Path) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    eur = write(tmp_path / "eur.csv",
                "destination;code;rate_eur;increment;effective_from\nDE;49;0.01;1/1;2026-06-01\n")
    with pytest.raises(DeckError, match="deck is in EUR but plan 'p' is in USD"):
        import_deck(conn, "p", eur, as_of=NOW)


def test_unknown_plan(conn: sqlite3.Connection) -> None:
    with pytest.raises(PlanNotFound, match="rate plan 'nope' not found"):
        load_table(conn, "nope")
