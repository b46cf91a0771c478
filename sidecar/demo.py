"""The demo: a sample deck, a few calls rated end to end through the CLI's code paths."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from .rating import NoRate
from .store.db import connect
from .store.decks import import_deck, load_table


def main() -> None:
    """Import the sample deck into a fresh database and rate a few calls."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "demo.db"
        conn = connect(db)
        deck = resources.files("sidecar") / "data" / "sample-deck.csv"
        with resources.as_file(deck) as path:
            res = import_deck(conn, "demo", path)
        print(f"imported {res.lines} rate lines into plan 'demo' ({res.currency})")
        table = load_table(conn, "demo")
        at = int(datetime.now(UTC).timestamp())
        for number, secs in [("+4930123456", 61), ("+4915112345678", 7), ("0033123456789", 45),
                             ("+447700900123", 31), ("+8613800000000", 60)]:
            try:
                r = table.rate(number, secs * 1000, at)
            except NoRate as exc:
                print(f"{number:>16} {secs:>4}s  {exc}")
                continue
            ln = r.line
            print(f"{number:>16} {secs:>4}s  {ln.destination:<24} {ln.prefix:<6} "
                  f"{ln.increment!s:>6} billed {r.billed_seconds:>4}s  {r.cost} {ln.currency}")


if __name__ == "__main__":
    main()
