"""Accounts, top-ups, SIP mapping and the ledger check through the ``sidecar`` command."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.cli.test_rating_cli import DECK, run
from tests.conftest import write


@pytest.fixture
def db(tmp_path: Path) -> Path:
    run(tmp_path, "deck", "import", str(write(tmp_path / "carrier.csv", DECK)), "--plan",
        "carrier", "--as-of", "2026-11-21")
    return tmp_path


def test_account_lifecycle(db: Path) -> None:
    acc = json.loads(run(db, "account", "add", "ACME-1", "--plan", "carrier", "--balance", "10",
                         "--low-balance", "2", "--json").stdout)
    assert (acc["balance"], acc["kind"], acc["currency"]) == ("10", "prepaid", "USD")
    run(db, "account", "topup", "ACME-1", "2.50", "--note", "invoice 77")
    run(db, "account", "map-sip", "ACME-1", "--user", "alice", "--ip", "192.0.2.7")
    shown = json.loads(run(db, "account", "show", "ACME-1", "--json").stdout)
    assert shown["balance"] == "12.50"
    assert {m["value"] for m in shown["sip"]} == {"alice", "192.0.2.7"}
    assert [r["kind"] for r in shown["ledger"]] == ["topup", "topup"]
    run(db, "account", "suspend", "ACME-1", "--reason", "unpaid invoice")
    listed = json.loads(run(db, "account", "list", "--json").stdout)
    assert listed[0]["suspended"] and listed[0]["suspend_reason"] == "unpaid invoice"
    run(db, "account", "resume", "ACME-1")
    assert not json.loads(run(db, "account", "show", "ACME-1", "--json").stdout)["suspended"]
    out = run(db, "ledger", "verify").stdout
    assert "ok  ACME-1: balance 12.50 + held 0 = ledger 12.50" in out


def test_errors_name_what_is_wrong(db: Path) -> None:
    p = run(db, "account", "add", "X", "--plan", "nope", ok=False)
    assert p.returncode == 1 and "rate plan 'nope' not found" in p.stderr
    run(db, "account", "add", "X", "--plan", "carrier")
    assert "already exists" in run(db, "account", "add", "X", "--plan", "carrier",
                                   ok=False).stderr
    bad = run(db, "account", "topup", "X", "1,5", ok=False)
    assert bad.returncode == 2 and "'1,5' is not a decimal number" in bad.stderr
    assert "account 'Y' not found" in run(db, "account", "topup", "Y", "1", ok=False).stderr
    neg = run(db, "account", "topup", "--adjust", "X", "--", "-5", ok=False)
    assert "below zero" in neg.stderr


def test_ledger_verify_detects_tampering(db: Path) -> None:
    run(db, "account", "add", "X", "--plan", "carrier", "--balance", "5")
    conn = sqlite3.connect(db / "cli.db")
    conn.execute("UPDATE accounts SET balance = '6' WHERE code = 'X'")
    conn.commit()
    conn.close()
    p = run(db, "ledger", "verify", ok=False)
    assert p.returncode == 1
    assert "balance 6 + held 0 != ledger sum 5" in p.stdout


def test_calls_live_lists_running_calls(db: Path) -> None:
    run(db, "account", "add", "X", "--plan", "carrier", "--balance", "5")
    conn = sqlite3.connect(db / "cli.db")
    conn.execute("INSERT INTO live_calls VALUES ('c1', 'X', '4930111', 'Germany Fixed', '4930', "
                 "'0.0095', '1/1', CAST(strftime('%s','now') AS INTEGER) * 1000 - 30000, 60, "
                 "'0.0095', 0, 'node1', 0)")
    conn.commit()
    conn.close()
    doc = json.loads(run(db, "calls", "--live", "--json").stdout)
    (call,) = doc["calls"]
    assert call["destination"] == "Germany Fixed"
    assert 29 <= call["elapsed_s"] <= 32 and 27 <= call["remaining_s"] <= 31
    assert doc["accounts"]["X"] == call["cost"]
