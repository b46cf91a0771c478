"""Invoices rendered to real PDFs and HTML from calls made through the charging core."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import sqlite3
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from pypdf import PdfReader

from sidecar.charging.model import AccountKind, Cdr, Disposition
from sidecar.invoices import (
    InvoiceError,
    Renderer,
    draft_invoice,
    issue_credit_note,
    issue_invoice,
    list_invoices,
    load_invoice,
    open_amount,
    reconcile,
    write_rendered,
)
from sidecar.store.accounts import verify_ledger
from tests.invoices.helpers import (
    AFTER,
    NUMBERS,
    PERIOD,
    SETTINGS,
    add_customer,
    call,
    cents,
    failed_call,
    fas,
    fas_credit,
    new_sim,
    pdf_text,
)

DAY = 86_400_000


def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _row(section: str, label: str) -> list[str]:
    """The cells of the line of a pdftotext -layout table that starts with ``label``."""
    for line in section.splitlines():
        if line.strip().startswith(label):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no line '{label}' in:\n{section}")


def test_pdf_lines_totals_and_detail_match_the_cdrs(tmp_path: Path) -> None:
    sim = new_sim()
    add_customer(sim)
    for ref, number, ms in [("g1", NUMBERS[0], 65_400), ("g2", NUMBERS[0], 1_200),
                            ("f1", NUMBERS[1], 31_000), ("f2", NUMBERS[1], 4_000),
                            ("u1", NUMBERS[2], 61_000), ("m1", NUMBERS[3], 5_000),
                            ("m2", NUMBERS[3], 125_000)]:
        call(sim, ref, number, ms)
    failed_call(sim, "busy", NUMBERS[0])
    sim.ledger.topup("ACME", Decimal("25"), sim.now, "payment 4711")

    issued = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    inv = issued.invoice
    write_rendered(Renderer().render(issued, "pdf"), tmp_path)
    text = pdf_text(tmp_path / f"{inv.number}.pdf")

    cdrs = [r for r in sim.cdrs("ACME") if r["disposition"] == "answered"]
    usage: dict[str, list[Decimal]] = defaultdict(list)
    for r in cdrs:
        usage[r["destination"]].append(Decimal(r["usage"]))
    summary = _section(text, "CALLS BY DESTINATION", "CONNECTION FEES")
    expected_lines = []
    for dest, amounts in usage.items():
        cells = _row(summary, dest)
        amount = cents(sum(amounts, Decimal(0)))
        assert cells[1] == str(len(amounts)) and cells[-1] == str(amount), cells
        expected_lines.append(amount)
    fees = _section(text, "CONNECTION FEES AND SURCHARGES", "Charges")
    france_fee = sum((Decimal(r["connection_fee"]) for r in cdrs), Decimal(0))
    assert _row(fees, "Connection fee")[-1] == str(cents(france_fee)) == "0.02"
    malta = [r for r in cdrs if r["destination"] == "Malta"]
    surcharge = sum((Decimal(r["surcharge"]) for r in malta), Decimal(0))
    uplift = sum((Decimal(r["minimum_uplift"]) for r in malta), Decimal(0))
    assert surcharge == Decimal("0.02") and uplift > 0  # the 5 s call: surcharge + minimum
    assert _row(fees, "Short-call surcharge")[-1] == "0.02"
    assert _row(fees, "Minimum charge uplift")[-1] == str(cents(uplift))
    expected_lines += [cents(france_fee), cents(surcharge), cents(uplift)]

    charges = sum(expected_lines)
    tax = cents(charges * Decimal("0.19"))
    totals = text.split("DAILY SPEND", 1)[0]
    assert _row(totals, "Charges")[-1] == str(charges)
    assert _row(totals, "VAT 19%")[-1] == str(tax)
    assert _row(totals, "Total USD")[-1] == str(charges + tax) == str(inv.total)

    # Parties, dates, number.
    for needle in ("Example Carrier Ltd", "1 Network Way", "GB999999973", "ACME Telecom GmbH",
                   "Hauptstr. 1", "10115 Berlin", "Tax no. DE123456789", inv.number,
                   "01 Nov 2026 – 30 Nov 2026", "Due date", "15 Dec 2026",
                   "7 calls billed of 8 attempts", "payment 4711", "IBAN GB33"):
        assert needle in text, needle
    # The statement: opening 0, the initial 1000 and the 25 top-up, charges, closing.
    statement = _section(text, "ACCOUNT STATEMENT", "Balances are kept")
    # (the statement's left column comes first on each line; top-ups are listed right)
    assert _row(statement, "Top-ups and payments")[1] == "1,025.00"
    assert _row(statement, "Closing balance")[1] == f"{cents(sim.balance('ACME')):,}"

    # Call detail: one row per answered call, with its exact cost.
    detail = text.split("CALL DETAIL", 1)[1]
    for r in cdrs:
        rows = [ln for ln in detail.splitlines() if r["callee"] in ln
                and ln.strip().startswith("2026-11")]
        matching = [ln for ln in rows if f"{r['billed_seconds']} s" in ln]
        assert matching, (r["call_ref"], r["billed_seconds"])
    assert sum(1 for ln in detail.splitlines() if ln.strip().startswith("2026-11-")) == 7
    assert "0.010450" not in detail and "0.01045" in detail  # 66 s x 0.0095/60, exact
    assert reconcile(sim.conn, inv).ok

    # Every page: the provider and document number in the footer, "Page N of M"; from the
    # second page on, a header naming the document and the customer.
    pages = [pg.extract_text() for pg in PdfReader(tmp_path / f"{inv.number}.pdf").pages]
    assert len(pages) >= 2
    for n, page in enumerate(pages, 1):
        assert f"Page {n} of {len(pages)}" in page
        assert f"Example Carrier Ltd · Tax no. GB999999973 · Invoice {inv.number}" in page
        header = f"Invoice {inv.number} · ACME Telecom GmbH · 01 Nov 2026 – 30 Nov 2026"
        assert (header in page) == (n > 1), (n, page[:300])


def test_hostile_names_are_escaped_in_html() -> None:
    sim = new_sim()
    add_customer(sim, name="<img src=x onerror=alert(1)>",
                 address="Main St 1\n</div><script>steal()</script>")
    hostile = "\"<script>alert('x')</script>\" <sip:evil@example.com>"
    call(sim, "h1", NUMBERS[0], 20_000, caller=hostile)
    call(sim, "h2", NUMBERS[1], 20_000, caller="=HYPERLINK(\"http://evil\")")
    issued = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    html = Renderer().html(issued)
    assert "<script" not in html.lower() and "<img" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;/div&gt;&lt;script&gt;steal()&lt;/script&gt;" in html
    # Self-contained: no external resource (the SVG namespace is a name, not a fetch).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<svg" in html and "<rect" in html  # the daily chart, inline
    # In the PDF the names are printed as the text they are.
    pdf = PdfReader(io.BytesIO(Renderer().render(issued, "pdf").pdf))
    text = "".join((pg.extract_text() or "") for pg in pdf.pages)
    assert "<img src=x onerror=alert(1)>" in text
    assert "alert('x')" in " ".join(text.split()).replace(" ", "")


def test_issued_invoice_is_frozen_and_rerenders_identically() -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "a", NUMBERS[0], 30_000)
    first = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    assert first.new and first.invoice.number == "INV-000001"
    r1 = Renderer().render(first, "both")

    # The world moves on: the customer is renamed, the tax rate and the provider change.
    sim.conn.execute("UPDATE accounts SET name = 'Renamed', tax_rate = '0.25' "
                     "WHERE code = 'ACME'")
    other = dataclasses.replace(SETTINGS, provider_name="Someone Else Ltd")
    again = issue_invoice(sim.conn, "ACME", PERIOD, other, now_ms=AFTER + 5 * DAY)
    assert not again.new and again.invoice.number == "INV-000001"
    r2 = Renderer().render(again, "both")
    assert r2.html == r1.html and r2.pdf == r1.pdf
    assert "Someone Else" not in r2.html and "ACME Telecom GmbH" in r2.html

    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        sim.conn.execute("UPDATE invoices SET total = '0'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        sim.conn.execute("DELETE FROM invoices")
    # Someone who drops the guard and edits the row is caught by the hash.
    sim.conn.execute("DROP TRIGGER invoices_immutable")
    sim.conn.execute("UPDATE invoices SET data = replace(data, 'ACME Telecom', 'ACME Telekom')")
    with pytest.raises(InvoiceError, match="altered"):
        load_invoice(sim.conn, "INV-000001")


def test_numbers_are_sequential_and_never_reused() -> None:
    sim = new_sim()
    for code in ("A", "B", "C"):
        add_customer(sim, code)
        call(sim, f"{code}-1", NUMBERS[2], 30_000, account=code)
    a = issue_invoice(sim.conn, "A", PERIOD, SETTINGS, now_ms=AFTER).invoice.number
    b = issue_invoice(sim.conn, "B", PERIOD, SETTINGS, now_ms=AFTER).invoice.number
    cn = issue_credit_note(sim.conn, a, "wrong rate", now_ms=AFTER + 1).invoice.number
    assert (a, b, cn) == ("INV-000001", "INV-000002", "CN-000001")
    sim.conn.execute("DELETE FROM invoice_sequences")  # a lost counter must not reuse numbers
    c = issue_invoice(sim.conn, "C", PERIOD, SETTINGS, now_ms=AFTER + 2).invoice.number
    assert c == "INV-000003"
    assert [r["number"] for r in list_invoices(sim.conn)] == [c, cn, b, a]


def test_open_period_is_refused_but_can_be_drafted(tmp_path: Path) -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "a", NUMBERS[1], 30_000)
    with pytest.raises(InvoiceError, match="has not ended"):
        issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=PERIOD.end_ms - 1)
    draft = draft_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=sim.now)
    paths = write_rendered(Renderer().render(draft, "pdf"), tmp_path)
    assert paths == [tmp_path / "draft-ACME-2026-11.pdf"]
    text = pdf_text(paths[0])
    assert "DRAFT INVOICE" in text and f"{draft.invoice.total}" in text
    assert list_invoices(sim.conn) == []  # a draft is not issued


def test_credit_notes_correct_an_invoice_to_exactly_zero(tmp_path: Path) -> None:
    sim = new_sim()
    add_customer(sim)
    for i in range(5):
        call(sim, f"c{i}", NUMBERS[2], 60_000 * (i + 1))
    inv = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER).invoice
    assert inv.net == Decimal("4.50")  # 15 minutes of UK Mobile at 0.30

    part = issue_credit_note(sim.conn, inv.number, "goodwill", now_ms=AFTER + 1,
                             amount=Decimal("1.33")).invoice
    assert (part.net, part.tax, part.refers_to) == (Decimal("-1.33"), Decimal("-0.25"),
                                                     inv.number)
    with pytest.raises(InvoiceError, match=r"at most 3\.17"):
        issue_credit_note(sim.conn, inv.number, "too much", now_ms=AFTER + 2,
                          amount=Decimal("3.18"))
    with pytest.raises(InvoiceError, match="more decimals"):
        issue_credit_note(sim.conn, inv.number, "sub-cent", now_ms=AFTER + 2,
                          amount=Decimal("0.001"))
    with pytest.raises(InvoiceError, match="still stands"):
        issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER + 2, reissue=True)
    rest = issue_credit_note(sim.conn, inv.number, "wrong rate deck applied",
                             now_ms=AFTER + 3)
    note = rest.invoice
    # 0.855 tax on the invoice; 0.25 + 0.60 = 0.85 would leave a cent: the last note
    # takes the rest of the tax, so the invoice and its notes sum to exactly zero.
    assert inv.total + part.total + note.total == 0
    assert inv.tax + part.tax + note.tax == 0
    assert open_amount(sim.conn, inv.number) == 0
    with pytest.raises(InvoiceError, match="nothing left"):
        issue_credit_note(sim.conn, inv.number, "again", now_ms=AFTER + 4)

    write_rendered(Renderer().render(rest, "pdf"), tmp_path)
    text = pdf_text(tmp_path / f"{note.number}.pdf")
    assert "CREDIT NOTE" in text and "wrong rate deck applied" in text
    assert f"Corrects invoice {inv.number}" in " ".join(text.split())
    assert str(note.total) in text

    # Fully credited: the period may be invoiced again, under a new number.
    new = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER + 5, reissue=True)
    assert new.new and new.invoice.number == "INV-000002" and new.invoice.total == inv.total
    assert issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS,
                         now_ms=AFTER + 6).invoice.number == "INV-000002"


def test_large_period_puts_the_call_detail_in_an_attached_csv(tmp_path: Path) -> None:
    sim = new_sim()
    add_customer(sim)
    for i in range(6):
        call(sim, f"x{i}", NUMBERS[i % 3], 10_000 + i * 1000, caller=f"+4930{i}")
    settings = dataclasses.replace(SETTINGS, detail_csv_over=5)
    issued = issue_invoice(sim.conn, "ACME", PERIOD, settings, now_ms=AFTER)
    paths = write_rendered(Renderer().render(issued, "both"), tmp_path)
    assert sorted(p.name for p in paths) == ["INV-000001-calls.csv", "INV-000001.html",
                                             "INV-000001.pdf"]
    text = pdf_text(tmp_path / "INV-000001.pdf")
    assert "attached file INV-000001-calls.csv" in " ".join(text.split())
    assert "+49300" not in text  # no call detail table in the PDF itself
    attached = PdfReader(tmp_path / "INV-000001.pdf").attachments["INV-000001-calls.csv"][0]
    assert attached == (tmp_path / "INV-000001-calls.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(attached.decode())))
    cdrs = {r["call_ref"]: r for r in sim.cdrs("ACME")}
    assert sorted(r["call_ref"] for r in rows) == sorted(cdrs)
    for r in rows:
        assert Decimal(r["charged"]) == Decimal(cdrs[r["call_ref"]]["charged"])
        assert r["caller"].startswith("'+4930")  # a leading + would be a formula


def test_fas_credits_and_goodwill_credits_are_shown_with_their_reason(tmp_path: Path) -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "ok", NUMBERS[2], 61_000)
    # The live path: media supervision finds ringback after the 200 OK; the call is rated,
    # charged, and its charge credited back (a ledger credit row naming the call).
    call(sim, "dead1", NUMBERS[2], 61_000, media=fas("ringback", "425 Hz tone 0.4-3.1 s"))
    call(sim, "dead2", NUMBERS[2], 61_000)
    # A CDR credited without a ledger row (as an older release recorded it).
    fas_credit(sim, "dead2", "0.60", "silence for 58 s after answer", ledger=False)
    sim.ledger.topup("ACME", Decimal("1.50"), sim.now, "service outage 2026-11-22",
                     kind="credit")
    issued = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    inv = issued.invoice
    # In time order: dead1's credit from its settlement, dead2's from its call's end.
    assert [(c.call_ref, c.amount, c.source) for c in inv.credits] == [
        ("dead1", Decimal("0.60"), "ledger"), ("dead2", Decimal("0.60"), "cdr"),
        ("", Decimal("1.50"), "ledger")]
    assert inv.charges == Decimal("1.80") and inv.credits_total == Decimal("2.70")
    assert inv.net == Decimal("-0.90") and inv.tax == Decimal("-0.17")
    assert inv.statement.credits == Decimal("2.10")  # what the ledger gave back
    write_rendered(Renderer().render(issued, "pdf"), tmp_path)
    text = " ".join(pdf_text(tmp_path / "INV-000001.pdf").split())
    assert "False answer supervision (ringback): 425 Hz tone 0.4-3.1 s -0.60" in text
    # (pdftotext puts a wrapped cell's last word after the row's other cells)
    assert "False answer supervision (silence): silence for 58 s after -0.60 answer" in text
    assert "service outage 2026-11-22 -1.50" in text
    assert "Credits -2.70" in text and "Total USD -1.07" in text
    # The call detail shows each credited call's credit next to its cost.
    detail = text.split("CALL DETAIL", 1)[1]
    assert detail.count("-0.6") == 2, detail
    rec = reconcile(sim.conn, inv)
    assert rec.ok and any("dead2" in n for n in rec.notes)
    assert rec.notes == [n for n in rec.notes if "dead2" in n]  # dead1 is in the ledger


def test_written_off_charges_are_shown_as_not_collected() -> None:
    sim = new_sim()
    add_customer(sim, balance="0.05")
    # The store settles a call costing more than the prepaid balance (as after a restart
    # lost the call's reservations): it takes what there is and writes off the rest.
    cdr = Cdr("lost-1", "lost-1", Disposition.ANSWERED, account="ACME", plan="retail",
              callee="447700900123", destination="UK Mobile", prefix="447",
              rate=Decimal("0.30"), increment="60/60", currency="USD", offered_ms=sim.now,
              answered_ms=sim.now + 1000, billable_ms=sim.now + 1000,
              ended_ms=sim.now + 121_000, duration_ms=120_000, billed_seconds=120,
              usage=Decimal("0.60"), cost=Decimal("0.60"))
    sim.ledger.settle(cdr, sim.now + 121_000)
    inv = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER).invoice
    lines = {ln.kind: ln.amount for ln in inv.lines}
    assert lines == {"usage": Decimal("0.60"), "written_off": Decimal("-0.55")}
    assert inv.net == Decimal("0.05") == inv.exact_charged
    html = Renderer().html(load_invoice(sim.conn, inv.number))
    assert "Not collected: prepaid credit ran out" in html
    assert reconcile(sim.conn, inv).ok
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_operator_templates_replace_the_shipped_ones(tmp_path: Path) -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "a", NUMBERS[2], 30_000)
    issued = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "invoice.css").write_text("body { color: #123456; }\n")
    (tpl / "credit_note.html.j2").write_text("CN {{ inv.number }} {{ inv.reason }}")
    html = Renderer(tpl).html(issued)
    assert "#123456" in html and "CALLS BY DESTINATION".lower() in html.lower()
    note = issue_credit_note(sim.conn, issued.invoice.number, "<b>sorry</b>", now_ms=AFTER)
    assert Renderer(tpl).html(note) == "CN CN-000001 &lt;b&gt;sorry&lt;/b&gt;"
    with pytest.raises(InvoiceError, match="template directory"):
        Renderer(tmp_path / "missing")


def test_postpaid_invoice_has_no_prepaid_notice() -> None:
    sim = new_sim()
    add_customer(sim, kind=AccountKind.POSTPAID, credit_limit=Decimal("100"), balance="0")
    call(sim, "a", NUMBERS[0], 30_000)
    inv = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    html = Renderer().html(inv)
    assert "Prepaid account" not in html
    assert inv.invoice.statement.closing == -inv.invoice.exact_charged


def test_html_has_a_daily_spend_chart_with_a_bar_per_day() -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "d1", NUMBERS[2], 60_000)  # 21 Nov: 0.30
    sim.advance_to(sim.now + 2 * DAY)
    call(sim, "d2", NUMBERS[2], 300_000)  # 23 Nov: 1.50
    html = Renderer().html(issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER))
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    bars = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"[^>]*>'
                      r"<title>([^<]+)</title>", svg)
    assert len(bars) == 30  # one per day of November
    heights = {title.split(":")[0]: float(h) for h, title in bars}
    assert heights["2026-11-23"] == max(heights.values()) > 0
    assert heights["2026-11-23"] == pytest.approx(5 * heights["2026-11-21"], rel=0.02)
    assert heights["2026-11-22"] == 0
    assert "2026-11-23: 1.50 USD (1 calls)" in svg
