"""Invoice benchmark: one account with 100,000 CDRs in a month.

Prints how long it takes to build and issue the invoice, render the HTML, render the PDF
(the summary; the call detail goes to a CSV attached to the PDF), and reconcile it.
Target: HTML + PDF under 10 s together.

    python benchmarks/bench_invoice.py [--calls 100000] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sidecar.charging.model import AccountKind
from sidecar.invoices import InvoiceSettings, Period, Renderer, issue_invoice, reconcile
from sidecar.invoices.render import write_rendered
from sidecar.money import to_text
from sidecar.rating import price
from sidecar.store.accounts import SqliteLedger, add_account
from sidecar.store.db import connect, transaction
from sidecar.store.decks import import_deck, load_table

DESTINATIONS = [
    ("Germany Fixed", "4930", "0.0095", "1/1", "0"),
    ("Germany Mobile", "49151", "0.0210", "1/1", "0"),
    ("France", "33", "0.0120", "30/6", "0.01"),
    ("UK Mobile", "447", "0.0300", "60/60", "0"),
    ("USA", "1", "0.0050", "6/6", "0"),
    ("Malta", "356", "0.3000", "60/60", "0.05"),
    ("Spain", "34", "0.0110", "1/1", "0"),
    ("Italy Mobile", "393", "0.0400", "30/30", "0.02"),
]
PERIOD = Period(2026, 11)


def populate(conn_path: Path, calls: int, seed: int = 7) -> None:
    """A plan, one account and ``calls`` priced CDRs with their ledger charges, inserted in
    bulk (the charging core is measured by bench_charging.py)."""
    conn = connect(conn_path)
    deck = conn_path.parent / "deck.csv"
    deck.write_text("destination;code;rate_usd;increment;effective_from;connection_fee\n" +
                    "".join(f"{d};{c};{r};{i};2026-01-01;{f}\n"
                            for d, c, r, i, f in DESTINATIONS))
    import_deck(conn, "bench", deck, as_of=datetime(2026, 1, 1, tzinfo=UTC))
    table = load_table(conn, "bench")
    start = PERIOD.start_ms
    add_account(conn, "BIG", "bench", AccountKind.POSTPAID, now_ms=start - 1000,
                name="Big Contact Centre Ltd", address="1 Queue Street\nDublin\nIreland",
                tax_number="IE1234567X", tax_rate=Decimal("0.23"),
                credit_limit=Decimal("1000000"))
    SqliteLedger(conn).topup("BIG", Decimal("5000"), start - 500, "opening payment")
    rnd = random.Random(seed)
    span = PERIOD.end_ms - start - 4 * 3_600_000
    cdrs, ledger = [], []
    total = Decimal(0)
    numbers = [f"{c}{rnd.randrange(10**7, 10**8)}" for _d, c, *_ in DESTINATIONS]
    for i in range(calls):
        number = rnd.choice(numbers)
        line = table.lookup(number, start // 1000)
        assert line is not None
        offered = start + rnd.randrange(span)
        answered = offered + rnd.randrange(800, 9000)
        duration = int(rnd.expovariate(1 / 110_000)) + 1
        ended = answered + duration
        p = price(line, table.rounding_seconds(duration))
        total += p.cost
        ref = f"bench-{i}"
        cdrs.append((ref, ref, "BIG", "bench", f"+35312{i:06d}", number, line.destination,
                     line.prefix, "", to_text(line.rate), str(line.increment), "USD", offered,
                     answered, answered, ended, duration, p.billed_seconds, to_text(p.usage),
                     to_text(p.connection_fee), to_text(p.surcharge),
                     to_text(p.minimum_uplift), to_text(p.cost), to_text(p.cost), "answered",
                     200, f"carrier-{i % 3}"))
        ledger.append((ended, "BIG", "charge", to_text(-p.cost), ref))
    with transaction(conn):
        conn.executemany(
            "INSERT INTO cdrs (call_ref, call_id, account, plan, caller, callee, destination, "
            "prefix, origin, rate, increment, currency, offered_ms, answered_ms, billable_ms, "
            "ended_ms, duration_ms, billed_seconds, usage, connection_fee, surcharge, "
            "minimum_uplift, cost, charged, disposition, sip_code, route) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", cdrs)
        conn.executemany("INSERT INTO ledger (ts_ms, account, kind, amount, call_ref) "
                         "VALUES (?,?,?,?,?)", ledger)
        balance = Decimal(conn.execute("SELECT balance FROM accounts WHERE code = 'BIG'"
                                       ).fetchone()[0])
        conn.execute("UPDATE accounts SET balance = ? WHERE code = 'BIG'",
                     (to_text(balance - total),))
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=None, help="Keep the files in this directory.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        t = time.perf_counter()
        populate(db, args.calls)
        print(f"setup: {args.calls:,} CDRs inserted in {time.perf_counter() - t:.2f} s")
        conn = connect(db)
        settings = InvoiceSettings(provider_name="Example Carrier Ltd",
                                   provider_address="1 Network Way\nLondon", due_days=14,
                                   detail_csv_over=500, tax_label="VAT")
        t = time.perf_counter()
        issued = issue_invoice(conn, "BIG", PERIOD, settings, now_ms=PERIOD.end_ms + 60_000)
        t_issue = time.perf_counter() - t
        renderer = Renderer()
        t = time.perf_counter()
        html = renderer.render(issued, "html")
        t_html = time.perf_counter() - t
        t = time.perf_counter()
        pdf = renderer.render(issued, "pdf")
        t_pdf = time.perf_counter() - t
        t = time.perf_counter()
        both = renderer.render(issued, "both")  # what `sidecar invoice --format both` does
        t_both = time.perf_counter() - t
        assert both.pdf and both.html and both.csv
        t = time.perf_counter()
        rec = reconcile(conn, issued.invoice)
        t_rec = time.perf_counter() - t
        inv = issued.invoice
        print(f"invoice {inv.number}: {inv.calls:,} calls, {len(inv.lines)} lines, total "
              f"{inv.total} {inv.currency}; reconciled: {rec.ok}")
        print(f"build + issue (frozen, numbered): {t_issue:.2f} s")
        print(f"HTML render, with the detail CSV: {t_html:.2f} s (HTML {len(html.html) // 1024} "
              f"KiB, CSV {len(html.csv) // 1024} KiB)")
        print(f"PDF render, summary + detail CSV attached: {t_pdf:.2f} s "
              f"({len(pdf.pdf) // 1024} KiB)")
        print(f"HTML + PDF rendered separately: {t_html + t_pdf:.2f} s (target < 10 s)")
        print(f"HTML + PDF + CSV in one pass (--format both): {t_both:.2f} s; with issuing "
              f"{t_issue + t_both:.2f} s")
        print(f"reconcile against {rec.cdrs:,} CDRs and the ledger: {t_rec:.2f} s")
        if args.out:
            html.pdf = pdf.pdf
            for p in write_rendered(html, args.out):
                print(f"  {p}")


if __name__ == "__main__":
    main()
