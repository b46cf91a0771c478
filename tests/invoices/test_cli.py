"""``sidecar invoice``, ``credit-note``, ``invoices``, ``cdrs``, ``stats`` as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from tests.charging.harness import Sim
from tests.invoices.helpers import NUMBERS, add_customer, call, failed_call, new_sim, pdf_text

CONFIG = """
[invoice]
provider_name = "Example Carrier Ltd"
provider_address = "1 Network Way\\nLondon"
provider_tax_number = "GB999999973"
tax_label = "VAT"
due_days = 30
detail_csv_over = 2
"""


def run(tmp: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so that tables do not wrap the values the tests look for.
    env = {**os.environ, "SIDECAR_DB": str(tmp / "cli.db"), "COLUMNS": "240"}
    p = subprocess.run(["sidecar", *args], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture
def sim(tmp_path: Path) -> Sim:
    s = new_sim(tmp_path / "cli.db")
    add_customer(s)
    call(s, "c1", NUMBERS[2], 61_000, caller="=cmd|' /C calc'!A0", route="carrier-a")
    call(s, "c2", NUMBERS[1], 45_000, caller="-2+3 [bold]boss[/bold]",
         route="carrier-a")
    call(s, "c3", NUMBERS[0], 30_000, caller="@SUM(A1)", route="carrier-b")
    failed_call(s, "c4", NUMBERS[0], route="carrier-b")
    return s


def test_invoice_command_issues_renders_and_rerenders(tmp_path: Path, sim: Sim) -> None:
    (tmp_path / "sidecar.toml").write_text(CONFIG)
    early = run(tmp_path, "invoice", "--account", "ACME", "--period", "2026-11", "--date",
                "2026-11-30T23:59", ok=False)
    assert early.returncode == 1 and "has not ended yet" in early.stderr
    assert not (tmp_path / "INV-000001.html").exists()
    out = run(tmp_path, "invoice", "--account", "ACME", "--period", "2026-11", "--config",
              "sidecar.toml", "--out", "out", "--date", "2026-12-01T09:00", "--json")
    doc = json.loads(out.stdout)
    assert doc["number"] == "INV-000001" and doc["new"] is True
    assert sorted(Path(f).name for f in doc["files"]) == [
        "INV-000001-calls.csv", "INV-000001.html", "INV-000001.pdf"]
    text = pdf_text(tmp_path / "out" / "INV-000001.pdf")
    assert "Example Carrier Ltd" in text and "31 Dec 2026" in text  # due after 30 days
    assert f"Total USD {doc['total']}" in " ".join(text.split())
    pdf = (tmp_path / "out" / "INV-000001.pdf").read_bytes()

    again = run(tmp_path, "invoice", "--number", "INV-000001", "--format", "pdf", "--out",
                "again", "--config", "sidecar.toml")
    assert "INV-000001 already issued, re-rendered" in again.stdout
    assert (tmp_path / "again" / "INV-000001.pdf").read_bytes() == pdf

    early_note = run(tmp_path, "credit-note", "INV-000001", "--reason", "x", "--date",
                     "2026-11-30", ok=False)
    assert early_note.returncode == 1 and "before invoice INV-000001" in early_note.stderr
    note = json.loads(run(tmp_path, "credit-note", "INV-000001", "--reason", "test call",
                          "--amount", "0.10", "--out", "out", "--format", "html",
                          "--date", "2026-12-02", "--json").stdout)
    assert note["number"] == "CN-000001" and note["refers_to"] == "INV-000001"
    assert Decimal(note["net"]) == Decimal("-0.10")
    listed = json.loads(run(tmp_path, "invoices", "--account", "ACME", "--json").stdout)
    assert [r["number"] for r in listed] == ["CN-000001", "INV-000001"]
    bad = run(tmp_path, "invoice", "--account", "ACME", "--period", "2026-13", ok=False)
    assert bad.returncode == 1 and "not a month" in bad.stderr
    cfg = run(tmp_path, "invoice", "--account", "ACME", "--period", "2026-11", "--config",
              str(tmp_path / "missing.toml"), ok=False)
    assert cfg.returncode == 2 and "no such configuration file" in cfg.stderr


def test_cdrs_csv_is_safe_for_spreadsheets(tmp_path: Path, sim: Sim) -> None:
    out = run(tmp_path, "cdrs", "--account", "ACME", "--format", "csv").stdout
    rows = {r["call_ref"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["c1"]["caller"] == "'=cmd|' /C calc'!A0"
    assert rows["c2"]["caller"] == "'-2+3 [bold]boss[/bold]"
    assert rows["c3"]["caller"] == "'@SUM(A1)"
    assert rows["c3"]["callee"] == "493012345678"  # digits are left alone
    assert rows["c1"]["charged"] == "0.60000000"  # 61 s on 60/60 at 0.30: two minutes
    assert rows["c1"]["written_off"] == "0.00000000"  # never 0E-8
    assert rows["c4"]["disposition"] == "failed" and rows["c4"]["sip_code"] == "486"
    for r in rows.values():
        for v in r.values():
            assert not v.startswith(("=", "+", "-", "@", "\t", "\r")), v


def test_cdrs_json_and_table_and_time_filters(tmp_path: Path, sim: Sim) -> None:
    everything = json.loads(run(tmp_path, "cdrs", "--format", "json").stdout)
    assert [c["call_ref"] for c in everything] == ["c1", "c2", "c3", "c4"]
    c1 = everything[0]
    # Money as the API writes it: plain digits, no exponent, no trailing zeros.
    assert c1["rating"]["rate"] == "0.3" and c1["rating"]["cost"] == "0.6"
    assert c1["charged"] == "0.6" and c1["written_off"] == "0" == c1["credited"]
    assert c1["ended"].startswith("2026-11-21T12:")
    later = json.loads(run(tmp_path, "cdrs", "--from", c1["ended"], "--format", "json").stdout)
    assert [c["call_ref"] for c in later] == ["c1", "c2", "c3", "c4"]
    after_c1 = json.loads(run(tmp_path, "cdrs", "--from", everything[1]["ended"], "--to",
                              "2026-12-01", "--format", "json").stdout)
    assert [c["call_ref"] for c in after_c1] == ["c2", "c3", "c4"]
    table = run(tmp_path, "cdrs", "--limit", "3").stdout
    assert "=cmd|' /C calc'!A0" in table and "4 records" not in table and "3 records" in table
    assert "[bold]boss[/bold]" in table  # caller names are text, not rich markup
    wrong = run(tmp_path, "cdrs", "--from", "2026-12-01", "--to", "2026-11-01", ok=False)
    assert wrong.returncode == 2 and "--to must be after --from" in wrong.stderr


def test_stats_commands(tmp_path: Path, sim: Sim) -> None:
    spend = json.loads(run(tmp_path, "stats", "spend", "--by", "destination", "--json").stdout)
    assert [(r["key"], r["calls"], r["amount"]) for r in spend] == [
        ("UK Mobile", 1, "0.60"), ("France", 1, "0.11"), ("Germany Fixed", 1, "0.00")]
    routes = json.loads(run(tmp_path, "stats", "routes", "--json").stdout)
    assert [(r["route"], r["attempts"], r["answered"], r["asr"]) for r in routes] == [
        ("carrier-a", 2, 2, "1.0000"), ("carrier-b", 2, 1, "0.5000")]
    assert routes[0]["answer_delay_mean_ms"] == 2000 and routes[0]["pdd_mean_ms"] is None
    table = run(tmp_path, "stats", "routes").stdout
    assert "carrier-b" in table and "50.0%" in table and "2000 ms" in table
    assert "answer delay" in table


def test_unknown_account_and_bad_input_are_errors_that_change_nothing(tmp_path: Path,
                                                                     sim: Sim) -> None:
    def counts() -> tuple[int, int, int]:
        c = sim.conn
        return (c.execute("SELECT COUNT(*) FROM invoices").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM ledger").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0])

    before = counts()
    for args, message in [
        (("cdrs", "--account", "NOPE"), "account 'NOPE' not found"),
        (("stats", "spend", "--account", "NOPE"), "account 'NOPE' not found"),
        (("stats", "routes", "--account", "NOPE"), "account 'NOPE' not found"),
        (("invoice", "--account", "NOPE", "--period", "2026-11", "--date", "2026-12-02"),
         "account 'NOPE' not found"),
        (("invoice", "--account", "ACME", "--period", "2026-1 "), "'2026-1 ' is not a month"),
        (("invoice", "--account", "ACME", "--period", "26-11"), "'26-11' is not a month"),
        (("invoice", "--account", "ACME", "--period", "2026-11", "--date", "tomorrow"),
         "'tomorrow' is not an ISO 8601"),
        (("cdrs", "--from", "last week"), "'last week' is not an ISO 8601"),
        (("reconcile", "--account", "ACME", "--period", "2026-00"), "not a month"),
        (("invoice", "--number", "INV-000042"), "invoice 'INV-000042' not found"),
        (("credit-note", "INV-000042", "--reason", "x"), "invoice 'INV-000042' not found"),
        (("credit-note", "INV-000042", "--reason", "x", "--amount", "1,50"),
         "not a decimal number"),
    ]:
        p = run(tmp_path, *args, ok=False)
        assert p.returncode != 0, args
        assert message in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr, p.stderr
    assert counts() == before
    assert list(tmp_path.glob("*.pdf")) == [] and list(tmp_path.glob("*.html")) == []


def test_a_broken_operator_template_is_refused_before_anything_is_issued(
        tmp_path: Path, sim: Sim) -> None:
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "invoice.html.j2").write_text("{% extends 'layout.html.j2' %}\n{% block content %}"
                                         "{{ inv.total | money(places) }\n{% endblock %}")
    (tmp_path / "sidecar.toml").write_text(f'[invoice]\ntemplate_dir = "{tpl}"\n')
    p = run(tmp_path, "invoice", "--account", "ACME", "--period", "2026-11", "--config",
            "sidecar.toml", "--date", "2026-12-02", ok=False)
    assert p.returncode == 2 and "invoice.html.j2 line 2" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert sim.conn.execute("SELECT COUNT(*) FROM invoices").fetchone()[0] == 0


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted() -> None:
    from sidecar.invoices.records import safe_cell

    for hostile in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", " =1+1", "\n@x",
                    "\u00a0=HYPERLINK(\"x\")"):
        assert safe_cell(hostile) == "'" + hostile, repr(hostile)
    for plain in ("ACME", "493012345678", "0.60000000", "a=b", ""):
        assert safe_cell(plain) == plain
    assert safe_cell(Decimal("-0.5")) == "-0.5"  # a number we formatted: not quoted
    assert safe_cell(Decimal("0E-8")) == "0.00000000"  # never in exponent notation
    assert safe_cell(None) == ""
