"""End to end: an account paying in euros on a plan priced in dollars (issue 14,
currencies), with the real Kamailio, the real ``sidecar run`` and a real SIPp call.

The exchange rate is set the way an operator sets it (``sidecar fx set``); the call is
rated on the dollar deck, converted at the rate in force, reserved and charged in euros;
the CDR keeps both amounts and the rate; the month's invoice is in euros and its total
is the calls' euros rounded to the cent. Every process is stopped by PID at the end."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from sidecar.lab.live import LiveLab
from sidecar.store.accounts import verify_ledger
from tests.e2e.test_limits import cli, cli_json
from tests.e2e.test_live_sidecar import balance, cdrs, deck_store, wait_for

pytestmark = pytest.mark.timeout(120)

DECK = """destination;code;rate_usd;increment;effective_from;connection_fee
Germany Fixed;4930;0.0600;1/1;2026-01-01;0.0100
"""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = deck_store(tmp_path, DECK)
    yield conn
    conn.close()


def test_a_euro_account_on_a_dollar_plan_is_charged_in_euros(
        tmp_path: Path, db: sqlite3.Connection) -> None:
    path = tmp_path / "sidecar.db"
    # Without a rate in force the account is refused, with what to do.
    p = subprocess.run([sys.executable, "-m", "sidecar", "--db", str(path), "account", "add",
                        "EURO", "--plan", "retail", "--currency", "EUR", "--balance", "5"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "sidecar fx set USD EUR RATE" in p.stderr, p.stderr
    cli(path, "fx", "set", "USD", "EUR", "0.9215", "--from", "2026-01-01")
    cli(path, "account", "add", "EURO", "--plan", "retail", "--currency", "EUR",
        "--balance", "5")
    with LiveLab(tmp_path / "lab", path) as lab:
        lab.uas()
        r = lab.uac(account_code="EURO", dialled="4930123456", duration_ms=2500).wait()
        assert r.calls_ok, r.output_tail() + lab.log_tail()
        wait_for(lambda: len(cdrs(db, "EURO")) == 1)
    (c,) = cdrs(db, "EURO")
    assert (c["currency"], c["deck_currency"], c["fx_rate"]) == ("EUR", "USD", "0.9215")
    billed = int(str(c["billed_seconds"]))
    assert billed == math.ceil(int(str(c["duration_ms"])) / 1000)
    # By hand: the deck's price in dollars; in euros each part converted exactly and
    # rounded once to 8 places.
    q = Decimal("0.00000001")
    usd = (Decimal("0.06") * billed / 60).quantize(q, ROUND_HALF_UP) + Decimal("0.01")
    eur = ((Decimal("0.06") * Decimal("0.9215") * billed / 60).quantize(q, ROUND_HALF_UP)
           + (Decimal("0.01") * Decimal("0.9215")).quantize(q, ROUND_HALF_UP))
    assert Decimal(str(c["deck_cost"])) == usd
    assert Decimal(str(c["cost"])) == eur == Decimal(str(c["charged"]))
    assert balance(db, "EURO") == Decimal("5") - eur
    assert all(not chk.problems for chk in verify_ledger(db))
    shown = json.loads(cli(path, "cdrs", "--account", "EURO", "--format", "json"))[0]
    assert (shown["deck_currency"], Decimal(shown["deck_cost"]), shown["fx_rate"]) == (
        "USD", usd, "0.9215")
    # The month's invoice: in euros, its total the calls' euros to the cent.
    month = datetime.fromtimestamp(int(str(c["ended_ms"])) / 1000, UTC).strftime("%Y-%m")
    inv = cli_json(path, "invoice", "--account", "EURO", "--period", month, "--format",
                   "html", "--out", str(tmp_path), "--draft")  # the month is not over
    assert inv["currency"] == "EUR", inv
    assert Decimal(str(inv["net"])) == eur.quantize(Decimal("0.01"), ROUND_HALF_UP), inv
