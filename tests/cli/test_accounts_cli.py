"""Accounts, top-ups, SIP mapping and the ledger check through the ``sidecar`` command."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
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
    assert shown["balance"] == "12.5"
    assert {m["value"] for m in shown["sip"]} == {"alice", "192.0.2.7"}
    assert [r["kind"] for r in shown["ledger"]] == ["topup", "topup"]
    run(db, "account", "suspend", "ACME-1", "--reason", "unpaid invoice")
    listed = json.loads(run(db, "account", "list", "--json").stdout)
    assert listed[0]["suspended"] and listed[0]["suspend_reason"] == "unpaid invoice"
    run(db, "account", "resume", "ACME-1")
    assert not json.loads(run(db, "account", "show", "ACME-1", "--json").stdout)["suspended"]
    out = run(db, "ledger", "verify").stdout
    assert "ok  ACME-1: balance 12.5 + held 0 = ledger 12.5" in out


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
                 "'0.0095', 0, 'node1', 0, '', NULL, 0, '', '')")
    conn.commit()
    conn.close()
    doc = json.loads(run(db, "calls", "--live", "--json").stdout)
    (call,) = doc["calls"]
    assert call["destination"] == "Germany Fixed"
    # Answered 30 s before the insert, 60 s paid (a loaded machine may take seconds to run
    # the CLI): elapsed from 30 s, and elapsed + remaining = the paid time.
    assert 29_000 <= call["elapsed_ms"] <= 45_000
    assert abs(call["elapsed_ms"] + call["remaining_ms"] - 60_000) <= 1_000
    assert doc["accounts"]["X"] == call["cost"]


def test_the_running_cost_counts_the_deck_lines_fees(tmp_path: Path) -> None:
    """``calls --live`` and ``GET /v1/live-calls`` share one computation: the deck line's
    connection fee is in the running cost (the live record alone does not carry it)."""
    deck = ("destination;code;rate_usd;increment;effective_from;connection_fee\n"
            "France;33;0.12;30/6;2026-06-01;0.05\n")
    run(tmp_path, "deck", "import", str(write(tmp_path / "fr.csv", deck)), "--plan", "fr",
        "--as-of", "2026-11-21")
    run(tmp_path, "account", "add", "F", "--plan", "fr", "--balance", "5")
    conn = sqlite3.connect(tmp_path / "cli.db")
    conn.execute("INSERT INTO live_calls VALUES ('c1', 'F', '33123456', 'France', '33', "
                 "'0.12', '30/6', CAST(strftime('%s','now') AS INTEGER) * 1000 - 10000, 60, "
                 "'0.17', 0, 'node1', 0, '', NULL, 0, '', '')")
    conn.commit()
    conn.close()
    (call,) = json.loads(run(tmp_path, "calls", "--live", "--json").stdout)["calls"]
    # 10 s on 30/6: 30 s billed at 0.12/min = 0.06, plus the 0.05 connection fee.
    assert Decimal(call["cost"]) == Decimal("0.11")


def test_show_tells_what_the_nodes_floats_hold_of_a_reseller(db: Path) -> None:
    """A reseller's credit held in a node's float (issue 14) is part of its ``held``:
    ``account show`` says where it is, and the ledger check counts it."""
    from sidecar.charging.commands import FloatHold
    from sidecar.store.accounts import SqliteLedger
    from sidecar.store.db import connect

    run(db, "account", "add", "RES", "--plan", "carrier", "--reseller", "--balance", "10")
    conn = connect(db / "cli.db")
    led = SqliteLedger(conn)
    led.node = "kam-1"
    assert led.execute([FloatHold(1, "RES", Decimal("2.5"), 1_796_000_000_000)]).outcomes[0].ok
    conn.close()
    shown = json.loads(run(db, "account", "show", "RES", "--json").stdout)
    assert (shown["balance"], shown["held"]) == ("7.5", "2.5")
    assert shown["floats"] == [{"node": "kam-1", "held": "2.5", "drawn": "0"}]
    text = run(db, "account", "show", "RES").stdout
    assert "float of node kam-1: 2.5 held for its customers' calls, 0 of it drawn" in text
    assert "ok  RES: balance 7.5 + held 2.5 = ledger 10" in run(db, "ledger", "verify").stdout
