"""Rating benchmark: deck import, the rating function, CSV batch, and the SQL baseline.

    python benchmarks/bench_rating.py [--prefixes 100000] [--calls 1000000]

Prints: deck import time; calls/s of RateTable.rate on one core; end-to-end CSV-in /
CSV-out throughput of ``sidecar rate --calls``'s code path; and, on the same deck in
the same run, the common SQL approach (``? LIKE prefix || '%' ORDER BY length(prefix)
DESC LIMIT 1``) for comparison.
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sidecar.cli.rate import rate_batch
from sidecar.rating import NoRate
from sidecar.store.db import connect
from sidecar.store.decks import import_deck, load_table

COUNTRY = ["1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43",
           "44", "45", "46", "47", "48", "49", "52", "55", "61", "81", "86", "91", "234", "351",
           "353", "356", "358", "380", "420", "971"]


def make_deck(path: Path, n: int, rng: random.Random) -> list[str]:
    prefixes: set[str] = set(COUNTRY)
    while len(prefixes) < n:
        cc = rng.choice(COUNTRY)
        prefixes.add(cc + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6))))
    ordered = sorted(prefixes)
    with path.open("w") as fh:
        fh.write("destination;code;rate_usd;increment;effective_from\n")
        for i, p in enumerate(ordered):
            inc = ("1/1", "6/6", "30/6", "60/60")[i % 4]
            fh.write(f"Breakout {i};{p};0.{rng.randint(1, 9999):04d};{inc};2026-06-01\n")
    return ordered


def make_numbers(prefixes: list[str], n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        p = rng.choice(prefixes)
        out.append((p + "".join(rng.choice("0123456789") for _ in range(12)))[:15])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--sql-calls", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(42)
    at = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        deck = d / "deck.csv"
        prefixes = make_deck(deck, args.prefixes, rng)
        conn = connect(d / "bench.db")
        t0 = time.perf_counter()
        import_deck(conn, "bench", deck)
        t_import = time.perf_counter() - t0
        print(f"deck import: {args.prefixes:,} prefixes in {t_import:.2f} s "
              f"({args.prefixes / t_import:,.0f} lines/s; target < 10 s)")

        t0 = time.perf_counter()
        table = load_table(conn, "bench")
        print(f"rate table load from SQLite: {time.perf_counter() - t0:.2f} s")

        numbers = make_numbers(prefixes, args.calls, rng)
        durations = [rng.randint(0, 600_000) for _ in range(args.calls)]
        rate = table.rate
        t0 = time.perf_counter()
        for num, ms in zip(numbers, durations, strict=True):
            rate(num, ms, at)
        t_rate = time.perf_counter() - t0
        engine_cps = args.calls / t_rate
        print(f"rating function: {args.calls:,} calls in {t_rate:.2f} s = {engine_cps:,.0f} "
              f"calls/s on one core (target >= 100,000)")

        calls_csv = d / "calls.csv"
        with calls_csv.open("w") as fh:
            fh.write("number,duration\n")
            for num, ms in zip(numbers, durations, strict=True):
                fh.write(f"{num},{ms / 1000}\n")
        sink = io.StringIO()
        t0 = time.perf_counter()
        rated, failed = rate_batch(table, calls_csv, sink, at)
        t_batch = time.perf_counter() - t0
        print(f"CSV in -> CSV out: {rated + failed:,} calls in {t_batch:.2f} s = "
              f"{(rated + failed) / t_batch:,.0f} calls/s end to end")

        sql = ("SELECT destination, prefix, rate, increment FROM rates WHERE plan = ? AND "
               "? LIKE prefix || '%' ORDER BY length(prefix) DESC LIMIT 1")
        sample = numbers[: args.sql_calls]
        t0 = time.perf_counter()
        for num in sample:
            conn.execute(sql, ("bench", num)).fetchone()
        t_sql = time.perf_counter() - t0
        sql_cps = len(sample) / t_sql
        print(f"SQL LIKE prefix baseline: {len(sample):,} look-ups in {t_sql:.2f} s = "
              f"{sql_cps:,.0f} calls/s (look-up only, no pricing)")
        print(f"rating engine vs SQL baseline: {engine_cps / sql_cps:,.0f}x faster")
        # sanity: both choose the same prefix
        for num in sample[:50]:
            row = conn.execute(sql, ("bench", num)).fetchone()
            try:
                assert rate(num, 1000, at).line.prefix == row[1]
            except NoRate:
                assert row is None


if __name__ == "__main__":
    main()
