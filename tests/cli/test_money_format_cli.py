"""Amounts and times as people read them on the command line (issue 16): one money
format (``money.fmt``: plain digits, no exponent, no trailing zeros) and one time format
(ISO 8601 UTC with milliseconds and ``Z``), as the HTTP API prints them. A balance
brought to zero by an amount of 8 places used to print as ``0E-8``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.test_rating_cli import DECK, run
from tests.conftest import write

#: An amount in exponent notation, or with trailing zeros after the point.
NOT_PLAIN = re.compile(r"\b[0-9]+(\.[0-9]+)?E[-+]?[0-9]+\b|\b[0-9]+\.[0-9]*0\b")
ISO_Z = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")


def _store(tmp: Path) -> None:
    run(tmp, "deck", "import", str(write(tmp / "carrier.csv", DECK)), "--plan", "carrier",
        "--as-of", "2026-11-21")
    run(tmp, "account", "add", "ZERO", "--plan", "carrier", "--balance", "5")
    run(tmp, "account", "add", "POST", "--plan", "carrier", "--kind", "postpaid",
        "--credit-limit", "100.50000000", "--daily-cap", "20.00", "--monthly-cap", "300")


def test_a_balance_brought_to_zero_prints_0_everywhere(tmp_path: Path) -> None:
    _store(tmp_path)
    out = run(tmp_path, "account", "topup", "--adjust", "ZERO", "--", "-5.00000000").stdout
    assert out.strip() == "account ZERO: balance 0 USD"
    verify = run(tmp_path, "ledger", "verify").stdout
    assert "ok  ZERO: balance 0 + held 0 = ledger 0; charges 0 = CDRs 0" in verify, verify
    assert "ok  POST: balance 0 + held 0 = ledger 0" in verify, verify
    outputs = {
        "ledger verify": verify,
        "ledger verify --json": run(tmp_path, "ledger", "verify", "--json").stdout,
        "account show": run(tmp_path, "account", "show", "ZERO").stdout,
        "account show POST": run(tmp_path, "account", "show", "POST").stdout,
        "account show --json": run(tmp_path, "account", "show", "ZERO", "--json").stdout,
        "account list": run(tmp_path, "account", "list").stdout,
        "account list --json": run(tmp_path, "account", "list", "--json").stdout,
        "account topup": run(tmp_path, "account", "topup", "ZERO", "2.50000000").stdout,
    }
    for what, text in outputs.items():
        assert not NOT_PLAIN.search(text), (what, NOT_PLAIN.search(text), text)
    assert "credit limit 100.5; today 0 of 20; this month 0 of 300" in \
        outputs["account show POST"]
    shown = json.loads(outputs["account show --json"])
    assert shown["balance"] == "0"
    assert [(r["kind"], r["amount"]) for r in shown["ledger"]] == [
        ("adjustment", "-5"), ("topup", "5")]
    assert all(ISO_Z.match(r["ts"]) for r in shown["ledger"]), shown["ledger"]
    assert "-5 " in outputs["account show"] and "balance 0 USD" in outputs["account show"]
    assert outputs["account topup"].strip() == "account ZERO: balance 2.5 USD"
