"""Test data for invoices: real calls through the charging core (tests/charging/harness.py)."""

from __future__ import annotations

import random
import shutil
import subprocess
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from sidecar.charging.model import MediaOutcome
from sidecar.invoices import InvoiceSettings, Period
from sidecar.money import to_text
from sidecar.store.db import transaction
from tests.charging.harness import Sim

# Every kind of charge: per-second, 30/6 with a connection fee, 60/60, and a breakout with
# a short-call surcharge and a minimum charge.
DECK = (
    "destination;code;rate_usd;increment;effective_from;connection_fee;minimum_charge;"
    "short_call_seconds;short_call_surcharge\n"
    """Germany Fixed;4930;0.0095;1/1;2026-06-01;0;0;0;0
France;33;0.12;30/6;2026-06-01;0.01;0;0;0
UK Mobile;447;0.30;60/60;2026-06-01;0;0;0;0
Malta;356;0.2575;1/1;2026-06-01;0;0.05;10;0.02
""")
NUMBERS = ["+493012345678", "+33123456789", "+447700900123", "+35621234567"]
PERIOD = Period(2026, 11)
AFTER = PERIOD.end_ms + 3_600_000  # an hour after the period: it may be invoiced
SETTINGS = InvoiceSettings(
    provider_name="Example Carrier Ltd", provider_address="1 Network Way\nLondon EC1A 1AA",
    provider_tax_number="GB999999973", provider_email="billing@example.net",
    payment_details="IBAN GB33 BUKB 2020 1555 5555 55", tax_label="VAT", due_days=14,
    detail_csv_over=500)


def new_sim(db: Path | str | None = None) -> Sim:
    """A charging core on a real SQLite store with the invoice test deck."""
    return Sim(db, deck=DECK)


def add_customer(sim: Sim, code: str = "ACME", balance: str = "1000", **kw: Any) -> None:
    """A prepaid customer with invoice details (VAT 19%)."""
    details: dict[str, Any] = {
        "name": "ACME Telecom GmbH", "address": "Hauptstr. 1\n10115 Berlin\nGermany",
        "tax_number": "DE123456789", "tax_rate": Decimal("0.19")}
    sim.account(code, balance, **{**details, **kw})


def call(sim: Sim, ref: str, number: str, seconds_ms: int, *, account: str = "ACME",
         caller: str = "+4915112345678", pdd_ms: int = 2000, ringing_ms: int | None = None,
         route: str = "", gap_ms: int = 60_000, media: MediaOutcome | None = None) -> None:
    """One answered call through the core: offer, ringing after ``ringing_ms`` (if given),
    answer ``pdd_ms`` after the offer, talk, BYE (with media supervision's ``media``)."""
    d = sim.charger.authorize(ref, number=number, now_ms=sim.now, account_code=account,
                              caller=caller)
    assert d.allow, d.reason
    if route:
        sim.charger.sessions[ref].meta["route"] = route
    offered = sim.now
    if ringing_ms is not None:
        sim.advance_to(offered + ringing_ms)
        sim.charger.ringing(ref, sim.now)
    sim.advance_to(offered + pdd_ms)
    sim.answer(ref)
    sim.advance_to(sim.now + seconds_ms)
    sim.end(ref, ended_by="caller", media=media)
    sim.advance_to(sim.now + gap_ms)


def failed_call(sim: Sim, ref: str, number: str, *, account: str = "ACME", route: str = "",
                code: int = 486, ringing_ms: int | None = None) -> None:
    """An unanswered attempt (busy), that rang after ``ringing_ms`` if given."""
    d = sim.charger.authorize(ref, number=number, now_ms=sim.now, account_code=account)
    assert d.allow, d.reason
    if route:
        sim.charger.sessions[ref].meta["route"] = route
    if ringing_ms is not None:
        sim.advance_to(sim.now + ringing_ms)
        sim.charger.ringing(ref, sim.now)
    sim.advance_to(sim.now + 3000)
    sim.charger.fail(ref, sim.now, code)
    sim.advance_to(sim.now + 10_000)


def fas(verdict: str, reasons: str) -> MediaOutcome:
    """Media supervision's finding of a false answer: billed from the answer, then the
    charge credited back (how the live sidecar records a FAS credit)."""
    return MediaOutcome(billable_ms=0, verdict=verdict, reasons=reasons, credit=True)


def random_calls(sim: Sim, n: int, seed: int = 1, account: str = "ACME") -> None:
    """``n`` answered calls of random length to random destinations."""
    rnd = random.Random(seed)
    for i in range(n):
        length = rnd.choice([rnd.randint(200, 9_000), rnd.randint(9_000, 400_000)])
        call(sim, f"{account}-{i}", rnd.choice(NUMBERS), length, account=account,
             gap_ms=rnd.randint(1_000, 30_000))


def fas_credit(sim: Sim, ref: str, amount: str, reasons: str, *, ledger: bool = True,
               at_ms: int | None = None) -> None:
    """Credit a call back as false answer supervision: the CDR's ``credited`` and FAS
    fields, and (``ledger``) a ``credit`` ledger row with the call reference.

    A hand-made credit (the live path is :func:`fas` passed to :func:`call`): for a CDR
    credited without a ledger row, and for a credit given after the call settled."""
    conn = sim.conn
    with transaction(conn):
        row = conn.execute("SELECT account FROM cdrs WHERE call_ref = ?", (ref,)).fetchone()
        conn.execute("UPDATE cdrs SET credited = ?, fas_verdict = 'silence', fas_reasons = ? "
                     "WHERE call_ref = ?", (amount, reasons, ref))
        if ledger:
            conn.execute("INSERT INTO ledger (ts_ms, account, kind, amount, call_ref, note) "
                         "VALUES (?, ?, 'credit', ?, ?, '')",
                         (at_ms or sim.now, row[0], amount, ref))
            bal = Decimal(conn.execute("SELECT balance FROM accounts WHERE code = ?",
                                       (row[0],)).fetchone()[0])
            conn.execute("UPDATE accounts SET balance = ? WHERE code = ?",
                         (to_text(bal + Decimal(amount)), row[0]))


def cents(value: Decimal) -> Decimal:
    """Round half-up to the cent (the test's own copy of the rule it checks)."""
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def pdf_text(path: Path) -> str:
    """The text of a PDF as pdftotext sees it (layout kept)."""
    exe = shutil.which("pdftotext")
    assert exe, "pdftotext (poppler-utils) is needed"
    return subprocess.run([exe, "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout

