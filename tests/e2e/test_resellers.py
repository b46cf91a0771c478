"""End to end: a 3-tier reseller chain (issue 14) with the real Kamailio, the real
``sidecar run`` and a real SIPp call.

DIST (a distributor) sells to RES (a reseller), which sells to CUST. Each tier has its
own plan; the accounts and plans are set up with the command line as an operator would.
RES has credit for 6 s of its own price: CUST's call is cut (BYE both ways) when RES's
credit is gone, although CUST has plenty. Every tier is charged its own price, every
tier's ledger verifies, the margins add up. Every process is stopped by PID."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.lab.live import LiveLab
from sidecar.store.accounts import verify_ledger
from tests.e2e.test_limits import cli, cli_json
from tests.e2e.test_live_sidecar import (
    DECK,
    balance,
    call_cut_on_time,
    cdrs,
    deck_store,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)

RES_DECK = "destination;code;rate_usd;increment;effective_from\n" \
           "Germany Fixed;4930;0.04;1/1;2026-01-01\n"  # 0.04/min: RES pays 0.0006667/s
DIST_DECK = "destination;code;rate_usd;increment;effective_from\n" \
            "Germany;49;0.02;1/1;2026-01-01\n"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = deck_store(tmp_path, DECK)  # plan retail: 0.06/min to Germany Fixed
    yield conn
    conn.close()


def test_a_reseller_out_of_credit_cuts_its_customers_call_and_every_tier_pays(
        tmp_path: Path, db: sqlite3.Connection) -> None:
    path = tmp_path / "sidecar.db"
    for plan, deck in (("res", RES_DECK), ("dist", DIST_DECK)):
        (tmp_path / f"{plan}.csv").write_text(deck)
        cli(path, "deck", "import", str(tmp_path / f"{plan}.csv"), "--plan", plan,
            "--as-of", "2026-01-01")
    cli(path, "account", "add", "DIST", "--plan", "dist", "--reseller", "--balance", "5")
    cli(path, "account", "add", "RES", "--plan", "res", "--parent", "DIST", "--reseller",
        "--balance", "0.004")  # 6 s at 0.04/min
    cli(path, "account", "add", "CUST", "--plan", "retail", "--parent", "RES",
        "--balance", "5")
    assert cli_json(path, "account", "show", "RES")["reseller"] is True
    with LiveLab(tmp_path / "lab", path) as lab:
        call_cut_on_time(lab, "CUST", 6.0)
        wait_for(lambda: len(cdrs(db, "CUST")) == 1)
    (c,) = cdrs(db, "CUST")
    assert (c["ended_by"], c["end_reason"], c["billed_seconds"]) == ("proxy",
                                                                     "credit exhausted", 6)
    assert Decimal(str(c["cost"])) == Decimal("0.006")  # 6 s at 0.06/min
    cur = db.execute("SELECT * FROM cdr_tiers WHERE call_ref = ? ORDER BY tier",
                     (c["call_ref"],))
    names = [d[0] for d in cur.description]
    tiers = [dict(zip(names, r, strict=True)) for r in cur]
    assert [(t["account"], Decimal(str(t["cost"])), Decimal(str(t["charged"])),
             Decimal(str(t["margin"]))) for t in tiers] == [
        ("RES", Decimal("0.004"), Decimal("0.004"), Decimal("0.002")),
        ("DIST", Decimal("0.002"), Decimal("0.002"), Decimal("0.002"))]
    # Margins add up: what CUST paid = DIST's price + every margin.
    assert Decimal(str(c["cost"])) == Decimal(str(tiers[-1]["cost"])) + sum(
        Decimal(str(t["margin"])) for t in tiers)
    assert (balance(db, "CUST"), balance(db, "RES"), balance(db, "DIST")) == (
        Decimal("4.994"), Decimal(0), Decimal("4.998"))
    checks = {chk.account: chk.problems for chk in verify_ledger(db)}
    assert checks == {"CUST": (), "RES": (), "DIST": ()}
    shown = json.loads(cli(path, "cdrs", "--account", "CUST", "--format", "json"))[0]
    assert [(t["account"], t["charged"]) for t in shown["tiers"]] == [("RES", "0.004"),
                                                                      ("DIST", "0.002")]
