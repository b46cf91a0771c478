"""Reconciliation: the invoice total equals its lines, credits and tax to the cent."""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.invoices import issue_invoice, reconcile
from sidecar.invoices.model import Credit, Line, present, totals
from sidecar.store.accounts import verify_ledger
from tests.invoices.helpers import (
    AFTER,
    NUMBERS,
    PERIOD,
    SETTINGS,
    add_customer,
    call,
    cents,
    fas_credit,
    new_sim,
    random_calls,
)


def test_thousands_of_calls_reconcile_to_the_cent() -> None:
    sim = new_sim(":memory:")
    add_customer(sim, balance="100000")
    random_calls(sim, 3000, seed=11)
    fas_credit(sim, "ACME-7", "0.33333333", "no media after answer")
    inv = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER).invoice
    cdrs = [r for r in sim.cdrs("ACME") if r["ended_ms"] < PERIOD.end_ms]
    assert len(cdrs) > 2500 and inv.answered == len(cdrs)

    # The test's own rebuild of the usage lines from the CDRs: exact sums, rounded once.
    usage: dict[tuple[str, Decimal], Decimal] = defaultdict(Decimal)
    for r in cdrs:
        usage[(r["destination"], Decimal(r["rate"]))] += Decimal(r["usage"])
    assert {(ln.destination, ln.rate): ln.amount for ln in inv.lines_of("usage")} == \
        {k: cents(v) for k, v in usage.items()}
    fees = sum((Decimal(r["connection_fee"]) for r in cdrs), Decimal(0))
    assert sum(ln.amount for ln in inv.lines_of("connection_fee")) == cents(fees)

    # total = sum of printed lines - printed credits + tax, exactly.
    lines = sum((ln.amount for ln in inv.lines), Decimal(0))
    assert inv.credits_total == Decimal("0.33")
    assert inv.tax == cents((lines - inv.credits_total) * Decimal("0.19"))
    assert inv.total == lines - inv.credits_total + inv.tax
    # ... and within half a cent per line of the exact money the ledger took.
    exact = sum((Decimal(r["charged"]) for r in cdrs), Decimal(0))
    assert exact == inv.exact_charged
    assert abs(lines - exact) <= Decimal("0.005") * len(inv.lines)

    rec = reconcile(sim.conn, inv)
    assert rec.ok, [c for c in rec.checks if not c.ok] + [x for x in rec.lines if not x.ok]
    assert rec.cdrs == len(cdrs) and len(rec.lines) == len(inv.lines)
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_reconcile_finds_a_tampered_cdr_and_names_its_line() -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "f", NUMBERS[1], 95_000)
    call(sim, "u", NUMBERS[2], 95_000)
    inv = issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER).invoice
    assert reconcile(sim.conn, inv).ok
    sim.conn.execute("UPDATE cdrs SET usage = '0.1', cost = '0.11', charged = '0.11' "
                     "WHERE call_ref = 'f'")
    rec = reconcile(sim.conn, inv)
    assert not rec.ok
    bad = [ln for ln in rec.lines if not ln.ok]
    assert [(ln.kind, ln.label) for ln in bad] == [("usage", "France")]
    failed = {c.what for c in rec.checks if not c.ok}
    assert "ledger charges in the period = CDRs charged" in failed
    assert "CDRs charged = invoice's exact charged" in failed


money = st.decimals(min_value=Decimal("-50"), max_value=Decimal("5000"), places=8,
                    allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(exacts=st.lists(money, min_size=1, max_size=40),
       credits=st.lists(st.decimals(min_value=Decimal("0"), max_value=Decimal("20"), places=8,
                                    allow_nan=False, allow_infinity=False), max_size=5),
       rate=st.sampled_from([Decimal(0), Decimal("0.07"), Decimal("0.19"), Decimal("0.2"),
                             Decimal("0.255")]),
       ccy=st.sampled_from(["USD", "JPY", "KWD"]))
def test_rounding_rule_adds_up_on_paper(exacts: list[Decimal], credits: list[Decimal],
                                        rate: Decimal, ccy: str) -> None:
    lines = [Line("usage", f"d{i}", exact=e, amount=present(e, ccy))
             for i, e in enumerate(exacts)]
    creds = [Credit(0, "", "", "", exact=c, amount=present(c, ccy)) for c in credits]
    charges, credited, net, tax, total = totals(lines, creds, rate, ccy)
    unit = Decimal(1).scaleb(-{"USD": 2, "JPY": 0, "KWD": 3}[ccy])
    # Every printed figure is whole minor units, and the printed figures add up exactly.
    for v in (charges, credited, net, tax, total):
        assert v % unit == 0
    assert charges == sum(ln.amount for ln in lines)
    assert total == charges - credited + tax
    assert tax == present(net * rate, ccy)
    # Rounding per line costs at most half a unit per line against the exact sums.
    exact_net = sum(exacts) - sum(credits)
    assert abs(net - exact_net) <= unit / 2 * (len(lines) + len(creds))


def test_reconcile_command_proves_an_invoice(tmp_path: Path) -> None:
    sim = new_sim(tmp_path / "cli.db")
    add_customer(sim)
    random_calls(sim, 40, seed=3)
    env = {**os.environ, "SIDECAR_DB": str(tmp_path / "cli.db")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sidecar", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    draft = run("reconcile", "--account", "ACME", "--period", "2026-11", "--json")
    assert draft.returncode == 0, draft.stderr
    assert json.loads(draft.stdout)["number"] == "DRAFT"
    issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    ok = run("reconcile", "--account", "ACME", "--period", "2026-11")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "INV-000001" in ok.stdout and "reconciled to the cent" in ok.stdout
    sim.conn.execute("UPDATE cdrs SET charged = '0', written_off = cost WHERE call_ref = 'ACME-5'")
    bad = run("reconcile", "--number", "INV-000001", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and any(not c["ok"] for c in report["checks"])
    missing = run("reconcile", "--account", "NOPE", "--period", "2026-11")
    assert missing.returncode == 1 and "account 'NOPE' not found" in missing.stderr
