"""``sidecar journal``: what waits for the store is shown, then applied once."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from sidecar.charging.commands import Settle, Topup
from sidecar.charging.model import Cdr, Disposition
from sidecar.store.journal import Journal
from tests.cli.test_accounts_cli import db  # noqa: F401  (fixture)
from tests.cli.test_rating_cli import run


def test_journal_shows_pending_settlements_and_applies_them_once(db: Path) -> None:  # noqa: F811
    run(db, "account", "add", "ACME", "--plan", "carrier", "--balance", "10")
    journal = Journal(db / "cli.db.journal")
    cdr = Cdr("call-1", "call-1", Disposition.ANSWERED, account="ACME", plan="carrier",
              callee="4930123", cost=Decimal("0.25"), usage=Decimal("0.25"),
              answered_ms=1_764_000_000_000, ended_ms=1_764_000_030_000, duration_ms=30_000,
              billed_seconds=30)
    journal.append([Settle(7, cdr, 1_764_000_030_000),
                    Topup(8, "ACME", Decimal("5"), "card 4711", "pay-4711", 1_764_000_031_000)],
                   "run-1")
    shown = json.loads(run(db, "journal", "--json").stdout)
    assert [(p["kind"], p.get("call_ref"), p.get("amount")) for p in shown["pending"]] == [
        ("settle", "call-1", None), ("topup", None, "5")]
    assert "2 pending" in run(db, "journal").stdout
    out = run(db, "journal", "apply").stdout
    assert "2 applied" in out
    assert "nothing pending" in run(db, "journal").stdout
    acc = json.loads(run(db, "account", "show", "ACME", "--json").stdout)
    assert acc["balance"] == "14.75"  # 10 - 0.25 + 5
    # The same entries again (a crash before the journal was emptied): nothing changes.
    journal.append([Settle(7, cdr, 1_764_000_030_000),
                    Topup(8, "ACME", Decimal("5"), "card 4711", "pay-4711", 1_764_000_031_000)],
                   "run-1")
    assert "0 applied, 2 already in the store" in run(db, "journal", "apply").stdout
    assert json.loads(run(db, "account", "show", "ACME", "--json").stdout)["balance"] == "14.75"
    assert "ok  ACME" in run(db, "ledger", "verify").stdout
